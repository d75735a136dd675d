//! The load benchmark's peer stacks: what users assemble today instead of towerscope, serving
//! the example server's benchmark route (`GET /echo/{id}`, the same handler and JSON) so that
//! `scripts/bench.sh` can measure them in the same run as towerscope's stacks
//! (`scripts/bench.sh bare peers/bare red peers/axum-prometheus ...`).
//!
//! ```text
//! towerscope-peers --addr 127.0.0.1:3000 --stack STACK [--workers N]
//! ```
//!
//! Stacks, each composed as the crates' documentation shows:
//! - `bare`: the routes alone (fewer than the example server's; to check that the two bare
//!   services are alike);
//! - `axum-prometheus`: axum-prometheus's layer and its `/metrics` route (compare: `red`);
//! - `trace-layer`: tower-http's `TraceLayer` with its span and its response event at INFO,
//!   tracing-subscriber's JSON formatter through tracing-appender's non-blocking stdout
//!   (compare: `red+log`);
//! - `trace-layer-event`: the same with `TraceLayer::new_for_http()`'s own span (at DEBUG, so
//!   disabled under `RUST_LOG=info`) and only its response event at INFO: the leanest request
//!   line these crates give (message, latency and status);
//! - `otel`: axum-tracing-opentelemetry's server spans (`OtelAxumLayer`, `OtelInResponseLayer`)
//!   through tracing-opentelemetry, the JSON formatter on; spans batch-exported over OTLP/HTTP
//!   when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, otherwise made and dropped;
//! - `stack`: the hand-assembled peer stack: `axum-prometheus`, `trace-layer` and `otel` together
//!   (compare: `full`).

use std::net::SocketAddr;

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

#[derive(serde::Serialize)]
struct Echo {
    id: u64,
    name: String,
}

/// The example server's `/echo/{id}` (without its calibration work).
async fn echo(Path(id): Path<u64>) -> Json<Echo> {
    Json(Echo {
        id,
        name: format!("user-{id}"),
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stack {
    Bare,
    AxumPrometheus,
    TraceLayer,
    TraceLayerEvent,
    Otel,
    All,
}

impl Stack {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "bare" => Self::Bare,
            "axum-prometheus" => Self::AxumPrometheus,
            "trace-layer" => Self::TraceLayer,
            "trace-layer-event" => Self::TraceLayerEvent,
            "otel" => Self::Otel,
            "stack" => Self::All,
            _ => return None,
        })
    }
    fn metrics(self) -> bool {
        matches!(self, Self::AxumPrometheus | Self::All)
    }
    fn logs(self) -> bool {
        matches!(self, Self::TraceLayer | Self::TraceLayerEvent | Self::All)
    }
    fn spans(self) -> bool {
        matches!(self, Self::Otel | Self::All)
    }
}

struct Args {
    addr: SocketAddr,
    stack: Stack,
    workers: usize,
}

fn parse_args() -> Result<Args, String> {
    let usage =
        "towerscope-peers --addr HOST:PORT --stack bare|axum-prometheus|trace-layer|trace-layer-event|otel|stack [--workers N]";
    let mut args = Args {
        addr: ([127, 0, 0, 1], 3000).into(),
        stack: Stack::Bare,
        workers: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag}: a value is missing\n{usage}"))?;
        match flag.as_str() {
            "--addr" => args.addr = value.parse().map_err(|e| format!("--addr: {e}"))?,
            "--stack" => {
                args.stack =
                    Stack::parse(&value).ok_or_else(|| format!("--stack {value}\n{usage}"))?
            }
            "--workers" => args.workers = value.parse().map_err(|e| format!("--workers: {e}"))?,
            _ => return Err(format!("unknown argument {flag}\n{usage}")),
        }
    }
    Ok(args)
}

/// The subscriber: the JSON formatter (non-blocking stdout) and, for spans, the OpenTelemetry
/// layer; filtered by `RUST_LOG` (default `info`) plus the directive axum-tracing-opentelemetry
/// needs for its spans (`otel::tracing=trace`, as its own init crate adds).
fn subscriber(
    stack: Stack,
) -> (
    tracing_appender::non_blocking::WorkerGuard,
    Option<SdkTracerProvider>,
) {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let mut filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    if stack.spans() {
        filter.push_str(",otel::tracing=trace");
    }
    let json = tracing_subscriber::fmt::layer().json().with_writer(writer);
    let provider = stack.spans().then(|| {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let builder = SdkTracerProvider::builder();
        let exporting = std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let builder = if exporting {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .expect("the OTLP exporter");
            builder.with_batch_exporter(exporter)
        } else {
            builder
        };
        builder.build()
    });
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("towerscope-peers")));
    tracing_subscriber::registry()
        .with(EnvFilter::new(filter))
        .with(json)
        .with(otel)
        .init();
    (guard, provider)
}

fn app(stack: Stack) -> Router {
    let mut app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/echo/{id}", get(echo))
        .route("/users", get(|| async { "[]" }))
        .route("/users/{id}", get(|| async { "{}" }));
    // Outermost first: the metrics, the request log, the OpenTelemetry span (its response
    // injector inside it). Each `layer` call wraps what is there, so the innermost comes first.
    if stack.spans() {
        app = app
            .layer(axum_tracing_opentelemetry::middleware::OtelInResponseLayer)
            .layer(axum_tracing_opentelemetry::middleware::OtelAxumLayer::default());
    }
    if stack == Stack::TraceLayerEvent {
        app = app.layer(
            TraceLayer::new_for_http().on_response(DefaultOnResponse::new().level(Level::INFO)),
        );
    } else if stack.logs() {
        app = app.layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        );
    }
    if stack.metrics() {
        let (layer, handle) = axum_prometheus::PrometheusMetricLayer::pair();
        app = app
            .route("/metrics", get(move || async move { handle.render() }))
            .layer(layer);
    }
    app
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let subscriber = (args.stack.logs() || args.stack.spans()).then(|| subscriber(args.stack));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result: std::io::Result<()> = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr).await?;
        println!(
            "{{\"message\":\"listening\",\"addr\":\"{}\",\"stack\":\"{:?}\"}}",
            listener.local_addr()?,
            args.stack
        );
        axum::serve(listener, app(args.stack))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    });
    if let Some((_guard, Some(provider))) = subscriber {
        let _ = provider.shutdown();
    }
    if let Err(e) = result {
        eprintln!("server error: {e}");
        std::process::exit(1);
    }
}
