//! Trace propagation and OpenTelemetry: one SERVER span per request, CLIENT spans for outgoing
//! calls, OTLP export, and logs that carry the same ids (feature `otel`); the wire formats
//! below it are always available.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use towerscope::lifecycle::ObserveLayer;
//! use towerscope::log::{LogConfig, RequestLog};
//! use towerscope::metrics::{Prometheus, Red};
//! use towerscope::trace::{TraceConfig, TraceIds};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let prometheus = Prometheus::install()?;            // first: the exporter's counters go here
//! let tracing = TraceConfig::from_env("checkout").install(); // OTEL_* variables
//! let _logs = LogConfig::from_env("checkout").tracing(&tracing).init()?; // #[instrument] spans
//! let app: Router = Router::new()
//!     .route("/orders/{id}", get(|ids: TraceIds| async move { ids.trace_id.to_string() }))
//!     .layer(ObserveLayer::with_observer((
//!         Red::builder().build(),
//!         tracing.observer(),           // before the request log: its records carry the ids
//!         RequestLog::builder().build(),
//!     )));
//! // Outgoing calls: tracing.client_layer() on a Tower client, tracing.reqwest_middleware().
//! // ... serve ...
//! tracing.shutdown(std::time::Duration::from_secs(5)); // flush within a deadline
//! # Ok(()) }
//! ```
//!
//! ## Propagation
//!
//! W3C Trace Context (`traceparent`, `tracestate`) and W3C Baggage by default; B3 single and
//! multi header with `OTEL_PROPAGATORS` (or [`TraceConfig::propagators`]): a B3 sampling state
//! is the caller's decision, even sent alone (`b3: 0` turns tracing off downstream), and B3
//! ids without one leave the decision to this service's sampler. A B3 caller's debug flag
//! (`b3: …-d`, `X-B3-Flags: 1`) is passed on by the client layers in the B3 formats (and by
//! [`Propagators::inject_debug`] for calls made without them).
//!
//! Invalid input never fails a request: an invalid `traceparent` (wrong length, uppercase, all
//! zeros, version `ff`, two headers, …) yields no parent and the trace restarts; an invalid
//! `tracestate` is dropped whole; malformed baggage members are dropped, and members beyond 64
//! or 8192 bytes are dropped whole, never cut. Baggage never reaches telemetry unless allow-listed
//! ([`TraceConfig::baggage_attribute`]).
//!
//! ## Server spans
//!
//! Named `{method} {route}` (`{method}` without a route, `HTTP` for unknown methods), kind
//! SERVER, with `http.request.method`, `url.path`, `url.scheme`, `url.query` (sensitive values
//! redacted), `http.route`, `http.response.status_code`, `server.address`, `server.port`,
//! `client.address` (the peer's, or with [`TraceConfig::trusted_proxies`],
//! [`TraceConfig::trusted_proxy_hops`] or [`TraceConfig::trust_forwarded_headers`] the client a
//! trusted proxy forwarded, then with the proxy's as `network.peer.address`),
//! `user_agent.original`, `network.protocol.version`, `error.type`. 5xx sets the Error status;
//! 4xx is left unset; a cancelled request is not an error. The span ends
//! when the response body is finished, and is the current OpenTelemetry context while the
//! handler runs, so `#[instrument]` spans (through [`Tracing::otel_layer`]) and client calls
//! are its children. The probes and `/metrics` are not traced by default
//! ([`TraceConfig::exclude_route`]). Handlers read the ids with the [`TraceIds`] extractor;
//! [`TraceConfig::traceresponse`] returns them in a `traceresponse` header.
//!
//! An unsampled request (a parent-based sampler and an unsampled caller), or any request when
//! nothing is exported, gets ids only: no attribute is built and the SDK is not involved. A
//! sampled, exported server span is towerscope's own recording span (the sampler's decision is
//! the SDK's, tested): its attributes are kept typed and written to OTLP by the export thread.
//! Through the OpenTelemetry API (`Context::current().span()`) a handler can still add
//! attributes, events, links and a status to it, with the SDK's rules and limits.
//!
//! ## Client spans
//!
//! [`Tracing::client_layer`] (any `Service<http::Request<B>>`) and, with the `reqwest` feature,
//! [`Tracing::reqwest_middleware`]: a CLIENT span named `{method}` with `http.request.method`,
//! `server.address`, `server.port`, `url.full` (credentials and sensitive query values
//! redacted), `http.response.status_code`, `error.type` (4xx and 5xx are errors on the client
//! side); `traceparent`, `tracestate`, `baggage` and the current request's `x-request-id`
//! injected.
//!
//! ## Export
//!
//! OTLP over HTTP/protobuf (the request written by towerscope straight from the SDK's span
//! data, byte for byte the message `opentelemetry-proto` would build, at a seventh of
//! `opentelemetry-otlp`'s cost), configured by `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_ENDPOINT` / `..._TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_HEADERS` / `..._TRACES_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` /
//! `..._TRACES_TIMEOUT`, `OTEL_EXPORTER_OTLP_COMPRESSION` / `..._TRACES_COMPRESSION` (`gzip`
//! or `none`), `OTEL_EXPORTER_OTLP_CERTIFICATE`, `..._CLIENT_CERTIFICATE` and
//! `..._CLIENT_KEY` (each also as `..._TRACES_...`), `OTEL_TRACES_SAMPLER` / `..._ARG`
//! (default `parentbased_always_on`), `OTEL_TRACES_EXPORTER` (`otlp`, `console`, `none`),
//! `OTEL_SDK_DISABLED`, `OTEL_PROPAGATORS`, `OTEL_BSP_*`, or the same from code. With no
//! endpoint nothing is exported and no connection is attempted; ids are still created,
//! propagated and logged.
//!
//! - **Transport**: one kept HTTP/1.1 connection to an `http://` endpoint, or an `https://`
//!   one with the `otlp-tls` feature (rustls; the system's root certificates, or those of the
//!   CA file `OTEL_EXPORTER_OTLP_CERTIFICATE` names; the client certificate of
//!   `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `..._CLIENT_KEY` for mutual TLS), through
//!   the proxy `HTTP_PROXY` / `HTTPS_PROXY` / `ALL_PROXY` name unless `NO_PROXY` excludes the
//!   host (`https://` through a `CONNECT` tunnel). Redirections (3xx with a `Location`) are
//!   followed, up to five, with the same body; a permanent one (301, 308) is kept for later
//!   batches. The configured headers (credentials, often) follow only to the same host, and
//!   not from `https://` down to `http://`.
//! - **Retries**: OTLP/HTTP's transient failures (429, 502, 503, 504, no connection) are sent
//!   again up to three times, after the collector's `Retry-After` or a jittered exponential
//!   backoff (from 250 ms; [`TraceConfig::export_attempts`], [`TraceConfig::export_backoff`]),
//!   within the batch's export timeout (`OTEL_BSP_EXPORT_TIMEOUT`, 30 s, or
//!   [`TraceConfig::batch_export_timeout`]). A longer wait, a timeout or another refusal (a
//!   TLS certificate that does not verify, on either side; a proxy that refuses the tunnel)
//!   drops the batch, counted; the next batch tries afresh.
//! - **Partial success**: spans a collector refuses in a 200 whose `partial_success` counts
//!   rejected spans are not sent again, as the OTLP specification says: they are counted as
//!   dropped (`reason="rejected"`), and the collector's message is logged at most once a
//!   minute.
//! - **Failures said**: a failing export is logged with its reason (WARN, target
//!   `towerscope::trace::export`, with the batches and spans failed since the previous
//!   warning) at once, then at most once a minute while failures last; an export that
//!   succeeds after a warning is logged once (INFO), with the outage's totals.
//! - **Off the request path**: spans wait in a bounded queue (2048) drained by one thread; a
//!   collector that is down, slow or failing costs the request path nothing.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `http_client_request_duration_seconds` | histogram | `http_request_method`, `server_address`, `server_port`, `http_response_status_code`, `error_type` |
//! | `trace_spans_exported_total` | counter | |
//! | `trace_spans_dropped_total` | counter | `reason="queue_full\|export_failed\|rejected"` |
//!
//! ## Logs
//!
//! With the request log, every record written inside a traced request carries `trace_id` and
//! `span_id` (W3C hex) of the innermost current span, the same ids as exported; the request's
//! own record carries the server span's.

pub mod baggage;
#[cfg(feature = "otel")]
mod client;
#[cfg(feature = "otel")]
mod config;
#[cfg(feature = "otel")]
mod export;
#[cfg(feature = "otel")]
mod otlp;
mod propagation;
#[cfg(feature = "otel")]
mod record;
#[cfg(feature = "otel")]
mod server;
mod traceparent;
pub mod tracestate;

pub use baggage::Baggage;
pub use propagation::{Extracted, Format, Propagators, B3, BAGGAGE, TRACEPARENT, TRACESTATE};
#[cfg(feature = "log")]
pub(crate) use traceparent::hex_digits;
pub use traceparent::{Hex, SpanId, TraceFlags, TraceId, TraceParent, TRACEPARENT_LEN};
pub use tracestate::TraceState;

#[cfg(feature = "reqwest")]
pub use client::ClientTraceMiddleware;
#[cfg(feature = "otel")]
pub use client::{ClientFuture, ClientTrace, ClientTraceLayer, CLIENT_REQUEST_DURATION};
#[cfg(feature = "otel")]
pub use config::{Compression, Exporter, Sampler, TraceConfig, Tracing};
#[cfg(feature = "otel")]
pub use export::{SPANS_DROPPED, SPANS_EXPORTED};
#[cfg(feature = "otel")]
pub use server::{Trace, TraceIds, TraceLayer, TraceObservation, TraceRoute};

#[cfg(test)]
mod tests;
