//! The client's address, one definition for the request log (`client_ip`) and the server span
//! (`client.address`): the peer, or, behind proxies the application trusts, the first hop they
//! forwarded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::{HeaderMap, Request};

/// The peer's address: axum's `ConnectInfo<SocketAddr>` (served with
/// `into_make_service_with_connect_info`), or a `SocketAddr` extension (what a plain hyper
/// service can insert itself).
fn peer_ip<B>(req: &Request<B>) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    req.extensions().get::<SocketAddr>().map(SocketAddr::ip)
}

/// The client's address: with trusted proxies, the first hop of `Forwarded` or
/// `X-Forwarded-For` when it is an address, and then also the peer's (the proxy's, second);
/// otherwise (and by default) the peer's alone.
pub(crate) fn client_ip<B>(
    req: &Request<B>,
    trust_forwarded: bool,
) -> (Option<IpAddr>, Option<IpAddr>) {
    let peer = peer_ip(req);
    if trust_forwarded {
        if let Some(ip) = forwarded_for(req.headers()) {
            return (Some(ip), peer);
        }
    }
    (peer, None)
}

/// The first hop of `Forwarded` (RFC 7239 `for=`), else of `X-Forwarded-For`, when it is an
/// address (obfuscated identifiers and `unknown` are not).
fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    if let Some(v) = headers.get("forwarded").and_then(|v| v.to_str().ok()) {
        for part in v.split(',').next()?.split(';') {
            let (k, val) = part.trim().split_once('=')?;
            if k.trim().eq_ignore_ascii_case("for") {
                return hop(val.trim().trim_matches('"'));
            }
        }
    }
    let xff = headers.get("x-forwarded-for")?.to_str().ok()?;
    hop(xff.split(',').next()?)
}

/// An address with or without a port: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711` (proxies write all of these).
fn hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok());
        return port_ok.then(|| ip.parse().ok()).flatten();
    }
    let (ip, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn hops_with_and_without_ports() {
        assert_eq!(hop("203.0.113.7"), ip("203.0.113.7"));
        assert_eq!(hop(" 203.0.113.7:4711 "), ip("203.0.113.7"));
        assert_eq!(hop("2001:db8::1"), ip("2001:db8::1"));
        assert_eq!(hop("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(hop("[2001:db8::1]:4711"), ip("2001:db8::1"));
        for bad in [
            "",
            "unknown",
            "_hidden",
            "203.0.113.7:port",
            "203.0.113.7:70000",
            "[2001:db8::1]x",
            "[2001:db8::1",
            "host.example:80",
        ] {
            assert_eq!(hop(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.7, 10.0.0.1".parse().unwrap());
        assert_eq!(forwarded_for(&h), ip("203.0.113.7"));
        h.insert("x-forwarded-for", "203.0.113.8:50123".parse().unwrap());
        assert_eq!(forwarded_for(&h), ip("203.0.113.8"));
        // `Forwarded` first, when present.
        h.insert(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.1"
                .parse()
                .unwrap(),
        );
        assert_eq!(forwarded_for(&h), ip("2001:db8::1"));
        h.insert("forwarded", "proto=http;For=192.0.2.60".parse().unwrap());
        assert_eq!(forwarded_for(&h), ip("192.0.2.60"));
        h.insert("forwarded", "for=unknown".parse().unwrap());
        assert_eq!(forwarded_for(&h), None);

        let peer: SocketAddr = "192.0.2.1:50000".parse().unwrap();
        let mut req = Request::get("/")
            .header("x-forwarded-for", "203.0.113.7")
            .body(())
            .unwrap();
        assert_eq!(client_ip(&req, false), (None, None), "untrusted by default");
        assert_eq!(client_ip(&req, true), (ip("203.0.113.7"), None));
        req.extensions_mut().insert(peer);
        assert_eq!(client_ip(&req, false), (ip("192.0.2.1"), None), "the peer");
        assert_eq!(
            client_ip(&req, true),
            (ip("203.0.113.7"), ip("192.0.2.1")),
            "the forwarded client, then the proxy"
        );
        req.headers_mut()
            .insert("x-forwarded-for", "unknown".parse().unwrap());
        assert_eq!(
            client_ip(&req, true),
            (ip("192.0.2.1"), None),
            "not an address"
        );
    }
}
