//! A minimal OTLP/HTTP traces receiver for the load benchmark: answers `POST /v1/traces` with
//! 200 and prints the totals on SIGTERM or Ctrl-C. It only counts requests and bytes unless
//! `--decode` (then it decodes each request and counts its spans): on a two-core machine it
//! shares a core with the load generator, so it must cost next to nothing.
//!
//! ```text
//! cargo run --release --example otlp_sink -- --addr 127.0.0.1:4318
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

#[derive(Default)]
struct Counts {
    decode: bool,
    bytes: AtomicU64,
    requests: AtomicU64,
    spans: AtomicU64,
    invalid: AtomicU64,
}

async fn export(State(c): State<Arc<Counts>>, body: Bytes) -> axum::http::StatusCode {
    c.requests.fetch_add(1, Ordering::Relaxed);
    c.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    if !c.decode {
        return axum::http::StatusCode::OK;
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(req) => {
            let n: usize = req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            c.spans.fetch_add(n as u64, Ordering::Relaxed);
            axum::http::StatusCode::OK
        }
        Err(_) => {
            c.invalid.fetch_add(1, Ordering::Relaxed);
            axum::http::StatusCode::BAD_REQUEST
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:4318".to_owned();
    let mut decode = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs a value")?,
            "--decode" => decode = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let counts = Arc::new(Counts {
        decode,
        ..Counts::default()
    });
    let app = Router::new()
        .route("/v1/traces", post(export))
        .with_state(counts.clone());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "{{\"message\":\"listening\",\"addr\":\"{}\"}}",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    println!(
        "{{\"message\":\"received\",\"requests\":{},\"bytes\":{},\"spans\":{},\"invalid\":{}}}",
        counts.requests.load(Ordering::Relaxed),
        counts.bytes.load(Ordering::Relaxed),
        counts.spans.load(Ordering::Relaxed),
        counts.invalid.load(Ordering::Relaxed)
    );
    Ok(())
}
