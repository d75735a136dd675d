//! Health end to end: the example server's probes, and graceful shutdown on SIGTERM.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{http, start_server_with};

/// Polls `/readyz` like a kubelet: critical background checks must have run first.
fn wait_ready(addr: SocketAddr) {
    let ready = crate::support::eventually(Duration::from_secs(10), || {
        (http(addr, "GET", "/readyz").0 == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "never ready: {}",
        http(addr, "GET", "/readyz?verbose").1
    );
}

#[test]
fn probes_of_the_full_stack() {
    let (_server, addr) = start_server_with("full", &[]);
    wait_ready(addr);
    let (code, body) = http(addr, "GET", "/readyz?verbose");
    assert_eq!(code, 200, "{body}");
    for check in [
        "database",
        "downstream",
        "disk",
        "breakers",
        "heartbeat:ticker",
    ] {
        assert!(body.contains(&format!("[+]{check} ok")), "{check}: {body}");
    }
    let (code, body) = http(addr, "GET", "/livez?verbose");
    assert_eq!(code, 200);
    assert!(
        body.contains("[+]runtime ok") && body.contains("[+]disk ok"),
        "{body}"
    );
    assert_eq!(http(addr, "GET", "/startupz").1, "ok");
    let (_, metrics) = http(addr, "GET", "/metrics");
    assert!(
        metrics.contains(r#"health_check_status{check="disk",status="up"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("heartbeat_last_success_timestamp_seconds{job=\"ticker\"}"));
}

#[test]
fn sigterm_fails_readiness_at_once_and_lets_in_flight_requests_finish() {
    let (mut server, addr) = start_server_with("full", &["--drain-delay", "1"]);
    wait_ready(addr);
    let slow = std::thread::spawn(move || {
        let started = Instant::now();
        let r = http(addr, "GET", "/simulate?ms=1800");
        (r, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let pid = server.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(200));
    let (code, body) = http(addr, "GET", "/readyz");
    assert_eq!(code, 503, "readiness must fail at once: {body}");
    assert!(body.contains("[-]shutdown failed: draining"), "{body}");
    assert_eq!(http(addr, "GET", "/livez").0, 200, "liveness stays up");

    let ((code, body), took) = slow.join().unwrap();
    assert_eq!(code, 200, "the in-flight request was cut: {body}");
    assert!(took >= Duration::from_millis(1800));
    // Then the process exits by itself, cleanly.
    assert_exits_cleanly(&mut server);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the listener is still open"
    );
}

/// The same over HTTP/2: a stream in flight when the drain ends finishes on its connection
/// (the server says GOAWAY and lets it end), a new stream on that connection is refused, and
/// the process exits.
#[tokio::test]
async fn sigterm_lets_in_flight_http2_streams_finish() {
    use http_body_util::BodyExt;
    let (mut server, addr) = start_server_with("full", &["--drain-delay", "1"]);
    wait_ready(addr);
    let h2 = crate::support::h2_connect(addr).await;
    let request = |path: &str| crate::support::empty_request(http::Method::GET, addr, path);
    let mut h2_slow = h2.clone();
    let slow_request = request("/simulate?ms=1800");
    let started = Instant::now();
    let slow = tokio::spawn(async move {
        let res = h2_slow.send_request(slow_request).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body, started.elapsed()))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = server.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());

    let (status, body, took) = slow.await.unwrap().expect("the in-flight stream was cut");
    assert_eq!(status, 200, "{body:?}");
    assert!(took >= Duration::from_millis(1800), "{took:?}");
    // Past the drain the connection takes no new stream.
    let mut h2_late = h2.clone();
    let late = tokio::time::timeout(Duration::from_secs(10), h2_late.send_request(request("/")))
        .await
        .expect("a refused stream is answered at once");
    assert!(late.is_err(), "a new stream after the drain: {late:?}");
    // (Blocking here: nothing else on this runtime needs to run any more.)
    assert_exits_cleanly(&mut server);
}

/// Waits (up to ten seconds) for the server to exit by itself after draining, successfully.
fn assert_exits_cleanly(server: &mut crate::support::Proc) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

/// `serve_with_shutdown` keeps each connection's peer for towerscope and `peer_addr()`; a
/// handler that extracts axum's `ConnectInfo` gets it only with `ShutdownConfig::connect_info`
/// (without, axum answers 500 for the missing extension, as under `axum::serve(router)`).
#[test]
fn serve_with_shutdown_gives_connect_info_when_asked() {
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use towerscope::health::{serve_with_shutdown, Health, ShutdownConfig};
    for connect_info in [false, true] {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app =
            axum::Router::new()
                .route(
                    "/connect-info",
                    get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                        peer.ip().to_string()
                    }),
                )
                .route(
                    "/peer",
                    get(|| async {
                        towerscope::lifecycle::peer_addr()
                            .map_or(String::new(), |p| p.ip().to_string())
                    }),
                );
        let health = Health::new();
        let cfg = ShutdownConfig {
            drain_delay: Duration::ZERO,
            grace: Duration::from_secs(5),
            connect_info,
            ..ShutdownConfig::default()
        };
        let served = rt.spawn(serve_with_shutdown(listener, app, health.clone(), cfg));
        assert_eq!(http(addr, "GET", "/peer"), (200, "127.0.0.1".to_owned()));
        let (code, body) = http(addr, "GET", "/connect-info");
        if connect_info {
            assert_eq!((code, body.as_str()), (200, "127.0.0.1"));
        } else {
            assert_eq!(code, 500, "no ConnectInfo unless asked for: {body}");
        }
        health.trigger_shutdown();
        rt.block_on(served).unwrap().unwrap();
    }
}
