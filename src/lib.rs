//! # towerscope
//!
//! Composable [Tower](https://docs.rs/tower) layers that give any axum or Hyper service
//! production observability.
//!
//! - [`lifecycle`]: the shared request lifecycle (route, method, outcome, end of body) that
//!   every layer uses, and the [`lifecycle::ObserveLayer`] that runs capabilities in one pass.
//! - [`metrics`]: RED metrics (rate, errors, duration) with OpenTelemetry semantic-convention
//!   names, and the Prometheus `/metrics` endpoint over towerscope's sharded metric storage.
//! - `log` (feature `log`): request logs, JSON lines with the request's context on every line,
//!   request ids, redaction, sampling, rate limiting, a non-blocking writer.
//! - [`breaker`]: a circuit breaker layer with full telemetry and manual control.
//! - `health` (feature `health`): checks, `/livez` `/readyz` `/startupz` `/health`, heartbeats,
//!   graceful shutdown.
//! - [`trace`]: W3C trace propagation, OpenTelemetry server and client spans, OTLP export, log
//!   correlation (feature `otel`).
//! - `resources` (feature `resources`): process, container, disk and runtime metrics.
//! - [`shed`]: load shedding: a concurrency limit answering 503 with `Retry-After`.
//! - [`ops`]: any other call (caches, queues, business events) in the same shape.
//! - [`db`]: database instrumentation: an instrumented sqlx pool (feature `sqlx`) and the SQL
//!   analyser.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use towerscope::metrics::{Prometheus, RedLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let prometheus = Prometheus::install()?; // the global `metrics` recorder
//! let app = Router::new()
//!     .route("/users/{id}", get(|| async { "user" }))
//!     .merge(prometheus.router()) // GET /metrics (not measured: excluded by default)
//!     // `layer`, not `route_layer`: unmatched requests (404s) are counted too, with no route.
//!     .layer(RedLayer::new());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs, unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// The docs name the items of optional features; in a build without one of them, those names
// stay plain text instead of failing the build (the full build checks every link).
#![cfg_attr(
    not(all(
        feature = "axum",
        feature = "hyper",
        feature = "prometheus",
        feature = "health",
        feature = "log",
        feature = "sqlx",
        feature = "otel",
        feature = "resources"
    )),
    allow(rustdoc::broken_intra_doc_links)
)]

pub mod breaker;
pub mod db;
#[cfg(any(feature = "health", feature = "resources"))]
mod fs_space;
#[cfg(any(feature = "prometheus", feature = "otel"))]
mod gzip;
#[cfg(feature = "health")]
pub mod health;
#[cfg(any(feature = "log", feature = "otel"))]
mod ip_text;
#[cfg(any(feature = "log", feature = "otel"))]
mod json_str;
pub mod lifecycle;
#[cfg(feature = "log")]
pub mod log;
pub mod metrics;
pub mod ops;
#[cfg(any(feature = "log", feature = "otel"))]
mod prefetch;
pub mod redact;
#[cfg(feature = "resources")]
pub mod resources;
mod shard;
pub mod shed;
#[cfg(any(feature = "log", feature = "health"))]
mod time;
#[cfg(all(feature = "tls", any(feature = "otel", feature = "health")))]
mod tls;
pub mod trace;

/// The boxed error type of Tower middleware.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
