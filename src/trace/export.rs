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
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use metrics::Counter;
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;

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
    spans: Vec<SpanData>,
    control: Vec<Control>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// A span processor with a bounded queue and one export thread.
pub(crate) struct QueueProcessor {
    shared: Arc<Shared>,
    settings: QueueSettings,
    counters: ExportCounters,
    shut: AtomicBool,
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
    pub(crate) fn new<E: SpanExporter + 'static>(
        mut exporter: E,
        resource: &Resource,
        settings: QueueSettings,
        counters: ExportCounters,
    ) -> Self {
        exporter.set_resource(resource);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                spans: Vec::with_capacity(settings.max_batch),
                control: Vec::new(),
            }),
            wake: Condvar::new(),
        });
        let thread_shared = shared.clone();
        let thread_counters = counters.clone();
        let spawned = std::thread::Builder::new()
            .name("towerscope-trace-export".into())
            .spawn(move || export_loop(exporter, &thread_shared, settings, &thread_counters));
        if let Err(e) = spawned {
            // Without the thread every span is dropped (and counted): the service still runs.
            eprintln!("towerscope: cannot start the trace export thread: {e}");
        }
        Self {
            shared,
            settings,
            counters,
            shut: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn control(&self, make: impl FnOnce(mpsc::Sender<()>) -> Control, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        self.lock().control.push(make(tx));
        self.shared.wake.notify_one();
        rx.recv_timeout(timeout).is_ok()
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _: &mut Span, _: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() || self.shut.load(Ordering::Relaxed) {
            return;
        }
        let mut q = self.lock();
        if q.spans.len() >= self.settings.max_queue {
            drop(q);
            self.counters.queue_full.increment(1);
            return;
        }
        q.spans.push(span);
        let full = q.spans.len() == self.settings.max_batch;
        drop(q);
        if full {
            self.shared.wake.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        if self.control(Control::Flush, Duration::from_secs(30)) {
            Ok(())
        } else {
            Err(opentelemetry_sdk::error::OTelSdkError::Timeout(
                Duration::from_secs(30),
            ))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.shut.swap(true, Ordering::AcqRel) {
            return Err(opentelemetry_sdk::error::OTelSdkError::AlreadyShutdown);
        }
        if self.control(Control::Shutdown, timeout) {
            Ok(())
        } else {
            Err(opentelemetry_sdk::error::OTelSdkError::Timeout(timeout))
        }
    }
}

fn export_loop<E: SpanExporter>(
    exporter: E,
    shared: &Shared,
    s: QueueSettings,
    counters: &ExportCounters,
) {
    let export = |batch: Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        match block_on(exporter.export(batch)) {
            Ok(()) => counters.exported.increment(n),
            Err(_) => counters.export_failed.increment(n),
        }
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
                    let _ = exporter.shutdown();
                    let _ = done.send(());
                    return;
                }
            }
        }
    }
}

/// Drives an export future on the export thread (the blocking HTTP client resolves it there).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// `OTEL_TRACES_EXPORTER=console`: one JSON line per span on stdout.
#[derive(Debug, Default)]
pub(crate) struct ConsoleExporter;

impl SpanExporter for ConsoleExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut out = String::new();
        for s in &batch {
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
