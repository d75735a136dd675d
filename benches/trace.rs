//! Tracing on the request path: the server span layer on a plain Tower service (unsampled
//! caller, sampled without export), against the bare service; and the wire formats alone:
//! extracting a typical caller's context and injecting it into a downstream request.

use std::convert::Infallible;

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Request, Response};
use support::*;
use tower::{Layer, Service};
use towerscope::lifecycle::ObserveLayer;
use towerscope::trace::{Exporter, Propagators, Sampler, SpanId, TraceConfig, TraceFlags};

fn plain() -> impl Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone
{
    tower::service_fn(|_: Request<String>| async { Ok(Response::new(String::from("ok"))) })
}

fn one<S, B>(svc: &mut S, traceparent: Option<&'static str>)
where
    S: Service<Request<String>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Unpin,
{
    let mut req = Request::get("/users/7");
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let res = block_on(svc.call(req.body(String::new()).unwrap())).unwrap();
    drain(res.into_body());
}

fn server_span(c: &mut Criterion) {
    const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let mut g = c.benchmark_group("server_span");
    let mut bare = plain();
    g.bench_function("bare", |b| b.iter(|| one(&mut bare, Some(UNSAMPLED))));
    // What every request pays with tracing on: the lifecycle core alone.
    let mut core = ObserveLayer::with_observer(())
        .route_fn(|_, _| Some("/users/{id}"))
        .layer(plain());
    g.bench_function("core_only", |b| b.iter(|| one(&mut core, Some(UNSAMPLED))));
    let tracing = TraceConfig::from_env("bench")
        .exporter(Exporter::None)
        .sampler(Sampler::ParentBasedAlwaysOn)
        .install();
    let mut traced = tracing
        .layer()
        .route_fn(|_, _| Some("/users/{id}"))
        .layer(plain());
    g.bench_function("unsampled_caller", |b| {
        b.iter(|| one(&mut traced, Some(UNSAMPLED)))
    });
    g.bench_function("sampled_root_not_exported", |b| {
        b.iter(|| one(&mut traced, None))
    });
    // The target's figure itself: what an unsampled request adds over bare, paired; and the
    // trace observer's own part, over the lifecycle core every towerscope stack pays.
    bench_added(
        &mut g,
        "unsampled_caller_added",
        || one(&mut bare, Some(UNSAMPLED)),
        || one(&mut traced, Some(UNSAMPLED)),
    );
    bench_added(
        &mut g,
        "unsampled_caller_over_core",
        || one(&mut core, Some(UNSAMPLED)),
        || one(&mut traced, Some(UNSAMPLED)),
    );
    g.finish();
}

fn wire(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("host", "example.org".parse().unwrap());
    headers.insert("user-agent", "bench/1.0".parse().unwrap());
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let p = Propagators::default();
    let mut g = c.benchmark_group("propagation");
    g.bench_function("extract_traceparent_only", |b| {
        b.iter(|| p.extract(&headers))
    });
    let mut full = headers.clone();
    full.insert(
        "tracestate",
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".parse().unwrap(),
    );
    full.insert(
        "baggage",
        "userId=alice,isProduction=false".parse().unwrap(),
    );
    g.bench_function("extract_with_tracestate_and_baggage", |b| {
        b.iter(|| p.extract(&full))
    });
    let none = HeaderMap::new();
    g.bench_function("extract_nothing", |b| b.iter(|| p.extract(&none)));
    let got = p.extract(&full);
    let parent = got.parent.unwrap();
    let span = SpanId([1, 2, 3, 4, 5, 6, 7, 8]);
    g.bench_function("inject_into_fresh_headers", |b| {
        b.iter(|| {
            let mut out = HeaderMap::new();
            p.inject(
                parent.trace_id,
                span,
                TraceFlags(1),
                &got.state,
                &got.baggage,
                &mut out,
            );
            out
        })
    });
    g.finish();
}

criterion_group!(benches, server_span, wire);
criterion_main!(benches);
