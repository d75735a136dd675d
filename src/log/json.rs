//! The JSON formatting layer: one object per line, the request context flattened at the top
//! level, sampling and per-call-site rate limiting before any formatting happens.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use metrics::{Counter, Key, KeyName, Label, Metadata as MetricsMetadata};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::context::{
    handoff, RequestContext, REQUEST_SPAN, REQUEST_TARGET, REQUEST_TARGET_JSON, RESERVED_KEYS,
};
use super::limit::{Limiter, RateLimit};
pub use crate::json_str::write_json_str;

/// RFC 3339, UTC, microseconds: `2026-11-25T09:46:40.123456Z` (with quotes).
pub fn write_timestamp(out: &mut String, t: SystemTime) {
    out.push_str(std::str::from_utf8(&timestamp(t)).unwrap_or("\"\""));
}

fn timestamp(t: SystemTime) -> [u8; 29] {
    let (year, month, day, hh, mm, ss, micros) = crate::time::utc(t);
    let mut b = *b"\"0000-00-00T00:00:00.000000Z\"";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (0..width).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(1, 4, year.clamp(0, 9999) as u64);
    put(6, 2, u64::from(month));
    put(9, 2, u64::from(day));
    put(12, 2, u64::from(hh));
    put(15, 2, u64::from(mm));
    put(18, 2, u64::from(ss));
    put(21, 6, u64::from(micros));
    b
}

/// The last timestamp a thread wrote: the calendar part is reused while its second lasts,
/// only the microseconds are written anew.
#[derive(Default)]
struct Stamp {
    second: Option<u64>,
    /// `"2026-11-25T09:46:40.`: the quoted text before the microseconds.
    prefix: String,
}

impl Stamp {
    /// Writes the time `since` the Unix epoch.
    fn write(&mut self, out: &mut String, since: Duration) {
        if self.second != Some(since.as_secs()) {
            let text = timestamp(SystemTime::UNIX_EPOCH + since);
            self.prefix.clear();
            self.prefix
                .push_str(std::str::from_utf8(&text[..21]).unwrap_or("\"\""));
            self.second = Some(since.as_secs());
        }
        out.push_str(&self.prefix);
        // Six digits, `Z` and the closing quote, a byte at a time (cheaper here than a UTF-8
        // check and a copy call, measured).
        let mut tail = *b"000000Z\"";
        let mut micros = since.subsec_micros();
        for d in tail[..6].iter_mut().rev() {
            *d = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        for b in tail {
            out.push(char::from(b));
        }
    }
}

/// Collects a span's fields as `(name, JSON value)`.
#[derive(Default)]
pub(crate) struct JsonFields {
    pub(crate) fields: Vec<(&'static str, String)>,
}

impl JsonFields {
    fn push(&mut self, field: &Field, json: String) {
        self.fields.push((field.name(), json));
    }
}

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        let mut s = String::with_capacity(value.len() + 2);
        write_json_str(&mut s, value);
        self.push(field, s);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, value.to_string());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        let mut s = String::new();
        write_f64(&mut s, value);
        self.push(field, s);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value.to_string());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        self.record_str(field, &text);
    }
}

pub(crate) fn write_f64(out: &mut String, value: f64) {
    if !value.is_finite() {
        let _ = write!(out, "\"{value}\"");
        return;
    }
    // Durations in milliseconds rounded to the microsecond, the common case: at most three
    // decimals, written as integers. The text reads back as exactly `value`.
    if (0.001..1e9).contains(&value) {
        let thousandths = (value * 1000.0).round();
        if thousandths / 1000.0 == value {
            write_thousandths(out, thousandths as u64);
            return;
        }
    }
    out.push_str(ryu::Buffer::new().format_finite(value));
}

/// `micros / 1000` milliseconds: the text [`write_f64`] gives for `micros as f64 / 1000.0`,
/// without the float arithmetic.
pub(crate) fn write_millis(out: &mut String, micros: u64) {
    if (1..1_000_000_000_000).contains(&micros) {
        write_thousandths(out, micros);
    } else {
        write_f64(out, micros as f64 / 1000.0);
    }
}

/// `t / 1000` with one to three decimals (trailing zeros dropped, at least one kept).
fn write_thousandths(out: &mut String, t: u64) {
    let mut int = itoa::Buffer::new();
    out.push_str(int.format(t / 1000));
    let frac = t % 1000;
    let digits = [frac / 100, frac / 10 % 10, frac % 10];
    let keep = match frac {
        0 => 1,
        f if f % 100 == 0 => 1,
        f if f % 10 == 0 => 2,
        _ => 3,
    };
    out.push('.');
    for d in &digits[..keep] {
        out.push(char::from(b'0' + *d as u8));
    }
}

pub(crate) fn write_int(out: &mut String, value: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(value));
}

/// `,"level":"…","target":` in one piece.
fn level_target(level: Level) -> &'static str {
    match level {
        Level::ERROR => ",\"level\":\"ERROR\",\"target\":",
        Level::WARN => ",\"level\":\"WARN\",\"target\":",
        Level::INFO => ",\"level\":\"INFO\",\"target\":",
        Level::DEBUG => ",\"level\":\"DEBUG\",\"target\":",
        _ => ",\"level\":\"TRACE\",\"target\":",
    }
}

/// Writes an event's fields straight into the line: no allocation per field. Keys already
/// written are skipped, so the object never has a duplicate key.
struct LineVisitor<'a, 'k> {
    line: &'a mut String,
    scratch: &'a mut String,
    seen: Seen<'k>,
    has_message: bool,
}

/// A key's bit in a line's filter of keys (see `Seen`).
#[inline(always)]
pub(crate) const fn key_bit(key: &str) -> u64 {
    let b = key.as_bytes();
    let h = match b {
        [] => 0,
        [first, .., last] => b.len() ^ ((*first as usize) << 2) ^ (*last as usize),
        [only] => 1 ^ ((*only as usize) << 2),
    };
    1 << (h & 63)
}

/// The keys a line has so far, so that no key is written twice. A 64-bit filter answers
/// "surely not seen" for nearly every key without comparing strings; the list is a
/// per-thread buffer.
struct Seen<'a> {
    keys: &'a mut Vec<&'static str>,
    filter: u64,
}

impl<'a> Seen<'a> {
    /// The keys every line starts with: the first four reserved ones.
    const FIRST: [&'static str; 4] = [
        RESERVED_KEYS[0],
        RESERVED_KEYS[1],
        RESERVED_KEYS[2],
        RESERVED_KEYS[3],
    ];

    fn new(keys: &'a mut Vec<&'static str>) -> Self {
        keys.clear();
        let mut seen = Self { keys, filter: 0 };
        for k in Self::FIRST {
            seen.add(k);
        }
        seen
    }

    /// Records keys known not to be there, distinct, whose bits are `filter`.
    fn add_all(&mut self, keys: &[&'static str], filter: u64) {
        self.filter |= filter;
        self.keys.extend_from_slice(keys);
    }

    fn contains(&self, key: &str) -> bool {
        self.filter & key_bit(key) != 0 && self.keys.contains(&key)
    }

    /// Records a key known not to be there.
    fn add(&mut self, key: &'static str) {
        self.filter |= key_bit(key);
        self.keys.push(key);
    }

    /// Records a key; `false` if it was there already.
    fn insert(&mut self, key: &'static str) -> bool {
        if self.contains(key) {
            return false;
        }
        self.add(key);
        true
    }
}

impl LineVisitor<'_, '_> {
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if !self.seen.insert(name) {
            return false;
        }
        if name == "message" {
            self.has_message = true;
        }
        self.line.push(',');
        write_json_str(self.line, name);
        self.line.push(':');
        true
    }
}

impl Visit for LineVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            write_json_str(self.line, value);
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            write_int(self.line, value);
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            write_int(self.line, value);
        }
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            write_f64(self.line, value);
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.line.push_str(if value { "true" } else { "false" });
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.key(field) {
            self.scratch.clear();
            let _ = write!(self.scratch, "{value:?}");
            write_json_str(self.line, self.scratch);
        }
    }
}

/// How many records below WARN to keep, and how.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// Probability of keeping a request's (or a lone record's) INFO, DEBUG and TRACE lines.
    pub probability: f64,
    /// Seed for decisions outside requests and for hashing request ids (tests pin it).
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            probability: 1.0,
            seed: 0x5eed,
        }
    }
}

static METADATA: MetricsMetadata<'static> = MetricsMetadata::new(
    "towerscope::log",
    metrics::Level::INFO,
    Some(module_path!()),
);

struct Counters {
    sampled: Counter,
    rate_limited: Counter,
}

impl Counters {
    fn new() -> Self {
        metrics::with_recorder(|r| {
            r.describe_counter(
                KeyName::from_const_str("log_records_suppressed_total"),
                None,
                "Log records not written: sampled out, or over the per-call-site rate limit."
                    .into(),
            );
            let key = |reason: &'static str| {
                Key::from_parts(
                    "log_records_suppressed_total",
                    vec![Label::from_static_parts("reason", reason)],
                )
            };
            Counters {
                sampled: r.register_counter(&key("sampled"), &METADATA),
                rate_limited: r.register_counter(&key("rate_limited"), &METADATA),
            }
        })
    }
}

/// The JSON layer. Build it with [`JsonLayer::new`] and add it to a `tracing_subscriber`
/// registry, or let [`crate::log::LogConfig::init`] do it all.
pub struct JsonLayer<W> {
    make_writer: W,
    service: Arc<str>,
    /// `,"service":"…"`, escaped once.
    service_json: Arc<str>,
    sampling: Sampling,
    limiter: Option<Arc<Limiter>>,
    counters: Counters,
    rng: Mutex<fastrand::Rng>,
}

impl<W> std::fmt::Debug for JsonLayer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLayer")
            .field("service", &self.service)
            .field("sampling", &self.sampling)
            .finish_non_exhaustive()
    }
}

/// Per-thread buffers, reused: the line being formatted, a scratch buffer for `Debug` values,
/// and the last timestamp.
struct Bufs {
    line: String,
    scratch: String,
    stamp: Stamp,
    keys: Vec<&'static str>,
}

thread_local! {
    static LINE: RefCell<Bufs> = RefCell::new(Bufs {
        line: String::with_capacity(512),
        scratch: String::with_capacity(64),
        stamp: Stamp::default(),
        keys: Vec::with_capacity(32),
    });
}

impl<W> JsonLayer<W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    /// A layer writing to `make_writer`, with `service` on every record, no sampling and the
    /// default rate limit (100 per call site per 60 s).
    pub fn new(service: impl Into<String>, make_writer: W) -> Self {
        super::context::json_layer_made();
        let service: String = service.into();
        let mut service_json = String::from(",\"service\":");
        write_json_str(&mut service_json, &service);
        Self {
            make_writer,
            service: Arc::from(service),
            service_json: Arc::from(service_json),
            sampling: Sampling::default(),
            limiter: Some(Arc::new(Limiter::new(RateLimit::default()))),
            counters: Counters::new(),
            rng: Mutex::new(fastrand::Rng::with_seed(Sampling::default().seed)),
        }
    }

    /// Keeps INFO and lower records with this probability (ERROR and WARN always pass); the
    /// decision is made once per request, from its trace id when it has one.
    pub fn sampling(mut self, sampling: Sampling) -> Self {
        self.rng = Mutex::new(fastrand::Rng::with_seed(sampling.seed));
        self.sampling = sampling;
        self
    }

    /// The per-call-site rate limit (`None`: unlimited).
    pub fn rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.limiter = limit.map(|cfg| Arc::new(Limiter::new(cfg)));
        self
    }

    /// Writes the summary records of rate-limit windows that have closed ("suppressed=N");
    /// [`crate::log::LogConfig::init`] calls it every second.
    pub fn flush_suppressed(&self) {
        let Some(limiter) = &self.limiter else { return };
        for w in limiter.closed() {
            self.write_summary(w.level, &w.target, &w.location, w.suppressed);
        }
    }

    pub(crate) fn flusher(self: &Arc<Self>) -> impl Fn() + Send + Sync + 'static
    where
        W: Send + Sync,
    {
        let me = Arc::downgrade(self);
        move || {
            if let Some(me) = me.upgrade() {
                me.flush_suppressed();
            }
        }
    }

    fn write_summary(&self, level: Level, target: &str, location: &str, n: u64) {
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":");
        write_timestamp(&mut line, SystemTime::now());
        let _ = write!(line, ",\"level\":\"{level}\",\"target\":");
        write_json_str(&mut line, target);
        let _ = write!(
            line,
            ",\"message\":\"records suppressed by the rate limit\",\"service\":"
        );
        write_json_str(&mut line, &self.service);
        let _ = write!(line, ",\"suppressed\":{n},\"callsite\":");
        write_json_str(&mut line, location);
        line.push_str("}\n");
        let _ = self.make_writer.make_writer().write_all(line.as_bytes());
    }

    /// `true` when the record may be written; counts and remembers it otherwise. `meta` is the
    /// record's metadata (a `log` record's own, normalized), `key` its call site's key.
    fn admit(&self, meta: &tracing::Metadata<'_>, key: usize) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        if meta.target() == REQUEST_TARGET {
            return true;
        }
        let (allowed, summary) = limiter.admit(key, meta);
        if let Some(w) = summary {
            self.write_summary(w.level, &w.target, &w.location, w.suppressed);
        }
        if !allowed {
            self.counters.rate_limited.increment(1);
        }
        allowed
    }

    /// Its sampling settings.
    #[cfg(all(test, feature = "axum", feature = "prometheus"))]
    pub(crate) fn sampling_settings(&self) -> Sampling {
        self.sampling
    }

    fn keep_unsampled(&self) -> bool {
        let p = self.sampling.probability;
        p >= 1.0 || (p > 0.0 && self.rng.lock().unwrap_or_else(|e| e.into_inner()).f64() < p)
    }
}

/// Whether the request with this context keeps its INFO and lower records.
pub(crate) fn decide_sampling(rc: &RequestContext, s: &Sampling) -> bool {
    s.probability >= 1.0
        || rc
            .sampling_key()
            .is_none_or(|(k, trace)| sampled(k, trace, s.probability, s.seed))
}

/// Whether a request with this key (trace id hex, or request id) is sampled at probability p.
/// From a trace id: its lower 64 bits against `p x 2^64`, as OpenTelemetry's ratio sampler does,
/// so logs and traces agree.
pub(crate) fn sampled(key: &str, from_trace: bool, p: f64, seed: u64) -> bool {
    if p >= 1.0 {
        return true;
    }
    if p <= 0.0 {
        return false;
    }
    let x = if from_trace && key.len() >= 16 {
        u64::from_str_radix(&key[key.len() - 16..], 16).unwrap_or(0)
    } else {
        // FNV-1a, then a finaliser: request ids are often sequential.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
        for b in key.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    };
    (x as f64) < p * (u64::MAX as f64)
}

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let meta = attrs.metadata();
        if meta.name() != REQUEST_SPAN || meta.target() != REQUEST_TARGET {
            return;
        }
        // Built by the request log just before, when it could; else from the span's fields.
        let handed = handoff(|h| h.context.take()).flatten();
        let rc = handed.unwrap_or_else(|| {
            let mut rc = RequestContext::default();
            attrs.record(&mut rc);
            rc
        });
        let mut rc = rc;
        rc.sampled = decide_sampling(&rc, &self.sampling);
        handoff(|h| h.sampled = rc.sampled);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(rc);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(rc) = ext.get_mut::<RequestContext>() {
            let mut fields = JsonFields::default();
            values.record(&mut fields);
            for (k, v) in fields.fields {
                rc.set(k, &v);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = *meta.level();
        let request_record = meta.target() == REQUEST_TARGET;
        // The request this record belongs to: the innermost span with a request context
        // (looked up once; the span stays borrowed while the line is written).
        // Its sampling decision comes with it (one look at the span's extensions).
        let found = ctx.event_scope(event).and_then(|mut s| {
            s.find_map(|span| {
                let sampled = span.extensions().get::<RequestContext>()?.sampled;
                Some((span, sampled))
            })
        });
        let (request, mut sampled) = match found {
            Some((span, sampled)) => (Some(span), Some(sampled)),
            None => (None, None),
        };
        // A request without a span (see `scope`): its record brings the decision, and the
        // records written while it is polled find its context on the thread.
        let mut pending = false;
        if request.is_none() {
            if request_record {
                sampled = handoff(|h| h.record_sampled.take()).flatten();
            } else if event.is_contextual() {
                sampled = super::scope::with_pending(|rc| rc.sampled);
                pending = sampled.is_some();
            }
        }
        if level > Level::WARN {
            let keep = match sampled {
                Some(sampled) => sampled,
                None => self.keep_unsampled(),
            };
            if !keep {
                self.counters.sampled.increment(1);
                return;
            }
        }
        // A record of the `log` crate, bridged by `LogTracer` (`LogConfig::init`): written and
        // rate limited with its own target, file and line, not the bridge's (one call site per
        // level for every `log` record).
        let log_meta = if request_record {
            None
        } else {
            tracing_log::NormalizeEvent::normalized_metadata(event)
        };
        let site = match &log_meta {
            Some(m) => log_site_key(m),
            None => meta.callsite().0 as *const _ as *const () as usize,
        };
        if !self.admit(log_meta.as_ref().unwrap_or(meta), site) {
            return;
        }
        let line = Line {
            level,
            request_record,
            log_target: log_meta.as_ref().map(|m| m.target()),
        };
        match &request {
            Some(span) => {
                let ext = span.extensions();
                self.write_line(event, &line, ext.get::<RequestContext>());
            }
            None if pending => {
                let written =
                    super::scope::with_pending(|rc| self.write_line(event, &line, Some(rc)));
                if written.is_none() {
                    self.write_line(event, &line, None);
                }
            }
            None => self.write_line(event, &line, None),
        }
    }
}

impl<W> JsonLayer<W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    /// Writes one line: the event's fields (or the request record handed over), then the
    /// request's context `rc`, when it has one.
    fn write_line(&self, event: &Event<'_>, l: &Line<'_>, rc: Option<&RequestContext>) {
        let meta = event.metadata();
        let &Line {
            level,
            request_record,
            log_target,
        } = l;
        LINE.with(|cell| {
            let Ok(mut bufs) = cell.try_borrow_mut() else {
                return;
            };
            let Bufs {
                line,
                scratch,
                stamp,
                keys,
            } = &mut *bufs;
            line.clear();
            line.push_str("{\"timestamp\":");
            stamp.write(line, crate::lifecycle::unix_now());
            line.push_str(level_target(level));
            if request_record {
                line.push_str(REQUEST_TARGET_JSON);
            } else {
                write_json_str(line, log_target.unwrap_or(meta.target()));
            }
            line.push_str(&self.service_json);
            let mut v = LineVisitor {
                line,
                scratch,
                seen: Seen::new(keys),
                has_message: false,
            };
            if log_target.is_some() {
                // The bridge's own fields: their values are the record's target, file and
                // line, already in the line's `target`, or not logged.
                for k in LOG_FIELDS {
                    v.seen.add(k);
                }
            }
            // The request record's fields, written by the request log from typed values, or
            // any event's fields through the visitor. A record of a request without a span
            // also brings its context (then nothing else is written but the closing brace).
            let mut complete = false;
            let handed = request_record
                && handoff(|h| {
                    if !h.record_ready {
                        return false;
                    }
                    v.line.push_str(&h.record);
                    v.has_message = true;
                    complete = h.record_has_context;
                    // The keys matter only for a context still to come (a complete record
                    // was checked against its context when written). The request log's keys
                    // are distinct and none is one of the first four: added at once, with
                    // their filter bits.
                    if !complete {
                        v.seen.add_all(&h.record_keys, h.record_filter);
                    }
                    true
                }) == Some(true);
            if !handed {
                event.record(&mut v);
            }
            if !v.has_message {
                v.line.push_str(",\"message\":\"\"");
            }
            let seen = v.seen;
            if !complete {
                // The innermost span the code runs in (a handler's own span, or the server
                // span), when OpenTelemetry has one current: its ids win over the request's.
                let span_ids = current_span_ids(line);
                if let Some(rc) = rc {
                    let clash = |k: &str| {
                        seen.contains(k) || (span_ids && (k == "trace_id" || k == "span_id"))
                    };
                    if rc.members().any(|(k, _)| clash(k)) {
                        for (k, text) in rc.members() {
                            if !clash(k) {
                                line.push_str(text);
                            }
                        }
                    } else {
                        line.push_str(rc.json());
                    }
                }
            }
            line.push_str("}\n");
            let _ = self
                .make_writer
                .make_writer_for(meta)
                .write_all(line.as_bytes());
        });
    }
}

/// What a line is: its level, whether it is the request log's record, and a `log` record's
/// own target.
struct Line<'a> {
    level: Level,
    request_record: bool,
    log_target: Option<&'a str>,
}

/// The fields `LogTracer` adds to a `log` record's event.
const LOG_FIELDS: [&str; 4] = ["log.target", "log.module_path", "log.file", "log.line"];

/// The rate limiter's key of a `log` record's call site: its level, target, file and line
/// (the `log` crate has no call-site identity of its own).
fn log_site_key(meta: &tracing::Metadata<'_>) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (meta.level(), meta.target(), meta.file(), meta.line()).hash(&mut h);
    h.finish() as usize
}

/// Writes `trace_id` and `span_id` of the current OpenTelemetry span, if there is one.
#[cfg(feature = "otel")]
fn current_span_ids(line: &mut String) -> bool {
    match crate::trace::TraceIds::current() {
        Some(ids) => {
            line.push_str(",\"trace_id\":\"");
            line.push_str(ids.trace_id.hex().as_str());
            line.push_str("\",\"span_id\":\"");
            line.push_str(ids.span_id.hex().as_str());
            line.push('"');
            true
        }
        None => false,
    }
}

#[cfg(not(feature = "otel"))]
fn current_span_ids(_: &mut String) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quoted_request_target_is_the_target() {
        let mut out = String::new();
        write_json_str(&mut out, REQUEST_TARGET);
        assert_eq!(out, REQUEST_TARGET_JSON);
    }

    #[test]
    fn numbers_read_back_exactly_and_match_ryu() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut values = vec![
            0.0, 0.001, 0.08, 1.0, 12.345, 999.999, 1e9, 0.0005, 1e-7, 3.5e12,
        ];
        values.extend((0..10_000).map(|_| rng.u64(0..100_000_000) as f64 / 1000.0));
        values.extend((0..1_000).map(|_| rng.f64() * 1e6));
        for v in values {
            let mut out = String::new();
            write_f64(&mut out, v);
            assert_eq!(out.parse::<f64>().unwrap(), v, "{out}");
            assert_eq!(out, ryu::Buffer::new().format_finite(v), "{v}");
        }
    }

    #[test]
    fn millis_from_micros_are_written_as_the_float_would_be() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut values = vec![0u64, 1, 9, 10, 999, 1000, 1001, 1500, 999_999_999_999];
        values.extend([1_000_000_000_000, 1_000_000_000_001, u64::MAX / 2]);
        values.extend((0..20_000).map(|_| rng.u64(0..10_000_000)));
        values.extend((0..2_000).map(|_| rng.u64(..)));
        for us in values {
            let (mut a, mut b) = (String::new(), String::new());
            write_millis(&mut a, us);
            write_f64(&mut b, us as f64 / 1000.0);
            assert_eq!(a, b, "{us}");
        }
    }

    #[test]
    fn the_cached_timestamp_matches_a_fresh_one() {
        let mut stamp = Stamp::default();
        let base = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_795_000_000_123_456);
        for step in [0u64, 1, 999_999, 1_000_000, 86_400_000_000, 86_400_000_007] {
            let t = base + std::time::Duration::from_micros(step);
            let (mut cached, mut fresh) = (String::new(), String::new());
            stamp.write(
                &mut cached,
                t.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
            );
            write_timestamp(&mut fresh, t);
            assert_eq!(cached, fresh);
        }
    }
}
