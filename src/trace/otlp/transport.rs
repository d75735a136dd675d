//! The OTLP/HTTP transport: one kept-alive HTTP/1.1 connection to the collector (or to the
//! proxy the environment names for it), driven by a current-thread runtime on the export
//! thread itself.
//!
//! hyper's connection API rather than a whole client, for performance: reqwest's blocking
//! client ran a runtime on a thread of its own, and every batch went to that thread and back.
//! On the example server, exporting every request with the whole server on one core, the
//! export's CPU time per request fell from about 500 to 390 ns with this transport
//! (BENCHMARKS.md, session 17). Of what a client adds beyond one connection, an exporter needs
//! two things, and they are here: redirections followed (OTLP asks for it), and the proxy
//! environment variables, honoured with hyper-util's matcher as reqwest does (an `https://`
//! endpoint through a `CONNECT` tunnel). TLS for `https://` endpoints comes with the
//! `otlp-tls` feature.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;

#[cfg(feature = "tls")]
use super::tls::Tls;
use super::TlsFiles;

/// Without the `otlp-tls` feature there is no TLS: `https://` endpoints are refused.
#[cfg(not(feature = "tls"))]
enum Tls {}

#[cfg(not(feature = "tls"))]
impl Tls {
    fn new(_: &str, _: &TlsFiles) -> Result<Self, String> {
        Err(
            "https needs TLS: build towerscope with its `otlp-tls` feature, or use http:// (a \
             collector or agent on the node or in the cluster)"
                .to_owned(),
        )
    }
}

/// The collector's answer to an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    /// `Retry-After`: how long it asks to wait.
    pub(crate) retry_after: Option<Duration>,
    /// The response body (an `ExportTraceServiceResponse` on success; usually empty).
    pub(crate) body: Bytes,
    /// `Location`, on a redirection.
    pub(crate) location: Option<String>,
}

/// Why an export got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) kind: FailureKind,
}

/// Whether sending the same batch again could help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// No connection, or it broke before the answer: worth another try.
    Unreachable,
    /// No answer within the export timeout: its time is spent already.
    TimedOut,
    /// The connection was refused as configured: a certificate that does not verify (on
    /// either side), a TLS handshake the two sides cannot agree on, or a proxy that refuses
    /// the tunnel (a 4xx). Another try would meet the same refusal; the next batch tries
    /// again, so exports resume once the configuration or the certificate is mended.
    Refused,
}

impl Failure {
    fn new(message: String) -> Self {
        Self {
            message,
            kind: FailureKind::Unreachable,
        }
    }

    fn refused(message: String) -> Self {
        Self {
            message,
            kind: FailureKind::Refused,
        }
    }

    /// A failure that `e` caused: refused when TLS did (a handshake, or, under TLS 1.3, a
    /// server that rejects the client's certificate after it, on the first request).
    pub(crate) fn caused_by(message: String, e: &(dyn std::error::Error + 'static)) -> Self {
        #[cfg(feature = "tls")]
        if crate::tls::refusal(e) {
            return Self::refused(message);
        }
        let _ = e; // Without TLS, no cause is a refusal.
        Self::new(message)
    }

    fn of_request(e: &hyper::Error) -> Self {
        Self::caused_by(format!("OTLP export: {e}"), e)
    }
}

/// Posts bodies to one endpoint.
pub(crate) struct Transport {
    endpoint: String,
    /// The request target: the endpoint's path and query, or its whole URL through a proxy.
    target: Uri,
    /// Where to connect: the endpoint's host and port, or the proxy's.
    host: String,
    port: u16,
    /// Host, content type, user agent, proxy authorization and the configured headers.
    headers: HeaderMap,
    timeout: Duration,
    /// TLS, for an `https://` endpoint.
    tls: Option<Tls>,
    /// For an `https://` endpoint behind a proxy: the `CONNECT` request that opens the tunnel.
    tunnel: Option<Bytes>,
    /// Built on the export thread at its first export: a runtime must not be started, or
    /// dropped, on a thread that runs the application's.
    runtime: Option<tokio::runtime::Runtime>,
    conn: Option<Conn>,
    /// What it was made with, for a transport to a redirection's target.
    configured: Vec<(String, String)>,
    files: TlsFiles,
    /// The transport of this endpoint's last temporary redirection, kept for the next post
    /// redirected to the same place: the endpoint is still asked first each time, but the
    /// target's connection, runtime and TLS set-up (its root certificates read) are made once.
    detour: Option<Box<Transport>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A kept connection: the request side, and the task that drives the connection (aborted
/// with it, so an export that timed out leaves no connection behind).
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Transport {
    /// For `endpoint` (an `http://` URL, or `https://` with the `otlp-tls` feature), with
    /// `headers` on every request and `timeout` for each export (connecting, sending and
    /// reading the answer); an `https://` endpoint's certificate is checked against the CA
    /// certificates of `files.ca` when given, else the system's, and the client presents
    /// `files.client` when given.
    pub(crate) fn new(
        endpoint: &str,
        headers: &[(String, String)],
        timeout: Duration,
        files: &TlsFiles,
    ) -> Result<Self, String> {
        Self::with_proxies(endpoint, headers, timeout, files, &Matcher::from_env())
    }

    fn with_proxies(
        endpoint: &str,
        headers: &[(String, String)],
        timeout: Duration,
        files: &TlsFiles,
        proxies: &Matcher,
    ) -> Result<Self, String> {
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| format!("OTLP endpoint {endpoint:?}: {e}"))?;
        let (host, port, https) =
            http_authority(&uri).map_err(|e| format!("OTLP endpoint {endpoint:?}: {e}"))?;
        let tls = if https {
            Some(Tls::new(&host, files).map_err(|e| format!("OTLP endpoint {endpoint:?}: {e}"))?)
        } else {
            None
        };
        let authority = uri.authority().expect("checked").as_str().to_owned();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::try_from(k.as_str()).map_err(|e| format!("header {k}: {e}"))?;
            let value =
                HeaderValue::try_from(v.as_str()).map_err(|e| format!("header {k}: {e}"))?;
            map.insert(name, value);
        }
        map.insert(
            header::HOST,
            HeaderValue::try_from(authority).map_err(|e| format!("OTLP endpoint host: {e}"))?,
        );
        map.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        // The exporter names itself, as the OTLP exporter specification asks.
        map.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("towerscope/", env!("CARGO_PKG_VERSION"))),
        );
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let origin_form = Uri::try_from(path).map_err(|e| e.to_string())?;
        let (target, host, port, tunnel) = match proxies.intercept(&uri) {
            Some(proxy) => {
                let (h, p, proxy_tls) = http_authority(proxy.uri())
                    .map_err(|e| format!("proxy for the OTLP endpoint {:?}: {e}", proxy.uri()))?;
                if proxy_tls {
                    return Err(format!(
                        "proxy for the OTLP endpoint {:?}: an https:// proxy is not supported",
                        proxy.uri()
                    ));
                }
                if https {
                    // Through a tunnel: the proxy sees only `CONNECT host:port`, and the
                    // requests in it are the endpoint's own.
                    let to = if host.contains(':') {
                        format!("[{host}]:{port}")
                    } else {
                        format!("{host}:{port}")
                    };
                    let mut connect = format!("CONNECT {to} HTTP/1.1\r\nHost: {to}\r\n");
                    if let Some(auth) = proxy.basic_auth() {
                        let auth = auth
                            .to_str()
                            .map_err(|e| format!("proxy credentials: {e}"))?;
                        connect.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
                    }
                    connect.push_str("\r\n");
                    (origin_form, h, p, Some(Bytes::from(connect)))
                } else {
                    if let Some(auth) = proxy.basic_auth() {
                        map.insert(header::PROXY_AUTHORIZATION, auth.clone());
                    }
                    (uri.clone(), h, p, None)
                }
            }
            None => (origin_form, host, port, None),
        };
        Ok(Self {
            endpoint: endpoint.to_owned(),
            target,
            host,
            port,
            headers: map,
            timeout,
            tls,
            tunnel,
            runtime: None,
            conn: None,
            configured: headers.to_vec(),
            files: files.clone(),
            detour: None,
        })
    }

    /// Posts `body` (shared with the connection, not copied), following the collector's
    /// redirections as the OTLP specification asks: any 3xx with a `Location`, up to
    /// [`MAX_REDIRECTS`] (an export can only be posted, so the method stays POST and the body
    /// goes again). A permanent one (301, 308) replaces this transport's endpoint for later
    /// posts; a temporary one serves this post only (its transport is kept, see `detour`). The
    /// configured headers (credentials, often) follow only to the same host, and not from
    /// `https://` down to `http://`, as HTTP clients do. A redirection left unfollowed comes
    /// back as the answer.
    pub(crate) fn post(&mut self, body: &Bytes) -> Result<Answer, Failure> {
        let mut answer = self.post_once(body)?;
        // Taken whatever comes: kept again only if this post is redirected the same way (an
        // endpoint that stops redirecting lets the other connection go).
        let mut kept = self.detour.take();
        let mut temporary: Option<Transport> = None;
        let mut hops = 0;
        for _ in 0..MAX_REDIRECTS {
            let from = temporary.as_ref().unwrap_or(&*self);
            let Some(to) = answer
                .location
                .as_deref()
                .and_then(|l| redirect_target(&from.endpoint, l))
            else {
                break;
            };
            // The first hop, from this endpoint, going where the last post's went: its
            // transport again.
            let next = match kept.take() {
                Some(kept) if hops == 0 && kept.endpoint == to => *kept,
                _ => from.redirected(&to)?,
            };
            hops += 1;
            let current = if matches!(answer.status.as_u16(), 301 | 308) && temporary.is_none() {
                *self = next;
                &mut *self
            } else {
                temporary.insert(next)
            };
            answer = current.post_once(body)?;
        }
        // Only a direct redirection is kept: a chain's later hops depend on the earlier ones.
        if hops == 1 {
            if let Some(t) = temporary {
                self.detour = Some(Box::new(t));
            }
        }
        Ok(answer)
    }

    /// A transport to `to`, where this one's endpoint redirected, made as this one was; the
    /// configured headers go along only to the same host, without a downgrade from TLS.
    fn redirected(&self, to: &str) -> Result<Self, Failure> {
        let headers: Vec<(String, String)> = if same_host(&self.endpoint, to) {
            self.configured.clone()
        } else {
            // The body's encoding is the export's, not a credential.
            self.configured
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-encoding"))
                .cloned()
                .collect()
        };
        Self::new(to, &headers, self.timeout, &self.files)
            .map_err(|e| Failure::refused(format!("OTLP export: redirected to {e}")))
    }

    /// Posts `body` once (shared with the connection, not copied): the collector's answer, or
    /// what went wrong.
    ///
    /// A kept connection may have been closed by the collector since the last export (an idle
    /// timeout): when a request on it fails before an answer, it is sent once more on a new
    /// connection. Delivery is at least once, as with any OTLP retry.
    fn post_once(&mut self, body: &Bytes) -> Result<Answer, Failure> {
        if self.runtime.is_none() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|e| Failure::new(format!("OTLP export: its runtime: {e}")))?;
            self.runtime = Some(rt);
        }
        let request = || {
            let mut req = Request::new(Full::new(body.clone()));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = self.target.clone();
            *req.headers_mut() = self.headers.clone();
            req.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            req
        };
        let (host, port, timeout) = (self.host.as_str(), self.port, self.timeout);
        let (tls, tunnel) = (self.tls.as_ref(), self.tunnel.as_ref());
        let conn = &mut self.conn;
        let runtime = self.runtime.as_ref().expect("built above");
        let result = runtime.block_on(async {
            let attempt = async {
                if let Some(kept) = conn.as_mut() {
                    if let Ok(answer) = kept.send(request()).await {
                        return Ok(answer);
                    }
                }
                *conn = None;
                let fresh = conn.insert(Conn::open(host, port, tls, tunnel).await?);
                fresh
                    .send(request())
                    .await
                    .map_err(|e| Failure::of_request(&e))
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(Failure {
                    message: format!("OTLP export: no answer within {timeout:?}"),
                    kind: FailureKind::TimedOut,
                }),
            }
        });
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

impl Conn {
    /// A connection to `host:port`: through the proxy's tunnel when `tunnel` is its `CONNECT`
    /// request, in TLS when `tls` is set.
    async fn open(
        host: &str,
        port: u16,
        tls: Option<&Tls>,
        tunnel: Option<&Bytes>,
    ) -> Result<Self, Failure> {
        let mut tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| Failure::new(format!("OTLP export: connecting to {host}:{port}: {e}")))?;
        // The head and the body go out in one write; no small segment waits on an ACK.
        let _ = tcp.set_nodelay(true);
        if let Some(connect) = tunnel {
            open_tunnel(&mut tcp, connect).await?;
        }
        match tls {
            #[cfg(feature = "tls")]
            Some(tls) => Self::handshake(TokioIo::new(tls.connect(tcp).await?)).await,
            #[cfg(not(feature = "tls"))]
            Some(never) => match *never {},
            None => Self::handshake(TokioIo::new(tcp)).await,
        }
    }

    async fn handshake<T>(io: T) -> Result<Self, Failure>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| Failure::of_request(&e))?;
        let task = tokio::spawn(connection).abort_handle();
        Ok(Self { sender, task })
    }

    /// Sends one request and reads its answer to the end (so the connection can be kept).
    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Answer, hyper::Error> {
        self.sender.ready().await?;
        let response = self.sender.send_request(req).await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after);
        let location = status
            .is_redirection()
            .then(|| response.headers().get(header::LOCATION))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            retry_after,
            body,
            location,
        })
    }
}

/// Redirections followed for one post at most.
const MAX_REDIRECTS: usize = 5;

/// Where a redirection from `endpoint` to `location` leads: `location` itself when it is an
/// absolute `http://` or `https://` URL, or `endpoint`'s scheme and authority with it when it
/// is an absolute path. `None` for anything else.
fn redirect_target(endpoint: &str, location: &str) -> Option<String> {
    let location = location.trim();
    let to: Uri = location.parse().ok()?;
    if to.scheme().is_some() {
        return matches!(to.scheme_str(), Some("http" | "https")).then(|| location.to_owned());
    }
    if !location.starts_with('/') || location.starts_with("//") {
        return None;
    }
    let from: Uri = endpoint.parse().ok()?;
    Some(format!(
        "{}://{}{location}",
        from.scheme_str()?,
        from.authority()?
    ))
}

/// Whether `to` is on `from`'s host (any port), without going from `https://` down to `http://`.
fn same_host(from: &str, to: &str) -> bool {
    let (Ok(from), Ok(to)) = (from.parse::<Uri>(), to.parse::<Uri>()) else {
        return false;
    };
    let downgrade = from.scheme_str() == Some("https") && to.scheme_str() != Some("https");
    !downgrade
        && from
            .host()
            .zip(to.host())
            .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
}

/// The wait a `Retry-After` value asks for: delay-seconds, or an HTTP-date (no wait when it has
/// passed). `None` when it is neither.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// Sends the proxy's `CONNECT` request and reads its answer: the tunnel is open on a 2xx.
async fn open_tunnel(tcp: &mut tokio::net::TcpStream, connect: &[u8]) -> Result<(), Failure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fail =
        |e: &dyn std::fmt::Display| Failure::new(format!("OTLP export: the proxy's tunnel: {e}"));
    tcp.write_all(connect).await.map_err(|e| fail(&e))?;
    // Byte by byte, so that nothing after the proxy's answer (the endpoint's own bytes) is
    // taken: once per connection.
    let mut head = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(fail(&"answer too long"));
        }
        match tcp.read(&mut byte).await.map_err(|e| fail(&e))? {
            0 => return Err(fail(&"closed by the proxy")),
            _ => head.push(byte[0]),
        }
    }
    let status =
        String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or(&[])).into_owned();
    match status.split(' ').nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        // Refused (a 407 without the right credentials, a 403 for this host): the same
        // request would be refused again. A 5xx is the proxy's trouble, maybe passing.
        Some(code) if code.starts_with('4') => Err(Failure::refused(format!(
            "OTLP export: the proxy refused the tunnel: {status}"
        ))),
        _ => Err(fail(&status)),
    }
}

/// Host and port of an `http://` or `https://` URL (port 80 or 443 by default), and whether
/// it is `https://`.
fn http_authority(uri: &Uri) -> Result<(String, u16, bool), String> {
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("not an http:// or https:// URL".to_owned()),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or("no host")?;
    // `[::1]` connects as `::1`.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok((host, port, https))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A transport to `endpoint` through `proxies` (none with an empty builder).
    fn via(endpoint: &str, proxies: &Matcher) -> Result<Transport, String> {
        Transport::with_proxies(
            endpoint,
            &[],
            Duration::from_secs(1),
            &TlsFiles::default(),
            proxies,
        )
    }

    fn no_proxy() -> Matcher {
        Matcher::builder().build()
    }

    /// Each request's head (lower-cased) and body.
    pub(crate) type Seen = Vec<(String, Vec<u8>)>;

    /// The request in `got` once it is whole: its head (lower-cased) and its body, as long as
    /// its `content-length` says.
    fn whole_request(got: &[u8]) -> Option<(String, Vec<u8>)> {
        let end = got.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))?
            .trim()
            .parse()
            .ok()?;
        let body = got.get(end + 4..end + 4 + len)?;
        Some((head, body.to_vec()))
    }

    /// A collector on a free loopback port that takes `n` connections, one request each: it
    /// reads the head and as many body bytes as its `content-length` says, answers 200 and
    /// closes the connection without saying so (as after an idle timeout). Returns its address
    /// and, once it is done, each request's head (lower-cased) and body.
    pub(crate) fn collector(n: usize) -> (std::net::SocketAddr, std::thread::JoinHandle<Seen>) {
        scripted(vec![OK; n])
    }

    /// An answer of 200, and nothing else.
    pub(crate) const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

    /// A redirection (`status`, e.g. `307 Temporary Redirect`) to `location`.
    pub(crate) fn redirect(status: &str, location: &str) -> &'static [u8] {
        format!("HTTP/1.1 {status}\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n")
            .leak()
            .as_bytes()
    }

    /// A temporary redirection to the traces path of `to`.
    fn temporary_redirect(to: std::net::SocketAddr) -> &'static [u8] {
        redirect("307 Temporary Redirect", &format!("http://{to}/v1/traces"))
    }

    /// The same with `answers`, one per connection, in order.
    pub(crate) fn scripted(
        answers: Vec<&'static [u8]>,
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<Seen>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || answer(&listener, &answers, false).1);
        (addr, server)
    }

    /// A collector that keeps its connections: it answers `answers[i]` to the `i`-th request,
    /// whichever connection it comes on; with how many connections it took.
    fn keeping(
        answers: Vec<&'static [u8]>,
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<(usize, Seen)>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || answer(&listener, &answers, true));
        (addr, server)
    }

    /// Answers `answers[i]` to the `i`-th request on `listener`: one request per connection
    /// (then closed without saying so), or as many as come on each when `keep_alive`. How
    /// many connections it took, and each request's head (lower-cased) and body.
    fn answer(
        listener: &std::net::TcpListener,
        answers: &[&[u8]],
        keep_alive: bool,
    ) -> (usize, Seen) {
        use std::io::{Read, Write};
        let (mut connections, mut seen) = (0, Vec::new());
        while seen.len() < answers.len() {
            let (mut s, _) = listener.accept().unwrap();
            connections += 1;
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            while seen.len() < answers.len() {
                if let Some((head, body)) = whole_request(&got) {
                    got.drain(..head.len() + 4 + body.len());
                    s.write_all(answers[seen.len()]).unwrap();
                    seen.push((head, body));
                    if keep_alive {
                        continue;
                    }
                    break;
                }
                let n = s.read(&mut chunk).unwrap();
                if n == 0 {
                    // A kept connection the client let go of: the next request on another.
                    assert!(
                        keep_alive && got.is_empty(),
                        "closed before a whole request"
                    );
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
        }
        (connections, seen)
    }

    #[test]
    fn origin_form_target_and_host_header() {
        let t = Transport::with_proxies(
            "http://collector:4318/v1/traces",
            &[("x-api-key".into(), "k".into())],
            Duration::from_secs(1),
            &TlsFiles::default(),
            &no_proxy(),
        )
        .unwrap();
        assert_eq!(t.target, "/v1/traces");
        assert_eq!((t.host.as_str(), t.port), ("collector", 4318));
        assert_eq!(t.headers[header::HOST], "collector:4318");
        assert_eq!(t.headers["x-api-key"], "k");
        assert_eq!(t.headers[header::CONTENT_TYPE], "application/x-protobuf");
        let t = via("http://[::1]/x", &no_proxy()).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        assert_eq!(t.headers[header::HOST], "[::1]");
    }

    #[test]
    fn through_a_proxy_the_whole_url_is_the_target() {
        let proxies = Matcher::builder()
            .http("http://user:pass@proxy.internal:3128")
            .no("localhost")
            .build();
        let t = via("http://collector:4318/v1/traces", &proxies).unwrap();
        assert_eq!(t.target, "http://collector:4318/v1/traces");
        assert_eq!((t.host.as_str(), t.port), ("proxy.internal", 3128));
        assert_eq!(t.headers[header::PROXY_AUTHORIZATION], "Basic dXNlcjpwYXNz");
        // NO_PROXY hosts connect directly.
        let t = via("http://localhost:4318/v1/traces", &proxies).unwrap();
        assert_eq!(t.target, "/v1/traces");
        assert_eq!((t.host.as_str(), t.port), ("localhost", 4318));
    }

    #[test]
    fn endpoints_it_cannot_reach_are_refused_with_the_reason() {
        #[cfg(not(feature = "tls"))]
        {
            let e = via("https://collector:4318/v1/traces", &no_proxy()).unwrap_err();
            assert!(e.contains("otlp-tls"), "{e}");
        }
        let proxies = Matcher::builder().http("https://proxy.internal").build();
        let e = via("http://collector:4318/v1/traces", &proxies).unwrap_err();
        assert!(e.contains("https:// proxy is not supported"), "{e}");
        for (endpoint, why) in [
            ("collector:4318/v1/traces", "OTLP endpoint"),
            (
                "ftp://collector/v1/traces",
                "not an http:// or https:// URL",
            ),
            ("http://", "OTLP endpoint"),
            ("not a url", "OTLP endpoint"),
        ] {
            let e = via(endpoint, &no_proxy()).unwrap_err();
            assert!(e.contains(why), "{endpoint}: {e}");
        }
    }

    /// The test certificates (`tests/fixtures/tls`): a CA, and a server certificate it signed
    /// for `localhost` and 127.0.0.1, valid until 2126. Made with openssl (P-256 keys):
    /// `req -x509 ... -addext basicConstraints=critical,CA:TRUE` for the CA, then `req` and
    /// `x509 -req -CA ca.pem` with `subjectAltName=DNS:localhost,IP:127.0.0.1` for the server.
    #[cfg(feature = "tls")]
    pub(crate) fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tls")
            .join(name)
    }

    /// A transport to an `https://` test endpoint.
    #[cfg(feature = "tls")]
    fn over_tls(endpoint: &str, files: &TlsFiles, proxies: &Matcher) -> Result<Transport, String> {
        Transport::with_proxies(endpoint, &[], Duration::from_secs(5), files, proxies)
    }

    /// Trusting the CA certificates of `ca` alone, no client certificate.
    #[cfg(feature = "tls")]
    fn trusting(ca: std::path::PathBuf) -> TlsFiles {
        TlsFiles {
            ca: Some(ca),
            client: None,
        }
    }

    /// One connection to a test collector: the request's head and body, or why it failed.
    #[cfg(feature = "tls")]
    type Received = Result<(String, Vec<u8>), String>;

    /// A TLS collector on `listener` for `n` connections, one request each (as `collector`
    /// does in plain text): each connection's request head (lower-cased) and body, or why its
    /// TLS handshake failed.
    #[cfg(feature = "tls")]
    fn tls_collector(
        listener: std::net::TcpListener,
        n: usize,
    ) -> std::thread::JoinHandle<Vec<Received>> {
        tls_collector_with(listener, n, false)
    }

    /// The same, asking each client for a certificate the test CA signed when `mutual`.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_collector_with(
        listener: std::net::TcpListener,
        n: usize,
        mutual: bool,
    ) -> std::thread::JoinHandle<Vec<Received>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cert = CertificateDer::from_pem_file(fixture("server.pem")).unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if mutual {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_file(fixture("ca.pem")).unwrap())
                .unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder.with_single_cert(vec![cert], key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        serve(listener, move |listener| async move {
            let mut seen = Vec::new();
            for _ in 0..n {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        seen.push(Err(e.to_string()));
                        continue;
                    }
                };
                let mut got = Vec::new();
                let mut chunk = [0u8; 1024];
                let request = loop {
                    let n = tls.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "closed before a whole request");
                    got.extend_from_slice(&chunk[..n]);
                    if let Some(request) = whole_request(&got) {
                        break request;
                    }
                };
                tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .unwrap();
                tls.flush().await.unwrap();
                seen.push(Ok(request));
            }
            seen
        })
    }

    /// A request's head from `client`, read byte by byte (nothing after it is taken).
    #[cfg(feature = "tls")]
    async fn read_head(client: &mut tokio::net::TcpStream) -> String {
        use tokio::io::AsyncReadExt;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(client.read(&mut byte).await.unwrap(), 1);
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    /// A proxy for one `CONNECT` tunnel: sends the `CONNECT` request's head when it has it,
    /// answers 200 and relays both ways until the tunnel closes.
    #[cfg(feature = "tls")]
    fn connect_proxy() -> (std::net::SocketAddr, std::sync::mpsc::Receiver<String>) {
        use tokio::io::AsyncWriteExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (heads, received) = std::sync::mpsc::channel();
        serve(listener, move |listener| async move {
            let (mut client, _) = listener.accept().await.unwrap();
            let head = read_head(&mut client).await;
            let to = head.split(' ').nth(1).unwrap().to_owned();
            let _ = heads.send(head);
            let mut upstream = tokio::net::TcpStream::connect(to).await.unwrap();
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .unwrap();
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
        (addr, received)
    }

    /// Runs `server` on `listener` on a thread of its own, with a current-thread runtime.
    #[cfg(feature = "tls")]
    fn serve<F, Fut>(
        listener: std::net::TcpListener,
        server: F,
    ) -> std::thread::JoinHandle<Fut::Output>
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
        Fut: std::future::Future,
        Fut::Output: Send + 'static,
    {
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                server(listener).await
            })
        })
    }

    /// An `https://` endpoint is reached over TLS, directly and through a proxy's `CONNECT`
    /// tunnel, its certificate checked against the configured CA; against the system's roots
    /// alone, the same server's certificate is refused.
    #[cfg(feature = "tls")]
    #[test]
    fn an_https_endpoint_is_reached_over_tls_and_its_certificate_checked() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tls_collector(listener, 2);
        let endpoint = format!("https://localhost:{port}/v1/traces");
        let ca = fixture("ca.pem");
        let body = Bytes::from_static(b"spans, encoded");

        let mut direct = over_tls(&endpoint, &trusting(ca.clone()), &no_proxy()).unwrap();
        assert_eq!(direct.post(&body).map(|a| a.status), Ok(StatusCode::OK));

        let (proxy, heads) = connect_proxy();
        let proxies = Matcher::builder()
            .https(format!("http://user:pass@{proxy}"))
            .build();
        let mut tunnelled = over_tls(&endpoint, &trusting(ca.clone()), &proxies).unwrap();
        assert_eq!(tunnelled.target, "/v1/traces");
        assert!(!tunnelled.headers.contains_key(header::PROXY_AUTHORIZATION));
        assert_eq!(tunnelled.post(&body).map(|a| a.status), Ok(StatusCode::OK));
        let connect = heads.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            connect.starts_with(&format!(
                "CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n"
            )),
            "{connect}"
        );
        assert!(
            connect.contains("Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"),
            "{connect}"
        );

        let seen = server.join().unwrap();
        assert_eq!(seen.len(), 2);
        for request in seen {
            let (head, got) = request.unwrap();
            assert!(head.starts_with("post /v1/traces http/1.1"), "{head}");
            assert!(head.contains(&format!("host: localhost:{port}")), "{head}");
            assert_eq!(got, body);
        }

        // The system's roots do not include the test CA: the handshake fails, and so does the
        // export (or, on a system without roots, the transport is not built at all).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoint = format!("https://localhost:{port}/v1/traces");
        match over_tls(&endpoint, &TlsFiles::default(), &no_proxy()) {
            Err(e) => assert!(e.contains("no root certificates"), "{e}"),
            Ok(mut system_roots) => {
                let server = tls_collector(listener, 1);
                let failure = system_roots.post(&body).unwrap_err();
                assert!(failure.message.contains("certificate"), "{failure:?}");
                // Not worth sending again: the certificate will not verify any better.
                assert_eq!(failure.kind, FailureKind::Refused, "{failure:?}");
                assert!(server.join().unwrap()[0].is_err());
            }
        }

        let e = over_tls(&endpoint, &trusting(fixture("missing.pem")), &no_proxy()).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
    }

    /// A collector that asks for a client certificate (mutual TLS) takes the export of a
    /// client that has one the collector's CA signed, and refuses one that has none.
    #[cfg(feature = "tls")]
    #[test]
    fn a_collector_asking_for_a_client_certificate_gets_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tls_collector_with(listener, 2, true);
        let endpoint = format!("https://localhost:{port}/v1/traces");
        let (ca, cert, key) = (
            fixture("ca.pem"),
            fixture("client.pem"),
            fixture("client.key"),
        );
        let body = Bytes::from_static(b"spans, encoded");
        let files = TlsFiles {
            ca: Some(ca.clone()),
            client: Some((cert.clone(), key)),
        };
        let mut with = over_tls(&endpoint, &files, &no_proxy()).unwrap();
        assert_eq!(with.post(&body).map(|a| a.status), Ok(StatusCode::OK));
        let mut without = over_tls(&endpoint, &trusting(ca.clone()), &no_proxy()).unwrap();
        // Under TLS 1.3 the collector's refusal comes after the handshake, on the request.
        let failure = without.post(&body).unwrap_err();
        assert_eq!(failure.kind, FailureKind::Refused, "{failure:?}");
        let seen = server.join().unwrap();
        assert_eq!(seen[0].as_ref().map(|(_, b)| b.clone()), Ok(body.to_vec()));
        let refused = seen[1].as_ref().unwrap_err();
        assert!(refused.contains("certificate"), "{refused}");
        // A key that does not match its certificate is refused when the exporter is built.
        let wrong = fixture("server.key");
        let e = over_tls(
            &endpoint,
            &TlsFiles {
                ca: Some(ca),
                client: Some((cert, wrong)),
            },
            &no_proxy(),
        );
        assert!(e.is_err(), "a mismatched key");
    }

    /// A proxy that refuses the tunnel (407: no or wrong credentials) is a refusal, not worth
    /// sending again; one in trouble (503) may pass, and is.
    #[cfg(feature = "tls")]
    #[test]
    fn a_proxy_refusing_the_tunnel_is_a_refusal() {
        use tokio::io::AsyncWriteExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = listener.local_addr().unwrap();
        let answers: [&[u8]; 2] = [
            b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
        ];
        let server = serve(listener, move |listener| async move {
            for answer in answers {
                let (mut client, _) = listener.accept().await.unwrap();
                read_head(&mut client).await;
                client.write_all(answer).await.unwrap();
            }
        });
        let proxies = Matcher::builder().https(format!("http://{proxy}")).build();
        let mut t = over_tls(
            "https://localhost:4318/v1/traces",
            &trusting(fixture("ca.pem")),
            &proxies,
        )
        .unwrap();
        let body = Bytes::from_static(b"spans, encoded");
        let refused = t.post(&body).unwrap_err();
        assert_eq!(refused.kind, FailureKind::Refused, "{refused:?}");
        assert!(refused.message.contains("407"), "{refused:?}");
        let trouble = t.post(&body).unwrap_err();
        assert_eq!(trouble.kind, FailureKind::Unreachable, "{trouble:?}");
        assert!(trouble.message.contains("503"), "{trouble:?}");
        server.join().unwrap();
    }

    /// A redirection's `Location`, absolute or an absolute path; nothing else is followed.
    #[test]
    fn redirect_targets() {
        let from = "http://collector:4318/v1/traces";
        assert_eq!(
            redirect_target(from, "https://other:443/v1/traces").as_deref(),
            Some("https://other:443/v1/traces")
        );
        assert_eq!(
            redirect_target(from, " /v2/traces ").as_deref(),
            Some("http://collector:4318/v2/traces")
        );
        for refused in ["ftp://x/y", "v2/traces", "//other/v1/traces", "", "http://"] {
            assert_eq!(redirect_target(from, refused), None, "{refused:?}");
        }
        assert!(same_host(from, "https://Collector/v1/traces"));
        assert!(same_host(from, "http://collector:4319/v1/traces"));
        assert!(!same_host(from, "http://other:4318/v1/traces"));
        assert!(!same_host(
            "https://collector/v1/traces",
            "http://collector/v1/traces"
        ));
    }

    /// `Retry-After` in both of its forms: seconds, and an HTTP-date (no wait once passed).
    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(retry_after(" 120 "), Some(Duration::from_secs(120)));
        let in_an_hour =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
        let wait = retry_after(&in_an_hour).unwrap();
        assert!(
            wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600),
            "{wait:?}"
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }

    /// A collector that redirects every export temporarily to the same place: the endpoint is
    /// asked each time, and the target's transport (its connection) is made once; when the
    /// endpoint redirects elsewhere, it is followed there.
    #[test]
    fn a_repeated_temporary_redirection_reuses_its_target_s_connection() {
        let (b, b_seen) = keeping(vec![OK; 3]);
        let (a, a_seen) = keeping(vec![temporary_redirect(b); 3]);
        let mut t = via(&format!("http://{a}/v1/traces"), &no_proxy()).unwrap();
        for i in 0..3u8 {
            let status = t.post(&Bytes::from(vec![i; 10])).map(|a| a.status);
            assert_eq!(status, Ok(StatusCode::OK), "export {i}");
        }
        let (a_connections, a_seen) = a_seen.join().unwrap();
        assert_eq!(
            (a_connections, a_seen.len()),
            (1, 3),
            "the endpoint, asked each time"
        );
        let (b_connections, b_seen) = b_seen.join().unwrap();
        assert_eq!(
            b_connections, 1,
            "one connection to the target for every export"
        );
        for (i, (head, body)) in b_seen.iter().enumerate() {
            assert!(head.contains(&format!("host: {b}")), "{head}");
            assert_eq!(body, &vec![i as u8; 10]);
        }

        // The endpoint sends the next export elsewhere: it goes there.
        let (b, b_seen) = keeping(vec![OK]);
        let (c, c_seen) = keeping(vec![OK]);
        let (a, _) = keeping(vec![temporary_redirect(b), temporary_redirect(c)]);
        let mut t = via(&format!("http://{a}/v1/traces"), &no_proxy()).unwrap();
        for i in 0..2u8 {
            let status = t.post(&Bytes::from(vec![i; 10])).map(|a| a.status);
            assert_eq!(status, Ok(StatusCode::OK), "export {i}");
        }
        assert_eq!(b_seen.join().unwrap().1[0].1, vec![0u8; 10]);
        assert_eq!(c_seen.join().unwrap().1[0].1, vec![1u8; 10]);
    }

    /// Against a collector that closes every connection after one answer, every export still
    /// succeeds, on a new connection.
    #[test]
    fn a_connection_the_collector_closed_is_replaced() {
        let (addr, server) = collector(3);
        let mut t = via(&format!("http://{addr}/v1/traces"), &no_proxy()).unwrap();
        for i in 0..3u8 {
            let status = t
                .post(&Bytes::from(vec![i; 100 + i as usize]))
                .map(|a| a.status);
            assert_eq!(status, Ok(StatusCode::OK), "export {i}");
        }
        let seen = server.join().unwrap();
        for (i, (head, body)) in seen.iter().enumerate() {
            assert!(head.starts_with("post /v1/traces http/1.1"), "{head}");
            assert!(head.contains(&format!("host: {addr}")), "{head}");
            assert_eq!(body, &vec![i as u8; 100 + i], "body {i}");
        }
    }
}
