//! The OTLP/HTTP transport: one kept-alive HTTP/1.1 connection to the collector (or to the
//! proxy the environment names for it), driven by a current-thread runtime on the export
//! thread itself.
//!
//! hyper's connection API rather than a whole client, for performance: reqwest's blocking
//! client ran a runtime on a thread of its own, and every batch went to that thread and back.
//! On the example server, exporting every request with the whole server on one core, the
//! export's CPU time per request fell from about 500 to 390 ns with this transport
//! (BENCHMARKS.md, session 17). What a client adds beyond one
//! connection (a pool, redirects, TLS in this build) an exporter does not use; the proxy
//! environment variables are honoured with hyper-util's matcher, as reqwest does.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;

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
    /// Built on the export thread at its first export: a runtime must not be started, or
    /// dropped, on a thread that runs the application's.
    runtime: Option<tokio::runtime::Runtime>,
    conn: Option<Conn>,
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
    /// For `endpoint` (an `http://` URL), with `headers` on every request and `timeout` for
    /// each export (connecting, sending and reading the answer).
    pub(crate) fn new(
        endpoint: &str,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<Self, String> {
        Self::with_proxies(endpoint, headers, timeout, &Matcher::from_env())
    }

    fn with_proxies(
        endpoint: &str,
        headers: &[(String, String)],
        timeout: Duration,
        proxies: &Matcher,
    ) -> Result<Self, String> {
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| format!("OTLP endpoint {endpoint:?}: {e}"))?;
        let (host, port) =
            http_authority(&uri).map_err(|e| format!("OTLP endpoint {endpoint:?}: {e}"))?;
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
        let (target, host, port) = match proxies.intercept(&uri) {
            Some(proxy) => {
                let (h, p) = http_authority(proxy.uri())
                    .map_err(|e| format!("proxy for the OTLP endpoint {:?}: {e}", proxy.uri()))?;
                if let Some(auth) = proxy.basic_auth() {
                    map.insert(header::PROXY_AUTHORIZATION, auth.clone());
                }
                (uri.clone(), h, p)
            }
            None => {
                let path = uri.path_and_query().map_or("/", |p| p.as_str());
                (Uri::try_from(path).map_err(|e| e.to_string())?, host, port)
            }
        };
        Ok(Self {
            endpoint: endpoint.to_owned(),
            target,
            host,
            port,
            headers: map,
            timeout,
            runtime: None,
            conn: None,
        })
    }

    /// Posts `body` (shared with the connection, not copied); the collector's answer status, or
    /// what went wrong.
    ///
    /// A kept connection may have been closed by the collector since the last export (an idle
    /// timeout): when a request on it fails before an answer, it is sent once more on a new
    /// connection. Delivery is at least once, as with any OTLP retry.
    pub(crate) fn post(&mut self, body: &Bytes) -> Result<StatusCode, String> {
        if self.runtime.is_none() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|e| format!("OTLP export: its runtime: {e}"))?;
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
        let conn = &mut self.conn;
        let runtime = self.runtime.as_ref().expect("built above");
        let result = runtime.block_on(async {
            let attempt = async {
                if let Some(kept) = conn.as_mut() {
                    if let Ok(status) = kept.send(request()).await {
                        return Ok(status);
                    }
                }
                *conn = None;
                let fresh = conn.insert(Conn::open(host, port).await?);
                fresh
                    .send(request())
                    .await
                    .map_err(|e| format!("OTLP export: {e}"))
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(format!("OTLP export: no answer within {timeout:?}")),
            }
        });
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

impl Conn {
    async fn open(host: &str, port: u16) -> Result<Self, String> {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("OTLP export: connecting to {host}:{port}: {e}"))?;
        // The head and the body go out in one write; no small segment waits on an ACK.
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("OTLP export: {e}"))?;
        let task = tokio::spawn(connection).abort_handle();
        Ok(Self { sender, task })
    }

    /// Sends one request and reads its answer to the end (so the connection can be kept).
    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<StatusCode, hyper::Error> {
        self.sender.ready().await?;
        let response = self.sender.send_request(req).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok(status)
    }
}

/// Host and port of an `http://` URL (port 80 by default).
fn http_authority(uri: &Uri) -> Result<(String, u16), String> {
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "https needs TLS, which towerscope's exporter does not have: use \
                        http:// (a collector or agent on the node or in the cluster)"
                    .to_owned(),
            )
        }
        _ => return Err("not an http:// URL".to_owned()),
    }
    let host = uri.host().filter(|h| !h.is_empty()).ok_or("no host")?;
    // `[::1]` connects as `::1`.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(80)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A transport to `endpoint` through `proxies` (none with an empty builder).
    fn via(endpoint: &str, proxies: &Matcher) -> Result<Transport, String> {
        Transport::with_proxies(endpoint, &[], Duration::from_secs(1), proxies)
    }

    fn no_proxy() -> Matcher {
        Matcher::builder().build()
    }

    /// Each request's head (lower-cased) and body.
    pub(crate) type Seen = Vec<(String, Vec<u8>)>;

    /// A collector on a free loopback port that takes `n` connections, one request each: it
    /// reads the head and as many body bytes as its `content-length` says, answers 200 and
    /// closes the connection without saying so (as after an idle timeout). Returns its address
    /// and, once it is done, each request's head (lower-cased) and body.
    pub(crate) fn collector(n: usize) -> (std::net::SocketAddr, std::thread::JoinHandle<Seen>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..n {
                let (mut s, _) = listener.accept().unwrap();
                let mut got = Vec::new();
                let mut chunk = [0u8; 1024];
                let request = loop {
                    let n = s.read(&mut chunk).unwrap();
                    got.extend_from_slice(&chunk[..n]);
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .unwrap()
                            .trim()
                            .parse()
                            .unwrap();
                        while got.len() < end + 4 + len {
                            let n = s.read(&mut chunk).unwrap();
                            got.extend_from_slice(&chunk[..n]);
                        }
                        break (head, got[end + 4..].to_vec());
                    }
                };
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .unwrap();
                seen.push(request);
            }
            seen
        });
        (addr, server)
    }

    #[test]
    fn origin_form_target_and_host_header() {
        let t = Transport::with_proxies(
            "http://collector:4318/v1/traces",
            &[("x-api-key".into(), "k".into())],
            Duration::from_secs(1),
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
        for (endpoint, why) in [
            ("https://collector:4318/v1/traces", "TLS"),
            ("collector:4318/v1/traces", "OTLP endpoint"),
            ("ftp://collector/v1/traces", "not an http:// URL"),
            ("http://", "OTLP endpoint"),
            ("not a url", "OTLP endpoint"),
        ] {
            let e = via(endpoint, &no_proxy()).unwrap_err();
            assert!(e.contains(why), "{endpoint}: {e}");
        }
    }

    /// Against a collector that closes every connection after one answer, every export still
    /// succeeds, on a new connection.
    #[test]
    fn a_connection_the_collector_closed_is_replaced() {
        let (addr, server) = collector(3);
        let mut t = via(&format!("http://{addr}/v1/traces"), &no_proxy()).unwrap();
        for i in 0..3u8 {
            let status = t.post(&Bytes::from(vec![i; 100 + i as usize]));
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
