//! What never reaches a log line or a span: sensitive headers and query values.

use http::HeaderName;

/// Headers never logged: `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`.
pub const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Query parameters whose values are replaced by `REDACTED` when queries are logged.
pub const SENSITIVE_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "refresh_token",
    "password",
    "secret",
    "api_key",
    "apikey",
    "sig",
    "signature",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "AWSAccessKeyId",
    "X-Goog-Signature",
];

/// The query with the values of `sensitive` parameters (case-insensitive names) replaced by
/// `REDACTED`; everything else kept as sent. A name in the bracketed form of nested and list
/// parameters counts by each of its parts: `user[password]`, `password[]` and `a[b][token]`
/// are redacted as `password` and `token` are.
pub fn redact_query(query: &str, sensitive: &[String]) -> String {
    query
        .split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = form_name(name);
            let listed = |part: &str| sensitive.iter().any(|s| s.eq_ignore_ascii_case(part));
            if !value.is_empty() && decoded.split(['[', ']']).any(listed) {
                format!("{name}=REDACTED")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A parameter name with `%XX` and `+` decoded, so `%74oken` cannot slip past `token`.
fn form_name(name: &str) -> String {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a header is one that must never be logged.
#[cfg_attr(not(feature = "log"), allow(dead_code))]
pub(crate) fn is_sensitive(name: &HeaderName, extra: &[HeaderName]) -> bool {
    SENSITIVE_HEADERS.contains(&name.as_str()) || extra.contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_values_are_redacted() {
        let s: Vec<String> = SENSITIVE_PARAMS.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            redact_query("a=1&token=abc&b=2", &s),
            "a=1&token=REDACTED&b=2"
        );
        assert_eq!(redact_query("Password=x", &s), "Password=REDACTED");
        assert_eq!(
            redact_query("%74oken=x&X-Amz-Signature=y", &s),
            "%74oken=REDACTED&X-Amz-Signature=REDACTED"
        );
        assert_eq!(redact_query("q=token", &s), "q=token");
        assert_eq!(redact_query("token", &s), "token");
        assert_eq!(redact_query("%zz=1&%=2&a%2=3", &s), "%zz=1&%=2&a%2=3");
        // Nested and list parameters (`qs`, `serde_qs`, Rails, PHP), brackets encoded or not.
        assert_eq!(
            redact_query("user[name]=ada&user[password]=x&password[]=y", &s),
            "user[name]=ada&user[password]=REDACTED&password[]=REDACTED"
        );
        assert_eq!(
            redact_query("a[b][Token]=x&user%5Bsecret%5D=y&tokens[x]=z", &s),
            "a[b][Token]=REDACTED&user%5Bsecret%5D=REDACTED&tokens[x]=z"
        );
    }
}
