//! The lifecycle's clock.

use std::time::Duration;
#[cfg(any(feature = "log", feature = "otel"))]
use std::{cell::Cell, time::SystemTime};

/// A point in time for measuring a duration: the clock's raw reading (the TSC's ticks where
/// quanta can use it), scaled to nanoseconds only when a duration is taken.
///
/// Cheaper than `quanta::Instant::now()` on the request path: that call checks a per-thread
/// mock-clock slot and scales every reading; this reads the process's one clock directly, and
/// scales once per duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tick(u64);

static CLOCK: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();

fn clock() -> &'static quanta::Clock {
    CLOCK.get_or_init(quanta::Clock::new)
}

impl Tick {
    /// Now.
    #[inline]
    pub(crate) fn now() -> Self {
        Self(clock().raw())
    }

    /// The time from this tick to `later` (zero if `later` reads earlier, e.g. across cores).
    #[inline]
    pub(crate) fn until(self, later: Tick) -> Duration {
        clock().delta(self.0, later.0)
    }

    /// This tick on the wall clock (see [`unix_now`]): the time since the Unix epoch, without
    /// reading the clock again.
    #[cfg(any(feature = "log", feature = "otel"))]
    pub(crate) fn unix(self) -> Duration {
        thread_local! {
            static ANCHOR: Cell<Option<(u64, Duration)>> = const { Cell::new(None) };
        }
        let system = || {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
        };
        let (c, raw) = (clock(), self.0);
        ANCHOR
            .try_with(|anchor| {
                if let Some((at, unix)) = anchor.get() {
                    if raw < at {
                        // Read before this thread's anchor (before it was read again, or on
                        // another thread): counted back from it.
                        return unix.saturating_sub(c.delta(raw, at));
                    }
                    let since = c.delta(at, raw);
                    if since < REANCHOR {
                        return unix + since;
                    }
                }
                let unix = system();
                anchor.set(Some((raw, unix)));
                unix
            })
            .unwrap_or_else(|_| system())
    }

    /// This tick on the wall clock, as a `SystemTime`.
    #[cfg(feature = "otel")]
    pub(crate) fn wall(self) -> SystemTime {
        SystemTime::UNIX_EPOCH + self.unix()
    }
}

/// How long a thread's wall-clock anchor serves before it is read again.
#[cfg(any(feature = "log", feature = "otel"))]
const REANCHOR: Duration = Duration::from_millis(100);

/// The wall clock, read through the lifecycle's clock. `SystemTime::now()` is a vDSO call (an
/// ordered TSC read and the kernel's conversion) of about 35 ns on this machine's KVM guest
/// (perf, on the logged request's two calls: the line's timestamp and the request id's); this
/// is a plain TSC read and a multiplication. Each thread anchors the TSC to
/// `SystemTime::now()` and reads that again every 100 ms, so the time follows the system
/// clock's adjustments within that: NTP slews at most 500 ppm (50 µs in 100 ms), usually a few
/// ppm, under the microsecond the log's timestamps show.
#[cfg(feature = "otel")]
pub(crate) fn wall_now() -> SystemTime {
    Tick::now().wall()
}

/// The wall clock (see [`wall_now`]) as the time since the Unix epoch, what timestamps are
/// written from.
#[cfg(any(feature = "log", feature = "otel"))]
#[cfg_attr(not(feature = "log"), allow(dead_code))] // Read by the log; otel's tests use it.
pub(crate) fn unix_now() -> Duration {
    Tick::now().unix()
}

#[cfg(all(test, any(feature = "log", feature = "otel")))]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_follows_the_system_clock() {
        // Across several anchors (over 100 ms apart), every reading within a millisecond of
        // the system clock's, and never behind the previous one by more than that.
        let start = std::time::Instant::now();
        let mut last = unix_now();
        while start.elapsed() < Duration::from_millis(350) {
            let system = || {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
            };
            let before = system();
            let ours = unix_now();
            let after = system();
            let slack = Duration::from_millis(1);
            assert!(
                ours + slack >= before && ours <= after + slack,
                "{ours:?} {before:?} {after:?}"
            );
            assert!(ours + slack >= last);
            last = ours;
            std::thread::sleep(Duration::from_millis(3));
        }
    }

    #[test]
    fn a_tick_read_before_the_anchor_is_counted_back_from_it() {
        // The tick is converted after the thread's anchor was read again (over 100 ms later):
        // it maps to its own time, not to the anchor's.
        let system = || {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
        };
        let before = system();
        let tick = Tick::now();
        let after = system();
        std::thread::sleep(REANCHOR + Duration::from_millis(20));
        let _ = unix_now();
        let ours = tick.unix();
        let slack = Duration::from_millis(1);
        assert!(
            ours + slack >= before && ours <= after + slack,
            "{ours:?} {before:?} {after:?}"
        );
    }
}
