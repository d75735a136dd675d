//! The request context carried by the request span: flattened into every record written while
//! the request is served, extended by handlers with [`add_context`].

use std::borrow::Cow;
use std::fmt::Display;

use tracing_subscriber::registry::LookupSpan;

use super::json::write_json_str;

/// Target of the request span and of the per-request record.
pub const REQUEST_TARGET: &str = "towerscope::request";
/// Name of the request span.
pub const REQUEST_SPAN: &str = "request";

/// The context of one request, stored in its span's extensions by the JSON layer. It lives and
/// dies with the span, so it never leaks into another request. Values are kept as JSON text,
/// escaped once, since they are copied into every line of the request.
#[derive(Debug)]
pub(crate) struct RequestContext {
    fields: Vec<(Cow<'static, str>, String)>,
    pub(crate) sampled: bool,
}

impl Default for RequestContext {
    fn default() -> Self {
        Self {
            fields: Vec::with_capacity(4),
            sampled: true,
        }
    }
}

/// The request span's own fields (request id, route, trace ids) become the context.
impl tracing::field::Visit for RequestContext {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let mut json = String::with_capacity(value.len() + 2);
        write_json_str(&mut json, value);
        self.set(field.name(), json);
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

impl RequestContext {
    /// Sets a field (a JSON value), replacing an earlier value of the same key.
    pub(crate) fn set(&mut self, key: impl Into<Cow<'static, str>>, json: String) {
        let key = key.into();
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = json,
            None => self.fields.push((key, json)),
        }
    }

    pub(crate) fn fields(&self) -> impl Iterator<Item = (&str, &String)> {
        self.fields.iter().map(|(k, v)| (k.as_ref(), v))
    }

    fn raw(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim_matches('"'))
    }

    /// What sampling decides on: the trace id when there is one, else the request id.
    pub(crate) fn sampling_key(&self) -> Option<(String, bool)> {
        if let Some(t) = self.raw("trace_id") {
            return Some((t.to_owned(), true));
        }
        self.raw("request_id").map(|r| (r.to_owned(), false))
    }
}

/// Adds `key = value` to the current request's context: it appears on every later record of
/// the request, including its final request record (e.g. `tenant`, `user_id`). Returns `false`
/// outside a request, or when the subscriber is not a `tracing_subscriber` registry.
///
/// ```
/// async fn handler() -> &'static str {
///     towerscope::log::add_context("tenant", "acme");
///     tracing::info!("loading the cart"); // carries tenant, request_id, route
///     "ok"
/// }
/// ```
pub fn add_context(key: impl Into<Cow<'static, str>>, value: impl Display) -> bool {
    let mut json = String::new();
    write_json_str(&mut json, &value.to_string());
    let key = key.into();
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            let span = registry.span(id)?;
            for s in span.scope() {
                let mut ext = s.extensions_mut();
                if let Some(rc) = ext.get_mut::<RequestContext>() {
                    rc.set(key, json);
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
