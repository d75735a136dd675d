//! Getting spans out without touching the request path: a bounded queue drained by one
//! export thread (dropping and counting what does not fit), and a console exporter.
//!
//! Written here rather than using the SDK's `BatchSpanProcessor` for one reason: the SDK counts
//! dropped spans only internally (a log line at shutdown), and towerscope must count every drop
//! in a metric. The shape is the same: a bounded buffer filled by the request path (one
//! uncontended lock, no wake-up unless a batch is full), batches of at most `max_batch` spans
//! exported at least every `delay`, a flush with a deadline at shutdown.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use metrics::Counter;
use opentelemetry::Context;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use super::record::ServerRecord;

/// `trace_spans_exported_total`
pub const SPANS_EXPORTED: &str = "trace_spans_exported_total";
/// `trace_spans_dropped_total{reason="queue_full|export_failed"}`
pub const SPANS_DROPPED: &str = "trace_spans_dropped_total";

/// The counters of the export pipeline.
#[derive(Clone)]
pub(crate) struct ExportCounters {
    pub(crate) exported: Counter,
    pub(crate) queue_full: Counter,
    pub(crate) export_failed: Counter,
}

impl ExportCounters {
    pub(crate) fn register() -> Self {
        metrics::describe_counter!(
            SPANS_EXPORTED,
            "Spans handed to the trace exporter successfully."
        );
        metrics::describe_counter!(
            SPANS_DROPPED,
            "Spans dropped: the export queue was full, or the exporter failed."
        );
        Self {
            exported: metrics::counter!(SPANS_EXPORTED),
            queue_full: metrics::counter!(SPANS_DROPPED, "reason" => "queue_full"),
            export_failed: metrics::counter!(SPANS_DROPPED, "reason" => "export_failed"),
        }
    }
}

enum Control {
    Flush(mpsc::Sender<()>),
    Shutdown(mpsc::Sender<()>),
}

/// What the request path and the export thread share. The request path takes the lock only to
/// push one span (uncontended: the export thread holds it just long enough to swap the
/// buffer) and wakes the thread only when a batch is full, so a busy service does not pay a
/// context switch per span.
struct Queue {
    spans: Vec<Item>,
    control: Vec<Control>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// A span waiting for export: one of the SDK's (client, internal, application spans) or a
/// server span recorded by towerscope (boxed already: it lives in the span object until the
/// end). SDK spans arrive by value; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Item {
    Sdk(SpanData),
    Server(Box<ServerRecord>),
}

/// An exporter run by the export thread.
pub(crate) trait Export: Send + 'static {
    /// Sends one batch.
    fn export(&mut self, batch: &[Item]) -> OTelSdkResult;
}

/// The queue's producer side: the span processor's, and the server spans'.
pub(crate) struct QueueHandle {
    shared: Shared,
    settings: QueueSettings,
    counters: ExportCounters,
    shut: AtomicBool,
    /// Server records written out and cleared by the export thread, for the next requests:
    /// the boxes themselves are reused (a request takes one without allocating).
    #[allow(clippy::vec_box)]
    spare: Mutex<Vec<Box<ServerRecord>>>,
}

impl std::fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueHandle").finish_non_exhaustive()
    }
}

impl QueueHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, item: Item) {
        if self.shut.load(Ordering::Relaxed) {
            return;
        }
        let mut q = self.lock();
        if q.spans.len() >= self.settings.max_queue {
            drop(q);
            self.counters.queue_full.increment(1);
            return;
        }
        q.spans.push(item);
        let full = q.spans.len() == self.settings.max_batch;
        drop(q);
        if full {
            self.shared.wake.notify_one();
        }
    }

    /// A cleared server record: a spare one when there is (its buffers already grown), else a
    /// new one.
    pub(crate) fn record(&self) -> Box<ServerRecord> {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        spare.unwrap_or_default()
    }

    /// Takes back written records (as many as a full queue holds at most).
    fn recycle(&self, batch: Vec<Item>) {
        let mut records: Vec<Box<ServerRecord>> = batch
            .into_iter()
            .filter_map(|i| match i {
                Item::Server(mut r) => {
                    r.clear();
                    Some(r)
                }
                Item::Sdk(_) => None,
            })
            .collect();
        if records.is_empty() {
            return;
        }
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.settings.max_queue.saturating_sub(spare.len());
        records.truncate(room);
        spare.append(&mut records);
    }

    /// Queues a server span that ended (sampled ones only, like the SDK's spans).
    pub(crate) fn push_server(&self, record: Box<ServerRecord>) {
        if record.span_context.is_sampled() {
            self.push(Item::Server(record));
        }
    }

    fn control(&self, make: impl FnOnce(mpsc::Sender<()>) -> Control, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        self.lock().control.push(make(tx));
        self.shared.wake.notify_one();
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
        let handle = Arc::new(QueueHandle {
            shared: Shared {
                queue: Mutex::new(Queue {
                    spans: Vec::with_capacity(settings.max_batch),
                    control: Vec::new(),
                }),
                wake: Condvar::new(),
            },
            settings,
            counters,
            shut: AtomicBool::new(false),
            spare: Mutex::new(Vec::new()),
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
            self.handle.push(Item::Sdk(span));
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
    let mut export = |batch: Vec<Item>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        match exporter.export(&batch) {
            Ok(()) => counters.exported.increment(n),
            Err(_) => counters.export_failed.increment(n),
        }
        handle.recycle(batch);
    };
    let mut deadline = Instant::now() + s.delay;
    loop {
        let (mut spans, control) = {
            let q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            let wait = deadline.saturating_duration_since(Instant::now());
            let (mut q, _) = shared
                .wake
                .wait_timeout_while(q, wait, |q| {
                    q.spans.len() < s.max_batch && q.control.is_empty()
                })
                .unwrap_or_else(|e| e.into_inner());
            let due =
                Instant::now() >= deadline || q.spans.len() >= s.max_batch || !q.control.is_empty();
            if !due {
                continue;
            }
            let spans = std::mem::replace(&mut q.spans, Vec::with_capacity(s.max_batch));
            (spans, std::mem::take(&mut q.control))
        };
        deadline = Instant::now() + s.delay;
        while spans.len() > s.max_batch {
            let rest = spans.split_off(s.max_batch);
            export(std::mem::replace(&mut spans, rest));
        }
        export(spans);
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
    fn export(&mut self, batch: &[Item]) -> OTelSdkResult {
        let mut out = String::new();
        for item in batch {
            let server;
            let s = match item {
                Item::Sdk(s) => s,
                Item::Server(r) => {
                    server = r.to_span_data(&self.scope);
                    &server
                }
            };
            let start = s
                .start_time
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let dur = s.end_time.duration_since(s.start_time).unwrap_or_default();
            let _ = write!(
                out,
                "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",\"parent_span_id\":\"{}\",\"name\":{:?},\
                 \"kind\":\"{:?}\",\"start_unix_nano\":{},\"duration_ns\":{},\"status\":{:?}",
                s.span_context.trace_id(),
                s.span_context.span_id(),
                s.parent_span_id,
                s.name,
                s.span_kind,
                start.as_nanos(),
                dur.as_nanos(),
                format!("{:?}", s.status),
            );
            out.push_str(",\"attributes\":{");
            for (i, kv) in s.attributes.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{:?}:{:?}", kv.key.as_str(), kv.value.to_string());
            }
            out.push_str("}}\n");
        }
        let _ = std::io::stdout().lock().write_all(out.as_bytes());
        Ok(())
    }
}
