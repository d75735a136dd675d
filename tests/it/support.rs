//! Shared test helpers: a counting allocator, a local Prometheus registry, a capturing observer,
//! a synchronous driver for futures that never wait, and processes for the real tools.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Body;
use towerscope::lifecycle::{End, ObserveLayer, Observer, RequestMeta};
use towerscope::metrics::{Prometheus, Red, RedBuilder};

// ---- log lines ----

/// A log writer keeping every byte written, shared by its clones.
#[derive(Clone, Default)]
pub struct Lines(pub Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

// ---- allocation counting (per thread, so parallel tests do not disturb each other) ----

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}

// ---- driving futures and bodies that are always ready ----

/// Polls a future that never waits to completion on this thread.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Reads a body that never waits to its end, returning the data length.
pub fn drain_sync<B: Body + Unpin>(mut body: B) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    let mut n = 0;
    loop {
        match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    n += bytes::Buf::remaining(d);
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => return n,
            Poll::Pending => continue,
        }
    }
}

/// Collects a body on the runtime.
pub async fn collect<B>(body: B) -> Bytes
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    body.collect().await.expect("body").to_bytes()
}

// ---- serving and calling over HTTP/1 and HTTP/2 ----

/// Serves `app` on a free loopback port (HTTP/1, and HTTP/2 with prior knowledge, as
/// `axum::serve` does), with the peer's address available to layers.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    addr
}

/// Serves `app` as [`serve`] does, with the peer's address kept per connection
/// (`towerscope::lifecycle::WithPeer`) instead of axum's `ConnectInfo` extension.
pub async fn serve_with_peer(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        async move { axum::serve(listener, towerscope::lifecycle::WithPeer::new(app)).await },
    );
    addr
}

/// One HTTP/1 connection to `addr`, for requests with bodies of type `B`.
pub async fn h1_connect<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(conn);
    send
}

/// One HTTP/2 connection (cleartext, prior knowledge) to `addr`: each request is a stream on
/// it. Dropping a response (or its body) before the end resets that stream alone.
pub async fn h2_connect<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

/// A request without a body to `path` on `addr`, as an absolute URL (over HTTP/2 its authority
/// is the `:authority` pseudo-header).
pub fn empty_request(
    method: http::Method,
    addr: SocketAddr,
    path: &str,
) -> http::Request<http_body_util::Empty<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(http_body_util::Empty::new())
        .unwrap()
}

// ---- a local Prometheus registry ----

/// A RED builder that records into a fresh, private Prometheus registry.
pub fn local_red() -> (RedBuilder, Prometheus) {
    let (recorder, prometheus) = Prometheus::builder().build();
    (Red::builder().recorder(Arc::new(recorder)), prometheus)
}

/// The value of the series `name{labels}` whose label set is exactly `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let mut got: Vec<(&str, &str)> = if rest.is_empty() {
            vec![]
        } else {
            rest.split("\",")
                .map(|kv| {
                    let (k, v) = kv.split_once("=\"").expect("label");
                    (k, v.trim_end_matches('"'))
                })
                .collect()
        };
        let mut want = labels.to_vec();
        got.sort();
        want.sort();
        (got == want).then(|| value.parse().expect("number"))
    })
}

/// The number of series (sample lines) in an exposition.
pub fn series_count(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

// ---- an observer that captures every end ----

/// Records each request's end.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<End>>>);

impl Capture {
    pub fn layer() -> (ObserveLayer<Capture>, Capture) {
        let c = Capture::default();
        (ObserveLayer::with_observer(c.clone()), c)
    }

    pub fn ends(&self) -> Vec<End> {
        self.0.lock().unwrap().clone()
    }

    /// The ends once there are at least `n` (a stream the client resets reaches the server a
    /// little after the client lets go); fails after five seconds.
    pub async fn wait_for(&self, n: usize) -> Vec<End> {
        for _ in 0..500 {
            let ends = self.ends();
            if ends.len() >= n {
                return ends;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} requests never ended: {:?}", self.ends());
    }
}

impl Observer for Capture {
    type Route = Capture;
    type Observation = ();
    fn route(&self, _: Option<&str>) -> Capture {
        self.clone()
    }
    fn start<B>(&self, _: &Capture, _: &mut http::Request<B>, _: &RequestMeta<'_>) {}
    fn end(route: &Capture, _: (), end: &End) {
        route.0.lock().unwrap().push(*end);
    }
}

// ---- processes: the example server and the real tools ----

/// The example server, built by `cargo test` beside this binary.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --example {name}` (cargo test builds it)",
        path.display()
    );
    path
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the example server on a free port and returns it with its address.
pub fn start_server(stack: &str) -> (Proc, SocketAddr) {
    start_server_with(stack, &[])
}

/// The same, with more arguments.
pub fn start_server_with(stack: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let (server, addr, _) = start_server_logs(stack, extra, &[]);
    (server, addr)
}

/// The example server's command on a free port, its stdout piped: `stack`, two workers,
/// `extra` arguments, `RUST_LOG=info` (the "listening" record is INFO: a `RUST_LOG` above that
/// in the test's environment would hide it, and the address with it).
pub fn example_server(stack: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(example_binary("server"));
    command
        .args(["--addr", "127.0.0.1:0", "--stack", stack, "--workers", "2"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// The same, with environment variables for the server, and the lines it writes on stdout
/// after it listens (its JSON logs).
pub fn start_server_logs(
    stack: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Proc, SocketAddr, std::sync::mpsc::Receiver<String>) {
    let mut child = example_server(stack, extra)
        .envs(env.iter().copied())
        .spawn()
        .expect("start the example server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .expect("read stdout");
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if v["message"] == "listening" {
            break v["addr"]
                .as_str()
                .expect("addr")
                .parse()
                .expect("socket addr");
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe (nobody may be
    // listening for the lines).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.by_ref().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Proc(child), addr, rx)
}

/// A minimal HTTP/1.1 request over a fresh connection: (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_json(addr, method, path, None)
}

/// The same, with an optional JSON body.
pub fn http_json(addr: SocketAddr, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
    request(addr, method, path, &[], json)
}

/// The same, with request headers and no body.
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    request(addr, method, path, headers, None)
}

/// One request: headers and an optional JSON body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = match json {
        Some(j) => format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{j}",
            j.len()
        ),
        None => "\r\n".to_owned(),
    };
    let headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}{body}"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fails loudly when a tool the test needs is not installed.
pub fn require_tool(tool: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{tool}` is not installed: run scripts/test.sh (it installs the Debian package)")
    })
}

/// Retries `f` until it returns `Some` or the deadline passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `promtool check metrics` over an exposition; panics unless it passes with no report.
pub fn promtool_check(text: &str, what: &str) {
    let promtool = require_tool("promtool");
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: promtool: {report}\n{text}");
    assert!(
        report.trim().is_empty(),
        "{what}: promtool reported: {report}\n{text}"
    );
}

// ---- a private PostgreSQL server ----

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub use postgres::Postgres;

/// Percent-encodes a query parameter value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---- a real Prometheus server ----

/// A real Prometheus with the given configuration, in a temp dir, on a free loopback port;
/// stopped and removed on drop.
pub struct PrometheusServer {
    _proc: Proc,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl PrometheusServer {
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    /// The same, with more arguments (`--enable-feature=…`).
    pub fn start_with(config: &str, extra: &[&str]) -> Self {
        let prometheus = require_tool("prometheus");
        let dir = std::env::temp_dir().join(format!(
            "towerscope-prom-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Self {
            _proc: Proc(child),
            addr,
            dir,
        }
    }

    /// The answer to an instant query: `None` until Prometheus listens; once it answers, the
    /// query must succeed.
    pub fn query(&self, q: &str) -> Option<serde_json::Value> {
        TcpStream::connect(self.addr).ok()?;
        let (status, body) = http(
            self.addr,
            "GET",
            &format!("/api/v1/query?query={}", urlencode(q)),
        );
        let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
        assert_eq!(status, 200, "{q}: {body}");
        assert_eq!(v["status"], "success", "{q}: {body}");
        Some(v)
    }

    /// The exemplars of a selector over the last hour (`/api/v1/query_exemplars`): `None`
    /// until Prometheus listens.
    pub fn exemplars(&self, selector: &str) -> Option<serde_json::Value> {
        TcpStream::connect(self.addr).ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let path = format!(
            "/api/v1/query_exemplars?query={}&start={}&end={}",
            urlencode(selector),
            now - 3600,
            now + 60
        );
        let (status, body) = http(self.addr, "GET", &path);
        let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
        assert_eq!(status, 200, "{selector}: {body}");
        assert_eq!(v["status"], "success", "{selector}: {body}");
        Some(v)
    }

    /// The first sample's value of an instant query.
    pub fn value(&self, q: &str) -> Option<f64> {
        let v = self.query(q)?;
        v["data"]["result"].get(0)?["value"][1]
            .as_str()?
            .parse()
            .ok()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
