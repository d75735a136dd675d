//! Setting up the subscriber in one call.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;

use super::json::{JsonLayer, Sampling};
use super::limit::RateLimit;
use super::scope::Deferring;
use super::writer::{NonBlocking, WriterGuard};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Human-readable lines, for terminals (colored only on one).
    Pretty,
}

/// Logging settings. [`LogConfig::from_env`] reads `TOWERSCOPE_LOG_FORMAT` (`json` or
/// `pretty`; default JSON, pretty when stdout is a terminal) and `RUST_LOG` (default `info`).
#[derive(Debug, Clone)]
pub struct LogConfig {
    service: String,
    format: Format,
    filter: String,
    queue_bytes: usize,
    lossy: bool,
    sampling: Sampling,
    rate_limit: Option<RateLimit>,
    #[cfg(feature = "otel")]
    tracing: Option<crate::trace::Tracing>,
}

/// Keeps the writer thread alive; dropping it flushes pending lines (within 2 s).
#[derive(Debug)]
pub struct LogGuard {
    _writer: WriterGuard,
}

/// The error of [`LogConfig::init`].
#[derive(Debug)]
pub struct InitError(String);

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot set up logging: {}", self.0)
    }
}

impl std::error::Error for InitError {}

impl LogConfig {
    /// Settings from the environment, for `service`.
    pub fn from_env(service: impl Into<String>) -> Self {
        let format = match std::env::var("TOWERSCOPE_LOG_FORMAT").ok().as_deref() {
            Some("pretty") => Format::Pretty,
            Some("json") => Format::Json,
            _ if std::io::stdout().is_terminal() => Format::Pretty,
            _ => Format::Json,
        };
        Self {
            service: service.into(),
            format,
            filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            queue_bytes: 8 << 20,
            lossy: true,
            sampling: Sampling::default(),
            rate_limit: Some(RateLimit::default()),
            #[cfg(feature = "otel")]
            tracing: None,
        }
    }

    /// The format.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// The filter, in `RUST_LOG` syntax.
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = filter.into();
        self
    }

    /// Bytes waiting for stdout at most (default 8 MiB), split evenly among the queue's
    /// per-thread shards (as many as the cores, at most 8; at least 1 KiB each). When a
    /// thread's shard is full, its new lines are dropped and counted in
    /// `log_records_dropped_total`; with `blocking(true)` the caller waits instead. A single
    /// line longer than a shard is dropped too (counted), or, with `blocking(true)`, written
    /// alone once its shard is empty.
    pub fn queue_bytes(mut self, n: usize) -> Self {
        self.queue_bytes = n;
        self
    }

    /// Waits for the writer instead of dropping when the queue is full (opt-in: a stalled
    /// stdout then stalls the service).
    pub fn blocking(mut self, on: bool) -> Self {
        self.lossy = !on;
        self
    }

    /// Sampling of INFO and lower records.
    pub fn sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// The per-call-site rate limit (`None`: off).
    pub fn rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.rate_limit = limit;
        self
    }

    /// Also exports the application's spans through `tracing`'s OpenTelemetry layer
    /// ([`Tracing::otel_layer`](crate::trace::Tracing::otel_layer)).
    #[cfg(feature = "otel")]
    pub fn tracing(mut self, tracing: &crate::trace::Tracing) -> Self {
        self.tracing = Some(tracing.clone());
        self
    }

    /// Installs the global subscriber, writing to stdout through the non-blocking writer, and
    /// routes the `log` crate's records to it (unless a `log` logger is set already).
    pub fn init(self) -> Result<LogGuard, InitError> {
        self.init_with_writer(std::io::stdout())
    }

    /// Installs the global subscriber, writing to `writer` through the non-blocking writer, and
    /// routes the `log` crate's records to it, as [`LogConfig::init`] does.
    pub fn init_with_writer<T: std::io::Write + Send + 'static>(
        self,
        writer: T,
    ) -> Result<LogGuard, InitError> {
        let (dispatch, guard) = self.dispatch_with_writer(writer)?;
        tracing::dispatcher::set_global_default(dispatch).map_err(|e| InitError(e.to_string()))?;
        // Records of the `log` crate, which many libraries still use, go through the same
        // subscriber: its filter, context, sampling and rate limit, and the same output. Up to
        // the filter's most verbose level, so that disabled `log` calls stop at the `log`
        // crate's own check. An application that set its own `log` logger keeps it.
        let _ = tracing_log::LogTracer::builder()
            .with_max_level(tracing_log::AsLog::as_log(
                &tracing::level_filters::LevelFilter::current(),
            ))
            .init();
        Ok(guard)
    }

    /// The subscriber [`LogConfig::init_with_writer`] installs, not installed: for
    /// `tracing::dispatcher::set_default` (tests) or `with_default`. Lines reach `writer` from
    /// the non-blocking writer's thread; dropping the guard writes what is pending.
    pub fn dispatch_with_writer<T: std::io::Write + Send + 'static>(
        self,
        writer: T,
    ) -> Result<(tracing::Dispatch, LogGuard), InitError> {
        // A plain `RUST_LOG` (levels per target) needs only the static `Targets` filter, which
        // costs nothing per span; span and field directives need `EnvFilter`.
        let plain = !self.filter.contains('[');
        let filter: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync> =
            match self.filter.parse::<tracing_subscriber::filter::Targets>() {
                Ok(targets) if plain => Box::new(targets),
                _ => Box::new(
                    EnvFilter::try_new(&self.filter).map_err(|e| InitError(e.to_string()))?,
                ),
            };
        let (writer, guard) = NonBlocking::new(writer, self.queue_bytes, self.lossy);
        #[cfg(feature = "otel")]
        let registry = {
            let otel = self
                .tracing
                .as_ref()
                .filter(|t| t.is_exporting())
                .map(|t| t.otel_layer());
            tracing_subscriber::registry().with(filter).with(otel)
        };
        #[cfg(not(feature = "otel"))]
        let registry = tracing_subscriber::registry().with(filter);
        let result = match self.format {
            Format::Json => {
                let sampling = self.sampling;
                let json = Arc::new(
                    JsonLayer::new(self.service, writer)
                        .sampling(sampling)
                        .rate_limit(self.rate_limit),
                );
                spawn_every(
                    Duration::from_secs(1),
                    "towerscope-log-limit",
                    json.flusher(),
                );
                let subscriber = registry.with(SharedLayer(json));
                if plain {
                    // The request span only when something asks for it (`super::scope`).
                    tracing::Dispatch::new(Deferring::new(subscriber, sampling))
                } else {
                    // Span directives may name the request span: made up front, as asked.
                    tracing::Dispatch::new(subscriber)
                }
            }
            Format::Pretty => tracing::Dispatch::new(
                registry.with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(colors())
                        .with_writer(writer),
                ),
            ),
        };
        Ok((result, LogGuard { _writer: guard }))
    }
}

/// Whether the human-readable format is colored: only on a terminal (pretty logs asked for
/// with `TOWERSCOPE_LOG_FORMAT=pretty` into a file or a pipe are plain text), and never with
/// `NO_COLOR` set to anything but the empty string (no-color.org).
fn colors() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn spawn_every(period: Duration, name: &str, mut f: impl FnMut() + Send + 'static) {
    let _ = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            std::thread::sleep(period);
            f();
        });
}

/// An `Arc`'d layer, so the flusher thread can share it with the subscriber.
struct SharedLayer<L>(Arc<L>);

#[cfg(all(test, feature = "axum", feature = "prometheus"))]
pub(crate) fn shared<S, L>(l: Arc<L>) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber,
    L: tracing_subscriber::Layer<S>,
{
    SharedLayer(l)
}

impl<S, L> tracing_subscriber::Layer<S> for SharedLayer<L>
where
    S: tracing::Subscriber,
    L: tracing_subscriber::Layer<S>,
{
    fn on_new_span(
        &self,
        a: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_new_span(a, id, ctx)
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        v: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_record(id, v, ctx)
    }
    fn on_event(&self, e: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.on_event(e, ctx)
    }
}
