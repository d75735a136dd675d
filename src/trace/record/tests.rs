use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use http::{Method, Version};
use opentelemetry::trace::{Span as _, SpanContext, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanLimits, SpanProcessor};
use opentelemetry_sdk::Resource;

use super::{RequestAttrs, ServerRecord, ServerSpan};
use crate::lifecycle::KnownMethod;
use crate::trace::export::{Export, ExportCounters, Exported, Item, QueueProcessor, QueueSettings};
use crate::trace::otlp::tests::{scopes, Gen};
use crate::trace::otlp::Encoder;

fn request(g: &mut Gen) -> RequestAttrs {
    let methods = [KnownMethod::Get, KnownMethod::Post, KnownMethod::Other];
    let method = methods[g.0.usize(..methods.len())];
    let mut a = RequestAttrs {
        method,
        method_original: (method == KnownMethod::Other)
            .then(|| Method::from_bytes(b"PURGE").unwrap()),
        path: ["", "/users/7", "/search"][g.0.usize(..3)].to_owned(),
        https: g.0.bool(),
        query: g.0.bool().then(|| "q=x&token=REDACTED".to_owned()),
        route: g
            .0
            .bool()
            .then(|| Value::from(Arc::<str>::from("/users/{id}"))),
        client: match g.0.u8(..3) {
            0 => None,
            1 => Some(IpAddr::from([203, 0, 113, 9])),
            _ => Some("2001:db8::1".parse().unwrap()),
        },
        version: [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][g.0.usize(..3)],
        baggage: if g.0.bool() {
            vec![KeyValue::new("baggage.tenant", "acme")]
        } else {
            Vec::new()
        },
        ..RequestAttrs::default()
    };
    a.set_host(
        [
            None,
            Some("api.test:81"),
            Some("example.org"),
            Some("[::1]:3000"),
            Some("bad:port"),
        ][g.0.usize(..5)],
    );
    a.set_user_agent(g.0.bool().then_some("curl/8.0 \"quoted\""));
    a
}

fn record(g: &mut Gen) -> ServerRecord {
    let start = UNIX_EPOCH + Duration::from_nanos(g.0.u64(..1 << 62));
    let parent = g.0.bool();
    ServerRecord {
        span_context: g.context(false),
        parent_span_id: if parent {
            opentelemetry::trace::SpanId::from_bytes(g.0.u64(1..).to_be_bytes())
        } else {
            opentelemetry::trace::SpanId::INVALID
        },
        parent_span_is_remote: parent,
        name: Cow::Owned(g.text()),
        start_time: start,
        end_time: start + Duration::from_nanos(g.0.u64(..1_000_000)),
        request: request(g),
        extra: g.attrs(),
        dropped_attributes_count: g.0.u32(..2),
        status_code: g.0.bool().then(|| g.0.i64(100..600)),
        error_type: g.0.bool().then(|| Value::from("503")),
        cancelled: g.0.bool().then_some(true),
        events: g.events(),
        links: g.links(),
        status: match g.0.u8(..3) {
            0 => Status::Unset,
            1 => Status::Ok,
            _ => Status::error(""),
        },
    }
}

/// A server record written directly is byte for byte the SDK span it stands for (whose
/// encoding the OTLP tests hold to `opentelemetry-proto`'s), alone and in batches mixed with
/// SDK spans of the same and other scopes.
#[test]
fn a_server_record_is_written_as_its_span_data() {
    let mut g = Gen(fastrand::Rng::with_seed(21));
    let scopes = scopes();
    let resource = Resource::builder().with_service_name("svc").build();
    let mut direct = Encoder::new(scopes[0].clone());
    direct.set_resource(&resource);
    let mut via_sdk = Encoder::new(scopes[0].clone());
    via_sdk.set_resource(&resource);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let batch: Vec<Item> = (0..g.0.usize(1..6))
            .map(|_| {
                if g.0.bool() {
                    Item::Server(Box::new(record(&mut g)))
                } else {
                    Item::Sdk(Box::new(g.span(&scopes)))
                }
            })
            .collect();
        let as_sdk: Vec<Item> = batch
            .iter()
            .map(|i| match i {
                Item::Sdk(s) => Item::Sdk(s.clone()),
                Item::Server(r) => Item::Sdk(Box::new(r.to_span_data(&scopes[0]))),
            })
            .collect();
        direct.encode(&batch, &mut a);
        via_sdk.encode(&as_sdk, &mut b);
        assert_eq!(a, b);
    }
}

/// Keeps what the export thread is given.
struct Capture(Arc<Mutex<Vec<ServerRecord>>>);

impl Export for Capture {
    fn export(&mut self, batch: &[Item]) -> Exported {
        let mut got = self.0.lock().unwrap();
        for i in batch {
            if let Item::Server(r) = i {
                got.push((**r).clone());
            }
        }
        Ok(None)
    }
}

fn pipeline() -> (QueueProcessor, Arc<Mutex<Vec<ServerRecord>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let p = QueueProcessor::new(
        Capture(got.clone()),
        QueueSettings {
            max_queue: 16,
            max_batch: 16,
            delay: Duration::from_millis(5),
        },
        ExportCounters::register(),
    );
    (p, got)
}

/// Through the OpenTelemetry `Span` API (what a handler reaches with
/// `Context::current().span()`), the server span behaves as the SDK's: attributes kept in
/// order (the response's typed), status only raised (Ok > Error > Unset), name updated,
/// events and links kept; nothing changes once ended; a span dropped unended is ended.
#[test]
fn the_span_api_acts_on_the_record() {
    let (p, got) = pipeline();
    let mut g = Gen(fastrand::Rng::with_seed(3));
    let mut r = record(&mut g);
    r.span_context = SpanContext::new(
        r.span_context.trace_id(),
        r.span_context.span_id(),
        opentelemetry::trace::TraceFlags::SAMPLED,
        false,
        Default::default(),
    );
    r.extra.clear();
    r.events = Default::default();
    r.links = Default::default();
    r.status = Status::Unset;
    r.status_code = None;
    let started = std::time::SystemTime::now();
    r.start_time = started;
    // Limits as the SDK reads them (`OTEL_SPAN_*_LIMIT`), small: one attribute beyond the
    // request's and the response's, one event, one link.
    let limits = SpanLimits {
        max_attributes_per_span: (r.typed_count() + 1) as u32,
        max_events_per_span: 1,
        max_links_per_span: 1,
        max_attributes_per_event: 1,
        max_attributes_per_link: 128,
    };
    let cx = Context::new().with_span(ServerSpan::new(Box::new(r.clone()), p.handle(), limits));
    let span = cx.span();
    assert!(span.is_recording());
    span.set_attribute(KeyValue::new("tenant", "acme"));
    span.set_attribute(KeyValue::new("over", "the limit"));
    span.set_attribute(KeyValue::new("http.response.status_code", 503_i64));
    span.set_status(Status::error("boom"));
    span.set_status(Status::Unset);
    span.update_name("renamed");
    span.add_event(
        "retry",
        vec![KeyValue::new("attempt", 2_i64), KeyValue::new("cut", true)],
    );
    span.add_event("over the limit", vec![]);
    span.add_link(r.span_context.clone(), vec![]);
    span.add_link(r.span_context.clone(), vec![]);
    span.end();
    assert!(!span.is_recording());
    span.set_attribute(KeyValue::new("late", true));
    span.set_status(Status::Ok);
    drop(cx);
    // Never ended: ended when dropped.
    let mut r2 = r.clone();
    r2.name = Cow::Borrowed("dropped");
    drop(Context::new().with_span(ServerSpan::new(
        Box::new(r2),
        p.handle(),
        SpanLimits::default(),
    )));
    // Unsampled: not exported.
    let mut r3 = r.clone();
    r3.span_context = SpanContext::new(
        r.span_context.trace_id(),
        r.span_context.span_id(),
        opentelemetry::trace::TraceFlags::default(),
        false,
        Default::default(),
    );
    let mut s3 = ServerSpan::new(Box::new(r3), p.handle(), SpanLimits::default());
    s3.end();
    p.force_flush().unwrap();
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    let ended = &got[0];
    assert_eq!(ended.name, "renamed");
    assert_eq!(ended.extra, vec![KeyValue::new("tenant", "acme")]);
    assert_eq!(ended.dropped_attributes_count, 1);
    assert_eq!(ended.status_code, Some(503));
    assert_eq!(ended.status, Status::error("boom"));
    assert_eq!(ended.events.events.len(), 1);
    assert_eq!(ended.events.events[0].name, "retry");
    assert_eq!(ended.events.events[0].attributes.len(), 1);
    assert_eq!(ended.events.events[0].dropped_attributes_count, 1);
    assert_eq!(ended.events.dropped_count, 1);
    assert_eq!(ended.links.links.len(), 1);
    assert_eq!(ended.links.dropped_count, 1);
    // Ended by `end`, at the time it was called.
    assert_eq!(ended.start_time, started);
    assert!(ended.end_time >= started, "{:?}", ended.end_time);
    assert_eq!(got[1].name, "dropped");
    // Written records come back cleared, their buffers kept for the next requests.
    let reused = p.handle().record();
    assert!(reused.request.path.capacity() > 0 || reused.request.user_agent.capacity() > 0);
    assert!(reused.extra.is_empty() && reused.events.events.is_empty());
    assert_eq!(reused.name, "");
    assert!(!reused.request.has_host && !reused.request.has_user_agent);
    assert_eq!(reused.status_code, None);
    // A huge user agent does not stay in the spare buffers.
    let mut big = RequestAttrs::default();
    big.set_user_agent(Some(&"x".repeat(64 * 1024)));
    big.clear();
    assert!(
        big.user_agent.capacity() <= 512,
        "{}",
        big.user_agent.capacity()
    );
}
