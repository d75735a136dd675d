//! The breaker: state machine, admission, recording, transitions, telemetry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Unit};
use tokio::sync::broadcast;
/// The breaker's clock: quanta's TSC clock (a few nanoseconds a read) in the library, and
/// tokio's pausable clock in its unit tests, which drive every transition on a paused clock.
/// Timers (open -> half-open) always run on tokio; both clocks are monotonic at the same rate.
#[cfg(not(test))]
type Instant = quanta::Instant;
#[cfg(test)]
type Instant = tokio::time::Instant;

use super::config::{BreakerBuilder, BreakerConfig, Window};
use super::window::{CountWindow, TimeWindow, Totals};
use super::{BreakerOpen, CallOutcome};
use crate::shard::{Handles, Held};

/// A breaker's state, as reported in metrics, logs and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls pass; outcomes are recorded.
    Closed,
    /// Calls are rejected until the wait is over.
    Open,
    /// A few probes pass; their outcomes decide.
    HalfOpen,
    /// Every call passes; nothing is recorded.
    Disabled,
    /// Every call passes; outcomes are recorded and transitions reported (shadow mode).
    MetricsOnly,
    /// Every call is rejected until the breaker is reset.
    ForcedOpen,
}

impl State {
    /// Every state, in label order.
    pub const ALL: [State; 6] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::Disabled,
        State::MetricsOnly,
        State::ForcedOpen,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::Disabled => "disabled",
            State::MetricsOnly => "metrics_only",
            State::ForcedOpen => "forced_open",
        }
    }

    fn from_u8(v: u8) -> State {
        State::ALL[usize::from(v).min(5)]
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a transition happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// The failure rate reached the threshold.
    FailureRate {
        /// Failure rate, 0.0 to 1.0.
        rate: f64,
        /// Calls it was measured over.
        calls: u64,
    },
    /// The slow-call rate reached the threshold.
    SlowCallRate {
        /// Slow-call rate, 0.0 to 1.0.
        rate: f64,
        /// Calls it was measured over.
        calls: u64,
    },
    /// Too many failures in a row.
    ConsecutiveFailures(u32),
    /// The wait in open is over.
    WaitElapsed,
    /// The half-open probes succeeded.
    ProbesSucceeded,
    /// Half-open lasted longer than its maximum without a verdict.
    HalfOpenTimeout,
    /// Set through the handle.
    Manual,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::FailureRate { rate, calls } => {
                write!(f, "failure rate {:.1}% over {calls} calls", rate * 100.0)
            }
            Reason::SlowCallRate { rate, calls } => {
                write!(f, "slow-call rate {:.1}% over {calls} calls", rate * 100.0)
            }
            Reason::ConsecutiveFailures(n) => write!(f, "{n} consecutive failures"),
            Reason::WaitElapsed => f.write_str("wait in open elapsed"),
            Reason::ProbesSucceeded => f.write_str("half-open probes succeeded"),
            Reason::HalfOpenTimeout => f.write_str("half-open timeout"),
            Reason::Manual => f.write_str("manual"),
        }
    }
}

/// A state change, as published on [`Breaker::subscribe`].
#[derive(Debug, Clone)]
pub struct Transition {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// Why.
    pub reason: Reason,
}

/// A circuit breaker: share it (it is a cheap handle) between the services that protect one
/// downstream, and use it for manual control.
#[derive(Clone)]
pub struct Breaker {
    /// One handle per thread shard (see `crate::shard::Handles`): a call's ticket holds its
    /// thread's, so the calls of two workers do not count references on one line.
    pub(crate) inner: Arc<Handles<Inner>>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

// The state word: generation in the high 32 bits, the state in the low 8.
const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;
// The mode: normal, or one of the operational states.
const NORMAL: u8 = 255;

fn pack(generation: u32, state: u8) -> u64 {
    (u64::from(generation) << 32) | u64::from(state)
}

fn unpack(word: u64) -> (u32, u8) {
    ((word >> 32) as u32, word as u8)
}

pub(crate) struct Inner {
    /// A weak self-reference for the timers.
    me: Weak<Inner>,
    name: Arc<str>,
    cfg: BreakerConfig,
    created: Instant,
    mode: AtomicU8,
    word: AtomicU64,
    window: WindowImpl,
    consecutive: AtomicU32,
    /// Nanoseconds since `created`.
    open_until: AtomicU64,
    half_open_since: AtomicU64,
    closed_since: AtomicU64,
    opens_in_a_row: AtomicU32,
    permits: AtomicU32,
    probe_calls: AtomicU32,
    probe_failures: AtomicU32,
    probe_slow: AtomicU32,
    transitions: Mutex<()>,
    telemetry: Telemetry,
    events: broadcast::Sender<Transition>,
}

enum WindowImpl {
    Count(CountWindow),
    Time(TimeWindow),
}

/// Whether a call may proceed.
pub(crate) enum Admission {
    /// Proceed; report the result with the ticket.
    Allowed(Ticket),
    /// Rejected: fail fast.
    Rejected(BreakerOpen),
}

/// A call in flight. Dropping it without [`Ticket::complete`] is a cancellation: ignored, and
/// its half-open permit is released.
pub(crate) struct Ticket {
    inner: Held<Inner>,
    generation: u32,
    /// Record the outcome (false for disabled breakers and shadow-rejected calls).
    record: bool,
    probe: bool,
    start: Option<Instant>,
}

impl Breaker {
    /// A breaker named `name` (the `breaker` label), with the defaults of [`BreakerConfig`].
    pub fn builder(name: impl Into<String>) -> BreakerBuilder {
        BreakerBuilder::new(name)
    }

    /// A breaker with the default settings.
    pub fn new(name: impl Into<String>) -> Self {
        Self::builder(name).build()
    }

    pub(crate) fn from_builder(b: BreakerBuilder) -> Self {
        let name: Arc<str> = Arc::from(b.name);
        let window = match b.cfg.window {
            Window::Count(n) => WindowImpl::Count(CountWindow::new(n)),
            Window::Time { duration, buckets } => {
                WindowImpl::Time(TimeWindow::new(duration, buckets))
            }
        };
        let telemetry = Telemetry::new(&name);
        telemetry.set_state(State::Closed);
        let (events, _) = broadcast::channel(64);
        Self {
            inner: Arc::new(Handles::new(Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                name,
                created: Instant::now(),
                mode: AtomicU8::new(NORMAL),
                word: AtomicU64::new(pack(0, CLOSED)),
                window,
                consecutive: AtomicU32::new(0),
                open_until: AtomicU64::new(0),
                half_open_since: AtomicU64::new(0),
                closed_since: AtomicU64::new(0),
                opens_in_a_row: AtomicU32::new(0),
                permits: AtomicU32::new(0),
                probe_calls: AtomicU32::new(0),
                probe_failures: AtomicU32::new(0),
                probe_slow: AtomicU32::new(0),
                transitions: Mutex::new(()),
                telemetry,
                events,
                cfg: b.cfg,
            }))),
        }
    }

    /// Takes the breaker out of the telemetry, once nothing will call through it again (see
    /// `Telemetry::retire`).
    pub(crate) fn retire(&self) {
        self.inner.telemetry.retire();
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current state (an operational state when one is set).
    pub fn state(&self) -> State {
        self.inner.reported_state()
    }

    /// Failure and slow-call totals of the current window.
    pub fn totals(&self) -> Totals {
        self.inner.totals()
    }

    /// Transitions from now on. Slow subscribers miss old events (`RecvError::Lagged`), never
    /// slow the breaker down.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.inner.events.subscribe()
    }

    /// Rejects every call until [`Breaker::reset`] or [`Breaker::force_closed`].
    pub fn force_open(&self) {
        self.inner.set_mode(State::ForcedOpen);
    }

    /// Closes the breaker now and clears its window; it can trip again.
    pub fn force_closed(&self) {
        self.inner.set_mode_normal_closed(false);
    }

    /// Closes the breaker, clears its window and its backoff.
    pub fn reset(&self) {
        self.inner.set_mode_normal_closed(true);
    }

    /// Opens the breaker now for `wait` (then half-open as usual).
    pub fn open_for(&self, wait: Duration) {
        let inner = &self.inner;
        inner.mode.store(NORMAL, SeqCst);
        let (gen, state) = unpack(inner.word.load(SeqCst));
        inner.transition(gen, state, OPEN, Reason::Manual, Some(wait));
    }

    /// Admits every call and records nothing.
    pub fn disable(&self) {
        self.inner.set_mode(State::Disabled);
    }

    /// Shadow mode: admits every call, records outcomes and reports the transitions the breaker
    /// would make; `circuit_breaker_calls_total{outcome="rejected"}` counts the calls it would
    /// have rejected.
    pub fn metrics_only(&self) {
        self.inner.set_mode(State::MetricsOnly);
    }

    pub(crate) fn backpressure(&self) -> bool {
        self.inner.cfg.backpressure
    }

    pub(crate) fn admit(&self) -> Admission {
        self.inner.admit(&self.inner)
    }

    /// Whether a call would be rejected now, and until when (for backpressure).
    pub(crate) fn open_remaining(&self) -> Option<Duration> {
        let inner = &self.inner;
        if inner.mode.load(Relaxed) == State::ForcedOpen as u8 {
            return Some(inner.cfg.wait_in_open);
        }
        if inner.mode.load(Relaxed) != NORMAL {
            return None;
        }
        let (_, state) = unpack(inner.word.load(Acquire));
        if state != OPEN {
            return None;
        }
        let now = inner.now_nanos();
        let until = inner.open_until.load(Acquire);
        (now < until).then(|| Duration::from_nanos(until - now))
    }
}

impl Inner {
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn totals(&self) -> Totals {
        match &self.window {
            WindowImpl::Count(w) => w.totals(),
            WindowImpl::Time(w) => w.totals(self.now_nanos()),
        }
    }

    fn reported_state(&self) -> State {
        match self.mode.load(Acquire) {
            NORMAL => match unpack(self.word.load(Acquire)).1 {
                OPEN => State::Open,
                HALF_OPEN => State::HalfOpen,
                _ => State::Closed,
            },
            m => State::from_u8(m),
        }
    }

    fn set_mode(&self, mode: State) {
        let _g = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        let from = self.reported_state();
        self.mode.store(mode as u8, SeqCst);
        // A new generation: results of calls admitted before are ignored.
        let (gen, state) = unpack(self.word.load(SeqCst));
        self.word.store(pack(gen.wrapping_add(1), state), SeqCst);
        self.announce(from, mode, Reason::Manual);
    }

    fn set_mode_normal_closed(&self, reset_backoff: bool) {
        let _g = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        let from = self.reported_state();
        self.mode.store(NORMAL, SeqCst);
        let (gen, _) = unpack(self.word.load(SeqCst));
        self.enter_closed();
        if reset_backoff {
            self.opens_in_a_row.store(0, SeqCst);
        }
        self.word.store(pack(gen.wrapping_add(1), CLOSED), SeqCst);
        self.announce(from, State::Closed, Reason::Manual);
    }

    fn admit(&self, this: &Handles<Inner>) -> Admission {
        let mode = self.mode.load(Acquire);
        let (gen, state) = unpack(self.word.load(Acquire));
        let shadow = mode == State::MetricsOnly as u8;
        match mode {
            NORMAL => {}
            m if m == State::MetricsOnly as u8 => {}
            m if m == State::Disabled as u8 => {
                return Admission::Allowed(self.ticket(this, gen, false, false))
            }
            _ => {
                self.telemetry.rejected.increment(1);
                return Admission::Rejected(
                    self.rejection(State::ForcedOpen, self.cfg.wait_in_open),
                );
            }
        }
        match state {
            CLOSED => Admission::Allowed(self.ticket(this, gen, true, false)),
            OPEN => {
                let now = self.now_nanos();
                let until = self.open_until.load(Acquire);
                if now >= until {
                    self.transition(gen, OPEN, HALF_OPEN, Reason::WaitElapsed, None);
                    // Whoever won the transition, the half-open rules now apply.
                    return self.admit(this);
                }
                self.reject_or_shadow(
                    this,
                    gen,
                    State::Open,
                    Duration::from_nanos(until - now),
                    shadow,
                )
            }
            _ => {
                let since = self.half_open_since.load(Acquire);
                let max = nanos(self.cfg.max_half_open);
                let now = self.now_nanos();
                if now.saturating_sub(since) >= max {
                    self.transition(gen, HALF_OPEN, OPEN, Reason::HalfOpenTimeout, None);
                    return self.admit(this);
                }
                let took = self
                    .permits
                    .fetch_update(AcqRel, Acquire, |p| p.checked_sub(1))
                    .is_ok();
                if took {
                    return Admission::Allowed(self.ticket(this, gen, true, true));
                }
                // Every probe is out: retry once the half-open phase must have ended.
                let left = Duration::from_nanos((since + max).saturating_sub(now));
                self.reject_or_shadow(this, gen, State::HalfOpen, left, shadow)
            }
        }
    }

    fn reject_or_shadow(
        &self,
        this: &Handles<Inner>,
        gen: u32,
        state: State,
        retry_after: Duration,
        shadow: bool,
    ) -> Admission {
        self.telemetry.rejected.increment(1);
        if shadow {
            Admission::Allowed(self.ticket(this, gen, false, false))
        } else {
            Admission::Rejected(self.rejection(state, retry_after))
        }
    }

    fn rejection(&self, state: State, retry_after: Duration) -> BreakerOpen {
        BreakerOpen {
            name: self.name.clone(),
            state,
            retry_after,
        }
    }

    fn ticket(&self, this: &Handles<Inner>, generation: u32, record: bool, probe: bool) -> Ticket {
        Ticket {
            inner: this.held(),
            generation,
            record,
            probe,
            start: None,
        }
    }

    /// Records a finished call admitted in `gen`, finished at `now` (nanoseconds since the
    /// breaker was created).
    fn record(&self, gen: u32, probe: bool, outcome: CallOutcome, elapsed: Duration, now: u64) {
        self.telemetry.duration.record(elapsed.as_secs_f64());
        let failure = match outcome {
            CallOutcome::Success => false,
            CallOutcome::Failure => true,
            CallOutcome::Ignored => {
                self.telemetry.ignored.increment(1);
                return;
            }
        };
        if failure {
            self.telemetry.failure.increment(1);
        } else {
            self.telemetry.success.increment(1);
        }
        let (cur_gen, state) = unpack(self.word.load(Acquire));
        if cur_gen != gen {
            // Started in an earlier state: its result says nothing about this one.
            return;
        }
        let slow = self.cfg.slow_call.is_some_and(|(t, _)| elapsed >= t);
        if probe {
            self.record_probe(gen, failure, slow);
            return;
        }
        if state != CLOSED {
            return;
        }
        match &self.window {
            WindowImpl::Count(w) => w.record(failure, slow),
            WindowImpl::Time(w) => w.record(now, failure, slow),
        }
        let consecutive = if failure {
            self.consecutive.fetch_add(1, AcqRel) + 1
        } else {
            if self.consecutive.load(Relaxed) != 0 {
                self.consecutive.store(0, Relaxed);
            }
            0
        };
        if failure || slow {
            self.evaluate(gen, consecutive);
        } else if PUBLISH_TICK.with(|t| {
            let n = t.get().wrapping_add(1);
            t.set(n);
            n % 64 == 0
        }) {
            // Successes lower the rates: publish them now and then, counted per thread so
            // that no shared counter is written on every call.
            self.publish_rates(&self.totals());
        }
    }

    fn publish_rates(&self, t: &Totals) {
        self.telemetry.failure_rate.set(t.failure_rate());
        self.telemetry.slow_rate.set(t.slow_rate());
    }

    fn evaluate(&self, gen: u32, consecutive: u32) {
        if let Some(limit) = self.cfg.consecutive_failures {
            if consecutive >= limit {
                self.transition(
                    gen,
                    CLOSED,
                    OPEN,
                    Reason::ConsecutiveFailures(consecutive),
                    None,
                );
                return;
            }
        }
        let t = self.totals();
        self.publish_rates(&t);
        if t.calls < u64::from(self.cfg.minimum_calls) {
            return;
        }
        if t.failure_rate() >= self.cfg.failure_rate_threshold && t.failures > 0 {
            let reason = Reason::FailureRate {
                rate: t.failure_rate(),
                calls: t.calls,
            };
            self.transition(gen, CLOSED, OPEN, reason, None);
        } else if let Some((_, rate)) = self.cfg.slow_call {
            if t.slow_rate() >= rate && t.slow > 0 {
                let reason = Reason::SlowCallRate {
                    rate: t.slow_rate(),
                    calls: t.calls,
                };
                self.transition(gen, CLOSED, OPEN, reason, None);
            }
        }
    }

    fn record_probe(&self, gen: u32, failure: bool, slow: bool) {
        if failure {
            self.probe_failures.fetch_add(1, AcqRel);
        }
        if slow {
            self.probe_slow.fetch_add(1, AcqRel);
        }
        let done = self.probe_calls.fetch_add(1, AcqRel) + 1;
        let permitted = self.cfg.permitted_calls_in_half_open;
        if done < permitted {
            return;
        }
        let calls = u64::from(done);
        let failures = u64::from(self.probe_failures.load(Acquire));
        let slows = u64::from(self.probe_slow.load(Acquire));
        let t = Totals {
            calls,
            failures,
            slow: slows,
        };
        self.publish_rates(&t);
        let slow_trip = self
            .cfg
            .slow_call
            .is_some_and(|(_, rate)| slows > 0 && t.slow_rate() >= rate);
        if failures > 0 && t.failure_rate() >= self.cfg.failure_rate_threshold {
            let reason = Reason::FailureRate {
                rate: t.failure_rate(),
                calls,
            };
            self.transition(gen, HALF_OPEN, OPEN, reason, None);
        } else if slow_trip {
            let reason = Reason::SlowCallRate {
                rate: t.slow_rate(),
                calls,
            };
            self.transition(gen, HALF_OPEN, OPEN, reason, None);
        } else {
            self.transition(gen, HALF_OPEN, CLOSED, Reason::ProbesSucceeded, None);
        }
    }

    fn enter_closed(&self) {
        match &self.window {
            WindowImpl::Count(w) => w.reset(),
            WindowImpl::Time(w) => w.reset(),
        }
        self.consecutive.store(0, SeqCst);
        self.closed_since.store(self.now_nanos(), SeqCst);
        self.publish_rates(&Totals::default());
    }

    /// Moves from `from` (in generation `gen`) to `to`; a no-op when another thread moved first.
    /// Transitions are rare, so they take a lock: the bookkeeping of each state is exact.
    pub(crate) fn transition(
        &self,
        gen: u32,
        from: u8,
        to: u8,
        reason: Reason,
        wait: Option<Duration>,
    ) -> bool {
        let _g = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        let (cur_gen, cur) = unpack(self.word.load(SeqCst));
        if cur_gen != gen || cur != from {
            return false;
        }
        let next_gen = gen.wrapping_add(1);
        let now = self.now_nanos();
        match to {
            OPEN => {
                let wait = wait.unwrap_or_else(|| self.next_wait(from, now));
                self.open_until
                    .store(now.saturating_add(nanos(wait)), SeqCst);
                self.schedule(next_gen, OPEN, wait);
            }
            HALF_OPEN => {
                self.probe_calls.store(0, SeqCst);
                self.probe_failures.store(0, SeqCst);
                self.probe_slow.store(0, SeqCst);
                self.permits
                    .store(self.cfg.permitted_calls_in_half_open, SeqCst);
                self.half_open_since.store(now, SeqCst);
                self.schedule(next_gen, HALF_OPEN, self.cfg.max_half_open);
            }
            _ => self.enter_closed(),
        }
        self.word.store(pack(next_gen, to), SeqCst);
        // The machine's own states: in shadow mode these are the transitions it would make.
        self.announce(raw(from), raw(to), reason);
        true
    }

    /// The wait of an opening: `wait_in_open x multiplier^k` (capped, with jitter), where `k`
    /// counts the openings since the breaker last stayed closed for `stable_close`.
    fn next_wait(&self, from: u8, now: u64) -> Duration {
        let cfg = &self.cfg;
        if from == CLOSED
            && now.saturating_sub(self.closed_since.load(SeqCst)) >= nanos(cfg.stable_close)
        {
            self.opens_in_a_row.store(0, SeqCst);
        }
        let k = self.opens_in_a_row.fetch_add(1, SeqCst);
        let base = cfg.wait_in_open.as_secs_f64() * cfg.backoff_multiplier.powi(k.min(64) as i32);
        let max = cfg
            .max_wait_in_open
            .as_secs_f64()
            .max(cfg.wait_in_open.as_secs_f64());
        let mut secs = base.min(max);
        if cfg.jitter > 0.0 {
            secs *= 1.0 + cfg.jitter * (2.0 * fastrand::f64() - 1.0);
            secs = secs.min(max);
        }
        Duration::from_secs_f64(secs.max(0.001))
    }

    /// Timers, so that state and metrics are right without traffic: OPEN -> HALF_OPEN after
    /// the wait, HALF_OPEN -> OPEN after its maximum. Without a tokio runtime the same
    /// transitions happen on the next call.
    fn schedule(&self, gen: u32, state: u8, after: Duration) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = self.me.clone();
        rt.spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(inner) = weak.upgrade() {
                match state {
                    OPEN => inner.transition(gen, OPEN, HALF_OPEN, Reason::WaitElapsed, None),
                    _ => inner.transition(gen, HALF_OPEN, OPEN, Reason::HalfOpenTimeout, None),
                };
            }
        });
    }

    fn announce(&self, from: State, to: State, reason: Reason) {
        if from == to && reason != Reason::Manual {
            return;
        }
        self.telemetry.set_state(self.reported_state());
        self.telemetry.transition(from, to);
        let shadow = self.mode.load(Relaxed) == State::MetricsOnly as u8;
        if to == State::Open || to == State::ForcedOpen {
            tracing::warn!(
                breaker = %self.name, from = from.as_str(), to = to.as_str(), reason = %reason, shadow,
                "circuit breaker opened"
            );
        } else {
            tracing::info!(
                breaker = %self.name, from = from.as_str(), to = to.as_str(), reason = %reason, shadow,
                "circuit breaker state changed"
            );
        }
        let _ = self.events.send(Transition {
            breaker: self.name.clone(),
            from,
            to,
            reason,
        });
    }
}

thread_local! {
    static PUBLISH_TICK: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn raw(state: u8) -> State {
    match state {
        OPEN => State::Open,
        HALF_OPEN => State::HalfOpen,
        _ => State::Closed,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Ticket {
    /// Starts the clock (at `call`, not at admission in `poll_ready`).
    pub(crate) fn start(&mut self) {
        self.start = Some(Instant::now());
    }

    /// Reports the call's outcome.
    pub(crate) fn complete(mut self, outcome: CallOutcome) {
        if self.record {
            // One clock read gives both the call's duration and the window's time.
            let now = Instant::now();
            let elapsed = self
                .start
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
            let since = u64::try_from(now.saturating_duration_since(self.inner.created).as_nanos())
                .unwrap_or(u64::MAX);
            self.inner
                .record(self.generation, self.probe, outcome, elapsed, since);
        }
        self.release();
    }

    fn release(&mut self) {
        if std::mem::take(&mut self.probe) {
            let (gen, state) = unpack(self.inner.word.load(Acquire));
            // Permits belong to one half-open phase; a later phase has its own.
            if gen == self.generation && state == HALF_OPEN {
                self.inner.permits.fetch_add(1, AcqRel);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Cancelled (or never called): ignored, permit released.
        self.release();
    }
}

// ---- telemetry ----

static METADATA: Metadata<'static> = Metadata::new(
    "towerscope::breaker",
    metrics::Level::INFO,
    Some(module_path!()),
);

/// How many breakers of each name exist: they share their series (the `breaker` label), so
/// one retired takes them away only when it is the last.
static NAMED: LazyLock<Mutex<HashMap<Arc<str>, usize>>> = LazyLock::new(Mutex::default);

struct Telemetry {
    name: Arc<str>,
    states: [Gauge; 6],
    success: Counter,
    failure: Counter,
    ignored: Counter,
    rejected: Counter,
    duration: Histogram,
    failure_rate: Gauge,
    slow_rate: Gauge,
    transitions: Mutex<Vec<((State, State), Counter)>>,
}

impl Telemetry {
    fn new(name: &Arc<str>) -> Self {
        {
            let mut named = NAMED.lock().unwrap_or_else(|e| e.into_inner());
            *named.entry(name.clone()).or_default() += 1;
        }
        metrics::with_recorder(|r| {
            r.describe_gauge(
                KeyName::from_const_str("circuit_breaker_state"),
                None,
                "1 for the breaker's current state, 0 for the others.".into(),
            );
            r.describe_counter(
                KeyName::from_const_str("circuit_breaker_calls_total"),
                None,
                "Calls through the breaker by outcome: success, failure, ignored, rejected.".into(),
            );
            r.describe_histogram(
                KeyName::from_const_str("circuit_breaker_call_duration_seconds"),
                Some(Unit::Seconds),
                "Duration of the calls the breaker admitted.".into(),
            );
            r.describe_counter(
                KeyName::from_const_str("circuit_breaker_transitions_total"),
                None,
                "State transitions of the breaker.".into(),
            );
            r.describe_gauge(
                KeyName::from_const_str("circuit_breaker_failure_rate"),
                None,
                "Failure rate (0 to 1) over the breaker's window.".into(),
            );
            r.describe_gauge(
                KeyName::from_const_str("circuit_breaker_slow_call_rate"),
                None,
                "Slow-call rate (0 to 1) over the breaker's window.".into(),
            );
            let b = || Label::new("breaker", name.to_string());
            let key = |n: &'static str, extra: Option<(&'static str, &'static str)>| {
                let mut labels = vec![b()];
                if let Some((k, v)) = extra {
                    labels.push(Label::from_static_parts(k, v));
                }
                Key::from_parts(n, labels)
            };
            let calls = |o| {
                r.register_counter(
                    &key("circuit_breaker_calls_total", Some(("outcome", o))),
                    &METADATA,
                )
            };
            Telemetry {
                name: name.clone(),
                states: State::ALL.map(|s| {
                    r.register_gauge(
                        &key("circuit_breaker_state", Some(("state", s.as_str()))),
                        &METADATA,
                    )
                }),
                success: calls("success"),
                failure: calls("failure"),
                ignored: calls("ignored"),
                rejected: calls("rejected"),
                duration: r.register_histogram(
                    &key("circuit_breaker_call_duration_seconds", None),
                    &METADATA,
                ),
                failure_rate: r
                    .register_gauge(&key("circuit_breaker_failure_rate", None), &METADATA),
                slow_rate: r
                    .register_gauge(&key("circuit_breaker_slow_call_rate", None), &METADATA),
                // The automatic transitions, registered now with the rest; manual ones on use.
                transitions: Mutex::new(
                    [
                        (State::Closed, State::Open),
                        (State::Open, State::HalfOpen),
                        (State::HalfOpen, State::Closed),
                        (State::HalfOpen, State::Open),
                    ]
                    .into_iter()
                    .map(|(from, to)| {
                        (
                            (from, to),
                            r.register_counter(&transition_key(name, from, to), &METADATA),
                        )
                    })
                    .collect(),
                ),
            }
        })
    }

    fn set_state(&self, state: State) {
        for s in State::ALL {
            self.states[s.index()].set(if s == state { 1.0 } else { 0.0 });
        }
    }

    /// The breaker is gone (a keyed breaker evicted): its state says none, and its series
    /// leave towerscope's exposition, so an open breaker evicted while idle does not read as
    /// open for good (nor its series pile up as keys come and go).
    fn retire(&self) {
        // Held until the series are gone: a namesake made meanwhile counts itself first and
        // registers after.
        let named = NAMED.lock().unwrap_or_else(|e| e.into_inner());
        if named.get(&self.name) != Some(&1) {
            // Another breaker of this name (a second keyed layer from the same template)
            // reports on these series still.
            return;
        }
        for g in &self.states {
            g.set(0.0);
        }
        self.failure_rate.set(0.0);
        self.slow_rate.set(0.0);
        #[cfg(feature = "prometheus")]
        crate::metrics::forget(|k| {
            k.name().starts_with("circuit_breaker_")
                && k.labels()
                    .any(|l| l.key() == "breaker" && l.value() == &*self.name)
        });
        drop(named);
    }

    fn transition(&self, from: State, to: State) {
        let mut t = self.transitions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = t.iter().find(|(k, _)| *k == (from, to)) {
            c.increment(1);
            return;
        }
        let key = transition_key(&self.name, from, to);
        let c = metrics::with_recorder(|r| r.register_counter(&key, &METADATA));
        c.increment(1);
        t.push(((from, to), c));
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let mut named = NAMED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = named.get_mut(&self.name) {
            *count -= 1;
            if *count == 0 {
                named.remove(&self.name);
            }
        }
    }
}

fn transition_key(name: &str, from: State, to: State) -> Key {
    Key::from_parts(
        "circuit_breaker_transitions_total",
        vec![
            Label::new("breaker", name.to_owned()),
            Label::from_static_parts("from", from.as_str()),
            Label::from_static_parts("to", to.as_str()),
        ],
    )
}
