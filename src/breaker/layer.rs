//! The breaker as a Tower layer.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::state::{Admission, Ticket};
use super::{Breaker, BreakerOpen, Classify, HttpClassifier};
use crate::BoxError;

/// Wraps a service with a [`Breaker`].
///
/// ```
/// use std::time::Duration;
/// use towerscope::breaker::{Breaker, CircuitBreakerLayer};
///
/// let breaker = Breaker::builder("payments")
///     .count_window(50)
///     .minimum_calls(10)
///     .wait_in_open(Duration::from_secs(10))
///     .build();
/// let layer = CircuitBreakerLayer::new(breaker.clone());
/// // later: breaker.force_open(), breaker.subscribe(), ...
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = HttpClassifier> {
    breaker: Breaker,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A layer using `breaker` and the HTTP classification ([`HttpClassifier`]).
    pub fn new(breaker: Breaker) -> Self {
        Self {
            breaker,
            classifier: HttpClassifier,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Classifies results with `classifier` (a [`Classify`] or a closure).
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.breaker.clone(), self.classifier.clone())
    }
}

/// The service of [`CircuitBreakerLayer`].
///
/// Admission happens in `poll_ready`, so a half-open permit is held only by a caller that is
/// about to call; it is consumed by `call` and released if the service is dropped (or cloned:
/// clones do not share a reserved permit) before that. Rejections fail fast with a
/// [`BreakerOpen`] error (downcast it from the `BoxError`) without calling the inner service.
pub struct CircuitBreaker<S, C = HttpClassifier> {
    inner: S,
    breaker: Breaker,
    classifier: C,
    admission: Option<Admission>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S, C> CircuitBreaker<S, C> {
    /// Wraps `inner`.
    pub fn new(inner: S, breaker: Breaker, classifier: C) -> Self {
        Self {
            inner,
            breaker,
            classifier,
            admission: None,
            sleep: None,
        }
    }

    /// The breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        // A reserved admission (and its permit) belongs to this instance only.
        Self::new(
            self.inner.clone(),
            self.breaker.clone(),
            self.classifier.clone(),
        )
    }
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.breaker.backpressure() {
            if let Some(left) = self.breaker.open_remaining() {
                let deadline = tokio::time::Instant::now() + left;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                sleep.as_mut().reset(deadline);
                ready!(sleep.as_mut().poll(cx));
            }
        }
        if self.admission.is_none() {
            self.admission = Some(self.breaker.admit());
        }
        match &self.admission {
            // Fails fast in `call`, whatever the inner service's readiness.
            Some(Admission::Rejected(_)) => Poll::Ready(Ok(())),
            _ => self.inner.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let admission = self
            .admission
            .take()
            .expect("poll_ready must be called first");
        ResponseFuture::dispatch(admission, &mut self.inner, req, &self.classifier)
    }
}

pin_project! {
    /// The response future of [`CircuitBreaker`]: reports the outcome when the inner future
    /// completes; dropped early, the call is ignored and its permit released.
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: Option<F>,
        ticket: Option<Ticket>,
        rejected: Option<BreakerOpen>,
        classifier: C,
    }
}

impl<F, C: Clone> ResponseFuture<F, C> {
    /// Calls the inner service if admitted (starting the call's clock), else fails fast.
    pub(crate) fn dispatch<S, Req>(
        admission: Admission,
        inner: &mut S,
        req: Req,
        classifier: &C,
    ) -> Self
    where
        S: Service<Req, Future = F>,
    {
        match admission {
            Admission::Rejected(e) => Self {
                inner: None,
                ticket: None,
                rejected: Some(e),
                classifier: classifier.clone(),
            },
            Admission::Allowed(mut ticket) => {
                ticket.start();
                Self {
                    inner: Some(inner.call(req)),
                    ticket: Some(ticket),
                    rejected: None,
                    classifier: classifier.clone(),
                }
            }
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(e) = this.rejected.take() {
            return Poll::Ready(Err(Box::new(e)));
        }
        let inner = this.inner.as_pin_mut().expect("polled after completion");
        let result = ready!(inner.poll(cx));
        if let Some(ticket) = this.ticket.take() {
            ticket.complete(this.classifier.classify(result.as_ref()));
        }
        Poll::Ready(result.map_err(Into::into))
    }
}
