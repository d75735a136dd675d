//! Heartbeats for background jobs (a dead man's switch).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use metrics::{Gauge, Key, KeyName, Label, Metadata};
use tokio::time::Instant;

use super::check::{CheckResult, Group, Mode, Registration};
use super::registry::Health;

/// A heartbeat's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatState {
    /// Registered, no beat yet, not yet late.
    New,
    /// Beat within the period.
    Up,
    /// Past the period, within the grace.
    Late,
    /// Past period + grace, or the last cycle failed.
    Down,
}

/// The handle a background job beats.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    inner: Arc<Beat>,
}

#[derive(Debug)]
struct Beat {
    job: String,
    period: Duration,
    grace: Duration,
    registered: Instant,
    state: Mutex<BeatInner>,
    last_success: Gauge,
}

#[derive(Debug, Default)]
struct BeatInner {
    last_beat: Option<Instant>,
    running_since: Option<Instant>,
    failure: Option<String>,
}

static METADATA: Metadata<'static> = Metadata::new(
    "towerscope::health",
    metrics::Level::INFO,
    Some(module_path!()),
);

impl Heartbeat {
    /// A cycle completed successfully.
    pub fn beat(&self) {
        let mut s = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        s.last_beat = Some(Instant::now());
        s.running_since = None;
        s.failure = None;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.inner.last_success.set(now);
    }

    /// A cycle started (shown in the check's message while it runs).
    pub fn start(&self) {
        let mut s = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        s.running_since = Some(Instant::now());
    }

    /// A cycle failed: Down with this reason until the next successful beat.
    pub fn fail(&self, reason: impl Into<String>) {
        let mut s = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        s.failure = Some(reason.into());
        s.running_since = None;
    }

    /// The state now.
    pub fn state(&self) -> BeatState {
        self.result().0
    }

    fn result(&self) -> (BeatState, CheckResult) {
        let b = &*self.inner;
        let s = b.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = &s.failure {
            return (
                BeatState::Down,
                CheckResult::down(format!("last cycle failed: {why}")),
            );
        }
        let since = s.last_beat.unwrap_or(b.registered).elapsed();
        let secs = since.as_secs_f64();
        let state = if since > b.period + b.grace {
            BeatState::Down
        } else if s.last_beat.is_none() {
            BeatState::New
        } else if since > b.period {
            BeatState::Late
        } else {
            BeatState::Up
        };
        let what = if s.last_beat.is_some() {
            "last beat"
        } else {
            "registered, no beat"
        };
        let msg = format!(
            "{what} {secs:.1}s ago (period {}s, grace {}s)",
            b.period.as_secs_f64(),
            b.grace.as_secs_f64()
        );
        let r = match state {
            BeatState::Up | BeatState::New => CheckResult::up().message(msg),
            BeatState::Late => CheckResult::degraded(msg),
            BeatState::Down => CheckResult::down(msg),
        };
        (state, r.observed(secs, "s"))
    }
}

impl Health {
    /// Registers a heartbeat for `job`, expected every `period`, Down after `period + grace`
    /// without a beat. A critical heartbeat fails readiness when Down; otherwise it degrades.
    /// Also exports `heartbeat_last_success_timestamp_seconds{job}`, so Prometheus can alert
    /// on `time() - heartbeat_last_success_timestamp_seconds > period + grace` even when the
    /// whole process is gone.
    pub fn heartbeat(
        &self,
        job: impl Into<String>,
        period: Duration,
        grace: Duration,
        critical: bool,
    ) -> Heartbeat {
        let job = job.into();
        let last_success = metrics::with_recorder(|r| {
            r.describe_gauge(
                KeyName::from_const_str("heartbeat_last_success_timestamp_seconds"),
                None,
                "Unix time of the job's last successful cycle.".into(),
            );
            r.register_gauge(
                &Key::from_parts(
                    "heartbeat_last_success_timestamp_seconds",
                    vec![Label::new("job", job.clone())],
                ),
                &METADATA,
            )
        });
        let hb = Heartbeat {
            inner: Arc::new(Beat {
                job: job.clone(),
                period,
                grace,
                registered: Instant::now(),
                state: Mutex::default(),
                last_success,
            }),
        };
        let probe = hb.clone();
        self.register(
            Registration::new(format!("heartbeat:{}", hb.inner.job), move || {
                let probe = probe.clone();
                async move { probe.result().1 }
            })
            .groups([Group::Readiness, Group::Tag("heartbeat".into())])
            .critical(critical)
            .component_type("component")
            .mode(Mode::OnRequest {
                ttl: Duration::ZERO,
            }),
        );
        hb
    }
}
