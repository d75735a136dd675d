//! Health and readiness: checks, probe routers, heartbeats for background jobs, graceful
//! shutdown.
//!
//! - A check is an async function returning Up, Degraded or Down (Unknown before its first
//!   run) with optional details. It is registered with a name, groups (liveness, readiness,
//!   startup, tags), criticality (a non-critical Down only degrades the aggregate), a timeout
//!   ("timed out after X" is Down), damping, a maximum age (an older result is Down, "stale")
//!   and a mode: on request with a TTL and single flight, in the background on an interval
//!   (probes answer from the latest result), or passive (set through a handle).
//! - Checks run concurrently, each in its own task: a panic is Down with its message.
//! - [`Health::router`]: `/livez`, `/readyz`, `/startupz` (a latch), `/health` and
//!   `/{probe}/{check}`, with the Kubernetes API server's conventions (`ok`; `?verbose`;
//!   `?exclude=name`, listed as `[+]name excluded: ok`, with a warning for names that match no
//!   check) and the IETF `application/health+json` format when `Accept` weighs JSON above
//!   text (`*/*` alone gets text), or on `?format=json`. Up and Degraded are 200, Down 503. Details are withheld unless the
//!   [`Details`] policy allows them. `Cache-Control: no-store`. Every probe answers within its
//!   deadline (800 ms) whatever the checks do.
//! - Built-in checks: [`http_check`] (`https://` with the `tls` feature, and
//!   `http_check_with_ca` for a private CA), [`tcp_check`], [`disk_check`], [`runtime_check`],
//!   `sqlx_check` (a database pool ping, feature `sqlx`),
//!   breakers through [`Health::watch_breakers`], heartbeats through [`Health::heartbeat`].
//! - [`serve_with_shutdown`]: SIGTERM -> readiness 503 -> drain delay -> listener closed ->
//!   in-flight requests finish -> flush -> exit. [`Health::drain`] / [`Health::resume`] do the
//!   first step by hand.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `health_check_status` | gauge | `check`, `status` (1 for `up`, `degraded`, `down` or `unknown`, 0 for the others) |
//! | `health_check_duration_seconds` | histogram | `check` |
//! | `heartbeat_last_success_timestamp_seconds` | gauge | `job` |
//!
//! A status change is logged (WARN to Down, INFO otherwise) with `check`, `from`, `to` and
//! `detail`.
//!
//! ```no_run
//! use std::time::Duration;
//! use towerscope::health::{disk_check, CheckResult, Group, Health, Registration};
//!
//! # async fn run() {
//! let health = Health::new();
//! health.register(Registration::new("cache", || async { CheckResult::up() }).critical(false));
//! health.register(
//!     Registration::new("disk", disk_check("/", 0.05))
//!         .groups([Group::Readiness, Group::Liveness])
//!         .background(Duration::from_secs(30)),
//! );
//! let job = health.heartbeat("reindex", Duration::from_secs(60), Duration::from_secs(30), true);
//! job.beat();
//! let app: axum::Router = axum::Router::new().merge(health.router());
//! # }
//! ```

mod check;
mod checks;
mod heartbeat;
mod registry;
mod router;
mod shutdown;

pub use check::{Check, CheckFuture, CheckResult, Group, Mode, Registration, Status};
#[cfg(feature = "tls")]
pub use checks::http_check_with_ca;
#[cfg(feature = "sqlx")]
pub use checks::sqlx_check;
pub use checks::{disk_check, http_check, runtime_check, tcp_check};
pub use heartbeat::{BeatState, Heartbeat};
pub use registry::{Health, PassiveHandle, Report};
pub use router::{Details, RouterConfig};
pub use shutdown::{serve_with_shutdown, FlushHook, ShutdownConfig};

#[cfg(test)]
mod tests;
