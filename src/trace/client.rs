//! Client propagation: a CLIENT span per outgoing call, the current context injected into its
//! headers, and `http_client_request_duration_seconds`; as a Tower layer for any
//! `Service<http::Request<B>>` (e.g. hyper-util's client) and, with the `reqwest` feature, as
//! a reqwest-middleware middleware.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context as TaskContext, Poll};

use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use metrics::{Histogram, Key, Label, Unit};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::baggage::Baggage;
use super::config::{Inner, Tracing};
use super::traceparent::{SpanId, TraceFlags, TraceId};
use super::tracestate::TraceState;
use crate::lifecycle::{ErrorType, KnownMethod};
use crate::redact::redact_query;

/// `http_client_request_duration_seconds`
pub const CLIENT_REQUEST_DURATION: &str = "http_client_request_duration_seconds";

/// At most this many distinct label sets; beyond, `server_address` is `_OTHER`.
const MAX_SERIES: usize = 2048;

/// What client spans and metrics share.
pub(crate) struct ClientShared {
    inner: Arc<Inner>,
    series: RwLock<HashMap<SeriesKey, Series>>,
}

/// A series' histogram, and its exemplars when the recorder keeps them.
#[derive(Clone)]
struct Series {
    histogram: Histogram,
    exemplars: crate::metrics::Exemplars,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    method: KnownMethod,
    host: Arc<str>,
    port: u16,
    status: u16,
    error: Option<&'static str>,
}

impl ClientShared {
    fn series(&self, key: SeriesKey) -> Series {
        if let Some(h) = self
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return h.clone();
        }
        let mut map = self.series.write().unwrap_or_else(|e| e.into_inner());
        let key = if map.len() >= MAX_SERIES {
            SeriesKey {
                host: Arc::from("_OTHER"),
                ..key
            }
        } else {
            key
        };
        if let Some(h) = map.get(&key) {
            return h.clone();
        }
        let mut labels = vec![
            Label::new("http_request_method", key.method.as_str()),
            Label::new("server_address", key.host.to_string()),
            Label::new("server_port", key.port.to_string()),
        ];
        if key.status != 0 {
            labels.push(Label::new(
                "http_response_status_code",
                key.status.to_string(),
            ));
        }
        if let Some(e) = key.error {
            labels.push(Label::new("error_type", e));
        } else if key.status >= 400 {
            labels.push(Label::new("error_type", key.status.to_string()));
        }
        let (histogram, exemplars) = crate::metrics::Exemplars::register(|| {
            metrics::with_recorder(|r| {
                r.register_histogram(
                    &Key::from_parts(CLIENT_REQUEST_DURATION, labels),
                    &metrics::Metadata::new("towerscope::trace", metrics::Level::INFO, None),
                )
            })
        });
        let series = Series {
            histogram,
            exemplars,
        };
        map.insert(key, series.clone());
        series
    }
}

/// One outgoing call in flight.
pub(crate) struct ClientCall {
    shared: Arc<ClientShared>,
    cx: Context,
    method: KnownMethod,
    host: Arc<str>,
    port: u16,
    start: quanta::Instant,
    done: bool,
}

fn default_port(uri: &Uri) -> u16 {
    match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    }
}

/// `url.full` without credentials and with sensitive query values redacted.
fn url_full(uri: &Uri, sensitive: &[String]) -> String {
    let mut out = String::new();
    if let Some(s) = uri.scheme_str() {
        out.push_str(s);
        out.push_str("://");
    }
    if let Some(a) = uri.authority() {
        let hostport = a.as_str().rsplit_once('@').map_or(a.as_str(), |(_, h)| h);
        if a.as_str().contains('@') {
            out.push_str("REDACTED:REDACTED@");
        }
        out.push_str(hostport);
    }
    out.push_str(uri.path());
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(&redact_query(q, sensitive));
    }
    out
}

impl ClientCall {
    /// Starts the CLIENT span under the current context and writes the propagation headers.
    pub(crate) fn start(
        shared: &Arc<ClientShared>,
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
    ) -> Self {
        let known = KnownMethod::from_method(method);
        // A request sent on a connection made by hand (hyper's `client::conn`) names its
        // target in `Host`, its URI being only the path: the server is read from there.
        // Read as the server span reads its `Host`: an IPv6 address without its brackets.
        let authority = match uri.authority() {
            Some(a) => Some(a.as_str()),
            None => headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok()),
        };
        let (host, port) = authority
            .and_then(crate::lifecycle::host_port)
            .unwrap_or(("", None));
        let host: Arc<str> = Arc::from(host);
        let port = port.unwrap_or_else(|| default_port(uri));
        let parent = Context::current();
        let inner = &*shared.inner;
        let cx = if inner.enabled {
            let mut attrs = vec![
                KeyValue::new("http.request.method", known.as_str()),
                KeyValue::new("server.address", host.to_string()),
                KeyValue::new("server.port", i64::from(port)),
                KeyValue::new("url.full", url_full(uri, &inner.sensitive)),
            ];
            if known == KnownMethod::Other {
                attrs.push(KeyValue::new(
                    "http.request.method_original",
                    method.as_str().to_owned(),
                ));
            }
            let name = if known == KnownMethod::Other {
                "HTTP"
            } else {
                known.as_str()
            };
            let span = inner
                .tracer
                .span_builder(name)
                .with_kind(SpanKind::Client)
                .with_attributes(attrs)
                .start_with_context(&inner.tracer, &parent);
            let cx = parent.with_span(span);
            inject(inner, &cx, headers);
            cx
        } else {
            parent
        };
        #[cfg(feature = "log")]
        if let Some(id) = crate::log::current_request_id() {
            if let Ok(v) = http::HeaderValue::try_from(id) {
                headers.entry("x-request-id").or_insert(v);
            }
        }
        Self {
            shared: shared.clone(),
            cx,
            method: known,
            host,
            port,
            start: quanta::Instant::now(),
            done: false,
        }
    }

    /// Ends the call: a status, or an error kind.
    pub(crate) fn finish(&mut self, result: Result<StatusCode, &'static str>) {
        if self.done {
            return;
        }
        self.done = true;
        let secs = self.start.elapsed().as_secs_f64();
        let (status, error) = match result {
            Ok(s) => (s.as_u16(), None),
            Err(e) => (0, Some(e)),
        };
        let series = self.shared.series(SeriesKey {
            method: self.method,
            host: self.host.clone(),
            port: self.port,
            status,
            error,
        });
        series.histogram.record(secs);
        // The client span's trace: the exemplar of the call's bucket.
        series.exemplars.offer(secs, || {
            super::TraceIds::from_span_context(self.cx.span().span_context())
        });
        if !self.shared.inner.enabled {
            return;
        }
        let span = self.cx.span();
        if status != 0 {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        // On the client side, 4xx and 5xx are errors.
        if let Some(e) = error {
            span.set_attribute(KeyValue::new("error.type", e));
            span.set_status(Status::error(""));
        } else if status >= 400 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

impl Drop for ClientCall {
    fn drop(&mut self) {
        self.finish(Err("cancelled"));
    }
}

/// Writes the context of the client span (`cx`) into the headers, in every configured format.
fn inject(inner: &Inner, cx: &Context, headers: &mut HeaderMap) {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    let state = sc.trace_state().header();
    let state = if state.is_empty() {
        cx.get::<super::server::KeptTraceState>()
            .map(|k| k.0.clone())
            .unwrap_or_default()
    } else {
        TraceState::parse([state.as_str()]).unwrap_or_default()
    };
    let empty = Baggage::default();
    let baggage = cx.get::<Baggage>().unwrap_or(&empty);
    let flags = TraceFlags(u8::from(sc.is_sampled()));
    let debug = inner.propagators.b3() && cx.get::<super::propagation::B3Debug>().is_some();
    inner.propagators.inject_with_debug(
        (
            TraceId(sc.trace_id().to_bytes()),
            SpanId(sc.span_id().to_bytes()),
            flags,
        ),
        &state,
        baggage,
        debug,
        headers,
    );
}

impl Tracing {
    pub(crate) fn client_shared(&self) -> Arc<ClientShared> {
        metrics::describe_histogram!(
            CLIENT_REQUEST_DURATION,
            Unit::Seconds,
            "Duration of HTTP client requests, until the response head."
        );
        Arc::new(ClientShared {
            inner: self.inner.clone(),
            series: RwLock::new(HashMap::new()),
        })
    }

    /// The client layer for Tower HTTP clients.
    pub fn client_layer(&self) -> ClientTraceLayer {
        ClientTraceLayer {
            shared: self.client_shared(),
        }
    }
}

/// Client spans and propagation for a Tower HTTP client ([`Tracing::client_layer`]).
///
/// The server (`server.address`, `server.port`) is the request URI's authority, or, for a
/// request whose URI is only a path (sent on a connection made by hand, as with hyper's
/// `client::conn`), its `Host` header.
#[derive(Clone)]
pub struct ClientTraceLayer {
    shared: Arc<ClientShared>,
}

impl std::fmt::Debug for ClientTraceLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTraceLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTrace<S>;
    fn layer(&self, inner: S) -> ClientTrace<S> {
        ClientTrace {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`ClientTraceLayer`].
#[derive(Clone)]
pub struct ClientTrace<S> {
    inner: S,
    shared: Arc<ClientShared>,
}

impl<S> std::fmt::Debug for ClientTrace<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTrace").finish_non_exhaustive()
    }
}

impl<S, B, ResB> Service<Request<B>> for ClientTrace<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let call = ClientCall::start(&self.shared, &method, &uri, req.headers_mut());
        ClientFuture {
            inner: self.inner.call(req),
            call,
        }
    }
}

pin_project! {
    /// The future of [`ClientTrace`].
    pub struct ClientFuture<F> {
        #[pin]
        inner: F,
        call: ClientCall,
    }
}

impl<F, ResB, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: 'static,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        match &out {
            Ok(res) => this.call.finish(Ok(res.status())),
            Err(e) => this.call.finish(Err(error_kind(e))),
        }
        Poll::Ready(out)
    }
}

/// The client error's `error.type`: the crate's one classification of inner-service errors
/// (`timeout`, `io`, `hyper`, … or `_OTHER`), as the server side uses.
fn error_kind<E: 'static>(e: &E) -> &'static str {
    match ErrorType::of_error(e) {
        ErrorType::Kind(k) => k,
        ErrorType::Status(_) => "_OTHER",
    }
}

#[cfg(feature = "reqwest")]
mod reqwest_middleware_impl {
    use super::*;

    /// Client spans and propagation for reqwest, as a reqwest-middleware middleware
    /// ([`Tracing::reqwest_middleware`]).
    pub struct ClientTraceMiddleware {
        pub(super) shared: Arc<ClientShared>,
    }

    impl std::fmt::Debug for ClientTraceMiddleware {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ClientTraceMiddleware")
                .finish_non_exhaustive()
        }
    }

    impl Tracing {
        /// The middleware for `reqwest_middleware::ClientBuilder::with`.
        pub fn reqwest_middleware(&self) -> ClientTraceMiddleware {
            ClientTraceMiddleware {
                shared: self.client_shared(),
            }
        }
    }

    #[async_trait::async_trait]
    impl reqwest_middleware::Middleware for ClientTraceMiddleware {
        async fn handle(
            &self,
            mut req: reqwest::Request,
            extensions: &mut http::Extensions,
            next: reqwest_middleware::Next<'_>,
        ) -> reqwest_middleware::Result<reqwest::Response> {
            let uri: Uri = req.url().as_str().parse().unwrap_or_default();
            let method = req.method().clone();
            let mut call = ClientCall::start(&self.shared, &method, &uri, req.headers_mut());
            let out = next.run(req, extensions).await;
            match &out {
                Ok(res) => call.finish(Ok(res.status())),
                Err(reqwest_middleware::Error::Reqwest(e)) if e.is_timeout() => {
                    call.finish(Err("timeout"))
                }
                Err(reqwest_middleware::Error::Reqwest(e)) if e.is_connect() => {
                    call.finish(Err("connect"))
                }
                Err(_) => call.finish(Err("_OTHER")),
            }
            out
        }
    }
}

#[cfg(feature = "reqwest")]
pub use reqwest_middleware_impl::ClientTraceMiddleware;
