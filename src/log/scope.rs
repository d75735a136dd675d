//! The request span, created only when something needs it.
//!
//! Under [`LogConfig`](super::LogConfig)'s JSON subscriber, a request starts without a
//! `tracing` span: its context (request id, route, trace ids, what handlers add) is made
//! current on the thread around every poll of the request's future, and the JSON layer reads
//! it from there for the handler's records ([`add_context`](super::add_context) and
//! [`current_request_id`](super::current_request_id) too). The span is made the first time
//! code asks for it while the request is polled: `Span::current()` (spawned work that carries
//! the request's span, `Span::current().record(..)`) or a new span in the request
//! (`#[instrument]`, database calls), which then has the request's span as its parent, exactly
//! as when the span is made up front. A request that asks for neither, the
//! common case, pays for no span: about 1,900 instructions less per request (callgrind), the
//! cost of creating, entering, leaving and closing one in `tracing-subscriber`'s registry.
//!
//! Under any other subscriber (a hand-assembled registry, the pretty format, `EnvFilter` span
//! directives that match on the request span), the request log creates its span up front as
//! before: [`Deferring`] is what tells it the subscriber can make the span later.

use std::any::TypeId;
use std::cell::{Cell, RefCell};

use std::sync::OnceLock;

use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Span, Subscriber};
use tracing_core::callsite::{DefaultCallsite, Identifier};
use tracing_core::dispatcher::WeakDispatch;
use tracing_core::field::FieldSet;
use tracing_core::metadata::Kind;

use super::context::{handoff, RequestContext, REQUEST_SPAN, REQUEST_TARGET};
use super::json::Sampling;
use super::layer::RecordData;

/// A request's record state, made current on its thread around each poll of its future (see
/// the module docs). Only the request log has one; other observers return `None` from
/// [`Observer::scope`](crate::lifecycle::Observer::scope).
#[derive(Default)]
pub struct RequestScope(pub(crate) Cell<Option<Box<RecordData>>>);

impl std::fmt::Debug for RequestScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestScope").finish_non_exhaustive()
    }
}

thread_local! {
    /// The record of the request whose future this thread is polling, while its span has not
    /// been made.
    static ACTIVE: RefCell<Option<Box<RecordData>>> = const { RefCell::new(None) };
}

/// What [`RequestScope::enter`] holds while the request's future is polled.
pub(crate) struct ScopeGuard<'a> {
    scope: &'a RequestScope,
    state: Held,
}

enum Held {
    /// The request has its span, entered: the record stays here.
    Span(Box<RecordData>),
    /// The record is current on the thread; what was current before it, restored after.
    Active(Option<Box<RecordData>>),
}

impl RequestScope {
    /// Makes the request current: enters its span when it has one, else puts its record on
    /// the thread.
    #[inline]
    pub(crate) fn enter(&self) -> Option<ScopeGuard<'_>> {
        let record = self.0.take()?;
        let state = match &record.span {
            Some(span) => {
                span.with_subscriber(|(id, dispatch)| dispatch.enter(id));
                Held::Span(record)
            }
            None => {
                let mut record = Some(record);
                let swapped = ACTIVE.try_with(|a| {
                    a.try_borrow_mut()
                        .map(|mut a| std::mem::replace(&mut *a, record.take()))
                        .ok()
                });
                match swapped {
                    Ok(Some(prev)) => Held::Active(prev),
                    // Only from inside the subscriber while it makes a span (polls do not
                    // nest there), or as the thread exits: nothing made current.
                    _ => {
                        self.0.set(record);
                        return None;
                    }
                }
            }
        };
        Some(ScopeGuard { scope: self, state })
    }
}

impl Drop for ScopeGuard<'_> {
    fn drop(&mut self) {
        let record = match std::mem::replace(&mut self.state, Held::Active(None)) {
            Held::Span(record) => {
                exit(&record);
                Some(record)
            }
            Held::Active(prev) => {
                // Borrowed only if a subscriber panicked while making the span (this runs
                // while unwinding then): the record is lost, the request not logged, and
                // nothing aborts.
                let record = ACTIVE
                    .try_with(|a| {
                        a.try_borrow_mut()
                            .map(|mut a| std::mem::replace(&mut *a, prev))
                            .ok()
                    })
                    .ok()
                    .flatten()
                    .flatten();
                // Made during this poll: entered then, left now.
                if let Some(r) = &record {
                    exit(r);
                }
                record
            }
        };
        self.scope.0.set(record);
    }
}

fn exit(record: &RecordData) {
    if let Some(span) = &record.span {
        span.with_subscriber(|(id, dispatch)| dispatch.exit(id));
    }
}

/// Runs `f` on the context of the request being polled on this thread, when its span has not
/// been made (once made, the span carries the context). `None` outside such a request.
pub(crate) fn with_pending<R>(f: impl FnOnce(&mut RequestContext) -> R) -> Option<R> {
    ACTIVE
        .try_with(|a| {
            let mut a = a.try_borrow_mut().ok()?;
            let record = a.as_mut()?;
            if record.span.is_some() {
                return None;
            }
            record.context.as_mut().map(f)
        })
        .ok()
        .flatten()
}

/// Makes the span of the request being polled on this thread, if it has none yet, and enters
/// it (left when the poll ends). Its context moves into the span.
fn materialize(dispatch: &Dispatch) {
    let _ = ACTIVE.try_with(|a| {
        // Borrowed: this is the span being made, coming back through the subscriber.
        let Ok(mut a) = a.try_borrow_mut() else {
            return;
        };
        let Some(record) = a.as_mut() else { return };
        if record.span.is_some() {
            return;
        }
        let Some(context) = record.context.take() else {
            return;
        };
        // The span's own fields from the context, for subscribers other than the JSON layer
        // (which takes the context itself). Ids and hex digits are never escaped; a route
        // template rarely is.
        let own = |k| context.raw(k).map(str::to_owned);
        let fields = [
            own("request_id"),
            own("route"),
            own("trace_id"),
            own("span_id"),
        ];
        let (span, back) = request_span(
            dispatch,
            fields.each_ref().map(|f| f.as_deref()),
            Some(context),
        );
        // Filtered out: the request goes on without a span, its context where it was.
        record.context = back;
        if let Some(span) = span {
            span.with_subscriber(|(id, dispatch)| dispatch.enter(id));
            record.span = Some(span);
        }
    });
}

/// The callsite of every request span. Spans are made with `Span::new_with` and a given
/// `Dispatch`, not the `span!` macro: the macro asks for the current dispatcher, and inside a
/// subscriber call under a scoped dispatcher (`tracing::subscriber::set_default`) that is
/// `Dispatch::none()`.
static CALLSITE: DefaultCallsite = DefaultCallsite::new(&META);
static META: Metadata<'static> = Metadata::new(
    REQUEST_SPAN,
    REQUEST_TARGET,
    tracing::Level::INFO,
    Some(file!()),
    Some(line!()),
    Some(module_path!()),
    FieldSet::new(
        &["request_id", "route", "trace_id", "span_id"],
        Identifier(&CALLSITE),
    ),
    Kind::SPAN,
);

/// A request's span, made through `dispatch` with these `request_id`, `route`, `trace_id` and
/// `span_id`: up front by the request log, or later by [`Deferring`]. `context`, when given, is
/// handed to the JSON layer, which keeps it in the span; it comes back when nothing took it.
/// No span when the request span is filtered out.
pub(crate) fn request_span(
    dispatch: &Dispatch,
    fields: [Option<&str>; 4],
    context: Option<RequestContext>,
) -> (Option<Span>, Option<RequestContext>) {
    // Asked of the subscriber directly: the callsite's cached interest may have been computed
    // under another dispatcher (or none, when first registered inside a subscriber call).
    if !dispatch.enabled(&META) {
        return (None, context);
    }
    if context.is_some() {
        handoff(|h| h.context = context);
    }
    let values = fields
        .each_ref()
        .map(|f| f.as_ref().map(|v| v as &dyn tracing::Value));
    let span = Span::new_with(&META, &META.fields().value_set_all(&values), dispatch);
    (Some(span), handoff(|h| h.context.take()).flatten())
}

/// Registers the request spans' callsite, outside any subscriber call (spans are made inside
/// them, where registering could not reach the current dispatcher).
pub(crate) fn register_callsite() {
    CALLSITE.register();
}

/// What [`Deferring`] answers to `downcast_ref`: the request log defers its span when the
/// current subscriber has one, and decides sampling as the JSON layer would.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeferralInfo {
    pub(crate) sampling: Sampling,
}

/// The current subscriber's deferral settings, when it is a [`Deferring`] one.
#[inline]
pub(crate) fn deferral() -> Option<DeferralInfo> {
    tracing::dispatcher::get_default(|d| d.downcast_ref::<DeferralInfo>().copied())
}

/// A subscriber that makes a request's span only when asked for it (see the module docs):
/// everything else goes to the inner subscriber.
pub(crate) struct Deferring<S> {
    inner: S,
    info: DeferralInfo,
    /// The `Dispatch` this subscriber is in, to make spans with.
    dispatch: OnceLock<WeakDispatch>,
}

impl<S> Deferring<S> {
    pub(crate) fn new(inner: S, sampling: Sampling) -> Self {
        register_callsite();
        Self {
            inner,
            info: DeferralInfo { sampling },
            dispatch: OnceLock::new(),
        }
    }

    fn materialize(&self) {
        // Only while a request without its span is polled here (one thread-local look).
        if !pending() {
            return;
        }
        if let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) {
            materialize(&dispatch);
        }
    }
}

/// Whether a request without its span is being polled on this thread.
fn pending() -> bool {
    ACTIVE
        .try_with(|a| {
            a.try_borrow()
                .is_ok_and(|a| a.as_ref().is_some_and(|r| r.span.is_none()))
        })
        .unwrap_or(false)
}

impl<S: Subscriber> Subscriber for Deferring<S> {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.inner.max_level_hint()
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        // A span made inside the request is the request span's child: the request span first.
        if span.is_contextual() && !is_request_span(span.metadata()) {
            self.materialize();
        }
        self.inner.new_span(span)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.inner.record(span, values)
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.inner.record_follows_from(span, follows)
    }

    fn event_enabled(&self, event: &Event<'_>) -> bool {
        self.inner.event_enabled(event)
    }

    fn event(&self, event: &Event<'_>) {
        self.inner.event(event)
    }

    fn enter(&self, span: &Id) {
        self.inner.enter(span)
    }

    fn exit(&self, span: &Id) {
        self.inner.exit(span)
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.inner.clone_span(id)
    }

    #[allow(deprecated)]
    fn drop_span(&self, id: Id) {
        self.inner.drop_span(id)
    }

    fn try_close(&self, id: Id) -> bool {
        self.inner.try_close(id)
    }

    fn current_span(&self) -> tracing_core::span::Current {
        self.materialize();
        self.inner.current_span()
    }

    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
        self.inner.on_register_dispatch(subscriber)
    }

    // Forwarding, as `tracing-subscriber`'s `Layered` does: `downcast_ref` must still reach the
    // registry (the request context lives in its span extensions) and the OpenTelemetry
    // layer (`tracing-opentelemetry` finds its context through it). The trait method is
    // `unsafe` only because callers cast the pointer back; the pointers returned are to
    // `self`'s own fields or the inner subscriber's answer, valid as long as `self`.
    #[allow(unsafe_code)]
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            return Some(self as *const Self as *const ());
        }
        if id == TypeId::of::<DeferralInfo>() {
            return Some(&self.info as *const DeferralInfo as *const ());
        }
        // SAFETY: forwarded unchanged; the inner subscriber answers for its own types.
        unsafe { self.inner.downcast_raw(id) }
    }
}

fn is_request_span(meta: &Metadata<'_>) -> bool {
    meta.name() == REQUEST_SPAN && meta.target() == REQUEST_TARGET
}
