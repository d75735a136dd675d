//! Load shedding on the example server: beyond `--max-in-flight`, requests are answered 503
//! with `Retry-After` at once and counted per route; the probes still answer.

use std::time::{Duration, Instant};

use crate::support::{eventually, http, sample, start_server_with};

#[test]
fn a_saturated_server_sheds_and_still_answers_its_probes() {
    // The downstream health check would call this server's own `/simulate` (and could be shed):
    // point it elsewhere, so only this test's requests compete for the two slots.
    let (_server, addr) = start_server_with(
        "full",
        &[
            "--max-in-flight",
            "2",
            "--downstream",
            "http://127.0.0.1:9/simulate",
        ],
    );
    // Two slow requests take both slots (wait until both are admitted: up to 6 s, since the
    // whole suite runs in parallel on two cores; they stay in flight for 8 s).
    let slow: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || http(addr, "GET", "/simulate?ms=8000")))
        .collect();
    eventually(Duration::from_secs(6), || {
        let (_, text) = http(addr, "GET", "/metrics");
        (sample(&text, "http_server_concurrency_utilization_ratio", &[]) == Some(1.0)).then_some(())
    })
    .expect("both slow requests admitted");
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET /simulate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("retry-after: 1"), "{raw}");
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "shed at once, not after the slow requests"
    );
    // The probes and the scrape are exempt.
    assert_eq!(http(addr, "GET", "/livez").0, 200);
    let (status, text) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &text,
            "http_server_shed_requests_total",
            &[("http_route", "/simulate")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "http_server_concurrency_limit", &[]),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "http_server_concurrency_utilization_ratio", &[]),
        Some(1.0)
    );
    for h in slow {
        assert_eq!(h.join().unwrap().0, 200);
    }
    // RED saw the shed request as a 503.
    let (_, text) = http(addr, "GET", "/metrics");
    assert_eq!(
        sample(
            &text,
            "http_server_request_duration_seconds_count",
            &[
                ("http_request_method", "GET"),
                ("http_route", "/simulate"),
                ("http_response_status_code", "503"),
                ("error_type", "503"),
            ]
        ),
        Some(1.0),
        "{text}"
    );
}
