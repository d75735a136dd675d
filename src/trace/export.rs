//! Getting spans out without touching the request path: a bounded queue drained by one
//! export thread (dropping and counting what does not fit), and a console exporter.
//!
//! Written here rather than using the SDK's `BatchSpanProcessor` for one reason: the SDK counts
//! dropped spans only internally (a log line at shutdown), and towerscope must count every drop
//! in a metric. The shape is the same: a bounded queue filled by the request path (lock-free:
//! crossbeam's `ArrayQueue`; no wake-up unless a batch is full), batches of at most `max_batch`
//! spans exported at least every `delay`, a flush with a deadline at shutdown. The queue's
//! slots (a pointer and a stamp each) are allocated up front.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use metrics::Counter;
use opentelemetry::Context;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use super::record::ServerRecord;
use crate::json_str::write_json_str;

/// `trace_spans_exported_total`
pub const SPANS_EXPORTED: &str = "trace_spans_exported_total";
/// `trace_spans_dropped_total{reason="queue_full|export_failed|rejected"}`
pub const SPANS_DROPPED: &str = "trace_spans_dropped_total";

/// The counters of the export pipeline.
#[derive(Clone)]
pub(crate) struct ExportCounters {
    pub(crate) exported: Counter,
    pub(crate) queue_full: Counter,
    pub(crate) export_failed: Counter,
    /// Refused by the collector in a partial success.
    pub(crate) rejected: Counter,
}

impl ExportCounters {
    pub(crate) fn register() -> Self {
        metrics::describe_counter!(
            SPANS_EXPORTED,
            "Spans handed to the trace exporter successfully."
        );
        metrics::describe_counter!(
            SPANS_DROPPED,
            "Spans dropped: the export queue was full, the exporter failed, or the collector \
             rejected them."
        );
        Self {
            exported: metrics::counter!(SPANS_EXPORTED),
            queue_full: metrics::counter!(SPANS_DROPPED, "reason" => "queue_full"),
            export_failed: metrics::counter!(SPANS_DROPPED, "reason" => "export_failed"),
            rejected: metrics::counter!(SPANS_DROPPED, "reason" => "rejected"),
        }
    }
}

enum Control {
    Flush(mpsc::Sender<()>),
    Shutdown(mpsc::Sender<()>),
}

/// What the request path and the export thread share. The request path pushes one span into a
/// lock-free bounded queue (a request never waits for another thread, the export thread
/// included) and wakes the thread only when a batch is full, so a busy service does not pay a
/// context switch per span.
struct Shared {
    spans: ArrayQueue<Item>,
    /// Flush and shutdown requests (never from the request path).
    control: Mutex<Vec<Control>>,
    /// The export thread, to wake it.
    thread: OnceLock<std::thread::Thread>,
}

impl Shared {
    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// A span waiting for export: one of the SDK's (client, internal, application spans) or a
/// server span recorded by towerscope (boxed already: it lives in the span object until the
/// end). Both boxed, so the queue's slots are small and a span moves in and out of them as a
/// pointer: boxing the SDK's spans costs them an allocation each, but with the SDK's span
/// inline every slot was 352 bytes, copied in and out for every server span (+280
/// instructions per exported request, callgrind).
pub(crate) enum Item {
    Sdk(Box<SpanData>),
    Server(Box<ServerRecord>),
}

/// An exporter run by the export thread.
pub(crate) trait Export: Send + 'static {
    /// Sends one batch.
    fn export(&mut self, batch: &[Item]) -> Exported;
}

/// What one export came to: taken, with what the receiver refused of the batch when it said
/// (OTLP's partial success), or failed.
pub(crate) type Exported = Result<Option<Refused>, OTelSdkError>;

/// What a receiver refused of a batch it took: how many spans, and its message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) spans: u64,
    pub(crate) message: String,
}

/// The queue's producer side: the span processor's, and the server spans'.
pub(crate) struct QueueHandle {
    shared: Shared,
    settings: QueueSettings,
    counters: ExportCounters,
    shut: AtomicBool,
    /// Server records written out and cleared by the export thread, for the next requests:
    /// the boxes themselves are reused (a request takes one without allocating).
    spare: ArrayQueue<Box<ServerRecord>>,
}

impl std::fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueHandle").finish_non_exhaustive()
    }
}

thread_local! {
    /// This thread's next spare server record, fetched ahead (see `QueueHandle::record`).
    static AHEAD: std::cell::Cell<Option<Box<ServerRecord>>> = const { std::cell::Cell::new(None) };
}

/// Asks the CPU to bring a spare record's lines into cache (one prefetch per field: the first
/// line of each; fields on one line cost a redundant prefetch, no load).
fn prefetch(r: &ServerRecord) {
    use crate::prefetch::read;
    read(&r.span_context);
    read(&r.name);
    read(&r.request);
    read(&r.extra);
    read(&r.events);
    read(&r.links);
    read(&r.status);
}

impl QueueHandle {
    fn push(&self, item: Item) {
        if self.shut.load(Ordering::Relaxed) {
            return;
        }
        if self.shared.spans.push(item).is_err() {
            self.counters.queue_full.increment(1);
            return;
        }
        if self.shared.spans.len() >= self.settings.max_batch {
            // A batch is ready (the thread may be exporting the last one: then this only marks
            // it to look again, without a system call).
            self.shared.wake();
        }
    }

    /// A cleared server record: a spare one when there is (its buffers already grown), else a
    /// new one.
    ///
    /// Spares come back from the export thread a batch at a time and wait their turn in a
    /// FIFO: the one taken was cleared milliseconds before, and its first read stalled on a
    /// cold line (perf under load: about 80 ns per request). So each call takes the record
    /// fetched ahead by the call before on this thread, and fetches the next one ahead (a
    /// prefetch: it is in cache by the next request). Spares are interchangeable: one fetched
    /// from another queue's pool serves as well.
    pub(crate) fn record(&self) -> Box<ServerRecord> {
        let next = self.spare.pop();
        if let Some(next) = &next {
            prefetch(next);
        }
        let ahead = AHEAD.try_with(|a| a.replace(next)).ok().flatten();
        ahead.or_else(|| self.spare.pop()).unwrap_or_default()
    }

    /// Takes back written records (as many as a full queue holds at most).
    fn recycle(&self, batch: Vec<Item>) {
        for item in batch {
            if let Item::Server(mut r) = item {
                r.clear();
                if self.spare.push(r).is_err() {
                    return;
                }
            }
        }
    }

    /// Queues a server span that ended (sampled ones only, like the SDK's spans).
    pub(crate) fn push_server(&self, record: Box<ServerRecord>) {
        if record.span_context.is_sampled() {
            self.push(Item::Server(record));
        }
    }

    fn control(&self, make: impl FnOnce(mpsc::Sender<()>) -> Control, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        self.shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(make(tx));
        self.shared.wake();
        rx.recv_timeout(timeout).is_ok()
    }
}

/// A span processor with a bounded queue and one export thread.
pub(crate) struct QueueProcessor {
    handle: Arc<QueueHandle>,
}

impl std::fmt::Debug for QueueProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueProcessor").finish_non_exhaustive()
    }
}

/// Queue and batch settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueSettings {
    pub(crate) max_queue: usize,
    pub(crate) max_batch: usize,
    pub(crate) delay: Duration,
}

impl QueueProcessor {
    pub(crate) fn new<E: Export>(
        exporter: E,
        settings: QueueSettings,
        counters: ExportCounters,
    ) -> Self {
        let capacity = settings.max_queue.max(1);
        let handle = Arc::new(QueueHandle {
            shared: Shared {
                spans: ArrayQueue::new(capacity),
                control: Mutex::new(Vec::new()),
                thread: OnceLock::new(),
            },
            settings,
            counters,
            shut: AtomicBool::new(false),
            spare: ArrayQueue::new(capacity),
        });
        let thread_handle = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("towerscope-trace-export".into())
            .spawn(move || export_loop(exporter, &thread_handle));
        if let Err(e) = spawned {
            // Without the thread every span is dropped (and counted): the service still runs.
            eprintln!("towerscope: cannot start the trace export thread: {e}");
        }
        Self { handle }
    }

    /// The producer side, for server spans.
    pub(crate) fn handle(&self) -> Arc<QueueHandle> {
        self.handle.clone()
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _: &mut Span, _: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.handle.push(Item::Sdk(Box::new(span)));
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        if self.handle.control(Control::Flush, Duration::from_secs(30)) {
            Ok(())
        } else {
            Err(opentelemetry_sdk::error::OTelSdkError::Timeout(
                Duration::from_secs(30),
            ))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.handle.shut.swap(true, Ordering::AcqRel) {
            return Err(opentelemetry_sdk::error::OTelSdkError::AlreadyShutdown);
        }
        if self.handle.control(Control::Shutdown, timeout) {
            Ok(())
        } else {
            Err(opentelemetry_sdk::error::OTelSdkError::Timeout(timeout))
        }
    }
}

fn export_loop<E: Export>(mut exporter: E, handle: &QueueHandle) {
    let (shared, s, counters) = (&handle.shared, handle.settings, &handle.counters);
    let _ = shared.thread.set(std::thread::current());
    let mut reports = Reports::default();
    let mut rejections = Throttle::default();
    let mut export = |batch: Vec<Item>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        match exporter.export(&batch) {
            Ok(refused) => {
                let Refused {
                    spans: refused,
                    message,
                } = refused.unwrap_or_default();
                // The collector's count, bounded by what was sent.
                let refused = refused.min(n);
                counters.exported.increment(n - refused);
                counters.rejected.increment(refused);
                if !message.is_empty() || refused > 0 {
                    // With nothing rejected, the message is a warning about spans it took
                    // (OTLP allows one).
                    if let Some(lost) = rejections.failed(Instant::now(), refused) {
                        tracing::warn!(
                            target: "towerscope::trace::export",
                            error = message,
                            rejected_spans = lost.spans,
                            "{}",
                            if lost.spans > 0 {
                                "the collector rejected spans (partial success)"
                            } else {
                                "the collector took the spans with a warning (partial success)"
                            }
                        );
                    }
                }
                if let Some(lost) = reports.succeeded() {
                    tracing::info!(
                        target: "towerscope::trace::export",
                        failed_batches = lost.batches,
                        failed_spans = lost.spans,
                        "span export recovered"
                    );
                }
            }
            Err(e) => {
                counters.export_failed.increment(n);
                if let Some(lost) = reports.failed(Instant::now(), n) {
                    let error = match &e {
                        OTelSdkError::InternalFailure(m) => m.clone(),
                        other => other.to_string(),
                    };
                    tracing::warn!(
                        target: "towerscope::trace::export",
                        error,
                        failed_batches = lost.batches,
                        failed_spans = lost.spans,
                        "span export failing: its spans are dropped (trace_spans_dropped_total)"
                    );
                }
            }
        }
        handle.recycle(batch);
    };
    let controls =
        || std::mem::take(&mut *shared.control.lock().unwrap_or_else(|e| e.into_inner()));
    let mut deadline = Instant::now() + s.delay;
    loop {
        let control = controls();
        let due =
            !control.is_empty() || shared.spans.len() >= s.max_batch || Instant::now() >= deadline;
        if !due {
            // Until the deadline, or woken by a full batch or a control request (a spurious
            // wake-up only looks again).
            std::thread::park_timeout(deadline.saturating_duration_since(Instant::now()));
            continue;
        }
        deadline = Instant::now() + s.delay;
        // What is queued now, in batches; spans that arrive meanwhile wait for the next round
        // (under constant load the thread still returns to its controls).
        let mut left = shared.spans.len();
        while left > 0 {
            let take = left.min(s.max_batch);
            let batch: Vec<Item> = std::iter::from_fn(|| shared.spans.pop())
                .take(take)
                .collect();
            if batch.is_empty() {
                break;
            }
            left -= batch.len();
            export(batch);
        }
        for c in control {
            match c {
                Control::Flush(done) => {
                    let _ = done.send(());
                }
                Control::Shutdown(done) => {
                    let _ = done.send(());
                    return;
                }
            }
        }
    }
}

/// `OTEL_TRACES_EXPORTER=console`: one JSON line per span on stdout.
#[derive(Debug)]
pub(crate) struct ConsoleExporter {
    /// The scope of towerscope's server spans.
    pub(crate) scope: InstrumentationScope,
}

impl Export for ConsoleExporter {
    fn export(&mut self, batch: &[Item]) -> Exported {
        let mut out = String::new();
        for item in batch {
            match item {
                Item::Sdk(s) => write_span_json(&mut out, s),
                Item::Server(r) => write_span_json(&mut out, &r.to_span_data(&self.scope)),
            }
        }
        // A failed write (a closed pipe) fails the batch: its spans are counted as dropped.
        std::io::stdout()
            .lock()
            .write_all(out.as_bytes())
            .map(|()| None)
            .map_err(|e| OTelSdkError::InternalFailure(format!("console export: {e}")))
    }
}

/// One span as one line of JSON: names and strings escaped whatever they hold, attribute
/// values with their types (numbers, booleans, arrays), the status and its message, and the
/// span's events (an `exception` among them).
fn write_span_json(out: &mut String, s: &SpanData) {
    use opentelemetry::trace::Status;
    let nanos = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    };
    let dur = s.end_time.duration_since(s.start_time).unwrap_or_default();
    let _ = write!(
        out,
        "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",",
        s.span_context.trace_id(),
        s.span_context.span_id(),
    );
    // A root span has no parent (not one of zeros), as in OTLP.
    if s.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        let _ = write!(out, "\"parent_span_id\":\"{}\",", s.parent_span_id);
    }
    out.push_str("\"name\":");
    write_json_str(out, &s.name);
    let _ = write!(
        out,
        ",\"kind\":\"{:?}\",\"start_unix_nano\":{},\"duration_ns\":{},\"status\":",
        s.span_kind,
        nanos(s.start_time),
        dur.as_nanos(),
    );
    match &s.status {
        Status::Unset => out.push_str("\"Unset\""),
        Status::Ok => out.push_str("\"Ok\""),
        Status::Error { description } => {
            out.push_str("\"Error\"");
            if !description.is_empty() {
                out.push_str(",\"status_message\":");
                write_json_str(out, description);
            }
        }
    }
    out.push_str(",\"attributes\":");
    write_attributes_json(out, &s.attributes);
    if !s.events.is_empty() {
        out.push_str(",\"events\":");
        json_list(out, ['[', ']'], &s.events, |out, e| {
            out.push_str("{\"name\":");
            write_json_str(out, &e.name);
            let _ = write!(
                out,
                ",\"time_unix_nano\":{},\"attributes\":",
                nanos(e.timestamp)
            );
            write_attributes_json(out, &e.attributes);
            out.push('}');
        });
    }
    out.push_str("}\n");
}

/// `items` between `brackets`, separated by commas, each written by `each`.
fn json_list<T>(
    out: &mut String,
    brackets: [char; 2],
    items: &[T],
    mut each: impl FnMut(&mut String, &T),
) {
    out.push(brackets[0]);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        each(out, item);
    }
    out.push(brackets[1]);
}

fn write_attributes_json(out: &mut String, attributes: &[opentelemetry::KeyValue]) {
    json_list(out, ['{', '}'], attributes, |out, kv| {
        write_json_str(out, kv.key.as_str());
        out.push(':');
        write_value_json(out, &kv.value);
    });
}

/// An attribute value as JSON of its type; a float that JSON cannot hold (NaN, infinities) as
/// its text.
fn write_value_json(out: &mut String, v: &opentelemetry::Value) {
    use opentelemetry::{Array, Value};
    fn float(out: &mut String, f: f64) {
        if f.is_finite() {
            let _ = write!(out, "{f}");
        } else {
            write_json_str(out, &f.to_string());
        }
    }
    fn list<T>(out: &mut String, items: &[T], each: impl FnMut(&mut String, &T)) {
        json_list(out, ['[', ']'], items, each);
    }
    match v {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::I64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::F64(f) => float(out, *f),
        Value::String(t) => write_json_str(out, t.as_str()),
        Value::Array(Array::Bool(a)) => {
            list(out, a, |o, b| o.push_str(if *b { "true" } else { "false" }))
        }
        Value::Array(Array::I64(a)) => list(out, a, |o, n| {
            let _ = write!(o, "{n}");
        }),
        Value::Array(Array::F64(a)) => list(out, a, |o, f| float(o, *f)),
        Value::Array(Array::String(a)) => list(out, a, |o, t| write_json_str(o, t.as_str())),
        // Kinds added to the (non-exhaustive) enums later: their text.
        other => write_json_str(out, &other.to_string()),
    }
}

/// Warnings at most once a minute, the first at once, each with what was lost since the one
/// before (also alone, for the spans a collector rejects in answers that succeed).
#[derive(Default)]
struct Throttle {
    last_warning: Option<Instant>,
    /// Lost since the last warning.
    pending: Lost,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(60);

    /// A batch lost `spans` at `now`: what to warn about, if it is time to.
    fn failed(&mut self, now: Instant, spans: u64) -> Option<Lost> {
        self.pending.add(spans);
        if self
            .last_warning
            .is_some_and(|t| now.duration_since(t) < Self::EVERY)
        {
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

/// Batches, and the spans in them, that failed or that the collector rejected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Lost {
    batches: u64,
    spans: u64,
}

impl Lost {
    fn add(&mut self, spans: u64) {
        self.batches += 1;
        self.spans += spans;
    }
}

/// What the export thread says about failing exports, so that a collector that refuses them
/// (a wrong token, a wrong CA) is seen with its reason and not only in the drop counter,
/// without a line per batch: the first failure at once, then at most one warning a minute
/// while failures go on, each with the batches and spans failed since the one before; and,
/// when an export succeeds after a warning, one line saying so with the outage's totals.
#[derive(Default)]
struct Reports {
    warnings: Throttle,
    /// Failed since the last success.
    outage: Lost,
    /// A warning was written in this outage.
    warned: bool,
}

impl Reports {
    /// A batch of `spans` failed at `now`: what to warn about, if it is time to.
    fn failed(&mut self, now: Instant, spans: u64) -> Option<Lost> {
        self.outage.add(spans);
        let warn = self.warnings.failed(now, spans);
        self.warned |= warn.is_some();
        warn
    }

    /// A batch went out: the outage's totals when a warning was written during it.
    fn succeeded(&mut self) -> Option<Lost> {
        let outage = std::mem::take(&mut self.outage);
        self.warnings.pending = Lost::default();
        std::mem::take(&mut self.warned).then_some(outage)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    /// The console exporter writes each span as one valid JSON object, whatever its strings
    /// hold (Rust's `Debug` quoting, used before, writes `\u{301}` for a combining accent and
    /// `\u{1}` for a control character: not JSON), with typed attribute values and events.
    #[test]
    fn console_lines_are_json_with_typed_values_and_events() {
        use opentelemetry::trace::{Event, SpanKind, Status};
        use opentelemetry::{Array, KeyValue, StringValue};
        let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut events = opentelemetry_sdk::trace::SpanEvents::default();
        events.events.push(Event::new(
            "exception",
            t0 + Duration::from_millis(1),
            vec![KeyValue::new("exception.message", "bad \"input\"\n")],
            0,
        ));
        let span = SpanData {
            span_context: SpanContext::new(
                TraceId::from(7),
                SpanId::from(9),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "GET /caf\u{e9}/e\u{301}\u{1}".into(),
            start_time: t0,
            end_time: t0 + Duration::from_millis(2),
            attributes: vec![
                KeyValue::new("server.port", 8080_i64),
                KeyValue::new("ok", true),
                KeyValue::new("ratio", 0.25),
                KeyValue::new("nan", f64::NAN),
                KeyValue::new("user_agent.original", "a\u{301}\u{2028}\\"),
                KeyValue::new(
                    "tags",
                    opentelemetry::Value::Array(Array::String(vec![StringValue::from("x\u{7}")])),
                ),
            ],
            dropped_attributes_count: 0,
            events,
            links: Default::default(),
            status: Status::error("boom \u{301}"),
            instrumentation_scope: Default::default(),
        };
        let mut out = String::new();
        write_span_json(&mut out, &span);
        let child = SpanData {
            parent_span_id: SpanId::from(5),
            ..span.clone()
        };
        write_span_json(&mut out, &child);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect(lines[0]);
        assert_eq!(v["trace_id"], "00000000000000000000000000000007");
        assert_eq!(v["span_id"], "0000000000000009");
        assert!(v.get("parent_span_id").is_none(), "a root: {v}");
        let c: serde_json::Value = serde_json::from_str(lines[1]).expect(lines[1]);
        assert_eq!(c["parent_span_id"], "0000000000000005");
        assert_eq!(v["name"], "GET /caf\u{e9}/e\u{301}\u{1}");
        assert_eq!(v["kind"], "Server");
        assert_eq!(v["duration_ns"], 2_000_000);
        assert_eq!(v["status"], "Error");
        assert_eq!(v["status_message"], "boom \u{301}");
        let a = &v["attributes"];
        assert_eq!(a["server.port"], 8080);
        assert_eq!(a["ok"], true);
        assert_eq!(a["ratio"], 0.25);
        assert_eq!(a["nan"], "NaN");
        assert_eq!(a["user_agent.original"], "a\u{301}\u{2028}\\");
        assert_eq!(a["tags"], serde_json::json!(["x\u{7}"]));
        assert_eq!(v["events"][0]["name"], "exception");
        assert_eq!(
            v["events"][0]["attributes"]["exception.message"],
            "bad \"input\"\n"
        );
    }

    /// The first failure is reported at once, later ones at most once a minute with what
    /// failed in between; a success after a warning is reported once with the outage's totals,
    /// and a success after failures nobody was warned about is not.
    #[test]
    fn failing_exports_are_reported_at_once_then_once_a_minute() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let lost = |batches, spans| Some(Lost { batches, spans });
        let mut r = Reports::default();
        assert_eq!(r.succeeded(), None, "nothing failed");
        assert_eq!(r.failed(at(0), 10), lost(1, 10));
        assert_eq!(r.failed(at(1), 20), None);
        assert_eq!(r.failed(at(59), 30), None);
        assert_eq!(r.failed(at(60), 5), lost(3, 55));
        assert_eq!(r.succeeded(), lost(4, 65));
        assert_eq!(r.succeeded(), None, "once");
        // Failing again within the minute: counted, not reported; nor is the recovery.
        assert_eq!(r.failed(at(61), 7), None);
        assert_eq!(r.succeeded(), None);
        // Past the minute, a new failure is reported with only its own batch (what failed
        // before the last success was reported or ended with it).
        assert_eq!(r.failed(at(121), 8), lost(1, 8));
        assert_eq!(r.succeeded(), lost(1, 8));
    }

    /// Counts what it is given, sleeping per batch when `slow`.
    struct Count {
        got: Arc<AtomicU64>,
        slow: bool,
    }

    impl Export for Count {
        fn export(&mut self, batch: &[Item]) -> Exported {
            if self.slow {
                std::thread::sleep(Duration::from_millis(2));
            }
            self.got.fetch_add(batch.len() as u64, Ordering::Relaxed);
            Ok(None)
        }
    }

    fn sampled_record(n: u64) -> Box<ServerRecord> {
        let mut r = Box::<ServerRecord>::default();
        r.span_context = SpanContext::new(
            TraceId::from(u128::from(n) + 1),
            SpanId::from(n + 1),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        r
    }

    const THREADS: u64 = 4;
    const EACH: u64 = 5_000;

    /// Four threads push at once; returns (exported, dropped) after the shutdown's flush.
    fn run(max_queue: usize, slow: bool) -> (u64, u64) {
        let (exported, dropped, failed) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let counters = ExportCounters {
            exported: Counter::from_arc(Arc::new(AtomicU64::new(0))),
            queue_full: Counter::from_arc(dropped.clone()),
            export_failed: Counter::from_arc(failed.clone()),
            rejected: Counter::noop(),
        };
        let p = QueueProcessor::new(
            Count {
                got: exported.clone(),
                slow,
            },
            QueueSettings {
                max_queue,
                max_batch: 16,
                delay: Duration::from_millis(1),
            },
            counters,
        );
        let handle = p.handle();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let handle = &handle;
                s.spawn(move || {
                    for i in 0..EACH {
                        // As a request does: a spare record taken, then a span queued.
                        drop(handle.record());
                        handle.push_server(sampled_record(t * EACH + i));
                    }
                });
            }
        });
        assert!(p.shutdown_with_timeout(Duration::from_secs(10)).is_ok());
        assert_eq!(failed.load(Ordering::Relaxed), 0);
        assert!(handle.shared.spans.is_empty(), "the shutdown flushed");
        (
            exported.load(Ordering::Relaxed),
            dropped.load(Ordering::Relaxed),
        )
    }

    /// Spans the collector refused in a partial success are counted as `rejected`, the rest
    /// as exported; a count beyond the batch is bounded by it.
    #[test]
    fn spans_a_collector_rejects_are_counted_as_dropped() {
        /// Says the collector refused `refuse` spans of every batch.
        struct Refusing(u64);
        impl Export for Refusing {
            fn export(&mut self, _: &[Item]) -> Exported {
                Ok(Some(Refused {
                    spans: self.0,
                    message: "too old".to_owned(),
                }))
            }
        }
        for (refuse, sent, rejected) in [(2, 8, 2), (100, 8, 8)] {
            let (exported, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let counters = ExportCounters {
                exported: Counter::from_arc(exported.clone()),
                queue_full: Counter::noop(),
                export_failed: Counter::noop(),
                rejected: Counter::from_arc(refused.clone()),
            };
            let p = QueueProcessor::new(
                Refusing(refuse),
                QueueSettings {
                    max_queue: 64,
                    max_batch: 64,
                    delay: Duration::from_secs(60),
                },
                counters,
            );
            let handle = p.handle();
            for i in 0..sent {
                handle.push_server(sampled_record(i));
            }
            assert!(p.shutdown_with_timeout(Duration::from_secs(10)).is_ok());
            assert_eq!(refused.load(Ordering::Relaxed), rejected);
            assert_eq!(exported.load(Ordering::Relaxed), sent - rejected);
        }
    }

    /// The record fetched ahead is the next call's: every spare is handed out, each once,
    /// before a new record is made. (Spares are told apart from new records by their grown
    /// buffers, which clearing keeps: addresses would not do, freed memory being reused.)
    #[test]
    fn spare_records_are_all_reused_with_one_fetched_ahead() {
        let counters = ExportCounters {
            exported: Counter::noop(),
            queue_full: Counter::noop(),
            export_failed: Counter::noop(),
            rejected: Counter::noop(),
        };
        let p = QueueProcessor::new(
            Count {
                got: Arc::new(AtomicU64::new(0)),
                slow: false,
            },
            QueueSettings {
                max_queue: 8,
                max_batch: 8,
                delay: Duration::from_secs(60),
            },
            counters,
        );
        let handle = p.handle();
        // Spare n's path buffer holds 100 + n bytes.
        let spares = (0..3).map(|n| {
            let mut r = Box::<ServerRecord>::default();
            r.request.path = String::with_capacity(100 + n);
            Item::Server(r)
        });
        handle.recycle(spares.collect());
        let mut got: Vec<usize> = (0..4)
            .map(|_| handle.record().request.path.capacity())
            .collect();
        assert_eq!(got.pop(), Some(0), "a new record once the spares are used");
        got.sort_unstable();
        assert_eq!(
            got,
            [100, 101, 102],
            "each spare handed out once, none lost"
        );
        assert!(p.shutdown_with_timeout(Duration::from_secs(10)).is_ok());
    }

    /// With room for every span, all are exported, whatever the interleaving.
    #[test]
    fn concurrent_pushes_with_room_are_all_exported() {
        assert_eq!(run((THREADS * EACH) as usize, false), (THREADS * EACH, 0));
    }

    /// A small queue drained by a slow exporter: every span is exported or counted as
    /// dropped, none lost.
    #[test]
    fn concurrent_pushes_into_a_full_queue_are_exported_or_counted() {
        let (exported, dropped) = run(64, true);
        assert_eq!(exported + dropped, THREADS * EACH, "{exported} + {dropped}");
        assert!(dropped > 0 && exported > 0, "{exported} {dropped}");
    }
}
