//! What a client sends cannot break a request: arbitrary and nearly valid header values,
//! methods, paths and queries through RED, the request log and the server span in one
//! `ObserveLayer` (spans exported, logs through the crate's own subscriber) get the answer the
//! bare router gives, valid ids back, one well-formed log record each, and bounded series.
//! And whatever an application calls, through the client layer: the answer as the server gave
//! it, a `traceparent` sent, and no credentials or sensitive query values in the span or the
//! metrics.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tower::ServiceExt;
use towerscope::lifecycle::ObserveLayer;
use towerscope::trace::{Format, Propagators, TraceParent};

use crate::support::Lines;
use crate::trace::{attr_int, attr_str, exporting, hex, receiver, Mode};

/// The headers towerscope reads from a request.
const HEADERS: [&str; 16] = [
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-request-id",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "user-agent",
    "host",
    "accept",
    "accept-encoding",
];

/// Header bytes dense in what the parsers split on and what they must refuse (uppercase hex,
/// bytes above ASCII, quotes, percent signs), around a valid value of each kind mutated at
/// one place, or cut.
fn value() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop_oneof![
        Just("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        Just("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-ever"),
        Just("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,a@b=c"),
        Just("userId=alice;p=1,serverNode=DF%2028,isProduction=false"),
        Just("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"),
        Just("for=\"[2001:db8::1]:4711\";proto=https, for=192.0.2.60"),
        Just("203.0.113.195, 70.41.3.18, 150.172.238.178"),
        Just("01a2531c-a4a8-7000-bbd0-10fc0051d5fd"),
        Just("application/openmetrics-text;version=1.0.0;q=0.9,*/*;q=0.1"),
        Just("gzip;q=1.0, identity; q=0.5, *;q=0"),
    ];
    let junk = proptest::collection::vec(
        prop_oneof![
            Just(b'-'),
            Just(b','),
            Just(b'='),
            Just(b';'),
            Just(b' '),
            Just(b'\t'),
            Just(b'"'),
            Just(b'%'),
            Just(b'0'),
            Just(b'f'),
            Just(b'F'),
            Just(b':'),
            Just(b'['),
            Just(0xc3u8),
            Just(0xffu8),
            any::<u8>(),
        ],
        0..70,
    );
    prop_oneof![
        (valid.clone(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, b)| {
            let mut v = v.as_bytes().to_vec();
            let i = at.index(v.len());
            v[i] = b;
            v
        }),
        (valid.clone(), any::<prop::sample::Index>())
            .prop_map(|(v, at)| v.as_bytes()[..at.index(v.len())].to_vec()),
        valid.prop_map(|v| v.as_bytes().to_vec()),
        junk,
    ]
}

#[derive(Debug, Clone)]
struct Hostile {
    method: String,
    path: String,
    headers: Vec<(usize, Vec<u8>)>,
}

fn hostile() -> impl Strategy<Value = Hostile> {
    let method = prop_oneof![
        Just("GET".to_owned()),
        Just("HEAD".to_owned()),
        Just("POST".to_owned()),
        "[A-Z]{1,8}",
        "[a-z!#$%&'*+.^_`|~-]{1,12}",
    ];
    let segment = prop_oneof![
        Just("users"),
        Just("42"),
        Just("metrics"),
        Just("%2F"),
        Just("%ff%fe"),
        Just(".."),
        Just("%C3%A9"),
        Just(""),
    ];
    let path = (
        proptest::collection::vec(segment, 0..4),
        proptest::option::of("[a-zA-Z0-9_=&%.+-]{0,40}"),
    )
        .prop_map(|(segments, query)| {
            let mut p = format!("/{}", segments.join("/"));
            if let Some(q) = query {
                p.push_str("?token=secret&");
                p.push_str(&q);
            }
            p
        });
    let headers = proptest::collection::vec((0..HEADERS.len(), value()), 0..10);
    (method, path, headers).prop_map(|(method, path, headers)| Hostile {
        method,
        path,
        headers,
    })
}

impl Hostile {
    /// The request, or `None` when `http` itself refuses what was drawn (a header value with
    /// a control byte, a path that is no URI): those never reach a service.
    fn request(&self) -> Option<Request<axum::body::Body>> {
        let mut req = Request::builder()
            .method(Method::from_bytes(self.method.as_bytes()).ok()?)
            .uri(self.path.parse::<http::Uri>().ok()?);
        for (name, value) in &self.headers {
            req = req.header(
                HeaderName::from_static(HEADERS[*name]),
                HeaderValue::from_bytes(value).ok()?,
            );
        }
        req.body(axum::body::Body::empty()).ok()
    }
}

fn routes() -> Router {
    Router::new().route("/", get(|| async { "ok" })).route(
        "/users/{id}",
        get(|| async { "user" }).post(|| async { "made" }),
    )
}

async fn answer(app: &Router, req: Request<axum::body::Body>) -> (http::response::Parts, Bytes) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._~:/+=@-".contains(c))
}

/// A runtime for the test's requests, and an OTLP receiver (on a thread of its own) with its
/// URL.
fn with_receiver() -> (tokio::runtime::Runtime, crate::trace::Receiver, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (spans, url) = rt.block_on(receiver(Mode::Accept));
    (rt, spans, url)
}

#[test]
fn whatever_a_client_sends_the_handler_answers() {
    let (rt, spans, url) = with_receiver();
    let tracing = exporting(url)
        .propagators(Propagators::new([
            Format::TraceContext,
            Format::Baggage,
            Format::B3,
            Format::B3Multi,
        ]))
        .traceresponse(true)
        .trust_forwarded_headers(true)
        .baggage_attribute("userId")
        .install();
    let lines = Lines::default();
    let (dispatch, log_guard) = towerscope::log::LogConfig::from_env("it")
        .format(towerscope::log::Format::Json)
        .filter("info")
        .tracing(&tracing)
        .dispatch_with_writer(lines.clone())
        .unwrap();
    let _default = tracing::dispatcher::set_default(&dispatch);
    let (recorder, prometheus) = towerscope::metrics::Prometheus::builder()
        .exemplars(true)
        .build();
    let red = towerscope::metrics::Red::builder()
        .recorder(Arc::new(recorder))
        .body_sizes(true)
        .build();
    let log = towerscope::log::RequestLog::builder()
        .trust_forwarded_headers(true)
        .log_query(true)
        .log_headers(true)
        .build();
    let bare = routes().merge(prometheus.router());
    let full = routes()
        .merge(prometheus.router())
        .layer(ObserveLayer::with_observer((red, tracing.observer(), log)));

    // Requests served, and those of them to `/metrics`, which the request log leaves out.
    let served = std::cell::Cell::new(0);
    let scrapes = std::cell::Cell::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&hostile(), |h| {
        let (Some(req), Some(same)) = (h.request(), h.request()) else {
            return Ok(());
        };
        served.set(served.get() + 1);
        let metrics = req.uri().path() == "/metrics";
        scrapes.set(scrapes.get() + usize::from(metrics));
        let ((want, want_body), (got, got_body)) =
            rt.block_on(async { (answer(&bare, same).await, answer(&full, req).await) });
        prop_assert_eq!(got.status, want.status, "{:?}", h);
        if !metrics {
            prop_assert_eq!(&got_body, &want_body, "{:?}", h);
        }
        let id = got.headers.get("x-request-id");
        prop_assert!(id.is_some_and(valid_request_id), "{:?} -> {:?}", h, id);
        if let Some(tr) = got.headers.get("traceresponse") {
            let tr = tr
                .to_str()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(
                tr.starts_with("00-") && TraceParent::parse(tr).is_some(),
                "{:?} -> {}",
                h,
                tr
            );
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    let served = served.get();
    assert!(
        served > 200,
        "only {served} of the drawn requests were valid HTTP"
    );

    // Every request one record, each line one JSON object.
    drop(_default);
    drop(log_guard);
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).expect("UTF-8 lines");
    let mut finished = 0;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["message"] == "request finished" {
            finished += 1;
            assert!(!line.contains("secret"), "a redacted value logged: {line}");
        }
    }
    assert_eq!(finished, served - scrapes.get(), "{text}");

    // Every span the exporter sent decoded, each server span with its method as specified.
    assert!(tracing.flush());
    let spans = rt.block_on(spans.wait_for(1));
    assert!(!spans.is_empty());
    for s in &spans {
        let known = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
            "_OTHER",
        ];
        let method = attr_str(s, "http.request.method");
        assert!(method.is_some_and(|m| known.contains(&m)), "{method:?}");
    }

    // Series bounded by templates, known methods and real statuses, whatever was sent.
    let metrics = prometheus.render();
    let count_lines = metrics
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
        .count();
    assert!(count_lines <= 10 * 3 * 4, "{metrics}");
}

/// A call's target as an application might build it: credentials, IPv6, explicit and default
/// ports, and sensitive query parameters however spelt (their values carry `s3cr3t`).
#[derive(Debug, Clone)]
struct Target {
    https: bool,
    userinfo: Option<&'static str>,
    host: &'static str,
    port: Option<u16>,
    path: String,
    query: Vec<(&'static str, bool)>,
    status: u16,
}

prop_compose! {
    fn target()(
        https in any::<bool>(),
        userinfo in proptest::option::of(prop::sample::select(vec!["user:pa55", "pa55", "u%40x:pa55"])),
        host in prop::sample::select(vec![
            "api.test",
            "API.Test",
            "127.0.0.1",
            "[::1]",
            "[2001:db8::7]",
            "xn--bcher-kva.test",
        ]),
        port in proptest::option::of(prop::sample::select(vec![80u16, 443, 8080, 65535])),
        path in "(/[a-z0-9%._~-]{0,8}){0,3}",
        query in proptest::collection::vec(
            prop::sample::select(vec![
                ("token", true),
                ("Password", true),
                ("%74oken", true),
                ("X-Amz-Signature", true),
                ("user[password]", true),
                ("sig", true),
                ("page", false),
                ("q", false),
            ]),
            0..5,
        ),
        status in 100u16..600,
    ) -> Target {
        Target { https, userinfo, host, port, path, query, status }
    }
}

impl Target {
    fn uri(&self) -> String {
        let mut u = format!("{}://", if self.https { "https" } else { "http" });
        if let Some(i) = self.userinfo {
            u.push_str(i);
            u.push('@');
        }
        u.push_str(self.host);
        if let Some(p) = self.port {
            u.push_str(&format!(":{p}"));
        }
        u.push_str(if self.path.is_empty() {
            "/"
        } else {
            &self.path
        });
        for (i, (name, sensitive)) in self.query.iter().enumerate() {
            u.push(if i == 0 { '?' } else { '&' });
            let value = if *sensitive { "s3cr3t" } else { "shown" };
            u.push_str(&format!("{name}={value}"));
        }
        u
    }

    /// `server.address` as the semantic conventions write it: IPv6 without brackets.
    fn address(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    fn port(&self) -> u16 {
        self.port.unwrap_or(if self.https { 443 } else { 80 })
    }
}

#[test]
fn any_call_target_keeps_its_answer_and_its_secrets() {
    let (rt, spans, url) = with_receiver();
    let tracing = exporting(url).install();
    let (recorder, prometheus) = towerscope::metrics::Prometheus::builder().build();
    let sent = Arc::new(std::sync::Mutex::new(http::HeaderMap::new()));
    let seen = sent.clone();
    let inner = tower::service_fn(move |req: Request<()>| {
        *seen.lock().unwrap() = req.headers().clone();
        let status: u16 = req.headers()["x-answer"].to_str().unwrap().parse().unwrap();
        async move {
            Ok::<_, std::io::Error>(http::Response::builder().status(status).body(()).unwrap())
        }
    });
    let client = tower::Layer::layer(&tracing.client_layer(), inner);

    let calls = std::cell::RefCell::new(Vec::new());
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&target(), |t| {
        let uri = t.uri();
        let req = Request::get(&uri)
            .header("x-answer", t.status.to_string())
            .body(())
            .map_err(|e| TestCaseError::fail(format!("{uri}: {e}")))?;
        let res = metrics::with_local_recorder(&recorder, || {
            crate::support::block_on(client.clone().oneshot(req))
        })
        .unwrap();
        prop_assert_eq!(res.status().as_u16(), t.status);
        let headers = sent.lock().unwrap().clone();
        let tp = headers.get("traceparent").and_then(|v| v.to_str().ok());
        prop_assert!(
            tp.and_then(TraceParent::parse).is_some(),
            "{} -> {:?}",
            uri,
            tp
        );
        // The client span's id, as sent.
        let span_id = tp.unwrap_or_default()[36..52].to_owned();
        calls.borrow_mut().push((span_id, t));
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }

    assert!(tracing.flush());
    let calls = calls.into_inner();
    let spans = rt.block_on(spans.wait_for(calls.len()));
    assert_eq!(spans.len(), calls.len());
    // Each call's span, found by the id its `traceparent` carried.
    for (id, t) in &calls {
        let s = spans
            .iter()
            .find(|s| hex(&s.span_id) == *id)
            .unwrap_or_else(|| panic!("no span {id} for {}", t.uri()));
        let full = attr_str(s, "url.full").unwrap_or_else(|| panic!("no url.full: {s:?}"));
        assert!(
            !full.contains("s3cr3t") && !full.contains("pa55"),
            "{} -> {full}",
            t.uri()
        );
        assert_eq!(
            full.contains("REDACTED:REDACTED@"),
            t.userinfo.is_some(),
            "{full}"
        );
        assert_eq!(
            attr_str(s, "server.address"),
            Some(t.address()),
            "{}",
            t.uri()
        );
        assert_eq!(
            attr_int(s, "server.port"),
            Some(i64::from(t.port())),
            "{}",
            t.uri()
        );
        assert_eq!(
            attr_int(s, "http.response.status_code"),
            Some(i64::from(t.status)),
            "{}",
            t.uri()
        );
    }
    let metrics = prometheus.render();
    assert!(
        !metrics.contains("pa55") && !metrics.contains('['),
        "{metrics}"
    );
}
