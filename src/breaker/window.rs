//! Sliding windows of call outcomes, lock-free: two threads recording into one breaker never
//! wait for each other.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::Duration;

/// Totals over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Calls recorded.
    pub calls: u64,
    /// Of which failures.
    pub failures: u64,
    /// Of which slower than the slow-call threshold.
    pub slow: u64,
}

impl Totals {
    /// Failures over calls, in `0.0..=1.0` (0 without calls).
    pub fn failure_rate(&self) -> f64 {
        ratio(self.failures, self.calls)
    }

    /// Slow calls over calls, in `0.0..=1.0` (0 without calls).
    pub fn slow_rate(&self) -> f64 {
        ratio(self.slow, self.calls)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

const PRESENT: u8 = 1;
const FAILURE: u8 = 2;
const SLOW: u8 = 4;

/// The last `size` outcomes. Each call swaps its outcome into the next slot and gets the
/// evicted one back atomically, so the running totals are adjusted in O(1) (subtract on evict).
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    next: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        Self {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
            next: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            slow: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, failure: bool, slow: bool) {
        let v = PRESENT | if failure { FAILURE } else { 0 } | if slow { SLOW } else { 0 };
        let i = self.next.fetch_add(1, Relaxed) % self.slots.len() as u64;
        let old = self.slots[i as usize].swap(v, Relaxed);
        add(&self.calls, v & PRESENT != 0, old & PRESENT != 0);
        add(&self.failures, v & FAILURE != 0, old & FAILURE != 0);
        add(&self.slow, v & SLOW != 0, old & SLOW != 0);
    }

    pub(crate) fn totals(&self) -> Totals {
        Totals {
            calls: self.calls.load(Relaxed),
            failures: self.failures.load(Relaxed),
            slow: self.slow.load(Relaxed),
        }
    }

    pub(crate) fn reset(&self) {
        for s in self.slots.iter() {
            let old = s.swap(0, Relaxed);
            add(&self.calls, false, old & PRESENT != 0);
            add(&self.failures, false, old & FAILURE != 0);
            add(&self.slow, false, old & SLOW != 0);
        }
    }
}

fn add(counter: &AtomicU64, new: bool, evicted: bool) {
    match (new, evicted) {
        (true, false) => {
            counter.fetch_add(1, Relaxed);
        }
        (false, true) => {
            counter.fetch_sub(1, Relaxed);
        }
        _ => {}
    }
}

/// Outcomes of the last `window`, in a ring of buckets of `window / buckets` each. Every bucket
/// counter packs the bucket's epoch (high 32 bits) with its count (low 32 bits), so a counter
/// left from an earlier lap is reset by the same compare-and-swap that counts the new call:
/// no lock, no lost update, O(1) memory per bucket.
///
/// The ring is sharded: each thread records into its own shard, and totals add the shards up,
/// so threads recording at once do not contend for one cache line.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    width_nanos: u64,
    buckets: usize,
    /// Per shard: `[calls, failures, slow]` per bucket.
    slots: crate::shard::Slots,
}

const CALLS: usize = 0;
const FAILS: usize = 1;
const SLOWS: usize = 2;

impl TimeWindow {
    pub(crate) fn new(window: Duration, buckets: u32) -> Self {
        let buckets = buckets.max(1) as usize;
        let width = (window.as_nanos() / buckets as u128).max(1);
        Self {
            width_nanos: u64::try_from(width).unwrap_or(u64::MAX),
            buckets,
            slots: crate::shard::Slots::new(buckets * 3),
        }
    }

    /// Counter `kind` of bucket `bucket` in shard `shard`.
    #[inline]
    fn counter(&self, shard: usize, bucket: usize, kind: usize) -> &AtomicU64 {
        self.slots.get(shard, bucket * 3 + kind)
    }

    /// The epoch (bucket number) of a time since the breaker was created. Starts at 1 so that a
    /// zeroed counter (epoch 0) is never mistaken for a live one.
    fn epoch(&self, since_start_nanos: u64) -> u32 {
        u32::try_from(since_start_nanos / self.width_nanos + 1).unwrap_or(u32::MAX)
    }

    pub(crate) fn record(&self, since_start_nanos: u64, failure: bool, slow: bool) {
        let e = self.epoch(since_start_nanos);
        let (shard, bucket) = (
            crate::shard::mine(self.slots.shards()),
            e as usize % self.buckets,
        );
        bump(self.counter(shard, bucket, CALLS), e);
        if failure {
            bump(self.counter(shard, bucket, FAILS), e);
        }
        if slow {
            bump(self.counter(shard, bucket, SLOWS), e);
        }
    }

    pub(crate) fn totals(&self, since_start_nanos: u64) -> Totals {
        let now = self.epoch(since_start_nanos);
        let oldest = now.saturating_sub(self.buckets as u32 - 1);
        let live = |c: &AtomicU64| {
            let v = c.load(Relaxed);
            let (epoch, count) = ((v >> 32) as u32, v & 0xFFFF_FFFF);
            if epoch >= oldest && epoch <= now {
                count
            } else {
                0
            }
        };
        let mut t = Totals::default();
        for shard in 0..self.slots.shards() {
            for b in 0..self.buckets {
                t.calls += live(self.counter(shard, b, CALLS));
                t.failures += live(self.counter(shard, b, FAILS));
                t.slow += live(self.counter(shard, b, SLOWS));
            }
        }
        t
    }

    pub(crate) fn reset(&self) {
        // Epoch 0 is never live. Calls still in flight from before the reset belong to an
        // earlier breaker generation, whose results are ignored anyway.
        self.slots.clear();
    }
}

fn bump(counter: &AtomicU64, epoch: u32) {
    let mut cur = counter.load(Relaxed);
    loop {
        let cur_epoch = (cur >> 32) as u32;
        let next = if cur_epoch == epoch {
            cur.wrapping_add(1)
        } else if cur_epoch < epoch {
            (u64::from(epoch) << 32) | 1
        } else {
            // A call that started before a newer lap reached this bucket: too old to count.
            return;
        };
        match counter.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
            Ok(_) => return,
            Err(v) => cur = v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference model: a plain list of outcomes.
    fn model_count(outcomes: &[(bool, bool)], size: usize) -> Totals {
        let tail = &outcomes[outcomes.len().saturating_sub(size)..];
        Totals {
            calls: tail.len() as u64,
            failures: tail.iter().filter(|o| o.0).count() as u64,
            slow: tail.iter().filter(|o| o.1).count() as u64,
        }
    }

    proptest! {
        #[test]
        fn count_window_matches_the_model(
            size in 1u32..40,
            outcomes in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..300),
        ) {
            let w = CountWindow::new(size);
            for (i, (f, s)) in outcomes.iter().enumerate() {
                w.record(*f, *s);
                prop_assert_eq!(w.totals(), model_count(&outcomes[..=i], size as usize));
            }
        }

        #[test]
        fn time_window_matches_the_model(
            buckets in 1u32..20,
            // (milliseconds since the previous call, failure, slow)
            calls in proptest::collection::vec((0u64..400, any::<bool>(), any::<bool>()), 0..300),
        ) {
            let window = Duration::from_secs(2);
            let w = TimeWindow::new(window, buckets);
            let width = window.as_nanos() as u64 / u64::from(buckets);
            let mut t = 0u64;
            let mut seen: Vec<(u64, bool, bool)> = Vec::new();
            for (gap, f, s) in calls {
                t += gap * 1_000_000;
                w.record(t, f, s);
                seen.push((t, f, s));
                // Model: calls whose bucket is one of the last `buckets` buckets.
                let now_bucket = t / width;
                let first = now_bucket.saturating_sub(u64::from(buckets) - 1);
                let live: Vec<_> = seen.iter().filter(|c| c.0 / width >= first).collect();
                let expect = Totals {
                    calls: live.len() as u64,
                    failures: live.iter().filter(|c| c.1).count() as u64,
                    slow: live.iter().filter(|c| c.2).count() as u64,
                };
                prop_assert_eq!(w.totals(t), expect);
            }
        }
    }

    #[test]
    fn resets_forget_everything() {
        let w = CountWindow::new(4);
        w.record(true, true);
        w.record(false, false);
        w.reset();
        assert_eq!(w.totals(), Totals::default());
        w.record(true, false);
        assert_eq!(w.totals().failures, 1);

        let t = TimeWindow::new(Duration::from_secs(10), 20);
        let ms = |n: u64| n * 1_000_000;
        t.record(ms(100), true, false);
        t.reset();
        assert_eq!(t.totals(ms(300)), Totals::default());
        t.record(ms(300), true, false);
        assert_eq!(t.totals(ms(700)).failures, 1);
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let w = std::sync::Arc::new(CountWindow::new(1_000_000));
        let t = std::sync::Arc::new(TimeWindow::new(Duration::from_secs(3600), 4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (w, t) = (w.clone(), t.clone());
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        w.record(i % 2 == 0, false);
                        t.record(1_000_000_000, i % 2 == 0, false);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(w.totals().calls, 40_000);
        assert_eq!(w.totals().failures, 20_000);
        let tt = t.totals(1_000_000_000);
        assert_eq!((tt.calls, tt.failures), (40_000, 20_000));
    }
}
