//! The rejection error.

use std::sync::Arc;
use std::time::Duration;

use super::State;

/// A call rejected by an open breaker, without reaching the inner service.
///
/// Downcast it from the service's `BoxError`; with the `axum` feature it is also an
/// `IntoResponse`: `503 Service Unavailable` with `Retry-After`.
#[derive(Debug, Clone)]
pub struct BreakerOpen {
    pub(crate) name: Arc<str>,
    pub(crate) state: State,
    pub(crate) retry_after: Duration,
}

impl BreakerOpen {
    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state that rejected the call (open, half-open with every probe taken, forced open).
    pub fn state(&self) -> State {
        self.state
    }

    /// When a call may be admitted again (an estimate in half-open and forced open).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let s = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        s.max(1)
    }
}

impl std::fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "circuit breaker `{}` is {}: retry after {:.1}s",
            self.name,
            self.state.as_str(),
            self.retry_after.as_secs_f64()
        )
    }
}

impl std::error::Error for BreakerOpen {}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for BreakerOpen {
    fn into_response(self) -> axum::response::Response {
        let mut res = (http::StatusCode::SERVICE_UNAVAILABLE, format!("{self}\n")).into_response();
        res.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(self.retry_after_secs()),
        );
        res
    }
}
