//! Traces end to end: an in-test OTLP/HTTP receiver decodes what the real exporter sends;
//! two towerscope services in one process make one trace; collectors that are down, hang or
//! answer 503 leave the service answering, and the drops are counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::Empty;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, status::StatusCode as OtelStatus, Span,
};
use prost::Message;
use tower::ServiceExt;
use towerscope::lifecycle::{ObserveLayer, ProxyHeader};
use towerscope::trace::{TraceConfig, TraceIds, Tracing};
use tracing_subscriber::layer::SubscriberExt;

use crate::support::{h2_connect, http, sample, serve, Lines};

// ---- the receiver ----

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    Accept,
    Unavailable,
    Hang,
}

#[derive(Clone)]
pub(crate) struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    requests: Arc<Mutex<u32>>,
    /// The headers of the last export request.
    headers: Arc<Mutex<http::HeaderMap>>,
    mode: Mode,
}

impl Receiver {
    /// The spans received once there are at least `n` (or whatever came within 20 s).
    pub(crate) async fn wait_for(&self, n: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if spans.len() >= n || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn export(State(r): State<Receiver>, headers: http::HeaderMap, body: Bytes) -> StatusCode {
    *r.requests.lock().unwrap() += 1;
    *r.headers.lock().unwrap() = headers;
    match r.mode {
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK
        }
        Mode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Mode::Accept => {
            let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
            let mut spans = r.spans.lock().unwrap();
            for rs in req.resource_spans {
                for ss in rs.scope_spans {
                    spans.extend(ss.spans);
                }
            }
            StatusCode::OK
        }
    }
}

/// Starts a receiver on a free loopback port, on a thread and runtime of its own (so a test
/// blocked in `flush` does not block it); returns it and its `/v1/traces` URL.
pub(crate) async fn receiver(mode: Mode) -> (Receiver, String) {
    let r = Receiver {
        spans: Arc::default(),
        requests: Arc::default(),
        headers: Arc::default(),
        mode,
    };
    let app = Router::new()
        .route("/v1/traces", post(export))
        .with_state(r.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await
        })
    });
    (r, format!("http://{addr}/v1/traces"))
}

/// A handler answering with the trace id it reads (all zeros without a server span).
async fn trace_id_text(ids: TraceIds) -> String {
    ids.trace_id.to_string()
}

pub(crate) fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// Settings that export every span to `url` within 20 ms.
pub(crate) fn exporting(url: String) -> TraceConfig {
    TraceConfig::from_env("it")
        .endpoint(url)
        .export_delay(Duration::from_millis(20))
}

/// Tracing that makes and propagates ids and exports nothing.
fn not_exporting() -> Tracing {
    TraceConfig::from_env("it")
        .exporter(towerscope::trace::Exporter::None)
        .install()
}

/// Tracing that exports every span to `url` within 20 ms.
fn exporting_to(url: String) -> Tracing {
    exporting(url).install()
}

pub(crate) fn attr_str<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    match attr(s, key) {
        Some(Value::StringValue(v)) => Some(v),
        _ => None,
    }
}

pub(crate) fn attr_int(s: &Span, key: &str) -> Option<i64> {
    match attr(s, key) {
        Some(Value::IntValue(v)) => Some(*v),
        _ => None,
    }
}

/// The span named `name`; fails the test when there is none.
fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!(
            "no span {name:?} among {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}

/// A plain HTTP/1 client.
fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// A GET of `url` with `headers`, as the tests' hyper client sends it.
fn request_to(url: String, headers: &[(&str, &str)]) -> http::Request<Empty<Bytes>> {
    let mut req = http::Request::get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Empty::new()).unwrap()
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---- two services in one process ----

#[tracing::instrument]
async fn load_profile(client_layer: towerscope::trace::ClientTraceLayer, b: SocketAddr) -> u16 {
    let hyper = client();
    let client = tower::Layer::layer(&client_layer, hyper);
    let req = http::Request::get(format!("http://{b}/profile/7?token=s3cret"))
        .body(Empty::new())
        .unwrap();
    client.oneshot(req).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "current_thread")]
async fn one_trace_across_two_services() {
    let (rx, url) = receiver(Mode::Accept).await;
    let tracing = TraceConfig::from_env("it")
        .service_name("it")
        .endpoint(url)
        .header("x-tenant", "t1")
        .export_delay(Duration::from_millis(50))
        .install();
    assert!(tracing.is_exporting());
    // Application spans go through `tracing`'s OpenTelemetry layer; every task runs on this
    // thread, so the thread's default subscriber sees them all.
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(tracing.otel_layer()));

    // B: a profile route and a failing one.
    let b = Router::new()
        .route("/profile/{id}", get(|| async { "profile" }))
        .route("/boom", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .layer(ObserveLayer::with_observer(tracing.observer()));
    let b_addr = serve(b).await;

    // A: its handler calls B from inside an `#[instrument]` span.
    let client_layer = tracing.client_layer();
    let a = Router::new()
        .route(
            "/orders/{id}",
            get(move |ids: TraceIds| {
                let layer = client_layer.clone();
                async move {
                    let status = load_profile(layer, b_addr).await;
                    format!("{status} {}", ids.trace_id)
                }
            }),
        )
        .layer(ObserveLayer::with_observer(tracing.observer()));
    let a_addr = serve(a).await;

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let hyper = client();
    let unix_nanos = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    };
    let before = unix_nanos();
    let req = request_to(
        format!("http://{a_addr}/orders/1?q=1"),
        &[
            (
                "traceparent",
                &format!("00-{caller_trace}-{caller_span}-01"),
            ),
            ("tracestate", "vendor=abc"),
            ("user-agent", "it/1.0"),
        ],
    );
    let res = hyper.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let after = unix_nanos();
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        format!("200 {caller_trace}"),
        "the handler reads the trace id"
    );
    // A 500 on B, and an invalid traceparent (the trace restarts, the request succeeds).
    let uppercase = format!("00-{}-{caller_span}-01", caller_trace.to_uppercase());
    let req = request_to(
        format!("http://{b_addr}/boom"),
        &[("traceparent", &uppercase)],
    );
    assert_eq!(hyper.request(req).await.unwrap().status(), 500);

    assert!(tracing.flush());
    let spans = rx.wait_for(5).await;
    // OTLP/HTTP protobuf, with the configured header.
    {
        let h = rx.headers.lock().unwrap();
        assert_eq!(h["content-type"], "application/x-protobuf");
        assert_eq!(h["x-tenant"], "t1");
    }
    let by_name: HashMap<&str, &Span> = spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let a_server = by_name["GET /orders/{id}"];
    let app_span = by_name["load_profile"];
    let a_client = by_name["GET"];
    let b_server = by_name["GET /profile/{id}"];
    let boom = by_name["GET /boom"];

    // One trace, continuing the caller's; parents are right.
    for s in [a_server, app_span, a_client, b_server] {
        assert_eq!(hex(&s.trace_id), caller_trace, "{}", s.name);
    }
    assert_eq!(hex(&a_server.parent_span_id), caller_span);
    assert_eq!(
        app_span.parent_span_id, a_server.span_id,
        "#[instrument] span under the server span"
    );
    assert_eq!(
        a_client.parent_span_id, app_span.span_id,
        "client span under the handler's span"
    );
    assert_eq!(
        b_server.parent_span_id, a_client.span_id,
        "B continues A's client span"
    );
    assert_ne!(
        hex(&boom.trace_id),
        caller_trace,
        "an invalid traceparent restarts the trace"
    );
    assert!(boom.parent_span_id.is_empty());

    // Kinds.
    assert_eq!(a_server.kind, SpanKind::Server as i32);
    assert_eq!(b_server.kind, SpanKind::Server as i32);
    assert_eq!(a_client.kind, SpanKind::Client as i32);
    assert_eq!(app_span.kind, SpanKind::Internal as i32);

    // Attributes.
    assert_eq!(attr_str(a_server, "http.request.method"), Some("GET"));
    assert_eq!(attr_str(a_server, "http.route"), Some("/orders/{id}"));
    assert_eq!(attr_str(a_server, "url.path"), Some("/orders/1"));
    assert_eq!(attr_str(a_server, "url.query"), Some("q=1"));
    assert_eq!(attr_str(a_server, "url.scheme"), Some("http"));
    assert_eq!(attr_str(a_server, "user_agent.original"), Some("it/1.0"));
    assert_eq!(attr_str(a_server, "client.address"), Some("127.0.0.1"));
    assert_eq!(attr_str(a_server, "server.address"), Some("127.0.0.1"));
    assert_eq!(
        attr_int(a_server, "server.port"),
        Some(i64::from(a_addr.port()))
    );
    assert_eq!(attr_str(a_server, "network.protocol.version"), Some("1.1"));
    assert_eq!(attr_int(a_server, "http.response.status_code"), Some(200));
    assert_eq!(
        attr_str(b_server, "url.query").map(|q| q.contains("s3cret")),
        Some(false)
    );
    assert_eq!(attr_str(a_client, "http.request.method"), Some("GET"));
    assert_eq!(
        attr_int(a_client, "server.port"),
        Some(i64::from(b_addr.port()))
    );
    assert_eq!(attr_str(a_client, "server.address"), Some("127.0.0.1"));
    let full = attr_str(a_client, "url.full").unwrap();
    assert!(full.ends_with("/profile/7?token=REDACTED"), "{full}");
    assert_eq!(attr_int(a_client, "http.response.status_code"), Some(200));
    // The caller's tracestate travels with the trace.
    assert_eq!(b_server.trace_state, "vendor=abc");

    // Statuses: 5xx is an error on the server, with error.type; 2xx unset.
    let status = |s: &Span| s.status.as_ref().map_or(0, |st| st.code);
    assert_eq!(status(boom), OtelStatus::Error as i32);
    assert_eq!(attr_str(boom, "error.type"), Some("500"));
    assert_eq!(status(a_server), OtelStatus::Unset as i32);
    // Durations are real.
    assert!(a_server.end_time_unix_nano > a_server.start_time_unix_nano);
    assert!(a_server.start_time_unix_nano <= a_client.start_time_unix_nano);
    assert!(a_server.end_time_unix_nano >= b_server.end_time_unix_nano);
    // On the wall clock, within the exchange (to the millisecond the lifecycle's clock
    // promises).
    let ms = 1_000_000;
    assert!(
        a_server.start_time_unix_nano + ms >= before,
        "{before} {a_server:?}"
    );
    assert!(
        a_server.end_time_unix_nano <= after + ms,
        "{after} {a_server:?}"
    );
    assert!(tracing.shutdown(Duration::from_secs(5)));
}

/// Client spans: 4xx is an error on the client side; the current request id travels on.
#[tokio::test(flavor = "current_thread")]
async fn client_spans_mark_4xx_as_errors() {
    let (rx, url) = receiver(Mode::Accept).await;
    let tracing = exporting_to(url);
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let b = Router::new().route(
        "/missing",
        get(move |headers: http::HeaderMap| {
            *seen2.lock().unwrap() = headers
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned());
            async { StatusCode::NOT_FOUND }
        }),
    );
    let b_addr = serve(b).await;
    let hyper = client();
    let client = tower::Layer::layer(&tracing.client_layer(), hyper);
    let req = http::Request::get(format!("http://{b_addr}/missing"))
        .body(Empty::new())
        .unwrap();
    assert_eq!(client.oneshot(req).await.unwrap().status(), 404);
    assert!(tracing.flush());
    let span = rx.wait_for(1).await.remove(0);
    assert_eq!(span.kind, SpanKind::Client as i32);
    assert_eq!(span.status.as_ref().unwrap().code, OtelStatus::Error as i32);
    assert_eq!(attr_str(&span, "error.type"), Some("404"));
    let sent = seen.lock().unwrap().clone().expect("traceparent sent");
    assert_eq!(
        sent,
        format!("00-{}-{}-01", hex(&span.trace_id), hex(&span.span_id))
    );
    tracing.shutdown(Duration::from_secs(5));
}

/// Two services: `/a` calls `/b` through the client layer; `/b` keeps what `record` takes from
/// the headers it receives. Returns A's address and what B kept.
async fn relay<T: Send + 'static>(
    tracing: &Tracing,
    record: impl Fn(&http::HeaderMap) -> T + Clone + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<Vec<T>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let b = Router::new().route(
        "/b",
        get(move |headers: http::HeaderMap| {
            seen2.lock().unwrap().push(record(&headers));
            async { "b" }
        }),
    );
    let b_addr = serve(b).await;
    let calls = tower::Layer::layer(&tracing.client_layer(), client());
    let a = Router::new()
        .route(
            "/a",
            get(move || {
                let calls = calls.clone();
                async move {
                    let req = http::Request::get(format!("http://{b_addr}/b"))
                        .body(Empty::new())
                        .unwrap();
                    calls
                        .oneshot(req)
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                        .to_string()
                }
            }),
        )
        .layer(ObserveLayer::with_observer(tracing.observer()));
    (serve(a).await, seen)
}

/// A `tracestate` the W3C grammar allows but OpenTelemetry's `TraceState` refuses (a tenant of
/// 241 characters with a system id of 14; found by the W3C test harness,
/// `test_tracestate_key_length_limit`) still reaches the next service whole, from a sampled
/// and from an unsampled caller.
#[tokio::test(flavor = "current_thread")]
async fn tracestate_that_opentelemetry_refuses_is_still_sent_on() {
    let tracing = not_exporting();
    let (a_addr, seen) = relay(&tracing, |headers| {
        headers
            .get("tracestate")
            .map(|v| v.to_str().unwrap().to_owned())
    })
    .await;
    let state = format!("foo=1,{}@{}=2", "t".repeat(241), "v".repeat(14));
    for flags in ["01", "00"] {
        let parent = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
        let req = request_to(
            format!("http://{a_addr}/a"),
            &[("traceparent", &parent), ("tracestate", &state)],
        );
        let res = client().request(req).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some(state.clone()), Some(state.clone())]
    );
    tracing.shutdown(Duration::from_secs(1));
}

/// The server span's context is current in every poll of the handler, not only the first:
/// across awaits that suspend it, with nothing exported, from sampled and unsampled callers
/// alike.
#[tokio::test(flavor = "current_thread")]
async fn the_context_is_current_across_awaits() {
    let tracing = not_exporting();
    let ids = || TraceIds::current().map(|i| format!("{}-{}", i.trace_id, i.span_id));
    let app = Router::new()
        .route(
            "/wait",
            get(move || async move {
                let first = ids();
                tokio::task::yield_now().await;
                let second = ids();
                tokio::time::sleep(Duration::from_millis(2)).await;
                let third = ids();
                format!("{first:?} {second:?} {third:?}")
            }),
        )
        .layer(ObserveLayer::with_observer(tracing.observer()));
    let addr = serve(app).await;
    for flags in ["01", "00"] {
        let parent = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
        let req = request_to(format!("http://{addr}/wait"), &[("traceparent", &parent)]);
        let res = client().request(req).await.unwrap();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let seen: Vec<&str> = text.split(' ').collect();
        assert_eq!(seen.len(), 3, "{text}");
        assert!(
            seen[0].starts_with("Some(\"4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{flags}: {text}"
        );
        assert!(seen.iter().all(|s| *s == seen[0]), "{flags}: {text}");
    }
    tracing.shutdown(Duration::from_secs(1));
}

/// A B3 caller's debug flag (`b3: …-d`, `X-B3-Flags: 1`) is passed on to the calls the
/// handler makes, in both B3 formats (`-d`; `X-B3-Flags: 1` without `X-B3-Sampled`), and only
/// for that request.
#[tokio::test(flavor = "current_thread")]
async fn b3_debug_is_passed_on() {
    use towerscope::trace::{Format, Propagators};
    const T: &str = "463ac35c9f6413ad48485a3953bb6124";
    const S: &str = "a2fb4a1d1a96d312";
    let tracing = TraceConfig::from_env("it")
        .exporter(towerscope::trace::Exporter::None)
        .propagators(Propagators::new([Format::B3, Format::B3Multi]))
        .install();
    let (a_addr, seen) = relay(&tracing, |headers| {
        let get = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
        [
            get("b3"),
            get("x-b3-traceid"),
            get("x-b3-sampled"),
            get("x-b3-flags"),
        ]
    })
    .await;
    let single = |v: String| vec![("b3", v)];
    let multi = |flags: &str| {
        vec![
            ("x-b3-traceid", T.to_owned()),
            ("x-b3-spanid", S.to_owned()),
            ("x-b3-flags", flags.to_owned()),
        ]
    };
    let cases = [
        (single(format!("{T}-{S}-d")), true),
        (single(format!("{T}-{S}-1")), false),
        (multi("1"), true),
        (multi("0"), false),
        (single("d".to_owned()), true),
        (single("1".to_owned()), false),
    ];
    for (headers, _) in &cases {
        let mut req = http::Request::get(format!("http://{a_addr}/a"));
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let res = client()
            .request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), cases.len());
    for ((headers, debug), [b3, trace_id, sampled, flags]) in cases.iter().zip(seen.iter()) {
        let b3 = b3.as_deref().expect("b3 sent");
        let state = b3.rsplit('-').next().unwrap();
        if *debug {
            assert_eq!(state, "d", "{headers:?}: {b3}");
            assert_eq!(flags.as_deref(), Some("1"), "{headers:?}");
            assert_eq!(sampled, &None, "{headers:?}: debug implies accept");
        } else {
            assert_eq!(state, "1", "{headers:?}: {b3}");
            assert_eq!(sampled.as_deref(), Some("1"), "{headers:?}");
            assert_eq!(flags, &None, "{headers:?}");
        }
        // The caller's trace when it sent ids; a new one for a lone sampling state.
        let same_trace = headers.len() > 1 || headers[0].1.len() > 1;
        assert_eq!(trace_id.as_deref() == Some(T), same_trace, "{headers:?}");
        assert_eq!(b3.starts_with(T), same_trace, "{headers:?}");
    }
    drop(seen);
    tracing.shutdown(Duration::from_secs(1));
}

// ---- collectors that misbehave ----

/// The example server with tracing exporting to `endpoint`, a small queue and short timeouts.
fn traced_server(
    endpoint: &str,
) -> (
    crate::support::Proc,
    SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    crate::support::start_server_logs(
        "full",
        &["--drain-delay", "0"],
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
        ],
    )
}

fn dropped(addr: SocketAddr, reason: &str) -> f64 {
    let (_, text) = http(addr, "GET", "/metrics");
    sample(&text, "trace_spans_dropped_total", &[("reason", reason)]).unwrap_or(0.0)
}

#[test]
fn collectors_down_hanging_or_failing_do_not_touch_the_service() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (hang, hang_url) = rt.block_on(receiver(Mode::Hang));
    let (unavailable, unavailable_url) = rt.block_on(receiver(Mode::Unavailable));
    let down_url = format!("http://127.0.0.1:{}/v1/traces", crate::support::free_port());
    for (what, url, reason, why) in [
        ("down", down_url.as_str(), "export_failed", "connecting to"),
        ("503", unavailable_url.as_str(), "export_failed", "503"),
        (
            "hanging",
            hang_url.as_str(),
            "queue_full",
            "no answer within",
        ),
    ] {
        let (mut server, addr, logs) = traced_server(url);
        let started = Instant::now();
        for _ in 0..400 {
            assert_eq!(http(addr, "GET", "/echo/1").0, 200, "{what}");
        }
        // The service answered 400 requests while the collector misbehaved; the spans it could
        // not deliver are counted (export attempts time out after 1 s, retries included).
        let counted = crate::support::eventually(Duration::from_secs(30), || {
            (dropped(addr, reason) > 0.0).then_some(())
        });
        assert!(counted.is_some(), "{what}: no {reason} drops counted");
        // And said in the log, with the reason.
        let export_line = |line: &str| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .filter(|v| v["target"] == "towerscope::trace::export")
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let w = std::iter::from_fn(|| {
            let left = deadline.saturating_duration_since(Instant::now());
            logs.recv_timeout(left).ok()
        })
        .find_map(|l| export_line(&l))
        .unwrap_or_else(|| panic!("{what}: no export warning within 15 s"));
        assert_eq!(w["level"], "WARN", "{what}: {w}");
        assert!(
            w["error"].as_str().is_some_and(|e| e.contains(why)),
            "{what}: {w}"
        );
        assert!(
            w["failed_spans"].as_u64().is_some_and(|n| n > 0),
            "{what}: {w}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: took {:?}",
            started.elapsed()
        );
        // Graceful shutdown flushes within its deadline even so.
        let pid = server.0.id().to_string();
        let stopped = Instant::now();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status =
            crate::support::eventually(Duration::from_secs(20), || server.0.try_wait().unwrap());
        assert!(status.is_some(), "{what}: still running 20 s after SIGTERM");
        assert!(stopped.elapsed() < Duration::from_secs(15), "{what}");
        // Once: the next warning would come a minute later, whatever else failed.
        let more: Vec<_> = logs.iter().filter_map(|l| export_line(&l)).collect();
        assert!(more.is_empty(), "{what}: {more:?}");
    }
    assert!(
        *unavailable.requests.lock().unwrap() > 0,
        "the 503 receiver was called"
    );
    assert!(
        *hang.requests.lock().unwrap() > 0,
        "the hanging receiver was called"
    );
    drop(rt);
}

// ---- log correlation ----

#[tracing::instrument]
async fn child_work() {
    tracing::info!("in child");
}

/// Every record written inside a traced request carries the current span's ids, as exported.
#[tokio::test(flavor = "current_thread")]
async fn log_records_carry_the_exported_ids() {
    records_carry_the_exported_ids(|tracing, lines| {
        let dispatch = tracing_subscriber::registry()
            .with(tracing.otel_layer())
            .with(towerscope::log::JsonLayer::new("it", lines));
        (dispatch.into(), None)
    })
    .await;
}

/// The same under the subscriber `LogConfig` installs, which makes the request span only when
/// something asks for it (here the handler's `#[instrument]` span).
#[tokio::test(flavor = "current_thread")]
async fn log_records_carry_the_exported_ids_under_log_config() {
    records_carry_the_exported_ids(|tracing, lines| {
        let (dispatch, guard) = towerscope::log::LogConfig::from_env("it")
            .format(towerscope::log::Format::Json)
            .filter("info")
            .tracing(tracing)
            .dispatch_with_writer(lines)
            .unwrap();
        (dispatch, Some(guard))
    })
    .await;
}

async fn records_carry_the_exported_ids(
    subscriber: impl FnOnce(&Tracing, Lines) -> (tracing::Dispatch, Option<towerscope::log::LogGuard>),
) {
    let (rx, url) = receiver(Mode::Accept).await;
    let tracing = exporting_to(url);
    let lines = Lines::default();
    let (dispatch, log_guard) = subscriber(&tracing, lines.clone());
    let _guard = tracing::dispatcher::set_default(&dispatch);
    let app = Router::new()
        .route(
            "/work",
            get(|| async {
                tracing::info!("in handler");
                child_work().await;
                "done"
            }),
        )
        .layer(ObserveLayer::with_observer((
            tracing.observer(),
            towerscope::log::RequestLog::builder().build(),
        )));
    let addr = serve(app).await;
    let hyper = client();
    let req = http::Request::get(format!("http://{addr}/work"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(hyper.request(req).await.unwrap().status(), 200);
    assert!(tracing.flush());
    let spans = rx.wait_for(2).await;
    let server = named(&spans, "GET /work");
    let child = named(&spans, "child_work");
    drop(log_guard); // writes what the non-blocking writer holds
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let by_message = |m: &str| {
        records
            .iter()
            .find(|r| r["message"] == m)
            .unwrap_or_else(|| panic!("no {m:?} record in {text}"))
    };
    for (message, span) in [
        ("in handler", server),
        ("in child", child),
        ("request finished", server),
    ] {
        let r = by_message(message);
        assert_eq!(r["trace_id"], hex(&span.trace_id), "{message}: {r}");
        assert_eq!(r["span_id"], hex(&span.span_id), "{message}: {r}");
    }
    tracing.shutdown(Duration::from_secs(5));
}

/// Custom instrumentation (`ops::Operation`, the seed's instrumentAsync/instrumentSync): an
/// INTERNAL span with an exception event and Error status on failure, OK-or-unset otherwise.
#[tokio::test(flavor = "current_thread")]
async fn operations_export_internal_spans_with_exceptions() {
    let (rx, url) = receiver(Mode::Accept).await;
    let tracing = exporting_to(url);
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(tracing.otel_layer()));
    let charge = towerscope::ops::Operation::new("charge");
    let failed: Result<(), &str> = charge.run(async { Err("card declined") }).await;
    assert!(failed.is_err());
    let fine = towerscope::ops::Operation::new("refund").run_sync(|| Ok::<_, String>(1));
    assert_eq!(fine, Ok(1));
    assert!(tracing.flush());
    let spans = rx.wait_for(2).await;
    let charge = named(&spans, "charge");
    let refund = named(&spans, "refund");
    assert_eq!(charge.kind, SpanKind::Internal as i32);
    assert_eq!(
        charge.status.as_ref().unwrap().code,
        OtelStatus::Error as i32
    );
    let exception = charge
        .events
        .iter()
        .find(|e| e.name == "exception")
        .expect("an exception event");
    let message = exception
        .attributes
        .iter()
        .find(|kv| kv.key == "exception.message")
        .and_then(|kv| kv.value.as_ref()?.value.as_ref());
    assert_eq!(message, Some(&Value::StringValue("card declined".into())));
    assert_ne!(
        refund.status.as_ref().map_or(0, |s| s.code),
        OtelStatus::Error as i32
    );
    tracing.shutdown(Duration::from_secs(5));
}

/// The embedded default: no endpoint, nothing exported, yet ids are created, propagated,
/// returned (`traceresponse`, opt-in) and readable by handlers.
#[tokio::test(flavor = "current_thread")]
async fn without_an_endpoint_ids_exist_and_nothing_is_exported() {
    let tracing = TraceConfig::from_env("it").traceresponse(true).install();
    assert!(!tracing.is_exporting(), "no endpoint: no exporter");
    let app = Router::new()
        .route("/", get(trace_id_text))
        .layer(ObserveLayer::with_observer(tracing.observer()));
    let addr = serve(app).await;
    let hyper = client();
    for parent in [
        None,
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
    ] {
        let headers: Vec<_> = parent.map(|p| ("traceparent", p)).into_iter().collect();
        let res = hyper
            .request(request_to(format!("http://{addr}/"), &headers))
            .await
            .unwrap();
        let back = res.headers()["traceresponse"].to_str().unwrap().to_owned();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        let trace_id = std::str::from_utf8(&body).unwrap().to_owned();
        let parsed = towerscope::trace::TraceParent::parse(&back).expect("a valid traceresponse");
        assert_eq!(parsed.trace_id.to_string(), trace_id);
        match parent {
            // A caller's unsampled decision is followed (parentbased_always_on).
            Some(p) => {
                assert_eq!(trace_id, &p[3..35]);
                assert!(!parsed.flags.sampled());
            }
            None => assert!(parsed.flags.sampled()),
        }
    }
    assert!(tracing.shutdown(Duration::from_secs(1)));
}

/// The reqwest-middleware middleware: a CLIENT span, propagation.
#[cfg(feature = "reqwest")]
#[tokio::test(flavor = "current_thread")]
async fn reqwest_middleware_propagates() {
    let (rx, url) = receiver(Mode::Accept).await;
    let tracing = exporting_to(url);
    let b = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .layer(ObserveLayer::with_observer(tracing.observer()));
    let b_addr = serve(b).await;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(tracing.reqwest_middleware())
        .build();
    let res = client
        .get(format!("http://{b_addr}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "hi");
    assert!(tracing.flush());
    let spans = rx.wait_for(2).await;
    let client_span = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("client span");
    let server_span = named(&spans, "GET /hello");
    assert_eq!(client_span.name, "GET");
    assert_eq!(server_span.parent_span_id, client_span.span_id);
    assert_eq!(server_span.trace_id, client_span.trace_id);
    assert_eq!(
        attr_int(client_span, "http.response.status_code"),
        Some(200)
    );
    tracing.shutdown(Duration::from_secs(5));
}

/// `OTEL_SDK_DISABLED` (or `disabled(true)`): no spans and no ids; requests are untouched.
#[tokio::test(flavor = "current_thread")]
async fn a_disabled_sdk_creates_nothing() {
    let tracing = TraceConfig::from_env("it")
        .disabled(true)
        .traceresponse(true)
        .install();
    assert!(!tracing.is_exporting());
    let app = Router::new()
        .route("/", get(trace_id_text))
        .layer(ObserveLayer::with_observer(tracing.observer()));
    let addr = serve(app).await;
    let hyper = client();
    let req = request_to(
        format!("http://{addr}/"),
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
    );
    let res = hyper.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("traceresponse").is_none());
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], "0".repeat(32).as_bytes(), "no ids when disabled");
}

/// Interoperability with a real peer: the OpenTelemetry SDK's own W3C propagators read what
/// towerscope writes, and towerscope reads what they write, ids, flags, tracestate and
/// baggage alike.
#[test]
fn the_opentelemetry_sdk_propagators_agree_with_ours() {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{
        SpanContext, TraceContextExt, TraceFlags as OFlags, TraceId as OTraceId,
        TraceState as OState,
    };
    use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
    use towerscope::trace::{Baggage, Propagators, SpanId, TraceFlags, TraceId, TraceState};

    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..200 {
        let trace = TraceId(std::array::from_fn(|_| rng.u8(..)));
        let span = SpanId(std::array::from_fn(|_| rng.u8(..)));
        if trace.0 == [0; 16] || span.0 == [0; 8] {
            continue;
        }
        let sampled = i % 2 == 0;
        let members: Vec<(String, String)> = (0..i % 4)
            .map(|m| (format!("v{m}"), format!("x{}", rng.u32(..))))
            .collect();
        let state_text = members
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let state = TraceState::parse([state_text.as_str()]).unwrap();
        let baggage = Baggage::parse([format!("user=u{i},plan=pro").as_str()]);

        // Ours -> the SDK.
        let mut headers = http::HeaderMap::new();
        Propagators::default().inject(
            trace,
            span,
            TraceFlags(u8::from(sampled)),
            &state,
            &baggage,
            &mut headers,
        );
        let carrier: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        let cx = TraceContextPropagator::new().extract(&carrier);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid(), "{carrier:?}");
        assert_eq!(sc.trace_id().to_bytes(), trace.0);
        assert_eq!(sc.span_id().to_bytes(), span.0);
        assert_eq!(sc.is_sampled(), sampled);
        assert_eq!(sc.trace_state().header(), state_text);
        let bcx = BaggagePropagator::new().extract(&carrier);
        use opentelemetry::baggage::BaggageExt;
        assert_eq!(
            bcx.baggage().get("user").map(|v| v.to_string()),
            Some(format!("u{i}"))
        );

        // The SDK -> ours.
        let sdk_state =
            OState::from_key_value(members.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        let sdk_cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            OTraceId::from_bytes(trace.0),
            opentelemetry::trace::SpanId::from_bytes(span.0),
            if sampled {
                OFlags::SAMPLED
            } else {
                OFlags::default()
            },
            true,
            sdk_state,
        ));
        let mut carrier: HashMap<String, String> = HashMap::new();
        TraceContextPropagator::new().inject_context(&sdk_cx, &mut carrier);
        let mut headers = http::HeaderMap::new();
        for (k, v) in &carrier {
            headers.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let got = Propagators::default().extract(&headers);
        let parent = got.parent.expect("a valid traceparent from the SDK");
        assert_eq!(parent.trace_id, trace);
        assert_eq!(parent.parent_id, span);
        assert_eq!(parent.flags.sampled(), sampled);
        assert_eq!(got.state.header().unwrap_or_default(), state_text);
    }
}

/// Client errors get the crate's one `error.type` classification (the server side's), not a
/// type name.
#[test]
fn client_errors_are_classified_like_server_errors() {
    let tracing = not_exporting();
    let (recorder, prometheus) = towerscope::metrics::Prometheus::builder().build();
    let failing = tower::service_fn(|_req: http::Request<()>| async {
        Err::<http::Response<()>, _>(std::io::Error::from(std::io::ErrorKind::TimedOut))
    });
    let client = tower::Layer::layer(&tracing.client_layer(), failing);
    metrics::with_local_recorder(&recorder, || {
        let req = http::Request::get("http://example.test:8080/x")
            .body(())
            .unwrap();
        assert!(crate::support::block_on(client.clone().oneshot(req)).is_err());
        // A request for a connection made by hand (hyper's `client::conn`): the path as its
        // URI, the server in `Host`.
        let req = http::Request::get("/x")
            .header("host", "api.test:9090")
            .body(())
            .unwrap();
        assert!(crate::support::block_on(client.clone().oneshot(req)).is_err());
        // IPv6 addresses without their brackets, in the URI or in `Host`, as the server span
        // has them.
        let req = http::Request::get("http://[::1]:7070/x").body(()).unwrap();
        assert!(crate::support::block_on(client.clone().oneshot(req)).is_err());
        let req = http::Request::get("/x")
            .header("host", "[2001:db8::1]")
            .body(())
            .unwrap();
        assert!(crate::support::block_on(client.oneshot(req)).is_err());
    });
    let text = prometheus.render();
    for (address, port) in [("::1", "7070"), ("2001:db8::1", "80")] {
        let labels = [
            ("http_request_method", "GET"),
            ("server_address", address),
            ("server_port", port),
            ("error_type", "timeout"),
        ];
        let count = sample(&text, "http_client_request_duration_seconds_count", &labels);
        assert_eq!(count, Some(1.0), "{address}: {text}");
    }
    assert_eq!(
        sample(
            &prometheus.render(),
            "http_client_request_duration_seconds_count",
            &[
                ("http_request_method", "GET"),
                ("server_address", "api.test"),
                ("server_port", "9090"),
                ("error_type", "timeout"),
            ]
        ),
        Some(1.0),
        "{}",
        prometheus.render()
    );
    assert_eq!(
        sample(
            &prometheus.render(),
            "http_client_request_duration_seconds_count",
            &[
                ("http_request_method", "GET"),
                ("server_address", "example.test"),
                ("server_port", "8080"),
                ("error_type", "timeout"),
            ]
        ),
        Some(1.0),
        "{}",
        prometheus.render()
    );
}

/// The probes and `/metrics` get no server span by default (they run every few seconds);
/// other routes do.
#[tokio::test(flavor = "current_thread")]
async fn probes_are_not_traced_by_default() {
    let tracing = TraceConfig::from_env("it").traceresponse(true).install();
    let app = Router::new()
        .route("/readyz", get(trace_id_text))
        .route("/work", get(trace_id_text))
        .layer(ObserveLayer::with_observer(tracing.observer()));
    let addr = serve(app).await;
    for (path, traced) in [("/readyz", false), ("/work", true)] {
        let req = http::Request::get(format!("http://{addr}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = client().request(req).await.unwrap();
        assert_eq!(
            res.headers().contains_key("traceresponse"),
            traced,
            "{path}"
        );
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body[..] != *"0".repeat(32).as_bytes(), traced, "{path}");
    }
}

/// Over HTTP/2 the request has no `Host` header: the server span takes `server.address` and
/// `server.port` from the `:authority`, and says which protocol served it.
#[tokio::test(flavor = "current_thread")]
async fn http2_server_spans_take_the_authority_and_protocol() {
    let (rx, url) = receiver(Mode::Accept).await;
    let tracing = exporting_to(url);
    let app = Router::new()
        .route(
            "/orders/{id}",
            get(|headers: http::HeaderMap| async move {
                format!("host header: {}", headers.contains_key("host"))
            }),
        )
        .layer(ObserveLayer::with_observer(tracing.observer()));
    let addr = serve(app).await;
    let mut h2 = h2_connect(addr).await;
    let req = http::Request::get(format!("http://{addr}/orders/9?q=1"))
        .header("user-agent", "it/2.0")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = h2.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let body = crate::support::collect(res.into_body()).await;
    assert_eq!(
        body, "host header: false",
        "the authority is a pseudo-header"
    );
    assert!(tracing.flush());
    let spans = rx.wait_for(1).await;
    let server = named(&spans, "GET /orders/{id}");
    assert_eq!(attr_str(server, "network.protocol.version"), Some("2"));
    assert_eq!(attr_str(server, "server.address"), Some("127.0.0.1"));
    assert_eq!(
        attr_int(server, "server.port"),
        Some(i64::from(addr.port()))
    );
    assert_eq!(attr_str(server, "url.scheme"), Some("http"));
    assert_eq!(attr_str(server, "url.path"), Some("/orders/9"));
    assert_eq!(attr_str(server, "url.query"), Some("q=1"));
    assert_eq!(attr_str(server, "http.route"), Some("/orders/{id}"));
    assert_eq!(attr_str(server, "user_agent.original"), Some("it/2.0"));
    assert_eq!(attr_str(server, "client.address"), Some("127.0.0.1"));
    assert_eq!(attr_int(server, "http.response.status_code"), Some(200));
    tracing.shutdown(Duration::from_secs(5));
}

/// Served with `WithPeer`: the peer's address per connection, no `ConnectInfo` extension. The
/// server span's `client.address` and a handler's `peer_addr()` have it, over HTTP/1 and over
/// HTTP/2 (where each request's future is a task of its own), with each connection's port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_address_from_the_connection_with_peer() {
    let (rx, url) = receiver(Mode::Accept).await;
    let tracing = exporting_to(url);
    let app = Router::new()
        .route(
            "/peer/{n}",
            get(|| async {
                let extension_free = towerscope::lifecycle::peer_addr();
                tokio::task::yield_now().await;
                assert_eq!(towerscope::lifecycle::peer_addr(), extension_free);
                extension_free.map_or("none".to_string(), |a| a.to_string())
            }),
        )
        .layer(ObserveLayer::with_observer(tracing.observer()));
    let addr = crate::support::serve_with_peer(app).await;
    let body = |res: http::Response<hyper::body::Incoming>| async move {
        assert_eq!(res.status(), 200);
        let b = crate::support::collect(res.into_body()).await;
        String::from_utf8(b.to_vec()).unwrap()
    };
    let get =
        |n: u32| crate::support::empty_request(http::Method::GET, addr, &format!("/peer/{n}"));
    let mut h1 = crate::support::h1_connect(addr).await;
    let mut h2 = h2_connect(addr).await;
    let mut seen = Vec::new();
    for n in 0..4 {
        let res = if n % 2 == 0 {
            h1.ready().await.unwrap();
            h1.send_request(get(n)).await.unwrap()
        } else {
            h2.ready().await.unwrap();
            h2.send_request(get(n)).await.unwrap()
        };
        seen.push(body(res).await);
    }
    let peers: Vec<SocketAddr> = seen.iter().map(|s| s.parse().expect(s)).collect();
    assert!(
        peers.iter().all(|p| p.ip().to_string() == "127.0.0.1"),
        "{seen:?}"
    );
    assert_eq!(peers[0], peers[2], "one HTTP/1 connection, one peer");
    assert_eq!(peers[1], peers[3], "one HTTP/2 connection, one peer");
    assert_ne!(
        peers[0].port(),
        peers[1].port(),
        "two connections, two ports"
    );
    assert!(tracing.flush());
    let spans = rx.wait_for(4).await;
    for n in 0..4 {
        let s = spans
            .iter()
            .find(|s| attr_str(s, "url.path") == Some(&format!("/peer/{n}")))
            .unwrap_or_else(|| panic!("no span for /peer/{n}"));
        assert_eq!(
            attr_str(s, "client.address"),
            Some("127.0.0.1"),
            "/peer/{n}"
        );
    }
    // Outside a connection's service: nothing.
    assert_eq!(towerscope::lifecycle::peer_addr(), None);
    tracing.shutdown(Duration::from_secs(5));
}

/// `client.address` is the peer unless the proxies are trusted; then it is the forwarded
/// client (all trusted: the first hop; the nearest one trusted: the hop it appended, the
/// last; trusted networks: the first hop from the right outside them), and the proxy (the
/// peer) is `network.peer.address`. Counted hops and networks read only the proxies' header
/// (`X-Forwarded-For` unless told `Forwarded`). Untrusted, forwarded headers are ignored.
/// The hop whose client is believed gives `url.scheme` and `server.address` too.
#[tokio::test(flavor = "current_thread")]
async fn client_address_behind_trusted_proxies() {
    type Trust = fn(TraceConfig) -> TraceConfig;
    let modes: [(&str, Trust); 5] = [
        ("untrusted", |c| c),
        ("all", |c| c.trust_forwarded_headers(true)),
        ("one hop", |c| c.trusted_proxy_hops(1)),
        ("networks", |c| {
            c.trusted_proxies(["127.0.0.1", "10.0.0.0/8"])
        }),
        ("networks, Forwarded", |c| {
            c.trusted_proxies(["127.0.0.1", "10.0.0.0/8"])
                .proxy_header(ProxyHeader::Forwarded)
        }),
    ];
    for (mode, trust) in modes {
        let (rx, url) = receiver(Mode::Accept).await;
        let config = TraceConfig::from_env("it")
            .endpoint(url)
            .export_delay(Duration::from_millis(20));
        let tracing = trust(config).install();
        let app = Router::new()
            .route("/who/{n}", get(|| async { "ok" }))
            .layer(ObserveLayer::with_observer(tracing.observer()));
        let addr = serve(app).await;
        let mut h2 = h2_connect(addr).await;
        for (n, forwarded) in [
            (1, Some(("x-forwarded-for", "203.0.113.9:4711, 10.0.0.1"))),
            (
                2,
                Some((
                    "forwarded",
                    "for=\"[2001:db8::7]\";proto=https;host=api.example.com",
                )),
            ),
            (3, Some(("x-forwarded-for", "unknown"))),
            (4, None),
        ] {
            let mut req =
                crate::support::empty_request(http::Method::GET, addr, &format!("/who/{n}"));
            if let Some((k, v)) = forwarded {
                req.headers_mut().insert(k, v.parse().unwrap());
            }
            assert_eq!(h2.send_request(req).await.unwrap().status(), 200);
        }
        assert!(tracing.flush());
        let spans = rx.wait_for(4).await;
        let span = |n: u32| {
            spans
                .iter()
                .find(|s| attr_str(s, "url.path") == Some(&format!("/who/{n}")))
                .unwrap_or_else(|| panic!("no span for /who/{n}"))
        };
        let addresses = |n: u32| {
            let s = span(n);
            (
                attr_str(s, "client.address"),
                attr_str(s, "network.peer.address"),
            )
        };
        let origin = |n: u32| {
            let s = span(n);
            (attr_str(s, "url.scheme"), attr_str(s, "server.address"))
        };
        let (forwarded, own) = (
            (Some("https"), Some("api.example.com")),
            (Some("http"), Some("127.0.0.1")),
        );
        assert_eq!(
            origin(2),
            if mode == "all" || mode == "networks, Forwarded" {
                forwarded
            } else {
                own
            },
            "{mode}"
        );
        assert_eq!(origin(1), own, "{mode}: no scheme or host forwarded");
        let peer = (Some("127.0.0.1"), None);
        if mode == "all" {
            assert_eq!(addresses(1), (Some("203.0.113.9"), Some("127.0.0.1")));
            assert_eq!(addresses(2), (Some("2001:db8::7"), Some("127.0.0.1")));
        } else if mode == "networks" {
            assert_eq!(addresses(1), (Some("203.0.113.9"), Some("127.0.0.1")));
            assert_eq!(addresses(2), peer, "`Forwarded` is not the proxies' header");
        } else if mode == "networks, Forwarded" {
            assert_eq!(
                addresses(1),
                peer,
                "`X-Forwarded-For` is not the proxies' header"
            );
            assert_eq!(addresses(2), (Some("2001:db8::7"), Some("127.0.0.1")));
        } else if mode == "one hop" {
            assert_eq!(addresses(1), (Some("10.0.0.1"), Some("127.0.0.1")));
            assert_eq!(addresses(2), peer, "`Forwarded` is not the proxies' header");
        } else {
            assert_eq!(addresses(1), peer, "untrusted: the header is ignored");
            assert_eq!(addresses(2), peer);
        }
        assert_eq!(addresses(3), peer, "not an address: the peer");
        assert_eq!(addresses(4), peer);
        tracing.shutdown(Duration::from_secs(5));
    }
}

/// B3 callers: a sampling state is the caller's decision, with or without ids; ids without
/// one defer the decision to this service's own sampler (the root sampler of
/// `parentbased_always_on` / `_off`), keeping the caller's trace id.
#[tokio::test(flavor = "current_thread")]
async fn b3_sampling_states_and_deferral() {
    use towerscope::trace::{Format, Propagators, Sampler};
    const T: &str = "463ac35c9f6413ad48485a3953bb6124";
    const S: &str = "a2fb4a1d1a96d312";
    for (sampler, root) in [
        (Sampler::ParentBasedAlwaysOff, false),
        (Sampler::ParentBasedAlwaysOn, true),
    ] {
        let tracing = TraceConfig::from_env("it")
            .propagators(Propagators::new([Format::B3]))
            .sampler(sampler)
            .traceresponse(true)
            .install();
        let app = Router::new()
            .route("/work", get(|| async { "ok" }))
            .layer(ObserveLayer::with_observer(tracing.observer()));
        let addr = serve(app).await;
        for (b3, same_trace, sampled) in [
            (format!("{T}-{S}-1"), true, true),
            (format!("{T}-{S}-0"), true, false),
            (format!("{T}-{S}"), true, root),
            ("1".to_owned(), false, true),
            ("d".to_owned(), false, true),
            ("0".to_owned(), false, false),
        ] {
            let req = http::Request::get(format!("http://{addr}/work"))
                .header("b3", b3.as_str())
                .body(Empty::<Bytes>::new())
                .unwrap();
            let res = client().request(req).await.unwrap();
            let tr = res.headers()["traceresponse"].to_str().unwrap().to_owned();
            let parts: Vec<&str> = tr.split('-').collect();
            assert_eq!(parts.len(), 4, "{tr}");
            assert_eq!(parts[1] == T, same_trace, "{sampler:?}, b3: {b3} -> {tr}");
            let flags = if sampled { "01" } else { "00" };
            assert_eq!(parts[3], flags, "{sampler:?}, b3: {b3} -> {tr}");
        }
    }
}

/// RED before the server span in one `ObserveLayer`, exemplars kept: the latency bucket shows
/// the last sampled request's trace, and an unsampled one (its parent said so) leaves it be.
#[tokio::test(flavor = "current_thread")]
async fn red_keeps_the_last_sampled_trace_as_its_exemplar() {
    let tracing = not_exporting();
    let (recorder, prometheus) = towerscope::metrics::Prometheus::builder()
        .exemplars(true)
        .build();
    let red = towerscope::metrics::Red::builder()
        .recorder(Arc::new(recorder))
        .build();
    let app = Router::new()
        .route("/work", get(|| async { "ok" }))
        .layer(ObserveLayer::with_observer((red, tracing.observer())));
    let addr = serve(app).await;
    let (sampled, unsampled) = (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "0af7651916cd43dd8448eb211c80319c",
    );
    for (trace, flags) in [(sampled, "01"), (unsampled, "00")] {
        let parent = format!("00-{trace}-00f067aa0ba902b7-{flags}");
        let req = request_to(format!("http://{addr}/work"), &[("traceparent", &parent)]);
        assert_eq!(client().request(req).await.unwrap().status(), 200);
    }
    let om = prometheus.render_openmetrics();
    let exemplars: Vec<&str> = om
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_bucket"))
        .filter_map(|l| l.split_once(" # ").map(|(_, e)| e))
        .collect();
    assert_eq!(exemplars.len(), 1, "{om}");
    assert!(
        exemplars[0].starts_with(&format!("{{trace_id=\"{sampled}\",span_id=\"")),
        "{om}"
    );
    // The server span's id, not its remote parent's.
    assert!(!exemplars[0].contains("00f067aa0ba902b7"), "{om}");
}

/// The client histogram keeps the sampled call's trace too: its exemplar is the client span
/// whose ids went out in `traceparent`.
#[test]
fn client_calls_keep_their_span_as_the_exemplar() {
    let tracing = not_exporting();
    let (recorder, prometheus) = towerscope::metrics::Prometheus::builder()
        .exemplars(true)
        .build();
    let sent = Arc::new(Mutex::new(String::new()));
    let seen = sent.clone();
    let inner = tower::service_fn(move |req: http::Request<()>| {
        let traceparent = req.headers()["traceparent"].to_str().unwrap().to_owned();
        *seen.lock().unwrap() = traceparent;
        async { Ok::<_, std::io::Error>(http::Response::new(())) }
    });
    let client = tower::Layer::layer(&tracing.client_layer(), inner);
    metrics::with_local_recorder(&recorder, || {
        let req = http::Request::get("http://api.test/x").body(()).unwrap();
        crate::support::block_on(client.oneshot(req)).unwrap();
    });
    let traceparent = sent.lock().unwrap().clone();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[3], "01", "a sampled call: {traceparent}");
    let om = prometheus.render_openmetrics();
    let exemplar = format!("# {{trace_id=\"{}\",span_id=\"{}\"}}", parts[1], parts[2]);
    let line = om
        .lines()
        .find(|l| l.starts_with("http_client_request_duration_seconds_bucket") && l.contains(" # "))
        .unwrap_or_else(|| panic!("no exemplar: {om}"));
    assert!(line.contains(&exemplar), "{line}\n{exemplar}");
}
