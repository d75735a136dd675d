//! The shared request lifecycle: what every towerscope layer knows about a request, defined
//! once.
//!
//! - **Route**: the matched route template (axum's `MatchedPath`, e.g. `/users/{id}`), never
//!   the raw path; `None` for requests that matched no route. Plain Hyper/Tower services supply
//!   templates as a list ([`ObserveLayer::routes`], matched as axum matches them) or with
//!   [`ObserveLayer::route_fn`].
//! - **Method**: [`KnownMethod`], the nine standard methods or `_OTHER`.
//! - **Outcome**: [`Outcome`], one definition of success, client error, server error (with its
//!   [`ErrorType`]) and cancellation.
//! - **Finished**: the response body was fully sent: end of stream, trailers,
//!   `is_end_stream()` after a frame, or a body error. Responses that carry no body (HEAD,
//!   1xx, 204, 304, empty bodies) finish with their head. Durations end there, so streaming
//!   responses are timed to their last byte.
//! - **Cancelled**: the response future or body was dropped before the end (the client went
//!   away). A panic unwinding through the layer is a 500 instead.
//! - **Request size**, for observers that ask ([`Observer::wants_request_bytes`]):
//!   `Content-Length` or a body of exactly known size (0 without a body; axum's `Body` and
//!   hyper's `Incoming` say so); for a body of unknown length, the bytes the service read from
//!   axum's `Body` ([`End::request_bytes`]).
//! - **Peer**: the connection's address, for the client's address in logs and spans: kept per
//!   connection by [`WithPeer`] (`axum::serve`) or [`PeerService`] (any accept loop) and read
//!   with [`peer_addr`], or axum's `ConnectInfo` extension.
//!
//! Capabilities implement [`Observer`] and run inside one [`ObserveLayer`]: the layer reads the
//! clock, resolves the route and wraps the future and body once, whatever the number of
//! observers (a tuple of observers is an observer).
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use towerscope::lifecycle::{End, ObserveLayer, Observer, Outcome, RequestMeta};
//!
//! /// Counts cancelled requests.
//! #[derive(Default)]
//! struct Cancellations(std::sync::Arc<AtomicU64>);
//!
//! impl Observer for Cancellations {
//!     type Route = std::sync::Arc<AtomicU64>;
//!     type Observation = ();
//!     fn route(&self, _template: Option<&str>) -> Self::Route {
//!         self.0.clone()
//!     }
//!     fn start<B>(&self, _: &Self::Route, _: &mut http::Request<B>, _: &RequestMeta<'_>) {}
//!     fn end(count: &Self::Route, _: (), end: &End) {
//!         if end.outcome == Outcome::Cancelled {
//!             count.fetch_add(1, Ordering::Relaxed);
//!         }
//!     }
//! }
//!
//! let layer = ObserveLayer::with_observer(Cancellations::default());
//! ```

#[cfg(any(feature = "log", feature = "otel"))]
mod client;
mod clock;
pub(crate) mod headers;
mod method;
mod observer;
mod outcome;
mod peer;
mod request_size;
mod route;
mod service;

pub use method::KnownMethod;

/// The route templates of the health probes and `/metrics`: left out of the request log and of
/// tracing by default (scrapes and probes every few seconds are noise, and must stay cheap).
pub const PROBE_ROUTES: &[&str] = &[
    "/livez",
    "/livez/{name}",
    "/readyz",
    "/readyz/{name}",
    "/startupz",
    "/startupz/{name}",
    "/health",
    "/health/{name}",
    "/metrics",
];
#[cfg(feature = "log")]
pub(crate) use client::client_ip;
#[cfg(any(feature = "log", feature = "otel"))]
pub(crate) use client::ForwardedTrust;
#[cfg(any(feature = "log", feature = "otel"))]
pub use client::ProxyHeader;
#[cfg(feature = "otel")]
pub(crate) use client::{client_and_origin, host_port};
#[cfg(feature = "otel")]
pub(crate) use clock::wall_now;
#[cfg(feature = "log")]
pub(crate) use clock::{unix_now, Tick};
pub use observer::{Observer, RequestMeta, ResponseHead};
pub use outcome::{End, ErrorType, Outcome};
pub use peer::{peer_addr, PeerFuture, PeerService};
#[cfg(feature = "axum")]
pub use peer::{WithPeer, WithPeerFuture};
pub use route::{AddrHasher, RouteEntry, MAX_ROUTES};
pub use service::{content_length, Observe, ObserveLayer, ResponseBody, ResponseFuture};
