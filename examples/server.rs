//! The towerscope example server: the same routes with and without towerscope's layers.
//!
//! ```text
//! cargo run --release --example server -- --addr 127.0.0.1:3000 --stack full --workers 2
//! ```
//!
//! Routes: `GET /` (`ok`), `GET /users/{id}` (small JSON), `GET /simulate?ms=N&fail=P` (sleeps
//! N ms, answers 500 with probability P), `GET /metrics` (not with `--stack bare`).
//!
//! Stacks: `bare` (no towerscope layer: the benchmark baseline), `red` (RED metrics),
//! `full` (the default: every capability towerscope has).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use towerscope::metrics::{Prometheus, RedLayer};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stack {
    Bare,
    Red,
    Full,
}

struct Args {
    addr: SocketAddr,
    stack: Stack,
    workers: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:3000".parse().expect("valid default"),
        stack: Stack::Full,
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => args.addr = value()?.parse().map_err(|e| format!("--addr: {e}"))?,
            "--stack" => {
                args.stack = match value()?.as_str() {
                    "bare" => Stack::Bare,
                    "red" => Stack::Red,
                    "full" => Stack::Full,
                    other => return Err(format!("unknown stack {other:?}: bare, red, full")),
                }
            }
            "--workers" => {
                args.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?;
            }
            "-h" | "--help" => {
                return Err(
                    "usage: server [--addr HOST:PORT] [--stack bare|red|full] [--workers N]".into(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

#[derive(Serialize)]
struct User {
    id: u64,
    name: String,
}

async fn user(Path(id): Path<u64>) -> Json<User> {
    Json(User {
        id,
        name: format!("user-{id}"),
    })
}

#[derive(Deserialize)]
struct Simulate {
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    fail: f64,
}

async fn simulate(Query(q): Query<Simulate>) -> impl IntoResponse {
    if q.ms > 0 {
        tokio::time::sleep(Duration::from_millis(q.ms.min(60_000))).await;
    }
    if q.fail > 0.0 && fastrand::f64() < q.fail {
        (StatusCode::INTERNAL_SERVER_ERROR, "simulated failure")
    } else {
        (StatusCode::OK, "simulated")
    }
}

fn routes() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/users/{id}", get(user))
        .route("/simulate", get(simulate))
}

fn app(stack: Stack) -> Result<Router, Box<dyn std::error::Error>> {
    Ok(match stack {
        Stack::Bare => routes(),
        Stack::Red | Stack::Full => {
            let prometheus = Prometheus::install()?;
            routes().merge(prometheus.router()).layer(RedLayer::new())
        }
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(serve(args)) {
        eprintln!("server error: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let app = app(args.stack)?;
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!(
        "{{\"message\":\"listening\",\"addr\":\"{}\",\"stack\":\"{:?}\",\"workers\":{}}}",
        listener.local_addr()?,
        args.stack,
        args.workers
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
