//! The deployment kit (`deploy/`): the recording rules pass `promtool check rules` and their
//! unit tests; the scrape configuration passes `promtool check config`; and every PromQL
//! expression of the Grafana dashboard and of the rules is accepted by a real Prometheus
//! scraping the example server, with results where traffic was sent.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{eventually, http, http_json, require_tool, start_server, PrometheusServer};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new(require_tool("promtool"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {report}");
    report
}

#[test]
#[ignore = "needs promtool (Debian package prometheus): run scripts/test.sh"]
fn rules_and_config_pass_promtool() {
    let dir = deploy("prometheus");
    let report = promtool(&["check", "rules", "rules.yml"], &dir);
    assert!(report.contains("SUCCESS: 9 rules found"), "{report}");
    let report = promtool(&["test", "rules", "rules_test.yml"], &dir);
    assert!(report.contains("SUCCESS"), "{report}");
    let report = promtool(&["check", "config", "prometheus.yml"], &dir);
    assert!(report.contains("SUCCESS"), "{report}");
}

/// The dashboard's expressions, with Grafana's variables replaced as Grafana would.
fn dashboard_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("grafana/towerscope.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard parses");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$job", ".+")
                .replace("$route", ".+");
            out.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    assert!(out.len() >= 20, "{} expressions", out.len());
    out
}

fn rule_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("prometheus/rules.yml")).unwrap();
    // A small reader for this file's shape: `- record: name` then `expr: …` (one line or a
    // `|` block), enough to lift the expressions without a YAML dependency.
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    let mut record = String::new();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if let Some(r) = t.strip_prefix("- record: ") {
            record = r.to_owned();
        } else if let Some(e) = t.strip_prefix("expr: ") {
            if e == "|" {
                let mut block = String::new();
                while let Some(next) = lines.peek() {
                    if next.trim().is_empty() || next.trim_start().starts_with("- ") {
                        break;
                    }
                    block.push_str(next.trim());
                    block.push(' ');
                    lines.next();
                }
                out.push((record.clone(), block));
            } else {
                out.push((record.clone(), e.to_owned()));
            }
        }
    }
    assert_eq!(out.len(), 9);
    out
}

#[test]
#[ignore = "needs prometheus (Debian package): run scripts/test.sh"]
fn a_real_prometheus_accepts_every_dashboard_and_rule_expression() {
    let (_server, addr) = start_server("full");
    // Traffic on every route family: pages, users (database), failures, downstream calls.
    for i in 0..30 {
        assert_eq!(http(addr, "GET", &format!("/echo/{i}")).0, 200);
    }
    let user = r#"{"name":"ada","email":"ada@example.org"}"#;
    assert_eq!(http_json(addr, "POST", "/users", Some(user)).0, 201);
    assert_eq!(http(addr, "GET", "/users/1").0, 200);
    for _ in 0..5 {
        assert_eq!(http(addr, "GET", "/simulate?fail=1").0, 500);
        assert_eq!(http(addr, "GET", "/chain?hops=1").0, 200);
        assert_eq!(http(addr, "GET", "/downstream").0, 200);
    }

    // The shipped configuration, pointed at this server and scraping every second.
    let config = std::fs::read_to_string(deploy("prometheus/prometheus.yml"))
        .unwrap()
        .replace("127.0.0.1:3000", &addr.to_string())
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace(
            "  - rules.yml",
            &format!("  - {}", deploy("prometheus/rules.yml").display()),
        );
    let prom = PrometheusServer::start(&config);
    let query = |q: &str| prom.query(q);
    // Wait until rates have two scrapes to work with.
    eventually(Duration::from_secs(60), || {
        let v = query("count_over_time(up{job=\"towerscope-example\"}[1m])")?;
        let n: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
        (n >= 4.0).then_some(())
    })
    .expect("Prometheus scraped the example server");
    // Keep the counters moving so rates are non-zero.
    for _ in 0..5 {
        assert_eq!(http(addr, "GET", "/echo/1").0, 200);
        assert_eq!(http(addr, "GET", "/simulate?fail=1").0, 500);
    }
    std::thread::sleep(Duration::from_secs(2));

    let mut empty = Vec::new();
    for (what, expr) in dashboard_exprs().into_iter().chain(rule_exprs()) {
        let v = query(&expr).unwrap_or_else(|| panic!("{what}: no answer for {expr}"));
        let n = v["data"]["result"].as_array().map_or(0, Vec::len);
        // Nothing was shed: that panel and rule are empty by design.
        if n == 0 && !expr.contains("shed_requests") {
            empty.push(format!("{what}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "empty results:\n{}", empty.join("\n"));
}
