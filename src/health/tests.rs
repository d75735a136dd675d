//! Health tests: checks on tokio's paused clock, and the routers through `oneshot`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;

async fn get(health: &Health, uri: &str) -> (StatusCode, String, http::HeaderMap) {
    get_with(health.router(), uri, None).await
}

async fn get_with(
    router: axum::Router,
    uri: &str,
    accept: Option<&str>,
) -> (StatusCode, String, http::HeaderMap) {
    let mut req = Request::get(uri);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let res = router
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap(), headers)
}

fn up() -> impl Check {
    || async { CheckResult::up() }
}

#[tokio::test(start_paused = true)]
async fn timeout_and_panic_are_down_with_a_reason() {
    let health = Health::new();
    health.register(
        Registration::new("slow", || async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            CheckResult::up()
        })
        .timeout(Duration::from_millis(200)),
    );
    health.register(Registration::new("boom", || async {
        panic!("db driver bug")
    }));
    let reports = health.evaluate(None, &[], Duration::from_secs(5)).await;
    let by = |n: &str| {
        reports
            .iter()
            .find(|r| &*r.name == n)
            .unwrap()
            .result
            .clone()
    };
    assert_eq!(by("slow").status, Status::Down);
    assert_eq!(by("slow").message.as_deref(), Some("timed out after 200ms"));
    assert_eq!(by("boom").status, Status::Down);
    assert!(by("boom").message.unwrap().contains("db driver bug"));
    assert_eq!(Health::aggregate(&reports), Status::Down);
}

#[tokio::test(start_paused = true)]
async fn on_request_checks_run_once_for_a_hundred_concurrent_probes() {
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = runs.clone();
    let health = Health::new();
    health.register(
        Registration::new("db", move || {
            let runs = r2.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                CheckResult::up()
            }
        })
        .mode(Mode::OnRequest {
            ttl: Duration::from_secs(5),
        }),
    );
    let probes: Vec<_> = (0..100)
        .map(|_| {
            let h = health.clone();
            tokio::spawn(async move { get(&h, "/readyz").await.0 })
        })
        .collect();
    for p in probes {
        assert_eq!(p.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "single flight");
    // Within the TTL: cached. After it: one more run.
    get(&health, "/readyz").await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(6)).await;
    get(&health, "/readyz").await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn background_checks_answer_from_the_latest_result_and_go_stale() {
    let flag = Arc::new(AtomicUsize::new(1));
    let f2 = flag.clone();
    let health = Health::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = runs.clone();
    health.register(
        Registration::new("dep", move || {
            let (flag, runs) = (f2.clone(), r2.clone());
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                if flag.load(Ordering::SeqCst) == 1 {
                    CheckResult::up()
                } else {
                    // Hangs: the background run never finishes, so no fresh result arrives.
                    std::future::pending::<CheckResult>().await
                }
            }
        })
        .mode(Mode::Background {
            interval: Duration::from_secs(10),
            initial_delay: Duration::ZERO,
            jitter: Duration::ZERO,
        })
        .timeout(Duration::from_secs(3600))
        .max_age(Duration::from_secs(30)),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(get(&health, "/readyz").await.0, StatusCode::OK);
    for _ in 0..5 {
        get(&health, "/readyz").await;
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "probes must not run background checks"
    );
    flag.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (code, body, _) = get(&health, "/readyz?verbose").await;
    assert_eq!(code, StatusCode::OK, "still within max age: {body}");
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (code, body, _) = get(&health, "/readyz?verbose").await;
    assert_eq!(
        code,
        StatusCode::SERVICE_UNAVAILABLE,
        "a stale Up must not last: {body}"
    );
    assert!(body.contains("[-]dep failed"), "{body}");
}

#[tokio::test(start_paused = true)]
async fn non_critical_down_degrades_and_unknown_critical_fails() {
    let health = Health::new();
    health.register(Registration::new("core", up()));
    health.register(
        Registration::new("cache", || async { CheckResult::down("evicted") }).critical(false),
    );
    let (code, body, _) = get(&health, "/readyz?verbose").await;
    assert_eq!(code, StatusCode::OK);
    // The non-critical check shows as failed; the probe still passes.
    assert!(
        body.contains("[+]core ok\n") && body.contains("[-]cache failed: reason withheld\n"),
        "{body}"
    );
    assert!(body.ends_with("readyz check passed\n"));
    let passive = health.register(Registration::passive("migrations"));
    assert_eq!(
        get(&health, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "unknown critical"
    );
    passive.set_status(Status::Up);
    assert_eq!(get(&health, "/readyz").await.1, "ok");
}

#[tokio::test(start_paused = true)]
async fn kubernetes_conventions_exclude_verbose_per_check_and_details() {
    let health = Health::new();
    health.register(Registration::new("db", || async {
        CheckResult::down("connection refused")
    }));
    health.register(Registration::new("queue", up()).groups([Group::Readiness, Group::Liveness]));
    let (code, body, headers) = get(&health, "/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(
        body,
        "[-]db failed: reason withheld\n[+]queue ok\nreadyz check failed\n"
    );
    assert!(!body.contains("refused"), "details are withheld by default");
    assert_eq!(get(&health, "/readyz?exclude=db").await.1, "ok");
    assert_eq!(
        get(&health, "/readyz?exclude=db&exclude=queue").await.0,
        StatusCode::OK
    );
    // As the API server words it: an excluded check where it would have been, and a warning
    // for names that match no check of the probe (`queue`'s liveness does not count).
    let (code, body, _) = get(
        &health,
        "/readyz?verbose&exclude=db&exclude=zz&exclude=a%22b",
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        body,
        "[+]db excluded: ok\n[+]queue ok\n\
         warn: some health checks cannot be excluded: no matches for \"a\\\"b\",\"zz\"\n\
         readyz check passed\n"
    );
    let (code, body, _) = get(&health, "/livez?exclude=db").await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "ok"));
    let (_, body, _) = get(&health, "/livez?verbose&exclude=db").await;
    assert_eq!(
        body,
        "[+]queue ok\nwarn: some health checks cannot be excluded: no matches for \"db\"\n\
         livez check passed\n"
    );
    let (code, body, _) = get(&health, "/readyz?exclude=queue").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body, "[-]db failed: reason withheld\n[+]queue excluded: ok\nreadyz check failed\n",
        "a failing probe lists its exclusions too"
    );
    assert_eq!(get(&health, "/livez").await.1, "ok");
    assert_eq!(get(&health, "/readyz/queue").await.0, StatusCode::OK);
    assert_eq!(
        get(&health, "/readyz/db").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(&health, "/readyz/nope").await.0, StatusCode::NOT_FOUND);
    let (_, body, _) = get(&health, "/livez?verbose").await;
    assert_eq!(body, "[+]queue ok\nlivez check passed\n");

    let admin = health.router_with(RouterConfig {
        details: Details::When(Arc::new(|h| {
            h.get("x-admin-token").is_some_and(|v| v == "s3cret")
        })),
        ..RouterConfig::default()
    });
    let req = Request::get("/readyz")
        .header("x-admin-token", "s3cret")
        .body(Body::empty())
        .unwrap();
    let res = admin.clone().oneshot(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("[-]db failed: connection refused"));
    let (_, body, _) = get_with(admin, "/readyz", None).await;
    assert!(body.contains("reason withheld"));
}

#[tokio::test(start_paused = true)]
async fn ietf_json_format() {
    let health = Health::new();
    health.register(
        Registration::new("disk", || async {
            CheckResult::up().observed(0.42, "ratio").message("fine")
        })
        .component_type("system"),
    );
    health
        .register(Registration::new("cache", || async { CheckResult::down("x") }).critical(false));
    let router = health.router_with(RouterConfig {
        details: Details::Shown,
        ..RouterConfig::default()
    });
    for (uri, accept) in [
        ("/health", Some("application/health+json")),
        ("/health?format=json", None),
    ] {
        let (code, body, headers) = get_with(router.clone(), uri, accept).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/health+json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "warn");
        let disk = &v["checks"]["disk"][0];
        assert_eq!(disk["status"], "pass");
        assert_eq!(disk["componentType"], "system");
        assert_eq!(disk["observedValue"], 0.42);
        assert_eq!(disk["observedUnit"], "ratio");
        assert_eq!(disk["output"], "fine");
        assert!(disk["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["checks"]["cache"][0]["status"], "fail");
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_check_cannot_hold_a_probe_past_its_deadline() {
    let health = Health::new();
    health.register(
        Registration::new("hangs", std::future::pending::<CheckResult>)
            .timeout(Duration::from_secs(3600)),
    );
    health.register(Registration::new("fine", up()));
    let started = tokio::time::Instant::now();
    let (code, body, _) = get_with(
        health.router_with(RouterConfig {
            details: Details::Shown,
            ..RouterConfig::default()
        }),
        "/readyz",
        None,
    )
    .await;
    assert_eq!(started.elapsed(), Duration::from_millis(800));
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains("[-]hangs failed: no result within the probe deadline of 800ms"),
        "{body}"
    );
    assert!(body.contains("[+]fine ok"));
}

#[tokio::test(start_paused = true)]
async fn startup_is_a_latch_and_draining_fails_readiness_only() {
    let health = Health::new();
    let started = health.register(Registration::passive("warmup").groups([Group::Startup]));
    assert_eq!(
        get(&health, "/startupz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    started.set_status(Status::Up);
    assert_eq!(get(&health, "/startupz").await.0, StatusCode::OK);
    started.set_status(Status::Down);
    assert_eq!(get(&health, "/startupz").await.0, StatusCode::OK, "latched");

    health.register(Registration::new("ok", up()).groups([Group::Readiness, Group::Liveness]));
    health.drain();
    let (code, body, _) = get(&health, "/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("[-]shutdown failed: draining"), "{body}");
    assert_eq!(get(&health, "/livez").await.0, StatusCode::OK);
    health.resume();
    assert_eq!(get(&health, "/readyz").await.0, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn damping_needs_consecutive_results() {
    let health = Health::new();
    let handle = health.register(Registration::passive("flaky").damping(3, 2));
    let status = |h: &PassiveHandle| h.current().status;
    handle.set(CheckResult::up());
    handle.set(CheckResult::down("1"));
    handle.set(CheckResult::down("2"));
    assert_eq!(status(&handle), Status::Up, "2 failures of 3");
    handle.set(CheckResult::down("3"));
    assert_eq!(status(&handle), Status::Down);
    handle.set(CheckResult::up());
    assert_eq!(status(&handle), Status::Down, "1 success of 2");
    handle.set(CheckResult::up());
    assert_eq!(status(&handle), Status::Up);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_states_follow_the_clock() {
    let health = Health::new();
    let hb = health.heartbeat(
        "reindex",
        Duration::from_secs(60),
        Duration::from_secs(30),
        true,
    );
    assert_eq!(hb.state(), BeatState::New);
    assert_eq!(
        get(&health, "/readyz").await.0,
        StatusCode::OK,
        "new is not down"
    );
    hb.beat();
    assert_eq!(hb.state(), BeatState::Up);
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(hb.state(), BeatState::Late);
    assert_eq!(
        get(&health, "/readyz").await.0,
        StatusCode::OK,
        "late degrades"
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(hb.state(), BeatState::Down);
    assert_eq!(
        get(&health, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "critical and down"
    );
    hb.beat();
    assert_eq!(get(&health, "/readyz").await.0, StatusCode::OK);
    hb.fail("index locked");
    assert_eq!(hb.state(), BeatState::Down);
    // Never beating at all is Down too, after period + grace.
    let silent = health.heartbeat(
        "silent",
        Duration::from_secs(5),
        Duration::from_secs(5),
        false,
    );
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(silent.state(), BeatState::Down);
}

#[tokio::test(start_paused = true)]
async fn breaker_check_follows_the_event_stream() {
    let health = Health::new();
    let breaker = crate::breaker::Breaker::builder("payments")
        .count_window(2)
        .minimum_calls(2)
        .build();
    health.watch_breakers(
        Registration::passive("breakers"),
        vec![breaker.clone()],
        Status::Degraded,
    );
    let (_, body, _) = get(&health, "/readyz?verbose").await;
    assert!(body.contains("[+]breakers ok\n"), "{body}");
    breaker.force_open();
    tokio::task::yield_now().await;
    let (code, body, _) = get(&health, "/readyz?verbose").await;
    assert_eq!(code, StatusCode::OK, "an open breaker degrades");
    assert!(body.contains("[+]breakers ok (degraded)"), "{body}");
    breaker.reset();
    tokio::task::yield_now().await;
    let (_, body, _) = get(&health, "/readyz?verbose").await;
    assert!(body.contains("[+]breakers ok\n"), "{body}");
}

#[tokio::test]
async fn built_in_checks_work_against_real_targets() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let app = axum::Router::new()
            .route("/ok", axum::routing::get(|| async { "ok" }))
            .route(
                "/bad",
                axum::routing::get(|| async { StatusCode::BAD_GATEWAY }),
            );
        axum::serve(listener, app).await.unwrap();
    });
    let t = Duration::from_secs(2);
    assert_eq!(
        http_check(format!("http://{addr}/ok"), t)
            .run()
            .await
            .status,
        Status::Up
    );
    let bad = http_check(format!("http://{addr}/bad"), t).run().await;
    assert_eq!(bad.status, Status::Down);
    assert!(bad.message.unwrap().contains("502"));
    assert_eq!(tcp_check(addr, t).run().await.status, Status::Up);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(tcp_check(closed, t).run().await.status, Status::Down);
    // The reason, not only hyper's "client error (Connect)".
    let refused = http_check(format!("http://{closed}/"), t).run().await;
    assert_eq!(refused.status, Status::Down);
    let message = refused.message.unwrap();
    assert!(message.to_lowercase().contains("refused"), "{message}");
    // A plain-HTTP server: no TLS handshake there; without the `tls` feature, no TLS at all.
    let https = http_check(format!("https://{addr}/ok"), t).run().await;
    assert_eq!(https.status, Status::Down);
    let message = https.message.unwrap();
    let why = if cfg!(feature = "tls") {
        "client error (Connect)"
    } else {
        "needs towerscope's `tls` feature"
    };
    assert!(message.contains(why), "{message}");
    let disk = disk_check("/", 0.0).run().await;
    assert_eq!(disk.status, Status::Up);
    assert!(disk.observed_value.unwrap() > 0.0);
    assert_eq!(disk_check("/", 1.01).run().await.status, Status::Down);
    let rt = runtime_check(Duration::from_millis(20), Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rt.run().await.status, Status::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_runtime_worker_is_detected() {
    let rt = runtime_check(Duration::from_millis(20), Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(rt.run().await.status, Status::Up);
    // Block both workers: the ticker cannot run.
    let blockers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async { std::thread::sleep(Duration::from_millis(400)) }))
        .collect();
    for b in blockers {
        b.await.unwrap();
    }
    let r = rt.run().await;
    assert_eq!(r.status, Status::Down, "{r:?}");
}

#[cfg(feature = "prometheus")]
#[tokio::test(start_paused = true)]
async fn status_metrics_and_duration_are_recorded() {
    let (recorder, prometheus) = crate::metrics::Prometheus::builder().build();
    let health = metrics::with_local_recorder(&recorder, Health::new);
    let handle = metrics::with_local_recorder(&recorder, || {
        health.register(Registration::new("db", || async {
            CheckResult::down("no")
        }))
    });
    health.evaluate(None, &[], Duration::from_secs(1)).await;
    let text = prometheus.render();
    assert!(
        text.contains("health_check_status{check=\"db\",status=\"down\"} 1"),
        "{text}"
    );
    assert!(text.contains("health_check_status{check=\"db\",status=\"up\"} 0"));
    assert!(text.contains("health_check_duration_seconds_count{check=\"db\"} 1"));
    drop(handle);
}

#[cfg(feature = "sqlx")]
#[tokio::test]
async fn database_ping_check() {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let check = sqlx_check(pool.clone());
    let r = check.run().await;
    assert_eq!(r.status, Status::Up, "{r:?}");
    assert_eq!(r.observed_unit.as_deref(), Some("ms"));
    assert!(r.message.unwrap().contains("connections"));
    pool.close().await;
    let r = check.run().await;
    assert_eq!(r.status, Status::Down);
    assert!(
        r.message.unwrap().starts_with("acquire"),
        "a closed pool is down"
    );
}

#[test]
fn runtime_check_can_be_built_outside_a_runtime() {
    // It used to spawn its ticker when built, which panics without a runtime.
    let check = runtime_check(Duration::from_millis(10), Duration::from_millis(200));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(
            check.run().await.status,
            Status::Up,
            "first run starts the ticker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = check.run().await;
        assert_eq!(r.status, Status::Up, "{r:?}");
    });
}

/// An event's fields, as text.
type Fields = Vec<(String, String)>;

/// The fields of every event.
#[derive(Clone, Default)]
struct Events(Arc<std::sync::Mutex<Vec<Fields>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Visitor(Fields);
        impl tracing::field::Visit for Visitor {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push((f.name().to_owned(), format!("{v:?}")));
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                self.0.push((f.name().to_owned(), v.to_owned()));
            }
        }
        let mut fields = Visitor(Vec::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

#[test]
fn transitions_are_logged_with_the_checks_detail_only_when_it_has_one() {
    use tracing_subscriber::layer::SubscriberExt;
    let events = Events::default();
    let subscriber = tracing_subscriber::registry().with(events.clone());
    tracing::subscriber::with_default(subscriber, || {
        let health = Health::new();
        let handle = health.register(Registration::passive("queue"));
        handle.set(CheckResult::up());
        handle.set(CheckResult::down("broker unreachable"));
    });
    let events = events.0.lock().unwrap();
    let get =
        |e: &Vec<(String, String)>, k: &str| e.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let transitions: Vec<_> = events
        .iter()
        .filter(|e| get(e, "check").as_deref() == Some("queue"))
        .collect();
    assert_eq!(transitions.len(), 2, "{events:?}");
    let (up, down) = (transitions[0], transitions[1]);
    assert_eq!(
        get(up, "message").as_deref(),
        Some("health check status changed")
    );
    assert_eq!(get(up, "to").as_deref(), Some("up"));
    assert_eq!(get(up, "detail"), None, "no empty detail: {up:?}");
    assert_eq!(get(down, "message").as_deref(), Some("health check down"));
    assert_eq!(get(down, "from").as_deref(), Some("up"));
    assert_eq!(get(down, "detail").as_deref(), Some("broker unreachable"));
}

/// `https://` dependencies: the certificate is verified (against a private CA's file, or the
/// system's roots, which do not know the test CA), the status read through TLS, and a CA file
/// that cannot be read said as the reason.
#[cfg(feature = "tls")]
#[tokio::test]
async fn http_check_verifies_https_dependencies() {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{self, ServerConfig};

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let cert = CertificateDer::from_pem_file(dir.join("server.pem")).unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|req: http::Request<_>| async move {
                    let _: &hyper::body::Incoming = req.body();
                    let status = if req.uri().path() == "/ok" { 200 } else { 503 };
                    let res = http::Response::builder().status(status);
                    Ok::<_, std::convert::Infallible>(
                        res.body(http_body_util::Empty::<bytes::Bytes>::new())
                            .unwrap(),
                    )
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    let t = Duration::from_secs(2);
    let ca = dir.join("ca.pem");
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{port}/ok");
        let ok = http_check_with_ca(&url, t, &ca).run().await;
        assert_eq!(ok.status, Status::Up, "{url}: {:?}", ok.message);
        assert!(ok.observed_value.is_some());
    }
    let unavailable = http_check_with_ca(format!("https://localhost:{port}/down"), t, &ca)
        .run()
        .await;
    assert_eq!(unavailable.status, Status::Down);
    assert!(unavailable.message.unwrap().contains("503"));
    // The system's roots (or none at all, on a machine without them) do not know the test CA.
    let untrusted = http_check(format!("https://localhost:{port}/ok"), t)
        .run()
        .await;
    assert_eq!(untrusted.status, Status::Down);
    let message = untrusted.message.unwrap();
    assert!(message.contains("certificate"), "{message}");
    let missing = http_check_with_ca(
        format!("https://localhost:{port}/ok"),
        t,
        dir.join("missing.pem"),
    )
    .run()
    .await;
    assert_eq!(missing.status, Status::Down);
    let message = missing.message.unwrap();
    assert!(
        message.contains("TLS file") && message.contains("missing.pem"),
        "{message}"
    );
}
