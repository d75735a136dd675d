//! One definition of "failed", shared by metrics, logs, traces and the circuit breaker.

use std::any::Any;
use std::time::Duration;

use http::StatusCode;

/// How a request ended.
///
/// - a 5xx response is a [`Outcome::ServerError`] whose `error_type` is the status code;
/// - an `Err` from the inner service is a [`Outcome::ServerError`] whose `error_type` is a short
///   kind (`timeout`, `io`, `hyper`, … or `_OTHER`);
/// - a panic that unwinds through the layer counts as a 500 (put tower-http's `CatchPanicLayer`
///   inside the stack to also answer the client with a real 500);
/// - a 4xx response is a [`Outcome::ClientError`]: the server did its job;
/// - the client going away before the body was fully sent is [`Outcome::Cancelled`], never an
///   error;
/// - everything else is [`Outcome::Success`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 1xx, 2xx and 3xx responses, fully sent.
    Success,
    /// A 4xx response, fully sent.
    ClientError,
    /// A 5xx response, an error from the inner service, or a panic.
    ServerError(ErrorType),
    /// The response future or body was dropped before the end of the response.
    Cancelled,
}

impl Outcome {
    /// The outcome of a response with this status that was sent to the end.
    pub fn from_status(status: StatusCode) -> Self {
        if status.is_server_error() {
            Outcome::ServerError(ErrorType::Status(status))
        } else if status.is_client_error() {
            Outcome::ClientError
        } else {
            Outcome::Success
        }
    }

    /// The `error.type` value, for server errors only.
    pub fn error_type(&self) -> Option<ErrorType> {
        match self {
            Outcome::ServerError(e) => Some(*e),
            _ => None,
        }
    }

    /// `success`, `client_error`, `server_error` or `cancelled`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::ServerError(_) => "server_error",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// The low-cardinality `error.type` of a server error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// A 5xx status: the label is the code, e.g. `503`.
    Status(StatusCode),
    /// An error or a panic: a short, fixed kind such as `timeout` or `_OTHER`.
    Kind(&'static str),
}

impl ErrorType {
    /// The label value.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorType::Status(s) => s.as_str(),
            ErrorType::Kind(k) => k,
        }
    }

    /// The kind of an error returned by an inner service.
    ///
    /// Recognises, also behind a `BoxError`: tower's timeout (`timeout`), `std::io::Error`
    /// (`io`, or `timeout` for `TimedOut`), hyper's and axum's errors (`hyper`, `axum`).
    /// Anything else is `_OTHER`: the kind must stay in a small fixed set, so the error's
    /// message is never used.
    pub fn of_error<E: Any>(err: &E) -> Self {
        let any: &dyn Any = err;
        if let Some(boxed) = any.downcast_ref::<crate::BoxError>() {
            return Self::of_dyn_error(boxed.as_ref());
        }
        if let Some(io) = any.downcast_ref::<std::io::Error>() {
            return Self::of_io(io);
        }
        if any.is::<tower::timeout::error::Elapsed>() {
            return Self::Kind(TIMEOUT);
        }
        #[cfg(feature = "axum")]
        if any.is::<axum::Error>() {
            return Self::Kind("axum");
        }
        Self::Kind(OTHER)
    }

    fn of_dyn_error(err: &(dyn std::error::Error + 'static)) -> Self {
        // Walk the source chain: a timeout wrapped in a transport error is still a timeout.
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        #[cfg_attr(not(feature = "axum"), allow(unused_mut))]
        let mut first = None;
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return Self::of_io(io);
            }
            if e.is::<tower::timeout::error::Elapsed>() {
                return Self::Kind(TIMEOUT);
            }
            #[cfg(feature = "axum")]
            if e.is::<axum::Error>() {
                first = first.or(Some("axum"));
            }
            cur = e.source();
        }
        Self::Kind(first.unwrap_or(OTHER))
    }

    fn of_io(err: &std::io::Error) -> Self {
        match err.kind() {
            std::io::ErrorKind::TimedOut => Self::Kind(TIMEOUT),
            _ => Self::Kind("io"),
        }
    }
}

const TIMEOUT: &str = "timeout";
const OTHER: &str = "_OTHER";

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every observer learns when a request ends.
///
/// Made by the lifecycle only (it also carries the clock's end reading, for the features that
/// need the time), whatever features are on.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct End {
    /// How it ended.
    pub outcome: Outcome,
    /// The response status, when a response head was produced (also for cancelled requests
    /// whose body was dropped half-way).
    pub status: Option<StatusCode>,
    /// From the start of `call` to the end of the response body (or the drop).
    pub duration: Duration,
    /// Response body bytes that passed through the layer.
    pub response_bytes: u64,
    /// The request body's size, when an observer of the stack asked for it
    /// ([`Observer::wants_request_bytes`](super::Observer::wants_request_bytes)) and it is
    /// known: declared (`Content-Length`, or a body of exactly known size) or, for a body of
    /// unknown length, the bytes the service read (axum's `Body` only; `None` for other body
    /// types).
    pub request_bytes: Option<u64>,
    /// When it ended (the clock is read once, here).
    #[cfg(feature = "otel")]
    pub(crate) at: super::clock::Tick,
    /// The request's trace ids, when an observer of the stack made them (the server span):
    /// observers before it in a tuple learn them here (RED's exemplars).
    #[cfg(all(feature = "otel", feature = "prometheus"))]
    pub(crate) trace_ids: Option<crate::trace::TraceIds>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_by_status() {
        assert_eq!(Outcome::from_status(StatusCode::OK), Outcome::Success);
        assert_eq!(Outcome::from_status(StatusCode::FOUND), Outcome::Success);
        assert_eq!(
            Outcome::from_status(StatusCode::NOT_FOUND),
            Outcome::ClientError
        );
        let e = Outcome::from_status(StatusCode::BAD_GATEWAY);
        assert_eq!(e.error_type().unwrap().as_str(), "502");
        assert_eq!(e.as_str(), "server_error");
    }

    #[test]
    fn error_kinds_are_low_cardinality() {
        let timeout: crate::BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(ErrorType::of_error(&timeout).as_str(), "timeout");
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        assert_eq!(ErrorType::of_error(&io).as_str(), "timeout");
        let reset: crate::BoxError = Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "x",
        ));
        assert_eq!(ErrorType::of_error(&reset).as_str(), "io");
        let msg: crate::BoxError = "some unique message 1234".into();
        assert_eq!(ErrorType::of_error(&msg).as_str(), "_OTHER");
        assert_eq!(ErrorType::of_error(&"a string error").as_str(), "_OTHER");
    }
}
