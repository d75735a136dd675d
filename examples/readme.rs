//! The README's Rust snippets, each word for word inside the scaffolding that names what the
//! snippet leaves free (`app`, `listener`, a client, ...), so that `cargo test`, which builds the
//! examples, compiles them; the test `readme::snippets_are_compiled` checks that every snippet
//! of the README stands here unchanged. Not meant to be run.
#![allow(unused)]

use std::time::Duration;

use axum::routing::get;
use axum::Router;

// The quick start.
#[rustfmt::skip]
mod quick_start {
use axum::{routing::get, Router};
use towerscope::metrics::{Prometheus, RedLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prometheus = Prometheus::install()?;            // global `metrics` recorder
    let app = Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .merge(prometheus.router())                     // GET /metrics
        .layer(RedLayer::new());                        // RED metrics for every route
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    Ok(axum::serve(listener, app).await?)
}
}

#[rustfmt::skip]
fn request_logs(app: Router) -> Result<(), Box<dyn std::error::Error>> {
use towerscope::lifecycle::ObserveLayer;
use towerscope::log::{LogConfig, RequestLog};
use towerscope::metrics::Red;

let _guard = LogConfig::from_env("checkout").init()?;   // JSON lines on stdout, RUST_LOG
let app = app.layer(ObserveLayer::with_observer((Red::builder().build(), RequestLog::builder().build())));
Ok(())
}

async fn ping() -> Result<(), std::io::Error> {
    Ok(())
}

#[rustfmt::skip]
async fn health(app: Router, listener: tokio::net::TcpListener) -> Result<(), Box<dyn std::error::Error>> {
use towerscope::health::{disk_check, CheckResult, Group, Health, Registration};

let health = Health::new();
health.register(Registration::new("db", || async {
    match ping().await { Ok(()) => CheckResult::up(), Err(e) => CheckResult::down(e.to_string()) }
}).timeout(Duration::from_secs(1)));
health.register(Registration::new("disk", disk_check("/", 0.05)).groups([Group::Readiness, Group::Liveness])
    .background(Duration::from_secs(30)));
let job = health.heartbeat("reindex", Duration::from_secs(60), Duration::from_secs(30), true);
let app = app.merge(health.router());                      // /livez /readyz /startupz /health
towerscope::health::serve_with_shutdown(listener, app, health, Default::default()).await?;
Ok(())
}

#[rustfmt::skip]
fn breaker<S>(my_http_client: S)
where
    S: tower::Service<http::Request<String>, Response = http::Response<String>, Error = std::io::Error>,
{
use tower::ServiceBuilder;
use towerscope::breaker::{Breaker, CircuitBreakerLayer};

let breaker = Breaker::new("payments");          // defaults: 10 s window, 20 calls, 50%, 30 s open
let client = ServiceBuilder::new()
    .layer(CircuitBreakerLayer::new(breaker.clone()))
    .service(my_http_client);
// breaker.force_open(), .reset(), .metrics_only(), .subscribe() for transitions
}

type HyperClient =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, String>;

#[rustfmt::skip]
fn tracing(hyper_client: HyperClient) -> Result<(), Box<dyn std::error::Error>> {
use tower::Layer;
use towerscope::lifecycle::ObserveLayer;
use towerscope::log::{LogConfig, RequestLog};
use towerscope::metrics::Red;
use towerscope::trace::{TraceConfig, TraceIds};

let tracing = TraceConfig::from_env("checkout").install();          // OTEL_* variables
let _logs = LogConfig::from_env("checkout").tracing(&tracing).init()?; // #[instrument] spans too
let app = Router::new()
    .route("/orders/{id}", get(|ids: TraceIds| async move { ids.trace_id.to_string() }))
    .layer(ObserveLayer::with_observer((Red::builder().build(), tracing.observer(), RequestLog::builder().build())));
let client = tracing.client_layer().layer(hyper_client);             // or tracing.reqwest_middleware()
// at exit: tracing.shutdown(Duration::from_secs(5));
let _: Router = app; // served by the application
Ok(())
}

#[rustfmt::skip]
async fn database() -> Result<(), Box<dyn std::error::Error>> {
use towerscope::db::Db;

let db = Db::builder(sqlx::SqlitePool::connect("sqlite::memory:").await?)
    .pool_name("main")
    .slow_query(std::time::Duration::from_millis(200))
    .build();
let users = sqlx::query("SELECT id, name FROM users").fetch_all(&db).await?;  // unchanged sqlx calls
let mut tx = db.begin().await?;                                                 // instrumented too
sqlx::query("UPDATE users SET name = ? WHERE id = ?").bind("ada").bind(1).execute(&mut tx).await?;
tx.commit().await?;
Ok(())
}

fn main() {}
