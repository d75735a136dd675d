//! Request ids: kept from `x-request-id` when valid, otherwise a new UUID v7.

use std::cell::{Cell, RefCell};

use http::HeaderValue;

thread_local! {
    static RNG: RefCell<fastrand::Rng> = RefCell::new(fastrand::Rng::new());
    /// The last (milliseconds << 12 | counter) this thread handed out.
    static LAST: Cell<u64> = const { Cell::new(0) };
}

/// Unix milliseconds and a counter, strictly increasing on this thread: when the clock has not
/// moved (or went back), the counter goes up, spilling into the next millisecond after 4096
/// ids.
///
/// Per thread, not one atomic for the process: every worker wrote that one cache line for
/// every request (`request_id/generate_two_threads`: 112 ns per id with two threads, against
/// 59 ns on one). Ids of different threads are ordered by their millisecond and told apart by
/// their 62 random bits, as RFC 9562 has it for several generators.
fn next_ms_seq(unix: std::time::Duration) -> (u64, u64) {
    let now = unix.as_millis() as u64 & 0xffff_ffff_ffff;
    LAST.try_with(|last| {
        let next = (now << 12).max(last.get() + 1);
        last.set(next);
        next
    })
    // As the thread exits: the millisecond, a counter of 0 (the random bits tell it apart).
    .map_or((now, 0), |next| (next >> 12, next & 0xfff))
}

/// The request's id: set on the response header, available to handlers as an extractor, and
/// put on outgoing calls by the trace feature's client layers (`x-request-id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub(crate) HeaderValue);

impl RequestId {
    /// A new time-ordered, unique id: a UUID v7 (RFC 9562) whose 12-bit `rand_a` field is a
    /// counter within the millisecond (the RFC's method 1), kept per thread so each thread's ids
    /// are strictly increasing, and 62 random bits that keep ids of different threads apart.
    ///
    /// Written here rather than with `uuid::Uuid::now_v7` for cost: about a third of the
    /// instructions per request (its context locking and formatting dominated the request
    /// log's id handling under callgrind).
    pub fn generate() -> Self {
        Self::generate_at(crate::lifecycle::unix_now())
    }

    /// A new id as [`generate`](Self::generate) makes, for a request that started at `unix`
    /// (the time since the Unix epoch; the lifecycle read the clock once at the start).
    pub(crate) fn generate_at(unix: std::time::Duration) -> Self {
        let (ms, seq) = next_ms_seq(unix);
        let rand = RNG.with(|r| r.borrow_mut().u64(..));
        let hi: u64 = (ms << 16) | 0x7000 | seq;
        let lo: u64 = (rand >> 2) | 0x8000_0000_0000_0000;
        // The digits of each half sixteen at a time; dashes after the 8th, 12th, 16th and 20th
        // digit.
        let (h, l) = (
            crate::trace::hex_digits(hi.to_be_bytes()),
            crate::trace::hex_digits(lo.to_be_bytes()),
        );
        let mut out = [b'-'; 36];
        out[..8].copy_from_slice(&h[..8]);
        out[9..13].copy_from_slice(&h[8..12]);
        out[14..18].copy_from_slice(&h[12..]);
        out[19..23].copy_from_slice(&l[..4]);
        out[24..].copy_from_slice(&l[4..]);
        // Reference-counted from the start: the id goes on the request and on the response,
        // and the first clone of a copied (vector-backed) value would allocate again.
        Self(
            HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out))
                .expect("hex digits and dashes"),
        )
    }

    /// The incoming id when it is valid: 1 to 128 bytes of `[A-Za-z0-9._~:/+=@-]`.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        valid(value.as_bytes()).then(|| Self(value.clone()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only valid ids or UUIDs are ever stored: ASCII.
        std::str::from_utf8(self.0.as_bytes()).unwrap_or_default()
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
        // Behind the request log layer the header is always present and valid (an invalid one
        // was replaced); without the layer, a fresh id.
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .or_else(|| parts.headers.get("x-request-id").and_then(RequestId::parse))
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
        // A real UUID v7: the uuid crate parses it as version 7, RFC variant, with our time.
        let u = uuid::Uuid::parse_str(a.as_str()).unwrap();
        assert_eq!(
            u.hyphenated().to_string(),
            a.as_str(),
            "the canonical text form"
        );
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        // Every digit in its place: the uuid crate writes back the same text, id after id.
        for _ in 0..2000 {
            let id = RequestId::generate();
            let u = uuid::Uuid::parse_str(id.as_str()).unwrap();
            assert_eq!(u.hyphenated().to_string(), id.as_str());
            assert_eq!(u.get_version_num(), 7);
        }
        let (secs, _) = u.get_timestamp().unwrap().to_unix();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(secs) <= 1);
        // Strictly increasing on each thread, unique across threads.
        let ids: Vec<Vec<String>> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..5000)
                        .map(|_| RequestId::generate().to_string())
                        .collect()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        for v in &ids {
            assert!(v.windows(2).all(|w| w[0] < w[1]));
        }
        let all: std::collections::HashSet<_> = ids.iter().flatten().collect();
        assert_eq!(all.len(), 20_000);
    }
}
