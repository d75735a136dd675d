//! In-process cost of the RED layer: the same axum router with and without it, driven on the
//! benchmark thread (the handlers never wait), so the difference is the layer's per-request
//! cost. Also the plain Tower service case, where axum's own per-layer boxing is absent, driven
//! from one thread and from two at once (as two workers: what both write shows there); and the
//! metric storage from two threads: one histogram series recorded (each thread has its own
//! shard: two threads should cost what one does, unless their shards share a cache line) and
//! one gauge set. And one scrape of `/metrics`, as text, gzipped, and OpenMetrics gzipped.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use support::*;
use tower::{Layer, Service};
use towerscope::metrics::{Prometheus, Red};

fn one<S, B>(svc: &mut S, path: &'static str)
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Unpin,
{
    let req = Request::get(path).body(Body::empty()).unwrap();
    let res = block_on(svc.call(req)).unwrap();
    drain(res.into_body());
}

fn router() -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/", get(|| async { "ok" }))
}

fn plain() -> impl Service<Request<Body>, Response = Response<String>, Error = Infallible> + Clone {
    tower::service_fn(|_: Request<Body>| async { Ok(Response::new(String::from("ok"))) })
}

fn bench(c: &mut Criterion) {
    // The real exporter, as in production; not installed globally so runs stay independent.
    let (recorder, prometheus) = Prometheus::builder().build();
    let recorder = Arc::new(recorder);
    let red = || Red::builder().recorder(recorder.clone());

    let mut g = c.benchmark_group("axum_router");
    let mut bare = router().into_service::<Body>();
    g.bench_function("bare", |b| b.iter(|| one(&mut bare, "/users/7")));
    let mut observed = router().layer(red().layer()).into_service::<Body>();
    g.bench_function("red", |b| b.iter(|| one(&mut observed, "/users/7")));
    g.finish();

    let mut g = c.benchmark_group("tower_service");
    let mut bare = plain();
    g.bench_function("bare", |b| b.iter(|| one(&mut bare, "/users/7")));
    let layer = red().layer().route_fn(|_, _| Some("/users/{id}"));
    let mut observed = layer.layer(plain());
    g.bench_function("red", |b| b.iter(|| one(&mut observed, "/users/7")));
    // The target's figure itself: what the layer adds over bare, paired.
    bench_added(
        &mut g,
        "red_added",
        || one(&mut bare, "/users/7"),
        || one(&mut observed, "/users/7"),
    );
    // Two threads at once, each with its own clone of the service (as two workers): what the
    // layer writes that both threads share (a reference count, a lock) moves between cores on
    // every request and shows here, not in the single-thread figures.
    g.bench_function("bare_two_threads", |b| {
        b.iter_custom(|iters| on_two_threads(iters, || bare.clone(), |s| one(s, "/users/7")))
    });
    g.bench_function("red_two_threads", |b| {
        b.iter_custom(|iters| on_two_threads(iters, || observed.clone(), |s| one(s, "/users/7")))
    });
    // The lifecycle core alone (clock, route, future and body wrappers), no observer.
    let core =
        towerscope::lifecycle::ObserveLayer::with_observer(()).route_fn(|_, _| Some("/users/{id}"));
    let mut observed = core.layer(plain());
    g.bench_function("core_only", |b| b.iter(|| one(&mut observed, "/users/7")));
    g.bench_function("core_only_two_threads", |b| {
        b.iter_custom(|iters| on_two_threads(iters, || observed.clone(), |s| one(s, "/users/7")))
    });
    g.finish();

    // One series, as the duration histogram of a busy route: from one thread, and from two
    // threads at once (per record, each thread recording `iters` values).
    use metrics::Recorder;
    static META: metrics::Metadata<'static> =
        metrics::Metadata::new("bench", metrics::Level::INFO, None);
    let histogram = recorder.register_histogram(
        &metrics::Key::from_name("bench_request_duration_seconds"),
        &META,
    );
    let mut g = c.benchmark_group("histogram");
    g.bench_function("record_one_thread", |b| {
        b.iter(|| histogram.record(std::hint::black_box(0.001)))
    });
    g.bench_function("record_two_threads", |b| {
        b.iter_custom(|iters| {
            on_two_threads(
                iters,
                || (),
                |_| histogram.record(std::hint::black_box(0.001)),
            )
        })
    });
    // A gauge set from two threads at once, as the load shedder's utilization is on every
    // admission and release.
    let gauge = recorder.register_gauge(&metrics::Key::from_name("bench_utilization_ratio"), &META);
    g.bench_function("gauge_set_two_threads", |b| {
        b.iter_custom(|iters| {
            on_two_threads(
                iters,
                || 0u64,
                |i| {
                    *i += 1;
                    gauge.set(std::hint::black_box((*i % 8) as f64 / 8.0));
                },
            )
        })
    });
    g.finish();

    // Keep upkeep honest: render once so the samples recorded above were consumed.
    let _ = prometheus.render();

    scrape(c);
}

/// One scrape of a service with 20 routes answering 200, 404 and 500: the `/metrics` answer
/// (rendered on the blocking pool) uncompressed and gzipped, as Prometheus asks for it.
fn scrape(c: &mut Criterion) {
    // Exemplars kept: the text answers are as without them, and OpenMetrics can be asked for.
    let (recorder, prometheus) = Prometheus::builder().exemplars(true).build();
    metrics::with_local_recorder(&recorder, || {
        for route in 0..20 {
            for status in ["200", "404", "500"] {
                let labels = [
                    ("http_request_method", "GET".to_owned()),
                    ("http_route", format!("/api/v1/resource{route}/{{id}}")),
                    ("http_response_status_code", status.to_owned()),
                ];
                let h = metrics::histogram!("http_server_request_duration_seconds", &labels);
                for i in 0..100 {
                    h.record(f64::from(i) * 0.003);
                }
                metrics::gauge!("http_server_active_requests", &labels[..2]).set(0.0);
            }
        }
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut headers = http::HeaderMap::new();
    let size = |headers: &http::HeaderMap| {
        let res = runtime.block_on(prometheus.response_to(headers));
        http_body::Body::size_hint(res.body()).exact().unwrap()
    };
    let plain = size(&headers);
    headers.insert(http::header::ACCEPT_ENCODING, "gzip".parse().unwrap());
    let gzipped = size(&headers);
    eprintln!("scrape: {plain} bytes of text, {gzipped} gzipped");
    let mut g = c.benchmark_group("scrape");
    g.bench_function("text", |b| {
        b.iter(|| runtime.block_on(prometheus.response_to(&http::HeaderMap::new())))
    });
    g.bench_function("gzip", |b| {
        b.iter(|| runtime.block_on(prometheus.response_to(&headers)))
    });
    // What Prometheus asks for when the registry keeps exemplars: OpenMetrics, gzipped.
    headers.insert(
        http::header::ACCEPT,
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            .parse()
            .unwrap(),
    );
    g.bench_function("openmetrics_gzip", |b| {
        b.iter(|| runtime.block_on(prometheus.response_to(&headers)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
