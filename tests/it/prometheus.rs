//! The real tools: `promtool check metrics` over the example server's output, and a real
//! Prometheus server scraping it.

use std::time::Duration;

use crate::support::{
    eventually, http, http_json, http_with, promtool_check, start_server, PrometheusServer,
};

/// Sends a mix of traffic: routes, 404s, 500s, odd methods.
fn traffic(addr: std::net::SocketAddr) {
    for i in 0..20 {
        assert_eq!(http(addr, "GET", "/").0, 200);
        assert_eq!(http(addr, "GET", &format!("/echo/{i}")).0, 200);
    }
    // The database routes, so the pool's series are in the exposition too.
    let user = r#"{"name":"ada","email":"ada@example.org"}"#;
    assert_eq!(http_json(addr, "POST", "/users", Some(user)).0, 201);
    assert_eq!(http_json(addr, "POST", "/users", Some(user)).0, 409);
    assert_eq!(http(addr, "GET", "/users/1").0, 200);
    assert_eq!(http(addr, "GET", "/users/999").0, 404);
    // A traced downstream call in `full`: the client histogram.
    assert_eq!(http(addr, "GET", "/chain?hops=1").0, 200);
    assert_eq!(http(addr, "GET", "/simulate?fail=1").0, 500);
    assert_eq!(http(addr, "GET", "/simulate?ms=5").0, 200);
    assert_eq!(http(addr, "GET", "/does/not/exist").0, 404);
    assert_eq!(http(addr, "PROPFIND", "/").0, 405);
    assert_eq!(http(addr, "HEAD", "/").0, 200);
}

#[test]
#[ignore = "needs promtool (Debian package prometheus): run scripts/test.sh"]
fn promtool_accepts_every_stack() {
    for stack in ["red", "red+log", "full"] {
        let (_server, addr) = start_server(stack);
        traffic(addr);
        let (status, text) = http(addr, "GET", "/metrics");
        assert_eq!(status, 200);
        assert!(
            text.contains("http_server_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("db_client_operation_duration_seconds_bucket"),
            "{text}"
        );
        if stack == "full" {
            for resource in [
                "process_resident_memory_bytes",
                "tokio_workers",
                "disk_total_bytes",
            ] {
                assert!(text.contains(resource), "{resource}: {text}");
            }
            assert!(
                text.contains("http_client_request_duration_seconds_bucket{http_request_method=\"GET\",server_address=\"127.0.0.1\""),
                "{text}"
            );
        }
        promtool_check(&text, &format!("stack {stack}"));
    }
}

/// Prometheus asks for gzip on every scrape (`Accept-Encoding: gzip`), so it reads the
/// compressed answer here.
#[test]
#[ignore = "needs prometheus (Debian package): run scripts/test.sh"]
fn real_prometheus_scrapes_the_counts() {
    let (_server, addr) = start_server("red");
    let users = 37;
    for i in 0..users {
        assert_eq!(http(addr, "GET", &format!("/echo/{i}")).0, 200);
    }
    let failures = 5;
    for _ in 0..failures {
        assert_eq!(http(addr, "GET", "/simulate?fail=1").0, 500);
    }

    let prom = PrometheusServer::start(&format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: towerscope\n    \
         static_configs:\n      - targets: ['{addr}']\n"
    ));
    let query = |q: &str| prom.value(q);
    let got = eventually(Duration::from_secs(60), || {
        query(
            "sum(http_server_request_duration_seconds_count{http_route=\"/echo/{id}\",\
             http_response_status_code=\"200\"})",
        )
        .filter(|v| *v == f64::from(users))
    });
    assert_eq!(
        got,
        Some(f64::from(users)),
        "Prometheus never saw {users} requests"
    );
    let errors = eventually(Duration::from_secs(30), || {
        query(
            "sum(http_server_request_duration_seconds_count{http_route=\"/simulate\",\
             error_type=\"500\"})",
        )
    });
    assert_eq!(errors, Some(f64::from(failures)));
    let up = query("up{job=\"towerscope\"}");
    assert_eq!(up, Some(1.0));
}

/// What an application may record badly still gives an exposition promtool accepts: one name
/// as three kinds (the first kept, the others counted as dropped), a dotted name the exporter
/// sanitises onto a name the store holds, label names outside the alphabet or given twice, a
/// histogram's own `le`, and infinite values.
#[test]
#[ignore = "needs promtool (Debian package prometheus): run scripts/test.sh"]
fn promtool_accepts_what_an_application_records_badly() {
    let (recorder, prometheus) = towerscope::metrics::Prometheus::builder()
        .global_label("deploy.env", "prod")
        .build();
    metrics::with_local_recorder(&recorder, || {
        metrics::describe_counter!("jobs_total", "Jobs run.");
        metrics::describe_counter!("mail_sent_total", "Mails sent.");
        metrics::describe_gauge!("depth_ratio", "Queue depth over capacity.");
        metrics::describe_histogram!("job_duration_seconds", "Job time.");
        metrics::describe_gauge!("depth.max", "Deepest queue.");
        metrics::describe_counter!("runs.done_total", "Runs done.");
        metrics::counter!("jobs_total", "queue" => "mail", "queue" => "sms").increment(3);
        metrics::gauge!("jobs_total", "queue" => "mail").set(1.0);
        metrics::histogram!("jobs_total").record(0.5);
        metrics::counter!("mail_sent_total", "retry-count" => "2").increment(1);
        metrics::gauge!("mail.sent_total").set(2.0);
        metrics::gauge!("depth_ratio", "9lives" => "x").set(f64::INFINITY);
        metrics::histogram!("job_duration_seconds", "le" => "mine").record(0.2);
        // The global label's name, spelt validly, on a series of the exporter's.
        metrics::gauge!("depth.max", "deploy_env" => "dev").set(2.0);
        // One name spelt two ways, one kind: one in the exporter, one in the store.
        metrics::counter!("runs.done_total").increment(1);
        metrics::counter!("runs_done_total").increment(1);
    });
    let text = prometheus.render();
    assert!(
        text.contains("metrics_series_dropped_total{deploy_env=\"prod\"} 4\n"),
        "{text}"
    );
    promtool_check(&text, "bad records");
}

/// Exemplars end to end: the `full` stack keeps them, Prometheus (with its exemplar storage)
/// scrapes OpenMetrics and stores, on the latency buckets, the trace a request was part of.
#[test]
#[ignore = "needs prometheus (Debian package): run scripts/test.sh"]
fn real_prometheus_stores_the_exemplars() {
    let (_server, addr) = start_server("full");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    for _ in 0..3 {
        let (status, _) = http_with(addr, "GET", "/echo/1", &[("traceparent", &traceparent)]);
        assert_eq!(status, 200);
    }
    let prom = PrometheusServer::start_with(
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: towerscope\n    \
             static_configs:\n      - targets: ['{addr}']\n"
        ),
        &["--enable-feature=exemplar-storage"],
    );
    // Scraped in OpenMetrics (the text format has no exemplars), and whole: a counter's
    // series keeps its name.
    let up = eventually(Duration::from_secs(60), || {
        prom.value("sum(http_server_cancelled_requests_total)")
            .and(prom.value("up{job=\"towerscope\"}"))
    });
    assert_eq!(up, Some(1.0));
    let selector = "http_server_request_duration_seconds_bucket{http_route=\"/echo/{id}\"}";
    let found = eventually(Duration::from_secs(30), || {
        let v = prom.exemplars(selector)?;
        let ids: Vec<String> = v["data"]
            .as_array()?
            .iter()
            .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_owned))
            .collect();
        (!ids.is_empty()).then_some(ids)
    });
    let ids = found.expect("Prometheus stored no exemplar for /echo/{id}");
    assert!(ids.iter().all(|id| id == trace_id), "{ids:?}");
}

/// The example's `full` stack answers OpenMetrics to Prometheus's `Accept`, with exemplars on
/// the server, client and database histograms: each the trace the request was sent in.
#[test]
fn the_full_stack_shows_the_request_trace_as_exemplars() {
    let (_server, addr) = start_server("full");
    let trace_id = "5af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{trace_id}-b7ad6b7169203331-01");
    let user = r#"{"name":"ada","email":"ada@example.org"}"#;
    assert_eq!(http_json(addr, "POST", "/users", Some(user)).0, 201);
    for path in ["/users/1", "/chain?hops=1"] {
        let (status, _) = http_with(addr, "GET", path, &[("traceparent", &traceparent)]);
        assert_eq!(status, 200, "{path}");
    }
    // A failed query (the unique email again) has its trace too.
    let headers = [("traceparent", traceparent.as_str())];
    let (status, _) = crate::support::request(addr, "POST", "/users", &headers, Some(user));
    assert_eq!(status, 409);
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                  version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (status, om) = http_with(addr, "GET", "/metrics", &[("accept", accept)]);
    assert_eq!(status, 200);
    assert!(om.ends_with("# EOF\n"), "{om}");
    let exemplar = format!("# {{trace_id=\"{trace_id}\"");
    for (histogram, series) in [
        (
            "http_server_request_duration_seconds_bucket",
            "http_route=\"/users/{id}\"",
        ),
        (
            "http_client_request_duration_seconds_bucket",
            "server_address=\"127.0.0.1\"",
        ),
        (
            "db_client_operation_duration_seconds_bucket",
            "db_operation_name=\"SELECT\"",
        ),
        (
            "db_client_operation_duration_seconds_bucket",
            "error_type=\"2067\"",
        ),
    ] {
        let found = om
            .lines()
            .any(|l| l.starts_with(histogram) && l.contains(series) && l.contains(&exemplar));
        assert!(
            found,
            "{histogram}{{{series}}}: no exemplar of {trace_id}\n{om}"
        );
    }
}

/// `metrics`' macros register on every use: a series whose labels are written otherwise
/// (`queue.name` as `queue_name`) is found again without a new key, so recording it costs no
/// allocation, as a series written as given does not; in the exporter (dotted names), no more
/// than the exporter's own registration costs for a key written as given.
#[test]
fn recording_through_the_macros_allocates_nothing_whatever_the_label_names() {
    fn per_100(recorder: &dyn metrics::Recorder, record: impl Fn()) -> u64 {
        metrics::with_local_recorder(recorder, || {
            record();
            let before = crate::support::allocations();
            for _ in 0..100 {
                record();
            }
            crate::support::allocations() - before
        })
    }
    let (recorder, prometheus) = towerscope::metrics::Prometheus::builder().build();
    let store = per_100(&recorder, || {
        metrics::counter!("jobs_total", "queue.name" => "mail").increment(1);
        metrics::counter!("jobs_total", "queue_name" => "mail").increment(1);
        metrics::histogram!("job_duration_seconds", "queue.name" => "mail").record(0.1);
        metrics::gauge!("depth", "queue" => "mail", "queue" => "sms").set(1.0);
    });
    assert_eq!(store, 0);
    let ours = per_100(&recorder, || {
        metrics::counter!("mails.sent", "queue.name" => "mail").increment(1);
        metrics::gauge!("mails.queued", "queue.name" => "mail").set(3.0);
    });
    let bare = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let its_own = per_100(&bare, || {
        metrics::counter!("mails.sent", "queue_name" => "mail").increment(1);
        metrics::gauge!("mails.queued", "queue_name" => "mail").set(3.0);
    });
    assert_eq!(ours, its_own);
    // Refused series (a name another metric writes), here and in the exporter: counted once,
    // then refused again for nothing.
    let refused = per_100(&recorder, || {
        metrics::gauge!("jobs", "queue.name" => "mail").set(1.0);
        metrics::gauge!("jobs_total").set(1.0);
        metrics::gauge!("mails.sent").set(1.0);
    });
    assert_eq!(refused, 0);
    let text = prometheus.render();
    assert!(
        text.contains("\nmetrics_series_dropped_total 3\n"),
        "{text}"
    );
    assert!(
        text.contains("\njobs_total{queue_name=\"mail\"} 202\n"),
        "{text}"
    );
    assert!(text.contains("\ndepth{queue=\"mail\"} 1\n"), "{text}");
    assert!(
        text.contains("\nmails_sent{queue_name=\"mail\"} 101\n"),
        "{text}"
    );
}
