//! The lifecycle's clock.

use std::time::Duration;

/// A point in time for measuring a duration: the clock's raw reading (the TSC's ticks where
/// quanta can use it), scaled to nanoseconds only when a duration is taken.
///
/// Cheaper than `quanta::Instant::now()` on the request path: that call checks a per-thread
/// mock-clock slot and scales every reading; this reads the process's one clock directly, and
/// scales once per duration.
#[derive(Clone, Copy, Debug)]
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

    /// The time since this tick (zero if the clock reads earlier, e.g. across cores).
    #[inline]
    pub(crate) fn elapsed(self) -> Duration {
        let c = clock();
        c.delta(self.0, c.raw())
    }
}
