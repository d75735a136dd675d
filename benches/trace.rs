//! Propagation on the request path: extracting a typical caller's context (traceparent,
//! tracestate, baggage) and injecting it into a downstream request's headers.

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use towerscope::trace::{Propagators, SpanId, TraceFlags};

fn bench(c: &mut Criterion) {
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

criterion_group!(benches, bench);
criterion_main!(benches);
