//! The recorded SERVER span, kept by towerscope instead of the SDK's span.
//!
//! The SDK's span builds its attributes as `KeyValue`s up front (a `String` per path, host,
//! address and user agent), takes a lock per change and becomes `SpanData` at the end. The
//! server span's attributes are known in kind, so they are kept typed here, the request's
//! text copied into buffers that are reused: the export thread hands each record back once
//! written, so in steady state a recorded span allocates nothing for its attributes, and no
//! memory crosses from one thread's allocator to the other's. Through the OpenTelemetry `Span`
//! API it behaves as the SDK's span does (attributes, events, links, status order, name,
//! limits), so handlers can still annotate the current span.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, Version};
use opentelemetry::trace::{Event, Link, SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLimits, SpanLinks};

use super::export::QueueHandle;
use crate::ip_text::IpText;
use crate::lifecycle::KnownMethod;

/// The most a spare record's text buffers keep between requests.
const KEEP_BYTES: usize = 512;

/// Set by the server observer when the response ends (kept typed, whoever sets them).
pub(crate) const STATUS_CODE: &str = "http.response.status_code";
pub(crate) const ERROR_TYPE: &str = "error.type";
pub(crate) const CANCELLED: &str = "towerscope.cancelled";

/// The request's semantic-convention attributes, typed; the text in reused buffers.
#[derive(Clone, Debug)]
pub(crate) struct RequestAttrs {
    pub(crate) method: KnownMethod,
    pub(crate) method_original: Option<Method>,
    /// `url.path` (as `Uri::path` gives it).
    pub(crate) path: String,
    pub(crate) https: bool,
    /// `url.query`, sensitive values already redacted.
    pub(crate) query: Option<String>,
    pub(crate) route: Option<Value>,
    /// Whether the request names its host: `server.address` (then `server.port` when it has
    /// one).
    pub(crate) has_host: bool,
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
    pub(crate) client: Option<IpAddr>,
    /// `network.peer.address`, set only when `client` is another host's (a trusted proxy's
    /// forwarded client): otherwise it would repeat `client.address`.
    pub(crate) peer: Option<IpAddr>,
    /// Whether `user_agent.original` was sent (as valid header text).
    pub(crate) has_user_agent: bool,
    pub(crate) user_agent: String,
    pub(crate) version: Version,
    /// `baggage.{key}` for allow-listed baggage keys.
    pub(crate) baggage: Vec<KeyValue>,
}

impl Default for RequestAttrs {
    fn default() -> Self {
        Self {
            method: KnownMethod::Get,
            method_original: None,
            path: String::new(),
            https: false,
            query: None,
            route: None,
            has_host: false,
            host: String::new(),
            port: None,
            client: None,
            peer: None,
            has_user_agent: false,
            user_agent: String::new(),
            version: Version::HTTP_11,
            baggage: Vec::new(),
        }
    }
}

impl RequestAttrs {
    /// Sets the host from an authority (`host`, `host:port`, `[v6]:port`, userinfo skipped);
    /// none when the port is not a number.
    pub(crate) fn set_host(&mut self, authority: Option<&str>) {
        self.host.clear();
        self.port = None;
        self.has_host = false;
        if let Some((host, port)) = authority.and_then(crate::lifecycle::host_port) {
            self.host.push_str(host);
            self.port = port;
            self.has_host = true;
        }
    }

    pub(crate) fn set_user_agent(&mut self, ua: Option<&str>) {
        self.user_agent.clear();
        self.has_user_agent = ua.is_some();
        self.user_agent.push_str(ua.unwrap_or_default());
    }

    /// Forgets the request, keeping the buffers' capacity (up to a bound: a request with a
    /// huge path or user agent does not leave every spare record that large).
    fn clear(&mut self) {
        fn reuse(s: &mut String) {
            s.clear();
            s.shrink_to(KEEP_BYTES);
        }
        self.method_original = None;
        reuse(&mut self.path);
        self.query = None;
        self.route = None;
        self.has_host = false;
        reuse(&mut self.host);
        self.client = None;
        self.peer = None;
        self.has_user_agent = false;
        reuse(&mut self.user_agent);
        self.baggage.clear();
    }
}

/// An attribute value, borrowed from the record.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AttrVal<'a> {
    Str(&'a str),
    I64(i64),
    Value(&'a Value),
}

impl AttrVal<'_> {
    fn to_value(self) -> Value {
        match self {
            AttrVal::Str(s) => Value::from(s.to_owned()),
            AttrVal::I64(i) => Value::I64(i),
            AttrVal::Value(v) => v.clone(),
        }
    }
}

impl RequestAttrs {
    /// Calls `f` for every attribute, in the order the span carries them.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&str, AttrVal<'_>)) {
        f("http.request.method", AttrVal::Str(self.method.as_str()));
        if let Some(m) = &self.method_original {
            f("http.request.method_original", AttrVal::Str(m.as_str()));
        }
        f("url.path", AttrVal::Str(&self.path));
        f(
            "url.scheme",
            AttrVal::Str(if self.https { "https" } else { "http" }),
        );
        if let Some(q) = &self.query {
            f("url.query", AttrVal::Str(q));
        }
        if let Some(r) = &self.route {
            f("http.route", AttrVal::Value(r));
        }
        if self.has_host {
            f("server.address", AttrVal::Str(&self.host));
            if let Some(p) = self.port {
                f("server.port", AttrVal::I64(i64::from(p)));
            }
        }
        if let Some(ip) = self.client {
            f("client.address", AttrVal::Str(IpText::of(ip).as_str()));
        }
        if let Some(ip) = self.peer {
            f(
                "network.peer.address",
                AttrVal::Str(IpText::of(ip).as_str()),
            );
        }
        if self.has_user_agent {
            f("user_agent.original", AttrVal::Str(&self.user_agent));
        }
        f(
            "network.protocol.version",
            AttrVal::Str(match self.version {
                Version::HTTP_09 => "0.9",
                Version::HTTP_10 => "1.0",
                Version::HTTP_2 => "2",
                Version::HTTP_3 => "3",
                _ => "1.1",
            }),
        );
        for kv in &self.baggage {
            f(kv.key.as_str(), AttrVal::Value(&kv.value));
        }
    }
}

/// Everything the export thread needs to write one server span.
#[derive(Clone, Debug)]
pub(crate) struct ServerRecord {
    pub(crate) span_context: SpanContext,
    pub(crate) parent_span_id: SpanId,
    pub(crate) parent_span_is_remote: bool,
    pub(crate) name: Cow<'static, str>,
    pub(crate) start_time: SystemTime,
    pub(crate) end_time: SystemTime,
    pub(crate) request: RequestAttrs,
    /// Attributes set through the `Span` API, in order.
    pub(crate) extra: Vec<KeyValue>,
    pub(crate) dropped_attributes_count: u32,
    pub(crate) status_code: Option<i64>,
    pub(crate) error_type: Option<Value>,
    pub(crate) cancelled: Option<bool>,
    pub(crate) events: SpanEvents,
    pub(crate) links: SpanLinks,
    pub(crate) status: Status,
}

impl Default for ServerRecord {
    fn default() -> Self {
        Self {
            span_context: SpanContext::NONE,
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            name: Cow::Borrowed(""),
            start_time: SystemTime::UNIX_EPOCH,
            end_time: SystemTime::UNIX_EPOCH,
            request: RequestAttrs::default(),
            extra: Vec::new(),
            dropped_attributes_count: 0,
            status_code: None,
            error_type: None,
            cancelled: None,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
        }
    }
}

impl ServerRecord {
    /// Forgets the span, keeping the buffers' capacity (for the next request).
    pub(crate) fn clear(&mut self) {
        self.span_context = SpanContext::NONE;
        self.name = Cow::Borrowed("");
        self.request.clear();
        self.extra.clear();
        self.extra.shrink_to(8);
        self.dropped_attributes_count = 0;
        self.status_code = None;
        self.error_type = None;
        self.cancelled = None;
        self.events.events.clear();
        self.events.events.shrink_to(2);
        self.events.dropped_count = 0;
        self.links.links.clear();
        self.links.links.shrink_to(2);
        self.links.dropped_count = 0;
        self.status = Status::Unset;
    }

    /// Calls `f` for every attribute: the request's, those set through the API, then the
    /// response's.
    pub(crate) fn for_each_attribute(&self, mut f: impl FnMut(&str, AttrVal<'_>)) {
        self.request.for_each(&mut f);
        for kv in &self.extra {
            f(kv.key.as_str(), AttrVal::Value(&kv.value));
        }
        if let Some(code) = self.status_code {
            f(STATUS_CODE, AttrVal::I64(code));
        }
        if let Some(e) = &self.error_type {
            f(ERROR_TYPE, AttrVal::Value(e));
        }
        if let Some(c) = self.cancelled {
            f(CANCELLED, AttrVal::Value(&Value::Bool(c)));
        }
    }

    /// The same span as the SDK's `SpanData` (for the console exporter, and to check the
    /// direct encoding against).
    pub(crate) fn to_span_data(&self, scope: &InstrumentationScope) -> SpanData {
        let mut attributes = Vec::new();
        self.for_each_attribute(|k, v| attributes.push(KeyValue::new(k.to_owned(), v.to_value())));
        SpanData {
            span_context: self.span_context.clone(),
            parent_span_id: self.parent_span_id,
            parent_span_is_remote: self.parent_span_is_remote,
            span_kind: SpanKind::Server,
            name: self.name.clone(),
            start_time: self.start_time,
            end_time: self.end_time,
            attributes,
            dropped_attributes_count: self.dropped_attributes_count,
            events: self.events.clone(),
            links: self.links.clone(),
            status: self.status.clone(),
            instrumentation_scope: scope.clone(),
        }
    }

    /// How many attributes the request and response hold (they count towards the limit).
    fn typed_count(&self) -> usize {
        let mut n = 0;
        self.request.for_each(|_, _| n += 1);
        n + 3
    }
}

/// The server span as an OpenTelemetry span: what handlers reach with
/// `Context::current().span()`.
#[derive(Debug)]
pub(crate) struct ServerSpan {
    span_context: SpanContext,
    record: Option<Box<ServerRecord>>,
    queue: Arc<QueueHandle>,
    /// The SDK's limits (its defaults, or `OTEL_SPAN_*_LIMIT`), applied the same way.
    limits: SpanLimits,
}

impl ServerSpan {
    pub(crate) fn new(
        record: Box<ServerRecord>,
        queue: Arc<QueueHandle>,
        limits: SpanLimits,
    ) -> Self {
        Self {
            span_context: record.span_context.clone(),
            record: Some(record),
            queue,
            limits,
        }
    }
}

impl opentelemetry::trace::Span for ServerSpan {
    fn add_event_with_timestamp<T>(
        &mut self,
        name: T,
        timestamp: SystemTime,
        mut attributes: Vec<KeyValue>,
    ) where
        T: Into<Cow<'static, str>>,
    {
        let Some(r) = &mut self.record else { return };
        let per_event = self.limits.max_attributes_per_event as usize;
        if r.events.events.len() < self.limits.max_events_per_span as usize {
            let dropped = attributes.len().saturating_sub(per_event);
            attributes.truncate(per_event);
            r.events
                .events
                .push(Event::new(name, timestamp, attributes, dropped as u32));
        } else {
            r.events.dropped_count += 1;
        }
    }

    fn span_context(&self) -> &SpanContext {
        &self.span_context
    }

    fn is_recording(&self) -> bool {
        self.record.is_some()
    }

    fn set_attribute(&mut self, attribute: KeyValue) {
        let Some(r) = &mut self.record else { return };
        match (attribute.key.as_str(), &attribute.value) {
            (STATUS_CODE, Value::I64(code)) => r.status_code = Some(*code),
            (ERROR_TYPE, _) => r.error_type = Some(attribute.value),
            (CANCELLED, Value::Bool(c)) => r.cancelled = Some(*c),
            _ if r.extra.len() + r.typed_count() < self.limits.max_attributes_per_span as usize => {
                r.extra.push(attribute)
            }
            _ => r.dropped_attributes_count += 1,
        }
    }

    fn set_status(&mut self, status: Status) {
        let Some(r) = &mut self.record else { return };
        // A total order, as the SDK's: Ok > Error > Unset.
        if status > r.status {
            r.status = status;
        }
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        if let Some(r) = &mut self.record {
            r.name = new_name.into();
        }
    }

    fn add_link(&mut self, span_context: SpanContext, mut attributes: Vec<KeyValue>) {
        let Some(r) = &mut self.record else { return };
        let per_link = self.limits.max_attributes_per_link as usize;
        if r.links.links.len() < self.limits.max_links_per_span as usize {
            let dropped = attributes.len().saturating_sub(per_link);
            attributes.truncate(per_link);
            r.links
                .links
                .push(Link::new(span_context, attributes, dropped as u32));
        } else {
            r.links.dropped_count += 1;
        }
    }

    /// Ends now, by the lifecycle's wall clock (a TSC read, not a vDSO call).
    fn end(&mut self) {
        self.end_with_timestamp(crate::lifecycle::wall_now());
    }

    fn end_with_timestamp(&mut self, timestamp: SystemTime) {
        if let Some(mut r) = self.record.take() {
            r.end_time = timestamp;
            self.queue.push_server(r);
        }
    }
}

impl Drop for ServerSpan {
    /// A span never ended explicitly is ended when dropped, as the SDK's is.
    fn drop(&mut self) {
        if self.record.is_some() {
            opentelemetry::trace::Span::end(self);
        }
    }
}

#[cfg(test)]
mod tests;
