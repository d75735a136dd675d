//! The non-blocking writer: request threads append whole lines to a bounded buffer and return;
//! a writer thread swaps the buffer out every 20 ms and writes it in one call.
//!
//! Written here rather than taken from tracing-appender for two reasons measured on the
//! request path: tracing-appender allocates a `Vec` per line and sends it over a channel,
//! waking the writer thread (a futex system call) for most lines; this writer copies the line
//! into a shared buffer under a short lock, makes no system call, and the writer thread writes
//! batches. And a dropped line is counted where it is dropped, exactly.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use metrics::{Counter, Key, KeyName, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// `log_records_dropped_total`
pub const DROPPED: &str = "log_records_dropped_total";

struct Shared {
    buf: Mutex<Vec<u8>>,
    capacity: usize,
    lossy: bool,
    drained: Condvar,
    dropped: AtomicU64,
    dropped_metric: Counter,
    stop: AtomicBool,
    worker: std::sync::OnceLock<std::thread::Thread>,
}

/// A cloneable handle that writes lines without waiting (see the module docs).
#[derive(Clone)]
pub struct NonBlocking {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NonBlocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonBlocking")
            .field("capacity", &self.shared.capacity)
            .field("lossy", &self.shared.lossy)
            .finish_non_exhaustive()
    }
}

/// Stops the writer thread when dropped, after writing what is pending (bounded by a deadline,
/// so a stalled output cannot hang the process on exit).
pub struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    flush_deadline: Duration,
}

impl std::fmt::Debug for WriterGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterGuard").finish_non_exhaustive()
    }
}

static METADATA: Metadata<'static> = Metadata::new(
    "towerscope::log",
    metrics::Level::INFO,
    Some(module_path!()),
);

/// How often the writer thread takes the buffer. Measured under load (red+log, paired A/B
/// runs, 12 rounds): 1 ms 0.925x the throughput of 5 ms, 20 ms 1.023x; the swaps, not the
/// bytes, are what cost (each wakes this thread on a request thread's core and makes a write
/// call). A line waits at most this long (and the guard writes what is pending on exit).
const PERIOD: Duration = Duration::from_millis(20);

impl NonBlocking {
    /// A writer to `sink` holding at most `capacity` bytes. `lossy`: when full, lines are
    /// dropped and counted in `log_records_dropped_total`; otherwise the caller waits.
    pub fn new<W: Write + Send + 'static>(
        sink: W,
        capacity: usize,
        lossy: bool,
    ) -> (Self, WriterGuard) {
        let dropped_metric = metrics::with_recorder(|r| {
            r.describe_counter(
                KeyName::from_const_str(DROPPED),
                None,
                "Log lines dropped because the output could not keep up, or failed.".into(),
            );
            r.register_counter(&Key::from_name(DROPPED), &METADATA)
        });
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(64 * 1024)),
            capacity: capacity.max(1024),
            lossy,
            drained: Condvar::new(),
            dropped: AtomicU64::new(0),
            dropped_metric,
            stop: AtomicBool::new(false),
            worker: std::sync::OnceLock::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("towerscope-log".into())
            .spawn(move || run(s, sink))
            .ok();
        if let Some(t) = &thread {
            let _ = shared.worker.set(t.thread().clone());
        }
        (
            Self {
                shared: shared.clone(),
            },
            WriterGuard {
                shared,
                thread,
                flush_deadline: Duration::from_secs(2),
            },
        )
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn push(&self, line: &[u8]) {
        let s = &*self.shared;
        let mut buf = s.buf.lock().unwrap_or_else(|e| e.into_inner());
        // A line longer than the whole queue never fits: dropped (lossy), or, for a caller that
        // waits, taken alone into the emptied queue (waiting for more room would never end).
        while buf.len() + line.len() > s.capacity && (s.lossy || !buf.is_empty()) {
            if s.lossy || s.stop.load(Ordering::Relaxed) {
                drop(buf);
                s.dropped.fetch_add(1, Ordering::Relaxed);
                s.dropped_metric.increment(1);
                return;
            }
            if let Some(w) = s.worker.get() {
                w.unpark();
            }
            buf = s.drained.wait(buf).unwrap_or_else(|e| e.into_inner());
        }
        buf.extend_from_slice(line);
        prefetch_next(&mut buf, line.len());
        let half = buf.len() > s.capacity / 2;
        drop(buf);
        if half {
            // Filling up: do not wait for the next period.
            if let Some(w) = s.worker.get() {
                w.unpark();
            }
        }
    }
}

/// Asks the CPU to bring the buffer's next `len` bytes (where the next line goes, about as long
/// as this one) into cache, ready to be written.
///
/// The buffer in use was last written a period (20 ms) before, hundreds of kilobytes ago: its
/// lines are out of the core's caches, each store to them waits for the line, and the lock's
/// release waits for those stores (perf under load, `full`: 85% of this writer's time on the
/// unlock, about 0.8% of the core). Fetched now, they are in cache by the next line.
fn prefetch_next(buf: &mut Vec<u8>, len: usize) {
    let spare = buf.spare_capacity_mut();
    for byte in spare.iter().take(len).step_by(64) {
        crate::prefetch::write(byte);
    }
}

fn run<W: Write>(s: Arc<Shared>, mut sink: W) {
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    // When a failed write was last said.
    let mut said: Option<Instant> = None;
    loop {
        std::thread::park_timeout(PERIOD);
        {
            let mut buf = s.buf.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *buf, &mut batch);
        }
        s.drained.notify_all();
        if !batch.is_empty() {
            if let Err((written, e)) = write_out(&mut sink, &batch) {
                // Every line not wholly written is lost: counted, and said on stderr (stdout
                // may be what failed) at most once a minute.
                let lost = lines_in(&batch[written..]);
                s.dropped.fetch_add(lost, Ordering::Relaxed);
                s.dropped_metric.increment(lost);
                if said.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(60)) {
                    said = Some(Instant::now());
                    let _ = writeln!(
                        std::io::stderr(),
                        "towerscope: writing the log failed ({e}): {lost} lines dropped, counted \
                         in {DROPPED}"
                    );
                }
            }
            let _ = sink.flush();
            batch.clear();
        }
        if s.stop.load(Ordering::Acquire) && s.buf.lock().map(|b| b.is_empty()).unwrap_or(true) {
            return;
        }
    }
}

/// `batch` written to `sink` as `write_all` writes it; on an error, how much went out before it.
fn write_out<W: Write>(sink: &mut W, batch: &[u8]) -> Result<(), (usize, std::io::Error)> {
    let mut written = 0;
    while written < batch.len() {
        match sink.write(&batch[written..]) {
            Ok(0) => return Err((written, std::io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err((written, e)),
        }
    }
    Ok(())
}

/// The lines in `rest`, the unwritten end of a batch: each ends with a newline (a last piece
/// without one counts as a line too).
fn lines_in(rest: &[u8]) -> u64 {
    let newlines = rest.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(rest.last().is_some_and(|&b| b != b'\n'))
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else {
            return;
        };
        thread.thread().unpark();
        let deadline = Instant::now() + self.flush_deadline;
        while !thread.is_finished() {
            if Instant::now() > deadline {
                // The output is stalled: leave the thread behind rather than hang.
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = thread.join();
    }
}

/// One line's writer: the layer writes each line with a single `write_all`.
#[derive(Debug)]
pub struct LineWriter<'a>(&'a NonBlocking);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = LineWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_whole_and_in_order_and_the_guard_flushes() {
        let sink = Sink::default();
        let (w, guard) = NonBlocking::new(sink.clone(), 1 << 20, true);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        w.make_writer()
                            .write_all(format!("{t} {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 4000);
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter(|l| l.starts_with(&format!("{t} ")))
                .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
                .collect();
            assert_eq!(mine, (0..1000).collect::<Vec<_>>());
        }
        assert_eq!(w.dropped(), 0);
    }

    #[test]
    fn a_line_longer_than_the_queue_is_dropped_or_waits_for_an_empty_queue() {
        let long = [b'x'; 3000];
        // Lossy: dropped and counted, the lines around it kept.
        let sink = Sink::default();
        let (w, guard) = NonBlocking::new(sink.clone(), 1024, true);
        w.make_writer().write_all(b"a\n").unwrap();
        w.make_writer().write_all(&long).unwrap();
        w.make_writer().write_all(b"b\n").unwrap();
        drop(guard);
        assert_eq!(w.dropped(), 1);
        assert_eq!(&*sink.0.lock().unwrap(), b"a\nb\n");

        // Blocking: written whole once the queue is empty, not waited on forever.
        let sink = Sink::default();
        let (w, guard) = NonBlocking::new(sink.clone(), 1024, false);
        let (done, finished) = std::sync::mpsc::channel();
        let writer = w.clone();
        std::thread::spawn(move || {
            writer.make_writer().write_all(b"a\n").unwrap();
            writer.make_writer().write_all(&long).unwrap();
            writer.make_writer().write_all(b"b\n").unwrap();
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("a line longer than the queue must not block its writer forever");
        drop(guard);
        assert_eq!(w.dropped(), 0);
        let out = sink.0.lock().unwrap().clone();
        assert_eq!(out.len(), 2 + 3000 + 2);
        assert!(out.starts_with(b"a\n") && out.ends_with(b"b\n"));
    }

    /// An output that fails (a closed pipe, a full disk) loses the lines not wholly written:
    /// counted, and the writer goes on with the next batch.
    #[test]
    fn lines_a_failing_output_loses_are_counted() {
        /// Takes `left` bytes, then refuses everything.
        #[derive(Clone)]
        struct Failing(Arc<Mutex<(usize, Vec<u8>)>>);
        impl Write for Failing {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let mut g = self.0.lock().unwrap();
                if g.0 == 0 {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                let n = g.0.min(b.len());
                g.0 -= n;
                g.1.extend_from_slice(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Failing(Arc::new(Mutex::new((3, Vec::new()))));
        let (w, guard) = NonBlocking::new(sink.clone(), 1 << 20, true);
        for line in [&b"a\n"[..], b"b\n", b"c\n"] {
            w.make_writer().write_all(line).unwrap();
        }
        drop(guard);
        // "a\nb" went out: b and c did not reach the output whole.
        assert_eq!(&sink.0.lock().unwrap().1, b"a\nb");
        assert_eq!(w.dropped(), 2);
        assert_eq!(lines_in(b"x\ny"), 2);
        assert_eq!(lines_in(b""), 0);
    }

    #[test]
    fn blocking_mode_waits_instead_of_dropping() {
        let sink = Sink::default();
        let (w, guard) = NonBlocking::new(sink.clone(), 1024, false);
        let line = [b'x'; 99];
        for _ in 0..500 {
            let mut l = line.to_vec();
            l.push(b'\n');
            w.make_writer().write_all(&l).unwrap();
        }
        drop(guard);
        assert_eq!(w.dropped(), 0);
        assert_eq!(sink.0.lock().unwrap().len(), 500 * 100);
    }
}
