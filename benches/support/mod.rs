//! Shared by the benches: drive futures and bodies that never wait, on the bench thread.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

/// Polls a future that never waits to completion.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Reads a body that never waits to its end.
#[allow(dead_code)] // not every bench reads bodies
pub fn drain<B: http_body::Body + Unpin>(mut body: B) {
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(_)) => {}
            Poll::Ready(None) => return,
            Poll::Pending => {}
        }
        if body.is_end_stream() {
            return;
        }
    }
}
