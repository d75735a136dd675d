//! The check model: statuses, results, and how a check is registered.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A check's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Working.
    Up,
    /// Working with reduced capacity or quality; the service stays in rotation.
    Degraded,
    /// Not working.
    Down,
    /// Not run yet.
    Unknown,
}

impl Status {
    /// Every status, in label order.
    pub const ALL: [Status; 4] = [Status::Up, Status::Degraded, Status::Down, Status::Unknown];

    /// `up`, `degraded`, `down`, `unknown`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Degraded => "degraded",
            Status::Down => "down",
            Status::Unknown => "unknown",
        }
    }

    /// The IETF health-check format's `pass`, `warn` or `fail`.
    pub const fn ietf(self) -> &'static str {
        match self {
            Status::Up => "pass",
            Status::Degraded | Status::Unknown => "warn",
            Status::Down => "fail",
        }
    }
}

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    /// The status.
    pub status: Status,
    /// A human-readable detail (shown only where details are allowed).
    pub message: Option<String>,
    /// A measured value, e.g. a latency or a free-space ratio.
    pub observed_value: Option<f64>,
    /// Its unit, e.g. `ms` or `ratio`.
    pub observed_unit: Option<String>,
    /// When the result was produced.
    pub time: SystemTime,
}

impl CheckResult {
    /// A result with this status, now.
    pub fn new(status: Status) -> Self {
        Self {
            status,
            message: None,
            observed_value: None,
            observed_unit: None,
            time: SystemTime::now(),
        }
    }

    /// Up.
    pub fn up() -> Self {
        Self::new(Status::Up)
    }

    /// Degraded, with a reason.
    pub fn degraded(message: impl Into<String>) -> Self {
        Self::new(Status::Degraded).message(message)
    }

    /// Down, with a reason.
    pub fn down(message: impl Into<String>) -> Self {
        Self::new(Status::Down).message(message)
    }

    /// Adds a message.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Adds an observed value and its unit.
    pub fn observed(mut self, value: f64, unit: impl Into<String>) -> Self {
        self.observed_value = Some(value);
        self.observed_unit = Some(unit.into());
        self
    }
}

/// A boxed check future.
pub type CheckFuture = Pin<Box<dyn Future<Output = CheckResult> + Send>>;

/// A health check: an async function returning a [`CheckResult`]. Closures returning a future
/// are checks.
pub trait Check: Send + Sync + 'static {
    /// Runs the check once.
    fn run(&self) -> CheckFuture;
}

impl<F, Fut> Check for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CheckResult> + Send + 'static,
{
    fn run(&self) -> CheckFuture {
        Box::pin(self())
    }
}

/// A probe group a check belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Group {
    /// `/livez`: is the process alive (restart it if not)?
    Liveness,
    /// `/readyz`: may it receive traffic now?
    Readiness,
    /// `/startupz`: has it finished starting (a latch)?
    Startup,
    /// A custom tag.
    Tag(String),
}

/// When a check runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// When a probe asks, at most once per `ttl`; concurrent probes share one execution.
    OnRequest {
        /// How long a result is reused.
        ttl: Duration,
    },
    /// Periodically in the background; probes answer from the latest result.
    Background {
        /// Time between runs.
        interval: Duration,
        /// Before the first run.
        initial_delay: Duration,
        /// Up to this much is added to each interval at random, so checks spread out.
        jitter: Duration,
    },
    /// Never run: the application sets the status through a [`crate::health::PassiveHandle`].
    Passive,
}

/// A check and how to run it.
pub struct Registration {
    pub(crate) name: Arc<str>,
    pub(crate) check: Option<Arc<dyn Check>>,
    pub(crate) groups: Vec<Group>,
    pub(crate) critical: bool,
    pub(crate) timeout: Duration,
    pub(crate) mode: Mode,
    pub(crate) max_age: Option<Duration>,
    pub(crate) component_type: Option<String>,
    pub(crate) fail_after: u32,
    pub(crate) recover_after: u32,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .field("critical", &self.critical)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// A check named `name` (the `check` label and the `/readyz/{name}` path). Defaults: the
    /// readiness group, critical, 1 s timeout, on request with a 1 s TTL, no damping, results
    /// older than 5 minutes (or 3 background intervals) are stale.
    pub fn new(name: impl Into<String>, check: impl Check) -> Self {
        Self {
            name: Arc::from(name.into()),
            check: Some(Arc::new(check)),
            groups: vec![Group::Readiness],
            critical: true,
            timeout: Duration::from_secs(1),
            mode: Mode::OnRequest {
                ttl: Duration::from_secs(1),
            },
            max_age: None,
            component_type: None,
            fail_after: 1,
            recover_after: 1,
        }
    }

    /// A passive check: its status is set through the handle returned at registration.
    pub fn passive(name: impl Into<String>) -> Self {
        let mut r = Self::new(name, || async { CheckResult::new(Status::Unknown) });
        r.check = None;
        r.mode = Mode::Passive;
        r
    }

    /// The groups (replaces the default readiness group).
    pub fn groups(mut self, groups: impl IntoIterator<Item = Group>) -> Self {
        self.groups = groups.into_iter().collect();
        self
    }

    /// Whether a Down makes the aggregate Down (critical) or only Degraded.
    pub fn critical(mut self, critical: bool) -> Self {
        self.critical = critical;
        self
    }

    /// A run taking longer is Down, "timed out after X".
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How it runs.
    pub fn mode(mut self, mode: Mode) -> Self {
        if self.check.is_some() || mode == Mode::Passive {
            self.mode = mode;
        }
        self
    }

    /// Runs in the background every `interval`.
    pub fn background(self, interval: Duration) -> Self {
        self.mode(Mode::Background {
            interval,
            initial_delay: Duration::ZERO,
            jitter: interval / 10,
        })
    }

    /// A result older than this is Down ("stale"): a check that stopped running never reports
    /// a cached Up forever.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// The IETF `componentType` (e.g. `datastore`, `component`, `system`).
    pub fn component_type(mut self, t: impl Into<String>) -> Self {
        self.component_type = Some(t.into());
        self
    }

    /// Damping: `fail_after` consecutive failures before Down, `recover_after` successes
    /// before Up again.
    pub fn damping(mut self, fail_after: u32, recover_after: u32) -> Self {
        self.fail_after = fail_after.max(1);
        self.recover_after = recover_after.max(1);
        self
    }

    pub(crate) fn effective_max_age(&self) -> Duration {
        self.max_age.unwrap_or(match self.mode {
            Mode::Background { interval, .. } => (interval * 3).max(Duration::from_secs(1)),
            _ => Duration::from_secs(300),
        })
    }
}
