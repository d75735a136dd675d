//! Per-thread shards: state that every worker updates on every request (metric counters and
//! histograms, the breaker's window, the log writer's buffer) is split so that two busy
//! threads write different cache lines, and summed or merged only when it is read.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// One cache line (two, on CPUs that prefetch pairs) per shard.
#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct Padded<T>(pub(crate) T);

/// How many shards: a power of two (at most 8), so that a thread finds its shard with a mask
/// instead of a division (the division was about 4% of a histogram record's samples, perf).
pub(crate) fn count() -> usize {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .clamp(1, 8)
        .next_power_of_two()
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
