//! Per-thread shards: state that every worker updates on every request (metric counters and
//! histograms, the breaker's window, the log writer's buffer) is split so that two busy
//! threads write different cache lines, and summed or merged only when it is read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// One cache line (two, on CPUs that prefetch pairs) per shard.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// How many shards: a power of two (at most 8), so that a thread finds its shard with a mask
/// instead of a division (the division was about 4% of a histogram record's samples, perf).
///
/// Read once per process: `available_parallelism` reads the cgroup's CPU quota (files under
/// `/sys/fs/cgroup`), and a route's handles are made on its first request.
pub(crate) fn count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .clamp(1, 8)
            .next_power_of_two()
    })
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's number: threads are numbered round-robin, so two busy threads do not
    /// share a shard (until there are more threads than shards).
    static MINE: usize = NEXT.fetch_add(1, Relaxed);
}

/// This thread's shard among `n`, a power of two ([`count`]).
#[inline]
pub(crate) fn mine(n: usize) -> usize {
    debug_assert!(n.is_power_of_two());
    MINE.with(|s| *s) & (n - 1)
}

/// `per_shard` counters for each thread shard, shard after shard in one allocation of whole
/// 128-byte blocks: no two shards share a cache line. Each shard was once a separate
/// allocation, whose edges could share a line with another shard's, moved between cores on
/// every record (`histogram/record_two_threads`). For state of several counters per shard (a
/// histogram's buckets, the breaker's window).
#[derive(Debug)]
pub(crate) struct Slots {
    shards: usize,
    /// Blocks per shard.
    stride: usize,
    blocks: Box<[Padded<[AtomicU64; SLOTS]>]>,
}

/// Counters per block: 16 of 8 bytes fill its 128.
const SLOTS: usize = 16;

impl Slots {
    pub(crate) fn new(per_shard: usize) -> Self {
        let shards = count();
        let stride = per_shard.div_ceil(SLOTS);
        Self {
            shards,
            stride,
            blocks: (0..shards * stride)
                .map(|_| Padded(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    /// How many shards (a power of two, for [`mine`]).
    #[inline]
    pub(crate) fn shards(&self) -> usize {
        self.shards
    }

    /// Counter `i` of shard `shard`.
    #[inline]
    pub(crate) fn get(&self, shard: usize, i: usize) -> &AtomicU64 {
        &self.blocks[shard * self.stride + i / SLOTS].0[i % SLOTS]
    }

    /// Every counter of every shard to zero.
    pub(crate) fn clear(&self) {
        for c in self.blocks.iter().flat_map(|b| &b.0) {
            c.store(0, Relaxed);
        }
    }
}

/// A value shared by every worker and held per request (a route entry, a breaker), through one
/// handle per thread shard, each an `Arc` of its own in its own 128-byte block.
///
/// A request clones its thread's handle: the reference count every request moves up and down
/// is then not one line that every worker writes (an atomic read-modify-write on a line another
/// core just wrote waits for it to come over), and the value itself is only read. The price is
/// memory: 256 bytes per shard and value (the `Arc`'s counts and the pointer, each in a block
/// of its own), so 2 KiB per route with 8 shards.
pub(crate) struct Handles<T>(Box<[Held<T>]>);

/// One thread shard's handle to a value (see [`Handles`]).
pub(crate) struct Held<T>(Arc<Padded<Arc<T>>>);

impl<T> Handles<T> {
    pub(crate) fn new(value: Arc<T>) -> Self {
        Self(
            (0..count())
                .map(|_| Held(Arc::new(Padded(value.clone()))))
                .collect(),
        )
    }

    /// The calling thread's handle.
    #[inline]
    pub(crate) fn held(&self) -> Held<T> {
        self.0[mine(self.0.len())].clone()
    }
}

impl<T> std::ops::Deref for Handles<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0[0]
    }
}

impl<T> Clone for Held<T> {
    #[inline]
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> std::ops::Deref for Held<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0 .0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_shards_never_share_a_cache_line() {
        // Each shard is written by its own threads; a line shared with the next shard's
        // counters would move between cores on every record.
        for width in [1usize, 2, 3, 4, 15, 16, 17, 18, 32, 180] {
            let slots = Slots::new(width);
            let at = |s: usize, i: usize| slots.get(s, i) as *const AtomicU64 as usize;
            let mut end_of_previous = 0;
            for s in 0..slots.shards() {
                let (first, last) = (at(s, 0), at(s, width - 1) + 8);
                assert_eq!(first % 128, 0, "{width} wide: shard {s} starts a line pair");
                assert!(first >= end_of_previous, "{width} wide: shard {s} overlaps");
                // Its counters are one run of memory, and the next shard begins past its line.
                assert_eq!(
                    last - first,
                    width * 8,
                    "{width} wide: shard {s} is contiguous"
                );
                end_of_previous = last.next_multiple_of(128);
            }
        }
    }

    /// One handle per shard, each its own allocation (so its own reference count), all to the
    /// one value; a thread gets its shard's.
    #[test]
    fn each_thread_shard_has_its_own_handle_to_the_one_value() {
        let handles = Handles::new(Arc::new(7u8));
        let n = handles.0.len();
        assert_eq!(n, count());
        for (i, h) in handles.0.iter().enumerate() {
            assert!(Arc::ptr_eq(&h.0 .0, &handles.0[0].0 .0));
            for other in &handles.0[i + 1..] {
                assert!(!Arc::ptr_eq(&h.0, &other.0));
            }
        }
        let held = handles.held();
        assert!(Arc::ptr_eq(&held.0, &handles.0[mine(n)].0));
        assert_eq!((*held, *handles), (7, 7));
    }
}
