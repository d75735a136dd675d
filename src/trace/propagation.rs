//! Extraction and injection of trace context: W3C Trace Context and Baggage, B3 (single and
//! multi header) for Zipkin-era peers, chosen like `OTEL_PROPAGATORS`.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::baggage::Baggage;
use super::traceparent::{SpanId, TraceFlags, TraceId, TraceParent};
use super::tracestate::TraceState;

/// `traceparent`
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `baggage`
pub static BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// `b3` (single header)
pub static B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// One propagation format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// W3C Trace Context (`traceparent`, `tracestate`).
    TraceContext,
    /// W3C Baggage.
    Baggage,
    /// B3 single header (`b3`).
    B3,
    /// B3 multi header (`X-B3-TraceId`, …).
    B3Multi,
}

/// The formats a service reads and writes, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Propagators(Vec<Format>);

impl Default for Propagators {
    /// `tracecontext,baggage`, the OpenTelemetry default.
    fn default() -> Self {
        Self(vec![Format::TraceContext, Format::Baggage])
    }
}

impl Propagators {
    /// These formats, in order (the first that yields a valid parent wins on extraction).
    pub fn new(formats: impl IntoIterator<Item = Format>) -> Self {
        Self(formats.into_iter().collect())
    }

    /// Parses an `OTEL_PROPAGATORS` value (`tracecontext`, `baggage`, `b3`, `b3multi`, `none`,
    /// comma-separated). Unknown names are skipped and returned, so the caller can warn.
    pub fn parse(value: &str) -> (Self, Vec<String>) {
        let mut formats = Vec::new();
        let mut unknown = Vec::new();
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let f = match name {
                "tracecontext" => Format::TraceContext,
                "baggage" => Format::Baggage,
                "b3" => Format::B3,
                "b3multi" => Format::B3Multi,
                "none" => continue,
                other => {
                    unknown.push(other.to_owned());
                    continue;
                }
            };
            if !formats.contains(&f) {
                formats.push(f);
            }
        }
        (Self(formats), unknown)
    }

    /// From the `OTEL_PROPAGATORS` environment variable, the default when unset or empty.
    pub fn from_env() -> (Self, Vec<String>) {
        match std::env::var("OTEL_PROPAGATORS") {
            Ok(v) if !v.trim().is_empty() => Self::parse(&v),
            _ => (Self::default(), Vec::new()),
        }
    }

    /// The formats.
    pub fn formats(&self) -> &[Format] {
        &self.0
    }

    /// Reads the caller's context. Invalid input yields no parent (the trace restarts); it is
    /// never an error.
    pub fn extract(&self, headers: &HeaderMap) -> Extracted {
        let mut out = Extracted::default();
        self.extract_into(headers, &mut out);
        out
    }

    /// [`extract`](Self::extract) into the caller's (default) value: written where the caller
    /// reads it. Returned by value, the result was copied out in 16-byte loads right after
    /// its fields' narrower stores, and each load waited for them (perf).
    pub(crate) fn extract_into(&self, headers: &HeaderMap, out: &mut Extracted) {
        let present = Present::scan(headers);
        for f in &self.0 {
            match f {
                Format::Baggage if !present.baggage => {}
                Format::Baggage => {
                    let all = headers.get_all(&BAGGAGE);
                    if all.iter().next().is_some() {
                        out.baggage = Baggage::parse(all.iter().filter_map(|v| v.to_str().ok()));
                    }
                }
                _ if out.parent.is_some() => {}
                Format::TraceContext if !present.traceparent => {}
                Format::TraceContext => {
                    if let Some(parent) = present.traceparent(headers) {
                        out.parent = Some(parent);
                        out.sampled = Some(parent.flags.sampled());
                        out.debug = false;
                        // Ignored unless the traceparent was valid; dropped whole if invalid.
                        if present.tracestate {
                            let values: Option<Vec<&str>> = headers
                                .get_all(&TRACESTATE)
                                .iter()
                                .map(|v| v.to_str().ok())
                                .collect();
                            out.state = values.and_then(TraceState::parse).unwrap_or_default();
                        }
                    }
                }
                Format::B3 | Format::B3Multi => {
                    let found = match f {
                        Format::B3 => b3_single(headers),
                        _ => b3_multi(headers),
                    };
                    if let Some(b3) = found {
                        out.parent = b3.parent;
                        out.sampled = b3.sampled;
                        out.debug = b3.debug;
                    }
                }
            }
        }
    }

    /// Writes the current context for a downstream call in every configured format. For a
    /// request whose B3 caller asked for debug tracing ([`Extracted::debug`]), use
    /// [`inject_debug`](Self::inject_debug), as the client layers do.
    pub fn inject(
        &self,
        trace_id: TraceId,
        span_id: SpanId,
        flags: TraceFlags,
        state: &TraceState,
        baggage: &Baggage,
        headers: &mut HeaderMap,
    ) {
        let ids = (trace_id, span_id, flags);
        self.inject_with_debug(ids, state, baggage, false, headers);
    }

    /// [`inject`](Self::inject) passing on a B3 caller's debug flag ([`Extracted::debug`]): in
    /// the B3 formats, B3's debug state in place of the sampling state (`-d` in `b3`,
    /// `X-B3-Flags: 1` without `X-B3-Sampled`). The other formats are written as by `inject`.
    pub fn inject_debug(
        &self,
        trace_id: TraceId,
        span_id: SpanId,
        flags: TraceFlags,
        state: &TraceState,
        baggage: &Baggage,
        headers: &mut HeaderMap,
    ) {
        let ids = (trace_id, span_id, flags);
        self.inject_with_debug(ids, state, baggage, true, headers);
    }

    /// Whether a B3 format is configured (only then is a caller's debug flag looked for).
    #[cfg(feature = "otel")]
    pub(crate) fn b3(&self) -> bool {
        self.0
            .iter()
            .any(|f| matches!(f, Format::B3 | Format::B3Multi))
    }

    /// [`inject`](Self::inject), and with `debug` (a B3 caller asked for debug tracing) B3's
    /// debug state in place of its sampling state: `-d` in `b3`, `X-B3-Flags: 1` without
    /// `X-B3-Sampled` ("debug implies an accept decision, so don't also send the
    /// X-B3-Sampled header").
    pub(crate) fn inject_with_debug(
        &self,
        (trace_id, span_id, flags): (TraceId, SpanId, TraceFlags),
        state: &TraceState,
        baggage: &Baggage,
        debug: bool,
        headers: &mut HeaderMap,
    ) {
        let sampled = if flags.sampled() { "1" } else { "0" };
        for f in &self.0 {
            match f {
                Format::TraceContext => {
                    set(
                        headers,
                        &TRACEPARENT,
                        TraceParent::header(trace_id, span_id, flags),
                    );
                    match state.header() {
                        Some(s) => set(headers, &TRACESTATE, s),
                        None => {
                            headers.remove(&TRACESTATE);
                        }
                    }
                }
                Format::Baggage => {
                    if let Some(b) = baggage.header() {
                        set(headers, &BAGGAGE, b);
                    }
                }
                Format::B3 => {
                    let state = if debug { "d" } else { sampled };
                    set(headers, &B3, format!("{trace_id}-{span_id}-{state}"));
                }
                Format::B3Multi => {
                    set(headers, &B3_TRACE_ID, trace_id.to_string());
                    set(headers, &B3_SPAN_ID, span_id.to_string());
                    let (name, other, value) = if debug {
                        (&B3_FLAGS, &B3_SAMPLED, "1")
                    } else {
                        (&B3_SAMPLED, &B3_FLAGS, sampled)
                    };
                    headers.insert(name, HeaderValue::from_static(value));
                    headers.remove(other);
                }
            }
        }
    }
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: String) {
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(name.clone(), v);
    }
}

/// What a request carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// The caller's span, when a valid one was received.
    pub parent: Option<TraceParent>,
    /// The caller's `tracestate` (empty when absent, invalid, or without a valid parent).
    pub state: TraceState,
    /// The caller's baggage.
    pub baggage: Baggage,
    /// The caller's sampling decision: its span's sampled flag, or B3's sampling state sent
    /// alone (`b3: 0` denies, `1` or `d` accepts, without ids). `None` when the caller left
    /// the decision to this service: no caller, or B3 ids without a sampling state
    /// ("defer"); the service's own sampler then decides, as for a new trace (the caller's
    /// trace id kept).
    pub sampled: Option<bool>,
    /// A B3 caller asked for debug tracing (`b3: …-d` or `d`, `X-B3-Flags: 1`), which also
    /// accepts. The server span keeps it in its context, and the client layers pass it on in
    /// the B3 formats, as B3 asks.
    pub debug: bool,
}

/// In a request's OpenTelemetry context: its B3 caller asked for debug tracing.
#[cfg(feature = "otel")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct B3Debug;

/// Which W3C headers a request may carry: with few headers, from one pass over them, which
/// also finds the `traceparent` value (and whether there are two: then none is valid); with
/// many, every header counts as possibly present and lookups decide.
struct Present<'a> {
    traceparent: bool,
    tracestate: bool,
    baggage: bool,
    /// The only `traceparent` value, when the pass saw exactly one.
    traceparent_value: Option<&'a HeaderValue>,
    /// The pass saw every header (and so every `traceparent`).
    scanned: bool,
}

impl<'a> Present<'a> {
    fn scan(headers: &'a HeaderMap) -> Self {
        match crate::lifecycle::headers::scan(headers, [&TRACEPARENT, &TRACESTATE, &BAGGAGE]) {
            Some([traceparent, tracestate, baggage]) => Self {
                traceparent: traceparent.first.is_some(),
                tracestate: tracestate.first.is_some(),
                baggage: baggage.first.is_some(),
                traceparent_value: traceparent.first.filter(|_| !traceparent.repeated),
                scanned: true,
            },
            None => Self {
                traceparent: true,
                tracestate: true,
                baggage: true,
                traceparent_value: None,
                scanned: false,
            },
        }
    }

    /// Exactly one valid `traceparent` header.
    fn traceparent(&self, headers: &HeaderMap) -> Option<TraceParent> {
        if self.scanned {
            return TraceParent::parse_bytes(self.traceparent_value?.as_bytes());
        }
        let mut all = headers.get_all(&TRACEPARENT).iter();
        let first = all.next()?;
        if all.next().is_some() {
            return None;
        }
        TraceParent::parse_bytes(first.as_bytes())
    }
}

/// A B3 trace id: 16 or 32 lowercase hex digits (64-bit ids are left-padded).
fn b3_trace_id(s: &str) -> Option<TraceId> {
    match s.len() {
        32 => TraceId::from_hex(s),
        16 => TraceId::from_hex(&format!("{:0>32}", s)),
        _ => None,
    }
}

fn b3_sampled(s: &str) -> Option<bool> {
    match s {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// What a B3 header says.
struct B3Context {
    /// The caller's span; none for a sampling state sent alone.
    parent: Option<TraceParent>,
    /// The caller's decision; `None`: deferred to this service.
    sampled: Option<bool>,
    /// Debug (`d`, `X-B3-Flags: 1`), an accept.
    debug: bool,
}

/// The caller's span and decision; its flags say sampled only on an accept.
fn b3_found(trace_id: TraceId, parent_id: SpanId, sampled: Option<bool>, debug: bool) -> B3Context {
    let flags = TraceFlags(u8::from(sampled == Some(true)));
    let parent = TraceParent {
        version: 0,
        trace_id,
        parent_id,
        flags,
    };
    B3Context {
        parent: Some(parent),
        sampled,
        debug,
    }
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`, or a sampling state alone (a decision without
/// ids); without a sampling state the decision is deferred.
fn b3_single(headers: &HeaderMap) -> Option<B3Context> {
    let v = headers.get(&B3)?.to_str().ok()?.trim();
    if let s @ ("0" | "1" | "d") = v {
        return Some(B3Context {
            parent: None,
            sampled: b3_sampled(s),
            debug: s == "d",
        });
    }
    let mut parts = v.split('-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let parent_id = SpanId::from_hex(parts.next()?)?;
    let state = parts.next();
    let sampled = match state {
        Some(s) => Some(b3_sampled(s)?),
        None => None,
    };
    if let Some(p) = parts.next() {
        SpanId::from_hex(p)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(b3_found(trace_id, parent_id, sampled, state == Some("d")))
}

/// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`, `X-B3-Flags` (`1`: debug, which implies
/// sampled); neither sampled nor debug: the decision is deferred.
fn b3_multi(headers: &HeaderMap) -> Option<B3Context> {
    let get = |n: &HeaderName| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let trace_id = b3_trace_id(get(&B3_TRACE_ID)?)?;
    let parent_id = SpanId::from_hex(get(&B3_SPAN_ID)?)?;
    let debug = get(&B3_FLAGS) == Some("1");
    let sampled = match (debug, get(&B3_SAMPLED)) {
        (true, _) => Some(true),
        (false, Some(s)) => Some(b3_sampled(s)?),
        (false, None) => None,
    };
    Some(b3_found(trace_id, parent_id, sampled, debug))
}
