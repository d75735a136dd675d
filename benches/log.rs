//! Request log cost in process: the same trivial service with and without the request log,
//! the record going through the JSON layer and the non-blocking writer (to a sink), and the
//! cost of a record that is filtered out (level) or sampled out; a handler's record (rate
//! limited and not), a line into the writer and a new request id, each from one thread and
//! from two at once (as two workers).

use std::convert::Infallible;

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use support::*;
use tower::{Layer, Service};
use towerscope::lifecycle::ObserveLayer;
use towerscope::log::{Format, JsonLayer, LogConfig, RequestId, RequestLog, Sampling};
use tracing_subscriber::layer::SubscriberExt;

fn plain() -> impl Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone {
    tower::service_fn(|_: Request<()>| async { Ok(Response::new(String::from("ok"))) })
}

fn one<S, B>(svc: &mut S)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Unpin,
{
    let req = Request::get("/users/7")
        .header("x-request-id", "bench-request-0001")
        .header("user-agent", "bench/1.0")
        .body(())
        .unwrap();
    drain(block_on(svc.call(req)).unwrap().into_body());
}

fn layer() -> ObserveLayer<RequestLog> {
    ObserveLayer::with_observer(RequestLog::builder().build()).route_fn(|_, _| Some("/users/{id}"))
}

fn bench(c: &mut Criterion) {
    let (writer, _guard) = towerscope::log::NonBlocking::new(std::io::sink(), 8 << 20, true);
    // The JSON layer over the real writer; `keep` is the sampling probability.
    let json = |keep: f64| {
        tracing_subscriber::registry().with(
            JsonLayer::new("bench", writer.clone())
                .rate_limit(None)
                .sampling(Sampling {
                    probability: keep,
                    seed: 1,
                }),
        )
    };
    let record = || tracing::info!(status = 200u16, path = "/users/7", "request finished");

    let mut g = c.benchmark_group("request_log");
    let mut bare = plain();
    g.bench_function("bare", |b| b.iter(|| one(&mut bare)));
    // The record is built, formatted as JSON and queued for the writer thread; then the same
    // request whose INFO record is sampled out (it still runs in its span).
    for (name, keep) in [("logged", 1.0), ("sampled_out", 0.0)] {
        tracing::subscriber::with_default(json(keep), || {
            let mut svc = layer().layer(plain());
            g.bench_function(name, |b| b.iter(|| one(&mut svc)));
        });
    }
    // The target's figure itself: what a logged request adds over bare, paired. Under a
    // hand-assembled registry (the request span made up front), and under the subscriber
    // `LogConfig` installs (the span made only when asked for; here never).
    tracing::subscriber::with_default(json(1.0), || {
        let mut svc = layer().layer(plain());
        bench_added(&mut g, "logged_added", || one(&mut bare), || one(&mut svc));
    });
    {
        let (dispatch, _log_guard) = LogConfig::from_env("bench")
            .format(Format::Json)
            .filter("info")
            .rate_limit(None)
            .dispatch_with_writer(std::io::sink())
            .expect("a valid configuration");
        tracing::dispatcher::with_default(&dispatch, || {
            let mut svc = layer().layer(plain());
            bench_added(
                &mut g,
                "logged_added_log_config",
                || one(&mut bare),
                || one(&mut svc),
            );
        });
        // Dropped here: a dispatcher still alive makes every callsite ask again per call.
    }
    g.finish();

    // One record alone: written, filtered out by level, sampled out.
    let mut g = c.benchmark_group("one_record");
    tracing::subscriber::with_default(json(1.0), || {
        g.bench_function("written", |b| b.iter(record));
    });
    let filtered = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::WARN)
        .with(JsonLayer::new("bench", writer.clone()));
    tracing::subscriber::with_default(filtered, || {
        g.bench_function("filtered_out", |b| b.iter(record));
    });
    tracing::subscriber::with_default(json(0.0), || {
        g.bench_function("sampled_out", |b| b.iter(record));
    });
    g.finish();

    // A handler's record (not the request log's own) through the JSON layer, with its
    // default rate limit (100 per call site per minute: past that, counted and dropped) and
    // without, from one thread and from two at once (as two workers).
    let mut g = c.benchmark_group("handler_record");
    for (name, limit) in [
        ("rate_limited", Some(towerscope::log::RateLimit::default())),
        ("unlimited", None),
    ] {
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::registry()
                .with(JsonLayer::new("bench", writer.clone()).rate_limit(limit)),
        );
        tracing::dispatcher::with_default(&dispatch, || {
            g.bench_function(name, |b| b.iter(record));
        });
        g.bench_function(format!("{name}_two_threads"), |b| {
            b.iter_custom(|iters| {
                on_two_threads(
                    iters,
                    || tracing::dispatcher::set_default(&dispatch),
                    |_| record(),
                )
            })
        });
    }
    g.finish();

    // One 370-byte line into the non-blocking writer (its writer thread drains to a sink),
    // from one thread and from two at once (as two workers).
    let (nb, _guard) = towerscope::log::NonBlocking::new(std::io::sink(), 8 << 20, true);
    let line = [b'x'; 370];
    let write = |nb: &towerscope::log::NonBlocking| {
        use std::io::Write;
        use tracing_subscriber::fmt::MakeWriter;
        nb.make_writer().write_all(&line).unwrap();
    };
    let mut g = c.benchmark_group("writer");
    g.bench_function("line", |b| b.iter(|| write(&nb)));
    g.bench_function("line_two_threads", |b| {
        b.iter_custom(|iters| on_two_threads(iters, || (), |_| write(&nb)))
    });
    g.finish();

    // A new request id, on one thread and on two at once (as two workers).
    let mut g = c.benchmark_group("request_id");
    g.bench_function("generate", |b| b.iter(RequestId::generate));
    g.bench_function("generate_two_threads", |b| {
        b.iter_custom(|iters| {
            on_two_threads(
                iters,
                || (),
                |_| {
                    std::hint::black_box(RequestId::generate());
                },
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
