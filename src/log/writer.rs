//! The non-blocking writer: request threads append whole lines to a bounded buffer and return;
//! a writer thread takes the buffered lines every 20 ms and writes them in one call.
//!
//! Written here rather than taken from tracing-appender for three reasons measured on the
//! request path: tracing-appender allocates a `Vec` per line and sends it over a channel,
//! waking the writer thread (a futex system call) for most lines; this writer copies the line
//! into a buffer under a short lock, makes no system call, and the writer thread writes
//! batches. A dropped line is counted where it is dropped, exactly. And the buffer is one per
//! thread shard (see `crate::shard`), so workers on different cores do not take the same lock
//! and write the same cache lines for every line (criterion `writer/line_two_threads`, per
//! line with two threads: 107-154 ns with one shared buffer, 51-58 ns with the shards; one
//! thread, `writer/line`: 22-24 ns, 29 ns with the shards' stamp).
//!
//! Order: each line is stamped with the clock (the lifecycle's TSC reading) under its shard's
//! lock, the writer thread takes every shard at one instant (all locks held together) and
//! merges their lines by stamp, so a request whose lines were written from different workers
//! has them in the order they were written.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use metrics::{Counter, Key, KeyName, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use crate::lifecycle::Tick;
use crate::shard::{self, Padded};

/// `log_records_dropped_total`
pub const DROPPED: &str = "log_records_dropped_total";

/// One shard's lines, in the order they came; with more than one shard, where each ends and
/// when it came (the key the writer thread merges the shards by).
#[derive(Debug)]
struct Lines {
    bytes: Vec<u8>,
    ends: Vec<(Tick, usize)>,
}

impl Lines {
    fn with_capacity(bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// A shard of the queue, and what its waiting writers (blocking mode) wait on.
#[derive(Debug)]
struct Slot {
    lines: Mutex<Lines>,
    drained: Condvar,
}

struct Shared {
    shards: Box<[Padded<Slot>]>,
    /// Bytes per shard.
    capacity: usize,
    lossy: bool,
    dropped: AtomicU64,
    dropped_metric: Counter,
    stop: AtomicBool,
    worker: std::sync::OnceLock<std::thread::Thread>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A cloneable handle that writes lines without waiting (see the module docs).
#[derive(Clone)]
pub struct NonBlocking {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NonBlocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonBlocking")
            .field("shards", &self.shared.shards.len())
            .field("shard_capacity", &self.shared.capacity)
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
    /// A writer to `sink` holding at most `capacity` bytes, split evenly among the thread shards
    /// (at least 1 KiB each). `lossy`: when a thread's shard is full, its lines are dropped
    /// and counted in `log_records_dropped_total`; otherwise the caller waits.
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
        let n = shard::count();
        let capacity = (capacity / n).max(1024);
        let shared = Arc::new(Shared {
            shards: (0..n)
                .map(|_| {
                    Padded(Slot {
                        lines: Mutex::new(Lines::with_capacity(capacity.min(64 * 1024))),
                        drained: Condvar::new(),
                    })
                })
                .collect(),
            capacity,
            lossy,
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
        let slot = &s.shards[shard::mine(s.shards.len())].0;
        let mut q = slot.lock();
        // A line longer than the shard never fits: dropped (lossy), or, for a caller that
        // waits, taken alone into the emptied shard (waiting for more room would never end).
        while q.bytes.len() + line.len() > s.capacity && (s.lossy || !q.bytes.is_empty()) {
            if s.lossy || s.stop.load(Ordering::Relaxed) {
                drop(q);
                s.dropped.fetch_add(1, Ordering::Relaxed);
                s.dropped_metric.increment(1);
                return;
            }
            if let Some(w) = s.worker.get() {
                w.unpark();
            }
            q = slot.drained.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        q.bytes.extend_from_slice(line);
        if s.shards.len() > 1 {
            // Read under the lock: a shard's keys increase, and a line written after another
            // (on any thread) has the later key.
            let end = q.bytes.len();
            q.ends.push((Tick::now(), end));
        }
        prefetch_next(&mut q.bytes, line.len());
        let half = q.bytes.len() > s.capacity / 2;
        drop(q);
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
    let n = s.shards.len();
    // Each shard's lines are swapped with these: the buffers go round, none is reallocated.
    let mut taken: Vec<Lines> = (0..n)
        .map(|_| Lines::with_capacity(s.capacity.min(64 * 1024)))
        .collect();
    // The shards' lines merged, when more than one has any.
    let mut merged: Vec<u8> = Vec::new();
    // When a failed write was last said.
    let mut said: Option<Instant> = None;
    loop {
        std::thread::park_timeout(PERIOD);
        {
            // Every shard at one instant: a line in this batch was written before every line
            // of the next, so a request's lines cannot come out of order across batches.
            let mut held: Vec<MutexGuard<'_, Lines>> =
                s.shards.iter().map(|p| p.0.lock()).collect();
            for (q, t) in held.iter_mut().zip(&mut taken) {
                std::mem::swap(&mut **q, t);
            }
        }
        for p in s.shards.iter() {
            p.0.drained.notify_all();
        }
        let mut filled = taken.iter().filter(|t| !t.bytes.is_empty());
        let batch: &[u8] = match (filled.next(), filled.next()) {
            (None, _) => &[],
            // One shard's lines: as they are.
            (Some(one), None) => &one.bytes,
            _ => {
                merged.clear();
                merge(&taken, &mut merged);
                &merged
            }
        };
        if !batch.is_empty() {
            if let Err((written, e)) = write_out(&mut sink, batch) {
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
        }
        taken.iter_mut().for_each(Lines::clear);
        if s.stop.load(Ordering::Acquire) && s.shards.iter().all(|p| p.0.lock().bytes.is_empty()) {
            return;
        }
    }
}

/// The lines of every shard into `out`, by key: a merge (each shard's keys increase), taking
/// the shard whose next line came first (the lower shard on a tie).
fn merge(shards: &[Lines], out: &mut Vec<u8>) {
    out.reserve(shards.iter().map(|l| l.bytes.len()).sum());
    // Per shard: its next line, and where that line starts.
    let mut next = vec![(0usize, 0usize); shards.len()];
    loop {
        let mut first: Option<(Tick, usize)> = None;
        for (i, l) in shards.iter().enumerate() {
            if let Some(&(key, _)) = l.ends.get(next[i].0) {
                if first.is_none_or(|(k, _)| key < k) {
                    first = Some((key, i));
                }
            }
        }
        let Some((_, i)) = first else {
            return;
        };
        let (line, start) = next[i];
        let end = shards[i].ends[line].1;
        out.extend_from_slice(&shards[i].bytes[start..end]);
        next[i] = (line + 1, end);
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

    /// A request's lines written from different workers (so different shards) come out in the
    /// order they were written: two threads on different shards take turns, each line written
    /// after the other thread's previous one; concatenating the shards would put them out of
    /// order.
    #[test]
    fn lines_written_in_turn_from_two_shards_come_out_in_the_order_written() {
        use std::sync::mpsc::channel;
        const LINES: u32 = 3000;
        let sink = Sink::default();
        let (w, guard) = NonBlocking::new(sink.clone(), 1 << 20, true);
        let n = w.shared.shards.len();
        // The next line to write, passed between the two threads.
        let turn = Arc::new((Mutex::new(0u32), Condvar::new()));
        // Threads are numbered round-robin: among n + 1 of them, two have different shards
        // (when there is more than one). Each says its shard, then is given a part (0 or 1:
        // writes the even or the odd lines) or none.
        let (said_tx, said_rx) = channel();
        let mut parts = Vec::new();
        let mut threads = Vec::new();
        for t in 0..=n {
            let (part_tx, part_rx) = channel::<Option<u32>>();
            let (w, said_tx, turn) = (w.clone(), said_tx.clone(), turn.clone());
            threads.push(std::thread::spawn(move || {
                said_tx.send((t, shard::mine(n))).unwrap();
                let Ok(Some(part)) = part_rx.recv() else {
                    return;
                };
                let (next, moved) = &*turn;
                let mut i = next.lock().unwrap();
                while *i < LINES {
                    if *i % 2 == part {
                        w.make_writer()
                            .write_all(format!("{}\n", *i).as_bytes())
                            .unwrap();
                        *i += 1;
                        moved.notify_all();
                    } else {
                        i = moved.wait(i).unwrap();
                    }
                }
            }));
            parts.push(part_tx);
        }
        let mut shards: Vec<(usize, usize)> = (0..=n).map(|_| said_rx.recv().unwrap()).collect();
        shards.sort_by_key(|&(t, _)| t);
        let first = shards[0];
        let second = shards
            .iter()
            .find(|&&(_, s)| s != first.1)
            .copied()
            .unwrap_or(shards[1]);
        assert!(n == 1 || first.1 != second.1);
        for (t, tx) in parts.iter().enumerate() {
            let part = [(first.0, 0), (second.0, 1)]
                .iter()
                .find(|&&(chosen, _)| chosen == t)
                .map(|&(_, p)| p);
            tx.send(part).unwrap();
        }
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let written: Vec<u32> = text.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(written.len(), LINES as usize);
        let wrong = written.iter().zip(0..).position(|(&w, i)| w != i);
        assert_eq!(wrong, None, "out of order from line {wrong:?}");
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
