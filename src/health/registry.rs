//! The registry: runs checks (concurrently, each with its timeout), caches and ages their
//! results, applies damping, aggregates groups, and reports telemetry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use metrics::{Gauge, Histogram, Key, KeyName, Label, Metadata, Unit};
use tokio::time::Instant;

use super::check::{CheckResult, Group, Mode, Registration, Status};

/// The health of a service: its checks, its probe groups and its availability state.
///
/// Cheap to clone; every clone sees the same checks.
#[derive(Clone)]
pub struct Health {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("checks", &self.check_names())
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) entries: RwLock<Vec<Arc<Entry>>>,
    pub(crate) draining: AtomicBool,
    pub(crate) startup_passed: AtomicBool,
    pub(crate) shutdown: tokio::sync::Notify,
    pub(crate) shutdown_requested: AtomicBool,
}

pub(crate) struct Entry {
    pub(crate) reg: Registration,
    state: Mutex<EntryState>,
    /// Single flight for on-request checks: concurrent probes wait here for one execution.
    flight: tokio::sync::Mutex<()>,
    started: AtomicBool,
    telemetry: Telemetry,
}

#[derive(Default)]
struct EntryState {
    /// The latest result after damping, and when it was produced (for TTL and staleness).
    effective: Option<(CheckResult, Instant)>,
    fails_in_row: u32,
    oks_in_row: u32,
}

/// A check's status as a probe sees it.
#[derive(Debug, Clone)]
pub struct Report {
    /// The check's name.
    pub name: Arc<str>,
    /// Its result (already aged: a stale result is Down).
    pub result: CheckResult,
    /// Whether a Down makes the aggregate Down.
    pub critical: bool,
    /// IETF `componentType`.
    pub component_type: Option<String>,
}

/// Handle of a registered check: read its status; set it, for passive checks.
#[derive(Clone)]
pub struct PassiveHandle {
    entry: Arc<Entry>,
}

impl std::fmt::Debug for PassiveHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassiveHandle")
            .field("name", &self.entry.reg.name)
            .finish()
    }
}

impl PassiveHandle {
    /// Sets the check's result (a passive check's only source; for the others, until their
    /// next run).
    pub fn set(&self, result: CheckResult) {
        self.entry.store(result);
    }

    /// Sets just a status.
    pub fn set_status(&self, status: Status) {
        self.set(CheckResult::new(status));
    }

    /// The current (aged) result.
    pub fn current(&self) -> CheckResult {
        self.entry
            .cached()
            .unwrap_or_else(|| CheckResult::new(Status::Unknown))
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                entries: RwLock::default(),
                draining: AtomicBool::new(false),
                startup_passed: AtomicBool::new(false),
                shutdown: tokio::sync::Notify::new(),
                shutdown_requested: AtomicBool::new(false),
            }),
        }
    }

    /// Registers a check; background checks start now when inside a tokio runtime (else on
    /// the first probe). The handle sets passive checks.
    pub fn register(&self, reg: Registration) -> PassiveHandle {
        let entry = Arc::new(Entry {
            telemetry: Telemetry::new(&reg.name),
            reg,
            state: Mutex::default(),
            flight: tokio::sync::Mutex::new(()),
            started: AtomicBool::new(false),
        });
        entry.telemetry.set(Status::Unknown);
        self.inner
            .entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry.clone());
        entry.start_background();
        PassiveHandle { entry }
    }

    /// The names of the registered checks.
    pub fn check_names(&self) -> Vec<Arc<str>> {
        self.entries().iter().map(|e| e.reg.name.clone()).collect()
    }

    pub(crate) fn entries(&self) -> Vec<Arc<Entry>> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts the service out of rotation: readiness fails at once, liveness is unaffected.
    pub fn drain(&self) {
        if !self.inner.draining.swap(true, Ordering::SeqCst) {
            tracing::warn!("service draining: readiness now fails");
        }
    }

    /// Back in rotation after [`Health::drain`].
    pub fn resume(&self) {
        if self.inner.draining.swap(false, Ordering::SeqCst) {
            tracing::info!("service resumed: readiness follows its checks again");
        }
    }

    /// Whether the service is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Asks [`crate::health::serve_with_shutdown`] to shut down, as SIGTERM would.
    pub fn trigger_shutdown(&self) {
        self.inner.shutdown_requested.store(true, Ordering::SeqCst);
        self.inner.shutdown.notify_waiters();
    }

    pub(crate) async fn shutdown_requested(&self) {
        loop {
            let notified = self.inner.shutdown.notified();
            if self.inner.shutdown_requested.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Runs (or reads) the checks of `group` (`None`: every check) except `exclude`, all at
    /// once, and returns what is known when they finish or `deadline` passes, whichever
    /// comes first. A check still running at the deadline reports Down ("no result within
    /// the probe deadline") and keeps running: its result serves the next probe.
    pub async fn evaluate(
        &self,
        group: Option<&Group>,
        exclude: &[String],
        deadline: Duration,
    ) -> Vec<Report> {
        let entries: Vec<_> = self
            .entries()
            .into_iter()
            .filter(|e| group.is_none_or(|g| e.reg.groups.contains(g)))
            .filter(|e| !exclude.iter().any(|x| **x == *e.reg.name))
            .collect();
        let mut set = tokio::task::JoinSet::new();
        for (i, e) in entries.iter().enumerate() {
            let e = e.clone();
            set.spawn(async move { (i, e.current().await) });
        }
        let mut results: Vec<Option<CheckResult>> = vec![None; entries.len()];
        let until = Instant::now() + deadline;
        while let Ok(Some(joined)) = tokio::time::timeout_at(until, set.join_next()).await {
            if let Ok((i, r)) = joined {
                results[i] = Some(r);
            }
        }
        // Whatever is still running goes on detached (its result is cached when it lands).
        set.detach_all();
        entries
            .iter()
            .zip(results)
            .map(|(e, r)| Report {
                name: e.reg.name.clone(),
                result: r.unwrap_or_else(|| {
                    CheckResult::down(format!(
                        "no result within the probe deadline of {}ms",
                        deadline.as_millis()
                    ))
                }),
                critical: e.reg.critical,
                component_type: e.reg.component_type.clone(),
            })
            .collect()
    }

    /// The aggregate of reports: Down if a critical check is Down (or has no result yet),
    /// Degraded if any other check is not Up, else Up.
    pub fn aggregate(reports: &[Report]) -> Status {
        let mut status = Status::Up;
        for r in reports {
            let s = match (r.result.status, r.critical) {
                (Status::Up, _) => Status::Up,
                (Status::Down | Status::Unknown, true) => return Status::Down,
                _ => Status::Degraded,
            };
            status = status.max(s);
        }
        status
    }
}

impl Entry {
    fn start_background(self: &Arc<Self>) {
        let Mode::Background {
            interval,
            initial_delay,
            jitter,
        } = self.reg.mode
        else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            tokio::time::sleep(initial_delay).await;
            loop {
                let Some(entry) = weak.upgrade() else { return };
                let result = entry.execute().await;
                entry.store(result);
                drop(entry);
                let extra = jitter.mul_f64(fastrand::f64());
                tokio::time::sleep(interval + extra).await;
            }
        });
    }

    /// The result a probe gets now.
    async fn current(self: Arc<Self>) -> CheckResult {
        match self.reg.mode {
            Mode::Passive => self
                .cached()
                .unwrap_or_else(|| CheckResult::new(Status::Unknown)),
            Mode::Background { .. } => {
                self.start_background();
                self.cached()
                    .unwrap_or_else(|| CheckResult::new(Status::Unknown).message("not run yet"))
            }
            Mode::OnRequest { ttl } => {
                if let Some(r) = self.fresh(ttl) {
                    return r;
                }
                let _flight = self.flight.lock().await;
                // Someone else may have run it while this probe waited.
                if let Some(r) = self.fresh(ttl) {
                    return r;
                }
                let result = self.execute().await;
                self.store(result);
                self.cached()
                    .unwrap_or_else(|| CheckResult::new(Status::Unknown))
            }
        }
    }

    fn fresh(&self, ttl: Duration) -> Option<CheckResult> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &state.effective {
            Some((r, at)) if at.elapsed() < ttl => Some(r.clone()),
            _ => None,
        }
    }

    /// The latest result, aged: past its maximum age it is Down ("stale").
    fn cached(&self) -> Option<CheckResult> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (r, at) = state.effective.as_ref()?;
        let age = at.elapsed();
        let max = self.reg.effective_max_age();
        if age > max {
            return Some(
                CheckResult::down(format!(
                    "stale: last result {}s ago (maximum age {}s)",
                    age.as_secs(),
                    max.as_secs()
                ))
                .observed(age.as_secs_f64(), "s"),
            );
        }
        Some(r.clone())
    }

    /// Runs the check once in its own task: a panic is Down with its message, a run past the
    /// timeout is Down "timed out after X" (and cancelled).
    async fn execute(&self) -> CheckResult {
        let Some(check) = self.reg.check.clone() else {
            return CheckResult::new(Status::Unknown);
        };
        let started = Instant::now();
        let task = tokio::spawn(check.run());
        let abort = task.abort_handle();
        let result = match tokio::time::timeout(self.reg.timeout, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if e.is_panic() => {
                let payload = e.into_panic();
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                CheckResult::down(format!("check panicked: {msg}"))
            }
            Ok(Err(_)) => CheckResult::down("check cancelled"),
            Err(_) => {
                abort.abort();
                CheckResult::down(format!(
                    "timed out after {}ms",
                    self.reg.timeout.as_millis()
                ))
            }
        };
        self.telemetry
            .duration
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Stores a raw result through damping, and reports a status change.
    fn store(&self, raw: CheckResult) {
        let (before, after) = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let before = s.effective.as_ref().map(|(r, _)| r.status);
            let failing = raw.status == Status::Down;
            if failing {
                s.fails_in_row += 1;
                s.oks_in_row = 0;
            } else {
                s.oks_in_row += 1;
                s.fails_in_row = 0;
            }
            let prev = before.unwrap_or(Status::Unknown);
            let effective =
                if failing && s.fails_in_row < self.reg.fail_after && prev != Status::Down {
                    // Not enough failures in a row yet: keep what it was, with the news.
                    let mut r = raw.clone();
                    r.status = if prev == Status::Unknown {
                        Status::Up
                    } else {
                        prev
                    };
                    r.message = Some(format!(
                        "{} failure(s) in a row (Down after {}): {}",
                        s.fails_in_row,
                        self.reg.fail_after,
                        raw.message.clone().unwrap_or_default()
                    ));
                    r
                } else if !failing && prev == Status::Down && s.oks_in_row < self.reg.recover_after
                {
                    let mut r = raw.clone();
                    r.status = Status::Down;
                    r.message = Some(format!(
                        "recovering: {} success(es) in a row (Up after {})",
                        s.oks_in_row, self.reg.recover_after
                    ));
                    r
                } else {
                    raw
                };
            let after = effective.status;
            s.effective = Some((effective, Instant::now()));
            (before, after)
        };
        if before != Some(after) {
            self.telemetry.set(after);
            // No `detail` member when the check said nothing (rather than an empty one).
            let detail = self.cached().and_then(|r| r.message);
            let detail = detail.as_deref();
            if after == Status::Down {
                tracing::warn!(check = %self.reg.name, from = before.unwrap_or(Status::Unknown).as_str(), to = after.as_str(), detail, "health check down");
            } else {
                tracing::info!(check = %self.reg.name, from = before.unwrap_or(Status::Unknown).as_str(), to = after.as_str(), detail, "health check status changed");
            }
        }
    }
}

// ---- telemetry ----

static METADATA: Metadata<'static> = Metadata::new(
    "towerscope::health",
    metrics::Level::INFO,
    Some(module_path!()),
);

struct Telemetry {
    status: [Gauge; 4],
    duration: Histogram,
}

impl Telemetry {
    fn new(name: &str) -> Self {
        metrics::with_recorder(|r| {
            r.describe_gauge(
                KeyName::from_const_str("health_check_status"),
                None,
                "1 for the check's current status, 0 for the others.".into(),
            );
            r.describe_histogram(
                KeyName::from_const_str("health_check_duration_seconds"),
                Some(Unit::Seconds),
                "Duration of health check runs.".into(),
            );
            let check = || Label::new("check", name.to_owned());
            Telemetry {
                status: Status::ALL.map(|s| {
                    let key = Key::from_parts(
                        "health_check_status",
                        vec![check(), Label::from_static_parts("status", s.as_str())],
                    );
                    r.register_gauge(&key, &METADATA)
                }),
                duration: r.register_histogram(
                    &Key::from_parts("health_check_duration_seconds", vec![check()]),
                    &METADATA,
                ),
            }
        })
    }

    fn set(&self, status: Status) {
        for (i, s) in Status::ALL.iter().enumerate() {
            self.status[i].set(if *s == status { 1.0 } else { 0.0 });
        }
    }
}
