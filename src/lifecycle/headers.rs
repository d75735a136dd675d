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
