//! Request log tests: every line captured and parsed as JSON.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tracing::Instrument;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use super::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = CaptureWriter;
    fn make_writer(&'a self) -> CaptureWriter {
        CaptureWriter(self.0.clone())
    }
}

impl Capture {
    /// Every line, parsed; panics on a line that is not exactly one JSON object.
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).expect("UTF-8 output");
        text.lines()
            .map(|l| {
                let v: Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
                assert!(v.is_object(), "{l}");
                v
            })
            .collect()
    }

    fn requests(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|v| v["target"] == REQUEST_TARGET)
            .collect()
    }

    /// The first request record's line as written (its members in their order).
    fn first_request_line(&self) -> String {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .find(|l| l.contains(&format!("\"target\":\"{REQUEST_TARGET}\"")))
            .expect("a request record")
            .to_owned()
    }
}

/// The subscriber `LogConfig::init` installs: the request span made only when asked for.
fn subscriber(
    capture: &Capture,
    layer: JsonLayer<Capture>,
) -> impl tracing::Subscriber + Send + Sync {
    let sampling = layer.sampling_settings();
    super::scope::Deferring::new(eager_subscriber(capture, layer), sampling)
}

/// A hand-assembled subscriber: the request span made up front.
fn eager_subscriber(
    capture: &Capture,
    layer: JsonLayer<Capture>,
) -> impl tracing::Subscriber + Send + Sync {
    let _ = capture;
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::TRACE)
        .with(layer)
}

fn app(layer: RequestLogLayer) -> Router {
    Router::new()
        .route(
            "/ok",
            get(|| async {
                tracing::info!(step = 1, "inside handler");
                "ok"
            }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route("/metrics", get(|| async { "m" }))
        .route(
            "/ctx/{tenant}",
            get(
                |axum::extract::Path(t): axum::extract::Path<String>| async move {
                    tracing::info!("before");
                    assert!(add_context("tenant", &t));
                    tokio::task::yield_now().await;
                    tracing::info!("after");
                    assert!(current_request_id().is_some());
                    // A span made in the request has the request's span as its parent: work
                    // that carries it elsewhere has the request's context.
                    let child = tracing::info_span!("work");
                    tokio::spawn(async { tracing::info!("in child") }.instrument(child))
                        .await
                        .unwrap();
                    tokio::spawn(
                        async { tracing::info!("spawned") }.instrument(tracing::Span::current()),
                    )
                    .await
                    .unwrap();
                    t
                },
            ),
        )
        .route("/id", get(|id: RequestId| async move { id.to_string() }))
        .layer(layer)
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// The record's message comes first among its fields, as `tracing`'s macros order an event's
/// (the pretty format writes it before the fields, as for any other event), whether the
/// request span is made up front or not.
#[tokio::test(flavor = "current_thread")]
async fn the_message_leads_the_records_fields() {
    let order = |line: &str| {
        let at = |k: &str| {
            line.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("no {k}: {line}"))
        };
        assert!(
            at("service") < at("message") && at("message") < at("method"),
            "{line}"
        );
    };
    let capture = Capture::default();
    {
        let layer = JsonLayer::new("shop", capture.clone());
        let _g = tracing::subscriber::set_default(subscriber(&capture, layer));
        send(&app(RequestLogLayer::new()), get_req("/ok")).await;
    }
    order(&capture.first_request_line());
    let capture = Capture::default();
    {
        let layer = JsonLayer::new("shop", capture.clone());
        let _g = tracing::subscriber::set_default(eager_subscriber(&capture, layer));
        send(&app(RequestLogLayer::new()), get_req("/ok")).await;
    }
    order(&capture.first_request_line());
}

#[tokio::test(flavor = "current_thread")]
async fn one_record_per_request_with_fields_and_levels() {
    let capture = Capture::default();
    let _g = tracing::subscriber::set_default(subscriber(
        &capture,
        JsonLayer::new("shop", capture.clone()),
    ));
    let app = app(RequestLogLayer::new());
    let req = Request::get("/ok?x=1")
        .header("user-agent", "probe/1.0")
        .header("content-length", "0")
        .body(Body::empty())
        .unwrap();
    send(&app, req).await;
    send(&app, get_req("/missing")).await;
    send(&app, get_req("/fail")).await;
    send(&app, get_req("/metrics")).await;
    send(&app, get_req("/nowhere")).await;
    let records = capture.requests();
    assert_eq!(
        records.len(),
        4,
        "one per request, /metrics excluded: {records:#?}"
    );
    let ok = &records[0];
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["service"], "shop");
    assert_eq!(ok["message"], "request finished");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["route"], "/ok");
    assert_eq!(ok["path"], "/ok", "no query by default");
    assert!(ok.get("query").is_none());
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["outcome"], "success");
    assert_eq!(ok["user_agent"], "probe/1.0");
    assert_eq!(ok["request_bytes"], 0);
    assert_eq!(ok["response_bytes"], 2);
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(ok["request_id"].as_str().unwrap().len(), 36);
    let ts = ok["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), "2026-11-25T09:46:40.123456Z".len(), "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.');
    assert_eq!(
        (records[1]["level"].as_str(), records[1]["outcome"].as_str()),
        (Some("WARN"), Some("client_error"))
    );
    assert_eq!(
        (records[2]["level"].as_str(), records[2]["outcome"].as_str()),
        (Some("ERROR"), Some("server_error"))
    );
    assert_eq!(records[2]["error_type"], "500");
    assert!(records[3].get("route").is_none(), "unmatched: no route");
    assert_eq!(records[3]["path"], "/nowhere");
    // The handler's own line carries the request's context.
    let inside = capture
        .lines()
        .into_iter()
        .find(|l| l["message"] == "inside handler")
        .unwrap();
    assert_eq!(inside["request_id"], ok["request_id"]);
    assert_eq!(inside["route"], "/ok");
    assert_eq!(inside["step"], 1);
}

/// A request body of unknown length, as a chunked upload arrives: `map_frame` hides the exact
/// size hint.
fn unknown_length(text: &'static str) -> Body {
    Body::new(
        http_body_util::Full::new(bytes::Bytes::from_static(text.as_bytes())).map_frame(|f| f),
    )
}

#[tokio::test(flavor = "current_thread")]
async fn request_bytes_declared_or_counted_as_read() {
    let capture = Capture::default();
    let _g = tracing::subscriber::set_default(subscriber(
        &capture,
        JsonLayer::new("shop", capture.clone()),
    ));
    let app = Router::new()
        .route(
            "/upload",
            axum::routing::post(|body: String| async move { body.len().to_string() }),
        )
        .route("/ignore", axum::routing::post(|| async { "ignored" }))
        .layer(RequestLogLayer::new());
    // Chunked: the bytes the handler read.
    let chunked = Request::post("/upload")
        .body(unknown_length("{\"name\":\"ada\"}"))
        .unwrap();
    let (_, _, answer) = send(&app, chunked).await;
    assert_eq!(answer, "14");
    // Declared: `Content-Length`, 0 included.
    let declared = Request::post("/upload")
        .header("content-length", "5")
        .body(Body::from("hello"))
        .unwrap();
    send(&app, declared).await;
    let empty = Request::post("/upload")
        .header("content-length", "0")
        .body(Body::empty())
        .unwrap();
    send(&app, empty).await;
    // No body: no size. A chunked body the handler never read: nothing counted, no size.
    send(&app, Request::post("/upload").body(Body::empty()).unwrap()).await;
    let unread = Request::post("/ignore")
        .body(unknown_length("xyz"))
        .unwrap();
    send(&app, unread).await;
    let sizes: Vec<_> = capture
        .requests()
        .iter()
        .map(|r| r.get("request_bytes").and_then(Value::as_u64))
        .collect();
    assert_eq!(sizes, [Some(14), Some(5), Some(0), None, None]);
}

#[tokio::test(flavor = "current_thread")]
async fn levels_per_outcome_under_a_filter() {
    // Successes at DEBUG under an INFO filter: no record for them, the records after them
    // carry only their own fields, failures keep their levels.
    let capture = Capture::default();
    let _g = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(JsonLayer::new("shop", capture.clone())),
    );
    let layer = RequestLog::builder()
        .levels(
            tracing::Level::DEBUG,
            tracing::Level::INFO,
            tracing::Level::ERROR,
            tracing::Level::WARN,
        )
        .layer();
    let svc = app(layer);
    let ua = |uri: &str, agent: &str| {
        Request::get(uri)
            .header("user-agent", agent)
            .body(Body::empty())
            .unwrap()
    };
    send(&svc, ua("/ok", "first/1")).await;
    send(&svc, ua("/missing", "second/2")).await;
    send(&svc, ua("/ok", "third/3")).await;
    send(&svc, ua("/fail", "fourth/4")).await;
    let records = capture.requests();
    let seen: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r["level"].as_str().unwrap(),
                r["path"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
                r["user_agent"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("INFO", "/missing", 404, "second/2"),
            ("ERROR", "/fail", 500, "fourth/4"),
        ],
        "{records:#?}"
    );
    // The handler's own INFO lines of the unlogged successes still carry their context.
    let inside: Vec<_> = capture
        .lines()
        .into_iter()
        .filter(|l| l["message"] == "inside handler")
        .collect();
    assert_eq!(inside.len(), 2);
    for line in &inside {
        assert_eq!(line["route"], "/ok", "{line}");
        assert_eq!(
            line["request_id"].as_str().map(str::len),
            Some(36),
            "{line}"
        );
    }
    assert_ne!(inside[0]["request_id"], inside[1]["request_id"]);

    // A slow success is logged at WARN whatever its level.
    let slow = RequestLog::builder()
        .success_level(tracing::Level::DEBUG)
        .slow_threshold(Some(Duration::ZERO))
        .layer();
    send(&app(slow), ua("/ok", "fifth/5")).await;
    let last = capture.requests().pop().unwrap();
    assert_eq!(
        (last["level"].as_str(), last["slow"].as_bool()),
        (Some("WARN"), Some(true))
    );
    assert_eq!(last["user_agent"], "fifth/5");
}

#[tokio::test(flavor = "current_thread")]
async fn context_reaches_later_lines_spawned_work_and_never_leaks() {
    context_in_every_line(true).await;
}

/// The same under a hand-assembled subscriber (the request span made up front).
#[tokio::test(flavor = "current_thread")]
async fn context_reaches_every_line_with_the_span_made_up_front() {
    context_in_every_line(false).await;
}

async fn context_in_every_line(deferred: bool) {
    let capture = Capture::default();
    let layer = JsonLayer::new("shop", capture.clone());
    let dispatch: tracing::Dispatch = if deferred {
        subscriber(&capture, layer).into()
    } else {
        eager_subscriber(&capture, layer).into()
    };
    let _g = tracing::dispatcher::set_default(&dispatch);
    let app = app(RequestLogLayer::new());
    // Concurrent requests interleaved on one thread.
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { send(&app, get_req(&format!("/ctx/t{i}"))).await })
        })
        .collect();
    for c in calls {
        c.await.unwrap();
    }
    let lines = capture.lines();
    let mut by_request: std::collections::HashMap<String, String> = Default::default();
    for l in &lines {
        if l["target"] == REQUEST_TARGET {
            by_request.insert(
                l["request_id"].as_str().unwrap().into(),
                l["tenant"].as_str().unwrap().into(),
            );
        }
    }
    assert_eq!(by_request.len(), 50);
    let mut counted = 0;
    for l in &lines {
        let id = l["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("every line has a request id: {l}"));
        let tenant = &by_request[id];
        match l["message"].as_str().unwrap() {
            "before" => assert!(l.get("tenant").is_none(), "context before it was added"),
            "after" | "in child" | "spawned" | "request finished" => {
                assert_eq!(l["tenant"].as_str(), Some(tenant.as_str()), "leaked: {l}");
                counted += 1;
            }
            other => panic!("unexpected line {other}"),
        }
    }
    assert_eq!(counted, 200);
}

#[tokio::test(flavor = "current_thread")]
async fn request_ids_are_kept_when_valid_and_replaced_otherwise() {
    let capture = Capture::default();
    let _g = tracing::subscriber::set_default(subscriber(
        &capture,
        JsonLayer::new("s", capture.clone()),
    ));
    let app = app(RequestLogLayer::new());
    let req = Request::get("/id")
        .header("x-request-id", "abc-123:x/y")
        .body(Body::empty())
        .unwrap();
    let (_, headers, body) = send(&app, req).await;
    assert_eq!(headers["x-request-id"], "abc-123:x/y");
    assert_eq!(body, "abc-123:x/y", "the extractor sees the same id");
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    for bad in ["has space", "quote\"x", &"y".repeat(129), "{json}"] {
        let req = Request::get("/id")
            .header("x-request-id", bad)
            .body(Body::empty())
            .unwrap();
        let before = unix_ms();
        let (_, headers, body) = send(&app, req).await;
        let after = unix_ms();
        let id = headers["x-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 36, "replaced by a UUID");
        assert_eq!(body, id);
        // A UUID v7 of the request's start: its first 48 bits are the Unix milliseconds, to
        // the millisecond the lifecycle's clock promises. Later by up to a second: the
        // process-wide counter runs ahead of the clock while other tests make over 4096 ids
        // in a millisecond.
        let ms = u64::from_str_radix(&id[..8], 16).unwrap() << 16
            | u64::from_str_radix(&id[9..13], 16).unwrap();
        assert!(
            ms + 1 >= before && ms <= after + 1000,
            "{before} {ms} {after}"
        );
    }
    let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    for raw in ["has space", "quote", "{json}", "yyyyyyyy"] {
        assert!(!out.contains(raw), "an invalid id was logged raw: {raw}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn secrets_are_redacted() {
    let capture = Capture::default();
    let _g = tracing::subscriber::set_default(subscriber(
        &capture,
        JsonLayer::new("s", capture.clone()),
    ));
    let layer = RequestLog::builder()
        .log_query(true)
        .log_headers(true)
        .redact_header(http::HeaderName::from_static("x-api-key"))
        .layer();
    let app = app(layer);
    let req = Request::get("/ok?page=2&token=t0psecret&Password=hunter2")
        .header("authorization", "Bearer abc.def")
        .header("cookie", "session=s3cr3t")
        .header("proxy-authorization", "Basic zzz")
        .header("x-api-key", "k3y")
        .header("accept", "text/plain")
        .body(Body::empty())
        .unwrap();
    send(&app, req).await;
    let r = &capture.requests()[0];
    assert_eq!(r["query"], "page=2&token=REDACTED&Password=REDACTED");
    let headers = r["headers"].as_str().unwrap();
    assert!(headers.contains("accept: text/plain"), "{headers}");
    let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    for secret in [
        "t0psecret",
        "hunter2",
        "abc.def",
        "s3cr3t",
        "zzz",
        "k3y",
        "authorization",
        "cookie",
    ] {
        assert!(!out.contains(secret), "{secret} was logged");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn sampling_follows_the_request_and_keeps_warnings() {
    let capture = Capture::default();
    let layer = JsonLayer::new("s", capture.clone())
        .sampling(Sampling {
            probability: 0.25,
            seed: 42,
        })
        .rate_limit(None);
    let _g = tracing::subscriber::set_default(subscriber(&capture, layer));
    let app = app(RequestLogLayer::new());
    let n = 4000;
    for i in 0..n {
        let req = Request::get("/ok")
            .header("x-request-id", format!("req-{i}"))
            .body(Body::empty())
            .unwrap();
        send(&app, req).await;
    }
    for i in 0..100 {
        let req = Request::get("/missing")
            .header("x-request-id", format!("miss-{i}"))
            .body(Body::empty())
            .unwrap();
        send(&app, req).await;
    }
    let lines = capture.lines();
    let kept: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "request finished" && l["status"] == 200)
        .collect();
    let ratio = kept.len() as f64 / n as f64;
    // Binomial(4000, 0.25): sd 0.0068; the bounds are > 4 sd away.
    assert!((0.22..=0.28).contains(&ratio), "kept {ratio}");
    // A sampled request keeps all its lines: each kept record has its handler line.
    let inside: std::collections::HashSet<_> = lines
        .iter()
        .filter(|l| l["message"] == "inside handler")
        .map(|l| l["request_id"].clone())
        .collect();
    assert_eq!(inside.len(), kept.len());
    assert!(kept.iter().all(|k| inside.contains(&k["request_id"])));
    // WARN passes sampling.
    assert_eq!(lines.iter().filter(|l| l["status"] == 404).count(), 100);
}

#[test]
fn sampling_from_a_trace_id_matches_the_ratio_sampler() {
    // Lower 64 bits of the trace id against p x 2^64: ids below the line are kept.
    assert!(json::sampled(
        "0af7651916cd43dd8448eb211c80319c".get(..).unwrap(),
        true,
        1.0,
        0
    ));
    assert!(json::sampled(
        "00000000000000000000000000000001",
        true,
        0.01,
        0
    ));
    assert!(!json::sampled(
        "0000000000000000ffffffffffffffff",
        true,
        0.99,
        0
    ));
    assert!(json::sampled(
        "00000000000000003fffffffffffffff",
        true,
        0.26,
        0
    ));
    assert!(!json::sampled(
        "00000000000000004fffffffffffffff",
        true,
        0.26,
        0
    ));
}

/// Collects the request record's fields as any other subscriber sees them.
#[derive(Clone, Default)]
struct EventFields(Arc<Mutex<Vec<serde_json::Map<String, Value>>>>);

struct Fields<'a>(&'a mut serde_json::Map<String, Value>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_i64(&mut self, f: &tracing::field::Field, v: i64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_f64(&mut self, f: &tracing::field::Field, v: f64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_bool(&mut self, f: &tracing::field::Field, v: bool) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        self.0.insert(f.name().into(), format!("{v:?}").into());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventFields {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == REQUEST_TARGET {
            let mut map = serde_json::Map::new();
            event.record(&mut Fields(&mut map));
            self.0.lock().unwrap().push(map);
        }
    }
}

/// The JSON layer writes the request record from what the request log hands it, not from the
/// event's fields: both must say the same, field for field, whatever the
/// options and outcome.
#[tokio::test(flavor = "current_thread")]
async fn the_written_record_has_exactly_the_events_fields() {
    let capture = Capture::default();
    let fields = EventFields::default();
    let _g = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::TRACE)
            .with(JsonLayer::new("shop", capture.clone()).rate_limit(None))
            .with(fields.clone()),
    );
    let app = app(RequestLog::builder()
        .log_query(true)
        .log_headers(true)
        .slow_threshold(Some(Duration::ZERO))
        .layer());
    let req = Request::get("/ok?token=s3cret&page=2")
        .header(
            "user-agent",
            http::HeaderValue::from_bytes(b"probe \"1.0\" \xe9").unwrap(),
        )
        .header("content-length", "0")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Body::empty())
        .unwrap();
    send(&app, req).await;
    send(&app, get_req("/fail")).await;
    send(&app, get_req("/missing")).await;
    send(&app, get_req("/nowhere")).await;
    let records = capture.requests();
    let events = fields.0.lock().unwrap().clone();
    assert_eq!(records.len(), 4);
    assert_eq!(events.len(), 4);
    let context = [
        "timestamp",
        "level",
        "target",
        "service",
        "request_id",
        "route",
    ];
    for (record, event) in records.iter().zip(&events) {
        let written: Vec<(&String, &Value)> = record
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| !context.contains(&k.as_str()))
            .collect();
        let seen: Vec<(&String, &Value)> = event.iter().collect();
        assert_eq!(written, seen);
    }
    assert_eq!(records[0]["slow"], true);
    assert_eq!(records[0]["query"], "token=REDACTED&page=2");
    assert_eq!(records[1]["error_type"], "500");
}

/// The per-call-site limit (default 100 per minute) is for log floods, not for the access
/// log: every request keeps its record, while a handler line at one call site is limited.
#[tokio::test(flavor = "current_thread")]
async fn request_records_are_not_rate_limited() {
    let capture = Capture::default();
    let _g = tracing::subscriber::set_default(subscriber(
        &capture,
        JsonLayer::new("shop", capture.clone()).rate_limit(Some(RateLimit::default())),
    ));
    let app = app(RequestLogLayer::new());
    for _ in 0..150 {
        send(&app, get_req("/ok")).await;
    }
    assert_eq!(capture.requests().len(), 150, "one record per request");
    let handler_lines = capture
        .lines()
        .into_iter()
        .filter(|l| l["message"] == "inside handler")
        .count();
    assert_eq!(handler_lines, 100, "the handler's call site is limited");
}

#[test]
fn rate_limit_suppresses_exactly_and_summarises() {
    let (capture, prometheus, layer, dispatch) = rate_limited(5, Duration::from_millis(200));
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..12 {
            tracing::error!(i, "same call site");
        }
        tracing::info!("another call site");
    });
    let lines = capture.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["message"] == "same call site")
            .count(),
        5
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["message"] == "another call site")
            .count(),
        1
    );
    layer.flush_suppressed();
    assert!(
        capture
            .lines()
            .iter()
            .all(|l| l.get("suppressed").is_none()),
        "window still open"
    );
    std::thread::sleep(Duration::from_millis(250));
    layer.flush_suppressed();
    let summaries: Vec<_> = capture
        .lines()
        .into_iter()
        .filter(|l| l.get("suppressed").is_some())
        .collect();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0]["suppressed"], 7);
    assert_eq!(summaries[0]["level"], "ERROR");
    assert!(summaries[0]["callsite"]
        .as_str()
        .unwrap()
        .contains("tests.rs"));
    let text = prometheus.render();
    assert!(
        text.contains("log_records_suppressed_total{reason=\"rate_limited\"} 7"),
        "{text}"
    );
    layer.flush_suppressed();
    assert_eq!(
        capture
            .lines()
            .iter()
            .filter(|l| l.get("suppressed").is_some())
            .count(),
        1,
        "one summary per window"
    );
}

/// Threads logging at one call site at once share its window: exactly `max` records are
/// written, and every other one is counted as suppressed, in the metric and in the summary.
#[test]
fn rate_limit_is_exact_across_threads() {
    const THREADS: usize = 4;
    const EACH: usize = 500;
    let (capture, prometheus, layer, dispatch) = rate_limited(300, Duration::from_secs(1));
    fn one_site(i: usize) {
        tracing::warn!(i, "one call site, many threads");
    }
    let start = std::sync::Barrier::new(THREADS);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                tracing::dispatcher::with_default(&dispatch, || {
                    start.wait();
                    for i in 0..EACH {
                        one_site(i);
                    }
                })
            });
        }
    });
    let written = capture
        .lines()
        .iter()
        .filter(|l| l["message"] == "one call site, many threads")
        .count();
    // All within one window: the threads take far less than a second.
    assert_eq!(written, 300);
    std::thread::sleep(Duration::from_millis(1050));
    layer.flush_suppressed();
    let suppressed: u64 = capture
        .lines()
        .iter()
        .filter_map(|l| l.get("suppressed").and_then(Value::as_u64))
        .sum();
    assert_eq!(written as u64 + suppressed, (THREADS * EACH) as u64);
    let text = prometheus.render();
    assert!(
        text.contains(&format!(
            "log_records_suppressed_total{{reason=\"rate_limited\"}} {suppressed}"
        )),
        "{text}"
    );
}

/// A JSON layer capturing its lines, rate limited to `max` records per `window` and with its
/// metrics in a recorder of its own; and a subscriber over it that passes every level.
fn rate_limited(
    max: u32,
    window: Duration,
) -> (
    Capture,
    crate::metrics::Prometheus,
    Arc<JsonLayer<Capture>>,
    tracing::Dispatch,
) {
    let capture = Capture::default();
    let (recorder, prometheus) = crate::metrics::Prometheus::builder().build();
    let layer = Arc::new(metrics::with_local_recorder(&recorder, || {
        JsonLayer::new("s", capture.clone()).rate_limit(Some(RateLimit { max, window }))
    }));
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::TRACE)
            .with(init_shared(layer.clone())),
    );
    (capture, prometheus, layer, dispatch)
}

fn init_shared<S>(l: Arc<JsonLayer<Capture>>) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    init::shared(l)
}

/// A writer stalled for good, like a stdout nobody reads.
struct Stalled;

impl Write for Stalled {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_secs(3600));
        Ok(0)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_stalled_writer_drops_and_counts_instead_of_stalling_requests() {
    let (recorder, prometheus) = crate::metrics::Prometheus::builder().build();
    let (writer, guard) =
        metrics::with_local_recorder(&recorder, || NonBlocking::new(Stalled, 4096, true));
    let _g = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(JsonLayer::new("s", writer.clone()).rate_limit(None)),
    );
    let app = app(RequestLogLayer::new());
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        for _ in 0..500 {
            assert_eq!(send(&app, get_req("/ok")).await.0, StatusCode::OK);
        }
    })
    .await;
    assert!(done.is_ok(), "requests stalled behind the log writer");
    // 1000 lines (handler line + record per request) of ~300 bytes: at most what 2 x 4 KiB
    // (the buffer, and the batch stuck in the stalled write) hold got through.
    let dropped = writer.dropped();
    assert!(dropped >= 960, "dropped {dropped}");
    let text = prometheus.render();
    let metric =
        crate::metrics::unlabeled_sample(&text, "log_records_dropped_total").expect("the metric");
    assert_eq!(metric as u64, dropped, "every drop is counted");
    let started = std::time::Instant::now();
    drop(guard);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the guard hung on a stalled output"
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

        /// The word-at-a-time escaper against serde_json's reading: the same string back, on
        /// one line, with U+2028/U+2029 and DEL escaped; strings are drawn dense in the bytes
        /// it must find (controls, quotes, backslashes, DEL, the U+2028 lead byte) at every
        /// offset of a word.
        #[test]
        fn the_escaper_round_trips_any_string(
            s in proptest::collection::vec(
                prop_oneof![
                    Just('"'), Just('\\'), Just('\n'), Just('\u{1}'), Just('\u{7f}'),
                    Just('\u{2028}'), Just('\u{2029}'), Just('\u{2030}'), Just('a'), Just('é'),
                    any::<char>(),
                ],
                0..40,
            ).prop_map(|cs| cs.into_iter().collect::<String>()),
        ) {
            let mut out = String::new();
            write_json_str(&mut out, &s);
            let back: String = serde_json::from_str(&out).map_err(|e| TestCaseError::fail(format!("{e}: {out:?}")))?;
            prop_assert_eq!(&back, &s);
            prop_assert!(!out.chars().any(|c| c < ' ' || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}'), "{:?}", out);
        }

        #[test]
        fn any_header_bytes_and_field_values_give_one_json_object_per_line(
            ua in proptest::collection::vec(any::<u8>(), 0..64),
            value in any::<String>(),
            path_tail in "[a-zA-Z0-9%._~-]{0,20}",
        ) {
            let capture = Capture::default();
            let sub = subscriber(&capture, JsonLayer::new("s\n\"x", capture.clone()).rate_limit(None));
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            tracing::subscriber::with_default(sub, || {
                rt.block_on(async {
                    let app = app(RequestLogLayer::new());
                    let mut req = Request::get(format!("/nowhere/{path_tail}"));
                    if let Ok(v) = http::HeaderValue::from_bytes(&ua) {
                        req = req.header("user-agent", v);
                    }
                    send(&app, req.body(Body::empty()).unwrap()).await;
                    tracing::info!(field = %value, debug = ?value, "{}", value);
                });
            });
            let bytes = capture.0.lock().unwrap().clone();
            let text = String::from_utf8(bytes).expect("valid UTF-8");
            let lines: Vec<_> = text.split_terminator('\n').collect();
            prop_assert_eq!(lines.len(), 2);
            for l in lines {
                let v: Value = serde_json::from_str(l).map_err(|e| TestCaseError::fail(format!("{e}: {l:?}")))?;
                prop_assert!(v.is_object());
            }
            let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
            prop_assert_eq!(last["field"].as_str(), Some(value.as_str()));
            prop_assert_eq!(last["message"].as_str(), Some(value.as_str()));
        }
    }
}

/// Counts the request spans made.
#[derive(Clone, Default)]
struct RequestSpans(Arc<std::sync::atomic::AtomicUsize>);

impl RequestSpans {
    fn made(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RequestSpans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == REQUEST_SPAN {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Under `LogConfig`'s subscriber a request that never asks for its span has none (what the
/// deferral saves), and its lines still carry its context; one that asks gets exactly one. A
/// hand-assembled subscriber makes it up front.
#[tokio::test(flavor = "current_thread")]
async fn a_request_gets_its_span_only_when_something_asks_for_it() {
    let capture = Capture::default();
    let spans = RequestSpans::default();
    let layer = JsonLayer::new("s", capture.clone());
    let sampling = layer.sampling_settings();
    let deferring = super::scope::Deferring::new(
        tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::TRACE)
            .with(layer)
            .with(spans.clone()),
        sampling,
    );
    {
        let _g = tracing::subscriber::set_default(deferring);
        let app = app(RequestLogLayer::new());
        send(&app, get_req("/ok")).await;
        assert_eq!(spans.made(), 0, "a handler that only logs");
        let lines = capture.lines();
        let record = &capture.requests()[0];
        let inside = lines
            .iter()
            .find(|l| l["message"] == "inside handler")
            .expect("the handler's line");
        assert!(record["request_id"].is_string());
        assert_eq!(inside["request_id"], record["request_id"]);
        assert_eq!(inside["route"], "/ok");
        // Spawned work that carries the request's span, a child span: asked for, made once.
        send(&app, get_req("/ctx/acme")).await;
        assert_eq!(spans.made(), 1);
    }
    let eager = RequestSpans::default();
    let _g = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(JsonLayer::new("s", capture.clone()))
            .with(eager.clone()),
    );
    send(&app(RequestLogLayer::new()), get_req("/ok")).await;
    assert_eq!(eager.made(), 1, "made up front");
}

/// A `RUST_LOG` span directive naming the request span works through `LogConfig`: the span is
/// made up front there, on the callsite the filter registered, and the handler's INFO line
/// passes a WARN default because it runs inside it.
#[tokio::test(flavor = "current_thread")]
async fn a_span_directive_on_the_request_span_enables_the_handlers_lines() {
    let capture = Capture::default();
    let (dispatch, guard) = LogConfig::from_env("s")
        .format(Format::Json)
        .filter("warn,[request]=info")
        .rate_limit(None)
        .dispatch_with_writer(capture.make_writer())
        .unwrap();
    {
        let _g = tracing::dispatcher::set_default(&dispatch);
        send(&app(RequestLogLayer::new()), get_req("/ok")).await;
        tracing::info!("outside any request");
    }
    drop(guard);
    let lines = capture.lines();
    let inside = lines
        .iter()
        .find(|l| l["message"] == "inside handler")
        .unwrap_or_else(|| panic!("the handler's line, in {lines:?}"));
    assert_eq!(inside["route"], "/ok");
    assert!(lines.iter().all(|l| l["message"] != "outside any request"));
}

/// Routes the `log` crate's records to the current `tracing` subscriber, as `LogConfig::init`
/// does (once per process).
fn bridge_log() {
    static BRIDGE: std::sync::Once = std::sync::Once::new();
    BRIDGE.call_once(|| {
        tracing_log::LogTracer::init().expect("no other `log` logger in the unit tests");
    });
}

/// A `log` record is written with its own target and without the bridge's `log.*` fields,
/// carries the request's context, and is rate limited at its own call site: the bridge makes
/// one `tracing` call site per level for every `log` record, which must not put all of them
/// under one limit.
#[tokio::test(flavor = "current_thread")]
async fn log_crate_records_keep_their_target_context_and_call_site() {
    bridge_log();
    let capture = Capture::default();
    let _g = tracing::subscriber::set_default(subscriber(
        &capture,
        JsonLayer::new("s", capture.clone()).rate_limit(Some(RateLimit {
            max: 2,
            window: Duration::from_secs(60),
        })),
    ));
    for i in 0..5 {
        tracing_log::log::info!(target: "somelib::pool", "site one {i}");
        tracing_log::log::info!(target: "otherlib", "site two");
    }
    let app = Router::new()
        .route(
            "/db",
            get(|| async {
                tracing_log::log::warn!(target: "somelib::db", "from log");
                "ok"
            }),
        )
        .layer(RequestLogLayer::new());
    send(&app, get_req("/db")).await;

    let lines = capture.lines();
    for line in &lines {
        let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
        assert!(keys.iter().all(|k| !k.starts_with("log.")), "{line}");
        assert_eq!(line["service"], "s");
    }
    let with = |prefix: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["message"].as_str().unwrap_or("").starts_with(prefix))
            .collect()
    };
    let one = with("site one");
    assert_eq!(one.len(), 2, "the limit of its own call site");
    assert_eq!(one[0]["message"], "site one 0");
    assert_eq!(one[0]["target"], "somelib::pool");
    assert_eq!(one[0]["level"], "INFO");
    let two = with("site two");
    assert_eq!(
        two.len(),
        2,
        "another call site at the same level has its own limit"
    );
    assert_eq!(two[0]["target"], "otherlib");

    let in_request = with("from log");
    assert_eq!(in_request.len(), 1);
    assert_eq!(in_request[0]["target"], "somelib::db");
    assert_eq!(in_request[0]["level"], "WARN");
    assert_eq!(in_request[0]["route"], "/db");
    let record = capture.requests();
    assert_eq!(record.len(), 1);
    assert_eq!(in_request[0]["request_id"], record[0]["request_id"]);
}

/// `LogConfig::init_with_writer` routes the `log` crate's records to its output. Run in a
/// child process (this test's binary again, for this test alone): it installs process-wide
/// loggers.
#[test]
fn init_routes_log_crate_records_to_the_output() {
    const CHILD: &str = "TOWERSCOPE_LOG_INIT_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let guard = LogConfig::from_env("child")
            .format(Format::Json)
            .filter("info,quietlib=error")
            .init_with_writer(std::io::stdout())
            .expect("the child's subscriber");
        tracing_log::log::warn!(target: "somelib", "bridged {}", 42);
        tracing_log::log::info!(target: "quietlib", "filtered out by target");
        tracing_log::log::debug!(target: "somelib", "below the level");
        drop(guard);
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "log::tests::init_routes_log_crate_records_to_the_output",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness's own lines share stdout ("test ... " may start the same line).
    let records: Vec<Value> = stdout
        .lines()
        .filter_map(|l| l.find("{\"timestamp\"").map(|i| &l[i..]))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(records.len(), 1, "{stdout}");
    assert_eq!(records[0]["target"], "somelib");
    assert_eq!(records[0]["message"], "bridged 42");
    assert_eq!(records[0]["level"], "WARN");
    assert_eq!(records[0]["service"], "child");
}

/// `client_ip`: the peer address; a hop of `Forwarded` or `X-Forwarded-For` only when the
/// proxies are declared trusted (all of them: the first hop; the nearest one: the hop it
/// appended, the last), and the peer again when that hop is not an address.
#[tokio::test(flavor = "current_thread")]
async fn client_ip_is_the_peer_unless_proxies_are_trusted() {
    use crate::lifecycle::ProxyHeader;
    use axum::extract::ConnectInfo;
    use std::net::SocketAddr;
    let peer: SocketAddr = "192.0.2.1:50000".parse().unwrap();
    let req = |headers: &[(&str, &str)], with_peer: bool| {
        let mut b = Request::get("/ok?session=abc&page=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if with_peer {
            b = b.extension(ConnectInfo(peer));
        }
        b.body(Body::empty()).unwrap()
    };
    let cases: [(&[(&str, &str)], bool); 5] = [
        (&[("x-forwarded-for", "203.0.113.9, 10.0.0.1")], true),
        (
            &[(
                "forwarded",
                "for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.1",
            )],
            true,
        ),
        (&[("x-forwarded-for", "unknown")], true),
        (&[], true),
        (&[("x-forwarded-for", "203.0.113.9")], false),
    ];
    type Trust = fn(crate::log::RequestLogBuilder) -> crate::log::RequestLogBuilder;
    let run = |trust: Trust| async move {
        let capture = Capture::default();
        let _g = tracing::subscriber::set_default(subscriber(
            &capture,
            JsonLayer::new("s", capture.clone()),
        ));
        let builder = trust(RequestLog::builder());
        let app = app(builder.log_query(true).sensitive_param("session").layer());
        for (headers, with_peer) in cases {
            send(&app, req(headers, with_peer)).await;
        }
        let records = capture.requests();
        assert_eq!(records[0]["query"], "session=REDACTED&page=1");
        records
            .iter()
            .map(|r| {
                r.get("client_ip")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect::<Vec<_>>()
    };
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        run(|b| b).await,
        [
            some("192.0.2.1"),
            some("192.0.2.1"),
            some("192.0.2.1"),
            some("192.0.2.1"),
            None
        ],
        "untrusted: forwarded headers are ignored"
    );
    assert_eq!(
        run(|b| b.trust_forwarded_headers(true)).await,
        [
            some("203.0.113.9"),
            some("2001:db8::7"),
            some("192.0.2.1"),
            some("192.0.2.1"),
            some("203.0.113.9")
        ],
    );
    assert_eq!(
        run(|b| b.trusted_proxy_hops(1)).await,
        [
            some("10.0.0.1"),
            some("192.0.2.1"),
            some("192.0.2.1"),
            some("192.0.2.1"),
            some("203.0.113.9")
        ],
        "one trusted proxy: the hop it appended to X-Forwarded-For (`Forwarded` not read)"
    );
    assert_eq!(
        run(|b| b.trusted_proxy_hops(1).proxy_header(ProxyHeader::Forwarded)).await,
        [
            some("192.0.2.1"),
            some("10.0.0.1"),
            some("192.0.2.1"),
            some("192.0.2.1"),
            None
        ],
        "proxies that write `Forwarded`: only it is read"
    );
    assert_eq!(
        run(|b| b.trusted_proxies(["192.0.2.1", "10.0.0.0/8"])).await,
        [
            some("203.0.113.9"),
            some("192.0.2.1"),
            some("192.0.2.1"),
            some("192.0.2.1"),
            None
        ],
        "trusted networks: past them to the first other hop; without a peer, nothing trusted"
    );
    assert_eq!(
        run(|b| {
            b.proxy_header(ProxyHeader::Forwarded)
                .trusted_proxies(["192.0.2.1", "10.0.0.0/8"])
        })
        .await,
        [
            some("192.0.2.1"),
            some("2001:db8::7"),
            some("192.0.2.1"),
            some("192.0.2.1"),
            None
        ],
        "the header named before or after the proxies"
    );
    assert_eq!(
        run(|b| b.trusted_proxies(["10.0.0.0/8"])).await,
        [
            some("192.0.2.1"),
            some("192.0.2.1"),
            some("192.0.2.1"),
            some("192.0.2.1"),
            None
        ],
        "a peer outside the trusted networks: its headers are ignored"
    );
}

/// A handler cannot rewrite a line's own keys or the request's correlation through its
/// context (`add_context` refuses them), so no record has a key twice and the request id
/// logged is the one sent back; its other keys reach every later line and the final record.
#[tokio::test(flavor = "current_thread")]
async fn context_cannot_rewrite_a_lines_own_keys_or_the_correlation() {
    let capture = Capture::default();
    let _g = tracing::subscriber::set_default(subscriber(
        &capture,
        JsonLayer::new("s", capture.clone()).rate_limit(None),
    ));
    let app = Router::new()
        .route(
            "/dup",
            get(|| async {
                for key in RESERVED_KEYS {
                    assert!(!add_context(key, "forged"), "{key}");
                }
                assert!(add_context("tenant", "acme"));
                tracing::info!("in handler");
                "ok"
            }),
        )
        .layer(RequestLogLayer::new());
    let (_, headers, _) = send(&app, get_req("/dup")).await;
    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains("forged"), "{text}");
    for line in text.lines() {
        for key in RESERVED_KEYS.iter().chain(&["tenant", "status"]) {
            let n = line.matches(&format!("\"{key}\":")).count();
            assert!(n <= 1, "{key} {n} times: {line}");
        }
    }
    let lines = capture.lines();
    let record = &capture.requests()[0];
    assert_eq!(
        record["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );
    assert_eq!(record["route"], "/dup");
    assert_eq!(record["tenant"], "acme");
    let inside = lines.iter().find(|l| l["message"] == "in handler").unwrap();
    assert_eq!(inside["tenant"], "acme");
    assert_eq!(inside["request_id"], record["request_id"]);
}
