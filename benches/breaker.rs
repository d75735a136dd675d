//! Circuit breaker overhead in the CLOSED state: a trivial service with and without the
//! breaker, on one thread and on two threads hammering one breaker.

use std::convert::Infallible;
use std::time::{Duration, Instant};

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use support::*;
use tower::{Layer, Service};
use towerscope::breaker::{Breaker, CircuitBreakerLayer, ErrorsAreFailures};

fn inner() -> impl Service<u64, Response = u64, Error = Infallible> + Clone {
    tower::service_fn(|x: u64| std::future::ready(Ok::<_, Infallible>(x + 1)))
}

fn one<S: Service<u64>>(svc: &mut S, x: u64) -> bool {
    block_on(std::future::poll_fn(|cx| svc.poll_ready(cx))).is_ok() && block_on(svc.call(x)).is_ok()
}

fn breaker() -> Breaker {
    // Never trips in this benchmark (all calls succeed); the default time window.
    Breaker::builder("bench").build()
}

fn bench(c: &mut Criterion) {
    // The real exporter, so the breaker's counters and histogram cost what they cost.
    let prometheus = towerscope::metrics::Prometheus::install().expect("first recorder");
    let mut g = c.benchmark_group("breaker_closed");
    let mut bare = inner();
    g.bench_function("bare", |b| b.iter(|| one(&mut bare, 1)));
    let layer = CircuitBreakerLayer::new(breaker()).classifier(ErrorsAreFailures);
    let mut svc = layer.layer(inner());
    g.bench_function("breaker", |b| b.iter(|| one(&mut svc, 1)));
    let layer = CircuitBreakerLayer::new(Breaker::builder("bench-count").count_window(100).build())
        .classifier(ErrorsAreFailures);
    let mut svc = layer.layer(inner());
    g.bench_function("breaker_count_window", |b| b.iter(|| one(&mut svc, 1)));
    g.finish();

    // Scaling: calls per second through ONE breaker from 1 and from 2 threads.
    let mut g = c.benchmark_group("breaker_two_threads");
    g.sample_size(10);
    for threads in [1usize, 2] {
        let shared = breaker();
        g.bench_function(format!("{threads}_threads_x_100k_calls"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for _ in 0..threads {
                            let layer = CircuitBreakerLayer::new(shared.clone())
                                .classifier(ErrorsAreFailures);
                            s.spawn(move || {
                                let mut svc = layer.layer(inner());
                                for i in 0..100_000u64 {
                                    one(&mut svc, i);
                                }
                            });
                        }
                    });
                    total += start.elapsed();
                }
                total
            })
        });
    }
    g.finish();
    assert!(prometheus.render().contains("circuit_breaker_calls_total"));
}

criterion_group!(benches, bench);
criterion_main!(benches);
