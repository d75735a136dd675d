//! The towerscope example server: the same routes with and without towerscope's layers.
//!
//! ```text
//! cargo run --release --example server -- --addr 127.0.0.1:3000 --stack full --workers 2
//! ```
//!
//! Routes: `GET /` (`ok`), `GET /echo/{id}` (small JSON, no I/O: the load benchmark's route),
//! `POST /users` (`{"name", "email"}`: 201, or 409 for a known email), `GET /users/{id}` (404
//! when missing), `GET /users` (the users table in the embedded SQLite database, through
//! towerscope's instrumented pool but in `bare`), `GET /simulate?ms=N&fail=P` (sleeps
//! N ms, answers 500 with probability P), `GET /downstream?ms=N&fail=P` (calls
//! `--downstream URL`, by default this server's own `/simulate`, passing the query along),
//! `GET /metrics` (not with `--stack bare`).
//!
//! Stacks: `bare` (no towerscope layer: the benchmark baseline), `red` (RED metrics),
//! `red+log` (RED metrics and request logs, JSON lines on stdout), `full` (the default: every
//! capability towerscope has: RED metrics and request logs in one layer, JSON logs with the
//! request's context on every line; a circuit breaker on the
//! downstream client, which answers 503 with `Retry-After` at once while open; health probes
//! `/livez`, `/readyz`, `/startupz`, `/health` with a downstream HTTP check, a disk check, a
//! runtime check, the breaker and a heartbeat from a background job; graceful shutdown on
//! SIGTERM: readiness 503 at once, `--drain-delay` seconds (default 5), then in-flight requests
//! finish; tracing (OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set); load shedding beyond
//! `--max-in-flight` requests (default 1024): 503 with `Retry-After`, probes exempt; resource
//! metrics of the process, its container, the temp dir's disk and the runtime).
//! `--success-level debug` logs successful requests at DEBUG: under the default `RUST_LOG=info`
//! only failures, slow and cancelled requests are logged, and successes cost no record.
//! `--echo-work-ns N` makes `/echo/{id}` busy for N ns first (benchmark calibration).
//!
//! Watch the breaker open and recover:
//!
//! ```text
//! for i in $(seq 30); do curl -s 'localhost:3000/downstream?fail=1' -o /dev/null; done
//! curl -i localhost:3000/downstream          # 503 at once, with Retry-After
//! sleep 5; for i in $(seq 5); do curl -s localhost:3000/downstream; done   # probes close it
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteRow};
use sqlx::{ConnectOptions, Row, Sqlite, SqlitePool};
use tower::{Layer, ServiceExt};
use towerscope::breaker::{Breaker, BreakerOpen, CircuitBreakerLayer};
use towerscope::db::Db;
use towerscope::health::{
    disk_check, http_check, runtime_check, serve_with_shutdown, sqlx_check, CheckResult, Group,
    Health, Mode, Registration, ShutdownConfig, Status,
};
use towerscope::lifecycle::ObserveLayer;
use towerscope::log::{LogConfig, RequestLog};
use towerscope::metrics::{Prometheus, Red, RedLayer};
use towerscope::resources::Resources;
use towerscope::shed::LoadShedLayer;
use towerscope::trace::{TraceConfig, TraceIds, Tracing};
use towerscope::BoxError;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stack {
    Bare,
    /// The bare routes behind `Router::layer` with a layer that does nothing: what any axum
    /// layer costs before it does anything (a benchmark floor, not a towerscope stack).
    Identity,
    Red,
    RedLog,
    Full,
}

impl Stack {
    /// The name `--stack` takes.
    fn name(self) -> &'static str {
        match self {
            Stack::Bare => "bare",
            Stack::Identity => "identity",
            Stack::Red => "red",
            Stack::RedLog => "red+log",
            Stack::Full => "full",
        }
    }

    fn logs(self) -> bool {
        matches!(self, Stack::RedLog | Stack::Full)
    }
}

struct Args {
    addr: SocketAddr,
    stack: Stack,
    workers: usize,
    downstream: Option<String>,
    breaker_wait: Duration,
    drain_delay: Duration,
    max_in_flight: usize,
    /// The request log's level for successful requests (INFO by default; DEBUG or TRACE keep
    /// only failures under `RUST_LOG=info`).
    success_level: tracing::Level,
    /// Busy work per `/echo` request, in nanoseconds (benchmark calibration).
    echo_work_ns: u64,
}

const USAGE: &str =
    "usage: server [--addr HOST:PORT] [--stack bare|identity|red|red+log|full] [--workers N] \
                     [--downstream URL] [--breaker-wait SECONDS] [--drain-delay SECONDS] \
                     [--max-in-flight N] [--success-level LEVEL] [--echo-work-ns N]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:3000".parse().expect("valid default"),
        stack: Stack::Full,
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        downstream: None,
        breaker_wait: Duration::from_secs(5),
        drain_delay: Duration::from_secs(5),
        max_in_flight: 1024,
        success_level: tracing::Level::INFO,
        echo_work_ns: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => args.addr = value()?.parse().map_err(|e| format!("--addr: {e}"))?,
            "--stack" => {
                args.stack = match value()?.as_str() {
                    "bare" => Stack::Bare,
                    "identity" => Stack::Identity,
                    "red" => Stack::Red,
                    "red+log" => Stack::RedLog,
                    "full" => Stack::Full,
                    other => {
                        return Err(format!(
                            "unknown stack {other:?}: bare, identity, red, red+log, full"
                        ))
                    }
                }
            }
            "--workers" => {
                args.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?;
            }
            "--downstream" => args.downstream = Some(value()?),
            "--breaker-wait" => {
                let secs: f64 = value()?
                    .parse()
                    .map_err(|e| format!("--breaker-wait: {e}"))?;
                args.breaker_wait = Duration::from_secs_f64(secs.max(0.001));
            }
            "--drain-delay" => {
                let secs: f64 = value()?
                    .parse()
                    .map_err(|e| format!("--drain-delay: {e}"))?;
                args.drain_delay = Duration::from_secs_f64(secs.max(0.0));
            }
            "--max-in-flight" => {
                args.max_in_flight = value()?
                    .parse()
                    .map_err(|e| format!("--max-in-flight: {e}"))?;
            }
            "--success-level" => {
                args.success_level = value()?
                    .parse()
                    .map_err(|e| format!("--success-level: {e}"))?;
            }
            "--echo-work-ns" => {
                args.echo_work_ns = value()?
                    .parse()
                    .map_err(|e| format!("--echo-work-ns: {e}"))?;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

#[derive(Serialize)]
struct Echo {
    id: u64,
    name: String,
}

/// Nanoseconds of busy work `/echo/{id}` does before answering (`--echo-work-ns`; 0 by default).
static ECHO_WORK_NS: AtomicU64 = AtomicU64::new(0);

/// No I/O: the load benchmark's route. With `--echo-work-ns N` it first keeps the CPU busy for
/// N ns: a known in-process cost, to see what such a cost does to throughput under load.
async fn echo(Path(id): Path<u64>) -> Json<Echo> {
    let work = ECHO_WORK_NS.load(Ordering::Relaxed);
    if work > 0 {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_nanos(work) {
            std::hint::spin_loop();
        }
    }
    Json(Echo {
        id,
        name: format!("user-{id}"),
    })
}

/// The users table, in the embedded SQLite database: through towerscope's instrumented pool
/// in every stack but `bare`, which uses the plain sqlx pool.
#[derive(Clone)]
enum Users {
    Plain(SqlitePool),
    Instrumented(Db<Sqlite>),
}

/// Runs `$body` with `$e` bound to whichever executor `$users` holds.
macro_rules! with_executor {
    ($users:expr, |$e:ident| $body:expr) => {
        match &$users {
            Users::Plain($e) => $body,
            Users::Instrumented($e) => $body,
        }
    };
}

#[derive(Serialize)]
struct User {
    id: i64,
    name: String,
    email: String,
}

impl sqlx::FromRow<'_, SqliteRow> for User {
    fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(User {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            email: row.try_get("email")?,
        })
    }
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    email: String,
}

const CREATE_USERS: &str = "CREATE TABLE IF NOT EXISTS users (\
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE)";

fn db_error(e: sqlx::Error) -> axum::response::Response {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            (StatusCode::CONFLICT, "email already registered\n").into_response()
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "database error\n").into_response(),
    }
}

async fn create_user(
    State(users): State<Users>,
    Json(new): Json<NewUser>,
) -> axum::response::Response {
    let query = sqlx::query_as::<_, User>(
        "INSERT INTO users (name, email) VALUES (?, ?) RETURNING id, name, email",
    )
    .bind(&new.name)
    .bind(&new.email);
    match with_executor!(users, |e| query.fetch_one(e).await) {
        Ok(user) => (StatusCode::CREATED, Json(user)).into_response(),
        Err(e) => db_error(e),
    }
}

async fn get_user(State(users): State<Users>, Path(id): Path<i64>) -> axum::response::Response {
    let query =
        sqlx::query_as::<_, User>("SELECT id, name, email FROM users WHERE id = ?").bind(id);
    match with_executor!(users, |e| query.fetch_optional(e).await) {
        Ok(Some(user)) => Json(user).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such user\n").into_response(),
        Err(e) => db_error(e),
    }
}

async fn list_users(State(users): State<Users>) -> axum::response::Response {
    let query =
        sqlx::query_as::<_, User>("SELECT id, name, email FROM users ORDER BY id LIMIT 100");
    match with_executor!(users, |e| query.fetch_all(e).await) {
        Ok(list) => Json(list).into_response(),
        Err(e) => db_error(e),
    }
}

/// One in-memory SQLite database: a single connection that is never closed (closing it would
/// drop the database), statements not logged by sqlx (its log would carry literal values).
async fn embedded_db() -> Result<SqlitePool, sqlx::Error> {
    let options = "sqlite::memory:"
        .parse::<SqliteConnectOptions>()?
        .disable_statement_logging();
    SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
        .await
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

/// The downstream HTTP client: hyper's, with a timeout, behind a circuit breaker in `full`.
type Client = tower::util::BoxCloneSyncService<
    http::Request<Empty<Bytes>>,
    http::Response<hyper::body::Incoming>,
    BoxError,
>;

#[derive(Clone)]
struct Downstream {
    client: Client,
    url: String,
    chain_url: String,
}

async fn downstream(
    State(d): State<Downstream>,
    RawQuery(query): RawQuery,
) -> axum::response::Response {
    let url = match query {
        Some(q) => format!("{}?{q}", d.url),
        None => d.url.clone(),
    };
    let req = match http::Request::get(url).body(Empty::new()) {
        Ok(r) => r,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    match d.client.oneshot(req).await {
        Ok(res) => {
            let status = res.status();
            match res.into_body().collect().await {
                Ok(body) => (status, body.to_bytes()).into_response(),
                Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            }
        }
        Err(e) => match e.downcast::<BreakerOpen>() {
            Ok(open) => open.into_response(),
            Err(e) => (StatusCode::BAD_GATEWAY, format!("downstream: {e}\n")).into_response(),
        },
    }
}

fn client(stack: Stack, breaker: Option<Breaker>, tracing: Option<&Tracing>) -> Client {
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    // A CLIENT span per real HTTP call, the context injected into its headers.
    let traced = tower::util::option_layer(tracing.map(Tracing::client_layer)).layer(hyper);
    let timed = tower::timeout::TimeoutLayer::new(Duration::from_secs(10)).layer(traced);
    match (stack, breaker) {
        (Stack::Full, Some(breaker)) => Client::new(CircuitBreakerLayer::new(breaker).layer(timed)),
        _ => Client::new(timed),
    }
}

#[derive(Deserialize)]
struct Chain {
    #[serde(default)]
    hops: u32,
}

/// `GET /chain?hops=N`: calls `/chain?hops=N-1` through the traced client, so one request
/// makes a trace across N+1 services (or N+1 requests to this one).
async fn chain(
    State(d): State<Downstream>,
    Query(q): Query<Chain>,
    ids: TraceIds,
) -> axum::response::Response {
    let hops = q.hops.min(32);
    if hops > 0 {
        let url = format!("{}?hops={}", d.chain_url, hops - 1);
        let req = match http::Request::get(url).body(Empty::new()) {
            Ok(r) => r,
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        };
        match d.client.oneshot(req).await {
            Ok(res) if res.status().is_success() => {}
            Ok(res) => {
                return (
                    StatusCode::BAD_GATEWAY,
                    format!("hop answered {}\n", res.status()),
                )
                    .into_response()
            }
            Err(e) => {
                return (StatusCode::BAD_GATEWAY, format!("hop failed: {e}\n")).into_response()
            }
        }
    }
    Json(serde_json::json!({
        "hops": hops,
        "trace_id": ids.trace_id.to_string(),
        "span_id": ids.span_id.to_string(),
    }))
    .into_response()
}

/// The full stack's health: checks, a heartbeat from a background job.
fn health(downstream_url: &str, breaker: &Breaker, db: sqlx::SqlitePool) -> Health {
    let health = Health::new();
    health.register(
        Registration::new("database", sqlx_check(db))
            .timeout(Duration::from_secs(1))
            .mode(Mode::OnRequest {
                ttl: Duration::from_secs(1),
            })
            .component_type("datastore"),
    );
    health.register(
        Registration::new(
            "downstream",
            http_check(downstream_url, Duration::from_secs(2)),
        )
        .background(Duration::from_secs(5))
        .critical(false)
        .component_type("component"),
    );
    health.register(
        Registration::new("disk", disk_check(std::env::temp_dir(), 0.02))
            .groups([Group::Readiness, Group::Liveness])
            .background(Duration::from_secs(30))
            .component_type("system"),
    );
    health.register(
        Registration::new(
            "runtime",
            runtime_check(Duration::from_millis(100), Duration::from_millis(500)),
        )
        .groups([Group::Liveness])
        .mode(Mode::OnRequest {
            ttl: Duration::ZERO,
        }),
    );
    health.watch_breakers(
        Registration::passive("breakers").critical(false),
        vec![breaker.clone()],
        Status::Degraded,
    );
    health.register(
        Registration::new("startup", || async { CheckResult::up() }).groups([Group::Startup]),
    );
    // A background job that ticks every 2 s and beats after each cycle.
    let beat = health.heartbeat(
        "ticker",
        Duration::from_secs(2),
        Duration::from_secs(4),
        false,
    );
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(2));
        loop {
            every.tick().await;
            beat.start();
            beat.beat();
        }
    });
    health
}

fn app(
    // The request log's level for successes, with the log on.
    logs: Option<tracing::Level>,
    prometheus: Option<&Prometheus>,
    health: Option<&Health>,
    tracing: Option<&Tracing>,
    max_in_flight: usize,
    downstream_state: Downstream,
    users: Users,
) -> Router {
    let users = Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{id}", get(get_user))
        .with_state(users);
    let mut routes = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/echo/{id}", get(echo))
        .route("/simulate", get(simulate))
        .route(
            "/downstream",
            get(downstream).with_state(downstream_state.clone()),
        )
        .route("/chain", get(chain).with_state(downstream_state))
        .merge(users);
    if let Some(h) = health {
        routes = routes.merge(h.router());
    }
    let routes = match prometheus {
        Some(p) => routes.merge(p.router()),
        None => routes,
    };
    let log = |success| RequestLog::builder().success_level(success).build();
    match (prometheus.is_some(), logs) {
        (false, _) => routes,
        // Server spans before the request log, so its records carry the span's ids. Load
        // shedding inside them: shed requests are seen (503) by RED, logs and traces. Both in
        // one `Router::layer` call: axum wraps (and per request clones and boxes) every route
        // once per call.
        (true, Some(success)) if tracing.is_some() => routes.layer(
            tower::ServiceBuilder::new()
                .layer(ObserveLayer::with_observer((
                    // Body sizes: HTTP traffic in and out (bytes/s from the histograms' sums).
                    Red::builder().body_sizes(true).build(),
                    tracing.expect("checked").observer(),
                    log(success),
                )))
                .layer(LoadShedLayer::new(max_in_flight)),
        ),
        (true, None) => routes.layer(RedLayer::new()),
        // One layer for both: the clock, route and body tracking are paid once.
        (true, Some(success)) => routes.layer(ObserveLayer::with_observer((
            Red::builder().build(),
            log(success),
        ))),
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    ECHO_WORK_NS.store(args.echo_work_ns, Ordering::Relaxed);
    // JSON lines on stdout (pretty on a terminal or with TOWERSCOPE_LOG_FORMAT=pretty).
    // The recorder first: handles (the breaker's, the layers', the exporter's counters) are
    // resolved against it.
    let prometheus = match args.stack {
        Stack::Bare | Stack::Identity => None,
        // Exemplars in `full`, whose server spans give them: Prometheus scraping OpenMetrics
        // sees each latency bucket's last sampled trace.
        _ => match Prometheus::builder()
            .exemplars(args.stack == Stack::Full)
            .install()
        {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        },
    };
    // Tracing in `full`: OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) is
    // set; otherwise ids are still created, propagated and logged, and nothing is exported.
    let tracing = (args.stack == Stack::Full).then(|| {
        let config = TraceConfig::from_env("towerscope-example");
        for w in config.warnings() {
            eprintln!("towerscope-example: {w}");
        }
        config.install()
    });
    // JSON lines on stdout (pretty on a terminal or with TOWERSCOPE_LOG_FORMAT=pretty).
    let _logs = if args.stack.logs() {
        let mut config = LogConfig::from_env("towerscope-example");
        if let Some(t) = &tracing {
            config = config.tracing(t);
        }
        match config.init() {
            Ok(guard) => Some(guard),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Resource (USE) metrics in `full`: process, container, the temp dir's disk, the runtime;
    // collected every 5 s on a background thread.
    let _resources = (args.stack == Stack::Full).then(|| {
        Resources::builder()
            .disk(std::env::temp_dir())
            .runtime(runtime.handle().clone())
            .start()
    });
    let result = runtime.block_on(serve(args, prometheus, tracing.clone()));
    // Pending spans are flushed within a deadline, whatever the collector does.
    if let Some(t) = tracing {
        t.shutdown(Duration::from_secs(5));
    }
    if let Err(e) = result {
        eprintln!("server error: {e}");
        std::process::exit(1);
    }
}

async fn serve(
    args: Args,
    prometheus: Option<Prometheus>,
    tracing: Option<Tracing>,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let local = listener.local_addr()?;
    let url = args
        .downstream
        .clone()
        .unwrap_or_else(|| format!("http://{local}/simulate"));
    let breaker = (args.stack == Stack::Full).then(|| {
        Breaker::builder("downstream")
            .wait_in_open(args.breaker_wait)
            .build()
    });
    // The embedded database (SQLite in memory), checked by the readiness probe.
    let pool = embedded_db().await?;
    let users = match args.stack {
        Stack::Bare | Stack::Identity => Users::Plain(pool.clone()),
        _ => Users::Instrumented(Db::builder(pool.clone()).pool_name("users").build()),
    };
    with_executor!(users, |e| sqlx::query(CREATE_USERS).execute(e).await)?;
    let health = breaker.as_ref().map(|b| health(&url, b, pool));
    // `/chain` calls this server's own `/chain` (or the `--downstream` server's).
    let chain_url = match &args.downstream {
        Some(d) => match d
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| Some(format!("{}://{}/chain", u.scheme_str()?, u.authority()?)))
        {
            Some(u) => u,
            None => return Err(format!("--downstream {d}: not an absolute URL").into()),
        },
        None => format!("http://{local}/chain"),
    };
    let downstream_state = Downstream {
        client: client(args.stack, breaker, tracing.as_ref()),
        url,
        chain_url,
    };
    let app = app(
        args.stack.logs().then_some(args.success_level),
        prometheus.as_ref(),
        health.as_ref(),
        tracing.as_ref(),
        args.max_in_flight,
        downstream_state,
        users,
    );
    let app = match args.stack {
        Stack::Identity => app.layer(tower::layer::util::Identity::new()),
        _ => app,
    };
    // A log record like any other when the stack logs; a bare JSON line otherwise (the
    // integration tests read the address from it either way).
    if args.stack.logs() {
        tracing::info!(addr = %local, stack = args.stack.name(), workers = args.workers, "listening");
    } else {
        println!(
            "{{\"message\":\"listening\",\"addr\":\"{local}\",\"stack\":\"{}\",\"workers\":{}}}",
            args.stack.name(),
            args.workers
        );
    }
    match health {
        Some(health) => {
            let cfg = ShutdownConfig {
                drain_delay: args.drain_delay,
                grace: Duration::from_secs(30),
                ..ShutdownConfig::default()
            };
            serve_with_shutdown(listener, app, health, cfg).await?;
        }
        // The peer's address for the log's `client_ip`, kept per connection.
        None if args.stack.logs() => {
            axum::serve(listener, towerscope::lifecycle::WithPeer::new(app))
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?
        }
    }
    Ok(())
}
