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

/// `Content-Type` of the OpenMetrics exposition (see [`PrometheusBuilder::exemplars`]).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
    exemplars: bool,
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
            exemplars: false,
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

    /// Exemplars: each bucket of `http_server_request_duration_seconds` keeps the trace of the
    /// last sampled request that fell in it (its trace and server span ids, value and time),
    /// each of `http_client_request_duration_seconds` the last sampled call's client span, and
    /// each of `db_client_operation_duration_seconds` the trace the query ran in, so a latency
    /// graph links to the traces behind it (Grafana's exemplars, from Prometheus run with
    /// `--enable-feature=exemplar-storage`). The text format has no exemplars: with this on,
    /// `/metrics` answers OpenMetrics 1.0 to a scraper that prefers it (`Accept`; Prometheus
    /// does), the text format to others. Off by default, as in the Prometheus Go client. Needs
    /// the server spans of [`crate::trace`] in the same `ObserveLayer` as the RED observer.
    pub fn exemplars(mut self, on: bool) -> Self {
        self.exemplars = on;
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
        // Named as the exposition writes them, as a series' own labels are recorded (see
        // `fast::canonical`), so a series' own label of that name replaces the global one.
        let global_labels: Vec<(String, String)> = self
            .global_labels
            .into_iter()
            .map(|(k, v)| {
                let mut name = String::new();
                super::fast::label_name(&mut name, &k);
                (name, v)
            })
            .collect();
        for (k, v) in &global_labels {
            b = b.add_global_label(k, v);
        }
        let inner = b.build_recorder();
        let store = Arc::new(Store::new(
            &self.duration_buckets,
            &self.size_buckets,
            self.by_name,
            global_labels,
            self.exemplars,
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

/// The exposition: metrics-exporter-prometheus's part (summaries, names it sanitises), then
/// the store's; in OpenMetrics 1.0 when `om` (the exporter's text converted, `# EOF` last).
fn render(handle: &PrometheusHandle, store: &Store, om: bool) -> String {
    let mut text = handle.render();
    if om {
        let mut out = String::with_capacity(text.len());
        openmetrics_from_text(&text, &mut out);
        out.push_str(&store.render(true));
        out.push_str("# EOF\n");
        return out;
    }
    if !text.is_empty() && !text.ends_with("\n\n") {
        text.push('\n');
    }
    text.push_str(&store.render(false));
    text
}

/// The text format 0.0.4 as OpenMetrics 1.0 writes it: a counter's family named without
/// `_total` and its samples with it, `"` escaped in `HELP`, no blank lines.
fn openmetrics_from_text(text: &str, out: &mut String) {
    // A `HELP` waits for its `TYPE`, which says whether the family is renamed; the samples of
    // a counter named without `_total` gain it.
    let (mut help, mut suffixed) = (None::<&str>, None::<&str>);
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let family = match kind {
                "counter" => name.strip_suffix("_total").unwrap_or(name),
                _ => name,
            };
            suffixed = (kind == "counter" && family == name).then_some(name);
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str("# HELP ");
                out.push_str(family);
                out.push(' ');
                out.push_str(&text.replace('"', "\\\""));
                out.push('\n');
            }
            out.push_str("# TYPE ");
            out.push_str(family);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
            continue;
        }
        match suffixed {
            Some(name)
                if line.starts_with(name)
                    && matches!(line.as_bytes().get(name.len()), Some(b'{' | b' ')) =>
            {
                out.push_str(name);
                out.push_str("_total");
                out.push_str(&line[name.len()..]);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
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
        render(&self.inner, &self.store, false)
    }

    /// The OpenMetrics 1.0 exposition (with exemplars, when they are kept), rendered on the
    /// calling thread.
    pub fn render_openmetrics(&self) -> String {
        render(&self.inner, &self.store, true)
    }

    /// The `/metrics` response, uncompressed, rendered on tokio's blocking pool so a large
    /// registry never stalls an async worker.
    pub async fn response(&self) -> Response<Full<Bytes>> {
        self.answer(false, false).await
    }

    /// The `/metrics` response to a request with these headers: gzip-compressed when its
    /// `Accept-Encoding` takes gzip and [compression](PrometheusBuilder::compression) is on,
    /// in OpenMetrics when [exemplars](PrometheusBuilder::exemplars) are kept and its
    /// `Accept` prefers it, rendered and compressed on tokio's blocking pool. What the router
    /// and the service answer.
    pub async fn response_to(&self, request: &HeaderMap) -> Response<Full<Bytes>> {
        let om = self.store.exemplars && prefers_openmetrics(request);
        self.answer(self.gzip && accepts_gzip(request), om).await
    }

    async fn answer(&self, gzip: bool, om: bool) -> Response<Full<Bytes>> {
        let (handle, store) = (self.inner.clone(), self.store.clone());
        let rendered = tokio::task::spawn_blocking(move || {
            let text = render(&handle, &store, om);
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
                let content_type = if om {
                    OPENMETRICS_CONTENT_TYPE
                } else {
                    CONTENT_TYPE
                };
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                if gzip {
                    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                }
                // The answer depends on these request headers: caches must know.
                let vary = match (self.gzip, self.store.exemplars) {
                    (true, true) => Some("accept, accept-encoding"),
                    (true, false) => Some("accept-encoding"),
                    (false, true) => Some("accept"),
                    (false, false) => None,
                };
                if let Some(vary) = vary {
                    headers.insert(header::VARY, HeaderValue::from_static(vary));
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

/// Whether `Accept` weighs OpenMetrics above the text format. Prometheus sends
/// `application/openmetrics-text;version=1.0.0,…;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`.
fn prefers_openmetrics(headers: &HeaderMap) -> bool {
    crate::lifecycle::headers::prefers_over_text(headers, &["openmetrics-text"])
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

    #[test]
    fn openmetrics_is_chosen_by_accept() {
        let accept = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            }
            prefers_openmetrics(&h)
        };
        for (values, om) in [
            // Prometheus 2.x, and its text-only setting.
            (
                &["application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"][..],
                true,
            ),
            (&["text/plain;version=0.0.4;q=1,*/*;q=0.1"][..], false),
            (&[][..], false),
            (&["*/*"][..], false),
            (&["application/openmetrics-text"][..], true),
            (&["text/plain, application/openmetrics-text;q=0.5"][..], false),
            (&["application/openmetrics-text;q=0"][..], false),
        ] {
            assert_eq!(accept(values), om, "{values:?}");
        }
    }

    /// The OpenMetrics exposition: counters' families without `_total` and their samples with
    /// it (the exporter's too), `"` escaped in `HELP`, no blank lines, one `TYPE` per family,
    /// exemplars on the buckets they fell in, `# EOF` last; the text format is unchanged.
    #[cfg(feature = "otel")]
    #[tokio::test]
    async fn openmetrics_with_exemplars() {
        let (recorder, prometheus) = PrometheusBuilder::default().exemplars(true).build();
        let exemplar = super::super::fast::Exemplar {
            value: 0.02,
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x00f0_67aa_0ba9_02b7,
            at: 1_700_000_000.5,
        };
        metrics::with_local_recorder(&recorder, || {
            metrics::describe_counter!("jobs_total", "Jobs \"done\".");
            metrics::counter!("jobs_total", "queue" => "mail").increment(2);
            metrics::counter!("runs").increment(1);
            metrics::counter!("a.b").increment(4);
            metrics::gauge!("depth").set(3.0);
            metrics::histogram!("latency_ms").record(7.0);
            // Families OpenMetrics would name twice: `jobs` (the counter `jobs_total`'s, then
            // a gauge's and a counter's), and `lat_ms` (the exporter's summary `lat.ms`, then
            // the counter `lat_ms_total`'s, kept by the store). Refused in both formats.
            metrics::gauge!("jobs").set(9.0);
            metrics::counter!("jobs").increment(9);
            metrics::histogram!("lat.ms").record(1.0);
            metrics::counter!("lat_ms_total").increment(1);
            // Names of their own.
            metrics::gauge!("runs_now").set(5.0);
            metrics::gauge!("a_b_c_total").set(6.0);
            let (h, sink) =
                super::super::fast::with_exemplars(|| metrics::histogram!("x_duration_seconds"));
            h.record(0.02);
            sink.expect("towerscope's histogram").offer(exemplar);
            // Sample names another family writes: the counters `runs` and `a.b` write
            // `runs_total` and `a_b_total`, the histogram `x_duration_seconds` its `_count`.
            metrics::gauge!("runs_total").set(9.0);
            metrics::gauge!("a_b_total").set(9.0);
            metrics::gauge!("x_duration_seconds_count").set(9.0);
        });
        let om = prometheus.render_openmetrics();
        for line in [
            "# HELP jobs Jobs \\\"done\\\".\n# TYPE jobs counter\njobs_total{queue=\"mail\"} 2\n",
            "# TYPE runs counter\nruns_total 1\n",
            "# TYPE a_b counter\na_b_total 4\n",
            "# TYPE depth gauge\ndepth 3\n",
            "# TYPE latency_ms summary\n",
            "x_duration_seconds_bucket{le=\"0.01\"} 0\n",
            "x_duration_seconds_bucket{le=\"0.025\"} 1 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\",span_id=\"00f067aa0ba902b7\"} 0.02 1700000000.500\n",
            "x_duration_seconds_bucket{le=\"0.05\"} 1\n",
        ] {
            assert!(om.contains(line), "{line}\n{om}");
        }
        assert!(om.ends_with("\n# EOF\n") && !om.contains("\n\n"), "{om}");
        let mut families: Vec<&str> = om.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let n = families.len();
        families.sort_unstable();
        families.dedup();
        assert_eq!(families.len(), n, "{om}");

        assert!(
            om.contains("# TYPE lat_ms summary\n") && !om.contains("jobs 9"),
            "{om}"
        );
        let text = prometheus.render();
        assert!(!text.contains(" # {") && !text.contains("# EOF"), "{text}");
        for (format, exposition) in [("text", &text), ("openmetrics", &om)] {
            assert!(
                !exposition.contains(" 9\n") && !exposition.contains("lat_ms_total 1"),
                "{format}: {exposition}"
            );
            assert!(
                exposition.contains("\nruns_now 5\n") && exposition.contains("\na_b_c_total 6\n"),
                "{format}: {exposition}"
            );
            assert!(
                exposition.contains("\nmetrics_series_dropped_total 6\n"),
                "{format}: {exposition}"
            );
        }
        assert!(text.contains("# TYPE jobs_total counter\njobs_total{queue=\"mail\"} 2\n"));

        // Served to a scraper that prefers it, only when exemplars are kept.
        let prefers = |h: &mut HeaderMap| {
            h.insert(
                header::ACCEPT,
                HeaderValue::from_static(
                    "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
                ),
            );
        };
        let mut h = headers(&[]);
        prefers(&mut h);
        let (got, body_om) = body(prometheus.response_to(&h).await).await;
        assert_eq!(got[header::CONTENT_TYPE], OPENMETRICS_CONTENT_TYPE);
        assert_eq!(got[header::VARY], "accept, accept-encoding");
        assert!(body_om.ends_with(b"# EOF\n"));
        let (_, without) = PrometheusBuilder::default().build();
        let (got, _) = body(without.response_to(&h).await).await;
        assert_eq!(got[header::CONTENT_TYPE], CONTENT_TYPE);
    }
}
