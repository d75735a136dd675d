//! Per-thread shards: state that every worker updates on every request (metric counters and
//! histograms, the breaker's window, the log writer's buffer) is split so that two busy
//! threads write different cache lines, and summed or merged only when it is read.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
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
