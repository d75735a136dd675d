//! The `Observe` layer, service, response future and response body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::observer::Tracker;
use super::request_size::RequestSize;
use super::route::{RouteSource, RouteTable};
use super::{ErrorType, KnownMethod, Observer, Outcome, RequestMeta, ResponseHead};

/// Applies an [`Observer`] (or a tuple of them) to a service.
///
/// Capability layers such as [`crate::metrics::RedLayer`] are this layer with one observer;
/// several capabilities share one `ObserveLayer` so the clock, route lookup, outcome and body
/// tracking are paid for once.
pub struct ObserveLayer<O: Observer> {
    shared: Arc<Shared<O>>,
}

// The route table holds `O::Route`, so this needs the bound; the layer and service do not.
struct Shared<O: Observer> {
    observer: O,
    source: RouteSource,
    table: RouteTable<O::Route>,
}

impl<O: Observer> ObserveLayer<O> {
    /// A layer with this observer; routes come from axum's `MatchedPath` (with the `axum`
    /// feature), otherwise requests are unmatched.
    pub fn with_observer(observer: O) -> Self {
        Self::with_source(observer, RouteSource::default())
    }

    fn with_source(observer: O, source: RouteSource) -> Self {
        let table = RouteTable::new(&|t| observer.route(t));
        Self {
            shared: Arc::new(Shared {
                observer,
                source,
                table,
            }),
        }
    }

    /// Takes route templates from a closure instead, for plain Hyper/Tower services.
    ///
    /// # Panics
    ///
    /// When the layer was cloned before: set the route source while building the layer.
    ///
    /// ```
    /// use towerscope::metrics::RedLayer;
    /// let layer = RedLayer::new().route_fn(|_method, uri| match uri.path() {
    ///     "/" => Some("/"),
    ///     p if p.starts_with("/users/") => Some("/users/{id}"),
    ///     _ => None,
    /// });
    /// ```
    pub fn route_fn<F>(self, f: F) -> Self
    where
        F: Fn(&Method, &Uri) -> Option<&'static str> + Send + Sync + 'static,
    {
        self.replace_source(RouteSource::Fn(Arc::new(f)), "route_fn")
    }

    /// Takes route templates from a list instead, matched against the request's path the way
    /// axum matches them (`/users/{id}`, `/files/{*path}`; with axum's own matcher, `matchit`):
    /// for plain Hyper/Tower services, or an axum `Router` wrapped as a whole rather than
    /// through `Router::layer`. A path no template matches is unmatched; the method plays no
    /// part, as in axum's `MatchedPath`.
    ///
    /// # Panics
    ///
    /// When a template is invalid or conflicts with an earlier one (as axum's `Router::route`
    /// does), or when the layer was cloned before.
    ///
    /// ```
    /// use towerscope::metrics::RedLayer;
    /// let layer = RedLayer::new().routes(["/", "/users/{id}", "/files/{*path}"]);
    /// ```
    pub fn routes<I>(self, templates: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut router = matchit::Router::new();
        for t in templates {
            let t = t.as_ref();
            if let Err(e) = router.insert(t, Box::<str>::from(t)) {
                panic!("route template {t:?}: {e}");
            }
        }
        self.replace_source(RouteSource::Templates(Arc::new(router)), "routes")
    }

    /// The same observer with another route source (and a fresh route table for it).
    fn replace_source(self, source: RouteSource, setter: &str) -> Self {
        let shared = Arc::try_unwrap(self.shared)
            .unwrap_or_else(|_| panic!("{setter} must be set before the layer is cloned"));
        Self::with_source(shared.observer, source)
    }

    /// The observer.
    pub fn observer(&self) -> &O {
        &self.shared.observer
    }
}

impl<O: Observer> Clone for ObserveLayer<O> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<O: Observer> std::fmt::Debug for ObserveLayer<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserveLayer").finish_non_exhaustive()
    }
}

impl<S, O: Observer> Layer<S> for ObserveLayer<O> {
    type Service = Observe<S, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`ObserveLayer`].
pub struct Observe<S, O: Observer> {
    inner: S,
    shared: Arc<Shared<O>>,
}

impl<S: Clone, O: Observer> Clone for Observe<S, O> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: std::fmt::Debug, O: Observer> std::fmt::Debug for Observe<S, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observe")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, O, ReqB, ResB> Service<Request<ReqB>> for Observe<S, O>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: 'static,
    O: Observer,
    ReqB: 'static,
    ResB: Body,
{
    type Response = Response<ResponseBody<ResB, O>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, O>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let start = super::clock::Tick::now();
        let shared = &*self.shared;
        let route = shared
            .table
            .resolve(&shared.source, &req, &|t| shared.observer.route(t));
        let meta = RequestMeta {
            method: KnownMethod::from_method(req.method()),
            route: route.template(),
            #[cfg(feature = "otel")]
            trace_ids: std::cell::Cell::new(None),
            #[cfg(any(feature = "log", feature = "otel"))]
            start,
        };
        let request_size = if O::wants_request_bytes(route.data()) {
            RequestSize::measure(&mut req)
        } else {
            RequestSize::Unknown
        };
        let obs = shared.observer.start(route.data(), &mut req, &meta);
        let head_only = req.method() == Method::HEAD;
        let tracker = Tracker {
            route,
            obs,
            start,
            status: None,
            response_bytes: 0,
            request_size,
        };
        // Not entered here: services build their future in `call` and do the work in `poll`,
        // which runs in the request's span.
        ResponseFuture {
            inner: self.inner.call(req),
            tracker: Some(tracker),
            head_only,
        }
    }
}

/// The request's declared body size (`Content-Length`), for observers that report it.
pub fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pin_project! {
    /// The response future of [`Observe`].
    pub struct ResponseFuture<F, O: Observer> {
        #[pin]
        inner: F,
        tracker: Option<Tracker<O>>,
        head_only: bool,
    }

    impl<F, O: Observer> PinnedDrop for ResponseFuture<F, O> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(t) = this.project().tracker.take() {
                t.abandon();
            }
        }
    }
}

impl<F, O, ResB, E> Future for ResponseFuture<F, O>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: 'static,
    O: Observer,
    ResB: Body,
{
    type Output = Result<Response<ResponseBody<ResB, O>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.tracker.as_ref().map(Tracker::enter);
            ready!(this.inner.poll(cx))
        };
        let mut tracker = this.tracker.take().expect("polled after completion");
        match result {
            Ok(mut res) => {
                let status = res.status();
                tracker.response(&mut ResponseHead {
                    status,
                    headers: res.headers_mut(),
                });
                // Hyper never polls a body it must not send (HEAD, 1xx, 204, 304) nor one that
                // is already at its end: the request is finished with its head.
                let tracker =
                    if *this.head_only || bodyless(res.status()) || res.body().is_end_stream() {
                        tracker.finish(0);
                        None
                    } else {
                        Some(tracker)
                    };
                Poll::Ready(Ok(res.map(|inner| ResponseBody { inner, tracker })))
            }
            Err(e) => {
                tracker.end(Outcome::ServerError(ErrorType::of_error(&e)), 0);
                Poll::Ready(Err(e))
            }
        }
    }
}

/// The data bytes a frame carries (none for trailers).
#[inline]
pub(super) fn data_bytes<D: bytes::Buf>(frame: &Frame<D>) -> u64 {
    frame.data_ref().map_or(0, |d| d.remaining() as u64)
}

fn bodyless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

pin_project! {
    /// The response body of [`Observe`]: passes every frame through unchanged and ends the
    /// request when the body ends (end of stream, trailers, `is_end_stream()` after a frame,
    /// or an error), or when it is dropped before that (cancelled).
    pub struct ResponseBody<B, O: Observer> {
        #[pin]
        inner: B,
        tracker: Option<Tracker<O>>,
    }

    impl<B, O: Observer> PinnedDrop for ResponseBody<B, O> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(t) = this.project().tracker.take() {
                t.abandon();
            }
        }
    }
}

impl<B: Body, O: Observer> Body for ResponseBody<B, O> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        // Not in the request's span: body frames come from already-built streams, and entering
        // a span per frame costs more than the rare log line written there is worth.
        let poll = this.inner.as_mut().poll_frame(cx);
        // The frame is looked at where the inner body wrote it and returned as it is: taking it
        // out of the `Poll` and putting it back copied it twice, and the first copy, read in
        // 16-byte halves right after the inner body's 8-byte stores, stalled on each (perf).
        let Poll::Ready(frame) = &poll else {
            return poll;
        };
        let Some(tracker) = this.tracker.as_mut() else {
            return poll;
        };
        // The last frame ends the request: finished (`None`) or failed (the outcome). Its bytes
        // are handed to the end rather than added to the tracker just before it is moved out.
        let (failed, last_bytes) = match frame {
            Some(Ok(f)) => {
                let n = data_bytes(f);
                if !f.is_trailers() && !this.inner.is_end_stream() {
                    tracker.response_bytes += n;
                    return poll;
                }
                (None, n)
            }
            Some(Err(_)) => (Some(Outcome::ServerError(ErrorType::Kind("body"))), 0),
            None => (None, 0),
        };
        if let Some(t) = this.tracker.take() {
            match failed {
                Some(outcome) => t.end(outcome, last_bytes),
                None => t.finish(last_bytes),
            }
        }
        poll
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: std::fmt::Debug, O: Observer> std::fmt::Debug for ResponseBody<B, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
