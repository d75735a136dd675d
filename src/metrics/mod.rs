//! RED metrics (rate, errors, duration) with the Prometheus names of the OpenTelemetry HTTP
//! semantic conventions, and the Prometheus `/metrics` endpoint.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `http_server_request_duration_seconds` | histogram | `http_request_method`, `http_route`, `http_response_status_code`, `error_type` (failures only) |
//! | `http_server_active_requests` | gauge | `http_request_method`, `http_route` |
//! | `http_server_cancelled_requests_total` | counter | `http_request_method`, `http_route` |
//! | `http_server_request_body_size_bytes` (opt-in) | histogram | as the duration |
//! | `http_server_response_body_size_bytes` (opt-in) | histogram | as the duration |
//!
//! The duration runs until the response body was fully sent; its `_count` is the request rate
//! and `error_type` gives the error rate. Cancelled requests are counted only in
//! `http_server_cancelled_requests_total`. A request's body size is its `Content-Length` (0
//! without a body) or, for a body of unknown length, the bytes the service read from axum's
//! `Body` ([`RedBuilder::body_sizes`]). Requests that matched no route have an empty
//! `http_route` (or [`RedBuilder::unmatched_route`]); unknown methods are `_OTHER`; so the
//! number of series is bounded by routes x 10 methods x status codes whatever clients send.
//!
//! Handles are resolved once per route, method and status and kept, so a request costs a few
//! atomic operations and no allocation. They are resolved on first use: install the recorder
//! before serving.
//!
//! The recorder ([`Prometheus`]) adds `metrics_series_dropped_total`: series not recorded
//! because their name was registered first as another kind (a counter and a gauge of one
//! name would give the exposition two `TYPE` lines), or because they would write a family
//! or sample name another metric writes (the counter `jobs_total` is the OpenMetrics family
//! `jobs`, which a gauge `jobs` would repeat). With
//! [`exemplars`](PrometheusBuilder::exemplars), each duration bucket keeps the last sampled
//! request's trace (RED and the server spans in one `ObserveLayer`), shown in the OpenMetrics
//! exposition, which `/metrics` then serves to scrapers that prefer it.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use towerscope::metrics::{Prometheus, RedLayer};
//!
//! let prometheus = Prometheus::builder()
//!     .duration_buckets(&[0.01, 0.1, 1.0])
//!     .install()
//!     .expect("first recorder");
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "ok" }))
//!     .layer(RedLayer::builder().constant_label("service", "demo").layer())
//!     .merge(prometheus.router());
//! ```

mod exemplars;
#[cfg(feature = "prometheus")]
mod fast;
#[cfg(feature = "prometheus")]
mod prometheus;
mod red;

pub(crate) use exemplars::Exemplars;

#[cfg(feature = "prometheus")]
pub(crate) use fast::forget;
#[cfg(feature = "prometheus")]
pub use fast::{TowerscopeRecorder, SERIES_DROPPED};
#[cfg(feature = "prometheus")]
pub use prometheus::{
    InstallError, MetricsService, Prometheus, PrometheusBuilder, CONTENT_TYPE, DB_DURATION_BUCKETS,
    DURATION_BUCKETS, OPENMETRICS_CONTENT_TYPE, SIZE_BUCKETS,
};
pub use red::{
    Red, RedBuilder, RedLayer, RedRoute, ACTIVE_REQUESTS, CANCELLED_REQUESTS, REQUEST_BODY_SIZE,
    REQUEST_DURATION, RESPONSE_BODY_SIZE,
};

/// The value of the unlabeled sample `name` in an exposition `text`, for tests.
#[cfg(all(
    test,
    feature = "prometheus",
    any(feature = "log", feature = "resources")
))]
pub(crate) fn unlabeled_sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}
