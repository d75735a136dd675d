//! The instrumented pool's overhead against raw sqlx: a trivial query on in-memory SQLite,
//! the analysis cached (the steady state), with the real Prometheus recorder installed and no
//! tracing subscriber; and with a subscriber listening to the spans (as with OpenTelemetry).
//! Plus the analyser's cost on a cache miss for a 1 KB query.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use sqlx::sqlite::SqlitePoolOptions;
use towerscope::db::{sql, Db};

/// A realistic 1 KB query: joins, a sub-select, literals, an IN list, comments.
fn query_1k() -> String {
    let mut q = String::from(
        "/* report */ WITH recent AS (SELECT o.id, o.customer_id, o.total FROM orders o \
         WHERE o.created_at > '2024-01-01' AND o.status IN ('paid', 'shipped', 'delivered')) \
         SELECT c.id, c.name, c.email, sum(r.total) AS spent, count(*) AS n \
         FROM customers c JOIN recent r ON r.customer_id = c.id \
         LEFT JOIN addresses a ON a.customer_id = c.id AND a.kind = 'billing' \
         WHERE c.deleted_at IS NULL AND c.region = $1 -- only active\n",
    );
    let mut i = 0;
    while q.len() < 1000 {
        q.push_str(&format!(" AND c.segment <> 'segment-{i}'"));
        i += 1;
    }
    q.push_str(" GROUP BY c.id, c.name, c.email ORDER BY spent DESC LIMIT 100");
    q
}

/// Raw and instrumented rounds interleaved (the machine's drift hits both alike): prints the
/// median per-query difference and ratio of CPU time over the rounds.
fn paired(rt: &tokio::runtime::Runtime, pool: &sqlx::SqlitePool, db: &Db<sqlx::Sqlite>) {
    const ROUNDS: usize = 40;
    const PER_ROUND: u32 = 400;
    // Process CPU time (all threads: the runtime's and SQLite's worker), so waits and wake-up
    // latencies, which dominate the wall time of a query here, do not drown the difference.
    let cpu = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
    };
    let time = |f: &dyn Fn() -> i64| {
        let start = cpu();
        for _ in 0..PER_ROUND {
            std::hint::black_box(f());
        }
        (cpu() - start) / f64::from(PER_ROUND)
    };
    let raw = || {
        rt.block_on(async {
            sqlx::query_scalar::<_, i64>("SELECT 1")
                .fetch_one(pool)
                .await
                .unwrap()
        })
    };
    let ours = || {
        rt.block_on(async {
            sqlx::query_scalar::<_, i64>("SELECT 1")
                .fetch_one(db)
                .await
                .unwrap()
        })
    };
    time(&raw);
    time(&ours);
    let mut diffs = Vec::new();
    let mut ratios = Vec::new();
    for i in 0..ROUNDS {
        let (r, o) = if i % 2 == 0 {
            let r = time(&raw);
            (r, time(&ours))
        } else {
            let o = time(&ours);
            (time(&raw), o)
        };
        diffs.push(o - r);
        ratios.push(o / r);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "db_select_1 paired CPU time ({ROUNDS} rounds x {PER_ROUND} queries): towerscope - raw = \
         {:+.0} ns per query (median), towerscope / raw = {:.3}",
        median(&mut diffs),
        median(&mut ratios)
    );
}

fn query_1k_static() -> &'static str {
    static Q: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    Q.get_or_init(query_1k)
}

fn bench(c: &mut Criterion) {
    let _prometheus = towerscope::metrics::Prometheus::install().expect("first recorder");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pool = rt.block_on(async {
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap()
    });
    let db = rt.block_on(async { Db::new(pool.clone()) });

    paired(&rt, &pool, &db);

    let mut g = c.benchmark_group("db_select_1");
    g.bench_function("raw_sqlx", |b| {
        b.iter(|| {
            rt.block_on(async {
                let v: i64 = sqlx::query_scalar("SELECT 1")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                v
            })
        })
    });
    g.bench_function("towerscope", |b| {
        b.iter(|| {
            rt.block_on(async {
                let v: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&db).await.unwrap();
                v
            })
        })
    });
    {
        // A subscriber that enables every span (what an OpenTelemetry layer does), minus the
        // export: the span's own cost.
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
        g.bench_function("towerscope_span_enabled", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let v: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&db).await.unwrap();
                    v
                })
            })
        });
    }
    g.finish();

    // The instrumentation alone (no database): what the pool adds to every query's CPU work.
    let mut g = c.benchmark_group("db_instrumentation_only");
    g.bench_function("select_1", |b| {
        b.iter(|| db.__instrument_one_row("SELECT 1"))
    });
    g.bench_function("select_1k_text", |b| {
        b.iter(|| db.__instrument_one_row(query_1k_static()))
    });
    {
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
        g.bench_function("select_1_span_enabled", |b| {
            b.iter(|| db.__instrument_one_row("SELECT 1"))
        });
    }
    g.finish();

    let q = query_1k();
    assert!(q.len() >= 1000, "{}", q.len());
    let mut g = c.benchmark_group("sql_analyser");
    g.bench_function("analyze_1k_miss", |b| b.iter(|| sql::analyze(&q)));
    let cache = sql::AnalysisCache::new(16);
    cache.get(&q);
    g.bench_function("cache_hit_1k", |b| b.iter(|| cache.get(&q)));
    g.bench_function("cache_miss_1k_evicting", |b| {
        let tiny = sql::AnalysisCache::new(1);
        let other = format!("{q} "); // a different text, so each get evicts and re-analyses
        let mut flip = false;
        b.iter_batched(
            || {
                flip = !flip;
                flip
            },
            |f| tiny.get(if f { &q } else { &other }),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
