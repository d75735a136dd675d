//! Getting spans out without touching the request path: a bounded queue drained by one
//! export thread (dropping and counting what does not fit), and a console exporter.
//!
//! Written here rather than using the SDK's `BatchSpanProcessor` for one reason: the SDK counts
//! dropped spans only internally (a log line at shutdown), and towerscope must count every drop
//! in a metric. The shape is the same: `try_send` into a bounded channel on the request path,
//! batches of at most `max_batch` spans exported at least every `delay`, a flush with a
//! deadline at shutdown.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
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

/// A span processor with a bounded queue and one export thread.
pub(crate) struct QueueProcessor {
    spans: SyncSender<SpanData>,
    control: Mutex<mpsc::Sender<Control>>,
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
        let (spans, rx) = mpsc::sync_channel(settings.max_queue.max(1));
        let (control, control_rx) = mpsc::channel();
        let thread_counters = counters.clone();
        let spawned = std::thread::Builder::new()
            .name("towerscope-trace-export".into())
            .spawn(move || export_loop(exporter, rx, control_rx, settings, thread_counters));
        if let Err(e) = spawned {
            // Without the thread every span is dropped (and counted): the service still runs.
            eprintln!("towerscope: cannot start the trace export thread: {e}");
        }
        Self {
            spans,
            control: Mutex::new(control),
            counters,
            shut: AtomicBool::new(false),
        }
    }

    fn control(&self, make: impl FnOnce(mpsc::Sender<()>) -> Control, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        let sent = self
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(make(tx))
            .is_ok();
        sent && rx.recv_timeout(timeout).is_ok()
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _: &mut Span, _: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.spans.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.queue_full.increment(1);
            }
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
    rx: Receiver<SpanData>,
    control: Receiver<Control>,
    s: QueueSettings,
    counters: ExportCounters,
) {
    let mut batch = Vec::with_capacity(s.max_batch);
    let mut deadline = Instant::now() + s.delay;
    let export = |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        match block_on(exporter.export(std::mem::take(batch))) {
            Ok(()) => counters.exported.increment(n),
            Err(_) => counters.export_failed.increment(n),
        }
    };
    loop {
        // Control first: a flush or shutdown drains what is queued now.
        match control.try_recv() {
            Ok(Control::Flush(done)) => {
                batch.extend(rx.try_iter());
                for mut chunk in drain_chunks(&mut batch, s.max_batch) {
                    export(&mut chunk);
                }
                let _ = done.send(());
            }
            Ok(Control::Shutdown(done)) => {
                batch.extend(rx.try_iter());
                for mut chunk in drain_chunks(&mut batch, s.max_batch) {
                    export(&mut chunk);
                }
                let _ = exporter.shutdown();
                let _ = done.send(());
                return;
            }
            Err(mpsc::TryRecvError::Disconnected) => return,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait.min(Duration::from_millis(100))) {
            Ok(span) => {
                batch.push(span);
                if batch.len() >= s.max_batch {
                    export(&mut batch);
                    deadline = Instant::now() + s.delay;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    export(&mut batch);
                    deadline = Instant::now() + s.delay;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                export(&mut batch);
                return;
            }
        }
    }
}

fn drain_chunks(batch: &mut Vec<SpanData>, size: usize) -> Vec<Vec<SpanData>> {
    let all = std::mem::take(batch);
    let mut out = Vec::new();
    let mut it = all.into_iter().peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(size.max(1)).collect());
    }
    out
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
