//! Breaker settings and their defaults.

use std::time::Duration;

/// How the sliding window is measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last `duration`, in `buckets` buckets (sub-second buckets keep the
    /// window's edge sharp: a 10 s window in 40 buckets forgets in 250 ms steps).
    Time {
        /// Length of the window.
        duration: Duration,
        /// Number of buckets.
        buckets: u32,
    },
}

/// Settings of a [`crate::breaker::Breaker`].
///
/// The defaults suit a web service calling a dependency:
///
/// | setting | default | why |
/// |---|---|---|
/// | window | time-based, 10 s in 40 buckets | reacts within seconds whatever the call rate; a count window would span hours at low rates and milliseconds at high ones |
/// | `minimum_calls` | 20 | below that, one or two failures are noise, not a failing dependency |
/// | `failure_rate_threshold` | 50% | the dependency fails more often than it works |
/// | `wait_in_open` | 30 s | long enough for a restart or failover, short enough to recover quickly |
/// | `permitted_calls_in_half_open` | 5 | a handful of probes tells a recovered dependency from a lucky call |
/// | slow calls | off | "slow" depends on the dependency; set [`BreakerBuilder::slow_calls`] once you know its latency |
/// | consecutive failures | off | the failure rate covers it; useful at very low call rates |
/// | backoff | x2 per re-open, capped at 5 min, ±10% jitter, reset after 60 s closed | a dependency that keeps failing is probed less and less often, and breakers opened together do not probe together |
/// | `max_half_open` | 60 s | probes that never report must not wedge the breaker |
///
/// Evaluation starts once `minimum_calls` calls are in the window, not when the window is
/// full: with the defaults, 20 calls in the last 10 s of which 10 failed open the breaker.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub(crate) window: Window,
    pub(crate) minimum_calls: u32,
    pub(crate) failure_rate_threshold: f64,
    pub(crate) slow_call: Option<(Duration, f64)>,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) wait_in_open: Duration,
    pub(crate) backoff_multiplier: f64,
    pub(crate) max_wait_in_open: Duration,
    pub(crate) jitter: f64,
    pub(crate) stable_close: Duration,
    pub(crate) permitted_calls_in_half_open: u32,
    pub(crate) max_half_open: Duration,
    pub(crate) backpressure: bool,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Window::Time {
                duration: Duration::from_secs(10),
                buckets: 40,
            },
            minimum_calls: 20,
            failure_rate_threshold: 0.5,
            slow_call: None,
            consecutive_failures: None,
            wait_in_open: Duration::from_secs(30),
            backoff_multiplier: 2.0,
            max_wait_in_open: Duration::from_secs(300),
            jitter: 0.1,
            stable_close: Duration::from_secs(60),
            permitted_calls_in_half_open: 5,
            max_half_open: Duration::from_secs(60),
            backpressure: false,
        }
    }
}

/// Builds a [`crate::breaker::Breaker`].
#[derive(Debug, Clone)]
pub struct BreakerBuilder {
    pub(crate) name: String,
    pub(crate) cfg: BreakerConfig,
}

impl BreakerBuilder {
    pub(crate) fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            cfg: BreakerConfig::default(),
        }
    }

    /// The sliding window.
    pub fn window(mut self, window: Window) -> Self {
        self.cfg.window = window;
        self
    }

    /// A count-based window of the last `n` calls.
    pub fn count_window(self, n: u32) -> Self {
        self.window(Window::Count(n.max(1)))
    }

    /// A time-based window of `duration`, in buckets of at most 250 ms.
    pub fn time_window(self, duration: Duration) -> Self {
        let buckets = (duration.as_millis() / 250).clamp(1, 1000) as u32;
        self.window(Window::Time { duration, buckets })
    }

    /// Calls in the window before any rate is evaluated.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.cfg.minimum_calls = n.max(1);
        self
    }

    /// Failure rate (0.0 to 1.0) at or above which the breaker opens.
    pub fn failure_rate_threshold(mut self, rate: f64) -> Self {
        self.cfg.failure_rate_threshold = rate.clamp(0.0, 1.0);
        self
    }

    /// Calls slower than `threshold` are slow; a slow-call rate at or above `rate` opens the
    /// breaker.
    pub fn slow_calls(mut self, threshold: Duration, rate: f64) -> Self {
        self.cfg.slow_call = Some((threshold, rate.clamp(0.0, 1.0)));
        self
    }

    /// Opens after `n` failures in a row, whatever the window says.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.cfg.consecutive_failures = Some(n.max(1));
        self
    }

    /// How long the breaker stays open the first time.
    pub fn wait_in_open(mut self, wait: Duration) -> Self {
        self.cfg.wait_in_open = wait.max(Duration::from_millis(1));
        self
    }

    /// Backoff of repeated openings: each re-opening multiplies the wait by `multiplier`, up to
    /// `max`, then applies `jitter` (a fraction, e.g. 0.1 for ±10%). A breaker that stayed closed
    /// for `stable_close` starts again from the first wait.
    pub fn backoff(
        mut self,
        multiplier: f64,
        max: Duration,
        jitter: f64,
        stable_close: Duration,
    ) -> Self {
        self.cfg.backoff_multiplier = multiplier.max(1.0);
        self.cfg.max_wait_in_open = max;
        self.cfg.jitter = jitter.clamp(0.0, 1.0);
        self.cfg.stable_close = stable_close;
        self
    }

    /// Probes admitted at once in half-open; their results decide.
    pub fn permitted_calls_in_half_open(mut self, n: u32) -> Self {
        self.cfg.permitted_calls_in_half_open = n.max(1);
        self
    }

    /// Longest time in half-open before going back to open.
    pub fn max_half_open(mut self, d: Duration) -> Self {
        self.cfg.max_half_open = d.max(Duration::from_millis(1));
        self
    }

    /// `poll_ready` returns `Pending` while open instead of admitting calls that fail fast,
    /// for balancers that pick ready endpoints.
    pub fn backpressure(mut self, on: bool) -> Self {
        self.cfg.backpressure = on;
        self
    }

    /// The breaker.
    pub fn build(self) -> super::Breaker {
        super::Breaker::from_builder(self)
    }
}
