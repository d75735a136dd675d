//! The cost of one resource collection (process, cgroup, one disk, the runtime), which runs
//! every 5 s by default on a background thread: the share of a core is this time / 5 s.

use criterion::{criterion_group, criterion_main, Criterion};
use towerscope::resources::Resources;

fn bench(c: &mut Criterion) {
    let _prometheus = towerscope::metrics::Prometheus::install().expect("first recorder");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut collector = Resources::builder()
        .disk(std::env::temp_dir())
        .runtime(rt.handle().clone())
        .build();
    c.bench_function("resources_collect_once", |b| b.iter(|| collector.collect()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
