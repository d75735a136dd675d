//! Request ids: kept from `x-request-id` when valid, otherwise a new UUID v7.

use http::HeaderValue;

/// The request's id: set on the response header, available to handlers as an extractor, and
/// put on outgoing calls made through towerscope's client layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub(crate) HeaderValue);

impl RequestId {
    /// A new time-ordered, unique id (UUID v7).
    pub fn generate() -> Self {
        let mut buf = [0u8; 36];
        let s = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
        Self(HeaderValue::from_str(s).expect("a UUID is a valid header value"))
    }

    /// The incoming id when it is valid: 1 to 128 bytes of `[A-Za-z0-9._~:/+=@-]`.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        valid(value.as_bytes()).then(|| Self(value.clone()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only valid ids or UUIDs are ever stored: ASCII.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether bytes are an acceptable request id.
pub(crate) fn valid(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 128
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'.' | b'_' | b'~' | b':' | b'/' | b'+' | b'=' | b'@' | b'-'
                )
        })
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance() {
        for ok in ["a", "req-1", "0f8c:1/2+3=4@x~y_z.w", &"x".repeat(128)] {
            assert!(valid(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            " ",
            "a b",
            "a\"b",
            "a\nb",
            "ü",
            &"x".repeat(129),
            "{x}",
            "a;b",
        ] {
            assert!(!valid(bad.as_bytes()), "{bad:?}");
        }
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 36);
        assert!(a.as_str() < b.as_str(), "UUID v7 ids are time-ordered");
    }
}
