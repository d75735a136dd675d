//! Finding a few request headers in one pass: observers that read several headers per request
//! (the request log, the trace propagators) use this instead of a hashed lookup per name.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Up to this many headers, one pass over them costs less than hashing every name looked up
/// (callgrind); past it, callers look the names up.
const SCAN_UP_TO: usize = 16;

/// What the pass found for one name.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Found<'a> {
    /// The first value, the one `HeaderMap::get` gives.
    pub(crate) first: Option<&'a HeaderValue>,
    /// The name came more than once.
    pub(crate) repeated: bool,
}

/// One pass over `headers` for `names`; `None` when there are too many headers for a pass to
/// pay (the caller then looks the names up).
#[inline(always)]
pub(crate) fn scan<'a, const N: usize>(
    headers: &'a HeaderMap,
    names: [&HeaderName; N],
) -> Option<[Found<'a>; N]> {
    if headers.keys_len() > SCAN_UP_TO {
        return None;
    }
    let mut found = [Found::default(); N];
    // `iter` yields every value, repeated names included.
    for (name, value) in headers {
        for (f, wanted) in found.iter_mut().zip(names) {
            if name == wanted {
                f.repeated |= f.first.is_some();
                f.first.get_or_insert(value);
            }
        }
    }
    Some(found)
}

/// The elements of every `name` header (`Accept`, `Accept-Encoding`) with their weights (RFC
/// 9110 §12.4.2): `q` from 0 to 1, 1 when absent. Elements with a malformed weight are left
/// out, as are empty ones; the element is what precedes its first `;`, trimmed.
#[cfg(any(feature = "prometheus", feature = "health"))]
pub(crate) fn weighed<'a>(
    headers: &'a HeaderMap,
    name: http::header::HeaderName,
) -> impl Iterator<Item = (&'a str, f32)> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            let mut parts = element.split(';');
            let item = parts.next().unwrap_or_default().trim();
            let mut weight = Some(1.0);
            for param in parts {
                if let Some((k, v)) = param.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        weight = v
                            .trim()
                            .parse::<f32>()
                            .ok()
                            .filter(|q| (0.0..=1.0).contains(q));
                    }
                }
            }
            Some((item, weight?)).filter(|(item, _)| !item.is_empty())
        })
}

/// Whether `Accept` weighs an `application/…` answer of one of `subtypes` above the
/// `text/plain` one, each by its most specific matching range (RFC 9110 §12.5.1: the subtype,
/// else `application/*` or `text/*`, else `*/*`). On a tie the application answer wins only
/// when it is named (`application/json, */*`), so `*/*` alone (curl, the kubelet) and no
/// `Accept` get text, as does a header that accepts neither.
#[cfg(any(feature = "prometheus", feature = "health"))]
pub(crate) fn prefers_over_text(headers: &HeaderMap, subtypes: &[&str]) -> bool {
    let [mut named, mut app_any, mut text, mut text_any, mut any] = [None::<f32>; 5];
    for (range, q) in weighed(headers, http::header::ACCEPT) {
        let (kind, sub) = range.split_once('/').unwrap_or((range, ""));
        let (kind, sub) = (kind.trim(), sub.trim());
        let (app, txt) = (
            kind.eq_ignore_ascii_case("application"),
            kind.eq_ignore_ascii_case("text"),
        );
        let slot = match () {
            _ if app && subtypes.iter().any(|s| sub.eq_ignore_ascii_case(s)) => &mut named,
            _ if app && sub == "*" => &mut app_any,
            _ if txt && sub.eq_ignore_ascii_case("plain") => &mut text,
            _ if txt && sub == "*" => &mut text_any,
            _ if kind == "*" && sub == "*" => &mut any,
            _ => continue,
        };
        // Named twice: the higher weight.
        *slot = Some(slot.map_or(q, |w| w.max(q)));
    }
    let a = named.or(app_any).or(any).unwrap_or(0.0);
    let t = text.or(text_any).or(any).unwrap_or(0.0);
    a > t || (a == t && a > 0.0 && named.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pass_finds_what_get_finds_and_counts_repeats() {
        let (a, b) = (
            HeaderName::from_static("x-a"),
            HeaderName::from_static("user-agent"),
        );
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("x"));
        let [fa, fb] = scan(&h, [&a, &b]).unwrap();
        assert!(fa.first.is_none() && !fa.repeated && fb.first.is_none());
        h.append(&a, HeaderValue::from_static("1"));
        h.append(&a, HeaderValue::from_static("2"));
        h.append(&b, HeaderValue::from_static("ua"));
        let [fa, fb] = scan(&h, [&a, &b]).unwrap();
        assert_eq!(fa.first, h.get(&a));
        assert!(fa.repeated);
        assert_eq!(fb.first.unwrap(), "ua");
        assert!(!fb.repeated);
        // The same name twice: both slots see it.
        let [x, y] = scan(&h, [&b, &b]).unwrap();
        assert_eq!((x.first, y.first), (h.get(&b), h.get(&b)));
        for i in 0..SCAN_UP_TO {
            h.insert(
                HeaderName::try_from(format!("x-{i}")).unwrap(),
                "v".parse().unwrap(),
            );
        }
        assert!(scan(&h, [&a]).is_none(), "too many headers for a pass");
    }
}
