//! The circuit breaker end to end: the example server's downstream client opens, answers 503
//! with `Retry-After` at once, and recovers when failures stop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{http, start_server_with};

fn raw_headers(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn downstream_breaker_opens_fails_fast_and_recovers() {
    let (_server, addr) = start_server_with("full", &["--breaker-wait", "1"]);
    assert_eq!(http(addr, "GET", "/downstream").0, 200);
    // The default policy: 20 calls in 10 s, 50% failures. With the first success, the 19th
    // failure is the 20th call: it opens the breaker, and every later call fails fast.
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(http(addr, "GET", "/downstream?fail=1").0);
    }
    assert!(statuses[..19].iter().all(|s| *s == 500), "{statuses:?}");
    assert!(statuses[19..].iter().all(|s| *s == 503), "{statuses:?}");

    // Open: fails fast, even for a call that would be slow.
    let started = Instant::now();
    let res = raw_headers(addr, "/downstream?ms=3000");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "did not fail fast"
    );
    assert!(res.starts_with("HTTP/1.1 503"), "{res}");
    // The wait is 1 s with the default ±10% jitter, rounded up to whole seconds.
    let retry_after: u64 = res
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| {
            l.strip_prefix("retry-after: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a Retry-After header");
    assert!((1..=2).contains(&retry_after), "{res}");

    let (_, metrics) = http(addr, "GET", "/metrics");
    assert!(
        metrics.contains(r#"circuit_breaker_state{breaker="downstream",state="open"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"circuit_breaker_transitions_total{breaker="downstream",from="closed",to="open"} 1"#
    ));

    // Failures stop: after the wait, five good probes close it.
    std::thread::sleep(Duration::from_millis(1200));
    for _ in 0..5 {
        assert_eq!(http(addr, "GET", "/downstream").0, 200);
    }
    let (_, metrics) = http(addr, "GET", "/metrics");
    assert!(
        metrics.contains(r#"circuit_breaker_state{breaker="downstream",state="closed"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"circuit_breaker_transitions_total{breaker="downstream",from="half_open",to="closed"} 1"#
    ));
    assert_eq!(http(addr, "GET", "/downstream").0, 200);
}
