//! Other operations in the shape of HTTP and database calls: a duration histogram, an outcome
//! and a span, for any call ([`Operation`]), cache operations with hits and misses ([`Cache`]),
//! queues ([`Queue`]) and business events with bounded labels ([`BusinessCounter`]).
//!
//! Every handle is resolved when the value is built, so recording costs a few atomic
//! operations: build them once, after installing the recorder, and keep them. Label values
//! come from fixed lists given at build time; anything else is recorded as `_other`, so no
//! input can grow the number of series.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `{name}_duration_seconds` | histogram | `outcome="success\|error\|cancelled"`, constant labels |
//! | `cache_operations_total` | counter | `cache`, `operation`, `result="hit\|miss\|ok\|error"` |
//! | `cache_operation_duration_seconds` | histogram | `cache`, `operation` |
//! | `queue_size` | gauge | `queue` |
//! | `queue_processing_duration_seconds` | histogram | `queue`, `outcome` |
//! | `business_{name}_total` | counter | one label from a fixed set |
//!
//! ```
//! # async fn demo() {
//! use towerscope::ops::{BusinessCounter, Cache, Queue};
//! let cache = Cache::new("users", &["get", "set"]);
//! let hit: Option<String> = cache.lookup("get", async { None }).await; // a miss
//! # assert!(hit.is_none());
//! let jobs = Queue::new("emails");
//! jobs.set_size(3);
//! let sent: Result<(), String> = jobs.process(async { Ok(()) }).await;
//! let orders = BusinessCounter::new("orders", "status", &["created", "paid", "failed"]);
//! orders.increment("paid");
//! orders.increment("from-user-input"); // counted as status="_other"
//! # }
//! ```

mod business;
mod cache;
mod operation;
mod queue;

pub use business::BusinessCounter;
pub use cache::{Cache, CACHE_DURATION, CACHE_OPERATIONS};
pub use operation::{Instrumented, Operation, OperationBuilder};
pub use queue::{Queue, QUEUE_SIZE};

use metrics::{Counter, Gauge, Histogram, Key, Metadata, Recorder};

/// The value recorded for a label value outside the declared set.
pub const OTHER: &str = "_other";

static METADATA: Metadata<'static> = Metadata::new(
    "towerscope::ops",
    metrics::Level::INFO,
    Some(module_path!()),
);

fn register_histogram(key: &Key) -> Histogram {
    metrics::with_recorder(|r| r.register_histogram(key, &METADATA))
}

fn register_counter(key: &Key) -> Counter {
    metrics::with_recorder(|r| r.register_counter(key, &METADATA))
}

fn register_gauge(key: &Key) -> Gauge {
    metrics::with_recorder(|r| r.register_gauge(key, &METADATA))
}

/// Gives a metric its help text (in whichever recorder is current: the handles go there too).
fn describe(f: impl FnOnce(&dyn Recorder)) {
    metrics::with_recorder(f);
}
