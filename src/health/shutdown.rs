//! Graceful shutdown around `axum::serve`.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use super::registry::Health;

/// A flush step run at the end of shutdown (spans, logs, metrics pushes).
pub type FlushHook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Settings of [`serve_with_shutdown`].
pub struct ShutdownConfig {
    /// After the signal, readiness fails at once; the listener keeps serving this long so load
    /// balancers notice and stop sending (default 5 s).
    pub drain_delay: Duration,
    /// Then the listener closes and in-flight requests get this long to finish (default 30 s).
    pub grace: Duration,
    /// Run last, each bounded by `flush_timeout`.
    pub flush: Vec<FlushHook>,
    /// Bound of each flush hook (default 5 s).
    pub flush_timeout: Duration,
    /// Also give every request axum's `ConnectInfo<SocketAddr>` extension, for handlers or
    /// layers that extract it (a rate limiter keyed by the peer, say), as
    /// `into_make_service_with_connect_info` does. Default: no, as with
    /// `axum::serve(listener, router)`: the peer is kept per connection for towerscope and
    /// [`peer_addr`](crate::lifecycle::peer_addr), and the extension (430 instructions per
    /// request on the example server) is not made.
    pub connect_info: bool,
}

impl std::fmt::Debug for ShutdownConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownConfig")
            .field("drain_delay", &self.drain_delay)
            .field("grace", &self.grace)
            .field("flush", &self.flush.len())
            .field("connect_info", &self.connect_info)
            .finish()
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_delay: Duration::from_secs(5),
            grace: Duration::from_secs(30),
            flush: Vec::new(),
            flush_timeout: Duration::from_secs(5),
            connect_info: false,
        }
    }
}

/// Serves `app` until SIGTERM, SIGINT or [`Health::trigger_shutdown`], then: readiness turns
/// 503 at once (liveness stays 200), the drain delay lets load balancers stop sending, the
/// listener closes, in-flight requests finish (bounded by `grace`), the flush hooks run, and
/// this returns.
///
/// Each connection's peer address reaches towerscope's layers and handlers through
/// [`peer_addr`](crate::lifecycle::peer_addr) ([`WithPeer`](crate::lifecycle::WithPeer)); as
/// axum's `ConnectInfo` extension too with [`ShutdownConfig::connect_info`].
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    health: Health,
    cfg: ShutdownConfig,
) -> std::io::Result<()> {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_delay = cfg.drain_delay;
    let h = health.clone();
    let signal = async move {
        wait_for_signal(&h).await;
        h.drain();
        tracing::info!(
            drain_delay_ms = drain_delay.as_millis() as u64,
            "shutdown: draining"
        );
        tokio::time::sleep(drain_delay).await;
        tracing::info!("shutdown: closing the listener, waiting for in-flight requests");
        let _ = closed_tx.send(());
    };
    // Peer addresses for the request log's `client_ip` and the span's `client.address`, kept
    // per connection; the `ConnectInfo` extension per request only when asked for.
    use crate::lifecycle::WithPeer;
    let mut server: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> = if cfg.connect_info
    {
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let server = axum::serve(listener, WithPeer::new(app)).with_graceful_shutdown(signal);
        Box::pin(server.into_future())
    } else {
        let server = axum::serve(listener, WithPeer::new(app)).with_graceful_shutdown(signal);
        Box::pin(server.into_future())
    };
    tokio::select! {
        r = &mut server => r?,
        _ = async {
            let _ = closed_rx.await;
            tokio::time::sleep(cfg.grace).await;
        } => {
            tracing::warn!(grace_ms = cfg.grace.as_millis() as u64, "shutdown: in-flight requests did not finish within the grace period");
        }
    }
    for hook in cfg.flush {
        if tokio::time::timeout(cfg.flush_timeout, hook())
            .await
            .is_err()
        {
            tracing::warn!("shutdown: a flush hook timed out");
        }
    }
    tracing::info!("shutdown complete");
    Ok(())
}

async fn wait_for_signal(health: &Health) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => tracing::info!("shutdown: SIGTERM"),
            _ = tokio::signal::ctrl_c() => tracing::info!("shutdown: SIGINT"),
            _ = health.shutdown_requested() => tracing::info!("shutdown: requested"),
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("shutdown: ctrl-c"),
        _ = health.shutdown_requested() => tracing::info!("shutdown: requested"),
    }
}
