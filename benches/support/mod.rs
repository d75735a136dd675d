//! Shared by the benches: drive futures and bodies that never wait, on the bench thread.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

/// Polls a future that never waits to completion.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Reads a body that never waits to its end.
#[allow(dead_code)] // not every bench reads bodies
pub fn drain<B: http_body::Body + Unpin>(mut body: B) {
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(_)) => {}
            Poll::Ready(None) => return,
            Poll::Pending => {}
        }
        if body.is_end_stream() {
            return;
        }
    }
}

/// Benches how much longer `with` takes than `without`: the two run in alternating batches
/// of 256 requests (criterion's `iter_custom`), so the host's slow swings (clock frequency,
/// neighbours) fall on both alike. The bare trace bench alone measured 291 to 401 ns in runs
/// minutes apart on this host; a bare-against-bare pairing measures 0 +/- 1 ns.
#[allow(dead_code)] // not every bench compares
pub fn bench_added(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut without: impl FnMut(),
    mut with: impl FnMut(),
) {
    use std::time::{Duration, Instant};
    const BATCH: u64 = 256;
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let (mut base, mut total) = (Duration::ZERO, Duration::ZERO);
            let mut left = iters;
            while left > 0 {
                let n = left.min(BATCH);
                let t = Instant::now();
                for _ in 0..n {
                    without();
                }
                base += t.elapsed();
                let t = Instant::now();
                for _ in 0..n {
                    with();
                }
                total += t.elapsed();
                left -= n;
            }
            total.saturating_sub(base)
        })
    });
}

/// Runs `each` `iters` times on each of two new threads started together (as two workers; two
/// new threads also take two different metric shards), on the state `setup` makes for each
/// thread: the slower thread's time, for criterion's `iter_custom`.
#[allow(dead_code)] // not every bench runs two threads
pub fn on_two_threads<T>(
    iters: u64,
    setup: impl Fn() -> T + Sync,
    each: impl Fn(&mut T) + Sync,
) -> std::time::Duration {
    let start = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let run = || {
            let mut state = setup();
            start.wait();
            let t = std::time::Instant::now();
            for _ in 0..iters {
                each(&mut state);
            }
            t.elapsed()
        };
        let (a, b) = (s.spawn(run), s.spawn(run));
        a.join().unwrap().max(b.join().unwrap())
    })
}
