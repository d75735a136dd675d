//! Cache operations with hits and misses.

use std::future::Future;

use metrics::{Counter, Histogram, Key, Label, Unit};

use super::{describe, register_counter, register_histogram, OTHER};

/// `cache_operations_total`
pub const CACHE_OPERATIONS: &str = "cache_operations_total";
/// `cache_operation_duration_seconds`
pub const CACHE_DURATION: &str = "cache_operation_duration_seconds";

struct CacheOp {
    name: &'static str,
    hit: Counter,
    miss: Counter,
    ok: Counter,
    error: Counter,
    duration: Histogram,
}

/// A cache's operations: `cache_operations_total{cache, operation, result}` (`hit`/`miss` for
/// lookups, `ok`/`error` for the rest) and `cache_operation_duration_seconds{cache,
/// operation}`. Operations outside the declared list are recorded as `_other`.
///
/// ```
/// # async fn demo() {
/// use towerscope::ops::Cache;
/// let cache = Cache::new("sessions", &["get", "set"]);
/// let found = cache.lookup("get", async { Some("session") }).await; // a hit
/// let stored: Result<(), std::io::Error> = cache.call("set", async { Ok(()) }).await;
/// cache.record_lookup("get", false, std::time::Duration::from_micros(80)); // timed elsewhere
/// # assert!(found.is_some() && stored.is_ok());
/// # }
/// ```
pub struct Cache {
    ops: Vec<CacheOp>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field(
                "operations",
                &self.ops.iter().map(|o| o.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Cache {
    /// A cache named `cache` with these operations.
    pub fn new(cache: &'static str, operations: &[&'static str]) -> Self {
        describe(|r| {
            r.describe_counter(
                CACHE_OPERATIONS.into(),
                None,
                "Cache operations by result: hit or miss for lookups, ok or error otherwise."
                    .into(),
            );
            r.describe_histogram(
                CACHE_DURATION.into(),
                Some(Unit::Seconds),
                "Duration of cache operations.".into(),
            );
        });
        let op = |name: &'static str| {
            let labels = || vec![Label::new("cache", cache), Label::new("operation", name)];
            let counter = |result: &'static str| {
                let mut l = labels();
                l.push(Label::new("result", result));
                register_counter(&Key::from_parts(CACHE_OPERATIONS, l))
            };
            CacheOp {
                name,
                hit: counter("hit"),
                miss: counter("miss"),
                ok: counter("ok"),
                error: counter("error"),
                duration: register_histogram(&Key::from_parts(CACHE_DURATION, labels())),
            }
        };
        let mut ops: Vec<CacheOp> = operations.iter().map(|n| op(n)).collect();
        ops.push(op(OTHER));
        Self { ops }
    }

    fn op(&self, name: &str) -> &CacheOp {
        let last = self.ops.len() - 1;
        self.ops[..last]
            .iter()
            .find(|o| o.name == name)
            .unwrap_or(&self.ops[last])
    }

    /// Runs a lookup: `Some` is a hit, `None` a miss.
    pub async fn lookup<T>(
        &self,
        operation: &str,
        fut: impl Future<Output = Option<T>>,
    ) -> Option<T> {
        let start = quanta::Instant::now();
        let out = fut.await;
        let op = self.op(operation);
        op.duration.record(start.elapsed().as_secs_f64());
        if out.is_some() { &op.hit } else { &op.miss }.increment(1);
        out
    }

    /// Runs any other operation (`set`, `delete`, …): `Ok` or `Err`.
    pub async fn call<T, E>(
        &self,
        operation: &str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let start = quanta::Instant::now();
        let out = fut.await;
        let op = self.op(operation);
        op.duration.record(start.elapsed().as_secs_f64());
        if out.is_ok() { &op.ok } else { &op.error }.increment(1);
        out
    }

    /// Records a lookup timed elsewhere.
    pub fn record_lookup(&self, operation: &str, hit: bool, duration: std::time::Duration) {
        let op = self.op(operation);
        op.duration.record(duration.as_secs_f64());
        if hit { &op.hit } else { &op.miss }.increment(1);
    }
}
