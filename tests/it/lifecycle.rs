//! The shared lifecycle: when a request ends, and how.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use tower::{service_fn, Layer, ServiceExt};
use towerscope::lifecycle::{ErrorType, ObserveLayer, Outcome};
use towerscope::metrics::{ACTIVE_REQUESTS, CANCELLED_REQUESTS, REQUEST_DURATION};

use crate::support::{collect, empty_request, h2_connect, local_red, sample, serve, Capture};

/// A body of `n` chunks, `gap` apart, that reports its end only by returning `None`.
struct Slow {
    left: u32,
    gap: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Slow {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let gap = self.gap;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
        std::task::ready!(sleep.as_mut().poll(cx));
        self.sleep = None;
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"chunk")))))
    }
}

fn slow(left: u32, gap: Duration) -> Slow {
    Slow {
        left,
        gap,
        sleep: None,
    }
}

/// Answers after a minute: a request its client gives up on before the response head.
async fn hang() -> &'static str {
    tokio::time::sleep(Duration::from_secs(60)).await;
    "late"
}

/// The request count (the duration histogram's `_count`) of `method route status`, without
/// `error_type`.
fn counted(text: &str, method: &str, route: &str, status: &str) -> Option<f64> {
    sample(
        text,
        &format!("{REQUEST_DURATION}_count"),
        &[
            ("http_request_method", method),
            ("http_route", route),
            ("http_response_status_code", status),
        ],
    )
}

/// A series labelled by method and route alone (the active and cancelled requests) for GET
/// `route`.
fn of_get(text: &str, metric: &str, route: &str) -> Option<f64> {
    sample(
        text,
        metric,
        &[("http_request_method", "GET"), ("http_route", route)],
    )
}

#[tokio::test]
async fn streaming_body_is_timed_to_its_end() {
    let (layer, capture) = Capture::layer();
    let svc = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(slow(3, Duration::from_millis(60))))
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert!(capture.ends().is_empty(), "ended before the body was sent");
    let body = collect(res.into_body()).await;
    assert_eq!(body.len(), 15);
    let ends = capture.ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].outcome, Outcome::Success);
    assert_eq!(ends[0].response_bytes, 15);
    assert!(
        ends[0].duration >= Duration::from_millis(180),
        "duration {:?} stops before the last chunk",
        ends[0].duration
    );
}

/// A body that ends after one frame, says so with `is_end_stream`, and hangs if polled again:
/// hyper stops polling there, so the layer must finish on `is_end_stream` (tower-http #625).
struct OneFrame(bool);

impl http_body::Body for OneFrame {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 {
            return Poll::Pending;
        }
        self.0 = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"only")))))
    }
    fn is_end_stream(&self) -> bool {
        self.0
    }
}

#[tokio::test]
async fn finishes_on_is_end_stream_after_a_frame() {
    let (layer, capture) = Capture::layer();
    let svc = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(OneFrame(false)))
    }));
    let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "only");
    assert!(http_body::Body::is_end_stream(&body));
    let ends = capture.ends();
    assert_eq!(ends.len(), 1, "not finished after the last frame");
    assert_eq!(ends[0].outcome, Outcome::Success);
    drop(body);
    assert_eq!(
        capture.ends().len(),
        1,
        "dropping a finished body ended it twice"
    );
}

#[tokio::test]
async fn early_dropped_body_is_cancelled_and_gauge_returns() {
    let (red, prometheus) = local_red();
    let app = Router::new()
        .route(
            "/stream",
            get(|| async { Body::new(slow(10, Duration::from_millis(20))) }),
        )
        .layer(red.layer());
    let res = app
        .oneshot(Request::get("/stream").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let labels = [("http_request_method", "GET"), ("http_route", "/stream")];
    let text = prometheus.render();
    assert_eq!(sample(&text, ACTIVE_REQUESTS, &labels), Some(1.0));
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap(); // one chunk, then the client goes away
    drop(body);
    let text = prometheus.render();
    assert_eq!(sample(&text, ACTIVE_REQUESTS, &labels), Some(0.0));
    assert_eq!(sample(&text, CANCELLED_REQUESTS, &labels), Some(1.0));
    assert!(
        !text.contains("http_server_request_duration_seconds_count{"),
        "a cancelled request was recorded as a completed one:\n{text}"
    );
}

#[tokio::test]
async fn dropped_response_future_is_cancelled() {
    let (layer, capture) = Capture::layer();
    let svc = layer.layer(service_fn(|_: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let r = tokio::time::timeout(Duration::from_millis(20), svc.oneshot(Request::new(()))).await;
    assert!(r.is_err());
    let ends = capture.ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].outcome, Outcome::Cancelled);
    assert_eq!(ends[0].status, None);
}

#[tokio::test]
async fn panics_count_as_500_caught_or_not() {
    async fn boom() -> &'static str {
        panic!("handler bug")
    }
    let labels_500 = [
        ("http_request_method", "GET"),
        ("http_route", "/boom"),
        ("http_response_status_code", "500"),
        ("error_type", "500"),
    ];
    let gauge = [("http_request_method", "GET"), ("http_route", "/boom")];

    // Caught inside the stack: the client gets a real 500.
    let (red, prometheus) = local_red();
    let app = Router::new()
        .route("/boom", get(boom))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(red.layer());
    let res = app
        .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    collect(res.into_body()).await;
    let count = format!("{REQUEST_DURATION}_count");
    let text = prometheus.render();
    assert_eq!(sample(&text, &count, &labels_500), Some(1.0), "{text}");
    assert_eq!(sample(&text, ACTIVE_REQUESTS, &gauge), Some(0.0));

    // Not caught: the panic unwinds through the layer, which still counts it as a 500, in the
    // same series as a caught one.
    let (red, prometheus) = local_red();
    let app = Router::new().route("/boom", get(boom)).layer(red.layer());
    let joined =
        tokio::spawn(app.oneshot(Request::get("/boom").body(Body::empty()).unwrap())).await;
    assert!(joined.unwrap_err().is_panic());
    let text = prometheus.render();
    assert_eq!(sample(&text, &count, &labels_500), Some(1.0), "{text}");
    assert_eq!(sample(&text, ACTIVE_REQUESTS, &gauge), Some(0.0));
}

#[tokio::test]
async fn inner_errors_are_server_errors_with_a_kind() {
    let (layer, capture) = Capture::layer();
    let svc = layer.layer(service_fn(|_: Request<()>| async {
        Err::<Response<String>, _>(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow db"))
    }));
    assert!(svc.oneshot(Request::new(())).await.is_err());
    let ends = capture.ends();
    assert_eq!(
        ends[0].outcome,
        Outcome::ServerError(ErrorType::Kind("timeout"))
    );
}

/// A body that sends one frame, then fails.
struct FailsAfterOne(bool);

impl http_body::Body for FailsAfterOne {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.0 {
            return Poll::Ready(Some(Err(std::io::Error::other("disk gone"))));
        }
        self.0 = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"half")))))
    }
}

#[tokio::test]
async fn a_body_error_ends_the_request_as_a_server_error() {
    let (layer, capture) = Capture::layer();
    let svc = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(FailsAfterOne(false)))
    }));
    let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(
        frame.into_data().unwrap(),
        "half",
        "the frame passes unchanged"
    );
    assert!(capture.ends().is_empty(), "ended before the body did");
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "disk gone", "the error passes unchanged");
    let ends = capture.ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(
        ends[0].outcome,
        Outcome::ServerError(ErrorType::Kind("body"))
    );
    assert_eq!(ends[0].response_bytes, 4);
    drop(body);
    assert_eq!(capture.ends().len(), 1, "a failed body ended twice");
}

#[tokio::test]
async fn bodyless_responses_finish_with_their_head() {
    // Hyper never polls these bodies; waiting for their end would count them as cancelled.
    for (method, status) in [
        (http::Method::HEAD, StatusCode::OK),
        (http::Method::GET, StatusCode::NO_CONTENT),
        (http::Method::GET, StatusCode::NOT_MODIFIED),
    ] {
        let (layer, capture) = Capture::layer();
        let svc = layer.layer(service_fn(move |_: Request<()>| async move {
            let mut res = Response::new(slow(1, Duration::from_secs(60)));
            *res.status_mut() = status;
            Ok::<_, Infallible>(res)
        }));
        let req = Request::builder().method(method.clone()).body(()).unwrap();
        let res = svc.oneshot(req).await.unwrap();
        drop(res);
        let ends = capture.ends();
        assert_eq!(ends.len(), 1);
        assert_ne!(ends[0].outcome, Outcome::Cancelled, "{method} {status}");
    }
}

#[tokio::test]
async fn response_passes_through_byte_for_byte() {
    let make = || {
        service_fn(|req: Request<()>| async move {
            let n: usize = req.uri().path()[1..].parse().unwrap();
            let data: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", HeaderValue::from(n));
            let body = http_body_util::StreamBody::new(futures_iter(vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from(data))),
                Ok(Frame::trailers(trailers)),
            ]));
            let res = Response::builder()
                .status(StatusCode::IM_A_TEAPOT)
                .header("x-custom", HeaderValue::from_bytes(b"caf\xe9").unwrap())
                .header("content-type", "application/octet-stream")
                .body(body)
                .unwrap();
            Ok::<_, Infallible>(res)
        })
    };
    let (red, _prometheus) = local_red();
    let red = red.layer();
    for n in [0usize, 1, 4096, 100_000] {
        let path = format!("/{n}");
        let bare = make()
            .oneshot(Request::get(&path).body(()).unwrap())
            .await
            .unwrap();
        let observed = red
            .layer(make())
            .oneshot(Request::get(&path).body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(bare.status(), observed.status());
        assert_eq!(bare.headers(), observed.headers());
        let a = bare.into_body().collect().await.unwrap();
        let b = observed.into_body().collect().await.unwrap();
        assert_eq!(a.trailers(), b.trailers());
        assert_eq!(a.to_bytes(), b.to_bytes());
    }
}

/// One HTTP/1.1 exchange over a fresh connection, as raw bytes: the response head's lines
/// (without `date`, which differs between two servers) and everything after the head, framing
/// included (chunk sizes of a chunked body).
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> (Vec<String>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let lines = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .map(str::to_owned)
        .collect();
    (lines, raw[split + 4..].to_vec())
}

#[tokio::test]
async fn framing_on_the_wire_is_unchanged() {
    // What the layer's body forwards (`size_hint`, `is_end_stream`) decides the framing hyper
    // chooses: a known length goes out with `content-length`, an unknown one chunked. Wrapping
    // the body must not turn the one into the other, nor add or drop a header.
    let app = || {
        Router::new()
            .route("/fixed", get(|| async { "hello, world" }))
            .route("/empty", get(|| async { StatusCode::NO_CONTENT }))
            .route(
                "/stream",
                get(|| async {
                    Body::new(http_body_util::StreamBody::new(futures_iter(vec![
                        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"one"))),
                        Ok(Frame::data(Bytes::from_static(b"two"))),
                    ])))
                }),
            )
    };
    let (red, _prometheus) = local_red();
    let bare = serve(app()).await;
    let observed = serve(app().layer(red.layer())).await;
    let ask = |method: &str, path: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    };
    for (method, path, framing) in [
        ("GET", "/fixed", "content-length: 12"),
        ("HEAD", "/fixed", "content-length: 12"),
        ("GET", "/empty", "HTTP/1.1 204 No Content"),
        ("GET", "/stream", "transfer-encoding: chunked"),
    ] {
        let request = ask(method, path);
        let (bare_head, bare_rest) = raw_exchange(bare, &request).await;
        let (head, rest) = raw_exchange(observed, &request).await;
        assert!(
            bare_head.iter().any(|l| l == framing),
            "{method} {path}: the bare server sends {framing:?}: {bare_head:?}"
        );
        assert_eq!(head, bare_head, "{method} {path}: the response head");
        assert_eq!(rest, bare_rest, "{method} {path}: the bytes after the head");
    }
}

/// A stream over a vector, without pulling in the futures crate.
fn futures_iter<T: Unpin>(items: Vec<T>) -> IterStream<T> {
    IterStream(items.into_iter())
}

struct IterStream<T>(std::vec::IntoIter<T>);

impl<T: Unpin> futures_core::Stream for IterStream<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
        Poll::Ready(self.0.next())
    }
}

/// Records the route template each request resolved to.
#[derive(Clone, Default)]
struct Routes(std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>);

impl towerscope::lifecycle::Observer for Routes {
    type Route = ();
    type Observation = ();
    fn route(&self, _: Option<&str>) {}
    fn start<B>(&self, _: &(), _: &mut Request<B>, meta: &towerscope::lifecycle::RequestMeta<'_>) {
        self.0.lock().unwrap().push(meta.route.map(String::from));
    }
    fn end(_: &(), _: (), _: &towerscope::lifecycle::End) {}
}

#[tokio::test]
async fn route_templates_match_as_axum_matches_them() {
    let templates = [
        "/",
        "/users/{id}",
        "/users/{id}/orders/{order}",
        "/users/me",
        "/files/{*path}",
        "/static/logo.png",
        "/a/{x}/b",
        "/v1/{tenant}/items",
    ];
    let paths = [
        "/",
        "/users/7",
        "/users/me",
        "/users/7/orders/9",
        "/users/",
        "/users",
        "/users/7/",
        "/files/a",
        "/files/a/b/c",
        "/files/",
        "/static/logo.png",
        "/static/other.png",
        "/a/1/b",
        "/a/1/c",
        "/a//b",
        "/v1/acme/items",
        "/v1/acme/items/",
        "/nowhere",
        "//",
        "/users/%2F",
        "/USERS/7",
    ];
    // axum's answer: the `MatchedPath` of each path, or none.
    let mut router = Router::new();
    for t in templates {
        router = router.route(
            t,
            get(|m: axum::extract::MatchedPath| async move { m.as_str().to_owned() }),
        );
    }
    let mut expected = Vec::new();
    for p in paths {
        let res = router
            .clone()
            .oneshot(Request::get(p).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let matched = res.status() == StatusCode::OK;
        let body = res.into_body().collect().await.unwrap().to_bytes();
        expected.push(matched.then(|| String::from_utf8(body.to_vec()).unwrap()));
    }
    assert!(expected.iter().filter(|e| e.is_some()).count() >= 10);
    assert!(expected.iter().filter(|e| e.is_none()).count() >= 5);

    // The same templates as a list, on a plain service.
    let seen = Routes::default();
    let layer = towerscope::lifecycle::ObserveLayer::with_observer(seen.clone()).routes(templates);
    let svc = layer.layer(service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    }));
    for p in paths {
        let req = Request::get(p).body(Body::empty()).unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    let got = seen.0.lock().unwrap().clone();
    for ((p, e), g) in paths.iter().zip(&expected).zip(&got) {
        assert_eq!(g, e, "path {p}");
    }
    assert_eq!(got.len(), paths.len());
}

#[test]
#[should_panic(expected = "route template")]
fn conflicting_route_templates_are_refused() {
    let _ = towerscope::lifecycle::ObserveLayer::with_observer(())
        .routes(["/users/{id}", "/users/{name}"]);
}

/// The same lifecycle over a real HTTP/2 connection (h2c), where hyper drives bodies
/// differently from HTTP/1: a bodyless or already-ended response is sent with its head and its
/// body never polled, trailers are a frame of their own, and a client that goes away resets one
/// stream (`RST_STREAM`) while the connection lives on.
#[tokio::test]
async fn http2_streams_finish_and_cancel_as_http1_requests_do() {
    let (red, prometheus) = local_red();
    let capture = Capture::default();
    let trailers = || {
        let mut t = HeaderMap::new();
        t.insert("x-checksum", HeaderValue::from_static("5"));
        Body::new(http_body_util::StreamBody::new(futures_iter(vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"chunk"))),
            Ok(Frame::trailers(t)),
        ])))
    };
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/empty", get(|| async {}))
        .route("/nocontent", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "no") }),
        )
        .route("/trailers", get(move || async move { trailers() }))
        .route(
            "/stream",
            get(|| async { Body::new(slow(3, Duration::from_millis(30))) }),
        )
        .route(
            "/forever",
            get(|| async { Body::new(slow(1000, Duration::from_millis(20))) }),
        )
        .route("/hang", get(hang))
        .layer(ObserveLayer::with_observer((red.build(), capture.clone())));
    let addr = serve(app).await;
    let mut h2 = h2_connect(addr).await;
    let request = |method: http::Method, path: &str| empty_request(method, addr, path);
    let nth_end = |n: usize| {
        let capture = capture.clone();
        async move { capture.wait_for(n + 1).await[n] }
    };

    let mut n = 0;
    for (method, path, status, outcome, bytes) in [
        (http::Method::GET, "/ok", 200, Outcome::Success, 2),
        (http::Method::GET, "/empty", 200, Outcome::Success, 0),
        (http::Method::HEAD, "/ok", 200, Outcome::Success, 0),
        (http::Method::GET, "/nocontent", 204, Outcome::Success, 0),
        (
            http::Method::GET,
            "/fail",
            500,
            Outcome::ServerError(ErrorType::Status(StatusCode::INTERNAL_SERVER_ERROR)),
            2,
        ),
        (http::Method::GET, "/stream", 200, Outcome::Success, 15),
    ] {
        let res = h2
            .send_request(request(method.clone(), path))
            .await
            .unwrap();
        assert_eq!(res.version(), http::Version::HTTP_2);
        assert_eq!(res.status(), status, "{method} {path}");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len() as u64, bytes, "{method} {path}");
        let end = nth_end(n).await;
        n += 1;
        assert_eq!(end.outcome, outcome, "{method} {path}");
        assert_eq!(end.status.map(|s| s.as_u16()), Some(status));
        assert_eq!(end.response_bytes, bytes, "{method} {path}");
        if path == "/stream" {
            assert!(
                end.duration >= Duration::from_millis(89),
                "timed to the body's end: {:?}",
                end.duration
            );
        }
    }

    // Trailers end the body: their own HEADERS frame, after the data.
    let res = h2
        .send_request(request(http::Method::GET, "/trailers"))
        .await
        .unwrap();
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(
        collected.trailers().and_then(|t| t.get("x-checksum")),
        Some(&HeaderValue::from_static("5"))
    );
    let end = nth_end(n).await;
    n += 1;
    assert_eq!((end.outcome, end.response_bytes), (Outcome::Success, 5));

    // The client reads one chunk and goes away: the stream is reset, the request cancelled.
    let res = h2
        .send_request(request(http::Method::GET, "/forever"))
        .await
        .unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let end = nth_end(n).await;
    n += 1;
    assert_eq!(end.outcome, Outcome::Cancelled);
    assert_eq!(end.status, Some(StatusCode::OK));
    assert!(end.response_bytes >= 5);

    // The client gives up before the response head.
    let pending = h2.send_request(request(http::Method::GET, "/hang"));
    assert!(tokio::time::timeout(Duration::from_millis(100), pending)
        .await
        .is_err());
    let end = nth_end(n).await;
    n += 1;
    assert_eq!((end.outcome, end.status), (Outcome::Cancelled, None));

    // Both resets left the connection up.
    let res = h2
        .send_request(request(http::Method::GET, "/ok"))
        .await
        .unwrap();
    assert_eq!(collect(res.into_body()).await, "ok");
    assert_eq!(nth_end(n).await.outcome, Outcome::Success);
    assert_eq!(capture.ends().len(), n + 1, "a request ended twice");

    let text = prometheus.render();
    assert_eq!(counted(&text, "GET", "/ok", "200"), Some(2.0), "{text}");
    assert_eq!(counted(&text, "HEAD", "/ok", "200"), Some(1.0), "{text}");
    assert_eq!(counted(&text, "GET", "/empty", "200"), Some(1.0), "{text}");
    assert_eq!(
        counted(&text, "GET", "/nocontent", "204"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("{REQUEST_DURATION}_count"),
            &[
                ("http_request_method", "GET"),
                ("http_route", "/fail"),
                ("http_response_status_code", "500"),
                ("error_type", "500"),
            ],
        ),
        Some(1.0),
        "{text}"
    );
    for route in ["/forever", "/hang"] {
        assert_eq!(
            of_get(&text, CANCELLED_REQUESTS, route),
            Some(1.0),
            "{route}"
        );
    }
    for route in ["/ok", "/empty", "/stream", "/trailers", "/forever", "/hang"] {
        assert_eq!(of_get(&text, ACTIVE_REQUESTS, route), Some(0.0), "{route}");
    }
}

/// A connection upgrade (WebSocket and the like) passes through: the layer keeps the request's
/// upgrade handle and the `101` untouched, the request ends with its head (its duration is the
/// handshake's), and the upgraded connection that lives on is no longer an active request.
#[tokio::test]
async fn upgrades_pass_through_and_end_at_the_101() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (red, prometheus) = local_red();
    let capture = Capture::default();
    let app = Router::new()
        .route(
            "/echo",
            get(|mut req: Request<Body>| async move {
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let mut io = hyper_util::rt::TokioIo::new(upgrade.await.expect("upgraded"));
                    let mut buf = [0u8; 4];
                    io.read_exact(&mut buf).await.unwrap();
                    io.write_all(&buf).await.unwrap();
                });
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header(http::header::CONNECTION, "upgrade")
                    .header(http::header::UPGRADE, "echo")
                    .body(Body::empty())
                    .unwrap()
            }),
        )
        .layer(ObserveLayer::with_observer((red.build(), capture.clone())));
    let addr = serve(app).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::get(format!("http://{addr}/echo"))
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "echo")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(res.headers()[http::header::UPGRADE], "echo");
    let mut io = hyper_util::rt::TokioIo::new(hyper::upgrade::on(res).await.expect("upgrade"));
    io.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut back))
        .await
        .expect("no echo: the upgrade did not reach the handler")
        .unwrap();
    assert_eq!(&back, b"ping", "the upgraded connection works");

    // Ended with the 101, while the upgraded connection is still open.
    let ends = capture.ends();
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0].outcome, Outcome::Success);
    assert_eq!(ends[0].status, Some(StatusCode::SWITCHING_PROTOCOLS));
    let text = prometheus.render();
    assert_eq!(of_get(&text, ACTIVE_REQUESTS, "/echo"), Some(0.0), "{text}");
    assert_eq!(counted(&text, "GET", "/echo", "101"), Some(1.0), "{text}");
    drop(io);
}

/// The example server answers HTTP/2 with prior knowledge (h2c) as well as HTTP/1.1, with
/// every layer of its full stack at work.
#[tokio::test]
async fn the_example_server_speaks_http2() {
    let (_server, addr) = crate::support::start_server("full");
    let mut h2 = h2_connect(addr).await;
    let res = h2
        .send_request(empty_request(http::Method::GET, addr, "/echo/42"))
        .await
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers().contains_key("x-request-id"),
        "the request log's id: {:?}",
        res.headers()
    );
    let body = collect(res.into_body()).await;
    assert!(body.starts_with(b"{\"id\":42"), "{body:?}");
    let (status, text) = crate::support::http(addr, "GET", "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        counted(&text, "GET", "/echo/{id}", "200"),
        Some(1.0),
        "{text}"
    );
}

/// The example server's request records carry the peer's address, kept per connection
/// (`WithPeer`: with `axum::serve` for `red+log`, inside `serve_with_shutdown` for `full`),
/// over HTTP/1 and HTTP/2.
#[tokio::test]
async fn the_example_servers_records_carry_the_peer() {
    for stack in ["red+log", "full"] {
        let (_server, addr, logs) = crate::support::start_server_logs(stack, &[], &[]);
        assert_eq!(crate::support::http(addr, "GET", "/echo/1").0, 200);
        let mut h2 = h2_connect(addr).await;
        let res = h2
            .send_request(empty_request(http::Method::GET, addr, "/echo/2"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while seen.len() < 2 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = logs
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{stack}: records seen: {seen:?}"));
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["target"] == "towerscope::request" {
                seen.push(v);
            }
        }
        for v in &seen {
            assert_eq!(v["client_ip"], "127.0.0.1", "{stack}: {v}");
        }
    }
}

/// Many concurrent HTTP/2 streams on one connection, each completed, reset half-way through its
/// body, or reset before its head, in a seeded random mix: every request ends exactly once, as
/// what it was, and the gauge comes back to zero.
#[tokio::test]
async fn concurrent_http2_streams_each_end_once_as_what_they_were() {
    let (red, prometheus) = local_red();
    let capture = Capture::default();
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/stream",
            get(|| async { Body::new(slow(5, Duration::from_millis(10))) }),
        )
        .route("/hang", get(hang))
        .layer(ObserveLayer::with_observer((red.build(), capture.clone())));
    let addr = serve(app).await;
    let h2 = h2_connect(addr).await;
    let mut rng = fastrand::Rng::with_seed(24);
    let kinds: Vec<u8> = (0..150).map(|_| rng.u8(0..4)).collect();
    let mut tasks = Vec::new();
    for (i, &kind) in kinds.iter().enumerate() {
        let mut h2 = h2.clone();
        let pause = Duration::from_millis(50 + i as u64 % 50);
        tasks.push(tokio::spawn(async move {
            let path = ["/ok", "/stream", "/stream", "/hang"][kind as usize];
            let send = h2.send_request(empty_request(http::Method::GET, addr, path));
            match kind {
                0 | 1 => {
                    let res = send.await.unwrap();
                    res.into_body().collect().await.unwrap();
                }
                2 => {
                    let mut body = send.await.unwrap().into_body();
                    body.frame().await.unwrap().unwrap();
                }
                _ => assert!(tokio::time::timeout(pause, send).await.is_err()),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let count = |k: u8| kinds.iter().filter(|&&x| x == k).count();
    let ends = capture.wait_for(kinds.len()).await;
    assert_eq!(ends.len(), kinds.len(), "every request ends once");
    let cancelled = ends
        .iter()
        .filter(|e| e.outcome == Outcome::Cancelled)
        .count();
    assert_eq!(cancelled, count(2) + count(3));
    assert_eq!(
        ends.iter()
            .filter(|e| e.outcome == Outcome::Success)
            .count(),
        count(0) + count(1)
    );
    assert_eq!(
        ends.iter()
            .filter(|e| e.outcome == Outcome::Cancelled && e.status.is_none())
            .count(),
        count(3),
        "reset before the head: no status"
    );
    let text = prometheus.render();
    let done = |route: &str| counted(&text, "GET", route, "200").unwrap_or(0.0) as usize;
    assert_eq!(
        (done("/ok"), done("/stream")),
        (count(0), count(1)),
        "{text}"
    );
    for (route, n) in [("/stream", count(2)), ("/hang", count(3))] {
        assert_eq!(
            of_get(&text, CANCELLED_REQUESTS, route),
            Some(n as f64),
            "{route}"
        );
    }
    for route in ["/ok", "/stream", "/hang"] {
        assert_eq!(of_get(&text, ACTIVE_REQUESTS, route), Some(0.0), "{route}");
    }
}

/// Pretty logs asked for with `TOWERSCOPE_LOG_FORMAT=pretty` into a pipe (a file, a log
/// collector) are plain text: no terminal color codes.
#[test]
fn pretty_logs_into_a_pipe_have_no_color_codes() {
    use std::io::BufRead;
    let mut child = crate::support::example_server("red+log", &[])
        .env("TOWERSCOPE_LOG_FORMAT", "pretty")
        .env_remove("NO_COLOR")
        .spawn()
        .expect("start the example server");
    let stdout = child.stdout.take().expect("stdout");
    let _server = crate::support::Proc(child);
    let line = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("listening"))
        .expect("the listening line");
    assert!(
        line.contains(" INFO ") && line.contains("addr=127.0.0.1:"),
        "{line:?}"
    );
    assert!(!line.contains('\u{1b}'), "color codes in {line:?}");
}

// ---- every way a request can end, drawn at random ----

/// How the handler answers and how the client treats the answer.
#[derive(Debug, Clone)]
struct Plan {
    status: u16,
    /// Times the handler waits before answering.
    waits: u8,
    chunks: u8,
    /// The body fails instead of sending this chunk.
    fail_at: Option<u8>,
    trailers: bool,
    /// The body waits once before each frame.
    slow_body: bool,
    /// The client polls the response this many times, then drops it if not ready.
    polls: Option<u8>,
    /// The client reads this many frames, then drops the body.
    frames: Option<u8>,
}

proptest::prop_compose! {
    fn plan()(
        status in 200u16..600,
        waits in 0u8..3,
        chunks in 0u8..4,
        fail_at in proptest::option::weighted(0.2, 0u8..4),
        trailers in proptest::bool::ANY,
        slow_body in proptest::bool::ANY,
        // At least one: `oneshot` calls the service on its first poll, so a future never
        // polled is a request no service saw.
        polls in proptest::option::weighted(0.3, 1u8..4),
        frames in proptest::option::weighted(0.3, 0u8..5),
    ) -> Plan {
        Plan { status, waits, chunks, fail_at, trailers, slow_body, polls, frames }
    }
}

/// Pending once (waking itself), then ready.
struct Wait(bool);

impl Future for Wait {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A body sending the plan's chunks, failing or ending with trailers as planned.
struct PlannedBody {
    plan: Plan,
    sent: u8,
    waited: bool,
    done: bool,
}

impl http_body::Body for PlannedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.plan.slow_body && !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.waited = false;
        if self.plan.fail_at == Some(self.sent) {
            self.done = true;
            return Poll::Ready(Some(Err(std::io::Error::other("planned failure"))));
        }
        if self.sent < self.plan.chunks {
            self.sent += 1;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"chunk")))));
        }
        self.done = true;
        if self.plan.trailers {
            return Poll::Ready(Some(Ok(Frame::trailers(HeaderMap::new()))));
        }
        Poll::Ready(None)
    }
}

/// A request ends exactly once whatever the handler answers and whatever the client does:
/// waiting handlers and bodies, failures mid-body, trailers, a response future dropped
/// before it is ready, a body dropped half-read. After each, the active-requests gauge is
/// back at zero; over all, every request is in the duration histogram or the cancelled
/// counter, never both or neither, and has one log record; a body read to its end is the
/// handler's, byte for byte.
#[test]
fn every_request_ends_once_however_it_ends() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let lines = crate::support::Lines::default();
    let (dispatch, log_guard) = towerscope::log::LogConfig::from_env("it")
        .format(towerscope::log::Format::Json)
        .filter("info")
        .dispatch_with_writer(lines.clone())
        .unwrap();
    let default = tracing::dispatcher::set_default(&dispatch);
    let (red, prometheus) = local_red();
    let current = std::sync::Arc::new(std::sync::Mutex::new(None::<Plan>));
    let planned = current.clone();
    let app = Router::new()
        .route(
            "/r",
            get(move || {
                let plan = planned.lock().unwrap().clone().expect("a plan");
                async move {
                    for _ in 0..plan.waits {
                        Wait(false).await;
                    }
                    Response::builder()
                        .status(plan.status)
                        .body(Body::new(PlannedBody {
                            plan,
                            sent: 0,
                            waited: false,
                            done: false,
                        }))
                        .unwrap()
                }
            }),
        )
        .layer(ObserveLayer::with_observer((
            red.build(),
            towerscope::log::RequestLog::builder().build(),
        )));
    let total = |text: &str, name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };

    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let requests = std::cell::Cell::new(0u32);
    let outcome = runner.run(&plan(), |p| {
        *current.lock().unwrap() = Some(p.clone());
        requests.set(requests.get() + 1);
        let ends = |text: &str| {
            total(text, &format!("{REQUEST_DURATION}_count")) + total(text, CANCELLED_REQUESTS)
        };
        let before = ends(&prometheus.render());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let req = Request::get("/r").body(Body::empty()).unwrap();
        let mut fut = Box::pin(app.clone().oneshot(req));
        let mut polls = 0;
        let res = loop {
            if p.polls.is_some_and(|n| polls >= n) {
                break None;
            }
            polls += 1;
            if let Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
                break Some(r.unwrap());
            }
        };
        if let Some(res) = res {
            prop_assert_eq!(res.status().as_u16(), p.status);
            let mut body = res.into_body();
            let (mut frames, mut data, mut failed, mut ended) = (0u8, 0usize, false, false);
            while p.frames.is_none_or(|n| frames < n) {
                match http_body::Body::poll_frame(Pin::new(&mut body), &mut cx) {
                    Poll::Pending => continue,
                    Poll::Ready(None) => {
                        ended = true;
                        break;
                    }
                    Poll::Ready(Some(Err(_))) => {
                        failed = true;
                        break;
                    }
                    Poll::Ready(Some(Ok(f))) => {
                        frames += 1;
                        data += f.data_ref().map_or(0, |d| d.len());
                    }
                }
            }
            if ended {
                let chunks = p.fail_at.map_or(p.chunks, |f| f.min(p.chunks));
                prop_assert!(!failed);
                prop_assert_eq!(data, 5 * usize::from(chunks), "{:?}", p);
            }
        }
        drop(fut);
        let text = prometheus.render();
        prop_assert_eq!(total(&text, ACTIVE_REQUESTS), 0.0, "{:?}\n{}", p, text);
        prop_assert_eq!(ends(&text) - before, 1.0, "{:?}\n{}", p, text);
        Ok::<(), TestCaseError>(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    drop(default);
    drop(log_guard);
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let records = text
        .lines()
        .filter(|l| l.contains("\"target\":\"towerscope::request\""))
        .count();
    assert_eq!(records, requests.get() as usize, "{text}");
}
