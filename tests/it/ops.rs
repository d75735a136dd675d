//! Other operations: any call, caches, queues and business counters, recorded into a private
//! registry and checked in its exposition.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};

use towerscope::metrics::Prometheus;
use towerscope::ops::{BusinessCounter, Cache, Operation, Queue};

use crate::support::{block_on, promtool_check, sample, series_count};

#[test]
fn operations_caches_queues_and_business_counters() {
    let (recorder, prometheus) = Prometheus::builder().build();
    let (op, cache, queue, orders) = metrics::with_local_recorder(&recorder, || {
        (
            Operation::builder("payment_charge")
                .label("provider", "acme")
                .build(),
            Cache::new("users", &["get", "set"]),
            Queue::new("emails"),
            BusinessCounter::new("orders", "status", &["created", "paid"]),
        )
    });

    // Any call: outcome by result; a future dropped before completion is cancelled.
    assert_eq!(block_on(op.run(async { Ok::<_, String>(1) })), Ok(1));
    assert!(block_on(op.run(async { Err::<(), _>("declined") })).is_err());
    assert!(op.run_sync(|| Err::<(), _>("timeout")).is_err());
    {
        let mut never = pin!(op.run(std::future::pending::<Result<(), String>>()));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(never.as_mut().poll(&mut cx).is_pending());
    }
    // The operation's count by outcome, in the exposition as rendered now.
    let outcomes = || {
        let text = prometheus.render();
        let count = |o: &str| {
            sample(
                &text,
                "payment_charge_duration_seconds_count",
                &[("provider", "acme"), ("outcome", o)],
            )
        };
        (count("success"), count("error"), count("cancelled"))
    };
    assert_eq!(outcomes(), (Some(1.0), Some(2.0), Some(1.0)));

    // A panic, in a closure or while polling a future, is an error (not a cancellation), and
    // goes on unwinding.
    fn bug() -> Result<(), String> {
        panic!("bug")
    }
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.run_sync(bug)));
    assert!(panicked.is_err());
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        block_on(op.run(async { bug() }))
    }));
    assert!(panicked.is_err());
    assert_eq!(outcomes(), (Some(1.0), Some(4.0), Some(1.0)));

    // Caches: hits and misses; undeclared operations are `_other`.
    assert_eq!(block_on(cache.lookup("get", async { Some(7) })), Some(7));
    assert_eq!(block_on(cache.lookup("get", async { None::<u8> })), None);
    assert_eq!(block_on(cache.lookup("get", async { None::<u8> })), None);
    assert!(block_on(cache.call("set", async { Err::<(), _>("full") })).is_err());
    assert!(block_on(cache.call("flush-everything", async { Ok::<_, ()>(()) })).is_ok());
    let text = prometheus.render();
    let ops = |op: &str, result: &str| {
        sample(
            &text,
            "cache_operations_total",
            &[("cache", "users"), ("operation", op), ("result", result)],
        )
    };
    assert_eq!(ops("get", "hit"), Some(1.0), "{text}");
    assert_eq!(ops("get", "miss"), Some(2.0));
    assert_eq!(ops("set", "error"), Some(1.0));
    assert_eq!(ops("_other", "ok"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "cache_operation_duration_seconds_count",
            &[("cache", "users"), ("operation", "get")]
        ),
        Some(3.0)
    );

    // Queues: size and processing.
    queue.set_size(5);
    queue.decrement_size(2);
    assert!(block_on(queue.process(async { Ok::<_, String>(()) })).is_ok());
    let text = prometheus.render();
    assert_eq!(
        sample(&text, "queue_size", &[("queue", "emails")]),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "queue_processing_duration_seconds_count",
            &[("queue", "emails"), ("outcome", "success")]
        ),
        Some(1.0)
    );

    // Business counters: whatever values arrive, the series stay the declared ones + `_other`.
    let before = series_count(&prometheus.render());
    orders.increment("paid");
    for i in 0..1000 {
        orders.increment(&format!("user-supplied-{i}"));
    }
    let text = prometheus.render();
    assert_eq!(
        sample(&text, "business_orders_total", &[("status", "paid")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "business_orders_total", &[("status", "_other")]),
        Some(1000.0)
    );
    assert_eq!(series_count(&text), before);

    promtool_check(&text, "ops");
}
