use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use opentelemetry_sdk::Resource;
use prost::Message;

use super::{parse_headers, Encoder, OtlpSettings, TlsFiles};
use crate::trace::export::Item;
use crate::trace::Compression;

/// What `opentelemetry-otlp` sends for these spans: `opentelemetry-proto`'s own conversion.
fn reference(spans: &[SpanData], resource: &Resource) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(
            spans.to_vec(),
            &ResourceAttributesWithSchema::from(resource),
        ),
    }
}

fn ours(enc: &mut Encoder, spans: &[SpanData]) -> ExportTraceServiceRequest {
    let mut out = Vec::new();
    enc.encode(&items(spans), &mut out);
    ExportTraceServiceRequest::decode(out.as_slice()).expect("our bytes decode")
}

pub(crate) fn items(spans: &[SpanData]) -> Vec<Item> {
    spans
        .iter()
        .cloned()
        .map(|s| Item::Sdk(Box::new(s)))
        .collect()
}

/// Random span parts for encoding tests.
pub(crate) struct Gen(pub(crate) fastrand::Rng);

impl Gen {
    pub(crate) fn text(&mut self) -> String {
        let pick = ["", "a", "http.route", "/users/{id}", "ünïcødé ✓", "x\"\n\\"];
        let mut s = pick[self.0.usize(..pick.len())].to_owned();
        if self.0.u8(..8) == 0 {
            s.push_str(&"long".repeat(self.0.usize(..80)));
        }
        s
    }

    pub(crate) fn value(&mut self, depth: u8) -> Value {
        match self.0.u8(..if depth == 0 { 5 } else { 4 }) {
            0 => Value::Bool(self.0.bool()),
            1 => Value::I64(match self.0.u8(..4) {
                0 => 0,
                1 => -1,
                2 => i64::MIN,
                _ => self.0.i64(..),
            }),
            2 => Value::F64(match self.0.u8(..3) {
                0 => 0.0,
                1 => -0.5,
                _ => self.0.f64() * 1e9,
            }),
            3 => Value::String(self.text().into()),
            _ => Value::Array(match self.0.u8(..4) {
                0 => Array::Bool((0..self.0.usize(..4)).map(|_| self.0.bool()).collect()),
                1 => Array::I64((0..self.0.usize(..4)).map(|_| self.0.i64(..)).collect()),
                2 => Array::F64((0..self.0.usize(..4)).map(|_| self.0.f64()).collect()),
                _ => Array::String(
                    (0..self.0.usize(..4))
                        .map(|_| StringValue::from(self.text()))
                        .collect(),
                ),
            }),
        }
    }

    pub(crate) fn attrs(&mut self) -> Vec<KeyValue> {
        (0..self.0.usize(..6))
            .map(|_| KeyValue::new(self.text(), self.value(0)))
            .collect()
    }

    pub(crate) fn context(&mut self, remote: bool) -> SpanContext {
        let state = match self.0.u8(..3) {
            0 => TraceState::default(),
            1 => TraceState::from_key_value([("rojo", "00f067aa0ba902b7")]).unwrap(),
            _ => TraceState::from_key_value([("a", "1"), ("b@vendor", "x y")]).unwrap(),
        };
        SpanContext::new(
            TraceId::from_bytes(self.0.u128(1..).to_be_bytes()),
            SpanId::from_bytes(self.0.u64(1..).to_be_bytes()),
            TraceFlags::new(self.0.u8(..2)),
            remote,
            state,
        )
    }

    pub(crate) fn events(&mut self) -> SpanEvents {
        let mut e = SpanEvents::default();
        e.events = (0..self.0.usize(..3))
            .map(|_| {
                Event::new(
                    self.text(),
                    UNIX_EPOCH + Duration::from_nanos(self.0.u64(..1 << 62)),
                    self.attrs(),
                    self.0.u32(..2),
                )
            })
            .collect();
        e.dropped_count = self.0.u32(..2);
        e
    }

    pub(crate) fn links(&mut self) -> SpanLinks {
        let mut l = SpanLinks::default();
        l.links = (0..self.0.usize(..3))
            .map(|_| {
                let remote = self.0.bool();
                let mut link = Link::new(self.context(remote), self.attrs(), 0);
                link.dropped_attributes_count = self.0.u32(..2);
                link
            })
            .collect();
        l.dropped_count = self.0.u32(..2);
        l
    }

    pub(crate) fn span(&mut self, scopes: &[InstrumentationScope]) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_nanos(self.0.u64(..1 << 62));
        let kinds = [
            SpanKind::Internal,
            SpanKind::Server,
            SpanKind::Client,
            SpanKind::Producer,
            SpanKind::Consumer,
        ];
        SpanData {
            span_context: self.context(false),
            parent_span_id: if self.0.bool() {
                SpanId::INVALID
            } else {
                SpanId::from_bytes(self.0.u64(1..).to_be_bytes())
            },
            parent_span_is_remote: self.0.bool(),
            span_kind: kinds[self.0.usize(..kinds.len())].clone(),
            name: Cow::Owned(self.text()),
            start_time: start,
            end_time: start + Duration::from_nanos(self.0.u64(..1_000_000_000)),
            attributes: self.attrs(),
            dropped_attributes_count: self.0.u32(..3),
            events: self.events(),
            links: self.links(),
            status: match self.0.u8(..4) {
                0 => Status::Unset,
                1 => Status::Ok,
                2 => Status::error(""),
                _ => Status::error(self.text()),
            },
            instrumentation_scope: scopes[self.0.usize(..scopes.len())].clone(),
        }
    }
}

pub(crate) fn scopes() -> Vec<InstrumentationScope> {
    vec![
        InstrumentationScope::builder("towerscope").build(),
        InstrumentationScope::builder("tracing-opentelemetry")
            .with_version("0.34.0")
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .with_attributes([KeyValue::new("scope.attr", 7)])
            .build(),
        InstrumentationScope::builder("").build(),
    ]
}

/// The request we write decodes to exactly the message `opentelemetry-proto` builds from the
/// same spans: every field, kind, flag, status, event, link, attribute value type, several
/// scopes, and a resource with a schema URL; batches of random spans, through one encoder
/// (its reused buffers must not leak one batch into the next).
#[test]
fn the_request_is_the_one_opentelemetry_proto_builds() {
    let mut g = Gen(fastrand::Rng::with_seed(5));
    let scopes = scopes();
    for resource in [
        Resource::builder_empty().build(),
        Resource::builder()
            .with_service_name("svc")
            .with_attribute(KeyValue::new("deployment.environment.name", "test"))
            .with_attribute(KeyValue::new("host.cpus", 2))
            .with_schema_url(
                [KeyValue::new("k", "v")],
                "https://opentelemetry.io/schemas/1.30.0",
            )
            .build(),
    ] {
        let mut enc = Encoder::new(scopes[0].clone());
        enc.set_resource(&resource);
        for round in 0..300 {
            let n = if round % 50 == 0 { 0 } else { g.0.usize(1..12) };
            let spans: Vec<SpanData> = (0..n).map(|_| g.span(&scopes)).collect();
            assert_eq!(
                ours(&mut enc, &spans),
                reference(&spans, &resource),
                "round {round}"
            );
        }
    }
}

/// The exact bytes of a small request, so that an encoding both sides would accept but the
/// wire does not use (a non-minimal varint, a zero written out) is caught too.
#[test]
fn the_bytes_are_prosts() {
    let mut g = Gen(fastrand::Rng::with_seed(9));
    let scopes = scopes();
    let resource = Resource::builder().with_service_name("svc").build();
    let mut enc = Encoder::new(scopes[0].clone());
    enc.set_resource(&resource);
    for _ in 0..200 {
        let spans: Vec<SpanData> = (0..g.0.usize(1..4)).map(|_| g.span(&scopes[..2])).collect();
        let mut out = Vec::new();
        enc.encode(&items(&spans), &mut out);
        assert_eq!(out, reference(&spans, &resource).encode_to_vec());
    }
}

/// Settings for a test collector at `addr`, over plain HTTP.
fn plain_http(addr: std::net::SocketAddr, compression: Compression) -> OtlpSettings {
    OtlpSettings {
        endpoint: format!("http://{addr}/v1/traces"),
        headers: Vec::new(),
        timeout: Duration::from_secs(5),
        tls: TlsFiles::default(),
        compression,
    }
}

/// Each export posts what the encoder wrote, and the body's buffer is kept from batch to batch:
/// the connection has let go of it by the time the post returns.
#[test]
fn exports_post_the_encoded_batch_and_keep_the_buffer() {
    use crate::trace::export::Export;
    let mut g = Gen(fastrand::Rng::with_seed(13));
    let scopes = scopes();
    let resource = Resource::builder().with_service_name("svc").build();
    let (addr, collector) = super::transport::tests::collector(3);
    let settings = plain_http(addr, Compression::None);
    let mut exporter = super::OtlpExporter::new(settings, &resource, scopes[0].clone()).unwrap();
    let mut sent = Vec::new();
    let mut buffers = Vec::new();
    for _ in 0..3 {
        let spans: Vec<SpanData> = (0..4).map(|_| g.span(&scopes[..2])).collect();
        exporter.export(&items(&spans)).unwrap();
        sent.push(reference(&spans, &resource).encode_to_vec());
        assert!(exporter.body.capacity() > 0, "the buffer came back");
        buffers.push(exporter.body.as_ptr());
    }
    assert!(
        buffers.windows(2).all(|w| w[0] == w[1]),
        "one buffer for every batch"
    );
    let got: Vec<Vec<u8>> = collector
        .join()
        .unwrap()
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(got, sent);
}

/// With gzip, each export posts the encoded batch gzipped, with `Content-Encoding: gzip`, and
/// the buffers are kept from batch to batch as without.
#[test]
fn gzip_exports_post_the_encoded_batch_compressed() {
    use crate::trace::export::Export;
    use std::io::Read;
    let mut g = Gen(fastrand::Rng::with_seed(17));
    let scopes = scopes();
    let resource = Resource::builder().with_service_name("svc").build();
    let (addr, collector) = super::transport::tests::collector(2);
    let settings = OtlpSettings {
        headers: vec![("Content-Encoding".into(), "identity".into())],
        ..plain_http(addr, Compression::Gzip)
    };
    let mut exporter = super::OtlpExporter::new(settings, &resource, scopes[0].clone()).unwrap();
    let mut sent = Vec::new();
    for _ in 0..2 {
        let spans: Vec<SpanData> = (0..50).map(|_| g.span(&scopes[..2])).collect();
        exporter.export(&items(&spans)).unwrap();
        sent.push(reference(&spans, &resource).encode_to_vec());
    }
    for ((head, body), plain) in collector.join().unwrap().into_iter().zip(&sent) {
        assert_eq!(
            head.matches("content-encoding:").count(),
            1,
            "one encoding header: {head}"
        );
        assert!(head.contains("content-encoding: gzip"), "{head}");
        assert!(
            body.len() < plain.len() / 2,
            "{} of {}",
            body.len(),
            plain.len()
        );
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(&unzipped, plain);
    }
}

/// Retries as by default, but the first after a millisecond.
fn quick_retries() -> super::Retry {
    super::Retry {
        first: Duration::from_millis(1),
        ..super::Retry::default()
    }
}

/// Posts a request of our own (`POST /own`) to a scripted collector, to take the answer left
/// for a send too many: the collector's list of requests then shows whether one came.
fn take_the_rest(addr: std::net::SocketAddr) {
    use std::io::{Read, Write};
    let mut own = std::net::TcpStream::connect(addr).unwrap();
    own.write_all(b"POST /own HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
        .unwrap();
    let _ = own.read_to_end(&mut Vec::new());
}

/// OTLP/HTTP's transient failures (429, 502, 503, 504) are sent again, after the collector's
/// `Retry-After` or a backoff, up to the attempts allowed; a permanent refusal, or a wait
/// longer than allowed, is not. Every send carries the same body.
#[test]
fn transient_failures_are_retried_and_permanent_ones_are_not() {
    use super::transport::tests::{scripted, OK};
    use crate::trace::export::Export;
    const UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
    const NOW: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-length: 0\r\n\r\n";
    const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n";
    const BAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
    const LATER: &[u8] =
        b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3600\r\ncontent-length: 0\r\n\r\n";
    // An HTTP-date an hour ahead: as `LATER`, too long to wait.
    let later_date: &'static [u8] = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: {}\r\ncontent-length: 0\r\n\r\n",
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600))
    )
    .leak()
    .as_bytes();
    let mut g = Gen(fastrand::Rng::with_seed(19));
    let scopes = scopes();
    let resource = Resource::builder().with_service_name("svc").build();
    for (mut answers, delivered) in [
        (vec![UNAVAILABLE, NOW, BAD_GATEWAY, OK], true),
        (
            vec![UNAVAILABLE, UNAVAILABLE, UNAVAILABLE, UNAVAILABLE],
            false,
        ),
        (vec![BAD], false),
        (vec![LATER], false),
        (vec![later_date], false),
    ] {
        let sends = answers.len();
        if !delivered {
            // One more send than allowed would be answered 200 and delivered.
            answers.push(OK);
        }
        let (addr, collector) = scripted(answers);
        let settings = plain_http(addr, Compression::None);
        let mut exporter =
            super::OtlpExporter::new(settings, &resource, scopes[0].clone()).unwrap();
        exporter.retry = quick_retries();
        let spans: Vec<SpanData> = (0..3).map(|_| g.span(&scopes[..2])).collect();
        let result = exporter.export(&items(&spans));
        assert_eq!(result.is_ok(), delivered, "{sends} sends: {result:?}");
        if !delivered {
            take_the_rest(addr);
        }
        let mut seen = collector.join().unwrap();
        if !delivered {
            let (head, _) = seen.pop().unwrap();
            assert!(head.starts_with("post /own "), "a send too many: {head}");
        }
        assert_eq!(seen.len(), sends);
        let body = reference(&spans, &resource).encode_to_vec();
        assert!(
            seen.iter().all(|(_, b)| *b == body),
            "the same body every time"
        );
    }
}

/// A connection TLS refuses (here: a collector that asks for a client certificate the exporter
/// does not have) is not sent again within the export; the next export tries afresh. The
/// collector takes two connections: a retry would take the second, and the export after it
/// (with a certificate) would find no collector.
#[cfg(feature = "tls")]
#[test]
fn a_refused_connection_is_not_sent_again() {
    use super::transport::tests::{fixture, tls_collector_with};
    use crate::trace::export::Export;
    let mut g = Gen(fastrand::Rng::with_seed(23));
    let scopes = scopes();
    let resource = Resource::builder().with_service_name("svc").build();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let collector = tls_collector_with(listener, 2, true);
    let settings = |client| OtlpSettings {
        endpoint: format!("https://localhost:{port}/v1/traces"),
        headers: Vec::new(),
        timeout: Duration::from_secs(5),
        tls: TlsFiles {
            ca: Some(fixture("ca.pem")),
            client,
        },
        compression: Compression::None,
    };
    let spans: Vec<SpanData> = (0..3).map(|_| g.span(&scopes[..2])).collect();
    let mut without =
        super::OtlpExporter::new(settings(None), &resource, scopes[0].clone()).unwrap();
    without.retry = quick_retries();
    let refused = without.export(&items(&spans)).unwrap_err();
    assert!(refused.to_string().contains("OTLP export"), "{refused}");
    let client = Some((fixture("client.pem"), fixture("client.key")));
    let mut with =
        super::OtlpExporter::new(settings(client), &resource, scopes[0].clone()).unwrap();
    with.export(&items(&spans)).unwrap();
    let seen = collector.join().unwrap();
    assert!(seen[0].is_err(), "the first connection refused");
    let body = reference(&spans, &resource).encode_to_vec();
    assert_eq!(seen[1].as_ref().map(|(_, b)| b.clone()), Ok(body));
}

/// The retry settings set in code reach the exporter: with one attempt, or with no time for a
/// retry within the batch's export timeout, a batch the collector answers 503 is not sent
/// again. The collector answers a second request 200: a second send would take it, and the
/// request of our own after the export would find no collector.
#[test]
fn the_retry_settings_set_in_code_reach_the_exporter() {
    use super::transport::tests::{scripted, OK};
    use crate::trace::TraceConfig;
    use opentelemetry::trace::{Span as _, Tracer as _};
    const UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
    let settings: [fn(TraceConfig) -> TraceConfig; 2] = [
        |c| c.export_attempts(1),
        |c| c.batch_export_timeout(Duration::ZERO),
    ];
    for (i, set) in settings.into_iter().enumerate() {
        let (addr, collector) = scripted(vec![UNAVAILABLE, OK]);
        let config = TraceConfig::from_env("retries")
            .endpoint(format!("http://{addr}/v1/traces"))
            .exporter(crate::trace::Exporter::Otlp)
            .export_backoff(Duration::from_millis(1), Duration::from_secs(5));
        let tracing = set(config).install();
        tracing.tracer().start("one").end();
        // Returns once the export is over, failed or not.
        let _ = tracing.flush();
        take_the_rest(addr);
        let seen = collector.join().unwrap();
        assert!(
            seen[0].0.starts_with("post /v1/traces "),
            "{i}: {}",
            seen[0].0
        );
        assert!(
            seen[1].0.starts_with("post /own "),
            "{i}: a second send: {}",
            seen[1].0
        );
        tracing.shutdown(Duration::from_secs(1));
    }
}

/// A collector's partial success (OTLP/HTTP: 200 with `partial_success` set) is read from the
/// answer: how many spans it refused and why; an empty answer, or a `partial_success` with
/// neither, is a plain success; an answer that is not protobuf is not misread.
#[test]
fn the_collector_s_partial_success_is_read() {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceResponse,
    };
    let answer = |rejected_spans, error_message: &str| {
        ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans,
                error_message: error_message.to_owned(),
            }),
        }
        .encode_to_vec()
    };
    let refused = |spans, message: &str| {
        Some(crate::trace::export::Refused {
            spans,
            message: message.to_owned(),
        })
    };
    assert_eq!(
        super::partial_success(&answer(2, "spans too old")),
        refused(2, "spans too old")
    );
    assert_eq!(
        super::partial_success(&answer(0, "deprecated attribute")),
        refused(0, "deprecated attribute")
    );
    assert_eq!(super::partial_success(&answer(0, "")), None);
    assert_eq!(super::partial_success(&[]), None);
    assert_eq!(super::partial_success(b"{\"partialSuccess\":{}}"), None);

    // Through the exporter: a 200 with a partial success, then a plain 200.
    use crate::trace::export::Export;
    let body = answer(3, "spans too old");
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let partial: &'static [u8] = [head.as_bytes(), &body].concat().leak();
    let (addr, collector) =
        super::transport::tests::scripted(vec![partial, super::transport::tests::OK]);
    let mut g = Gen(fastrand::Rng::with_seed(29));
    let scopes = scopes();
    let resource = Resource::builder().with_service_name("svc").build();
    let settings = plain_http(addr, Compression::None);
    let mut exporter = super::OtlpExporter::new(settings, &resource, scopes[0].clone()).unwrap();
    let spans: Vec<SpanData> = (0..4).map(|_| g.span(&scopes[..2])).collect();
    assert_eq!(
        exporter.export(&items(&spans)).unwrap(),
        refused(3, "spans too old")
    );
    assert_eq!(exporter.export(&items(&spans)).unwrap(), None);
    assert_eq!(collector.join().unwrap().len(), 2, "not sent again");
}

/// The collector's redirections are followed with the same body: a temporary one (307) for
/// the batch at hand only, a permanent one (308) for later batches too; a relative `Location`
/// against the endpoint; a loop of redirections ends after five, as a failure.
#[test]
fn redirections_are_followed() {
    use super::transport::tests::{redirect, scripted, OK};
    use crate::trace::export::Export;
    let mut g = Gen(fastrand::Rng::with_seed(31));
    let scopes = scopes();
    let resource = Resource::builder().with_service_name("svc").build();
    let spans: Vec<SpanData> = (0..3).map(|_| g.span(&scopes[..2])).collect();
    let body = reference(&spans, &resource).encode_to_vec();
    let exporter = |addr| {
        super::OtlpExporter::new(
            plain_http(addr, Compression::None),
            &resource,
            scopes[0].clone(),
        )
        .unwrap()
    };
    for (status, first_sees) in [("307 Temporary Redirect", 2), ("308 Permanent Redirect", 1)] {
        let (b, b_seen) = scripted(vec![OK, OK]);
        let to = redirect(status, &format!("http://{b}/v1/traces"));
        let (a, a_seen) = scripted(vec![to; first_sees]);
        let mut e = exporter(a);
        e.export(&items(&spans)).unwrap();
        e.export(&items(&spans)).unwrap();
        let (a_seen, b_seen) = (a_seen.join().unwrap(), b_seen.join().unwrap());
        assert_eq!(a_seen.len(), first_sees, "{status}");
        assert!(
            a_seen.iter().chain(&b_seen).all(|(_, b)| *b == body),
            "{status}: the same body"
        );
    }
    let (a, seen) = scripted(vec![redirect("307 Temporary Redirect", "/v2/traces"), OK]);
    exporter(a).export(&items(&spans)).unwrap();
    let seen = seen.join().unwrap();
    assert!(seen[1].0.starts_with("post /v2/traces "), "{}", seen[1].0);

    // The configured headers follow to the same host, not to another one.
    let (b, b_seen) = scripted(vec![OK]);
    let elsewhere = redirect(
        "307 Temporary Redirect",
        &format!("http://localhost:{}/v1/traces", b.port()),
    );
    let (a, a_seen) = scripted(vec![
        redirect("307 Temporary Redirect", "/v2/traces"),
        elsewhere,
    ]);
    let settings = OtlpSettings {
        headers: vec![("x-api-key".into(), "secret".into())],
        ..plain_http(a, Compression::None)
    };
    super::OtlpExporter::new(settings, &resource, scopes[0].clone())
        .unwrap()
        .export(&items(&spans))
        .unwrap();
    let a_seen = a_seen.join().unwrap();
    assert!(
        a_seen.iter().all(|(h, _)| h.contains("x-api-key: secret")),
        "{a_seen:?}"
    );
    let (head, got) = &b_seen.join().unwrap()[0];
    assert!(!head.contains("x-api-key"), "{head}");
    assert_eq!(*got, body);

    // A collector that redirects to itself: six answers, one post and five redirections.
    let (a, seen) = scripted(vec![redirect("307 Temporary Redirect", "/v1/traces"); 6]);
    let mut e = exporter(a);
    e.retry.attempts = 1;
    let failed = e.export(&items(&spans)).unwrap_err();
    assert!(failed.to_string().contains("307"), "{failed}");
    assert_eq!(seen.join().unwrap().len(), 6);
}

/// Lengths whose varints take 1, 2, 3 and 4 bytes, at every level: spans under 128 bytes and
/// past 16 KiB, a batch past 2 MiB (each length is written in place after a guessed room for
/// its varint, and moved when the guess was wrong).
#[test]
fn every_length_size_is_written_minimally() {
    let mut g = Gen(fastrand::Rng::with_seed(13));
    let scopes = scopes();
    let resource = Resource::builder().with_service_name("svc").build();
    let mut enc = Encoder::new(scopes[0].clone());
    enc.set_resource(&resource);
    let sized = |g: &mut Gen, extra: usize| {
        let mut s = g.span(&scopes[..2]);
        s.attributes.clear();
        s.events = SpanEvents::default();
        s.links = SpanLinks::default();
        if extra > 0 {
            s.attributes.push(KeyValue::new("big", "x".repeat(extra)));
        }
        s
    };
    for extras in [
        vec![0],
        vec![0, 40, 16_300, 16_500],
        vec![1 << 20, 1 << 20, 300],
    ] {
        let spans: Vec<SpanData> = extras.iter().map(|&e| sized(&mut g, e)).collect();
        let mut out = Vec::new();
        enc.encode(&items(&spans), &mut out);
        assert_eq!(
            out,
            reference(&spans, &resource).encode_to_vec(),
            "{extras:?}"
        );
    }
}

#[test]
fn endpoint_headers_and_timeout_from_code_and_environment() {
    let tls = TlsFiles {
        ca: Some("/etc/collector-ca.pem".into()),
        client: Some(("/etc/exporter.pem".into(), "/etc/exporter.key".into())),
    };
    let s = OtlpSettings::resolve(
        Some("http://127.0.0.1:4318/v1/traces"),
        &[("x-tenant".into(), "a".into())],
        Some(Duration::from_millis(1500)),
        &tls,
        Some(Compression::Gzip),
    )
    .unwrap();
    assert_eq!(s.compression, Compression::Gzip);
    assert_eq!(s.tls, tls);
    assert_eq!(s.endpoint, "http://127.0.0.1:4318/v1/traces");
    assert_eq!(s.headers, vec![("x-tenant".to_owned(), "a".to_owned())]);
    assert_eq!(s.timeout, Duration::from_millis(1500));
    assert_eq!(
        parse_headers("api-key=abc%3D%3D, x-b = two words ,bad,=x"),
        vec![
            ("api-key".to_owned(), "abc==".to_owned()),
            ("x-b".to_owned(), "two words".to_owned())
        ]
    );
}

/// What the exporter does not support is reported, not silently ignored.
#[test]
fn unsupported_protocols_and_compression_are_reported() {
    use crate::trace::config::unsupported_export_settings;
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    assert!(unsupported_export_settings(env(&[])).is_empty());
    // Timeouts and headers that cannot be read; header values never repeated.
    let w = unsupported_export_settings(env(&[
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "api-key=s3cr3t,broken,=x,ok=%zz,",
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=t1"),
    ]));
    assert_eq!(
        w,
        vec![
            "OTEL_EXPORTER_OTLP_TIMEOUT=10s: not a whole number of milliseconds, using 10000",
            "OTEL_EXPORTER_OTLP_HEADERS: 3 pair(s) not `key=value` (percent-encoded) skipped",
        ]
    );
    assert!(unsupported_export_settings(env(&[
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", " 2500 "),
        ("OTEL_EXPORTER_OTLP_HEADERS", "a=1, b = 2 ,c=%20"),
    ]))
    .is_empty());
    assert!(unsupported_export_settings(env(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
    ]))
    .is_empty());
    let w = unsupported_export_settings(env(&[
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
    ]));
    assert_eq!(
        w,
        vec![
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc: unsupported, using http/protobuf",
            "OTEL_EXPORTER_OTLP_COMPRESSION=zstd: unsupported, sending uncompressed",
        ]
    );
    let w = unsupported_export_settings(env(&[
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/key.pem"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
    ]));
    let expected = if cfg!(feature = "tls") {
        vec![
            "OTEL_EXPORTER_OTLP_CLIENT_KEY without its pair (certificate and key): no client \
             certificate is sent",
        ]
    } else {
        vec![
            "OTEL_EXPORTER_OTLP_CERTIFICATE: https:// needs towerscope's `otlp-tls` feature, not built in",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY: https:// needs towerscope's `otlp-tls` feature, not built in",
        ]
    };
    assert_eq!(w, expected);
}
