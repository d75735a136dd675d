//! Breaker tests on tokio's paused clock.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tower::{Service, ServiceExt};

use super::state::Admission;
use super::*;

fn ok() -> CallOutcome {
    CallOutcome::Success
}
fn fail() -> CallOutcome {
    CallOutcome::Failure
}

/// Runs one call through the breaker's admission with the given outcome.
fn call(b: &Breaker, outcome: CallOutcome) -> bool {
    match b.admit() {
        Admission::Allowed(mut t) => {
            t.start();
            t.complete(outcome);
            true
        }
        Admission::Rejected(_) => false,
    }
}

fn counting(threshold: f64, window: u32, min: u32) -> Breaker {
    Breaker::builder("t")
        .count_window(window)
        .minimum_calls(min)
        .failure_rate_threshold(threshold)
        .wait_in_open(Duration::from_secs(10))
        .backoff(2.0, Duration::from_secs(60), 0.0, Duration::from_secs(120))
        .permitted_calls_in_half_open(3)
        .build()
}

#[tokio::test(start_paused = true)]
async fn threshold_exactly_at_the_limit_opens() {
    let b = counting(0.5, 10, 10);
    for _ in 0..6 {
        call(&b, ok());
    }
    for _ in 0..3 {
        call(&b, fail());
    }
    assert_eq!(b.state(), State::Closed, "9 calls: below minimum");
    call(&b, fail()); // 4 of 10 = 40%
    assert_eq!(b.state(), State::Closed);
    call(&b, fail()); // evicts a success: 5 of 10 = 50%, exactly at the threshold
    assert_eq!(b.state(), State::Open);
    assert!(!call(&b, ok()), "open rejects");
}

#[tokio::test(start_paused = true)]
async fn minimum_calls_gate_evaluation_not_a_full_window() {
    let b = counting(0.5, 100, 4);
    for _ in 0..3 {
        call(&b, fail());
    }
    assert_eq!(b.state(), State::Closed, "3 failures, minimum 4");
    call(&b, fail());
    assert_eq!(b.state(), State::Open, "the window (100) need not be full");
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let b = Breaker::builder("t")
        .time_window(Duration::from_secs(10))
        .minimum_calls(4)
        .build();
    for _ in 0..3 {
        call(&b, fail());
    }
    assert_eq!(b.totals().failures, 3);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(b.totals(), Totals::default(), "expired with the window");
    call(&b, fail());
    assert_eq!(
        b.state(),
        State::Closed,
        "one failure in the window, not four"
    );
}

#[tokio::test(start_paused = true)]
async fn open_to_half_open_by_timer_then_closed_by_probes() {
    let b = counting(0.5, 4, 4);
    let mut events = b.subscribe();
    for _ in 0..4 {
        call(&b, fail());
    }
    assert_eq!(b.state(), State::Open);
    let t = events.recv().await.unwrap();
    assert_eq!((t.from, t.to), (State::Closed, State::Open));
    assert!(matches!(t.reason, Reason::FailureRate { calls: 4, .. }));
    tokio::time::sleep(Duration::from_millis(9_999)).await;
    assert_eq!(b.state(), State::Open);
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "the timer moved it without traffic"
    );
    for _ in 0..3 {
        assert!(call(&b, ok()));
    }
    assert_eq!(b.state(), State::Closed);
    let kinds: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn failed_probes_reopen_with_backoff_and_stable_close_resets_it() {
    let b = counting(0.5, 4, 4);
    let trip = |b: &Breaker| {
        for _ in 0..4 {
            call(b, fail());
        }
    };
    trip(&b);
    let mut wait = Duration::from_secs(10);
    for round in 0..4 {
        assert_eq!(b.state(), State::Open, "round {round}");
        tokio::time::sleep(wait - Duration::from_millis(1)).await;
        assert_eq!(b.state(), State::Open, "round {round}: reopened too early");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(b.state(), State::HalfOpen, "round {round}");
        call(&b, ok());
        call(&b, fail());
        call(&b, fail()); // 2 of 3 probes failed
        wait = (wait * 2).min(Duration::from_secs(60));
    }
    // Recover, stay closed for the stable period, trip again: back to the first wait.
    tokio::time::sleep(Duration::from_secs(61)).await;
    for _ in 0..3 {
        call(&b, ok());
    }
    assert_eq!(b.state(), State::Closed);
    tokio::time::sleep(Duration::from_secs(121)).await;
    trip(&b);
    tokio::time::sleep(Duration::from_millis(10_001)).await;
    assert_eq!(b.state(), State::HalfOpen, "backoff was not reset");
}

#[tokio::test(start_paused = true)]
async fn half_open_timeout_returns_to_open() {
    let b = Breaker::builder("t")
        .count_window(2)
        .minimum_calls(2)
        .wait_in_open(Duration::from_secs(1))
        .max_half_open(Duration::from_secs(5))
        .permitted_calls_in_half_open(2)
        .backoff(2.0, Duration::from_secs(60), 0.0, Duration::from_secs(60))
        .build();
    let mut events = b.subscribe();
    call(&b, fail());
    call(&b, fail());
    tokio::time::sleep(Duration::from_millis(1001)).await;
    assert_eq!(b.state(), State::HalfOpen);
    // Two probes that never report.
    let p1 = b.admit();
    let p2 = b.admit();
    assert!(matches!(p1, Admission::Allowed(_)) && matches!(p2, Admission::Allowed(_)));
    assert!(matches!(b.admit(), Admission::Rejected(_)), "a third probe");
    tokio::time::sleep(Duration::from_millis(5001)).await;
    assert_eq!(b.state(), State::Open);
    let reasons: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|t| t.reason)
        .collect();
    assert_eq!(reasons.last(), Some(&Reason::HalfOpenTimeout));
    drop((p1, p2));
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_and_slow_calls_trip() {
    let b = Breaker::builder("t")
        .count_window(100)
        .minimum_calls(100)
        .consecutive_failures(3)
        .build();
    call(&b, fail());
    call(&b, fail());
    call(&b, ok());
    call(&b, fail());
    call(&b, fail());
    assert_eq!(b.state(), State::Closed);
    call(&b, fail());
    assert_eq!(b.state(), State::Open);

    let b = Breaker::builder("t")
        .count_window(4)
        .minimum_calls(4)
        .slow_calls(Duration::from_millis(100), 0.5)
        .build();
    let slow = |b: &Breaker, ms| {
        let Admission::Allowed(mut t) = b.admit() else {
            panic!("rejected")
        };
        t.start();
        std::thread::sleep(Duration::ZERO);
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            t.complete(CallOutcome::Success);
        }
    };
    slow(&b, 10).await;
    slow(&b, 10).await;
    slow(&b, 150).await;
    assert_eq!(b.state(), State::Closed);
    slow(&b, 150).await; // 2 of 4 slow
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn stale_results_from_an_earlier_generation_change_nothing() {
    let b = counting(0.5, 4, 4);
    // Admitted while closed, still in flight.
    let Admission::Allowed(mut old) = b.admit() else {
        panic!()
    };
    old.start();
    for _ in 0..4 {
        call(&b, fail());
    }
    tokio::time::sleep(Duration::from_millis(10_001)).await;
    assert_eq!(b.state(), State::HalfOpen);
    // The old call now fails: it must not count as a probe, nor reopen the breaker.
    old.complete(CallOutcome::Failure);
    assert_eq!(b.state(), State::HalfOpen);
    for _ in 0..3 {
        assert!(call(&b, ok()));
    }
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn dropped_probe_frees_its_permit() {
    let b = counting(0.5, 4, 4);
    for _ in 0..4 {
        call(&b, fail());
    }
    tokio::time::sleep(Duration::from_millis(10_001)).await;
    let probes: Vec<_> = (0..3).map(|_| b.admit()).collect();
    assert!(probes.iter().all(|a| matches!(a, Admission::Allowed(_))));
    assert!(matches!(b.admit(), Admission::Rejected(_)));
    drop(probes); // cancelled: ignored, permits back
    assert_eq!(b.state(), State::HalfOpen);
    for _ in 0..3 {
        assert!(call(&b, ok()));
    }
    assert_eq!(b.state(), State::Closed);
}

/// An inner service that counts calls and waits until released.
#[derive(Clone)]
struct Gate {
    calls: Arc<AtomicUsize>,
    open: Arc<tokio::sync::Semaphore>,
}

impl Service<()> for Gate {
    type Response = http::Response<()>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: ()) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let open = self.open.clone();
        Box::pin(async move {
            let _p = open.acquire().await.unwrap();
            Ok(http::Response::new(()))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_in_half_open_admit_exactly_the_permitted_probes() {
    let b = Breaker::builder("t")
        .count_window(4)
        .minimum_calls(4)
        .wait_in_open(Duration::from_millis(50))
        .backoff(2.0, Duration::from_secs(60), 0.0, Duration::from_secs(60))
        .max_half_open(Duration::from_secs(60))
        .permitted_calls_in_half_open(5)
        .build();
    for _ in 0..4 {
        call(&b, fail());
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(b.state(), State::HalfOpen);
    let gate = Gate {
        calls: Arc::new(AtomicUsize::new(0)),
        open: Arc::new(tokio::sync::Semaphore::new(0)),
    };
    let svc = CircuitBreakerLayer::new(b.clone())
        .classifier(ErrorsAreFailures)
        .layer_service(gate.clone());
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        gate.calls.load(Ordering::SeqCst),
        5,
        "more than the permitted probes ran"
    );
    gate.open.add_permits(1000);
    let mut rejected = 0;
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            let e = e.downcast::<BreakerOpen>().expect("a BreakerOpen");
            assert_eq!(e.state(), State::HalfOpen);
            rejected += 1;
        }
    }
    assert_eq!(rejected, 995);
    assert_eq!(gate.calls.load(Ordering::SeqCst), 5);
    assert_eq!(b.state(), State::Closed);
}

trait LayerService<S> {
    type Out;
    fn layer_service(&self, s: S) -> Self::Out;
}
impl<S, C: Clone> LayerService<S> for CircuitBreakerLayer<C> {
    type Out = CircuitBreaker<S, C>;
    fn layer_service(&self, s: S) -> Self::Out {
        tower_layer::Layer::layer(self, s)
    }
}

#[tokio::test(start_paused = true)]
async fn permit_reserved_in_poll_ready_is_released_by_drop_and_not_shared_by_clones() {
    let b = Breaker::builder("t")
        .count_window(1)
        .minimum_calls(1)
        .wait_in_open(Duration::from_secs(1))
        .backoff(2.0, Duration::from_secs(60), 0.0, Duration::from_secs(60))
        .permitted_calls_in_half_open(1)
        .build();
    call(&b, fail());
    tokio::time::sleep(Duration::from_millis(1001)).await;
    let gate = Gate {
        calls: Arc::new(AtomicUsize::new(0)),
        open: Arc::new(tokio::sync::Semaphore::new(100)),
    };
    let layer = CircuitBreakerLayer::new(b.clone()).classifier(ErrorsAreFailures);
    let mut a = layer.layer_service(gate.clone());
    std::future::poll_fn(|cx| a.poll_ready(cx)).await.unwrap(); // takes the only permit
    let mut clone = a.clone();
    std::future::poll_fn(|cx| clone.poll_ready(cx))
        .await
        .unwrap();
    let err = clone.call(()).await.unwrap_err();
    assert!(
        err.downcast_ref::<BreakerOpen>().is_some(),
        "the clone shared the permit"
    );
    drop(a); // ready but never called: the permit comes back
    let res = layer.layer_service(gate.clone()).oneshot(()).await;
    assert!(res.is_ok());
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn manual_control_and_operational_states() {
    let b = counting(0.5, 4, 4);
    b.force_open();
    assert_eq!(b.state(), State::ForcedOpen);
    assert!(!call(&b, ok()));
    b.disable();
    for _ in 0..10 {
        assert!(call(&b, fail()));
    }
    assert_eq!(b.totals(), Totals::default(), "disabled records nothing");
    b.metrics_only();
    let mut events = b.subscribe();
    for _ in 0..10 {
        assert!(call(&b, fail()), "shadow mode never rejects");
    }
    assert_eq!(b.state(), State::MetricsOnly);
    let t = events
        .try_recv()
        .expect("the shadow transition is reported");
    assert_eq!((t.from, t.to), (State::Closed, State::Open));
    b.reset();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.totals(), Totals::default());
    b.open_for(Duration::from_secs(3));
    let Admission::Rejected(e) = b.admit() else {
        panic!("open_for admits")
    };
    assert_eq!(e.retry_after_secs(), 3);
    tokio::time::sleep(Duration::from_millis(3001)).await;
    assert_eq!(b.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn http_classification_through_the_layer() {
    let b = counting(0.5, 4, 4);
    let status = Arc::new(AtomicUsize::new(503));
    let s2 = status.clone();
    let inner = tower::service_fn(move |_: ()| {
        let code = s2.load(Ordering::SeqCst) as u16;
        async move {
            let mut r = http::Response::new(());
            *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
            Ok::<_, Infallible>(r)
        }
    });
    let svc = CircuitBreakerLayer::new(b.clone()).layer_service(inner);
    status.store(404, Ordering::SeqCst);
    for _ in 0..8 {
        svc.clone().oneshot(()).await.unwrap();
    }
    assert_eq!(b.state(), State::Closed, "4xx are successes");
    status.store(429, Ordering::SeqCst);
    svc.clone().oneshot(()).await.unwrap();
    assert_eq!(b.state(), State::Closed, "1 of 4");
    svc.clone().oneshot(()).await.unwrap();
    assert_eq!(b.state(), State::Open, "429 is a failure: 2 of 4");
    let err = svc.clone().oneshot(()).await.unwrap_err();
    let open = err.downcast::<BreakerOpen>().unwrap();
    assert_eq!(open.name(), "t");
    #[cfg(feature = "axum")]
    {
        use axum::response::IntoResponse;
        let res = open.into_response();
        assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[http::header::RETRY_AFTER], "10");
    }
}

/// A keyed layer from `template` (at most `max_keys`, evicted after a minute idle) over hosts
/// that answer, but `bad`, which fails.
fn keyed_hosts(
    template: BreakerBuilder,
    max_keys: usize,
) -> (
    KeyedCircuitBreakerLayer<ErrorsAreFailures>,
    impl Service<http::Request<()>, Response = (), Error = crate::BoxError> + Clone,
) {
    let layer = KeyedCircuitBreakerLayer::with_limits(template, max_keys, Duration::from_secs(60))
        .classifier(ErrorsAreFailures);
    let svc = tower_layer::Layer::layer(
        &layer,
        tower::service_fn(|req: http::Request<()>| async move {
            match req.uri().host() {
                Some("bad") => Err::<(), _>(std::io::Error::other("down")),
                _ => Ok(()),
            }
        }),
    );
    (layer, svc)
}

/// `GET http://{authority}/`.
fn get(authority: &str) -> http::Request<()> {
    http::Request::get(format!("http://{authority}/"))
        .body(())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_isolate_hosts_and_evict_idle_keys() {
    let (layer, svc) = keyed_hosts(Breaker::builder("up").count_window(4).minimum_calls(4), 2);
    let req = |host: &str| get(&format!("{host}:8080"));
    for _ in 0..4 {
        assert!(svc.clone().oneshot(req("bad")).await.is_err());
    }
    assert_eq!(layer.breaker("bad:8080").unwrap().state(), State::Open);
    for _ in 0..20 {
        svc.clone()
            .oneshot(req("good"))
            .await
            .expect("another host is not cut off");
    }
    assert_eq!(layer.breaker("good:8080").unwrap().state(), State::Closed);
    assert_eq!(layer.len(), 2);
    tokio::time::advance(Duration::from_secs(61)).await;
    svc.clone().oneshot(req("other")).await.unwrap();
    assert_eq!(layer.len(), 1, "idle keys were not evicted");
    assert!(layer.breaker("other:8080").is_some());
}

#[cfg(feature = "prometheus")]
#[tokio::test(start_paused = true)]
async fn metrics_cover_every_state_and_outcome() {
    let (recorder, prometheus) = crate::metrics::Prometheus::builder().build();
    let b = metrics::with_local_recorder(&recorder, || counting(0.5, 4, 4));
    for _ in 0..4 {
        call(&b, fail());
    }
    assert!(!call(&b, ok()));
    tokio::time::sleep(Duration::from_millis(10_001)).await;
    for _ in 0..3 {
        call(&b, ok());
    }
    let text = prometheus.render();
    for s in State::ALL {
        let want = if s == State::Closed { "1" } else { "0" };
        let line = format!(
            "circuit_breaker_state{{breaker=\"t\",state=\"{}\"}} {want}",
            s.as_str()
        );
        assert!(text.contains(&line), "missing {line}\n{text}");
    }
    for (o, n) in [("success", 3), ("failure", 4), ("rejected", 1)] {
        let line = format!("circuit_breaker_calls_total{{breaker=\"t\",outcome=\"{o}\"}} {n}");
        assert!(text.contains(&line), "missing {line}\n{text}");
    }
    for (from, to) in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ] {
        let line = format!(
            "circuit_breaker_transitions_total{{breaker=\"t\",from=\"{from}\",to=\"{to}\"}} 1"
        );
        assert!(text.contains(&line), "missing {line}\n{text}");
    }
    assert!(text.contains("circuit_breaker_call_duration_seconds_count{breaker=\"t\"} 7"));
    assert!(text.contains("circuit_breaker_failure_rate{breaker=\"t\"} 0"));
}

/// An evicted keyed breaker's series leave the exposition (an open one evicted while idle
/// would otherwise read as open for good); its key, back, starts afresh.
#[cfg(feature = "prometheus")]
#[tokio::test(start_paused = true)]
async fn evicted_keyed_breakers_leave_the_exposition() {
    let (recorder, prometheus) = crate::metrics::Prometheus::builder().build();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (_, svc) = keyed_hosts(Breaker::builder("up").count_window(4).minimum_calls(4), 2);
    let req = get;
    for _ in 0..4 {
        assert!(svc.clone().oneshot(req("bad")).await.is_err());
    }
    svc.clone().oneshot(req("good")).await.unwrap();
    let open = "circuit_breaker_state{breaker=\"up:bad:80\",state=\"open\"} 1";
    assert!(prometheus.render().contains(open));

    tokio::time::advance(Duration::from_secs(61)).await;
    svc.clone().oneshot(req("other")).await.unwrap();
    let text = prometheus.render();
    assert!(
        !text.contains("up:bad:80") && !text.contains("up:good:80"),
        "{text}"
    );
    assert!(
        text.contains("circuit_breaker_calls_total{breaker=\"up:other:80\",outcome=\"success\"} 1"),
        "{text}"
    );

    svc.clone().oneshot(req("bad")).await.unwrap_err();
    let text = prometheus.render();
    for line in [
        "circuit_breaker_state{breaker=\"up:bad:80\",state=\"closed\"} 1",
        "circuit_breaker_calls_total{breaker=\"up:bad:80\",outcome=\"failure\"} 1",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
}

/// Two keyed layers from one template have breakers of the same names, on the same series:
/// one layer evicting its breaker leaves them to the other's, which still reports.
#[cfg(feature = "prometheus")]
#[tokio::test(start_paused = true)]
async fn an_evicted_breaker_leaves_the_series_a_namesake_reports_on() {
    let (recorder, prometheus) = crate::metrics::Prometheus::builder().build();
    let _local = metrics::set_default_local_recorder(&recorder);
    let template = Breaker::builder("twin").count_window(4);
    let ((_, one), (_, two)) = (keyed_hosts(template.clone(), 1), keyed_hosts(template, 8));
    let req = get;
    one.clone().oneshot(req("a")).await.unwrap();
    two.clone().oneshot(req("a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    // The first layer evicts its `twin:a:80`; the second's is still there.
    one.clone().oneshot(req("b")).await.unwrap();
    two.clone().oneshot(req("a")).await.unwrap();
    let text = prometheus.render();
    for line in [
        "circuit_breaker_state{breaker=\"twin:a:80\",state=\"closed\"} 1",
        "circuit_breaker_calls_total{breaker=\"twin:a:80\",outcome=\"success\"} 3",
        "circuit_breaker_calls_total{breaker=\"twin:b:80\",outcome=\"success\"} 1",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
}

/// The key is `host:port` however the URI gives it: with its port (taken as written), without
/// (the scheme's), with user info (left out), IPv6 (bracketed as in a URI).
#[tokio::test]
async fn keyed_breakers_key_by_host_and_port() {
    let (layer, svc) = keyed_hosts(Breaker::builder("key").count_window(4), 8);
    for (uri, key) in [
        ("http://api.test:8080/x", "api.test:8080"),
        ("https://api.test/x", "api.test:443"),
        ("http://user:secret@api.test:81/", "api.test:81"),
        ("http://[::1]:3000/", "[::1]:3000"),
    ] {
        let req = http::Request::get(uri).body(()).unwrap();
        assert_eq!(authority_key(&req), key, "{uri}");
        svc.clone().oneshot(req).await.unwrap();
        assert!(layer.breaker(key).is_some(), "{uri}: no breaker {key}");
    }
    assert_eq!(layer.len(), 4);
}

/// The breaker's rules for calls made one after another, written as plainly as they read: a
/// count window, the failure-rate and consecutive-failure trips, waits growing by the backoff
/// multiplier until a stable close, and half-open probes deciding once the permitted number
/// have reported (a probe's permit comes back when it reports, so one call at a time never
/// finds them all out; an ignored probe reports nothing). The half-open phase never times out
/// here (its own test covers that), so the timers only change when the state reads half-open,
/// never what a call gets.
mod model {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    struct Settings {
        window: u32,
        minimum: u32,
        threshold: f64,
        consecutive: Option<u32>,
        wait_s: u64,
        multiplier: f64,
        stable_s: u64,
        probes: u32,
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Call(CallOutcome),
        Advance(u64),
    }

    #[derive(Debug)]
    enum Phase {
        Closed {
            window: VecDeque<bool>,
            consecutive: u32,
            since_ms: u64,
        },
        Open {
            until_ms: u64,
        },
        HalfOpen {
            calls: u32,
            failures: u32,
        },
    }

    struct Model {
        s: Settings,
        phase: Phase,
        opens_in_a_row: u32,
        now_ms: u64,
    }

    impl Model {
        fn state(&self) -> State {
            match self.phase {
                Phase::Closed { .. } => State::Closed,
                Phase::Open { .. } => State::Open,
                Phase::HalfOpen { .. } => State::HalfOpen,
            }
        }

        fn open(&mut self) {
            if let Phase::Closed { since_ms, .. } = self.phase {
                if self.now_ms - since_ms >= self.s.stable_s * 1000 {
                    self.opens_in_a_row = 0;
                }
            }
            let wait = (self.s.wait_s as f64 * self.s.multiplier.powi(self.opens_in_a_row as i32))
                .min(60.0);
            self.opens_in_a_row += 1;
            self.phase = Phase::Open {
                until_ms: self.now_ms + (wait * 1000.0).round() as u64,
            };
        }

        fn close(&mut self) {
            self.phase = Phase::Closed {
                window: VecDeque::new(),
                consecutive: 0,
                since_ms: self.now_ms,
            };
        }

        /// Whether the call is let through.
        fn call(&mut self, outcome: CallOutcome) -> bool {
            let failure = match outcome {
                CallOutcome::Success => false,
                CallOutcome::Failure => true,
                CallOutcome::Ignored => {
                    return self.admit(None);
                }
            };
            self.admit(Some(failure))
        }

        fn admit(&mut self, failure: Option<bool>) -> bool {
            let s = self.s.clone();
            match &mut self.phase {
                Phase::Closed {
                    window,
                    consecutive,
                    ..
                } => {
                    let Some(failure) = failure else {
                        return true;
                    };
                    window.push_back(failure);
                    if window.len() > s.window as usize {
                        window.pop_front();
                    }
                    *consecutive = if failure { *consecutive + 1 } else { 0 };
                    if !failure {
                        return true;
                    }
                    let calls = window.len() as u32;
                    let failures = window.iter().filter(|f| **f).count() as u32;
                    let trips = s.consecutive.is_some_and(|c| *consecutive >= c)
                        || (calls >= s.minimum
                            && failures > 0
                            && f64::from(failures) / f64::from(calls) >= s.threshold);
                    if trips {
                        self.open();
                    }
                    true
                }
                Phase::Open { until_ms } => {
                    if self.now_ms < *until_ms {
                        return false;
                    }
                    self.phase = Phase::HalfOpen {
                        calls: 0,
                        failures: 0,
                    };
                    self.admit(failure)
                }
                Phase::HalfOpen { calls, failures } => {
                    let Some(failure) = failure else {
                        return true;
                    };
                    *calls += 1;
                    *failures += u32::from(failure);
                    if *calls >= s.probes {
                        let (calls, failures) = (*calls, *failures);
                        if failures > 0 && f64::from(failures) / f64::from(calls) >= s.threshold {
                            self.open();
                        } else {
                            self.close();
                        }
                    }
                    true
                }
            }
        }
    }

    prop_compose! {
        fn settings()(
            window in 1u32..8,
            minimum in 1u32..8,
            threshold in prop::sample::select(vec![0.25, 0.5, 1.0]),
            consecutive in proptest::option::of(1u32..5),
            wait_s in prop::sample::select(vec![1u64, 5, 10]),
            multiplier in prop::sample::select(vec![1.0, 2.0]),
            stable_s in prop::sample::select(vec![5u64, 30]),
            probes in 1u32..4,
        ) -> Settings {
            Settings { window, minimum, threshold, consecutive, wait_s, multiplier, stable_s, probes }
        }
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![
                4 => Just(Op::Call(CallOutcome::Failure)),
                3 => Just(Op::Call(CallOutcome::Success)),
                1 => Just(Op::Call(CallOutcome::Ignored)),
                2 => prop::sample::select(vec![1u64, 500, 1000, 5000, 20_000]).prop_map(Op::Advance),
            ],
            0..80,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

        /// Every call is let through or rejected as the plain rules say, and the state after
        /// it is theirs.
        #[test]
        fn calls_one_after_another_follow_the_plain_rules(s in settings(), ops in ops()) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let b = Breaker::builder("model")
                    .count_window(s.window)
                    .minimum_calls(s.minimum)
                    .failure_rate_threshold(s.threshold)
                    .wait_in_open(Duration::from_secs(s.wait_s))
                    .backoff(s.multiplier, Duration::from_secs(60), 0.0, Duration::from_secs(s.stable_s))
                    .permitted_calls_in_half_open(s.probes)
                    .max_half_open(Duration::from_secs(3600));
                let b = match s.consecutive {
                    Some(c) => b.consecutive_failures(c),
                    None => b,
                }
                .build();
                let mut m = Model {
                    s: s.clone(),
                    phase: Phase::Closed { window: VecDeque::new(), consecutive: 0, since_ms: 0 },
                    opens_in_a_row: 0,
                    now_ms: 0,
                };
                for (i, op) in ops.iter().enumerate() {
                    match *op {
                        Op::Advance(ms) => {
                            tokio::time::advance(Duration::from_millis(ms)).await;
                            m.now_ms += ms;
                        }
                        Op::Call(outcome) => {
                            let want = m.call(outcome);
                            prop_assert_eq!(call(&b, outcome), want, "op {}: {:?}", i, op);
                            prop_assert_eq!(b.state(), m.state(), "after op {}: {:?}", i, op);
                        }
                    }
                }
                Ok(())
            })?;
        }
    }
}
