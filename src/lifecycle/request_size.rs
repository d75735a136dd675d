//! The request body's size, for observers that report it
//! ([`Observer::wants_request_bytes`](super::Observer::wants_request_bytes)): declared up front
//! when the request says it, otherwise counted as the service reads the body.

#[cfg(feature = "axum")]
use std::pin::Pin;
#[cfg(feature = "axum")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "axum")]
use std::sync::Arc;
#[cfg(feature = "axum")]
use std::task::{Context, Poll};

use http::Request;
#[cfg(feature = "axum")]
use http_body::{Body, Frame, SizeHint};

/// How the lifecycle learns a request's body size.
#[derive(Debug, Default)]
pub(crate) enum RequestSize {
    /// Not asked for, or neither declared nor countable (a body of unknown length whose type
    /// the lifecycle cannot wrap).
    #[default]
    Unknown,
    /// `Content-Length`, or a body whose size is known exactly (no body at all: 0).
    Declared(u64),
    /// The bytes the service has read so far, counted by the body it was handed.
    #[cfg(feature = "axum")]
    Counted(Arc<AtomicU64>),
}

impl RequestSize {
    /// How the request declares its size, by body type:
    /// - axum's `Body` and hyper's `Incoming`: their exact size hint (hyper takes it from
    ///   `Content-Length`, and it is 0 without a body), no header looked up. When it is not
    ///   exact (chunked HTTP/1, HTTP/2 without `Content-Length`), axum's `Body` is swapped for
    ///   one that counts what the service reads (one allocation for the counter and one for
    ///   axum's box, only for such requests); `Incoming`, which the service takes as it is,
    ///   has no size.
    /// - Any other body: its `Content-Length` header, or no size.
    pub(crate) fn measure<B: 'static>(req: &mut Request<B>) -> Self {
        #[cfg(feature = "axum")]
        if let Some(body) =
            (req.body_mut() as &mut dyn std::any::Any).downcast_mut::<axum::body::Body>()
        {
            if let Some(n) = body.size_hint().exact() {
                return Self::Declared(n);
            }
            let read = Arc::new(AtomicU64::new(0));
            let inner = std::mem::take(body);
            *body = axum::body::Body::new(CountingBody {
                inner,
                read: read.clone(),
            });
            return Self::Counted(read);
        }
        // hyper's own body (a plain hyper service): its exact size hint, from `Content-Length`
        // or 0 without a body. A body of unknown length cannot be swapped for a counting one
        // here (the service takes `Incoming` itself): it has no size.
        #[cfg(feature = "hyper")]
        if let Some(body) =
            (req.body() as &dyn std::any::Any).downcast_ref::<hyper::body::Incoming>()
        {
            return match hyper::body::Body::size_hint(body).exact() {
                Some(n) => Self::Declared(n),
                None => Self::Unknown,
            };
        }
        match super::content_length(req) {
            Some(n) => Self::Declared(n),
            None => Self::Unknown,
        }
    }

    /// The size to report when the request ends.
    pub(crate) fn bytes(&self) -> Option<u64> {
        match self {
            Self::Unknown => None,
            Self::Declared(n) => Some(*n),
            #[cfg(feature = "axum")]
            Self::Counted(read) => Some(read.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(feature = "axum")]
pin_project_lite::pin_project! {
    /// A request body that counts the data bytes read through it.
    struct CountingBody<B> {
        #[pin]
        inner: B,
        read: Arc<AtomicU64>,
    }
}

#[cfg(feature = "axum")]
impl<B: Body> Body for CountingBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let poll = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll {
            this.read
                .fetch_add(super::service::data_bytes(frame), Ordering::Relaxed);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(all(test, feature = "axum"))]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn declared_exact_or_counted() {
        let mut req = Request::post("/")
            .header("content-length", "5")
            .body(axum::body::Body::from("hello"))
            .unwrap();
        assert_eq!(RequestSize::measure(&mut req).bytes(), Some(5));

        // No header, but a body of known size (no body at all, as hyper reports it: 0).
        let mut req = Request::get("/").body(axum::body::Body::empty()).unwrap();
        assert_eq!(RequestSize::measure(&mut req).bytes(), Some(0));

        // Unknown length (a stream): counted as read, and passed through unchanged.
        let chunks: Vec<Result<_, std::io::Error>> = vec![
            Ok(bytes::Bytes::from_static(b"abc")),
            Ok(bytes::Bytes::from_static(b"defgh")),
        ];
        let stream = axum::body::Body::from_stream(ready_stream(chunks));
        let mut req = Request::post("/").body(stream).unwrap();
        let size = RequestSize::measure(&mut req);
        assert!(matches!(size, RequestSize::Counted(_)));
        assert_eq!(size.bytes(), Some(0), "nothing read yet");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"abcdefgh");
        assert_eq!(size.bytes(), Some(8));

        // A body type the lifecycle cannot wrap: its `Content-Length`, or unknown.
        let mut req = Request::post("/")
            .header("content-length", "3")
            .body(String::from("xyz"))
            .unwrap();
        assert_eq!(RequestSize::measure(&mut req).bytes(), Some(3));
        let mut req = Request::post("/").body(String::from("xyz")).unwrap();
        assert_eq!(RequestSize::measure(&mut req).bytes(), None);
    }

    /// A stream of ready items (no `futures` dependency for one test).
    fn ready_stream<T: Send + Unpin + 'static>(
        items: Vec<T>,
    ) -> impl futures_core::Stream<Item = T> + Send {
        struct Iter<I>(I);
        impl<I: Iterator + Unpin> futures_core::Stream for Iter<I> {
            type Item = I::Item;
            fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
                Poll::Ready(self.0.next())
            }
        }
        Iter(items.into_iter())
    }
}
