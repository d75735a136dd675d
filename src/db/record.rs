//! Recording one query: the per-query handles (resolved once per query text), the span, the
//! metrics, the logs, and the stream and future wrappers that decide when a query is finished.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use pin_project_lite::pin_project;
use sqlx::Either;
use tracing::{field::Empty, Span};

use super::cache::TextCache;
use super::sql::{analyze_for, Analysis};
use super::system::Target;

/// `db_client_operation_duration_seconds`
pub const OPERATION_DURATION: &str = "db_client_operation_duration_seconds";
/// `db_client_connections_usage`
pub const CONNECTIONS_USAGE: &str = "db_client_connections_usage";
/// `db_client_connections_max`
pub const CONNECTIONS_MAX: &str = "db_client_connections_max";
/// `db_client_connections_timeouts_total`
pub const CONNECTIONS_TIMEOUTS: &str = "db_client_connections_timeouts_total";

/// `error.type` of a query whose result stream was dropped before its end.
pub const CANCELLED: &str = "cancelled";

static METADATA: Metadata<'static> =
    Metadata::new("towerscope::db", metrics::Level::INFO, Some(module_path!()));

/// What a pool's instrumentation shares between its queries.
pub(crate) struct Shared {
    pub(crate) system: &'static str,
    pub(crate) target: Target,
    pub(crate) slow: Duration,
    pub(crate) returned_rows: bool,
    cache: TextCache<QueryInfo>,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
    pub(crate) pool: PoolHandles,
}

/// What [`Shared::new`] needs.
pub(crate) struct Settings {
    pub(crate) system: &'static str,
    pub(crate) target: Target,
    pub(crate) pool_name: String,
    pub(crate) max_connections: u32,
    pub(crate) slow: Duration,
    pub(crate) returned_rows: bool,
    pub(crate) cache_capacity: usize,
    pub(crate) recorder: Option<Arc<dyn Recorder + Send + Sync>>,
}

/// The pool's own series.
pub(crate) struct PoolHandles {
    pub(crate) idle: Gauge,
    pub(crate) used: Gauge,
    pub(crate) max: Gauge,
    pub(crate) timeouts: Counter,
}

fn describe(r: &dyn Recorder) {
    r.describe_histogram(
        OPERATION_DURATION.into(),
        Some(Unit::Seconds),
        "Duration of database client operations, until their result stream ended.".into(),
    );
    r.describe_gauge(
        CONNECTIONS_USAGE.into(),
        None,
        "Connections of the pool by state (idle, used).".into(),
    );
    r.describe_gauge(
        CONNECTIONS_MAX.into(),
        None,
        "Maximum number of connections the pool allows.".into(),
    );
    r.describe_counter(
        CONNECTIONS_TIMEOUTS.into(),
        None,
        "Times a connection could not be acquired from the pool in time.".into(),
    );
}

/// One query text's analysis and handles, built on first sight.
pub(crate) struct QueryInfo {
    analysis: Analysis,
    /// The span name: the summary, or the system name when the text had no operation.
    name: String,
    ok: Timed,
    errors: Mutex<Vec<(Box<str>, Timed)>>,
}

/// A duration histogram of queries, and its exemplars when the recorder keeps them.
#[derive(Clone)]
struct Timed {
    histogram: Histogram,
    /// Zero-sized, and unused, without the `prometheus` and `otel` features.
    #[cfg_attr(not(all(feature = "prometheus", feature = "otel")), allow(dead_code))]
    exemplars: crate::metrics::Exemplars,
}

impl Timed {
    /// Records a query's duration and, as its exemplar, the sampled trace it ran in (the
    /// context current while it is polled: the request's).
    fn record(&self, secs: f64) {
        self.histogram.record(secs);
        #[cfg(feature = "otel")]
        self.exemplars.offer(secs, crate::trace::TraceIds::current);
    }
}

impl Shared {
    pub(crate) fn new(s: Settings) -> Self {
        let Settings {
            system,
            target,
            pool_name,
            max_connections,
            slow,
            returned_rows,
            cache_capacity,
            recorder,
        } = s;
        let pool_name = pool_name.as_str();
        let with = |f: &dyn Fn(&dyn Recorder) -> PoolHandles| match &recorder {
            Some(r) => f(r.as_ref()),
            None => metrics::with_recorder(|r| f(r)),
        };
        let pool_label = || Label::new("pool_name", pool_name.to_owned());
        let pool = with(&|r: &dyn Recorder| {
            describe(r);
            let usage = |state: &'static str| {
                r.register_gauge(
                    &Key::from_parts(
                        CONNECTIONS_USAGE,
                        vec![pool_label(), Label::new("state", state)],
                    ),
                    &METADATA,
                )
            };
            PoolHandles {
                idle: usage("idle"),
                used: usage("used"),
                max: r.register_gauge(
                    &Key::from_parts(CONNECTIONS_MAX, vec![pool_label()]),
                    &METADATA,
                ),
                timeouts: r.register_counter(
                    &Key::from_parts(CONNECTIONS_TIMEOUTS, vec![pool_label()]),
                    &METADATA,
                ),
            }
        });
        pool.max.set(f64::from(max_connections));
        Self {
            system,
            target,
            slow,
            returned_rows,
            cache: TextCache::new(cache_capacity),
            recorder,
            pool,
        }
    }

    fn histogram(&self, a: &Analysis, error_type: Option<&str>) -> Timed {
        let mut labels = vec![Label::new("db_system_name", self.system)];
        if let Some(op) = &a.operation {
            labels.push(Label::new("db_operation_name", op.clone()));
        }
        if let Some(c) = &a.collection {
            labels.push(Label::new("db_collection_name", c.clone()));
        }
        if let Some(e) = error_type {
            labels.push(Label::new("error_type", e.to_owned()));
        }
        let key = Key::from_parts(OPERATION_DURATION, labels);
        let (histogram, exemplars) = crate::metrics::Exemplars::register(|| match &self.recorder {
            Some(r) => r.register_histogram(&key, &METADATA),
            None => metrics::with_recorder(|r| r.register_histogram(&key, &METADATA)),
        });
        Timed {
            histogram,
            exemplars,
        }
    }

    /// The cached analysis and handles of `sql`.
    pub(crate) fn info(&self, sql: &str) -> Arc<QueryInfo> {
        self.cache.get_or_insert_with(sql, || {
            let analysis = analyze_for(self.system, sql);
            let name = if analysis.summary.is_empty() {
                self.system.to_owned()
            } else {
                analysis.summary.clone()
            };
            QueryInfo {
                ok: self.histogram(&analysis, None),
                errors: Mutex::new(Vec::new()),
                name,
                analysis,
            }
        })
    }

    /// Starts recording a query: the span is created (when anyone listens) and the clock runs.
    pub(crate) fn start(self: &Arc<Self>, sql: &str) -> Pending {
        let info = self.info(sql);
        let a = &info.analysis;
        let span = tracing::info_span!(
            target: "towerscope::db",
            "db.query",
            otel.name = %info.name,
            otel.kind = "client",
            otel.status_code = Empty,
            db.system.name = self.system,
            db.namespace = self.target.namespace.as_deref(),
            db.operation.name = a.operation.as_deref(),
            db.collection.name = a.collection.as_deref(),
            "db.query.summary" = %a.summary,
            db.query.text = %a.sanitized,
            server.address = self.target.address.as_deref(),
            server.port = self.target.port,
            db.response.status_code = Empty,
            db.response.returned_rows = Empty,
            error.type = Empty,
        );
        Pending {
            shared: self.clone(),
            info,
            span,
            start: quanta::Instant::now(),
            rows: 0,
            done: false,
        }
    }
}

/// A query in flight. Dropped unfinished, it is recorded as cancelled.
pub(crate) struct Pending {
    shared: Arc<Shared>,
    info: Arc<QueryInfo>,
    span: Span,
    start: quanta::Instant,
    rows: u64,
    done: bool,
}

/// The low-cardinality `error.type` of a sqlx error, and its SQLSTATE (or the driver's code).
fn classify(e: &sqlx::Error) -> (Cow<'_, str>, Option<Cow<'_, str>>) {
    use sqlx::Error as E;
    let kind = match e {
        E::Database(d) => {
            return match d.code() {
                Some(code) => (code.clone(), Some(code)),
                None => (Cow::Borrowed("database"), None),
            }
        }
        E::PoolTimedOut => "pool_timeout",
        E::PoolClosed => "pool_closed",
        E::Io(_) => "io",
        E::Tls(_) => "tls",
        E::Protocol(_) => "protocol",
        E::RowNotFound => "row_not_found",
        E::Configuration(_) => "configuration",
        E::WorkerCrashed => "worker_crashed",
        E::TypeNotFound { .. }
        | E::ColumnIndexOutOfBounds { .. }
        | E::ColumnNotFound(_)
        | E::ColumnDecode { .. }
        | E::Decode(_)
        | E::Encode(_) => "decode",
        _ => "other",
    };
    (Cow::Borrowed(kind), None)
}

impl Pending {
    fn row(&mut self) {
        self.rows += 1;
    }

    /// Records the end of the query: `None` for success.
    pub(crate) fn finish(&mut self, error: Option<&sqlx::Error>) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.start.elapsed();
        let secs = elapsed.as_secs_f64();
        let info = &*self.info;
        let _entered = self.span.enter();
        if self.shared.returned_rows {
            self.span.record("db.response.returned_rows", self.rows);
        }
        match error {
            None => {
                info.ok.record(secs);
                if elapsed >= self.shared.slow {
                    tracing::warn!(
                        target: "towerscope::db",
                        duration_s = secs,
                        "db.query.summary" = %info.analysis.summary,
                        "db.query.text" = %info.analysis.sanitized,
                        "slow query"
                    );
                } else {
                    tracing::debug!(
                        target: "towerscope::db",
                        duration_s = secs,
                        "db.query.summary" = %info.analysis.summary,
                        "query"
                    );
                }
            }
            Some(e) => {
                let (error_type, code) = classify(e);
                if matches!(e, sqlx::Error::PoolTimedOut) {
                    self.shared.pool.timeouts.increment(1);
                }
                self.error_histogram(&error_type).record(secs);
                self.span.record("otel.status_code", "error");
                self.span.record("error.type", &*error_type);
                if let Some(code) = &code {
                    self.span.record("db.response.status_code", &**code);
                }
                // The driver's message can quote values (`invalid input syntax for type
                // integer: "…"`): only the code, the kind and the constraint are logged.
                let constraint = match e {
                    sqlx::Error::Database(d) => d.constraint(),
                    _ => None,
                };
                tracing::error!(
                    target: "towerscope::db",
                    duration_s = secs,
                    "db.query.summary" = %info.analysis.summary,
                    "db.response.status_code" = code.as_deref(),
                    "error.type" = &*error_type,
                    constraint,
                    "query failed"
                );
            }
        }
    }

    fn cancelled(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let secs = self.start.elapsed().as_secs_f64();
        self.error_histogram(CANCELLED).record(secs);
        let _entered = self.span.enter();
        self.span.record("error.type", CANCELLED);
        tracing::debug!(
            target: "towerscope::db",
            duration_s = secs,
            "db.query.summary" = %self.info.analysis.summary,
            "query cancelled"
        );
    }

    fn error_histogram(&self, error_type: &str) -> Timed {
        let mut errors = self.info.errors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, h)) = errors.iter().find(|(t, _)| &**t == error_type) {
            return h.clone();
        }
        let h = self.shared.histogram(&self.info.analysis, Some(error_type));
        // Bounded: SQLSTATEs and sqlx's error kinds are finite, and so is this list.
        if errors.len() < 64 {
            errors.push((error_type.into(), h.clone()));
        }
        h
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.cancelled();
    }
}

pin_project! {
    /// A result stream recorded until its end, its first error or its drop.
    pub(crate) struct RecordedStream<S> {
        #[pin]
        inner: S,
        pending: Pending,
    }
}

impl<S> RecordedStream<S> {
    pub(crate) fn new(inner: S, pending: Pending) -> Self {
        Self { inner, pending }
    }
}

impl<S, R, T> Stream for RecordedStream<S>
where
    S: Stream<Item = Result<Either<R, T>, sqlx::Error>>,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let poll = {
            let _entered = this.pending.span.enter();
            this.inner.poll_next(cx)
        };
        match &poll {
            Poll::Ready(Some(Ok(Either::Right(_)))) => this.pending.row(),
            Poll::Ready(Some(Ok(Either::Left(_)))) | Poll::Pending => {}
            Poll::Ready(Some(Err(e))) => this.pending.finish(Some(e)),
            Poll::Ready(None) => this.pending.finish(None),
        }
        poll
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A `fetch_optional` (or any single-result) future, recorded until it completes or drops.
    pub(crate) struct RecordedFuture<F> {
        #[pin]
        inner: F,
        pending: Pending,
    }
}

impl<F> RecordedFuture<F> {
    pub(crate) fn new(inner: F, pending: Pending) -> Self {
        Self { inner, pending }
    }
}

impl<F, T> Future for RecordedFuture<F>
where
    F: Future<Output = Result<Option<T>, sqlx::Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = {
            let _entered = this.pending.span.enter();
            std::task::ready!(this.inner.poll(cx))
        };
        match &out {
            Ok(row) => {
                if row.is_some() {
                    this.pending.row();
                }
                this.pending.finish(None);
            }
            Err(e) => this.pending.finish(Some(e)),
        }
        Poll::Ready(out)
    }
}
