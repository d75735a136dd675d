//! The observer traits: how a capability (RED metrics, request logs, spans, …) plugs into the
//! shared request lifecycle.

use http::{HeaderMap, Request, StatusCode};

use super::{End, KnownMethod};

/// What the core knows about a request when it starts.
///
/// Made by the lifecycle only (it also carries the clock's start reading and the trace ids,
/// for the features that need them), whatever features are on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RequestMeta<'a> {
    /// The normalised method.
    pub method: KnownMethod,
    /// The route template, `None` when no route matched.
    pub route: Option<&'a str>,
    #[cfg(feature = "otel")]
    pub(crate) trace_ids: std::cell::Cell<Option<crate::trace::TraceIds>>,
    /// When the lifecycle started the request (the clock is read once, here).
    #[cfg(any(feature = "log", feature = "otel"))]
    pub(crate) start: super::clock::Tick,
}

impl RequestMeta<'_> {
    /// The request's trace ids, once an observer that makes them (the server span of
    /// [`Trace`](crate::trace::Trace)) has started: the observers after it in a tuple read
    /// them here (the request log puts them on its records).
    #[cfg(feature = "otel")]
    pub fn trace_ids(&self) -> Option<crate::trace::TraceIds> {
        self.trace_ids.get()
    }
}

/// The response head, when the inner service produced one.
#[derive(Debug)]
pub struct ResponseHead<'a> {
    /// The status code.
    pub status: StatusCode,
    /// The response headers: an observer whose feature it is may add to them (the request log
    /// sets `x-request-id`); none changes what the inner service set.
    pub headers: &'a mut HeaderMap,
}

/// A capability that observes requests.
///
/// An observer builds its per-route data once per route template ([`Observer::route`]), starts
/// a per-request [`Observer::Observation`] in `call`, and is told about the response head and
/// the end (finished, failed or cancelled). Observers compose as tuples, `(A, B)` up to four,
/// so a full stack pays for the clock, the route lookup and the body wrapper once.
///
/// `response` and `end` receive the route data rather than `&self`: everything an observer
/// needs after `call` lives in its route data or its observation, so the response future and
/// body carry a single `Arc` (their thread's handle to the route entry) whatever the number
/// of observers.
pub trait Observer: Send + Sync + 'static {
    /// Data built once per route template and shared by all its requests: metric handles,
    /// span names, configuration.
    type Route: Send + Sync + 'static;
    /// Per-request state.
    type Observation: Send + 'static;

    /// Builds the data of a route (`None`: requests that matched no route). Called once per
    /// template, off the hot path.
    fn route(&self, template: Option<&str>) -> Self::Route;

    /// A request arrives. The request is mutable for observers whose feature it is to hand
    /// something to the handler (the request log inserts the request id extension).
    fn start<B>(
        &self,
        route: &Self::Route,
        req: &mut Request<B>,
        meta: &RequestMeta<'_>,
    ) -> Self::Observation;

    /// Whether this observer reports the request body's size ([`End::request_bytes`]) for
    /// requests of this route. When any observer of a stack does, the lifecycle takes it from
    /// `Content-Length` (or a body whose size is known exactly), or else counts the bytes the
    /// service reads from axum's `Body`: one check per request, and two allocations for a
    /// request of unknown length (chunked, or HTTP/2 without `Content-Length`). Default: no.
    fn wants_request_bytes(route: &Self::Route) -> bool {
        let _ = route;
        false
    }

    /// The inner service produced a response head.
    fn response(route: &Self::Route, obs: &mut Self::Observation, head: &mut ResponseHead<'_>) {
        let _ = (route, obs, head);
    }

    /// The request's span, entered around every poll of the inner future, so that
    /// whatever the handler logs carries the request's context. The first observer of a tuple
    /// that has one provides it.
    fn span(obs: &Self::Observation) -> Option<&tracing::Span> {
        let _ = obs;
        None
    }

    /// The request log's per-request state, made current around every poll of the inner
    /// future (its span entered, or its context put on the thread while it has no span). The
    /// first observer of a tuple that has one provides it; only the request log has one.
    #[cfg(feature = "log")]
    fn scope(obs: &Self::Observation) -> Option<&crate::log::RequestScope> {
        let _ = obs;
        None
    }

    /// The request's OpenTelemetry context (its server span), made current around every poll
    /// of the inner future, so that spans and client calls made by the handler are its
    /// children. The first observer of a tuple that has one provides it.
    #[cfg(feature = "otel")]
    fn context(obs: &Self::Observation) -> Option<&opentelemetry::Context> {
        let _ = obs;
        None
    }

    /// The request's trace ids (its server span's), for the other observers of a tuple when
    /// it ends ([`End`]: RED's exemplars). The first observer of a tuple that has them
    /// provides them; read at the end from the observation rather than carried with the
    /// request.
    #[cfg(feature = "otel")]
    fn trace_ids(obs: &Self::Observation) -> Option<crate::trace::TraceIds> {
        let _ = obs;
        None
    }

    /// The request ended: finished, failed or cancelled. Called exactly once per request.
    fn end(route: &Self::Route, obs: Self::Observation, end: &End);
}

impl Observer for () {
    type Route = ();
    type Observation = ();
    fn route(&self, _: Option<&str>) {}
    fn start<B>(&self, _: &(), _: &mut Request<B>, _: &RequestMeta<'_>) {}
    fn end(_: &(), _: (), _: &End) {}
}

macro_rules! tuple_observer {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Observer),+> Observer for ($($t,)+) {
            type Route = ($($t::Route,)+);
            type Observation = ($($t::Observation,)+);

            fn route(&self, template: Option<&str>) -> Self::Route {
                ($(self.$i.route(template),)+)
            }

            fn start<ReqB>(
                &self,
                route: &Self::Route,
                req: &mut Request<ReqB>,
                meta: &RequestMeta<'_>,
            ) -> Self::Observation {
                ($(self.$i.start(&route.$i, req, meta),)+)
            }

            #[inline]
            fn wants_request_bytes(route: &Self::Route) -> bool {
                false $(|| $t::wants_request_bytes(&route.$i))+
            }

            fn response(route: &Self::Route, obs: &mut Self::Observation, head: &mut ResponseHead<'_>) {
                $($t::response(&route.$i, &mut obs.$i, head);)+
            }

            fn span(obs: &Self::Observation) -> Option<&tracing::Span> {
                None $(.or_else(|| $t::span(&obs.$i)))+
            }

            #[cfg(feature = "log")]
            fn scope(obs: &Self::Observation) -> Option<&crate::log::RequestScope> {
                None $(.or_else(|| $t::scope(&obs.$i)))+
            }

            #[cfg(feature = "otel")]
            fn context(obs: &Self::Observation) -> Option<&opentelemetry::Context> {
                None $(.or_else(|| $t::context(&obs.$i)))+
            }

            #[cfg(feature = "otel")]
            #[inline]
            fn trace_ids(obs: &Self::Observation) -> Option<crate::trace::TraceIds> {
                None $(.or_else(|| $t::trace_ids(&obs.$i)))+
            }

            fn end(route: &Self::Route, obs: Self::Observation, end: &End) {
                $($t::end(&route.$i, obs.$i, end);)+
            }
        }
    };
}

tuple_observer!(A 0);
tuple_observer!(A 0, B 1);
tuple_observer!(A 0, B 1, C 2);
tuple_observer!(A 0, B 1, C 2, D 3);

/// What [`Tracker::enter`] holds while the inner future is polled: dropped in reverse order
/// (the spans are exited, then the context detached).
pub(crate) struct Entered<'a> {
    _span: Option<tracing::span::Entered<'a>>,
    #[cfg(feature = "log")]
    _scope: Option<crate::log::ScopeGuard<'a>>,
    #[cfg(feature = "otel")]
    _context: Option<opentelemetry::ContextGuard>,
}

/// The per-request state the core carries from `call` to the end of the body.
pub(crate) struct Tracker<O: Observer> {
    pub(crate) route: super::route::Held<O::Route>,
    pub(crate) obs: O::Observation,
    pub(crate) start: super::clock::Tick,
    pub(crate) status: Option<StatusCode>,
    pub(crate) response_bytes: u64,
    pub(crate) request_size: super::request_size::RequestSize,
}

impl<O: Observer> Tracker<O> {
    pub(crate) fn response(&mut self, head: &mut ResponseHead<'_>) {
        self.status = Some(head.status);
        O::response(self.route.data(), &mut self.obs, head);
    }

    /// Enters the request's span and makes its OpenTelemetry context current, for observers
    /// that have them.
    #[inline]
    pub(crate) fn enter(&self) -> Entered<'_> {
        Entered {
            #[cfg(feature = "otel")]
            _context: O::context(&self.obs).map(|cx| cx.clone().attach()),
            _span: O::span(&self.obs).map(tracing::Span::enter),
            #[cfg(feature = "log")]
            _scope: O::scope(&self.obs).and_then(crate::log::RequestScope::enter),
        }
    }

    /// Ends the request; `last_bytes`: the size of the body's last frame, not yet counted in
    /// `response_bytes` (so the body does not store into the tracker right before it is moved
    /// out, a copy that stalled on that store, perf).
    pub(crate) fn end(self, outcome: super::Outcome, last_bytes: u64) {
        let at = super::clock::Tick::now();
        let end = End {
            outcome,
            status: self.status,
            duration: self.start.until(at),
            #[cfg(feature = "otel")]
            at,
            response_bytes: self.response_bytes + last_bytes,
            request_bytes: self.request_size.bytes(),
            #[cfg(all(feature = "otel", feature = "prometheus"))]
            trace_ids: O::trace_ids(&self.obs),
        };
        O::end(self.route.data(), self.obs, &end);
    }

    /// The body ended normally (or the response carries no body); `last_bytes` as in `end`.
    pub(crate) fn finish(self, last_bytes: u64) {
        let outcome = match self.status {
            Some(s) => super::Outcome::from_status(s),
            None => super::Outcome::Success,
        };
        self.end(outcome, last_bytes);
    }

    /// Dropped before the end: cancelled, or a panic unwinding through the layer.
    pub(crate) fn abandon(self) {
        let outcome = if std::thread::panicking() {
            super::Outcome::ServerError(super::ErrorType::Status(StatusCode::INTERNAL_SERVER_ERROR))
        } else {
            super::Outcome::Cancelled
        };
        self.end(outcome, 0);
    }
}
