//! The load generator against the example server: a mix of routes, a failure phase that opens
//! the downstream breaker, and a summary.

use std::process::Command;

use crate::support::{example_binary, http, sample, start_server_with};

#[test]
fn a_failure_phase_opens_the_breaker_and_the_summary_counts_it() {
    let (_server, addr) = start_server_with("full", &["--breaker-wait", "1"]);
    let out = Command::new(example_binary("loadgen"))
        .args(["--url", &format!("http://{addr}")])
        .args([
            "--concurrency",
            "4",
            "--duration",
            "3",
            // Failing throughout: the breaker sees the failing downstream calls (15% of the
            // mix) and the succeeding `/chain` hops (10%): 60% failures, above its 50%.
            "--fail-phase",
            "0:3",
        ])
        .output()
        .expect("run the load generator");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a summary line"))
            .expect("the JSON summary");
    let n = |k: &str| {
        summary[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k}: {summary}"))
    };
    assert!(n("requests") >= 100.0, "{summary}");
    assert!(n("ok") > 0.0, "{summary}");
    assert!(
        n("server_errors") > 0.0,
        "the failure phase fails requests: {summary}"
    );
    assert_eq!(n("failed"), 0.0, "{summary}");
    assert!(n("p99_ms") >= n("p50_ms"), "{summary}");
    let (_, text) = http(addr, "GET", "/metrics");
    let opened = sample(
        &text,
        "circuit_breaker_transitions_total",
        &[
            ("breaker", "downstream"),
            ("from", "closed"),
            ("to", "open"),
        ],
    );
    assert!(opened.unwrap_or(0.0) >= 1.0, "the breaker opened: {text}");
}
