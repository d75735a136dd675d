//! Load shedding: a concurrency limit that answers `503 Service Unavailable` with
//! `Retry-After` at once when the service is saturated, instead of letting requests queue
//! without end.
//!
//! Requests beyond the limit never reach the inner service; they are counted in
//! `http_server_shed_requests_total{http_route}`, and the in-flight count against the limit is
//! the gauge `http_server_concurrency_utilization_ratio` (0 to 1). Exempt paths (by default the
//! probes and `/metrics`) are neither limited nor counted, so a saturated service still answers
//! its health checks and scrapes. A request holds its slot until its response head is
//! produced.
//!
//! ```
//! use std::time::Duration;
//! use towerscope::shed::LoadShedLayer;
//! let layer = LoadShedLayer::new(512)
//!     .retry_after(Duration::from_secs(2))
//!     .exempt_path("/internal/status");
//! ```
//!
//! With axum, add it with `Router::layer` so the route template labels the counter.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use metrics::{Counter, Gauge, Unit};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// `http_server_shed_requests_total`
pub const SHED_REQUESTS: &str = "http_server_shed_requests_total";
/// `http_server_concurrency_utilization_ratio`
pub const UTILIZATION: &str = "http_server_concurrency_utilization_ratio";
/// `http_server_concurrency_limit`
pub const LIMIT: &str = "http_server_concurrency_limit";

/// Paths exempt by default: the health probes and the metrics endpoint (each with the paths
/// under it, such as `/readyz/db`).
pub const DEFAULT_EXEMPT: &[&str] = &["/livez", "/readyz", "/startupz", "/health", "/metrics"];

struct Shared {
    limit: usize,
    in_flight: AtomicUsize,
    exempt: Vec<String>,
    retry_after: HeaderValue,
    utilization: Gauge,
    shed: RwLock<HashMap<Box<str>, Counter>>,
}

impl Shared {
    fn shed_counter(&self, route: &str) -> Counter {
        if let Some(c) = self
            .shed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
        {
            return c.clone();
        }
        let c = metrics::counter!(SHED_REQUESTS, "http_route" => route.to_owned());
        let mut map = self.shed.write().unwrap_or_else(|e| e.into_inner());
        // Routes are templates (bounded); past 4096 of them a new one is not cached.
        if map.len() < 4096 {
            map.insert(route.into(), c.clone());
        }
        c
    }

    /// Sets the utilization from the in-flight count, after this thread changed it.
    ///
    /// Two threads that change the count at once can set the gauge in the other order than
    /// they read the count (the later count overwritten by the earlier one), which would then
    /// stay until the next admission or release. So the count is read again after the set
    /// (a fence between, so the set is visible before that read): when it moved, the set is
    /// made again. Whichever thread changed the count last sees its own set stand or the later
    /// count and sets that: the gauge ends at the count.
    fn set_utilization(&self) {
        let mut n = self.in_flight.load(Ordering::SeqCst);
        loop {
            self.utilization
                .set(n.min(self.limit) as f64 / self.limit as f64);
            std::sync::atomic::fence(Ordering::SeqCst);
            let now = self.in_flight.load(Ordering::SeqCst);
            if now == n {
                return;
            }
            n = now;
        }
    }
}

/// The load-shedding layer. Every service it makes shares its one limit (axum's
/// `Router::layer` makes one service per route: the limit is still the whole router's).
#[derive(Clone)]
pub struct LoadShedLayer {
    limit: usize,
    exempt: Vec<String>,
    retry_after: Duration,
    shared: Arc<std::sync::OnceLock<Arc<Shared>>>,
}

impl std::fmt::Debug for LoadShedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadShedLayer")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl LoadShedLayer {
    /// At most `limit` requests in flight (at least 1).
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            exempt: DEFAULT_EXEMPT.iter().map(|s| (*s).to_owned()).collect(),
            retry_after: Duration::from_secs(1),
            shared: Arc::default(),
        }
    }

    /// `Retry-After` of shed responses (default 1 s; whole seconds, at least 1).
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self.shared = Arc::default();
        self
    }

    /// Another path that is never limited, with the paths under it (`/internal/status` also
    /// exempts `/internal/status/db`, not `/internal/statuses`).
    pub fn exempt_path(mut self, path: impl Into<String>) -> Self {
        self.exempt.push(path.into());
        self.shared = Arc::default();
        self
    }

    /// No exempt paths at all.
    pub fn no_exemptions(mut self) -> Self {
        self.exempt.clear();
        self.shared = Arc::default();
        self
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    /// The first `layer` call resolves the handles (install the recorder first); later calls
    /// share its limit.
    fn layer(&self, inner: S) -> LoadShed<S> {
        let shared = self.shared.get_or_init(|| {
            metrics::describe_counter!(
                SHED_REQUESTS,
                "Requests answered 503 at once because the concurrency limit was reached."
            );
            metrics::describe_gauge!(
                UTILIZATION,
                Unit::Count,
                "In-flight requests as a fraction of the concurrency limit."
            );
            metrics::describe_gauge!(LIMIT, "The concurrency limit of the load shedder.");
            metrics::gauge!(LIMIT).set(self.limit as f64);
            let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
            Arc::new(Shared {
                limit: self.limit,
                in_flight: AtomicUsize::new(0),
                exempt: self.exempt.clone(),
                retry_after: HeaderValue::from(secs.max(1)),
                utilization: metrics::gauge!(UTILIZATION),
                shed: RwLock::new(HashMap::new()),
            })
        });
        LoadShed {
            inner,
            shared: shared.clone(),
        }
    }
}

/// The load-shedding service.
#[derive(Clone)]
pub struct LoadShed<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for LoadShed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadShed")
            .field("limit", &self.shared.limit)
            .field("in_flight", &self.shared.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<S> LoadShed<S> {
    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }
}

/// An admitted request's slot, released when dropped.
struct Slot(Arc<Shared>);

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.set_utilization();
    }
}

fn route_of<B>(req: &Request<B>) -> &str {
    #[cfg(feature = "axum")]
    if let Some(p) = req.extensions().get::<axum::extract::MatchedPath>() {
        return p.as_str();
    }
    let _ = req;
    ""
}

impl<S, B, ResB> Service<Request<B>> for LoadShed<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        let path = req.uri().path();
        if shared.exempt.iter().any(|p| is_under(path, p)) {
            return ResponseFuture {
                state: State::Inner {
                    inner: self.inner.call(req),
                    slot: None,
                },
            };
        }
        // Taken only below the limit: a request that is shed never counts, even for a moment
        // (another thread's utilization would read it).
        let admitted = shared
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < shared.limit).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            shared.shed_counter(route_of(&req)).increment(1);
            let mut res = Response::new(ResB::default());
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            res.headers_mut()
                .insert(http::header::RETRY_AFTER, shared.retry_after.clone());
            return ResponseFuture {
                state: State::Shed { res: Some(res) },
            };
        }
        shared.set_utilization();
        ResponseFuture {
            state: State::Inner {
                inner: self.inner.call(req),
                slot: Some(Slot(shared.clone())),
            },
        }
    }
}

pin_project! {
    /// The future of [`LoadShed`].
    pub struct ResponseFuture<F, ResB> {
        #[pin]
        state: State<F, ResB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, ResB> {
        // Admitted: the inner future, holding its slot until the response head.
        Inner {
            #[pin]
            inner: F,
            slot: Option<Slot>,
        },
        // Shed: the 503, ready.
        Shed {
            res: Option<Response<ResB>>,
        },
    }
}

impl<F, ResB, E> Future for ResponseFuture<F, ResB>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { inner, slot } => {
                let out = std::task::ready!(inner.poll(cx));
                drop(slot.take());
                Poll::Ready(out)
            }
            StateProj::Shed { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
        }
    }
}

/// Whether `path` is `exempt` or a path under it.
#[inline]
fn is_under(path: &str, exempt: &str) -> bool {
    // Most paths differ from each exempt one in their second byte (after the `/`): one byte
    // compared instead of a `memcmp` call per exempt path (callgrind: about 190 instructions
    // per request against the five default exemptions).
    let (p, e) = (path.as_bytes(), exempt.as_bytes());
    if e.len() > 1 && p.get(1) != e.get(1) {
        return false;
    }
    path.strip_prefix(exempt)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || exempt.ends_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    /// The utilization gauge's value in a rendering.
    #[cfg(feature = "prometheus")]
    fn utilization(text: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{UTILIZATION} ")))
            .and_then(|v| v.parse().ok())
            .expect("the utilization gauge")
    }

    #[test]
    #[cfg(feature = "prometheus")]
    fn utilization_ends_at_the_count_when_threads_race() {
        // Two threads released together admit and release one request each, round after
        // round. After each round none is in flight, so the gauge must read 0 whichever set
        // landed last. (The race this guards against, two sets landing in the other order
        // than their counts, needs a thread preempted between its count and its set: the
        // example server's test under the whole suite's load met it once; here it is rare.
        // What this test always checks is that every release sets the gauge back.)
        let (recorder, prometheus) = crate::metrics::Prometheus::builder().build();
        let layer = LoadShedLayer::new(4);
        let svc = metrics::with_local_recorder(&recorder, || {
            layer.layer(tower::service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(String::new()))
            }))
        });
        let threads = 2;
        let (go, done) = (
            std::sync::Barrier::new(threads + 1),
            std::sync::Barrier::new(threads + 1),
        );
        let rounds = 3000;
        std::thread::scope(|s| {
            for _ in 0..threads {
                let svc = svc.clone();
                let (go, done) = (&go, &done);
                s.spawn(move || {
                    let waker = std::task::Waker::noop();
                    let mut cx = Context::from_waker(waker);
                    for _ in 0..rounds {
                        go.wait();
                        let mut svc = svc.clone();
                        let fut = svc.call(Request::get("/work").body(()).unwrap());
                        // Ready at once: the slot is released as the response comes out
                        // (a future still pending would hold it: the round's check sees it).
                        // No assertion here: a thread that panicked would leave the others
                        // waiting at the barrier.
                        let _ = std::pin::pin!(fut).poll(&mut cx);
                        done.wait();
                    }
                });
            }
            // Failures are collected, not asserted here: the threads wait at the barriers.
            let mut wrong = Vec::new();
            for round in 0..rounds {
                go.wait();
                done.wait();
                let u = utilization(&prometheus.render());
                if svc.in_flight() != 0 || u != 0.0 {
                    wrong.push((round, svc.in_flight(), u));
                }
            }
            assert!(
                wrong.is_empty(),
                "rounds ending with requests or utilization: {wrong:?}"
            );
        });
    }

    #[tokio::test]
    async fn sheds_beyond_the_limit_and_exempts_probes() {
        let (release, gate) = tokio::sync::watch::channel(false);
        let svc = tower::service_fn(move |_req: Request<()>| {
            let mut gate = gate.clone();
            async move {
                while !*gate.borrow() {
                    gate.changed().await.unwrap();
                }
                Ok::<_, Infallible>(Response::new(String::from("done")))
            }
        });
        let svc = LoadShedLayer::new(2).layer(svc);
        let call = |path: &str| svc.clone().oneshot(Request::get(path).body(()).unwrap());
        // Two requests take the two slots and wait.
        let a = tokio::spawn(call("/work"));
        let b = tokio::spawn(call("/work"));
        tokio::task::yield_now().await;
        while svc.in_flight() < 2 {
            tokio::task::yield_now().await;
        }
        // The third is answered at once, 503 with Retry-After, without reaching the service.
        let shed = call("/work").await.unwrap();
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.headers()[http::header::RETRY_AFTER], "1");
        assert_eq!(shed.body(), "");
        // Probes are exempt, with the paths under them: they wait like normal requests
        // instead of being shed. A path that only begins with a probe's name is not.
        let probe = tokio::spawn(call("/readyz"));
        let check = tokio::spawn(call("/readyz/db"));
        tokio::task::yield_now().await;
        assert!(!probe.is_finished() && !check.is_finished());
        let lookalike = call("/readyzz").await.unwrap();
        assert_eq!(lookalike.status(), StatusCode::SERVICE_UNAVAILABLE);
        release.send(true).unwrap();
        for h in [a, b, probe, check] {
            assert_eq!(h.await.unwrap().unwrap().status(), StatusCode::OK);
        }
        // The slots are free again.
        assert_eq!(svc.in_flight(), 0);
        assert_eq!(call("/work").await.unwrap().status(), StatusCode::OK);
    }
}
