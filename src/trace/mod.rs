//! Trace propagation. So far: the wire formats, parsed exactly as their specifications say —
//! W3C Trace Context (`traceparent`, `tracestate`), W3C Baggage, and B3 single and multi header —
//! chosen like `OTEL_PROPAGATORS` ([`Propagators`]). The server and client layers, spans and
//! OTLP export build on these.
//!
//! Invalid input never fails a request: an invalid `traceparent` (wrong length, uppercase, all
//! zeros, version `ff`, two headers, …) yields no parent and the trace restarts; an invalid
//! `tracestate` is dropped whole; malformed baggage members are dropped, and members beyond 64
//! or 8192 bytes are dropped whole, never cut.
//!
//! ```
//! use http::HeaderMap;
//! use towerscope::trace::Propagators;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
//! headers.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
//! let got = Propagators::default().extract(&headers);
//! let parent = got.parent.expect("valid");
//! assert_eq!(parent.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert!(parent.flags.sampled());
//! assert_eq!(got.state.header().as_deref(), Some("congo=t61rcWkgMzE"));
//! ```

pub mod baggage;
#[cfg(feature = "otel")]
mod client;
#[cfg(feature = "otel")]
mod config;
#[cfg(feature = "otel")]
mod export;
mod propagation;
#[cfg(feature = "otel")]
mod server;
mod traceparent;
pub mod tracestate;

pub use baggage::Baggage;
pub use propagation::{Extracted, Format, Propagators, B3, BAGGAGE, TRACEPARENT, TRACESTATE};
pub use traceparent::{SpanId, TraceFlags, TraceId, TraceParent, TRACEPARENT_LEN};
pub use tracestate::TraceState;

#[cfg(feature = "reqwest")]
pub use client::ClientTraceMiddleware;
#[cfg(feature = "otel")]
pub use client::{ClientFuture, ClientTrace, ClientTraceLayer, CLIENT_REQUEST_DURATION};
#[cfg(feature = "otel")]
pub use config::{Exporter, Sampler, TraceConfig, Tracing};
#[cfg(feature = "otel")]
pub use export::{SPANS_DROPPED, SPANS_EXPORTED};
#[cfg(feature = "otel")]
pub use server::{Trace, TraceIds, TraceLayer, TraceObservation, TraceRoute};

#[cfg(test)]
mod tests;
