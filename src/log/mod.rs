//! Request logs with context: one structured record per request, the request's context on
//! every line written while serving it, request ids, redaction, sampling and rate limiting,
//! written through a non-blocking queue that drops (and counts) rather than stall.
//!
//! - [`RequestLogLayer`]: one `tracing` event per request (target `towerscope::request`) when
//!   it is finished or cancelled, with `method`, `route`, `path`, `status`, `duration_ms`,
//!   `request_id`, `trace_id`/`span_id` (with tracing), `client_ip`, `user_agent`,
//!   `request_bytes` (its `Content-Length`, or for a body of unknown length such as a chunked
//!   upload the bytes the service read from axum's `Body`; absent without a body),
//!   `response_bytes`, `outcome` (`success`, `client_error`, `server_error`, `cancelled`),
//!   `error_type`, `slow`, and whatever the handler added (`user_id`, `tenant`, …). Level by
//!   outcome (ERROR, WARN, INFO by default; configurable), WARN with `slow=true` past a
//!   threshold. Probe routes and `/metrics` are excluded by default.
//! - Every record written while the request is served (handlers, spawned work that carries the
//!   request's span) has `request_id`, `route` (and `trace_id`, `span_id`) at its top level;
//!   [`add_context`] adds key/values to the rest of the request. Context lives with the
//!   request (on its thread while it is polled, then in its span): it never leaks into another
//!   request. Under [`LogConfig`]'s JSON subscriber the request's `tracing` span is made only
//!   when something asks for it (`Span::current()`, a span made in the request), which most
//!   requests never do ([`RequestScope`]); under any other subscriber it is made up front.
//! - [`RequestId`]: an incoming `x-request-id` is kept when valid (1-128 bytes of
//!   `[A-Za-z0-9._~:/+=@-]`), else replaced by a UUID v7; set on the response; an extractor.
//! - [`LogConfig`]: the subscriber in one call: JSON lines on stdout (`timestamp` RFC 3339 UTC
//!   with microseconds, `level`, `target`, `message`, `service`, fields, context), pretty on a
//!   terminal or with `TOWERSCOPE_LOG_FORMAT=pretty`, `RUST_LOG` filtering (default `info`).
//! - Never logged: `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`; queries
//!   only on request, with sensitive values `REDACTED`.
//! - Sampling keeps INFO and lower with a probability, decided per request (from the trace id
//!   when there is one); ERROR and WARN always pass. A rate limit per call site (default 100 per
//!   60 s) writes one `suppressed=N` summary per closed window.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `log_records_dropped_total` | counter | |
//! | `log_records_suppressed_total` | counter | `reason` = `sampled`, `rate_limited` |
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use towerscope::log::{add_context, LogConfig, RequestId, RequestLogLayer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let _guard = LogConfig::from_env("checkout").init()?;
//! let app: Router = Router::new()
//!     .route("/cart", get(|id: RequestId| async move {
//!         add_context("tenant", "acme");
//!         tracing::info!("cart loaded"); // request_id, route, tenant on this line
//!         id.to_string()
//!     }))
//!     .layer(RequestLogLayer::new());
//! # Ok(())
//! # }
//! ```

mod context;
mod init;
mod json;
mod layer;
mod limit;
mod request_id;
mod scope;
mod writer;

pub use crate::redact::{redact_query, SENSITIVE_HEADERS, SENSITIVE_PARAMS};
pub use context::{add_context, current_request_id, REQUEST_SPAN, REQUEST_TARGET, RESERVED_KEYS};
pub use init::{Format, InitError, LogConfig, LogGuard};
pub use json::{write_json_str, write_timestamp, JsonLayer, Sampling};
pub use layer::{
    LogObservation, LogRoute, RequestLog, RequestLogBuilder, RequestLogLayer, DEFAULT_EXCLUDED,
};
pub use limit::RateLimit;
pub use request_id::RequestId;
pub use scope::RequestScope;
pub(crate) use scope::ScopeGuard;
pub use writer::{LineWriter, NonBlocking, WriterGuard, DROPPED};

// The tests serve axum routers and read the metrics through the Prometheus recorder.
#[cfg(all(test, feature = "axum", feature = "prometheus"))]
mod tests;
