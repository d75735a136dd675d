//! The request log observer: one record per request, a span carrying its context, request ids.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tracing::{Level, Span};

use super::context::{handoff, json_layer_exists, RequestContext, REQUEST_TARGET};
use super::json::{decide_sampling, key_bit, write_int, write_json_str, write_millis};
use super::request_id::RequestId;
use super::scope::{deferral, register_callsite, request_span, RequestScope};
use crate::ip_text::IpText;
use crate::lifecycle::{
    client_ip, End, ForwardedTrust, KnownMethod, ObserveLayer, Observer, Outcome, ProxyHeader,
    RequestMeta, ResponseHead,
};
use crate::redact::{is_sensitive, redact_query, SENSITIVE_PARAMS};

/// A member named by a literal (plain, never escaped): its `,"key":` text, written in one
/// copy, and its key. For the record's fields and the request context's members alike.
macro_rules! member {
    ($k:literal) => {
        (concat!(",\"", $k, "\":"), $k)
    };
}

/// Invokes the event macro `$event` with `$level`, known only at run time: `tracing`'s
/// macros need a constant level (one callsite per level).
macro_rules! at_level {
    ($level:expr, $event:ident) => {
        match $level {
            Level::ERROR => $event!(Level::ERROR),
            Level::WARN => $event!(Level::WARN),
            Level::INFO => $event!(Level::INFO),
            Level::DEBUG => $event!(Level::DEBUG),
            _ => $event!(Level::TRACE),
        }
    };
}

/// The request log as a Tower layer: [`ObserveLayer`] with the [`RequestLog`] observer.
pub type RequestLogLayer = ObserveLayer<RequestLog>;

impl RequestLogLayer {
    /// A request log layer with the default settings.
    pub fn new() -> Self {
        ObserveLayer::with_observer(RequestLog::builder().build())
    }
}

impl Default for RequestLogLayer {
    fn default() -> Self {
        Self::new()
    }
}

/// Routes left out of the request log by default: the probes and `/metrics`
/// ([`PROBE_ROUTES`](crate::lifecycle::PROBE_ROUTES), shared with the server spans).
pub const DEFAULT_EXCLUDED: &[&str] = crate::lifecycle::PROBE_ROUTES;

/// The request log observer.
#[derive(Clone, Debug)]
pub struct RequestLog {
    cfg: Arc<Config>,
}

#[derive(Debug)]
struct Config {
    success: Level,
    client_error: Level,
    server_error: Level,
    cancelled: Level,
    slow: Option<Duration>,
    exclude: Vec<String>,
    trust_forwarded: ForwardedTrust,
    log_query: bool,
    sensitive_params: Vec<String>,
    log_headers: bool,
    redact_headers: Vec<HeaderName>,
    header: HeaderName,
}

/// Settings of the request log.
///
/// Defaults: success INFO, client errors WARN, server errors ERROR, cancelled INFO; requests
/// slower than 2 s are WARN with `slow=true`; the probe routes and `/metrics` excluded;
/// `Forwarded`/`X-Forwarded-For` ignored (peer address only); no query, no headers.
#[derive(Debug)]
pub struct RequestLogBuilder {
    cfg: Config,
    exclude_replaced: bool,
}

impl RequestLog {
    /// Configures the observer.
    pub fn builder() -> RequestLogBuilder {
        RequestLogBuilder {
            cfg: Config {
                success: Level::INFO,
                client_error: Level::WARN,
                server_error: Level::ERROR,
                cancelled: Level::INFO,
                slow: Some(Duration::from_secs(2)),
                exclude: DEFAULT_EXCLUDED.iter().map(|s| s.to_string()).collect(),
                trust_forwarded: ForwardedTrust::default(),
                log_query: false,
                sensitive_params: SENSITIVE_PARAMS.iter().map(|s| s.to_string()).collect(),
                log_headers: false,
                redact_headers: Vec::new(),
                header: HeaderName::from_static("x-request-id"),
            },
            exclude_replaced: false,
        }
    }
}

impl RequestLogBuilder {
    /// The level of each outcome (e.g. DEBUG for successes to keep only failures at INFO).
    pub fn levels(
        mut self,
        success: Level,
        client_error: Level,
        server_error: Level,
        cancelled: Level,
    ) -> Self {
        self.cfg.success = success;
        self.cfg.client_error = client_error;
        self.cfg.server_error = server_error;
        self.cfg.cancelled = cancelled;
        self
    }

    /// The level of successful requests only (INFO by default): DEBUG keeps only failures,
    /// slow and cancelled requests under `RUST_LOG=info`, and such records cost no formatting.
    pub fn success_level(mut self, level: Level) -> Self {
        self.cfg.success = level;
        self
    }

    /// Requests slower than this are logged at WARN (at least) with `slow=true`; `None` turns
    /// it off.
    pub fn slow_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.cfg.slow = threshold;
        self
    }

    /// A route template to leave out; the first call replaces the default exclusions.
    pub fn exclude_route(mut self, template: impl Into<String>) -> Self {
        if !self.exclude_replaced {
            self.cfg.exclude.clear();
            self.exclude_replaced = true;
        }
        self.cfg.exclude.push(template.into());
        self
    }

    /// Every proxy in front of the application is trusted: `client_ip` is the first hop of
    /// `Forwarded` or `X-Forwarded-For` when present (and an address; the one
    /// [`proxy_header`](Self::proxy_header) names, when set); by default it is the peer. Only
    /// right when the outermost proxy replaces these headers: a proxy that appends to them
    /// keeps what the client wrote in front, and that is the first hop. Then prefer
    /// [`trusted_proxies`](Self::trusted_proxies) or
    /// [`trusted_proxy_hops`](Self::trusted_proxy_hops). The last of the three calls counts.
    pub fn trust_forwarded_headers(mut self, trust: bool) -> Self {
        self.cfg.trust_forwarded.trust_all(trust);
        self
    }

    /// The `n` proxies nearest the application are trusted, the peer being the first (`1`: one
    /// load balancer): `client_ip` is the hop the outermost of them appended to
    /// `X-Forwarded-For` (or the header [`proxy_header`](Self::proxy_header) names), the `n`-th
    /// from the right (the leftmost when there are fewer), so a client cannot choose it by
    /// sending the header itself. `0` trusts none (the default). The last of this,
    /// [`trusted_proxies`](Self::trusted_proxies) and
    /// [`trust_forwarded_headers`](Self::trust_forwarded_headers) counts.
    pub fn trusted_proxy_hops(mut self, n: usize) -> Self {
        self.cfg.trust_forwarded.trust_hops(n);
        self
    }

    /// Proxies at these addresses or CIDR networks are trusted (`["10.0.0.0/8",
    /// "2001:db8::7"]`): when the peer is one of them, `client_ip` is the hop of
    /// `X-Forwarded-For` (or the header [`proxy_header`](Self::proxy_header) names) nearest the
    /// application that is not (the leftmost when all are), however many proxies a request
    /// passed; a client's own hops in front are not believed. From any other peer the headers
    /// are ignored. An empty list trusts none (the default). The last of this,
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
        self.cfg.trust_forwarded.trust_networks(networks);
        self
    }

    /// The header the trusted proxies write the client's address into: `X-Forwarded-For` (the
    /// default) or `Forwarded`. Counted hops and trusted networks read only this one: the
    /// other reaches the application as the client sent it.
    pub fn proxy_header(mut self, header: ProxyHeader) -> Self {
        self.cfg.trust_forwarded.set_header(header);
        self
    }

    /// Logs the query string (`query` field), sensitive values replaced by `REDACTED`.
    pub fn log_query(mut self, on: bool) -> Self {
        self.cfg.log_query = on;
        self
    }

    /// Another query parameter whose value is redacted.
    pub fn sensitive_param(mut self, name: impl Into<String>) -> Self {
        self.cfg.sensitive_params.push(name.into());
        self
    }

    /// Logs the request headers (`headers` field), never `Authorization`,
    /// `Proxy-Authorization`, `Cookie`, `Set-Cookie` nor those given to
    /// [`RequestLogBuilder::redact_header`].
    pub fn log_headers(mut self, on: bool) -> Self {
        self.cfg.log_headers = on;
        self
    }

    /// Another header never logged.
    pub fn redact_header(mut self, name: HeaderName) -> Self {
        self.cfg.redact_headers.push(name);
        self
    }

    /// The observer.
    pub fn build(self) -> RequestLog {
        RequestLog {
            cfg: Arc::new(self.cfg),
        }
    }

    /// The layer.
    pub fn layer(self) -> RequestLogLayer {
        ObserveLayer::with_observer(self.build())
    }
}

/// Per-route data of [`RequestLog`].
#[derive(Debug)]
pub struct LogRoute {
    cfg: Arc<Config>,
    route: Option<Arc<str>>,
    /// The route as a JSON value, escaped once.
    route_json: Option<String>,
    excluded: bool,
}

/// Per-request state of [`RequestLog`].
#[derive(Debug)]
pub struct LogObservation {
    id: RequestId,
    /// Boxed: the observation travels inside the response future and body, which are moved
    /// several times; one small allocation costs less than copying this each time (measured
    /// with callgrind: +850 instructions per request inline). Empty for excluded routes.
    record: RequestScope,
}

#[derive(Debug)]
pub(crate) struct RecordData {
    /// `false` when the JSON layer sampled the request out.
    sampled: bool,
    /// The request's span: made up front, or when first asked for under a subscriber that
    /// defers it (see `scope`), or never.
    pub(crate) span: Option<Span>,
    /// The request's context while it has no span (then the span carries it).
    pub(crate) context: Option<RequestContext>,
    method: KnownMethod,
    text: RequestText,
    client_ip: Option<IpAddr>,
    /// Whether the request declared its body's length (`Content-Length`): then its size is
    /// logged even when 0; without, a size of 0 means no body (or none read) and is left out.
    declared_length: bool,
    headers: Option<String>,
}

impl Observer for RequestLog {
    type Route = LogRoute;
    type Observation = LogObservation;

    fn route(&self, template: Option<&str>) -> LogRoute {
        LogRoute {
            cfg: self.cfg.clone(),
            excluded: template.is_some_and(|t| self.cfg.exclude.iter().any(|e| e == t)),
            route: template.map(Arc::from),
            route_json: template.map(|t| {
                let mut json = String::new();
                write_json_str(&mut json, t);
                json
            }),
        }
    }

    fn start<B>(
        &self,
        route: &LogRoute,
        req: &mut Request<B>,
        meta: &RequestMeta<'_>,
    ) -> LogObservation {
        let cfg = &*self.cfg;
        let heads = Heads::find(req.headers(), &cfg.header);
        let incoming = heads.id.and_then(RequestId::parse);
        // Dropped at the end of this call, while its buffer is still in cache.
        let user_agent = heads.user_agent.cloned();
        let declared_length = heads.content_length.is_some();
        let id = match incoming {
            Some(id) => id,
            None => {
                let id = RequestId::generate_at(meta.start.unix());
                // An invalid id is replaced, never passed on (nor logged) raw.
                req.headers_mut().insert(cfg.header.clone(), id.0.clone());
                id
            }
        };
        // Handlers read the id with the `RequestId` extractor, from the (now always valid)
        // header: no extension to insert, no allocation.
        if route.excluded {
            return LogObservation {
                id,
                record: RequestScope::default(),
            };
        }
        let id_text = id.as_str();
        // The server span's ids, when the trace observer ran first (W3C hex form, formatted on
        // the stack): on every record of the request, and the key of trace-consistent
        // sampling.
        #[cfg(feature = "otel")]
        let hexes = meta
            .trace_ids()
            .map(|ids| (ids.trace_id.hex(), ids.span_id.hex()));
        #[cfg(feature = "otel")]
        let (trace_id, span_id) = (
            hexes.as_ref().map(|h| h.0.as_str()),
            hexes.as_ref().map(|h| h.1.as_str()),
        );
        #[cfg(not(feature = "otel"))]
        let (trace_id, span_id): (Option<&str>, Option<&str>) = (None, None);
        // The record, boxed first and filled in place (its context is most of its size).
        let mut record = Box::new(RecordData {
            sampled: true,
            span: None,
            context: None,
            method: meta.method,
            text: RequestText::new(
                req.uri().path_and_query(),
                user_agent.as_ref(),
                cfg.log_query,
            ),
            client_ip: client_ip(req, &cfg.trust_forwarded).0,
            declared_length,
            headers: cfg
                .log_headers
                .then(|| render_headers(req.headers(), &cfg.redact_headers)),
        });
        // The span's context, built here from typed values for the JSON layer (the same
        // members its field visitor would make, in the same order).
        let handing = json_layer_exists();
        if handing {
            // A valid request id and hex digits: nothing to escape.
            let quoted = |j: &mut String, text: &str| {
                j.push('"');
                j.push_str(text);
                j.push('"');
            };
            let rc = record.context.insert(RequestContext::default());
            rc.append(member!("request_id"), |j| quoted(j, id_text));
            if let Some(route) = &route.route_json {
                rc.append(member!("route"), |j| j.push_str(route));
            }
            if let (Some(t), Some(s)) = (trace_id, span_id) {
                rc.append(member!("trace_id"), |j| quoted(j, t));
                rc.append(member!("span_id"), |j| quoted(j, s));
            }
            // Under a subscriber that can make the span later, none now: the context stays
            // with the record, current on the thread while the request is polled (`scope`).
            if let Some(info) = deferral() {
                rc.sampled = decide_sampling(rc, &info.sampling);
                record.sampled = rc.sampled;
                return LogObservation {
                    id,
                    record: RequestScope(std::cell::Cell::new(Some(record))),
                };
            }
        }
        // Up front: under any subscriber that cannot make it later. The callsite registered
        // first (once), outside the dispatcher's lookup, so filters see it (span directives).
        register_callsite();
        let mut context = record.context.take();
        let fields = [Some(id_text), route.route.as_deref(), trace_id, span_id];
        let (span, _) =
            tracing::dispatcher::get_default(|d| request_span(d, fields, context.take()));
        // A span filtered out is still the request's (disabled) span: the request is not
        // deferred, and its record goes out with its fields.
        record.span = Some(span.unwrap_or_else(Span::none));
        // Whether the JSON layer keeps this request's INFO and lower records.
        record.sampled =
            !handing || handoff(|h| std::mem::replace(&mut h.sampled, true)).unwrap_or(true);
        LogObservation {
            id,
            record: RequestScope(std::cell::Cell::new(Some(record))),
        }
    }

    /// The body's size as the lifecycle learns it: declared, or counted as the service reads a
    /// body of unknown length (a chunked upload), so such requests get `request_bytes` too.
    #[inline]
    fn wants_request_bytes(route: &LogRoute) -> bool {
        !route.excluded
    }

    fn response(route: &LogRoute, obs: &mut LogObservation, head: &mut ResponseHead<'_>) {
        // One lookup: kept when the handler set its own. The id is moved, not cloned: the
        // record has its text already, and nothing reads it after the response head.
        if let http::header::Entry::Vacant(slot) = head.headers.entry(&route.cfg.header) {
            slot.insert(std::mem::replace(
                &mut obs.id.0,
                HeaderValue::from_static(""),
            ));
        }
    }

    fn scope(obs: &LogObservation) -> Option<&RequestScope> {
        Some(&obs.record)
    }

    fn end(route: &LogRoute, obs: LogObservation, end: &End) {
        let Some(r) = obs.record.0.into_inner() else {
            return;
        };
        let cfg = &*route.cfg;
        let mut level = match end.outcome {
            Outcome::Success => cfg.success,
            Outcome::ClientError => cfg.client_error,
            Outcome::ServerError(_) => cfg.server_error,
            Outcome::Cancelled => cfg.cancelled,
        };
        let slow = cfg.slow.is_some_and(|t| end.duration >= t);
        if slow && level > Level::WARN {
            level = Level::WARN;
        }
        // A record below every filter's level (e.g. successes at DEBUG under `RUST_LOG=info`) is
        // not built: neither its JSON members nor its event. The global maximum level is one
        // atomic load; asking the subscriber per record (`tracing::enabled!`) cost about 150
        // instructions on every logged request. A record a target directive drops is still
        // built, and dropped by the filter.
        let enabled = level <= tracing::level_filters::STATIC_MAX_LEVEL
            && level <= tracing::level_filters::LevelFilter::current();
        if !enabled {
            return;
        }
        let query = r
            .text
            .query()
            .map(|q| redact_query(q, &cfg.sensitive_params));
        let path = r.text.path();
        let user_agent = r.text.user_agent();
        let status = end.status.map(|s| s.as_u16());
        let error_type = end.outcome.error_type();
        let error_type = error_type.as_ref().map(|e| e.as_str());
        // Rounded to the microsecond in integers (the same value as rounding the nanoseconds
        // as a float, without a 128-bit conversion and a `round` call).
        let micros = end
            .duration
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from((end.duration.subsec_nanos() + 500) / 1000));
        let duration_ms = micros as f64 / 1000.0;
        let (message, message_member) = message(end.outcome);
        let client_ip = r.client_ip.map(IpText::of);
        let request_bytes = end.request_bytes.filter(|&n| n > 0 || r.declared_length);
        // The record's fields written once as JSON from the typed values, for the JSON layer
        // (the same fields as the event below, in the same order).
        // Not for a record the JSON layer drops (INFO and lower of a request sampled out).
        let handing = json_layer_exists()
            && (r.sampled || level <= Level::WARN)
            && handoff(|h| {
                h.record.clear();
                h.record_keys.clear();
                h.record_filter = 0;
                let mut w = RecordWriter {
                    out: &mut h.record,
                    keys: &mut h.record_keys,
                    filter: &mut h.record_filter,
                };
                // The message first, as `tracing`'s macros order an event's fields.
                w.member("message", message_member);
                w.member("method", method_member(r.method));
                w.key(member!("path")).str(path);
                if let Some(q) = &query {
                    w.key(member!("query")).str(q);
                }
                if let Some(s) = status {
                    w.key(member!("status")).int(s);
                }
                w.key(member!("duration_ms")).millis(micros);
                w.member("outcome", outcome_member(end.outcome));
                if let Some(e) = error_type {
                    w.key(member!("error_type")).str(e);
                }
                if let Some(ip) = &client_ip {
                    // Digits, dots, colons and hex letters: nothing to escape.
                    ip.push_quoted(w.key(member!("client_ip")).out);
                }
                if let Some(ua) = user_agent {
                    w.key(member!("user_agent")).str(ua);
                }
                if let Some(b) = request_bytes {
                    w.key(member!("request_bytes")).int(b);
                }
                w.key(member!("response_bytes")).int(end.response_bytes);
                if let Some(hd) = &r.headers {
                    w.key(member!("headers")).str(hd);
                }
                if slow {
                    w.key(member!("slow")).out.push_str("true");
                }
                // Without a span, the record has no parent to take the context from: it
                // comes here, after the record's fields (which win on a repeated key).
                if let Some(rc) = &r.context {
                    for (k, text) in rc.members() {
                        let bit = key_bit(k);
                        if *w.filter & bit != 0 && w.keys.contains(&k) {
                            continue;
                        }
                        w.out.push_str(text);
                    }
                    h.record_has_context = true;
                }
                h.record_ready = true;
            })
            .is_some();
        let deferred = r.span.is_none();
        if deferred {
            handoff(|h| h.record_sampled = Some(r.sampled));
        }
        // Withdrawn after the event, however it ends (a panicking subscriber included).
        let _withdraw = (handing || deferred).then_some(WithdrawRecord);
        // A request without a span is logged under `LogConfig`'s JSON subscriber only (see
        // `scope`): its JSON layer takes the record handed over (or drops it, sampled out),
        // and the other layers there ignore this target. The event then carries the message
        // alone: the fields are not made twice.
        if deferred && (handing || (!r.sampled && level > Level::WARN)) {
            lean_event(level, message);
            return;
        }
        // The request span as explicit parent: its context without entering it. Without a
        // span, no parent (the record carries the context itself).
        full_event(
            level,
            &Record {
                parent: r.span.as_ref().and_then(Span::id),
                data: &r,
                end,
                path,
                query: query.as_deref(),
                status,
                duration_ms,
                error_type,
                client_ip: client_ip.as_ref().map(IpText::as_str),
                user_agent,
                request_bytes,
                slow,
                message,
            },
        );
    }
}

/// The request's event, its fields written already (handed to the JSON layer): the message
/// alone.
///
/// Out of line, as `full_event`: each is five `tracing` events (one per level) of which one
/// runs; inlined, they made `end` a 16 KB function (6 KB without them). Callgrind, `red+log`:
/// 51 fewer instructions and 29 fewer first-level instruction misses per request (of 1,850:
/// the request's code is more than the cache holds, whatever its layout).
#[inline(never)]
fn lean_event(level: Level, message: &str) {
    macro_rules! lean {
        ($lvl:expr) => {
            tracing::event!(target: REQUEST_TARGET, parent: None, $lvl, message)
        };
    }
    at_level!(level, lean);
}

/// What the request's full event carries.
struct Record<'a> {
    parent: Option<tracing::Id>,
    data: &'a RecordData,
    end: &'a End,
    path: &'a str,
    query: Option<&'a str>,
    status: Option<u16>,
    duration_ms: f64,
    error_type: Option<&'a str>,
    client_ip: Option<&'a str>,
    user_agent: Option<&'a str>,
    request_bytes: Option<u64>,
    slow: bool,
    message: &'a str,
}

/// The request's event with all its fields (under subscribers other than `LogConfig`'s, or
/// when the JSON layer was not handed the record). Out of line: see `lean_event`.
#[inline(never)]
fn full_event(level: Level, f: &Record<'_>) {
    let (r, end) = (f.data, f.end);
    macro_rules! record {
        ($lvl:expr) => {
            tracing::event!(
                target: REQUEST_TARGET,
                parent: f.parent.clone(),
                $lvl,
                message = f.message,
                method = r.method.as_str(),
                path = f.path,
                query = f.query,
                status = f.status,
                duration_ms = f.duration_ms,
                outcome = end.outcome.as_str(),
                error_type = f.error_type,
                client_ip = f.client_ip,
                user_agent = f.user_agent,
                request_bytes = f.request_bytes,
                response_bytes = end.response_bytes,
                headers = r.headers.as_deref(),
                slow = f.slow.then_some(true),
            )
        };
    }
    at_level!(level, record);
}

/// The request's path, query (when logged) and user agent, copied at its start into a buffer
/// reused across requests: the record holds nothing of the request's own buffers. Under load
/// the last reference to those, dropped when the request ends, was a cold cache line (perf:
/// `shared_v_drop` 0.005 -> 0.092 us per request with the request log on).
#[derive(Debug)]
struct RequestText {
    text: String,
    path_end: usize,
    query: Option<std::ops::Range<usize>>,
    user_agent: Option<std::ops::Range<usize>>,
}

impl RequestText {
    fn new(target: Option<&PathAndQuery>, user_agent: Option<&HeaderValue>, query: bool) -> Self {
        let mut text = super::context::spare_string();
        let mut put = |t: &str| {
            let start = text.len();
            text.push_str(t);
            start..text.len()
        };
        // Empty for a request target without a path (`CONNECT`'s authority form), as
        // `Uri::path` gives it.
        let path_end = put(target.map_or("", PathAndQuery::path)).end;
        let query = target
            .and_then(PathAndQuery::query)
            .filter(|_| query)
            .map(&mut put);
        let user_agent = user_agent.map(|v| put(&String::from_utf8_lossy(v.as_bytes())));
        Self {
            text,
            path_end,
            query,
            user_agent,
        }
    }

    fn path(&self) -> &str {
        &self.text[..self.path_end]
    }

    fn query(&self) -> Option<&str> {
        self.query.clone().map(|r| &self.text[r])
    }

    fn user_agent(&self) -> Option<&str> {
        self.user_agent.clone().map(|r| &self.text[r])
    }
}

impl Drop for RequestText {
    fn drop(&mut self) {
        super::context::recycle(std::mem::take(&mut self.text));
    }
}

/// The headers the request log reads (the first value of each, as `get` gives), found in one
/// pass when there are few.
struct Heads<'a> {
    id: Option<&'a HeaderValue>,
    user_agent: Option<&'a HeaderValue>,
    content_length: Option<&'a HeaderValue>,
}

impl<'a> Heads<'a> {
    fn find(headers: &'a HeaderMap, id: &HeaderName) -> Self {
        let (ua, cl) = (&http::header::USER_AGENT, &http::header::CONTENT_LENGTH);
        match crate::lifecycle::headers::scan(headers, [id, ua, cl]) {
            Some([id, user_agent, content_length]) => Self {
                id: id.first,
                user_agent: user_agent.first,
                content_length: content_length.first,
            },
            None => Self {
                id: headers.get(id),
                user_agent: headers.get(ua),
                content_length: headers.get(cl),
            },
        }
    }
}

/// `,"key":"value"` for a value that needs no escape, built at compile time.
macro_rules! plain_member {
    ($k:literal, $v:literal) => {
        concat!(",\"", $k, "\":\"", $v, "\"")
    };
}

/// The record's `method` member: one constant per method (no escape check, one copy).
fn method_member(m: KnownMethod) -> &'static str {
    match m {
        KnownMethod::Get => plain_member!("method", "GET"),
        KnownMethod::Head => plain_member!("method", "HEAD"),
        KnownMethod::Post => plain_member!("method", "POST"),
        KnownMethod::Put => plain_member!("method", "PUT"),
        KnownMethod::Delete => plain_member!("method", "DELETE"),
        KnownMethod::Connect => plain_member!("method", "CONNECT"),
        KnownMethod::Options => plain_member!("method", "OPTIONS"),
        KnownMethod::Trace => plain_member!("method", "TRACE"),
        KnownMethod::Patch => plain_member!("method", "PATCH"),
        KnownMethod::Other => plain_member!("method", "_OTHER"),
    }
}

/// The record's `outcome` member.
fn outcome_member(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => plain_member!("outcome", "success"),
        Outcome::ClientError => plain_member!("outcome", "client_error"),
        Outcome::ServerError(_) => plain_member!("outcome", "server_error"),
        Outcome::Cancelled => plain_member!("outcome", "cancelled"),
    }
}

/// The record's message (`request cancelled` or `request finished`) and its `message`
/// member.
fn message(o: Outcome) -> (&'static str, &'static str) {
    macro_rules! both {
        ($v:literal) => {
            ($v, plain_member!("message", $v))
        };
    }
    if o == Outcome::Cancelled {
        both!("request cancelled")
    } else {
        both!("request finished")
    }
}

/// Marks the handed-over record as used when dropped.
struct WithdrawRecord;

impl Drop for WithdrawRecord {
    fn drop(&mut self) {
        handoff(|h| {
            h.record_ready = false;
            h.record_has_context = false;
            h.record_sampled = None;
        });
    }
}

/// Writes `,"key":value` members of the request record.
struct RecordWriter<'a> {
    out: &'a mut String,
    keys: &'a mut Vec<&'static str>,
    filter: &'a mut u64,
}

impl RecordWriter<'_> {
    /// A field (see `member!`). Inlined, so each key's filter bit is a constant.
    #[inline(always)]
    fn key(&mut self, (prefix, key): (&'static str, &'static str)) -> &mut Self {
        self.out.push_str(prefix);
        self.keys.push(key);
        *self.filter |= key_bit(key);
        self
    }
    fn str(&mut self, v: &str) {
        write_json_str(self.out, v);
    }
    /// A whole `,"key":value` member written beforehand (one of a few constant ones).
    #[inline(always)]
    fn member(&mut self, key: &'static str, text: &'static str) {
        debug_assert!(text.starts_with(&format!(",\"{key}\":")));
        self.out.push_str(text);
        self.keys.push(key);
        *self.filter |= key_bit(key);
    }
    fn int(&mut self, v: impl itoa::Integer) {
        write_int(self.out, v);
    }
    fn millis(&mut self, micros: u64) {
        write_millis(self.out, micros);
    }
}

fn render_headers(headers: &HeaderMap, extra: &[HeaderName]) -> String {
    let mut out = String::new();
    for (name, value) in headers {
        if is_sensitive(name, extra) {
            continue;
        }
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(name.as_str());
        out.push_str(": ");
        out.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headers_found_in_one_pass_are_those_get_finds() {
        let id = HeaderName::from_static("x-request-id");
        for others in [0usize, 30] {
            let mut h = HeaderMap::new();
            for i in 0..others {
                h.insert(
                    HeaderName::try_from(format!("x-other-{i}")).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            let none = Heads::find(&h, &id);
            assert!(none.id.is_none() && none.user_agent.is_none());
            assert!(none.content_length.is_none());
            h.append("x-request-id", HeaderValue::from_static("first"));
            h.append("x-request-id", HeaderValue::from_static("second"));
            h.append("user-agent", HeaderValue::from_static("ua/1"));
            h.append("user-agent", HeaderValue::from_static("ua/2"));
            h.insert("content-length", HeaderValue::from_static("12"));
            let found = Heads::find(&h, &id);
            assert_eq!(found.id, h.get(&id), "{others}");
            assert_eq!(found.id.unwrap(), "first");
            assert_eq!(found.user_agent, h.get("user-agent"), "{others}");
            assert_eq!(found.content_length.unwrap(), "12", "{others}");
            // The id header may be any name, a standard one included.
            let ua = Heads::find(&h, &http::header::USER_AGENT);
            assert_eq!(ua.id.unwrap(), "ua/1");
            assert_eq!(ua.user_agent.unwrap(), "ua/1");
        }
    }

    #[test]
    fn the_constant_members_are_what_the_writer_would_write() {
        let written = |key: &str, v: &str| {
            let mut out = format!(",\"{key}\":");
            write_json_str(&mut out, v);
            out
        };
        for m in KnownMethod::ALL {
            assert_eq!(method_member(m), written("method", m.as_str()));
        }
        let status = http::StatusCode::INTERNAL_SERVER_ERROR;
        let server_error = Outcome::ServerError(crate::lifecycle::ErrorType::Status(status));
        for o in [
            Outcome::Success,
            Outcome::ClientError,
            server_error,
            Outcome::Cancelled,
        ] {
            assert_eq!(outcome_member(o), written("outcome", o.as_str()));
            let (text, member) = message(o);
            assert_eq!(member, written("message", text));
        }
    }
}
