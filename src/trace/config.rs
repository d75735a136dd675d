//! Configuration from the standard OpenTelemetry environment variables or from code, and the
//! installed pipeline ([`Tracing`]).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler as SdkSampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use super::export::{ConsoleExporter, ExportCounters, QueueHandle, QueueProcessor, QueueSettings};

/// The name of towerscope's tracer (the instrumentation scope of its spans).
const TRACER: &str = "towerscope";
use super::otlp::{OtlpExporter, OtlpSettings, Retry, TlsFiles};
use super::propagation::Propagators;
use crate::lifecycle::{ForwardedTrust, ProxyHeader};

/// Which spans are recorded (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    /// `always_on`
    AlwaysOn,
    /// `always_off`
    AlwaysOff,
    /// `traceidratio` with the ratio
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default): follow the caller, record new traces
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` with the ratio
    ParentBasedTraceIdRatio(f64),
}

/// A duration setting in whole milliseconds (`OTEL_EXPORTER_OTLP_TIMEOUT`).
pub(crate) fn millis(value: &str) -> Option<Duration> {
    value.trim().parse().ok().map(Duration::from_millis)
}

/// `OTEL_TRACES_SAMPLER_ARG` as a ratio sampler reads it: a number from 0 to 1.
fn ratio(arg: &str) -> Option<f64> {
    arg.trim()
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
}

impl Sampler {
    /// Parses the two variables' values; `None` for an unknown name.
    pub fn parse(name: &str, arg: Option<&str>) -> Option<Self> {
        let ratio = || arg.and_then(ratio).unwrap_or(1.0);
        Some(match name.trim() {
            "always_on" => Self::AlwaysOn,
            "always_off" => Self::AlwaysOff,
            "traceidratio" => Self::TraceIdRatio(ratio()),
            "parentbased_always_on" => Self::ParentBasedAlwaysOn,
            "parentbased_always_off" => Self::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => Self::ParentBasedTraceIdRatio(ratio()),
            _ => return None,
        })
    }

    /// The sampler `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name, with a warning
    /// when one of them is not understood: an unknown sampler is `parentbased_always_on`, a
    /// ratio that is not a number from 0 to 1 is 1.0 (as the specification says).
    pub(crate) fn from_env_values(name: Option<&str>, arg: Option<&str>) -> (Self, Option<String>) {
        let Some(name) = name else {
            return (Self::ParentBasedAlwaysOn, None);
        };
        let Some(sampler) = Self::parse(name, arg) else {
            let warning =
                format!("OTEL_TRACES_SAMPLER={name}: unknown, using parentbased_always_on");
            return (Self::ParentBasedAlwaysOn, Some(warning));
        };
        let takes_ratio = matches!(
            sampler,
            Self::TraceIdRatio(_) | Self::ParentBasedTraceIdRatio(_)
        );
        let warning = arg
            .filter(|a| takes_ratio && ratio(a).is_none())
            .map(|a| format!("OTEL_TRACES_SAMPLER_ARG={a}: not a ratio from 0 to 1, using 1.0"));
        (sampler, warning)
    }

    /// The decision the SDK would make for a SERVER span whose caller sampled or not (or
    /// without a caller), without making the span: `true` to sample. The ratio is the SDK's own
    /// computation.
    pub(crate) fn decide(
        self,
        caller_sampled: Option<bool>,
        trace_id: opentelemetry::trace::TraceId,
    ) -> bool {
        use opentelemetry::trace::SpanKind;
        use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
        let ratio = |r: f64| {
            SdkSampler::TraceIdRatioBased(r)
                .should_sample(None, trace_id, "", &SpanKind::Server, &[], &[])
                .decision
                == SamplingDecision::RecordAndSample
        };
        match (self, caller_sampled) {
            (Self::AlwaysOn, _) => true,
            (Self::AlwaysOff, _) => false,
            (Self::TraceIdRatio(r), _) => ratio(r),
            (
                Self::ParentBasedAlwaysOn
                | Self::ParentBasedAlwaysOff
                | Self::ParentBasedTraceIdRatio(_),
                Some(sampled),
            ) => sampled,
            (Self::ParentBasedAlwaysOn, None) => true,
            (Self::ParentBasedAlwaysOff, None) => false,
            (Self::ParentBasedTraceIdRatio(r), None) => ratio(r),
        }
    }

    pub(crate) fn sdk(self) -> SdkSampler {
        match self {
            Self::AlwaysOn => SdkSampler::AlwaysOn,
            Self::AlwaysOff => SdkSampler::AlwaysOff,
            Self::TraceIdRatio(r) => SdkSampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => SdkSampler::ParentBased(Box::new(SdkSampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => SdkSampler::ParentBased(Box::new(SdkSampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(r) => {
                SdkSampler::ParentBased(Box::new(SdkSampler::TraceIdRatioBased(r)))
            }
        }
    }
}

/// Where spans go (`OTEL_TRACES_EXPORTER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exporter {
    /// OTLP over HTTP/protobuf, when an endpoint is configured (the default; with no endpoint,
    /// nothing is exported and no connection is attempted).
    Otlp,
    /// One JSON line per span on stdout.
    Console,
    /// Nothing exported; ids are still created, propagated and logged.
    None,
}

/// How the OTLP export request's body is sent (`OTEL_EXPORTER_OTLP_COMPRESSION`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// As encoded (the default).
    #[default]
    None,
    /// gzip (`Content-Encoding: gzip`), at its fastest level. It costs the export thread
    /// about 6,800 instructions per span, a fifth of what an exported request costs in all
    /// (BENCHMARKS.md, session 22): for links where bandwidth matters more.
    Gzip,
}

impl Compression {
    /// The value of `OTEL_EXPORTER_OTLP_COMPRESSION` (`gzip` or `none`), if it is one.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name.trim() {
            "gzip" => Some(Self::Gzip),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// Tracing settings. [`TraceConfig::from_env`] reads the standard variables; every setting
/// can also be set from code (code wins).
///
/// ```no_run
/// use std::time::Duration;
/// use towerscope::trace::{Sampler, TraceConfig};
/// let tracing = TraceConfig::from_env("checkout")
///     .endpoint("http://127.0.0.1:4318/v1/traces")
///     .sampler(Sampler::ParentBasedTraceIdRatio(0.1))
///     .traceresponse(true)
///     .install();
/// // ... serve with tracing.layer() ...
/// tracing.shutdown(Duration::from_secs(5));
/// ```
#[derive(Clone, Debug)]
pub struct TraceConfig {
    service_name: String,
    service_name_from_code: bool,
    resource: Vec<(String, String)>,
    endpoint: Option<String>,
    headers: Vec<(String, String)>,
    timeout: Option<Duration>,
    tls: TlsFiles,
    compression: Option<Compression>,
    retry: Retry,
    sampler: Sampler,
    exporter: Exporter,
    disabled: bool,
    propagators: Propagators,
    queue: QueueSettings,
    traceresponse: bool,
    trust_forwarded: ForwardedTrust,
    baggage_keys: Vec<String>,
    sensitive: Vec<String>,
    excluded: Vec<String>,
    warnings: Vec<String>,
}

/// An environment variable, when set and not blank.
pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The OTLP exporter's setting `name` for traces, read through `env`:
/// `OTEL_EXPORTER_OTLP_TRACES_{name}` when set, else `OTEL_EXPORTER_OTLP_{name}`; with the
/// variable it came from.
pub(crate) fn otlp_var(
    env: impl Fn(&str) -> Option<String>,
    name: &str,
) -> Option<(String, String)> {
    let traces = format!("OTEL_EXPORTER_OTLP_TRACES_{name}");
    if let Some(v) = env(&traces) {
        return Some((traces, v));
    }
    let general = format!("OTEL_EXPORTER_OTLP_{name}");
    env(&general).map(|v| (general, v))
}

/// A boolean setting, as the specification reads them: `true` (any case) is true; anything
/// else is false, and said so unless it is `false`.
pub(super) fn boolean(name: &str, value: Option<String>, warnings: &mut Vec<String>) -> bool {
    let Some(value) = value else { return false };
    let v = value.trim();
    if !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false") {
        warnings.push(format!(
            "{name}={value}: neither true nor false, read as false"
        ));
    }
    v.eq_ignore_ascii_case("true")
}

/// A whole-number setting; a value that is not one is the default, and said so.
fn env_usize(name: &str, warnings: &mut Vec<String>) -> Option<usize> {
    number(name, env(name), warnings)
}

pub(super) fn number(
    name: &str,
    value: Option<String>,
    warnings: &mut Vec<String>,
) -> Option<usize> {
    let value = value?;
    let n = value.trim().parse().ok();
    if n.is_none() {
        warnings.push(format!(
            "{name}={value}: not a whole number, using the default"
        ));
    }
    n
}

impl TraceConfig {
    /// Settings from `OTEL_SERVICE_NAME` (else `service`), `OTEL_RESOURCE_ATTRIBUTES`,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_HEADERS` / `OTEL_EXPORTER_OTLP_TRACES_HEADERS` (`key=value` pairs,
    /// comma-separated, values percent-decoded), `OTEL_EXPORTER_OTLP_TIMEOUT` /
    /// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` (ms), `OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION`
    /// (`gzip` or `none`), `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE` (a CA file) and
    /// `..._CLIENT_CERTIFICATE` / `..._CLIENT_KEY` (with the `otlp-tls` feature),
    /// `OTEL_TRACES_SAMPLER` and
    /// `OTEL_TRACES_SAMPLER_ARG`, `OTEL_TRACES_EXPORTER`, `OTEL_SDK_DISABLED`,
    /// `OTEL_PROPAGATORS`, and the batch settings `OTEL_BSP_MAX_QUEUE_SIZE`,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY` and
    /// `OTEL_BSP_EXPORT_TIMEOUT` (ms: one batch's sends and retries together). The export
    /// settings are read when [`install`](Self::install) runs; set from code, they win.
    /// Unknown values fall back to the defaults and are listed by [`TraceConfig::warnings`]; so
    /// is what the exporter does not support: a protocol other than `http/protobuf`, a
    /// compression other than `gzip` or `none`, TLS settings without the `otlp-tls` feature, a
    /// client certificate without its key (or the key without it).
    pub fn from_env(service: impl Into<String>) -> Self {
        let mut warnings = Vec::new();
        let (sampler, warning) = Sampler::from_env_values(
            env("OTEL_TRACES_SAMPLER").as_deref(),
            env("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        );
        warnings.extend(warning);
        let exporter = match env("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => Exporter::Otlp,
            Some("console") => Exporter::Console,
            Some("none") => Exporter::None,
            Some(other) => {
                warnings.push(format!("OTEL_TRACES_EXPORTER={other}: unknown, using otlp"));
                Exporter::Otlp
            }
        };
        let (propagators, unknown) = Propagators::from_env();
        for u in unknown {
            warnings.push(format!("OTEL_PROPAGATORS: unknown propagator {u}, skipped"));
        }
        warnings.extend(unsupported_export_settings(env));
        let env_service = env("OTEL_SERVICE_NAME");
        Self {
            service_name_from_code: env_service.is_none(),
            service_name: env_service.unwrap_or_else(|| service.into()),
            resource: Vec::new(),
            endpoint: None,
            headers: Vec::new(),
            timeout: None,
            tls: TlsFiles::default(),
            compression: None,
            retry: Retry {
                total: env_usize("OTEL_BSP_EXPORT_TIMEOUT", &mut warnings)
                    .map_or(Retry::default().total, |ms| {
                        Duration::from_millis(ms as u64)
                    }),
                ..Retry::default()
            },
            sampler,
            exporter,
            disabled: boolean("OTEL_SDK_DISABLED", env("OTEL_SDK_DISABLED"), &mut warnings),
            propagators,
            queue: QueueSettings {
                max_queue: env_usize("OTEL_BSP_MAX_QUEUE_SIZE", &mut warnings)
                    .unwrap_or(2048)
                    .max(1),
                max_batch: env_usize("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", &mut warnings)
                    .unwrap_or(512)
                    .max(1),
                delay: Duration::from_millis(
                    env_usize("OTEL_BSP_SCHEDULE_DELAY", &mut warnings)
                        .unwrap_or(1000)
                        .max(1) as u64,
                ),
            },
            traceresponse: false,
            trust_forwarded: ForwardedTrust::default(),
            baggage_keys: Vec::new(),
            sensitive: crate::redact::SENSITIVE_PARAMS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            excluded: crate::lifecycle::PROBE_ROUTES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            warnings,
        }
    }

    /// `service.name` (overrides `OTEL_SERVICE_NAME`).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self.service_name_from_code = true;
        self
    }

    /// A resource attribute (in addition to `OTEL_RESOURCE_ATTRIBUTES`).
    pub fn resource_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.resource.push((key.into(), value.into()));
        self
    }

    /// The OTLP/HTTP traces URL (e.g. `http://collector:4318/v1/traces`), overriding the
    /// environment. `https://` needs the `otlp-tls` feature: without it, such an endpoint is
    /// refused when the pipeline is installed (reported on stderr; tracing goes on without
    /// export).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// A header sent with every export (e.g. an API key).
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// The CA certificates (a PEM file) an `https://` endpoint's certificate is checked
    /// against, instead of the system's (overriding `OTEL_EXPORTER_OTLP_CERTIFICATE`; needs the
    /// `otlp-tls` feature).
    pub fn certificate(mut self, pem_file: impl Into<std::path::PathBuf>) -> Self {
        self.tls.ca = Some(pem_file.into());
        self
    }

    /// The client certificate (chain) and private key (PEM files) to show an `https://`
    /// collector that asks for one, for mutual TLS (overriding
    /// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `OTEL_EXPORTER_OTLP_CLIENT_KEY`; needs the
    /// `otlp-tls` feature).
    pub fn client_certificate(
        mut self,
        certificate: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls.client = Some((certificate.into(), key.into()));
        self
    }

    /// The export request body's compression (overriding `OTEL_EXPORTER_OTLP_COMPRESSION`;
    /// default none).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = Some(compression);
        self
    }

    /// How many times one batch is sent at most while the collector answers that it cannot
    /// take it now (429, 502, 503, 504) or cannot be reached (default 4; `1` never sends a
    /// batch twice). Retries run on the export thread, never on the request path.
    pub fn export_attempts(mut self, attempts: u32) -> Self {
        self.retry.attempts = attempts.max(1);
        self
    }

    /// The wait before a batch's second send (default 250 ms; doubled for each later one,
    /// each wait jittered between half and one and a half times that), and the longest wait
    /// made (default 5 s): a collector's `Retry-After`, or a backoff, longer than that drops
    /// the batch instead (counted).
    pub fn export_backoff(mut self, first: Duration, max_wait: Duration) -> Self {
        self.retry.first = first;
        self.retry.max_wait = max_wait;
        self
    }

    /// The longest one batch's export may take, its sends and the waits between them together
    /// (overriding `OTEL_BSP_EXPORT_TIMEOUT`; default 30 s): no retry is begun that would end
    /// past it.
    pub fn batch_export_timeout(mut self, timeout: Duration) -> Self {
        self.retry.total = timeout;
        self
    }

    /// The export request timeout (default 10 s).
    pub fn export_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The sampler.
    pub fn sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// The exporter.
    pub fn exporter(mut self, exporter: Exporter) -> Self {
        self.exporter = exporter;
        self
    }

    /// Disables tracing altogether (like `OTEL_SDK_DISABLED=true`): no spans, no ids.
    pub fn disabled(mut self, disabled: bool) -> Self {
        self.disabled = disabled;
        self
    }

    /// The propagation formats.
    pub fn propagators(mut self, propagators: Propagators) -> Self {
        self.propagators = propagators;
        self
    }

    /// The export queue bound in spans (default 2048): beyond it spans are dropped and counted.
    pub fn max_queue(mut self, spans: usize) -> Self {
        self.queue.max_queue = spans.max(1);
        self
    }

    /// Spans per export request (default 512).
    pub fn max_batch(mut self, spans: usize) -> Self {
        self.queue.max_batch = spans.max(1);
        self
    }

    /// The longest a span waits in the queue before export (default 1 s).
    pub fn export_delay(mut self, delay: Duration) -> Self {
        self.queue.delay = delay.max(Duration::from_millis(1));
        self
    }

    /// Returns the trace id to the caller in a `traceresponse` header (W3C Trace Context
    /// Level 2; default off).
    pub fn traceresponse(mut self, on: bool) -> Self {
        self.traceresponse = on;
        self
    }

    /// Every proxy in front of the application is trusted: a server span's `client.address` is
    /// the first hop of `Forwarded` or `X-Forwarded-For` when present (and an address; the one
    /// [`proxy_header`](Self::proxy_header) names, when set), and `network.peer.address` the
    /// proxy's; by default `client.address` is the peer. Only right when the outermost proxy
    /// replaces these headers; otherwise prefer [`trusted_proxies`](Self::trusted_proxies) or
    /// [`trusted_proxy_hops`](Self::trusted_proxy_hops). As the request log's
    /// [`trust_forwarded_headers`](crate::log::RequestLogBuilder::trust_forwarded_headers), so
    /// both name the same client. The last of the three calls counts.
    pub fn trust_forwarded_headers(mut self, trust: bool) -> Self {
        self.trust_forwarded.trust_all(trust);
        self
    }

    /// The `n` proxies nearest the application are trusted, the peer being the first: a server
    /// span's `client.address` is the hop the outermost of them appended to `X-Forwarded-For`
    /// (or the header [`proxy_header`](Self::proxy_header) names), the `n`-th from the right
    /// (the leftmost when there are fewer), and `network.peer.address` the proxy's. `0` trusts
    /// none (the default). As the request log's
    /// [`trusted_proxy_hops`](crate::log::RequestLogBuilder::trusted_proxy_hops). The last of
    /// this, [`trusted_proxies`](Self::trusted_proxies) and
    /// [`trust_forwarded_headers`](Self::trust_forwarded_headers) counts.
    pub fn trusted_proxy_hops(mut self, n: usize) -> Self {
        self.trust_forwarded.trust_hops(n);
        self
    }

    /// Proxies at these addresses or CIDR networks are trusted (`["10.0.0.0/8",
    /// "2001:db8::7"]`): when the peer is one of them, a server span's `client.address` is the
    /// hop of `X-Forwarded-For` (or the header [`proxy_header`](Self::proxy_header) names)
    /// nearest the application that is not (the leftmost when all are), and
    /// `network.peer.address` the proxy's. From any other peer the headers are ignored. An
    /// empty list trusts none (the default). As the request log's
    /// [`trusted_proxies`](crate::log::RequestLogBuilder::trusted_proxies). The last of this,
    /// [`trusted_proxy_hops`](Self::trusted_proxy_hops) and
    /// [`trust_forwarded_headers`](Self::trust_forwarded_headers) counts.
    ///
    /// # Panics
    ///
    /// When an item is neither an address nor a CIDR network.
    pub fn trusted_proxies<I, S>(mut self, networks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.trust_forwarded.trust_networks(networks);
        self
    }

    /// The header the trusted proxies write the client's address into: `X-Forwarded-For` (the
    /// default) or `Forwarded`. Counted hops and trusted networks read only this one: the
    /// other reaches the application as the client sent it. As the request log's
    /// [`proxy_header`](crate::log::RequestLogBuilder::proxy_header).
    ///
    /// Under any of the three trust settings, the hop whose client is believed also gives the
    /// scheme and host the client asked for, the semantic conventions' first choice for
    /// `url.scheme` and `server.address` (with `server.port`): the `proto` and `host`
    /// parameters of its `Forwarded` element, or `X-Forwarded-Proto` and `X-Forwarded-Host`
    /// at its place counted from the right (their only value when a proxy set them once).
    pub fn proxy_header(mut self, header: ProxyHeader) -> Self {
        self.trust_forwarded.set_header(header);
        self
    }

    /// Copies the baggage member `key` onto server spans as `baggage.{key}` (none by default:
    /// baggage is never copied into telemetry unless allow-listed).
    pub fn baggage_attribute(mut self, key: impl Into<String>) -> Self {
        self.baggage_keys.push(key.into());
        self
    }

    /// Another query parameter whose value is redacted in `url.query` and `url.full` (the
    /// defaults are [`SENSITIVE_PARAMS`](crate::redact::SENSITIVE_PARAMS)).
    pub fn sensitive_param(mut self, name: impl Into<String>) -> Self {
        self.sensitive.push(name.into());
        self
    }

    /// A route template that gets no server span (by default the probes and `/metrics`,
    /// [`PROBE_ROUTES`](crate::lifecycle::PROBE_ROUTES)).
    pub fn exclude_route(mut self, template: impl Into<String>) -> Self {
        self.excluded.push(template.into());
        self
    }

    /// Traces every route, the probes and `/metrics` included.
    pub fn trace_all_routes(mut self) -> Self {
        self.excluded.clear();
        self
    }

    /// What could not be understood in the environment.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Builds the pipeline: the tracer provider (also installed as OpenTelemetry's global
    /// provider), the export thread when something is exported, and the export counters
    /// (install the metrics recorder first). Never fails: an exporter that cannot be built is
    /// reported on stderr and tracing continues without export.
    pub fn install(self) -> Tracing {
        let counters = ExportCounters::register();
        let mut resource = Resource::builder();
        if self.service_name_from_code {
            resource = resource.with_service_name(self.service_name.clone());
        }
        for (k, v) in &self.resource {
            resource = resource.with_attribute(opentelemetry::KeyValue::new(k.clone(), v.clone()));
        }
        let resource = resource.build();
        let settings = self.queue;
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(self.sampler.sdk())
            .with_resource(resource.clone());
        // Server spans are recorded by towerscope under the scope its tracer has.
        let scope = opentelemetry::InstrumentationScope::builder(TRACER).build();
        let processor = if self.disabled {
            None
        } else {
            match self.exporter {
                Exporter::None => None,
                Exporter::Console => Some(QueueProcessor::new(
                    ConsoleExporter {
                        scope: scope.clone(),
                    },
                    settings,
                    counters.clone(),
                )),
                Exporter::Otlp => {
                    match OtlpSettings::resolve(
                        self.endpoint.as_deref(),
                        &self.headers,
                        self.timeout,
                        &self.tls,
                        self.compression,
                    )
                    .map(|otlp| {
                        OtlpExporter::new(otlp, &resource, scope.clone())
                            .map(|e| e.with_retry(self.retry))
                    }) {
                        None => None,
                        Some(Ok(exporter)) => {
                            Some(QueueProcessor::new(exporter, settings, counters.clone()))
                        }
                        Some(Err(e)) => {
                            eprintln!(
                                "towerscope: OTLP exporter not built, spans are not exported: {e}"
                            );
                            None
                        }
                    }
                }
            }
        };
        let queue = processor.as_ref().map(QueueProcessor::handle);
        let exporting = processor.is_some();
        if let Some(p) = processor {
            builder = builder.with_span_processor(p);
        }
        let provider = builder.build();
        let tracer = provider.tracer(TRACER);
        if !self.disabled {
            opentelemetry::global::set_tracer_provider(provider.clone());
        }
        Tracing {
            inner: Arc::new(Inner {
                provider,
                tracer,
                sampler: self.sampler,
                enabled: !self.disabled,
                exporting,
                queue,
                span_limits: opentelemetry_sdk::trace::Config::default().span_limits,
                propagators: self.propagators,
                traceresponse: self.traceresponse,
                trust_forwarded: self.trust_forwarded,
                baggage_keys: self.baggage_keys,
                sensitive: self.sensitive,
                excluded: self.excluded,
            }),
        }
    }
}

/// The exporter speaks OTLP over HTTP/protobuf, uncompressed or gzipped, over TLS only with the
/// `otlp-tls` feature: what the environment asks beyond that, and what it gives that cannot be
/// read (a timeout that is not a number, header pairs that are not `key=value`), as warnings.
/// Header values are never repeated: they are often credentials.
pub(crate) fn unsupported_export_settings(env: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut warnings = Vec::new();
    let effective = |name: &str| otlp_var(&env, name);
    if let Some((var, t)) = effective("TIMEOUT").filter(|(_, t)| millis(t).is_none()) {
        warnings.push(format!(
            "{var}={t}: not a whole number of milliseconds, using 10000"
        ));
    }
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        let Some(value) = env(var) else { continue };
        let pairs = value.split(',').filter(|p| !p.trim().is_empty());
        let skipped = pairs.count() - super::otlp::parse_headers(&value).len();
        if skipped > 0 {
            warnings.push(format!(
                "{var}: {skipped} pair(s) not `key=value` (percent-encoded) skipped"
            ));
        }
    }
    if let Some((var, p)) = effective("PROTOCOL").filter(|(_, p)| p.trim() != "http/protobuf") {
        warnings.push(format!("{var}={p}: unsupported, using http/protobuf"));
    }
    if let Some((var, c)) =
        effective("COMPRESSION").filter(|(_, c)| Compression::from_name(c).is_none())
    {
        warnings.push(format!("{var}={c}: unsupported, sending uncompressed"));
    }
    if cfg!(feature = "tls") {
        let cert = effective("CLIENT_CERTIFICATE");
        let key = effective("CLIENT_KEY");
        if let (Some((var, _)), None) | (None, Some((var, _))) = (&cert, &key) {
            warnings.push(format!(
                "{var} without its pair (certificate and key): no client certificate is sent"
            ));
        }
    } else {
        for name in ["CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY"] {
            if let Some((var, _)) = effective(name) {
                warnings.push(format!(
                    "{var}: https:// needs towerscope's `otlp-tls` feature, not built in"
                ));
            }
        }
    }
    warnings
}

pub(crate) struct Inner {
    provider: SdkTracerProvider,
    pub(crate) tracer: SdkTracer,
    pub(crate) sampler: Sampler,
    pub(crate) enabled: bool,
    pub(crate) exporting: bool,
    /// Where recorded server spans go (when exporting).
    pub(crate) queue: Option<Arc<QueueHandle>>,
    /// The SDK's span limits (`OTEL_SPAN_*_LIMIT`), for the server spans towerscope records.
    pub(crate) span_limits: opentelemetry_sdk::trace::SpanLimits,
    pub(crate) propagators: Propagators,
    pub(crate) traceresponse: bool,
    /// `client.address` from the proxies' `Forwarded` / `X-Forwarded-For`.
    pub(crate) trust_forwarded: ForwardedTrust,
    pub(crate) baggage_keys: Vec<String>,
    /// Query parameters whose values are redacted in `url.query` and `url.full`.
    pub(crate) sensitive: Vec<String>,
    /// Route templates without server spans.
    pub(crate) excluded: Vec<String>,
}

/// The installed tracing pipeline: hands out the server layer, client layers and the
/// `tracing` layer for application spans, and flushes at shutdown.
#[derive(Clone)]
pub struct Tracing {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("enabled", &self.inner.enabled)
            .field("exporting", &self.inner.exporting)
            .finish_non_exhaustive()
    }
}

impl Tracing {
    /// Whether spans are exported anywhere.
    pub fn is_exporting(&self) -> bool {
        self.inner.exporting
    }

    /// The tracer (for spans made with the OpenTelemetry API directly).
    pub fn tracer(&self) -> &SdkTracer {
        &self.inner.tracer
    }

    /// The propagation formats.
    pub fn propagators(&self) -> &Propagators {
        &self.inner.propagators
    }

    /// Flushes pending spans and stops the export thread, waiting at most `deadline`. Returns
    /// whether everything was handed to the exporter in time.
    pub fn shutdown(&self, deadline: Duration) -> bool {
        self.inner.provider.shutdown_with_timeout(deadline).is_ok()
    }

    /// Exports what is queued now (tests, before exit).
    pub fn flush(&self) -> bool {
        self.inner.provider.force_flush().is_ok()
    }
}

impl Tracing {
    /// The `tracing` layer that exports the application's own spans (`#[instrument]`,
    /// `info_span!`, the database and operation spans) as OpenTelemetry spans, children of the
    /// server span or of whatever span is current. The request log's span is left out (the
    /// server span stands for the request), and so is every span when nothing is exported.
    /// Add it to the subscriber, or pass this `Tracing` to `LogConfig::tracing` (which leaves
    /// it out when nothing is exported).
    pub fn otel_layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer as _;
        // Nothing exported: no span of the bridge would leave the process either.
        let enabled = self.inner.enabled && self.inner.exporting;
        tracing_opentelemetry::layer()
            .with_tracer(self.inner.tracer.clone())
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_level(false)
            .with_target(false)
            .with_error_events_to_exceptions(true)
            .with_error_events_to_status(true)
            .with_filter(tracing_subscriber::filter::filter_fn(move |meta| {
                enabled && meta.target() != "towerscope::request"
            }))
    }
}
