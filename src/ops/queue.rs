//! Queues: their size and the processing of their items.

use std::fmt::Display;
use std::future::Future;

use metrics::{Gauge, Key, Label};

use super::operation::Operation;
use super::{describe, register_gauge};

/// A queue: `queue_size{queue}` and the processing time of its items,
/// `queue_processing_duration_seconds{queue, outcome}`, each item in an INTERNAL span
/// `{queue} process`.
///
/// ```
/// # async fn demo() {
/// use towerscope::ops::Queue;
/// let q = Queue::new("emails");
/// q.increment_size(1); // enqueued
/// q.decrement_size(1); // dequeued
/// let r: Result<(), String> = q.process(async { Ok(()) }).await;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Queue {
    size: Gauge,
    processing: Operation,
}

/// `queue_size`
pub const QUEUE_SIZE: &str = "queue_size";

impl Queue {
    /// A queue named `queue`.
    pub fn new(queue: &'static str) -> Self {
        describe(|r| {
            r.describe_gauge(
                QUEUE_SIZE.into(),
                None,
                "Items waiting in the queue.".into(),
            );
        });
        let labels = vec![Label::new("queue", queue)];
        Self {
            size: register_gauge(&Key::from_parts(QUEUE_SIZE, labels)),
            processing: Operation::builder("queue_processing")
                .label("queue", queue)
                .build(),
        }
    }

    /// Sets the number of waiting items.
    pub fn set_size(&self, size: usize) {
        self.size.set(size as f64);
    }

    /// Adds to the number of waiting items.
    pub fn increment_size(&self, n: usize) {
        self.size.increment(n as f64);
    }

    /// Subtracts from the number of waiting items.
    pub fn decrement_size(&self, n: usize) {
        self.size.decrement(n as f64);
    }

    /// Processes one item: timed, its outcome recorded, in a span.
    pub async fn process<T, E: Display>(
        &self,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        self.processing.run(fut).await
    }
}
