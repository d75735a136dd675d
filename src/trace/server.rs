//! The SERVER span: one per request, parented by what the caller propagated, named and
//! attributed by the OpenTelemetry HTTP semantic conventions, ended when the response is
//! finished (the shared lifecycle), current while the handler runs.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request};
use opentelemetry::trace::{
    SpanContext, Status, TraceContextExt, TraceFlags as OtelFlags, TraceId as OtelTraceId,
    TraceState as OtelTraceState,
};
use opentelemetry::{Context, KeyValue, StringValue, Value};

use super::baggage::Baggage;
use super::config::{Inner, Tracing};
use super::record::{RequestAttrs, ServerSpan, CANCELLED, ERROR_TYPE, STATUS_CODE};
use super::traceparent::{SpanId, TraceFlags, TraceId, TraceParent};
use crate::lifecycle::{
    End, KnownMethod, ObserveLayer, Observer, Outcome, RequestMeta, ResponseHead,
};
use crate::redact::redact_query;

/// The ids of the current request's server span: handlers read them with the extractor (from
/// the OpenTelemetry context the trace layer makes current while the handler runs; no
/// per-request extension), later observers from [`RequestMeta::trace_ids`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceIds {
    /// The trace id.
    pub trace_id: TraceId,
    /// The server span's id.
    pub span_id: SpanId,
    /// Whether the trace is sampled.
    pub sampled: bool,
}

impl TraceIds {
    /// The ids of an OpenTelemetry span context, when valid.
    pub fn from_span_context(sc: &SpanContext) -> Option<Self> {
        sc.is_valid().then(|| Self {
            trace_id: TraceId(sc.trace_id().to_bytes()),
            span_id: SpanId(sc.span_id().to_bytes()),
            sampled: sc.is_sampled(),
        })
    }

    /// The ids of the current OpenTelemetry context (the innermost span the code runs in).
    pub fn current() -> Option<Self> {
        Context::map_current(|cx| Self::from_span_context(cx.span().span_context()))
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TraceIds {
    type Rejection = std::convert::Infallible;

    /// Never rejects: without a server span (no trace layer), the ids are the all-zero
    /// (invalid) ones.
    async fn from_request_parts(
        _: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(TraceIds::current().unwrap_or(TraceIds {
            trace_id: TraceId::default(),
            span_id: SpanId::default(),
            sampled: false,
        }))
    }
}

/// The server-span observer; combine it with [`Red`](crate::metrics::Red) and the request log
/// in one [`ObserveLayer`], before the request log so its records carry the ids.
#[derive(Clone)]
pub struct Trace {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace").finish_non_exhaustive()
    }
}

/// Server spans as a Tower layer.
pub type TraceLayer = ObserveLayer<Trace>;

impl Tracing {
    /// The server-span observer.
    pub fn observer(&self) -> Trace {
        Trace {
            inner: self.inner.clone(),
        }
    }

    /// The server-span layer.
    pub fn layer(&self) -> TraceLayer {
        ObserveLayer::with_observer(self.observer())
    }
}

/// The W3C Trace Context Level 2 response header.
static TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");

/// Per route: the span names by method and the route attribute, built once.
pub struct TraceRoute {
    excluded: bool,
    /// `traceresponse` is sent (opt-in).
    traceresponse: bool,
    names: [Cow<'static, str>; KnownMethod::ALL.len()],
    route: Option<Value>,
}

/// Per request: the context holding the server span. Small: it travels in the response
/// future and body, which are moved several times.
pub struct TraceObservation {
    cx: Option<Context>,
    /// The span is recorded (towerscope's server span, exported when it ends).
    recording: bool,
}

/// The caller's `tracestate` when OpenTelemetry's `TraceState` could not hold it; the client
/// layers send it on for spans whose own state is empty.
#[derive(Debug)]
pub(crate) struct KeptTraceState(pub(crate) super::tracestate::TraceState);

/// Random bytes, not all zero (an all-zero id is invalid).
fn random_nonzero<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    loop {
        for chunk in out.chunks_mut(8) {
            let r = fastrand::u64(..).to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        if out != [0; N] {
            return out;
        }
    }
}

impl Observer for Trace {
    type Route = TraceRoute;
    type Observation = TraceObservation;

    fn route(&self, template: Option<&str>) -> TraceRoute {
        // Built once per route template and kept for the life of the process (the route table
        // is bounded, so are these): the span builder takes a `'static` name, and a borrowed
        // one costs no allocation per request.
        let names = std::array::from_fn(|i| {
            let m = KnownMethod::ALL[i];
            let method = if m == KnownMethod::Other {
                "HTTP"
            } else {
                m.as_str()
            };
            let name: &'static str = match template {
                Some(t) => Box::leak(format!("{method} {t}").into_boxed_str()),
                None => method,
            };
            Cow::Borrowed(name)
        });
        TraceRoute {
            excluded: template.is_some_and(|t| self.inner.excluded.iter().any(|e| e == t)),
            traceresponse: self.inner.traceresponse,
            names,
            // Static (kept for the process, as the names): cloned into every recorded span
            // without a copy or a reference count (an atomic increment on the request path and
            // a decrement on the export thread).
            route: template.map(|t| {
                let t: &'static str = Box::leak(t.into());
                Value::String(StringValue::from(t))
            }),
        }
    }

    fn start<B>(
        &self,
        route: &TraceRoute,
        req: &mut Request<B>,
        meta: &RequestMeta<'_>,
    ) -> TraceObservation {
        let inner = &*self.inner;
        if !inner.enabled || route.excluded {
            return TraceObservation {
                cx: None,
                recording: false,
            };
        }
        let mut got = super::propagation::Extracted::default();
        inner.propagators.extract_into(req.headers(), &mut got);
        let mut base = Context::new();
        // The caller's `tracestate` as OpenTelemetry's type. The common empty one is made here,
        // not returned from a helper: copied out of its return slot, its narrow stores stalled
        // the wide loads of the copy (perf).
        let state = if got.state.is_empty() {
            OtelTraceState::default()
        } else {
            match OtelTraceState::from_key_value(got.state.members()) {
                Ok(s) => s,
                Err(_) => {
                    // A valid tracestate that OpenTelemetry's own type refuses (it rejects some
                    // keys the W3C grammar allows, e.g. a 241-character tenant with a
                    // 14-character system id): kept beside the span so it is still sent on.
                    base = base.with_value(KeptTraceState(got.state));
                    OtelTraceState::default()
                }
            }
        };
        if !got.baggage.is_empty() {
            base = base.with_value(got.baggage);
        }
        if got.debug {
            base = base.with_value(super::propagation::B3Debug);
        }
        // The caller's decision; `None` (no caller, or a B3 caller that deferred): this
        // service's sampler decides, as for a root.
        let caller_sampled = got.sampled;
        let trace_id = match &got.parent {
            Some(p) => OtelTraceId::from_bytes(p.trace_id.0),
            None => OtelTraceId::from_bytes(random_nonzero::<16>()),
        };
        // The sampler's decision, made as the SDK's sampler makes it (tested against it),
        // without the SDK's span machinery: an unsampled span is only ids.
        let sampled = inner.sampler.decide(caller_sampled, trace_id);
        let sc = SpanContext::new(
            trace_id,
            opentelemetry::trace::SpanId::from_bytes(random_nonzero::<8>()),
            if sampled {
                OtelFlags::SAMPLED
            } else {
                OtelFlags::default()
            },
            false,
            state,
        );
        // Recorded only when sampled and exported (with nothing exported, a recorded span
        // would be built only to be dropped: the ids and the decision, which the next
        // services follow, are all that leave the process).
        let queue = inner.queue.as_ref().filter(|_| sampled);
        let recording = queue.is_some();
        let cx = match queue {
            // A span context without a span object: no allocation for a span that records
            // nothing (`with_remote_span_context` keeps `is_remote` as given: local here).
            None => base.with_remote_span_context(sc),
            Some(queue) => {
                let (parent_span_id, parent_span_is_remote) = match &got.parent {
                    Some(p) => (
                        opentelemetry::trace::SpanId::from_bytes(p.parent_id.0),
                        true,
                    ),
                    None => (opentelemetry::trace::SpanId::INVALID, false),
                };
                let mut record = queue.record();
                record.span_context = sc;
                record.parent_span_id = parent_span_id;
                record.parent_span_is_remote = parent_span_is_remote;
                record.name = route.names[meta.method.index()].clone();
                record.start_time = meta.start.wall();
                fill_request(&mut record.request, inner, route, req, meta, &base);
                base.with_span(ServerSpan::new(record, queue.clone(), inner.span_limits))
            }
        };
        meta.trace_ids
            .set(TraceIds::from_span_context(cx.span().span_context()));
        TraceObservation {
            cx: Some(cx),
            recording,
        }
    }

    fn response(route: &TraceRoute, obs: &mut TraceObservation, head: &mut ResponseHead<'_>) {
        if !route.traceresponse {
            return;
        }
        let ids = obs
            .cx
            .as_ref()
            .and_then(|cx| TraceIds::from_span_context(cx.span().span_context()));
        if let Some(ids) = ids {
            let flags = TraceFlags(u8::from(ids.sampled));
            let value = TraceParent::header(ids.trace_id, ids.span_id, flags);
            if let Ok(v) = HeaderValue::try_from(value) {
                head.headers.insert(&TRACERESPONSE, v);
            }
        }
    }

    fn context(obs: &TraceObservation) -> Option<&Context> {
        obs.cx.as_ref()
    }

    fn trace_ids(obs: &TraceObservation) -> Option<TraceIds> {
        obs.cx
            .as_ref()
            .and_then(|cx| TraceIds::from_span_context(cx.span().span_context()))
    }

    fn end(_: &TraceRoute, obs: TraceObservation, end: &End) {
        let Some(cx) = obs.cx.filter(|_| obs.recording) else {
            return;
        };
        let span = cx.span();
        if let Some(status) = end.status {
            span.set_attribute(KeyValue::new(STATUS_CODE, i64::from(status.as_u16())));
        }
        match end.outcome {
            Outcome::ServerError(e) => {
                span.set_attribute(KeyValue::new(ERROR_TYPE, e.as_str().to_owned()));
                span.set_status(Status::error(""));
            }
            // Cancellation is not an error of the server; 4xx is left unset on the server.
            Outcome::Cancelled => span.set_attribute(KeyValue::new(CANCELLED, true)),
            Outcome::Success | Outcome::ClientError => {}
        }
        // The lifecycle's end: `SpanRef::end` would read the system clock (a vDSO call).
        span.end_with_timestamp(end.at.wall());
    }
}

/// The semantic-convention attributes of a recorded server span, typed, the text copied into
/// the record's reused buffers.
fn fill_request<B>(
    a: &mut RequestAttrs,
    inner: &Inner,
    route: &TraceRoute,
    req: &Request<B>,
    meta: &RequestMeta<'_>,
    base: &Context,
) {
    let uri = req.uri();
    a.method = meta.method;
    a.method_original = (meta.method == KnownMethod::Other).then(|| req.method().clone());
    a.path.push_str(uri.path());
    a.https = uri.scheme_str() == Some("https");
    a.query = uri.query().map(|q| redact_query(q, &inner.sensitive));
    a.route = route.route.clone();
    // One pass over the (few) headers for both, instead of two hashed lookups.
    let (host, user_agent) = match crate::lifecycle::headers::scan(
        req.headers(),
        [&http::header::HOST, &http::header::USER_AGENT],
    ) {
        Some([host, user_agent]) => (host.first, user_agent.first),
        None => (
            req.headers().get(http::header::HOST),
            req.headers().get(http::header::USER_AGENT),
        ),
    };
    // Behind trusted proxies, the scheme and host the client asked for (the semantic
    // conventions' first choice), else this request's own.
    let (client, peer, origin) = crate::lifecycle::client_and_origin(req, &inner.trust_forwarded);
    (a.client, a.peer) = (client, peer);
    if let Some(https) = origin.https {
        a.https = https;
    }
    a.set_host(origin.host.or_else(|| match uri.authority() {
        Some(auth) => Some(auth.as_str()),
        None => host.and_then(|v| v.to_str().ok()),
    }));
    a.set_user_agent(user_agent.and_then(|v| v.to_str().ok()));
    a.version = req.version();
    if let Some(b) = base
        .get::<Baggage>()
        .filter(|_| !inner.baggage_keys.is_empty())
    {
        for k in &inner.baggage_keys {
            if let Some(v) = b.get(k) {
                a.baggage
                    .push(KeyValue::new(format!("baggage.{k}"), v.to_owned()));
            }
        }
    }
}
