//! Built-in checks: HTTP dependency, TCP connect, free disk space, tokio runtime
//! responsiveness, circuit breakers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use tokio::time::Instant;

use super::check::{CheckResult, Registration, Status};
use super::registry::{Health, PassiveHandle};
use crate::breaker::{Breaker, State};

/// GET `url` with its own `timeout`; a 2xx is Up (observed: latency in ms), anything else Down,
/// with the cause (`connection refused`, the status, the timeout, a certificate that does not
/// verify). `https://` needs the `tls` feature (without it, such a URL is Down saying so) and
/// trusts the system's root certificates (`SSL_CERT_FILE`/`SSL_CERT_DIR` as rustls-native-certs
/// reads them); `http_check_with_ca` trusts a private CA instead.
pub fn http_check(url: impl Into<String>, timeout: Duration) -> impl super::Check {
    checker(url.into(), timeout, Connector::new(None))
}

/// [`http_check`] for a dependency whose certificate a private CA signed: `https://` trusts the
/// certificates of the PEM file `ca` alone, read now (a file that cannot be read makes every
/// `https://` run Down with the reason).
#[cfg(feature = "tls")]
pub fn http_check_with_ca(
    url: impl Into<String>,
    timeout: Duration,
    ca: impl AsRef<std::path::Path>,
) -> impl super::Check {
    checker(url.into(), timeout, Connector::new(Some(ca.as_ref())))
}

/// hyper-util's client over plain TCP and, with the `tls` feature, rustls; `tls_error` says why
/// `https://` cannot be used (no TLS built in, no root certificates, an unreadable CA file).
struct Connector {
    client: hyper_util::client::legacy::Client<Connect, Empty<Bytes>>,
    tls_error: Option<Arc<str>>,
}

#[cfg(feature = "tls")]
type Connect = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;
#[cfg(not(feature = "tls"))]
type Connect = hyper_util::client::legacy::connect::HttpConnector;

impl Connector {
    #[cfg(feature = "tls")]
    fn new(ca: Option<&std::path::Path>) -> Self {
        use crate::tls::{client_config, config_with, ConfigError};
        let (config, tls_error) = match client_config(ca, None) {
            Ok(config) => (config, None),
            Err(e) => {
                let why = match e {
                    ConfigError::NoRoots => "no root certificates found on this system for \
                                             https:// (Debian: ca-certificates)"
                        .to_owned(),
                    ConfigError::Other(e) => e,
                };
                // Trusting nothing: never used, `tls_error` answers first.
                let none = config_with(tokio_rustls::rustls::RootCertStore::empty(), None)
                    .expect("the default provider and versions, no client certificate");
                (none, Some(Arc::from(why)))
            }
        };
        let connect = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build(connect),
            tls_error,
        }
    }

    #[cfg(not(feature = "tls"))]
    fn new(_: Option<&std::path::Path>) -> Self {
        Self {
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http(),
            tls_error: Some(Arc::from("https:// needs towerscope's `tls` feature")),
        }
    }
}

fn checker(url: String, timeout: Duration, connector: Connector) -> impl super::Check {
    let url: Arc<str> = Arc::from(url);
    let Connector { client, tls_error } = connector;
    move || {
        let (url, client, tls_error) = (url.clone(), client.clone(), tls_error.clone());
        async move {
            let uri: http::Uri = match url.parse() {
                Ok(u) => u,
                Err(e) => return CheckResult::down(format!("invalid URL: {e}")),
            };
            if let (Some(why), Some("https")) = (&tls_error, uri.scheme_str()) {
                return CheckResult::down(format!("{url}: {why}"));
            }
            let started = Instant::now();
            match tokio::time::timeout(timeout, client.get(uri)).await {
                Ok(Ok(res)) if res.status().is_success() => {
                    CheckResult::up().observed(started.elapsed().as_secs_f64() * 1000.0, "ms")
                }
                Ok(Ok(res)) => CheckResult::down(format!("{url} answered {}", res.status())),
                Ok(Err(e)) => CheckResult::down(format!("{url}: {}", with_causes(&e))),
                Err(_) => {
                    CheckResult::down(format!("{url}: no answer within {}ms", timeout.as_millis()))
                }
            }
        }
    }
}

/// An error and its causes, `: `-separated: hyper's client errors say only `client error
/// (Connect)` themselves, the reason (`Connection refused`, `invalid URL, scheme is not http`)
/// is in their sources. A cause whose text is said already is not repeated.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// Connects to `addr` within `timeout`.
pub fn tcp_check(addr: SocketAddr, timeout: Duration) -> impl super::Check {
    move || async move {
        let started = Instant::now();
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => CheckResult::up().observed(started.elapsed().as_secs_f64() * 1000.0, "ms"),
            Ok(Err(e)) => CheckResult::down(format!("connect {addr}: {e}")),
            Err(_) => CheckResult::down(format!("connect {addr}: timed out")),
        }
    }
}

/// Down when the free space of the file system holding `path` is under `min_free_ratio`
/// (0.0 to 1.0); observed: the free ratio.
pub fn disk_check(path: impl Into<PathBuf>, min_free_ratio: f64) -> impl super::Check {
    let path = Arc::new(path.into());
    move || {
        let path = path.clone();
        async move {
            match crate::fs_space::FsSpace::of(&path) {
                Ok(space) => {
                    let ratio = if space.total == 0 {
                        0.0
                    } else {
                        space.available as f64 / space.total as f64
                    };
                    let r = if ratio < min_free_ratio {
                        CheckResult::down(format!(
                            "{}: {:.1}% free, under {:.1}%",
                            path.display(),
                            ratio * 100.0,
                            min_free_ratio * 100.0
                        ))
                    } else {
                        CheckResult::up()
                    };
                    r.observed(ratio, "ratio")
                }
                Err(e) => CheckResult::down(format!("{}: {e}", path.display())),
            }
        }
    }
}

/// A database pool: acquires a connection and pings it. Up with the latency (ms) and the pool's
/// size and idle count in the message; Down with the error (acquire timeout, failed ping,
/// closed pool). Works with any sqlx pool (SQLite, PostgreSQL, …), and so with the pool under
/// towerscope's instrumentation.
#[cfg(feature = "sqlx")]
pub fn sqlx_check<DB: sqlx::Database>(pool: sqlx::Pool<DB>) -> impl super::Check {
    move || {
        let pool = pool.clone();
        async move {
            use sqlx::Connection;
            let started = Instant::now();
            let mut conn = match pool.acquire().await {
                Ok(c) => c,
                Err(e) => return CheckResult::down(format!("acquire: {e}")),
            };
            match conn.ping().await {
                Ok(()) => CheckResult::up()
                    .observed(started.elapsed().as_secs_f64() * 1000.0, "ms")
                    .message(format!(
                        "pool: {} connections, {} idle",
                        pool.size(),
                        pool.num_idle()
                    )),
                Err(e) => CheckResult::down(format!("ping: {e}")),
            }
        }
    }
}

/// Liveness of the tokio runtime: a ticker task measures how late it wakes up. Down when it
/// has not ticked for `interval + max_lag` (a worker is blocked) or woke `max_lag` late.
/// Observed: the last lag in ms. The ticker starts with the check's first run (which runs on
/// the runtime being watched), so the check can be built anywhere.
pub fn runtime_check(interval: Duration, max_lag: Duration) -> impl super::Check {
    let epoch = Instant::now();
    let last_tick = Arc::new(AtomicU64::new(0));
    let last_lag = Arc::new(AtomicU64::new(0));
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start_ticker = {
        let (last_tick, last_lag) = (Arc::downgrade(&last_tick), Arc::downgrade(&last_lag));
        move || {
            tokio::spawn(async move {
                loop {
                    let before = Instant::now();
                    tokio::time::sleep(interval).await;
                    let (Some(t), Some(l)) = (last_tick.upgrade(), last_lag.upgrade()) else {
                        return;
                    };
                    let lag = before.elapsed().saturating_sub(interval);
                    l.store(lag.as_micros() as u64, Ordering::Relaxed);
                    t.store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
            });
        }
    };
    move || {
        let (last_tick, last_lag) = (last_tick.clone(), last_lag.clone());
        if !started.swap(true, Ordering::SeqCst) {
            last_tick.store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
            start_ticker.clone()();
        }
        async move {
            let now = epoch.elapsed().as_micros() as u64;
            let silent =
                Duration::from_micros(now.saturating_sub(last_tick.load(Ordering::Relaxed)));
            let lag = Duration::from_micros(last_lag.load(Ordering::Relaxed));
            let ms = lag.as_secs_f64() * 1000.0;
            if silent > interval + max_lag {
                CheckResult::down(format!(
                    "runtime stalled: no tick for {}ms",
                    silent.as_millis()
                ))
                .observed(silent.as_secs_f64() * 1000.0, "ms")
            } else if lag > max_lag {
                CheckResult::down(format!(
                    "scheduling lag {}ms over {}ms",
                    lag.as_millis(),
                    max_lag.as_millis()
                ))
                .observed(ms, "ms")
            } else {
                CheckResult::up().observed(ms, "ms")
            }
        }
    }
}

impl Health {
    /// A passive check fed by the breakers' event streams: `when_open` (Degraded by default:
    /// the service still answers, one dependency does not) while any breaker is open,
    /// forced-open or half-open, Up otherwise.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: it spawns one task per breaker to follow its events.
    pub fn watch_breakers(
        &self,
        reg: Registration,
        breakers: Vec<Breaker>,
        when_open: Status,
    ) -> PassiveHandle {
        let handle = self.register(reg);
        let evaluate = {
            let breakers = breakers.clone();
            move |h: &PassiveHandle| {
                let open: Vec<&str> = breakers
                    .iter()
                    .filter(|b| {
                        matches!(b.state(), State::Open | State::ForcedOpen | State::HalfOpen)
                    })
                    .map(Breaker::name)
                    .collect();
                if open.is_empty() {
                    h.set(CheckResult::up());
                } else {
                    h.set(
                        CheckResult::new(when_open).message(format!("open: {}", open.join(", "))),
                    );
                }
            }
        };
        evaluate(&handle);
        for b in &breakers {
            let mut events = b.subscribe();
            let (h, eval) = (handle.clone(), evaluate.clone());
            tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            eval(&h)
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        handle
    }
}
