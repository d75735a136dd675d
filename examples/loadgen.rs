//! A load generator for the example server: a mix of routes, a live progress line, latency
//! percentiles, and failure phases, so the breaker, error rates and health can be watched
//! changing.
//!
//! ```text
//! cargo run --release --example server &
//! cargo run --release --example loadgen -- --url http://127.0.0.1:3000 --concurrency 16 \
//!     --duration 60 --fail-phase 20:10
//! ```
//!
//! Mix: `GET /echo/{n}` 40%, `GET /users/{id}` 15% (users created first), `GET /downstream`
//! 15%, `GET /simulate?ms=5&fail=P` 20%, `GET /chain?hops=1` 10%. `P` is `--fail` (default
//! 0.01); during a failure phase (`--fail-phase START:LENGTH`, seconds, repeatable) `/simulate`
//! and `/downstream` fail every time, which opens the downstream breaker; after it they
//! recover. `--rate R` caps the total rate (requests/s); without it the loop is closed. The
//! summary is printed at the end, and as one JSON line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

struct Args {
    url: String,
    concurrency: usize,
    duration: Duration,
    rate: Option<f64>,
    fail: f64,
    phases: Vec<(Duration, Duration)>,
}

const USAGE: &str = "usage: loadgen --url URL [--concurrency C] [--duration SECONDS] [--rate R] \
                     [--fail P] [--fail-phase START:LENGTH]...";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: "http://127.0.0.1:3000".into(),
        concurrency: 8,
        duration: Duration::from_secs(10),
        rate: None,
        fail: 0.01,
        phases: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let secs = |v: String| v.parse::<f64>().map(Duration::from_secs_f64);
        match flag.as_str() {
            "--url" => a.url = value()?.trim_end_matches('/').to_owned(),
            "--concurrency" => a.concurrency = value()?.parse().map_err(|e| format!("{e}"))?,
            "--duration" => a.duration = secs(value()?).map_err(|e| format!("{e}"))?,
            "--rate" => a.rate = Some(value()?.parse().map_err(|e| format!("{e}"))?),
            "--fail" => a.fail = value()?.parse().map_err(|e| format!("{e}"))?,
            "--fail-phase" => {
                let v = value()?;
                let (s, l) = v.split_once(':').ok_or("--fail-phase START:LENGTH")?;
                a.phases.push((
                    secs(s.into()).map_err(|e| format!("{e}"))?,
                    secs(l.into()).map_err(|e| format!("{e}"))?,
                ));
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    a.concurrency = a.concurrency.max(1);
    Ok(a)
}

/// Latencies in microseconds, and counts by status class.
#[derive(Default)]
struct Stats {
    latencies: Mutex<Vec<u32>>,
    ok: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    failed: AtomicU64,
}

impl Stats {
    fn total(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
            + self.client_errors.load(Ordering::Relaxed)
            + self.server_errors.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn in_phase(phases: &[(Duration, Duration)], t: Duration) -> bool {
    phases.iter().any(|(s, l)| t >= *s && t < *s + *l)
}

async fn worker(client: Client, args: Arc<Args>, stats: Arc<Stats>, start: Instant, users: u32) {
    let pace = args
        .rate
        .map(|r| Duration::from_secs_f64(args.concurrency as f64 / r.max(0.001)));
    let mut next = Instant::now();
    while start.elapsed() < args.duration {
        if let Some(p) = pace {
            tokio::time::sleep_until(next.into()).await;
            next += p;
        }
        let failing = in_phase(&args.phases, start.elapsed());
        let fail = if failing { 1.0 } else { args.fail };
        let roll = fastrand::u32(..100);
        let path = match roll {
            0..40 => format!("/echo/{}", fastrand::u32(..1000)),
            40..55 => format!("/users/{}", 1 + fastrand::u32(..users.max(1))),
            55..70 if failing => "/downstream?fail=1".to_owned(),
            55..70 => "/downstream".to_owned(),
            70..90 => format!("/simulate?ms=5&fail={fail}"),
            _ => "/chain?hops=1".to_owned(),
        };
        let req = http::Request::get(format!("{}{path}", args.url))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let t = Instant::now();
        match client.request(req).await {
            Ok(res) => {
                let status = res.status();
                let _ = res.into_body().collect().await;
                let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
                stats.latencies.lock().expect("stats").push(us);
                let counter = if status.is_server_error() {
                    &stats.server_errors
                } else if status.is_client_error() {
                    &stats.client_errors
                } else {
                    &stats.ok
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    // Users for the `/users/{id}` share of the mix.
    let mut users = 0;
    for i in 0..20 {
        let body = format!(
            r#"{{"name":"load-{i}","email":"load-{i}-{}@example.org"}}"#,
            fastrand::u64(..)
        );
        let req = http::Request::post(format!("{}/users", args.url))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        if let Ok(res) = client.request(req).await {
            if res.status().is_success() {
                users += 1;
            }
        }
    }
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            tokio::spawn(worker(
                client.clone(),
                args.clone(),
                stats.clone(),
                start,
                users,
            ))
        })
        .collect();
    // The live progress line, once a second.
    let progress = {
        let (stats, args) = (stats.clone(), args.clone());
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let total = stats.total();
                let t = start.elapsed();
                let recent = {
                    let l = stats.latencies.lock().expect("stats");
                    let mut tail: Vec<u32> =
                        l[l.len().saturating_sub((total - last) as usize)..].to_vec();
                    tail.sort_unstable();
                    tail
                };
                eprint!(
                    "\r{:>5.1}s {:>8} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  5xx {:>6}  failed {:>4}{}   ",
                    t.as_secs_f64(),
                    total - last,
                    percentile(&recent, 0.5),
                    percentile(&recent, 0.99),
                    stats.server_errors.load(Ordering::Relaxed),
                    stats.failed.load(Ordering::Relaxed),
                    if in_phase(&args.phases, t) { "  [failure phase]" } else { "" },
                );
                last = total;
            }
        })
    };
    for w in workers {
        let _ = w.await;
    }
    progress.abort();
    let elapsed = start.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *stats.latencies.lock().expect("stats"));
    l.sort_unstable();
    let total = stats.total();
    eprintln!();
    let rps = total as f64 / elapsed;
    let (p50, p90, p99, max) = (
        percentile(&l, 0.5),
        percentile(&l, 0.9),
        percentile(&l, 0.99),
        percentile(&l, 1.0),
    );
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (ok, c4, c5, failed) = (
        count(&stats.ok),
        count(&stats.client_errors),
        count(&stats.server_errors),
        count(&stats.failed),
    );
    println!(
        "requests {total} in {elapsed:.1} s: {rps:.0} req/s; latency ms p50 {p50:.2} p90 {p90:.2} \
         p99 {p99:.2} max {max:.2}; 2xx/3xx {ok} 4xx {c4} 5xx {c5} failed {failed}"
    );
    println!(
        "{{\"requests\":{total},\"seconds\":{elapsed:.3},\"rps\":{rps:.1},\"p50_ms\":{p50:.3},\
         \"p90_ms\":{p90:.3},\"p99_ms\":{p99:.3},\"max_ms\":{max:.3},\"ok\":{ok},\
         \"client_errors\":{c4},\"server_errors\":{c5},\"failed\":{failed}}}"
    );
}
