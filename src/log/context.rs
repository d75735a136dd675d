//! The request context carried by the request span: flattened into every record written while
//! the request is served, extended by handlers with [`add_context`].

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::registry::LookupSpan;

use super::json::write_json_str;

/// Target of the request span and of the per-request record.
pub const REQUEST_TARGET: &str = "towerscope::request";
/// [`REQUEST_TARGET`] as a JSON string (the JSON layer writes it without escaping it per line).
pub(crate) const REQUEST_TARGET_JSON: &str = "\"towerscope::request\"";
/// Name of the request span.
pub const REQUEST_SPAN: &str = "request";

/// The context of one request, stored in its span's extensions by the JSON layer. It lives and
/// dies with the span, so it never leaks into another request. It is kept as the JSON text
/// it adds to a line (`,"key":value` per member, escaped once), since it is copied into every
/// line of the request: one buffer, one copy per line when no key repeats one of the line's.
#[derive(Debug)]
pub(crate) struct RequestContext {
    json: String,
    /// Each member's key and where its `,"key":value` text is in `json`.
    members: smallvec::SmallVec<[(Cow<'static, str>, std::ops::Range<usize>); 4]>,
    pub(crate) sampled: bool,
}

impl Default for RequestContext {
    fn default() -> Self {
        Self {
            json: spare_string(),
            members: smallvec::SmallVec::new(),
            sampled: true,
        }
    }
}

thread_local! {
    /// Text buffers of requests that ended on this thread (their contexts' JSON, their
    /// records' path and user agent), for the next ones: one allocation and one free less
    /// each (callgrind: about 80 instructions). At most `SPARES` of at most `SPARE_MAX` bytes
    /// each are kept.
    static SPARE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}
const SPARES: usize = 64;
const SPARE_MAX: usize = 1024;

/// An empty buffer: a spare one when this thread has one.
pub(crate) fn spare_string() -> String {
    SPARE
        .try_with(|s| s.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| String::with_capacity(192))
}

/// Gives a buffer back to this thread's spares (emptied), unless there are enough or it is
/// large.
pub(crate) fn recycle(mut text: String) {
    if text.capacity() == 0 || text.capacity() > SPARE_MAX {
        return;
    }
    text.clear();
    let _ = SPARE.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < SPARES {
                s.push(text);
            }
        }
    });
}

impl Drop for RequestContext {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.json));
    }
}

/// The request span's own fields (request id, route, trace ids) become the context.
impl tracing::field::Visit for RequestContext {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.set_with(field.name().into(), |json| write_json_str(json, value));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

impl RequestContext {
    /// Sets a field to a JSON value, replacing an earlier value of the same key.
    pub(crate) fn set(&mut self, key: impl Into<Cow<'static, str>>, json: &str) {
        self.set_with(key.into(), |out| out.push_str(json));
    }

    /// Appends a member whose key is not there yet (the request log building the context
    /// directly): its `,"key":` text and key, and `value` writes its JSON value.
    #[inline]
    pub(crate) fn append(
        &mut self,
        (prefix, key): (&'static str, &'static str),
        value: impl FnOnce(&mut String),
    ) {
        debug_assert_eq!(prefix.get(2..prefix.len() - 2), Some(key));
        let start = self.json.len();
        self.json.push_str(prefix);
        value(&mut self.json);
        self.members
            .push((Cow::Borrowed(key), start..self.json.len()));
    }

    fn set_with(&mut self, key: Cow<'static, str>, value: impl FnOnce(&mut String)) {
        if let Some(at) = self.members.iter().position(|(k, _)| *k == key) {
            let (_, range) = self.members.remove(at);
            let len = range.len();
            self.json.replace_range(range.clone(), "");
            for (_, r) in &mut self.members[at..] {
                *r = r.start - len..r.end - len;
            }
        }
        let start = self.json.len();
        self.json.push(',');
        write_json_str(&mut self.json, &key);
        self.json.push(':');
        value(&mut self.json);
        self.members.push((key, start..self.json.len()));
    }

    /// The members: key and `,"key":value` text.
    pub(crate) fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members
            .iter()
            .map(|(k, r)| (k.as_ref(), &self.json[r.clone()]))
    }

    /// Every member's text at once.
    pub(crate) fn json(&self) -> &str {
        &self.json
    }

    /// A string member's value, unquoted (ids are plain text, never escaped).
    pub(crate) fn raw(&self, key: &str) -> Option<&str> {
        let (_, text) = self.members().find(|(k, _)| *k == key)?;
        let value = &text[text.find(':')? + 1..];
        Some(value.trim_matches('"'))
    }

    /// What sampling decides on: the trace id when there is one, else the request id.
    pub(crate) fn sampling_key(&self) -> Option<(&str, bool)> {
        if let Some(t) = self.raw("trace_id") {
            return Some((t, true));
        }
        self.raw("request_id").map(|r| (r, false))
    }
}

/// What the request log hands to the JSON layer on the same thread, within one `tracing`
/// call: the request span's context built directly from typed values (no field visiting, no
/// escaping of what is known to be plain), and the request record's fields already written as
/// JSON. Only while a JSON layer exists; any other subscriber reads the span's and the event's
/// fields as usual, and the JSON layer falls back to them when nothing was handed over.
pub(crate) struct Handoff {
    /// The context of the request span about to be created.
    pub(crate) context: Option<RequestContext>,
    /// The request record's fields, `,"key":value` each, while `record_ready`.
    pub(crate) record: String,
    /// The keys written in `record`.
    pub(crate) record_keys: Vec<&'static str>,
    /// Their bits in a line's key filter.
    pub(crate) record_filter: u64,
    pub(crate) record_ready: bool,
    /// `record` ends with the request's context (a request without a span: the record has
    /// no parent to take it from).
    pub(crate) record_has_context: bool,
    /// The sampling decision of a request without a span, for its record.
    pub(crate) record_sampled: Option<bool>,
    /// The JSON layer's sampling decision for the request span just created (`false`: its
    /// INFO and lower records are dropped, so the request log need not write them).
    pub(crate) sampled: bool,
}

impl Default for Handoff {
    fn default() -> Self {
        Self {
            context: None,
            record: String::new(),
            record_keys: Vec::new(),
            record_filter: 0,
            record_ready: false,
            record_has_context: false,
            record_sampled: None,
            sampled: true,
        }
    }
}

thread_local! {
    static HANDOFF: RefCell<Handoff> = RefCell::new(Handoff::default());
}

/// Runs `f` on this thread's hand-over slot: `None` when the slot is in use further up the
/// stack or already gone (thread exit), and the caller does without it.
#[inline]
pub(crate) fn handoff<R>(f: impl FnOnce(&mut Handoff) -> R) -> Option<R> {
    HANDOFF
        .try_with(|h| h.try_borrow_mut().ok().map(|mut h| f(&mut h)))
        .ok()
        .flatten()
}

static JSON_LAYER: AtomicBool = AtomicBool::new(false);

/// Whether a JSON layer was made in this process (the hand-over is worth preparing).
pub(crate) fn json_layer_exists() -> bool {
    JSON_LAYER.load(Ordering::Relaxed)
}

pub(crate) fn json_layer_made() {
    JSON_LAYER.store(true, Ordering::Relaxed);
}

/// Keys [`add_context`] refuses: every line's own (the first four written first on every
/// line, then its message), and the request's correlation, which towerscope sets (the request
/// id is also the one sent on downstream and back in `x-request-id`; the ids are the exported
/// span's).
pub const RESERVED_KEYS: [&str; 9] = [
    "timestamp",
    "level",
    "target",
    "service",
    "message",
    "request_id",
    "trace_id",
    "span_id",
    "route",
];

/// Adds `key = value` to the current request's context: it appears on every later record of
/// the request, including its final request record (e.g. `tenant`, `user_id`). Returns `false`
/// outside a request, when the subscriber is not a `tracing_subscriber` registry, or for one
/// of the [`RESERVED_KEYS`] (a line's own keys and the request's correlation, which a handler
/// must not be able to rewrite).
///
/// ```
/// async fn handler() -> &'static str {
///     towerscope::log::add_context("tenant", "acme");
///     tracing::info!("loading the cart"); // carries tenant, request_id, route
///     "ok"
/// }
/// ```
pub fn add_context(key: impl Into<Cow<'static, str>>, value: impl Display) -> bool {
    let key = key.into();
    if RESERVED_KEYS.contains(&key.as_ref()) {
        return false;
    }
    let mut json = String::new();
    write_json_str(&mut json, &value.to_string());
    // A request still without its span: its context is on the thread.
    let mut key = Some(key);
    if super::scope::with_pending(|rc| rc.set(key.take().expect("once"), &json)).is_some() {
        return true;
    }
    let key = key.expect("not taken");
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            let span = registry.span(id)?;
            for s in span.scope() {
                let mut ext = s.extensions_mut();
                if let Some(rc) = ext.get_mut::<RequestContext>() {
                    rc.set(key, &json);
                    return Some(());
                }
            }
            None
        })
        .flatten()
        .is_some()
}

/// The current request's id, inside a request served under the request log (for passing it
/// on to downstream calls; the client layers do). `None` elsewhere.
pub fn current_request_id() -> Option<String> {
    if let Some(id) = super::scope::with_pending(|rc| rc.raw("request_id").map(str::to_owned)) {
        return id;
    }
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            let span = registry.span(id)?;
            for s in span.scope() {
                if let Some(rc) = s.extensions().get::<RequestContext>() {
                    return rc.raw("request_id").map(str::to_owned);
                }
            }
            None
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_reuses_an_ended_ones_buffer_and_starts_empty() {
        let mut first = RequestContext::default();
        first.set("tenant", "\"acme\"");
        let buffer = first.json().as_ptr();
        drop(first);
        let second = RequestContext::default();
        assert_eq!(second.json().as_ptr(), buffer, "the buffer is reused");
        assert_eq!(second.json(), "", "nothing of the ended context is left");
        assert_eq!(second.members().count(), 0);
    }
}
