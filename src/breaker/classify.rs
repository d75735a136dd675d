//! What counts as a failure for a breaker.

use http::StatusCode;

use crate::lifecycle::Outcome;

/// The verdict on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The downstream answered as it should.
    Success,
    /// The downstream failed: counts towards opening.
    Failure,
    /// Neither: not recorded (e.g. a call the caller cancelled).
    Ignored,
}

/// Classifies a call's result.
pub trait Classify<Res, E> {
    /// The verdict.
    fn classify(&self, result: Result<&Res, &E>) -> CallOutcome;
}

/// The default for HTTP clients: the shared [`Outcome`] of the lifecycle (5xx are failures),
/// plus `429 Too Many Requests` (the downstream is overloaded); any error (transport, timeout)
/// is a failure; other 4xx are successes, since the downstream answered.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClassifier;

impl<B, E> Classify<http::Response<B>, E> for HttpClassifier {
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> CallOutcome {
        match result {
            Ok(res) => classify_status(res.status()),
            Err(_) => CallOutcome::Failure,
        }
    }
}

/// The HTTP verdict for a status.
pub fn classify_status(status: StatusCode) -> CallOutcome {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return CallOutcome::Failure;
    }
    match Outcome::from_status(status) {
        Outcome::ServerError(_) => CallOutcome::Failure,
        _ => CallOutcome::Success,
    }
}

/// For any service: errors are failures, responses are successes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAreFailures;

impl<Res, E> Classify<Res, E> for ErrorsAreFailures {
    fn classify(&self, result: Result<&Res, &E>) -> CallOutcome {
        match result {
            Ok(_) => CallOutcome::Success,
            Err(_) => CallOutcome::Failure,
        }
    }
}

impl<Res, E, F> Classify<Res, E> for F
where
    F: Fn(Result<&Res, &E>) -> CallOutcome,
{
    fn classify(&self, result: Result<&Res, &E>) -> CallOutcome {
        self(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_defaults() {
        for (status, want) in [
            (200, CallOutcome::Success),
            (404, CallOutcome::Success),
            (400, CallOutcome::Success),
            (429, CallOutcome::Failure),
            (500, CallOutcome::Failure),
            (503, CallOutcome::Failure),
        ] {
            let res = http::Response::builder().status(status).body(()).unwrap();
            let got = Classify::<_, ()>::classify(&HttpClassifier, Ok(&res));
            assert_eq!(got, want, "{status}");
        }
        let err: Result<&http::Response<()>, &&str> = Err(&"connect refused");
        assert_eq!(HttpClassifier.classify(err), CallOutcome::Failure);
    }
}
