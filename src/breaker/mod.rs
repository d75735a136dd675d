//! A circuit breaker as a Tower layer: fails fast when a downstream is failing, probes
//! carefully, recovers, and reports all of it.
//!
//! - States: closed, open, half-open, and the operational states disabled, metrics-only
//!   (shadow mode) and forced-open, under manual control through the [`Breaker`] handle.
//! - Trip policies, any of which opens the breaker: failure rate over a sliding window,
//!   slow-call rate, consecutive failures. Windows are count-based (the last N calls) or
//!   time-based (the last T, in sub-second buckets); both are lock-free, O(1) per call.
//!   Evaluation starts once [`BreakerBuilder::minimum_calls`] calls are in the window, not
//!   when the window is full.
//! - Open -> half-open after the wait, on the next call and by a timer; repeated openings
//!   back off exponentially with jitter up to a cap, and the backoff resets after a stable
//!   close. Half-open admits exactly `permitted_calls_in_half_open` probes at once, ignores
//!   results of calls admitted in an earlier state (a generation counter), frees the permit of
//!   a dropped probe, and returns to open after `max_half_open` without a verdict.
//! - Classification: [`HttpClassifier`] (5xx, 429 and errors fail; other 4xx succeed; a
//!   dropped call is ignored), [`ErrorsAreFailures`], or any closure.
//! - Rejections fail fast with [`BreakerOpen`] (503 + `Retry-After` as an axum response).
//! - [`KeyedCircuitBreakerLayer`]: one breaker per host.
//!
//! Telemetry, per breaker (handles resolved when the breaker is built: install the recorder
//! first):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `circuit_breaker_state` | gauge | `breaker`, `state` (1 for the current state, 0 for the other five) |
//! | `circuit_breaker_calls_total` | counter | `breaker`, `outcome` = `success`, `failure`, `ignored`, `rejected` |
//! | `circuit_breaker_call_duration_seconds` | histogram | `breaker` |
//! | `circuit_breaker_transitions_total` | counter | `breaker`, `from`, `to` |
//! | `circuit_breaker_failure_rate` | gauge | `breaker` |
//! | `circuit_breaker_slow_call_rate` | gauge | `breaker` |
//!
//! Every transition is logged (`WARN` when opening, `INFO` otherwise) with `breaker`, `from`,
//! `to`, `reason` and `shadow`, and published on [`Breaker::subscribe`].
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use towerscope::breaker::{Breaker, BreakerOpen, CircuitBreakerLayer};
//!
//! # async fn run() {
//! let breaker = Breaker::builder("inventory")
//!     .slow_calls(Duration::from_secs(2), 0.8)
//!     .build();
//! let mut events = breaker.subscribe();
//! let client = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(breaker.clone()))
//!     .service(tower::service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::io::Error>(http::Response::new(String::new()))
//!     }));
//! tokio::spawn(async move {
//!     while let Ok(t) = events.recv().await {
//!         println!("{} went {} -> {} ({})", t.breaker, t.from.as_str(), t.to.as_str(), t.reason);
//!     }
//! });
//! # let _ = client;
//! # }
//! ```

mod classify;
mod config;
mod error;
mod keyed;
mod layer;
mod state;
mod window;

pub use classify::{classify_status, CallOutcome, Classify, ErrorsAreFailures, HttpClassifier};
pub use config::{BreakerBuilder, BreakerConfig, Window};
pub use error::BreakerOpen;
pub use keyed::{authority_key, KeyedCircuitBreaker, KeyedCircuitBreakerLayer};
pub use layer::{CircuitBreaker, CircuitBreakerLayer, ResponseFuture};
pub use state::{Breaker, Reason, State, Transition};
pub use window::Totals;

#[cfg(test)]
mod tests;
