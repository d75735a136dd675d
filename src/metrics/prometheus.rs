//! The Prometheus endpoint: a `metrics` recorder from metrics-exporter-prometheus, rendered in
//! the text exposition format 0.0.4 on a blocking thread (gzip-compressed when the scraper
//! asks, as Prometheus does), with periodic histogram upkeep.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use metrics_exporter_prometheus::{Matcher, PrometheusHandle};

use super::fast::{Store, TowerscopeRecorder};
use crate::lifecycle::headers::weighed;
use tower_service::Service;

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Default buckets of every towerscope `*_duration_seconds` histogram, in seconds (the
/// OpenTelemetry HTTP semantic conventions' advice).
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Default buckets of every towerscope `*_size_bytes` histogram: powers of four from 64 B to
/// 64 MiB.
pub const SIZE_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];

/// Buckets of `db_client_operation_duration_seconds`, in seconds (the OpenTelemetry database
/// semantic conventions' advice), set by default on every [`PrometheusBuilder`].
pub const DB_DURATION_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// A Prometheus registry: renders what towerscope (and anything else using the `metrics`
/// facade) recorded.
///
/// ```no_run
/// use towerscope::metrics::Prometheus;
/// // Global: every `metrics` call in the process lands here.
/// let prometheus = Prometheus::install().expect("no other recorder installed");
/// let router: axum::Router = prometheus.router(); // GET /metrics
/// ```
#[derive(Clone)]
pub struct Prometheus {
    inner: Arc<PrometheusHandle>,
    store: Arc<Store>,
    gzip: bool,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus").finish_non_exhaustive()
    }
}

/// Settings of the Prometheus recorder.
#[derive(Debug, Clone)]
pub struct PrometheusBuilder {
    duration_buckets: Vec<f64>,
    size_buckets: Vec<f64>,
    upkeep_interval: Duration,
    global_labels: Vec<(String, String)>,
    by_name: Vec<(String, Vec<f64>)>,
    gzip: bool,
}

impl Default for PrometheusBuilder {
    fn default() -> Self {
        Self {
            duration_buckets: DURATION_BUCKETS.to_vec(),
            size_buckets: SIZE_BUCKETS.to_vec(),
            upkeep_interval: Duration::from_secs(5),
            global_labels: Vec::new(),
            by_name: vec![(
                "db_client_operation_duration_seconds".to_owned(),
                DB_DURATION_BUCKETS.to_vec(),
            )],
            gzip: true,
        }
    }
}

/// The error of [`Prometheus::install`]: another global recorder is installed already.
#[derive(Debug)]
pub struct InstallError(());

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a global `metrics` recorder is already installed")
    }
}

impl std::error::Error for InstallError {}

impl PrometheusBuilder {
    /// Buckets of every histogram whose name ends in `_duration_seconds` (default
    /// [`DURATION_BUCKETS`]). Empty input keeps the default.
    pub fn duration_buckets(mut self, buckets: &[f64]) -> Self {
        if !buckets.is_empty() {
            self.duration_buckets = buckets.to_vec();
        }
        self
    }

    /// Buckets of every histogram whose name ends in `_size_bytes` (default [`SIZE_BUCKETS`]).
    pub fn size_buckets(mut self, buckets: &[f64]) -> Self {
        if !buckets.is_empty() {
            self.size_buckets = buckets.to_vec();
        }
        self
    }

    /// Buckets of the histogram named exactly `name`, taking precedence over the suffix rules
    /// (by default `db_client_operation_duration_seconds` has [`DB_DURATION_BUCKETS`]). Empty
    /// input keeps what was set.
    pub fn buckets_for(mut self, name: impl Into<String>, buckets: &[f64]) -> Self {
        let name = name.into();
        if !buckets.is_empty() {
            self.by_name.retain(|(n, _)| *n != name);
            self.by_name.push((name, buckets.to_vec()));
        }
        self
    }

    /// How often histogram storage is compacted when nobody scrapes (default 5 s).
    pub fn upkeep_interval(mut self, interval: Duration) -> Self {
        self.upkeep_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Whether the endpoint compresses its answer with gzip for a scraper that accepts it
    /// (`Accept-Encoding`; Prometheus sends `gzip` on every scrape). On by default, as in the
    /// Prometheus Go client: the text of a service with a few dozen routes is hundreds of
    /// kilobytes a scrape, and compresses about tenfold.
    pub fn compression(mut self, gzip: bool) -> Self {
        self.gzip = gzip;
        self
    }

    /// A label added to every series at render time.
    pub fn global_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.global_labels.push((key.into(), value.into()));
        self
    }

    /// The recorder, not installed, and its renderer: for a non-global registry (tests,
    /// several registries) or to wrap the recorder in layers before installing it. Starts the
    /// upkeep thread, which ends when the last [`Prometheus`] clone is dropped.
    ///
    /// Counters, gauges and the histograms with configured buckets are kept in towerscope's
    /// own sharded storage (see `TowerscopeRecorder`); other histograms (summaries) in
    /// metrics-exporter-prometheus. Both are rendered together.
    ///
    /// A gauge whose name is described as a counter (`describe_counter!`) is rendered as a
    /// counter: the `metrics` facade's counters are integers, so a counter with a fraction,
    /// such as `process_cpu_seconds_total`, is set through a gauge to its total.
    pub fn build(self) -> (TowerscopeRecorder, Prometheus) {
        let interval = self.upkeep_interval;
        let mut b = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_duration_seconds".into()),
                &self.duration_buckets,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix("_size_bytes".into()), &self.size_buckets)
            })
            .expect("bucket lists are never empty");
        for (name, buckets) in &self.by_name {
            b = b
                .set_buckets_for_metric(Matcher::Full(name.clone()), buckets)
                .expect("bucket lists are never empty");
        }
        for (k, v) in &self.global_labels {
            b = b.add_global_label(k, v);
        }
        let inner = b.build_recorder();
        let store = Arc::new(Store::new(
            &self.duration_buckets,
            &self.size_buckets,
            self.by_name,
            self.global_labels,
        ));
        super::fast::track(&store);
        let prometheus = Prometheus {
            inner: Arc::new(inner.handle()),
            store: store.clone(),
            gzip: self.gzip,
        };
        spawn_upkeep(Arc::downgrade(&prometheus.inner), interval);
        (TowerscopeRecorder { inner, store }, prometheus)
    }

    /// Installs the recorder as the global `metrics` recorder. Fails (never panics) when one
    /// is installed already.
    pub fn install(self) -> Result<Prometheus, InstallError> {
        let (recorder, prometheus) = self.build();
        metrics::set_global_recorder(recorder).map_err(|_| InstallError(()))?;
        Ok(prometheus)
    }
}

fn render(handle: &PrometheusHandle, store: &Store) -> String {
    let mut text = handle.render();
    if !text.is_empty() && !text.ends_with("\n\n") {
        text.push('\n');
    }
    text.push_str(&store.render());
    text
}

fn spawn_upkeep(handle: Weak<PrometheusHandle>, interval: Duration) {
    // A plain thread: upkeep is short, synchronous work, and must run even without a runtime.
    let spawned = std::thread::Builder::new()
        .name("towerscope-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            match handle.upgrade() {
                Some(h) => h.run_upkeep(),
                None => return,
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
    }
}

impl Prometheus {
    /// Settings.
    pub fn builder() -> PrometheusBuilder {
        PrometheusBuilder::default()
    }

    /// Installs a global recorder with the default settings.
    pub fn install() -> Result<Self, InstallError> {
        Self::builder().install()
    }

    /// The exposition text, rendered on the calling thread.
    pub fn render(&self) -> String {
        render(&self.inner, &self.store)
    }

    /// The `/metrics` response, uncompressed, rendered on tokio's blocking pool so a large
    /// registry never stalls an async worker.
    pub async fn response(&self) -> Response<Full<Bytes>> {
        self.answer(false).await
    }

    /// The `/metrics` response to a request with these headers: gzip-compressed when its
    /// `Accept-Encoding` takes gzip and [compression](PrometheusBuilder::compression) is on,
    /// rendered and compressed on tokio's blocking pool. What the router and the service
    /// answer.
    pub async fn response_to(&self, request: &HeaderMap) -> Response<Full<Bytes>> {
        self.answer(self.gzip && accepts_gzip(request)).await
    }

    async fn answer(&self, gzip: bool) -> Response<Full<Bytes>> {
        let (handle, store) = (self.inner.clone(), self.store.clone());
        let rendered = tokio::task::spawn_blocking(move || {
            let text = render(&handle, &store);
            if gzip {
                let mut out = Vec::with_capacity(text.len() / 8);
                crate::gzip::gzip(text.as_bytes(), &mut out);
                Bytes::from(out)
            } else {
                Bytes::from(text)
            }
        });
        match rendered.await {
            Ok(body) => {
                let mut res = Response::new(Full::new(body));
                let headers = res.headers_mut();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
                if gzip {
                    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                }
                if self.gzip {
                    // The answer depends on the request's `Accept-Encoding`: caches must know.
                    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
                }
                res
            }
            Err(_) => {
                let mut res = Response::new(Full::new(Bytes::from_static(b"render failed\n")));
                *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                res
            }
        }
    }

    /// An axum router serving `GET /metrics`; merge it into the main router or serve it on an
    /// admin listener.
    #[cfg(feature = "axum")]
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        self.router_at("/metrics")
    }

    /// An axum router serving the metrics at another path.
    #[cfg(feature = "axum")]
    pub fn router_at<S: Clone + Send + Sync + 'static>(&self, path: &str) -> axum::Router<S> {
        let this = self.clone();
        axum::Router::new().route(
            path,
            axum::routing::get(move |headers: HeaderMap| {
                let this = this.clone();
                async move { this.response_to(&headers).await }
            }),
        )
    }

    /// A plain Tower service answering every request with the metrics, for Hyper users.
    pub fn service(&self) -> MetricsService {
        MetricsService {
            prometheus: self.clone(),
        }
    }
}

/// A Tower service that answers with the exposition text.
#[derive(Debug, Clone)]
pub struct MetricsService {
    prometheus: Prometheus,
}

impl<B> Service<Request<B>> for MetricsService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // One scrape every few seconds: a boxed future is fine off the request path.
        let p = self.prometheus.clone();
        let (parts, _) = req.into_parts();
        Box::pin(async move { Ok(p.response_to(&parts.headers).await) })
    }
}

/// Whether `Accept-Encoding` takes gzip (RFC 9110, section 12.5.3): `gzip` (or `x-gzip`), else
/// `*`, with a weight above zero, unless the header names `identity` with a higher weight. An
/// element whose weight does not parse is left out.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let (mut gzip, mut identity, mut any) = (None::<f32>, None::<f32>, None::<f32>);
    for (coding, weight) in weighed(headers, header::ACCEPT_ENCODING) {
        let slot = if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            &mut gzip
        } else if coding.eq_ignore_ascii_case("identity") {
            &mut identity
        } else if coding == "*" {
            &mut any
        } else {
            continue;
        };
        // Named twice: the higher weight.
        *slot = Some(slot.map_or(weight, |w| w.max(weight)));
    }
    let gzip = gzip.or(any).unwrap_or(0.0);
    gzip > 0.0 && identity.is_none_or(|identity| gzip >= identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Read;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn accept_encoding_is_weighed() {
        for (values, gzip) in [
            (&[][..], false),
            (&["gzip"][..], true),
            // What Prometheus and browsers send.
            (&["gzip, deflate, br"][..], true),
            (&["GZIP;Q=0.5"][..], true),
            (&["x-gzip"][..], true),
            (&["*"][..], true),
            (&["identity"][..], false),
            (&["br, deflate"][..], false),
            (&["gzip;q=0"][..], false),
            (&["gzip;q=0.000"][..], false),
            (&["*;q=0"][..], false),
            // gzip refused by name, whatever `*` says.
            (&["gzip;q=0, *"][..], false),
            (&["*, gzip;q=0"][..], false),
            // identity preferred.
            (&["identity, gzip;q=0.5"][..], false),
            (&["identity;q=0.5, gzip"][..], true),
            (&["*;q=0.5, gzip;q=0.4"][..], true),
            (&["identity;q=0.5, *;q=0.4"][..], false),
            // A weight that does not parse leaves its element out.
            (&["gzip;q=high"][..], false),
            (&["gzip;q=2"][..], false),
            (&["deflate", "gzip"][..], true),
            (&[" , ;q=1, gzip ; q=0.8 "][..], true),
        ] {
            assert_eq!(accepts_gzip(&headers(values)), gzip, "{values:?}");
        }
    }

    async fn body(res: Response<Full<Bytes>>) -> (HeaderMap, Vec<u8>) {
        let (parts, body) = res.into_parts();
        (
            parts.headers,
            body.collect().await.unwrap().to_bytes().to_vec(),
        )
    }

    #[tokio::test]
    async fn the_answer_is_gzipped_when_the_scraper_asks() {
        let (recorder, prometheus) = PrometheusBuilder::default().build();
        metrics::with_local_recorder(&recorder, || {
            for route in 0..200 {
                metrics::counter!("requests_total", "route" => format!("/r/{route}"))
                    .increment(route);
            }
        });
        let text = prometheus.render();
        assert!(
            text.contains("requests_total{route=\"/r/199\"} 199"),
            "{text}"
        );

        let (h, gzipped) = body(prometheus.response_to(&headers(&["gzip"])).await).await;
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        assert_eq!(h[header::VARY], "accept-encoding");
        assert_eq!(h[header::CONTENT_TYPE], CONTENT_TYPE);
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&gzipped[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, text);
        assert!(
            gzipped.len() * 4 < text.len(),
            "{} bytes for {}",
            gzipped.len(),
            text.len()
        );

        let (h, plain) = body(prometheus.response_to(&headers(&["identity"])).await).await;
        assert!(h.get(header::CONTENT_ENCODING).is_none());
        assert_eq!(h[header::VARY], "accept-encoding");
        assert_eq!(plain, text.as_bytes());
        let (h, plain) = body(prometheus.response().await).await;
        assert!(h.get(header::CONTENT_ENCODING).is_none());
        assert_eq!(plain, text.as_bytes());

        // The service reads the request's headers too.
        let mut service = prometheus.service();
        let req = Request::get("/metrics")
            .header(header::ACCEPT_ENCODING, "gzip")
            .body(())
            .unwrap();
        let (h, _) = body(service.call(req).await.unwrap()).await;
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");

        // Compression off: never gzipped, and nothing varies.
        let (_, off) = PrometheusBuilder::default().compression(false).build();
        let (h, _) = body(off.response_to(&headers(&["gzip"])).await).await;
        assert!(h.get(header::CONTENT_ENCODING).is_none());
        assert!(h.get(header::VARY).is_none());
    }
}
