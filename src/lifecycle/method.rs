//! The normalised request method: the nine methods of RFC 9110 and RFC 5789 as they are,
//! every other token as `_OTHER` (OpenTelemetry HTTP semantic conventions).

use http::Method;

/// A request method with bounded cardinality.
///
/// Extension methods (WebDAV's `PROPFIND`, random tokens sent by scanners) all map to
/// [`KnownMethod::Other`], so a label or span name built from it can take at most ten values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KnownMethod {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `CONNECT`
    Connect,
    /// `OPTIONS`
    Options,
    /// `TRACE`
    Trace,
    /// `PATCH`
    Patch,
    /// Any other method token, reported as `_OTHER`.
    Other,
}

impl KnownMethod {
    /// Every value, in a fixed order: `ALL[m.index()] == m`.
    pub const ALL: [KnownMethod; 10] = [
        KnownMethod::Get,
        KnownMethod::Head,
        KnownMethod::Post,
        KnownMethod::Put,
        KnownMethod::Delete,
        KnownMethod::Connect,
        KnownMethod::Options,
        KnownMethod::Trace,
        KnownMethod::Patch,
        KnownMethod::Other,
    ];

    /// Classifies a method. Comparison with the constants of [`http::Method`] is a tag check,
    /// so this costs a few instructions and never allocates.
    pub fn from_method(method: &Method) -> Self {
        match *method {
            Method::GET => Self::Get,
            Method::HEAD => Self::Head,
            Method::POST => Self::Post,
            Method::PUT => Self::Put,
            Method::DELETE => Self::Delete,
            Method::CONNECT => Self::Connect,
            Method::OPTIONS => Self::Options,
            Method::TRACE => Self::Trace,
            Method::PATCH => Self::Patch,
            _ => Self::Other,
        }
    }

    /// The label value: the method name, or `_OTHER`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
            Self::Other => "_OTHER",
        }
    }

    /// A dense index in `0..10`, for per-method tables.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for KnownMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_keep_their_name_and_others_fold() {
        for m in KnownMethod::ALL {
            assert_eq!(KnownMethod::ALL[m.index()], m);
            if m != KnownMethod::Other {
                let parsed = Method::from_bytes(m.as_str().as_bytes()).unwrap();
                assert_eq!(KnownMethod::from_method(&parsed), m);
            }
        }
        for token in ["PROPFIND", "get", "FOO", "X-Y"] {
            let parsed = Method::from_bytes(token.as_bytes()).unwrap();
            assert_eq!(KnownMethod::from_method(&parsed).as_str(), "_OTHER");
        }
    }
}
