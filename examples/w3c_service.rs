//! The test service the W3C Trace Context test harness drives
//! (<https://github.com/w3c/trace-context/tree/main/test>): `POST /test` with a JSON list of
//! `{"url": .., "arguments": ..}` makes one `POST url` per item, with `arguments` as the JSON
//! body, through towerscope's server span and traced `reqwest` client. The harness then checks
//! the `traceparent` and `tracestate` each callback carries.
//!
//! ```sh
//! cargo run --release --features reqwest --example w3c_service -- 127.0.0.1:5000 &
//! python test/test.py http://127.0.0.1:5000/test      # in a checkout of w3c/trace-context
//! ```

use axum::routing::post;
use axum::Router;
use towerscope::trace::{Exporter, TraceConfig};

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5000".into());
    let tracing = TraceConfig::from_env("w3c-test-service")
        .exporter(Exporter::None)
        .install();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(tracing.reqwest_middleware())
        .build();
    let test = move |body: String| {
        let client = client.clone();
        async move {
            let actions: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            for action in actions.as_array().into_iter().flatten() {
                let Some(url) = action["url"].as_str() else {
                    continue;
                };
                let arguments = action
                    .get("arguments")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!([]));
                let sent = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(arguments.to_string())
                    .send()
                    .await;
                if let Err(e) = sent {
                    eprintln!("w3c_service: {url}: {e}");
                }
            }
            "ok"
        }
    };
    let app = Router::new()
        .route("/test", post(test))
        .layer(tracing.layer());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    eprintln!("w3c_service: listening on http://{addr}/test");
    axum::serve(listener, app).await.expect("serve");
}
