//! The client's address, one definition for the request log (`client_ip`) and the server span
//! (`client.address`): the peer, or, behind proxies the application trusts, the hop they
//! forwarded; and, from the same hop, the scheme and host the client asked for (the server
//! span's `url.scheme` and `server.address`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::Arc;

use ipnet::IpNet;

use http::header::{GetAll, FORWARDED};
use http::{HeaderMap, HeaderValue, Request};

/// The header the application's proxies write the client's address into
/// ([`RequestLogBuilder::proxy_header`](crate::log::RequestLogBuilder::proxy_header),
/// [`TraceConfig::proxy_header`](crate::trace::TraceConfig::proxy_header)). Counted hops and
/// trusted networks read only this one: the other header reaches the service as the client
/// sent it, so reading it would let a client name its own address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyHeader {
    /// `X-Forwarded-For` (nginx, HAProxy, Envoy, cloud load balancers): the default.
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239), its `for=` parameters.
    Forwarded,
}

/// Which proxies the application trusts with the client's address, and the header they write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ForwardedTrust {
    proxies: Proxies,
    /// Set by the application; unset, counted hops and networks read `X-Forwarded-For`, and
    /// trusting every proxy reads `Forwarded`, else `X-Forwarded-For`.
    header: Option<ProxyHeader>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Proxies {
    /// None: the client is the peer (the default).
    #[default]
    None,
    /// Every proxy the request passed: the client is the first (leftmost) forwarded hop. A
    /// client can write that hop itself unless the outermost proxy replaces the header.
    All,
    /// The `n` proxies nearest the service, the peer being the first: the client is the hop
    /// the outermost of them appended, the `n`-th from the right (the leftmost when there are
    /// fewer), so hops a client wrote in front of it are not believed.
    Hops(NonZeroUsize),
    /// Proxies at these addresses: when the peer is one, the client is the hop nearest the
    /// service that is not (walking from the right; the leftmost when all are), whatever the
    /// number of proxies a request passed.
    Networks(Arc<[IpNet]>),
}

impl ForwardedTrust {
    /// `trust_forwarded_headers(trust)`.
    pub(crate) fn trust_all(&mut self, trust: bool) {
        self.proxies = if trust { Proxies::All } else { Proxies::None };
    }

    /// `trusted_proxy_hops(n)`; 0 trusts none.
    pub(crate) fn trust_hops(&mut self, n: usize) {
        self.proxies = NonZeroUsize::new(n).map_or(Proxies::None, Proxies::Hops);
    }

    /// `trusted_proxies(networks)`: addresses (`10.0.0.7`, `2001:db8::1`) or CIDR networks
    /// (`10.0.0.0/8`, `2001:db8::/32`); none trusts none.
    ///
    /// # Panics
    ///
    /// When one is neither (a configuration error, found at start-up).
    pub(crate) fn trust_networks<I, S>(&mut self, networks: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets: Arc<[IpNet]> = networks
            .into_iter()
            .map(|s| {
                let s = s.as_ref().trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .unwrap_or_else(|_| {
                        panic!("trusted proxy {s:?}: neither an address nor a CIDR network")
                    })
            })
            .collect();
        self.proxies = if nets.is_empty() {
            Proxies::None
        } else {
            Proxies::Networks(nets)
        };
    }

    /// `proxy_header(header)`, whichever proxies are trusted.
    pub(crate) fn set_header(&mut self, header: ProxyHeader) {
        self.header = Some(header);
    }

    /// Whether the client's address comes from `Forwarded` (else `X-Forwarded-For`).
    fn reads_forwarded(&self, headers: &HeaderMap) -> bool {
        match (self.header, &self.proxies) {
            (Some(h), _) => h == ProxyHeader::Forwarded,
            (None, Proxies::All) => headers.contains_key(FORWARDED),
            (None, _) => false,
        }
    }
}

/// Whether one of the networks holds the address (an IPv4-mapped IPv6 address, as a
/// dual-stack listener reports IPv4 peers, as the IPv4 address it is).
fn trusted(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

/// The peer's address: the connection's under [`PeerService`](super::PeerService) (served
/// with `WithPeer`), axum's `ConnectInfo<SocketAddr>` (served with
/// `into_make_service_with_connect_info`), or a `SocketAddr` extension (what a plain hyper
/// service can insert itself).
fn peer_ip<B>(req: &Request<B>) -> Option<IpAddr> {
    // The connection's, current on this thread (`PeerService`): no extension lookup.
    if let Some(addr) = super::peer_addr() {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    req.extensions().get::<SocketAddr>().map(SocketAddr::ip)
}

/// The client's address: with trusted proxies, the forwarded hop `trust` names when it is an
/// address, and then also the peer's (the proxy's, second); otherwise (and by default) the
/// peer's alone.
#[cfg_attr(not(feature = "log"), allow(dead_code))]
pub(crate) fn client_ip<B>(
    req: &Request<B>,
    trust: &ForwardedTrust,
) -> (Option<IpAddr>, Option<IpAddr>) {
    let (client, peer, _) = client_hop(req, trust);
    (client, peer)
}

/// What the trusted proxies say the client asked for: the scheme and the host (with its port)
/// of the request they received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Origin<'a> {
    /// `https` (true) or `http` (false).
    pub(crate) https: Option<bool>,
    /// `host` or `host:port`, as the proxy received it.
    pub(crate) host: Option<&'a str>,
}

/// [`client_ip`], and the [`Origin`] from the same hop: the `proto` and `host` parameters of its
/// `Forwarded` element, or the values of `X-Forwarded-Proto` and `X-Forwarded-Host` at its
/// place in `X-Forwarded-For` counted from the right (the leftmost when they are shorter: a
/// proxy that sets them rather than appending to them). Nothing when no forwarded client is
/// believed: what the proxies say of the request counts only where what they say of the client
/// does.
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
pub(crate) fn client_and_origin<'a, B>(
    req: &'a Request<B>,
    trust: &ForwardedTrust,
) -> (Option<IpAddr>, Option<IpAddr>, Origin<'a>) {
    let (client, peer, hop) = client_hop(req, trust);
    let origin = hop.map_or_else(Origin::default, |hop| origin(req.headers(), &hop));
    (client, peer, origin)
}

/// The client, the peer when the client is forwarded, and the hop the client came from.
fn client_hop<'a, B>(
    req: &'a Request<B>,
    trust: &ForwardedTrust,
) -> (Option<IpAddr>, Option<IpAddr>, Option<Hop<'a>>) {
    let peer = peer_ip(req);
    let consult = match &trust.proxies {
        Proxies::None => false,
        // Only a trusted peer's headers; without a peer, none can be told apart.
        Proxies::Networks(nets) => peer.is_some_and(|p| trusted(nets, p)),
        Proxies::All | Proxies::Hops(_) => true,
    };
    if consult {
        if let Some(hop) = forwarded_for(req.headers(), trust) {
            return (Some(hop.ip), peer, Some(hop));
        }
    }
    (peer, None, None)
}

/// The trusted hop: its address, and where the rest of what the proxy said is.
struct Hop<'a> {
    ip: IpAddr,
    /// Its `Forwarded` element, when the proxies write `Forwarded`.
    element: Option<&'a str>,
    /// Its place in `X-Forwarded-For`, 1 for the rightmost (`usize::MAX`: the leftmost).
    from_right: usize,
}

/// The trusted hop of `Forwarded` (RFC 7239 `for=`) or `X-Forwarded-For`, whichever `trust`
/// reads, when it is an address (obfuscated identifiers and `unknown` are not). Several lines
/// of a header are one list, in order (RFC 9110 section 5.3).
fn forwarded_for<'a>(headers: &'a HeaderMap, trust: &ForwardedTrust) -> Option<Hop<'a>> {
    let forwarded = trust.reads_forwarded(headers);
    let lines = if forwarded {
        headers.get_all(FORWARDED)
    } else {
        headers.get_all("x-forwarded-for")
    };
    let hop_at = |e: &'a str, from_right| {
        Some(Hop {
            ip: hop(if forwarded { for_param(e)? } else { e })?,
            element: forwarded.then_some(e),
            from_right,
        })
    };
    match &trust.proxies {
        Proxies::None => None,
        Proxies::All => {
            for v in lines {
                if let Some(e) = elements(v)?.next() {
                    return hop_at(e, usize::MAX);
                }
            }
            None
        }
        Proxies::Hops(n) => {
            let mut seen = 0;
            let (e, at) = from_right(lines, |e| {
                seen += 1;
                Some(((e, seen), seen == n.get()))
            })?;
            hop_at(e, at)
        }
        // Past the trusted proxies to the first hop that is not one. A hop that is not an
        // address ends the walk with no client (the peer stands).
        Proxies::Networks(nets) => {
            let mut seen = 0;
            from_right(lines, |e| {
                seen += 1;
                let hop = hop_at(e, seen)?;
                let stop = !trusted(nets, hop.ip);
                Some((hop, stop))
            })
        }
    }
}

/// The scheme and host the trusted hop's proxy received (see [`client_and_origin`]). A scheme
/// other than `http` or `https`, or a host that is not a host name or address with an optional
/// port, is left out.
fn origin<'a>(headers: &'a HeaderMap, hop: &Hop<'a>) -> Origin<'a> {
    let (proto, host) = match hop.element {
        Some(element) => (param(element, "proto"), param(element, "host")),
        None => {
            let at = |name| {
                let mut seen = 0;
                from_right(headers.get_all(name), |e| {
                    seen += 1;
                    Some((e, seen == hop.from_right))
                })
            };
            (at("x-forwarded-proto"), at("x-forwarded-host"))
        }
    };
    Origin {
        https: proto.and_then(|p| {
            if p.eq_ignore_ascii_case("https") {
                Some(true)
            } else if p.eq_ignore_ascii_case("http") {
                Some(false)
            } else {
                None
            }
        }),
        host: host.filter(|h| host_and_port(h)),
    }
}

/// Whether a forwarded host is a host name or address with an optional port: an authority
/// without userinfo whose port, when it has one, is a number (`example.com:` is not).
fn host_and_port(h: &str) -> bool {
    !h.contains('@') && h.parse::<http::uri::Authority>().is_ok() && host_port(h).is_some()
}

/// `server.address` and `server.port` of an authority (`host`, `host:port`, `[v6]:port`,
/// with any userinfo skipped); `None` when the port is not a number, or something other than a
/// port follows a bracketed address.
pub(crate) fn host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    // One backward scan for the last ':' and the userinfo's '@' (authorities are a few bytes:
    // `rsplit_once` twice was two `memrchr` calls, ~20 ns per traced request).
    let bytes = authority.as_bytes();
    let (mut start, mut colon) = (0, None);
    for i in (0..bytes.len()).rev() {
        match bytes[i] {
            b':' if colon.is_none() => colon = Some(i),
            b'@' => {
                start = i + 1;
                break;
            }
            _ => {}
        }
    }
    let hostport = &authority[start..];
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?.parse().ok()?),
        };
        return Some((host, port));
    }
    Some(match colon {
        Some(c) => (&authority[start..c], Some(authority[c + 1..].parse().ok()?)),
        None => (hostport, None),
    })
}

/// Walks the list from its end: the first element `step` stops at (`(value, true)`), else the
/// last one it passed (the list's first). `None` when `step` gives up on an element, or when
/// a line is not visible ASCII.
fn from_right<'a, T>(
    lines: GetAll<'a, HeaderValue>,
    mut step: impl FnMut(&'a str) -> Option<(T, bool)>,
) -> Option<T> {
    let mut leftmost = None;
    for v in lines.iter().rev() {
        for e in elements(v)?.rev() {
            let (value, stop) = step(e)?;
            if stop {
                return Some(value);
            }
            leftmost = Some(value);
        }
    }
    leftmost
}

/// A line's elements, empty ones left out; none when the line is not visible ASCII.
fn elements(v: &HeaderValue) -> Option<impl DoubleEndedIterator<Item = &str>> {
    let list = v.to_str().ok()?.split(',').map(str::trim);
    Some(list.filter(|e| !e.is_empty()))
}

/// A `Forwarded` element's `for` parameter, unquoted.
fn for_param(element: &str) -> Option<&str> {
    param(element, "for")
}

/// A `Forwarded` element's parameter, unquoted.
fn param<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    element.split(';').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
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

    /// The trusted hop's address.
    fn forwarded_ip(h: &HeaderMap, trust: &ForwardedTrust) -> Option<IpAddr> {
        forwarded_for(h, trust).map(|hop| hop.ip)
    }

    const NONE: ForwardedTrust = ForwardedTrust {
        proxies: Proxies::None,
        header: None,
    };
    const ALL: ForwardedTrust = ForwardedTrust {
        proxies: Proxies::All,
        header: None,
    };

    fn hops(n: usize) -> ForwardedTrust {
        let mut t = NONE;
        t.trust_hops(n);
        t
    }

    fn networks<const N: usize>(list: [&str; N]) -> ForwardedTrust {
        let mut t = NONE;
        t.trust_networks(list);
        t
    }

    fn reading(mut trust: ForwardedTrust, header: ProxyHeader) -> ForwardedTrust {
        trust.set_header(header);
        trust
    }

    #[test]
    fn forwarded_headers_first_hop() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.7, 10.0.0.1".parse().unwrap());
        assert_eq!(forwarded_ip(&h, &ALL), ip("203.0.113.7"));
        h.insert("x-forwarded-for", "203.0.113.8:50123".parse().unwrap());
        assert_eq!(forwarded_ip(&h, &ALL), ip("203.0.113.8"));
        h.insert("x-forwarded-for", " , 203.0.113.9".parse().unwrap());
        assert_eq!(forwarded_ip(&h, &ALL), ip("203.0.113.9"), "empty elements");
        // `Forwarded` first, when present.
        h.insert(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.1"
                .parse()
                .unwrap(),
        );
        assert_eq!(forwarded_ip(&h, &ALL), ip("2001:db8::1"));
        h.insert("forwarded", "proto=http;For=192.0.2.60".parse().unwrap());
        assert_eq!(forwarded_ip(&h, &ALL), ip("192.0.2.60"));
        h.insert("forwarded", "for=unknown".parse().unwrap());
        assert_eq!(forwarded_ip(&h, &ALL), None);
        h.insert("forwarded", "proto=https, for=192.0.2.61".parse().unwrap());
        assert_eq!(forwarded_ip(&h, &ALL), None, "the first hop has no `for`");
        assert_eq!(
            forwarded_ip(&h, &reading(ALL, ProxyHeader::XForwardedFor)),
            ip("203.0.113.9"),
            "the header the application names, only"
        );
        assert_eq!(forwarded_ip(&h, &NONE), None);
    }

    #[test]
    fn forwarded_headers_counted_hops() {
        // A client wrote 198.51.100.66 itself; the CDN appended what it saw (203.0.113.7), the
        // load balancer (the peer) the CDN's address (10.0.0.1).
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "198.51.100.66, 203.0.113.7, 10.0.0.1".parse().unwrap(),
        );
        assert_eq!(forwarded_ip(&h, &ALL), ip("198.51.100.66"), "believed");
        assert_eq!(forwarded_ip(&h, &hops(1)), ip("10.0.0.1"));
        assert_eq!(forwarded_ip(&h, &hops(2)), ip("203.0.113.7"), "not forged");
        assert_eq!(forwarded_ip(&h, &hops(3)), ip("198.51.100.66"));
        assert_eq!(
            forwarded_ip(&h, &hops(4)),
            ip("198.51.100.66"),
            "fewer hops"
        );
        assert_eq!(hops(0), NONE);

        // Several lines are one list, in order.
        h.insert("x-forwarded-for", "198.51.100.66".parse().unwrap());
        h.append("x-forwarded-for", "203.0.113.7, ".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.1".parse().unwrap());
        assert_eq!(forwarded_ip(&h, &hops(2)), ip("203.0.113.7"));
        assert_eq!(forwarded_ip(&h, &hops(3)), ip("198.51.100.66"));
        assert_eq!(forwarded_ip(&h, &ALL), ip("198.51.100.66"));

        // The proxies write `X-Forwarded-For`; a `Forwarded` header is the client's own.
        h.insert("forwarded", "for=198.51.100.99".parse().unwrap());
        assert_eq!(forwarded_ip(&h, &hops(1)), ip("10.0.0.1"), "not forged");
        assert_eq!(forwarded_ip(&h, &hops(2)), ip("203.0.113.7"));

        // Proxies that write `Forwarded`, when the application says so.
        let fwd = |n| reading(hops(n), ProxyHeader::Forwarded);
        h.insert(
            "forwarded",
            "for=198.51.100.66, for=\"[2001:db8::1]:4711\";proto=https"
                .parse()
                .unwrap(),
        );
        h.append("forwarded", "for=10.0.0.9;by=10.0.0.2".parse().unwrap());
        assert_eq!(forwarded_ip(&h, &fwd(1)), ip("10.0.0.9"));
        assert_eq!(forwarded_ip(&h, &fwd(2)), ip("2001:db8::1"));
        h.append("forwarded", "for=_hidden".parse().unwrap());
        assert_eq!(
            forwarded_ip(&h, &fwd(1)),
            None,
            "an obfuscated hop is not an address"
        );
        // A line that is not ASCII names no hop.
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.7, 10.0.0.\xff").unwrap(),
        );
        h.remove("forwarded");
        assert_eq!(forwarded_ip(&h, &hops(2)), None);
    }

    #[test]
    fn client_and_proxy() {
        let peer: SocketAddr = "192.0.2.1:50000".parse().unwrap();
        let mut req = Request::get("/")
            .header("x-forwarded-for", "198.51.100.66, 203.0.113.7")
            .body(())
            .unwrap();
        let none = NONE;
        assert_eq!(client_ip(&req, &none), (None, None), "untrusted by default");
        assert_eq!(client_ip(&req, &ALL), (ip("198.51.100.66"), None));
        req.extensions_mut().insert(peer);
        assert_eq!(client_ip(&req, &none), (ip("192.0.2.1"), None), "the peer");
        assert_eq!(
            client_ip(&req, &ALL),
            (ip("198.51.100.66"), ip("192.0.2.1")),
            "the forwarded client, then the proxy"
        );
        assert_eq!(
            client_ip(&req, &hops(1)),
            (ip("203.0.113.7"), ip("192.0.2.1")),
            "the hop the peer appended"
        );
        req.headers_mut()
            .insert("x-forwarded-for", "unknown".parse().unwrap());
        assert_eq!(
            client_ip(&req, &ALL),
            (ip("192.0.2.1"), None),
            "not an address"
        );
    }

    #[test]
    fn server_address_and_port_from_the_host() {
        assert_eq!(host_port("example.org"), Some(("example.org", None)));
        assert_eq!(
            host_port("example.org:8080"),
            Some(("example.org", Some(8080)))
        );
        assert_eq!(host_port("[::1]:3000"), Some(("::1", Some(3000))));
        assert_eq!(host_port("[::1]"), Some(("::1", None)));
        assert_eq!(host_port("user@api.test:81"), Some(("api.test", Some(81))));
        assert_eq!(host_port("example.org:notaport"), None);
        assert_eq!(host_port("[::1]:notaport"), None);
        assert_eq!(host_port("[::1]x"), None);
        // The last '@' ends the userinfo, which may hold colons; the last ':' starts the port.
        assert_eq!(host_port("u:p@x@api.test:82"), Some(("api.test", Some(82))));
        assert_eq!(host_port("u:p@api.test"), Some(("api.test", None)));
        assert_eq!(host_port(""), Some(("", None)));
    }

    #[test]
    fn scheme_and_host_from_the_trusted_hop() {
        let peer: SocketAddr = "10.0.0.1:50000".parse().unwrap();
        let req = |headers: &[(&str, &str)]| {
            let mut b = Request::get("/");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            let mut r = b.body(()).unwrap();
            r.extensions_mut().insert(peer);
            r
        };
        let origin = |https, host| Origin { https, host };
        fn origin_of<'a>(r: &'a Request<()>, trust: &ForwardedTrust) -> Origin<'a> {
            client_and_origin(r, trust).2
        }
        // One proxy that sets the scheme and host and appends the client.
        let r = req(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "HTTPS"),
            ("x-forwarded-host", "api.example.com"),
        ]);
        let (client, _, got) = client_and_origin(&r, &hops(1));
        assert_eq!(client, ip("203.0.113.7"));
        assert_eq!(got, origin(Some(true), Some("api.example.com")));
        assert_eq!(origin_of(&r, &ALL), got);
        assert_eq!(
            origin_of(&r, &NONE),
            Origin::default(),
            "untrusted: nothing"
        );
        // Appended hop by hop: the values at the client's place, not what the client wrote.
        let r = req(&[
            ("x-forwarded-for", "198.51.100.66, 203.0.113.7, 10.0.0.2"),
            ("x-forwarded-proto", "http, https, http"),
            ("x-forwarded-host", "evil.test, api.example.com:8443"),
            ("x-forwarded-host", "internal"),
        ]);
        assert_eq!(
            origin_of(&r, &hops(2)),
            origin(Some(true), Some("api.example.com:8443"))
        );
        assert_eq!(
            origin_of(&r, &hops(1)),
            origin(Some(false), Some("internal"))
        );
        let nets = networks(["10.0.0.0/8"]);
        assert_eq!(
            client_and_origin(&r, &nets),
            (
                ip("203.0.113.7"),
                ip("10.0.0.1"),
                origin(Some(true), Some("api.example.com:8443"))
            )
        );
        // Set once by the outermost proxy: shorter lists, their only value.
        let r = req(&[
            ("x-forwarded-for", "203.0.113.7, 10.0.0.2"),
            ("x-forwarded-proto", "https"),
        ]);
        assert_eq!(origin_of(&r, &hops(2)), origin(Some(true), None));
        // `Forwarded`: the client's element's own parameters.
        let r = req(&[(
            "forwarded",
            "for=203.0.113.7;proto=https;host=\"api.example.com:8443\", \
             for=10.0.0.2;Proto=http;host=internal",
        )]);
        let fwd = |n| reading(hops(n), ProxyHeader::Forwarded);
        assert_eq!(
            origin_of(&r, &fwd(2)),
            origin(Some(true), Some("api.example.com:8443"))
        );
        assert_eq!(
            origin_of(&r, &fwd(1)),
            origin(Some(false), Some("internal"))
        );
        // Not a scheme of HTTP, not a host: left out.
        let r = req(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "ftp"),
            ("x-forwarded-host", "user@evil.test"),
        ]);
        assert_eq!(origin_of(&r, &hops(1)), Origin::default());
        for bad in [
            "a b",
            "example.com:",
            "example.com:http",
            "[2001:db8::1]:x",
            "",
        ] {
            let r = req(&[
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-host", bad),
            ]);
            assert_eq!(origin_of(&r, &hops(1)), Origin::default(), "{bad:?}");
        }
        for good in [
            "[2001:db8::1]",
            "[2001:db8::1]:8443",
            "192.0.2.1:80",
            "xn--bcher-kva.example",
        ] {
            let r = req(&[
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-host", good),
            ]);
            assert_eq!(origin_of(&r, &hops(1)).host, Some(good));
        }
        // No forwarded client believed: nothing else believed either.
        let r = req(&[
            ("x-forwarded-for", "unknown"),
            ("x-forwarded-proto", "https"),
        ]);
        assert_eq!(origin_of(&r, &hops(1)), Origin::default());
    }

    #[test]
    fn trusted_networks() {
        let nets = networks(["10.0.0.0/8", " 2001:db8::/32", "192.0.2.1"]);
        let req = |peer: &str, xff: &[&str]| {
            let mut b = Request::get("/");
            for v in xff {
                b = b.header("x-forwarded-for", *v);
            }
            let mut r = b.body(()).unwrap();
            let peer: IpAddr = peer.parse().unwrap();
            r.extensions_mut().insert(SocketAddr::new(peer, 443));
            r
        };
        // A forged hop in front, a CDN (203.0.113.7 saw the client), two trusted proxies.
        let chain = ["198.51.100.66, 203.0.113.7", "10.1.2.3"];
        assert_eq!(
            client_ip(&req("10.0.0.1", &chain), &nets),
            (ip("203.0.113.7"), ip("10.0.0.1")),
            "the first untrusted hop from the right"
        );
        let mut forged = req("10.0.0.1", &chain);
        forged
            .headers_mut()
            .insert("forwarded", "for=198.51.100.99".parse().unwrap());
        assert_eq!(
            client_ip(&forged, &nets),
            (ip("203.0.113.7"), ip("10.0.0.1")),
            "a `Forwarded` header the proxies did not write is not read"
        );
        assert_eq!(
            client_ip(&forged, &reading(nets.clone(), ProxyHeader::Forwarded)),
            (ip("198.51.100.99"), ip("10.0.0.1")),
            "unless the application says its proxies write it"
        );
        assert_eq!(
            client_ip(&req("192.0.2.1", &["203.0.113.9"]), &nets),
            (ip("203.0.113.9"), ip("192.0.2.1")),
            "a single address"
        );
        assert_eq!(
            client_ip(&req("::ffff:10.9.9.9", &["203.0.113.9"]), &nets),
            (ip("203.0.113.9"), ip("::ffff:10.9.9.9")),
            "an IPv4-mapped peer is the IPv4 address it maps"
        );
        assert_eq!(
            client_ip(&req("2001:db8::5", &["10.0.0.2, 10.0.0.3"]), &nets),
            (ip("10.0.0.2"), ip("2001:db8::5")),
            "all trusted: the leftmost"
        );
        assert_eq!(
            client_ip(&req("203.0.113.50", &chain), &nets),
            (ip("203.0.113.50"), None),
            "an untrusted peer's headers are ignored"
        );
        assert_eq!(
            client_ip(&req("10.0.0.1", &["203.0.113.7, unknown"]), &nets),
            (ip("10.0.0.1"), None),
            "a hop that is not an address ends the walk"
        );
        assert_eq!(
            client_ip(&req("10.0.0.1", &[]), &nets),
            (ip("10.0.0.1"), None),
            "no header"
        );
        let no_peer = Request::get("/")
            .header("x-forwarded-for", "203.0.113.7")
            .body(())
            .unwrap();
        assert_eq!(client_ip(&no_peer, &nets), (None, None), "no peer to trust");
        assert_eq!(networks([]), NONE);
        let bad = std::panic::catch_unwind(|| networks(["10.0.0.0/33"]));
        assert!(bad.is_err(), "not a network");
    }
}
