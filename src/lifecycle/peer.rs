//! The connection's peer address, known to the layers of every request on that connection
//! without a per-request extension.
//!
//! axum's `into_make_service_with_connect_info` inserts a `ConnectInfo` extension into every
//! request: a boxed value, and (as the fourth extension axum and hyper put there) a regrown
//! extension map. On the example server that cost 430 instructions per request, 2.5% of a
//! bare request, for an address that is the same for every request of the connection.
//! [`WithPeer`] (for `axum::serve`) and [`PeerService`] (for any accept loop) keep it with the
//! connection instead: it is current on the thread while the request's future is polled, as
//! the request log's context is, and [`peer_addr`] reads it there (towerscope's `client_ip`
//! and `client.address`, and handlers).

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Request;
use tower_service::Service;

thread_local! {
    static PEER: Cell<Option<SocketAddr>> = const { Cell::new(None) };
}

/// The peer address of the connection whose request is being served on this thread: set by
/// [`PeerService`] while it calls and polls the service for a request (handlers included; work
/// spawned onto other tasks does not see it). `None` elsewhere.
///
/// It is the connection's, so it comes before a request's own `ConnectInfo` or `SocketAddr`
/// extension in towerscope's `client_ip`, and a request a handler serves in process (calling
/// another router directly) sees the address of the connection that handler serves.
pub fn peer_addr() -> Option<SocketAddr> {
    PEER.try_with(Cell::get).ok().flatten()
}

/// Makes `peer` current until dropped, then restores what was (nested services, a panic).
struct Current(Option<SocketAddr>);

impl Current {
    #[inline]
    fn enter(peer: SocketAddr) -> Self {
        Self(PEER.try_with(|p| p.replace(Some(peer))).ok().flatten())
    }
}

impl Drop for Current {
    #[inline]
    fn drop(&mut self) {
        let _ = PEER.try_with(|p| p.set(self.0));
    }
}

/// A connection's service: `inner` with the connection's peer address current while it is
/// called and its response future polled. Make one per accepted connection in a hyper accept
/// loop; with `axum::serve`, [`WithPeer`] does.
#[derive(Clone, Debug)]
pub struct PeerService<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S> PeerService<S> {
    /// `inner` serving the connection from `peer`.
    pub fn new(inner: S, peer: SocketAddr) -> Self {
        Self { inner, peer }
    }
}

impl<S, B> Service<Request<B>> for PeerService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = PeerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Services that do their work in `call` see it too.
        let _current = Current::enter(self.peer);
        PeerFuture {
            inner: self.inner.call(req),
            peer: self.peer,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`PeerService`].
    pub struct PeerFuture<F> {
        #[pin]
        inner: F,
        peer: SocketAddr,
    }
}

impl<F: Future> Future for PeerFuture<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _current = Current::enter(*this.peer);
        this.inner.poll(cx)
    }
}

/// `axum::serve`'s make-service for `app` that gives every connection a [`PeerService`]: the
/// peer's address reaches towerscope's layers (the request log's `client_ip`, the server
/// span's `client.address`) and [`peer_addr`] without axum's per-request `ConnectInfo`
/// extension. `app` is a `Router` (or any make-service `axum::serve` takes: the router's own
/// per-connection preparation is kept). Handlers that extract `ConnectInfo` need
/// `into_make_service_with_connect_info` instead (towerscope reads that too).
///
/// ```no_run
/// # async fn demo(app: axum::Router) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, towerscope::lifecycle::WithPeer::new(app)).await
/// # }
/// ```
#[cfg(feature = "axum")]
#[derive(Clone, Debug)]
pub struct WithPeer<M>(M);

#[cfg(feature = "axum")]
impl<M> WithPeer<M> {
    /// The make-service for `app`.
    pub fn new(app: M) -> Self {
        Self(app)
    }
}

#[cfg(feature = "axum")]
impl<'a, M, L> Service<axum::serve::IncomingStream<'a, L>> for WithPeer<M>
where
    M: Service<axum::serve::IncomingStream<'a, L>>,
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    type Response = PeerService<M::Response>;
    type Error = M::Error;
    type Future = WithPeerFuture<M::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, stream: axum::serve::IncomingStream<'a, L>) -> Self::Future {
        let peer = *stream.remote_addr();
        WithPeerFuture {
            inner: self.0.call(stream),
            peer,
        }
    }
}

#[cfg(feature = "axum")]
pin_project_lite::pin_project! {
    /// The future of [`WithPeer`]: the connection's service, with its peer.
    pub struct WithPeerFuture<F> {
        #[pin]
        inner: F,
        peer: SocketAddr,
    }
}

#[cfg(feature = "axum")]
impl<F, S, E> Future for WithPeerFuture<F>
where
    F: Future<Output = Result<S, E>>,
{
    type Output = Result<PeerService<S>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let peer = *this.peer;
        this.inner
            .poll(cx)
            .map(|r| r.map(|inner| PeerService::new(inner, peer)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn current_while_called_and_polled_and_only_then() {
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "[2001:db8::2]:2000".parse().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let inner = tower::service_fn(move |_: Request<()>| {
            log.lock().unwrap().push(("call", peer_addr()));
            let log = log.clone();
            async move {
                tokio::task::yield_now().await;
                log.lock().unwrap().push(("poll", peer_addr()));
                // Nested: the inner connection's peer, then the outer one's again.
                let nested = PeerService::new(
                    tower::service_fn(|_: Request<()>| async { Ok::<_, ()>(peer_addr()) }),
                    b,
                );
                let got = tower::ServiceExt::oneshot(nested, Request::new(())).await;
                log.lock().unwrap().push(("nested", got.unwrap()));
                log.lock().unwrap().push(("after", peer_addr()));
                Ok::<_, ()>(())
            }
        });
        assert_eq!(peer_addr(), None);
        let fut = tower::ServiceExt::oneshot(PeerService::new(inner, a), Request::new(()));
        assert_eq!(peer_addr(), None, "nothing current before the first poll");
        fut.await.unwrap();
        assert_eq!(peer_addr(), None, "restored after the request");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ("call", Some(a)),
                ("poll", Some(a)),
                ("nested", Some(b)),
                ("after", Some(a))
            ]
        );
    }
}
