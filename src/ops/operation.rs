//! Any call as an operation: a duration histogram by outcome and an INTERNAL span.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use metrics::{Histogram, Key, Label, Unit};
use pin_project_lite::pin_project;
use tracing::{field::Empty, Span};

use super::{describe, register_histogram};

/// A named operation: `{name}_duration_seconds{outcome="success|error|cancelled"}` plus the
/// constant labels, and a span `operation` (INFO, `otel.name` = the name, kind INTERNAL) that
/// records `otel.status_code="error"` and an ERROR event `exception` with `exception.message`
/// on failure, an `Err` or a panic (an OpenTelemetry exception event when spans are exported).
///
/// Handles are resolved when it is built: build it once (after installing the recorder) and
/// keep it.
///
/// ```
/// # async fn demo() {
/// use towerscope::ops::Operation;
/// let charge = Operation::builder("payment_charge").label("provider", "acme").build();
/// let receipt: Result<u32, String> = charge.run(async { Ok(42) }).await;
/// let total = charge.run_sync(|| Ok::<_, std::io::Error>(3 + 4));
/// # assert_eq!(receipt, Ok(42)); assert_eq!(total.unwrap(), 7);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Operation {
    name: &'static str,
    success: Histogram,
    error: Histogram,
    cancelled: Histogram,
}

/// Settings of an [`Operation`].
#[derive(Debug)]
pub struct OperationBuilder {
    name: &'static str,
    labels: Vec<Label>,
}

impl OperationBuilder {
    /// A constant label on the operation's series (keep the set small and fixed).
    pub fn label(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.labels.push(Label::new(key, value.into()));
        self
    }

    /// The operation, its handles resolved.
    pub fn build(self) -> Operation {
        let metric = format!("{}_duration_seconds", self.name);
        describe(|r| {
            r.describe_histogram(
                metric.clone().into(),
                Some(Unit::Seconds),
                format!("Duration of {} operations by outcome.", self.name).into(),
            )
        });
        let handle = |outcome: &'static str| {
            let mut labels = self.labels.clone();
            labels.push(Label::new("outcome", outcome));
            register_histogram(&Key::from_parts(metric.clone(), labels))
        };
        Operation {
            name: self.name,
            success: handle("success"),
            error: handle("error"),
            cancelled: handle("cancelled"),
        }
    }
}

impl Operation {
    /// An operation with no constant labels.
    pub fn new(name: &'static str) -> Self {
        Self::builder(name).build()
    }

    /// Configures an operation. `name` must be a valid Prometheus metric name prefix.
    pub fn builder(name: &'static str) -> OperationBuilder {
        OperationBuilder {
            name,
            labels: Vec::new(),
        }
    }

    fn span(&self) -> Span {
        tracing::info_span!(
            target: "towerscope::ops",
            "operation",
            otel.name = self.name,
            otel.kind = "internal",
            otel.status_code = Empty,
        )
    }

    /// Runs `fut` in the operation's span and records its duration and outcome. A future
    /// dropped before it completes is recorded as `cancelled`; one that panics, as an `error`
    /// (exception message `panicked`).
    pub fn run<F, T, E>(&self, fut: F) -> Instrumented<F>
    where
        F: Future<Output = Result<T, E>>,
        E: Display,
    {
        Instrumented {
            inner: fut,
            state: State {
                op: self.clone(),
                span: self.span(),
                start: quanta::Instant::now(),
                done: false,
            },
        }
    }

    /// Runs `f` in the operation's span and records its duration and outcome (a panic is an
    /// `error`, exception message `panicked`, and goes on unwinding).
    pub fn run_sync<T, E: Display>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let mut state = State {
            op: self.clone(),
            span: self.span(),
            start: quanta::Instant::now(),
            done: false,
        };
        let out = {
            let _entered = state.span.enter();
            f()
        };
        state.finish(out.as_ref().err());
        out
    }

    /// Records an operation timed elsewhere.
    pub fn record(&self, seconds: f64, ok: bool) {
        if ok {
            self.success.record(seconds);
        } else {
            self.error.record(seconds);
        }
    }
}

struct State {
    op: Operation,
    span: Span,
    start: quanta::Instant,
    done: bool,
}

impl State {
    fn finish<E: Display>(&mut self, error: Option<&E>) {
        self.done = true;
        let secs = self.start.elapsed().as_secs_f64();
        match error {
            None => self.op.success.record(secs),
            Some(e) => self.fail(secs, e),
        }
    }

    fn fail(&self, secs: f64, e: &dyn Display) {
        self.op.error.record(secs);
        self.span.record("otel.status_code", "error");
        let _entered = self.span.enter();
        tracing::error!(
            target: "towerscope::ops",
            operation = self.op.name,
            "exception.message" = %e,
            "exception"
        );
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let secs = self.start.elapsed().as_secs_f64();
        // Dropped while unwinding: the call panicked (the payload is not reachable from
        // here), an error like any other; dropped otherwise: cancelled.
        if std::thread::panicking() {
            self.fail(secs, &"panicked");
        } else {
            self.op.cancelled.record(secs);
        }
    }
}

pin_project! {
    /// The future of [`Operation::run`].
    pub struct Instrumented<F> {
        #[pin]
        inner: F,
        state: State,
    }
}

impl<F, T, E> Future for Instrumented<F>
where
    F: Future<Output = Result<T, E>>,
    E: Display,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = {
            let _entered = this.state.span.enter();
            std::task::ready!(this.inner.poll(cx))
        };
        this.state.finish(out.as_ref().err());
        Poll::Ready(out)
    }
}
