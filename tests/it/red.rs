//! RED metrics: labels, bounded cardinality, zero allocations in steady state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use http::{Method, Request};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tower::{Layer, Service, ServiceExt};
use tower_http::map_response_body::MapResponseBodyLayer;
use towerscope::lifecycle::KnownMethod;
use towerscope::lifecycle::ObserveLayer;
use towerscope::metrics::{Prometheus, Red, RedLayer, REQUEST_DURATION};

use crate::support::{
    allocations, block_on, collect, drain_sync, h1_connect, h2_connect, local_red, sample,
    series_count,
};

fn app() -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "no") }),
        )
        .route("/metrics", get(|| async { "metrics" }))
}

async fn send(app: &Router, method: Method, path: &str) -> StatusCode {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    collect(res.into_body()).await;
    status
}

fn count_name() -> String {
    format!("{REQUEST_DURATION}_count")
}

#[tokio::test]
async fn labels_follow_the_semantic_conventions() {
    let (red, prometheus) = local_red();
    let app = app().layer(red.layer());
    for _ in 0..3 {
        send(&app, Method::GET, "/users/7").await;
    }
    send(&app, Method::GET, "/users/8").await;
    send(&app, Method::GET, "/fail").await;
    send(&app, Method::GET, "/no/such/path").await;
    send(&app, Method::GET, "/metrics").await;
    send(&app, Method::from_bytes(b"PROPFIND").unwrap(), "/users/1").await;
    let text = prometheus.render();
    let count = count_name();
    let ok = [
        ("http_request_method", "GET"),
        ("http_route", "/users/{id}"),
        ("http_response_status_code", "200"),
    ];
    assert_eq!(sample(&text, &count, &ok), Some(4.0), "{text}");
    let fail = [
        ("http_request_method", "GET"),
        ("http_route", "/fail"),
        ("http_response_status_code", "500"),
        ("error_type", "500"),
    ];
    assert_eq!(sample(&text, &count, &fail), Some(1.0));
    // 4xx: no error_type; unmatched: empty route, never the raw path.
    let missing = [
        ("http_request_method", "GET"),
        ("http_route", ""),
        ("http_response_status_code", "404"),
    ];
    assert_eq!(sample(&text, &count, &missing), Some(1.0));
    assert!(!text.contains("/no/such/path"));
    let other = [
        ("http_request_method", "_OTHER"),
        ("http_route", "/users/{id}"),
        ("http_response_status_code", "405"),
    ];
    assert_eq!(sample(&text, &count, &other), Some(1.0));
    assert!(!text.contains("PROPFIND"));
    assert!(
        !text.contains("http_route=\"/metrics\""),
        "/metrics is excluded by default"
    );
    assert!(text.contains("# HELP http_server_request_duration_seconds "));
    assert!(text.contains("le=\"0.005\"") && text.contains("le=\"7.5\""));
}

#[tokio::test]
async fn options_prefix_constant_labels_placeholder_exclusions_sizes() {
    let (red, prometheus) = local_red();
    let layer = red
        .prefix("shop_")
        .constant_label("service", "checkout")
        .unmatched_route("unmatched")
        .exclude_route("/fail")
        .body_sizes(true)
        .layer();
    let app = app().layer(layer);
    send(&app, Method::GET, "/users/1").await;
    send(&app, Method::GET, "/fail").await;
    send(&app, Method::GET, "/zzz").await;
    send(&app, Method::GET, "/metrics").await;
    let text = prometheus.render();
    let labels = |route, status| {
        vec![
            ("service", "checkout"),
            ("http_request_method", "GET"),
            ("http_route", route),
            ("http_response_status_code", status),
        ]
    };
    let count = format!("shop_{REQUEST_DURATION}_count");
    assert_eq!(
        sample(&text, &count, &labels("/users/{id}", "200")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &count, &labels("unmatched", "404")),
        Some(1.0)
    );
    // Replacing the exclusions brings /metrics back and drops /fail.
    assert_eq!(sample(&text, &count, &labels("/metrics", "200")), Some(1.0));
    assert!(!text.contains("/fail"));
    let size = "shop_http_server_response_body_size_bytes_sum";
    assert_eq!(
        sample(&text, size, &labels("/users/{id}", "200")),
        Some(4.0)
    );
}

#[tokio::test]
async fn random_paths_and_methods_leave_the_series_count_unchanged() {
    let (red, prometheus) = local_red();
    let mut app = app().layer(red.layer()).into_service::<Body>();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut send = |method: Method, path: String| {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let res = block_on(app.call(req)).unwrap();
        drain_sync(res.into_body());
    };
    // Warm up: every method on an unmatched path and on a route.
    for m in KnownMethod::ALL {
        let method = match m {
            KnownMethod::Other => Method::from_bytes(b"BREW").unwrap(),
            m => Method::from_bytes(m.as_str().as_bytes()).unwrap(),
        };
        send(method.clone(), "/warm".into());
        send(method, "/users/1".into());
    }
    let before = series_count(&prometheus.render());
    for _ in 0..100_000 {
        let len = rng.usize(1..12);
        let token: String = (0..len).map(|_| rng.uppercase()).collect();
        let method = Method::from_bytes(token.as_bytes()).unwrap();
        let path: String = (0..rng.usize(1..30)).map(|_| rng.alphanumeric()).collect();
        let path = if rng.bool() {
            format!("/r/{path}")
        } else {
            format!("/users/{path}")
        };
        send(method, path);
    }
    let after = prometheus.render();
    assert_eq!(series_count(&after), before, "new series appeared");
}

/// A recorder whose handles are plain atomics, to count the layer's own allocations apart from
/// any recorder's.
#[derive(Default)]
struct AtomicRecorder;

struct Cell(AtomicU64);
impl CounterFn for Cell {
    fn increment(&self, v: u64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    fn absolute(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}
impl GaugeFn for Cell {
    fn increment(&self, _: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn decrement(&self, _: f64) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    fn set(&self, v: f64) {
        self.0.store(v as u64, Ordering::Relaxed);
    }
}
impl HistogramFn for Cell {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Recorder for AtomicRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Cell(AtomicU64::new(0))))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Cell(AtomicU64::new(0))))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Cell(AtomicU64::new(0))))
    }
}

/// Sends 3 x `rounds` requests (a 200, a 500, an unmatched 404) and returns this thread's
/// allocations during the last `rounds` rounds.
fn allocations_per_rounds<S, B>(mut svc: S, rounds: u64) -> u64
where
    S: Service<Request<Body>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Unpin,
{
    let mut one = |path: &'static str| {
        let req = Request::get(path).body(Body::empty()).unwrap();
        let res = block_on(svc.call(req)).unwrap();
        drain_sync(res.into_body());
    };
    let mut run = |n| {
        for _ in 0..n {
            one("/users/1");
            one("/fail");
            one("/nope");
        }
    };
    run(100);
    let before = allocations();
    run(rounds);
    allocations() - before
}

fn plain_service(
) -> impl Service<Request<Body>, Response = http::Response<String>, Error = std::convert::Infallible>
       + Clone {
    tower::service_fn(|req: Request<Body>| async move {
        let (status, body) = match req.uri().path() {
            "/users/1" => (StatusCode::OK, "user"),
            "/fail" => (StatusCode::INTERNAL_SERVER_ERROR, "no"),
            _ => (StatusCode::NOT_FOUND, ""),
        };
        let mut res = http::Response::new(String::from(body));
        *res.status_mut() = status;
        Ok(res)
    })
}

#[test]
fn steady_state_adds_zero_allocations_per_request() {
    let red = || Red::builder().recorder(Arc::new(AtomicRecorder)).build();

    // A plain Tower service: everything the layer does per request.
    let bare = allocations_per_rounds(plain_service(), 1000);
    let layer = ObserveLayer::with_observer(red()).route_fn(|_, uri| match uri.path() {
        "/users/1" => Some("/users/{id}"),
        "/fail" => Some("/fail"),
        _ => None,
    });
    let observed = allocations_per_rounds(layer.layer(plain_service()), 1000);
    assert!(bare > 0, "the counting allocator is not active");
    assert_eq!(observed, bare, "the RED layer allocated in steady state");
    // Routes from their templates: matching allocates nothing either.
    let layer = ObserveLayer::with_observer(red()).routes(["/users/{id}", "/fail"]);
    let observed = allocations_per_rounds(layer.layer(plain_service()), 1000);
    assert_eq!(observed, bare, "matching route templates allocated");

    // With towerscope's Prometheus recorder too: its counters, gauges and histograms are
    // preallocated per series, so recording allocates nothing either.
    let (recorder, prometheus) = Prometheus::builder().build();
    let exported = Red::builder().recorder(Arc::new(recorder)).build();
    let layer = ObserveLayer::with_observer(exported).route_fn(|_, uri| match uri.path() {
        "/users/1" => Some("/users/{id}"),
        "/fail" => Some("/fail"),
        _ => None,
    });
    let observed = allocations_per_rounds(layer.layer(plain_service()), 1000);
    assert_eq!(
        observed, bare,
        "recording into the Prometheus recorder allocated"
    );
    assert!(prometheus.render().contains("http_route=\"/users/{id}\""));

    // axum: for handler routes, `Router::layer` boxes a clone of every non-zero-sized layer per
    // request, and `Body::new` boxes any body type other than its own. Compare with a layer
    // that carries an `Arc` and changes the body type, so the difference is towerscope's alone.
    let state = Arc::new(0u8);
    let wrap = MapResponseBodyLayer::new(move |b: Body| {
        let _ = &state;
        http_body_util::BodyExt::boxed_unsync(b)
    });
    let axum_bare = allocations_per_rounds(app().layer(wrap).into_service::<Body>(), 1000);
    let layer = ObserveLayer::with_observer(red());
    let axum_observed = allocations_per_rounds(app().layer(layer).into_service::<Body>(), 1000);
    assert_eq!(
        axum_observed, axum_bare,
        "the RED layer allocated in steady state under axum"
    );
}

#[test]
fn install_never_panics_when_a_recorder_exists() {
    // This is the only test that touches the global recorder.
    let first = Prometheus::install();
    assert!(first.is_ok());
    let second = Prometheus::install();
    let err = second.unwrap_err();
    assert!(err.to_string().contains("already installed"));
    // The default layer reports to the global recorder.
    let app = app().layer(RedLayer::new());
    let text = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            send(&app, Method::GET, "/users/3").await;
            first.unwrap().render()
        });
    assert!(text.contains("http_route=\"/users/{id}\""), "{text}");
}

/// A request body of unknown length (no exact size hint): hyper sends it chunked over HTTP/1
/// and without `Content-Length` over HTTP/2.
struct Chunks(std::collections::VecDeque<bytes::Bytes>);

impl http_body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn chunks(sizes: &[usize]) -> Chunks {
    Chunks(
        sizes
            .iter()
            .map(|&n| bytes::Bytes::from(vec![b'x'; n]))
            .collect(),
    )
}

/// Under a plain hyper service (hyper's `Incoming`, no axum), a request's size is its body's
/// exact size hint: `Content-Length`, or 0 without a body (so every GET has a sample, as under
/// axum); a chunked body, which only the service reads, has none.
#[tokio::test]
async fn request_body_sizes_under_plain_hyper() {
    use http_body_util::{BodyExt, Either, Full};
    use hyper::body::Incoming;
    let (red, prometheus) = local_red();
    let svc = red
        .body_sizes(true)
        .layer()
        .route_fn(|_, uri| (uri.path() == "/upload").then_some("/upload"))
        .layer(tower::service_fn(|req: Request<Incoming>| async move {
            let n = req.into_body().collect().await.unwrap().to_bytes().len();
            let body = Full::new(bytes::Bytes::from(n.to_string()));
            Ok::<_, std::convert::Infallible>(http::Response::new(body))
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
            );
        }
    });
    let mut h1 = h1_connect(addr).await;
    let uri = format!("http://{addr}/upload");
    let full = |b: &'static [u8]| Either::Left(Full::new(bytes::Bytes::from_static(b)));
    let requests = [
        Request::post(&uri).body(full(b"hello")).unwrap(),
        Request::get(&uri).body(full(b"")).unwrap(),
        Request::post(&uri)
            .body(Either::Right(chunks(&[300, 1, 699])))
            .unwrap(),
    ];
    let mut answers = Vec::new();
    for req in requests {
        let res = h1.send_request(req).await.unwrap();
        answers.push(String::from_utf8_lossy(&collect(res.into_body()).await).into_owned());
    }
    assert_eq!(answers, ["5", "0", "1000"]);

    let text = prometheus.render();
    let sizes = |method| request_sizes(&text, method, "/upload");
    assert_eq!(sizes("GET"), (Some(0.0), Some(1.0)), "{text}");
    assert_eq!(sizes("POST"), (Some(5.0), Some(1.0)), "chunked: none");
    let duration = format!("{REQUEST_DURATION}_count");
    let labels = [
        ("http_request_method", "POST"),
        ("http_route", "/upload"),
        ("http_response_status_code", "200"),
    ];
    assert_eq!(sample(&text, &duration, &labels), Some(2.0));
}

/// `http_server_request_body_size_bytes`'s `_sum` and `_count` for a method and route (status
/// 200).
fn request_sizes(text: &str, method: &str, route: &str) -> (Option<f64>, Option<f64>) {
    let labels = [
        ("http_request_method", method),
        ("http_route", route),
        ("http_response_status_code", "200"),
    ];
    let size = "http_server_request_body_size_bytes";
    (
        sample(text, &format!("{size}_sum"), &labels),
        sample(text, &format!("{size}_count"), &labels),
    )
}

#[tokio::test]
async fn request_body_sizes_declared_or_counted_over_http1_and_http2() {
    use http_body_util::BodyExt;
    let (red, prometheus) = local_red();
    let app = Router::new()
        .route(
            "/upload",
            axum::routing::any(|body: Body| async move {
                let n = body.collect().await.unwrap().to_bytes().len();
                n.to_string()
            }),
        )
        // Answers without reading the body.
        .route("/ignore", axum::routing::any(|| async { "ignored" }))
        .layer(red.body_sizes(true).layer());
    let addr = crate::support::serve(app).await;
    let uri = |path: &str| format!("http://{addr}{path}");

    // HTTP/1: declared (`Content-Length`), none (a GET: 0), chunked (counted as read).
    let mut h1 = h1_connect(addr).await;
    let declared = Request::post(uri("/upload"))
        .body(http_body_util::Either::Left(http_body_util::Full::new(
            bytes::Bytes::from_static(b"hello"),
        )))
        .unwrap();
    let get = Request::get(uri("/upload"))
        .body(http_body_util::Either::Left(http_body_util::Full::new(
            bytes::Bytes::new(),
        )))
        .unwrap();
    let chunked = Request::post(uri("/upload"))
        .body(http_body_util::Either::Right(chunks(&[300, 1, 699])))
        .unwrap();
    let unread = Request::post(uri("/ignore"))
        .body(http_body_util::Either::Right(chunks(&[10])))
        .unwrap();
    let mut answers = Vec::new();
    for req in [declared, get, chunked, unread] {
        let res = h1.send_request(req).await.unwrap();
        answers.push(collect(res.into_body()).await);
    }
    assert_eq!(
        answers
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect::<Vec<_>>(),
        ["5", "0", "1000", "ignored"]
    );

    // HTTP/2 without `Content-Length`: counted.
    let mut h2 = h2_connect(addr).await;
    let res = h2
        .send_request(
            Request::post(uri("/upload"))
                .body(chunks(&[64, 36]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(&collect(res.into_body()).await[..], b"100");

    let text = prometheus.render();
    // POST /upload: 5 declared, 1000 and 100 counted.
    let sizes = |method, route| request_sizes(&text, method, route);
    assert_eq!(
        sizes("POST", "/upload"),
        (Some(1105.0), Some(3.0)),
        "{text}"
    );
    assert_eq!(sizes("GET", "/upload"), (Some(0.0), Some(1.0)));
    // A body the service never read: nothing transferred to it.
    assert_eq!(sizes("POST", "/ignore"), (Some(0.0), Some(1.0)));
}
