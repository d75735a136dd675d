//! The RED observer: request rate, errors and duration per route, method and status.

use std::borrow::Cow;
use std::sync::{Arc, Once, OnceLock, RwLock};

use http::{Request, StatusCode};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, Unit};

use crate::lifecycle::{End, ErrorType, KnownMethod, ObserveLayer, Observer, Outcome, RequestMeta};

/// `http_server_request_duration_seconds`
pub const REQUEST_DURATION: &str = "http_server_request_duration_seconds";
/// `http_server_active_requests`
pub const ACTIVE_REQUESTS: &str = "http_server_active_requests";
/// `http_server_cancelled_requests_total`
pub const CANCELLED_REQUESTS: &str = "http_server_cancelled_requests_total";
/// `http_server_request_body_size_bytes` (opt-in)
pub const REQUEST_BODY_SIZE: &str = "http_server_request_body_size_bytes";
/// `http_server_response_body_size_bytes` (opt-in)
pub const RESPONSE_BODY_SIZE: &str = "http_server_response_body_size_bytes";

static METADATA: Metadata<'static> = Metadata::new(
    "towerscope::metrics",
    metrics::Level::INFO,
    Some(module_path!()),
);

/// RED metrics as a Tower layer: [`ObserveLayer`] with the [`Red`] observer.
///
/// ```
/// use towerscope::metrics::RedLayer;
/// let layer = RedLayer::builder()
///     .prefix("shop_")
///     .constant_label("service", "checkout")
///     .exclude_route("/metrics")
///     .body_sizes(true)
///     .layer();
/// ```
pub type RedLayer = ObserveLayer<Red>;

impl RedLayer {
    /// A RED layer with the default settings (see [`RedBuilder`]).
    pub fn new() -> Self {
        ObserveLayer::with_observer(Red::builder().build())
    }

    /// Configures a RED layer.
    pub fn builder() -> RedBuilder {
        Red::builder()
    }
}

impl Default for RedLayer {
    fn default() -> Self {
        Self::new()
    }
}

/// The RED [`Observer`]; combine it with other observers in one [`ObserveLayer`].
#[derive(Clone)]
pub struct Red {
    cfg: Arc<Config>,
}

impl std::fmt::Debug for Red {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Red")
            .field("prefix", &self.cfg.prefix)
            .finish_non_exhaustive()
    }
}

struct Config {
    prefix: String,
    names: [KeyName; 5],
    constant_labels: Vec<Label>,
    exclude: Vec<String>,
    unmatched: Cow<'static, str>,
    body_sizes: bool,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
    described: Once,
}

const DURATION: usize = 0;
const ACTIVE: usize = 1;
const CANCELLED: usize = 2;
const REQ_SIZE: usize = 3;
const RESP_SIZE: usize = 4;

/// Settings of the RED observer.
///
/// Defaults: no prefix, no constant labels, `/metrics` excluded, unmatched requests labelled
/// with an empty route, body-size histograms off, metrics sent to the global `metrics`
/// recorder. Histogram buckets belong to the recorder (the `metrics` facade carries none):
/// see [`crate::metrics::PrometheusBuilder::duration_buckets`].
#[derive(Default)]
pub struct RedBuilder {
    prefix: String,
    constant_labels: Vec<Label>,
    exclude: Option<Vec<String>>,
    unmatched: Option<Cow<'static, str>>,
    body_sizes: bool,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
}

impl std::fmt::Debug for RedBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedBuilder")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedBuilder {
    /// Prepended to every metric name (e.g. `shop_` gives `shop_http_server_active_requests`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// A label added to every series (e.g. `service`, `env`).
    pub fn constant_label(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.constant_labels.push(Label::new(key, value.into()));
        self
    }

    /// A route template to leave out of the metrics. The first call replaces the default
    /// exclusion of `/metrics`.
    pub fn exclude_route(mut self, template: impl Into<String>) -> Self {
        self.exclude
            .get_or_insert_with(Vec::new)
            .push(template.into());
        self
    }

    /// The `http_route` label of requests that matched no route (default: empty).
    pub fn unmatched_route(mut self, placeholder: impl Into<Cow<'static, str>>) -> Self {
        self.unmatched = Some(placeholder.into());
        self
    }

    /// Also record `http_server_request_body_size_bytes` and
    /// `http_server_response_body_size_bytes` (bytes sent).
    ///
    /// A request's size is its `Content-Length`, or its body's exact size when known (0 for
    /// a request without a body); for a body of unknown length (chunked HTTP/1, HTTP/2 without
    /// `Content-Length`) it is the number of bytes the service read, counted through axum's
    /// `Body` (two allocations for such a request). A request of unknown length with another
    /// body type (hyper's `Incoming` under a plain hyper service, whose exact size it takes
    /// otherwise), in front of which the layer cannot count, has no sample
    /// ([`End::request_bytes`]).
    pub fn body_sizes(mut self, enabled: bool) -> Self {
        self.body_sizes = enabled;
        self
    }

    /// Sends the metrics to this recorder instead of the global one.
    pub fn recorder(mut self, recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// The observer.
    pub fn build(self) -> Red {
        let name = |n: &str| KeyName::from(format!("{}{n}", self.prefix));
        Red {
            cfg: Arc::new(Config {
                names: [
                    name(REQUEST_DURATION),
                    name(ACTIVE_REQUESTS),
                    name(CANCELLED_REQUESTS),
                    name(REQUEST_BODY_SIZE),
                    name(RESPONSE_BODY_SIZE),
                ],
                prefix: self.prefix,
                constant_labels: self.constant_labels,
                exclude: self.exclude.unwrap_or_else(|| vec!["/metrics".to_owned()]),
                unmatched: self.unmatched.unwrap_or(Cow::Borrowed("")),
                body_sizes: self.body_sizes,
                recorder: self.recorder,
                described: Once::new(),
            }),
        }
    }

    /// The layer.
    pub fn layer(self) -> RedLayer {
        ObserveLayer::with_observer(self.build())
    }
}

impl Red {
    /// Configures the observer.
    pub fn builder() -> RedBuilder {
        RedBuilder::default()
    }
}

impl Config {
    fn with_recorder<T>(&self, f: impl FnOnce(&dyn Recorder) -> T) -> T {
        match &self.recorder {
            Some(r) => f(&**r),
            None => metrics::with_recorder(f),
        }
    }

    fn describe(&self) {
        self.with_recorder(|r| {
            r.describe_histogram(
                self.names[DURATION].clone(),
                Some(Unit::Seconds),
                "Duration of HTTP server requests, until the response body was fully sent.".into(),
            );
            r.describe_gauge(
                self.names[ACTIVE].clone(),
                None,
                "Number of active HTTP server requests.".into(),
            );
            r.describe_counter(
                self.names[CANCELLED].clone(),
                None,
                "HTTP server requests whose client went away before the response was fully sent."
                    .into(),
            );
            if self.body_sizes {
                r.describe_histogram(
                    self.names[REQ_SIZE].clone(),
                    Some(Unit::Bytes),
                    "Size of HTTP server request bodies: declared, or the bytes the service read."
                        .into(),
                );
                r.describe_histogram(
                    self.names[RESP_SIZE].clone(),
                    Some(Unit::Bytes),
                    "Size of HTTP server response bodies sent.".into(),
                );
            }
        });
    }

    fn key(&self, name: usize, labels: impl IntoIterator<Item = Label>) -> Key {
        let mut all = self.constant_labels.clone();
        all.extend(labels);
        Key::from_parts(self.names[name].clone(), all)
    }
}

/// Per-route data of [`Red`]: handles resolved once per method and status, then reused.
pub struct RedRoute {
    cfg: Arc<Config>,
    route: Cow<'static, str>,
    excluded: bool,
    methods: [OnceLock<MethodHandles>; 10],
}

impl std::fmt::Debug for RedRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedRoute")
            .field("route", &self.route)
            .field("excluded", &self.excluded)
            .finish_non_exhaustive()
    }
}

struct MethodHandles {
    method: KnownMethod,
    active: Gauge,
    cancelled: Counter,
    /// Indexed by status class (1..=9) then by code within the class: a status is found with two
    /// atomic loads, and memory is spent only on the classes a route really answers.
    by_status: [OnceLock<Box<[OnceLock<StatusHandles>; 100]>>; 9],
    /// Errors without a 5xx status (inner service errors, body errors): rare, so a lock.
    by_error: RwLock<Vec<ErrorHandles>>,
}

/// Handles of one (status, error kind) pair.
type ErrorHandles = (Option<StatusCode>, &'static str, Arc<StatusHandles>);

struct StatusHandles {
    duration: Histogram,
    request_size: Option<Histogram>,
    response_size: Option<Histogram>,
    /// Zero-sized, and unused, without the `prometheus` and `otel` features.
    #[cfg_attr(not(all(feature = "prometheus", feature = "otel")), allow(dead_code))]
    exemplars: super::Exemplars,
}

impl StatusHandles {
    fn record(&self, end: &End) {
        let seconds = end.duration.as_secs_f64();
        self.duration.record(seconds);
        #[cfg(all(feature = "prometheus", feature = "otel"))]
        self.exemplars.offer(seconds, || end.trace_ids);
        if let Some(h) = &self.request_size {
            if let Some(n) = end.request_bytes {
                h.record(n as f64);
            }
        }
        if let Some(h) = &self.response_size {
            h.record(end.response_bytes as f64);
        }
    }
}

impl RedRoute {
    fn method(&self, method: KnownMethod) -> &MethodHandles {
        self.methods[method.index()].get_or_init(|| {
            let labels = || {
                [
                    Label::from_static_parts("http_request_method", method.as_str()),
                    Label::new("http_route", self.route.clone()),
                ]
            };
            self.cfg.with_recorder(|r| MethodHandles {
                method,
                active: r.register_gauge(&self.cfg.key(ACTIVE, labels()), &METADATA),
                cancelled: r.register_counter(&self.cfg.key(CANCELLED, labels()), &METADATA),
                by_status: Default::default(),
                by_error: RwLock::default(),
            })
        })
    }

    fn status_handles(
        &self,
        m: &MethodHandles,
        status: Option<StatusCode>,
        error: Option<&str>,
    ) -> StatusHandles {
        let cfg = &*self.cfg;
        let labels = || {
            let mut l = vec![
                Label::from_static_parts("http_request_method", m.method.as_str()),
                Label::new("http_route", self.route.clone()),
            ];
            if let Some(s) = status {
                l.push(Label::new(
                    "http_response_status_code",
                    s.as_str().to_owned(),
                ));
            }
            if let Some(e) = error {
                l.push(Label::new("error_type", e.to_owned()));
            }
            l
        };
        cfg.with_recorder(|r| {
            let (duration, exemplars) = super::Exemplars::register(|| {
                r.register_histogram(&cfg.key(DURATION, labels()), &METADATA)
            });
            StatusHandles {
                duration,
                exemplars,
                request_size: cfg
                    .body_sizes
                    .then(|| r.register_histogram(&cfg.key(REQ_SIZE, labels()), &METADATA)),
                response_size: cfg
                    .body_sizes
                    .then(|| r.register_histogram(&cfg.key(RESP_SIZE, labels()), &METADATA)),
            }
        })
    }

    fn record(&self, m: &MethodHandles, end: &End) {
        let (status, kind) = match end.outcome {
            Outcome::ServerError(ErrorType::Status(s)) => (Some(s), None),
            Outcome::ServerError(ErrorType::Kind(k)) => (end.status, Some(k)),
            _ => (end.status, None),
        };
        match (status, kind) {
            (Some(s), None) => {
                let code = s.as_u16();
                let class = m.by_status[usize::from(code / 100 - 1)]
                    .get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())));
                let error = s.is_server_error().then(|| s.as_str());
                class[usize::from(code % 100)]
                    .get_or_init(|| self.status_handles(m, Some(s), error))
                    .record(end);
            }
            (status, kind) => {
                let kind = kind.unwrap_or("_OTHER");
                let found = m
                    .by_error
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .find(|(s, k, _)| *s == status && *k == kind)
                    .map(|(_, _, h)| h.clone());
                let handles = found.unwrap_or_else(|| {
                    let h = Arc::new(self.status_handles(m, status, Some(kind)));
                    let mut w = m.by_error.write().unwrap_or_else(|e| e.into_inner());
                    // Kinds are a small fixed set; the bound is a safety net.
                    if w.len() < 64 {
                        w.push((status, kind, h.clone()));
                    }
                    h
                });
                handles.record(end);
            }
        }
    }
}

impl Observer for Red {
    type Route = RedRoute;
    /// The method (its handles are in the route); `None` when the route is excluded.
    type Observation = Option<KnownMethod>;

    fn route(&self, template: Option<&str>) -> RedRoute {
        self.cfg.described.call_once(|| self.cfg.describe());
        let excluded = template.is_some_and(|t| self.cfg.exclude.iter().any(|e| e == t));
        RedRoute {
            cfg: self.cfg.clone(),
            route: match template {
                Some(t) => Cow::Owned(t.to_owned()),
                None => self.cfg.unmatched.clone(),
            },
            excluded,
            methods: Default::default(),
        }
    }

    #[inline]
    fn start<B>(
        &self,
        route: &RedRoute,
        _req: &mut Request<B>,
        meta: &RequestMeta<'_>,
    ) -> Self::Observation {
        if route.excluded {
            return None;
        }
        route.method(meta.method).active.increment(1.0);
        Some(meta.method)
    }

    #[inline]
    fn wants_request_bytes(route: &RedRoute) -> bool {
        route.cfg.body_sizes && !route.excluded
    }

    fn end(route: &RedRoute, obs: Self::Observation, end: &End) {
        let Some(method) = obs else {
            return;
        };
        let m = route.method(method);
        m.active.decrement(1.0);
        if end.outcome == Outcome::Cancelled {
            m.cancelled.increment(1);
        } else {
            route.record(m, end);
        }
    }
}
