//! One breaker per downstream host.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use super::config::BreakerBuilder;
use super::layer::ResponseFuture;
use super::{Breaker, Classify, HttpClassifier};
use crate::BoxError;

/// A layer with one breaker per key, by default the request's authority (`host:port`), so one
/// failing host does not cut off the others. Keys are bounded (`max_keys`, default 1024); when
/// full, breakers idle for longer than `idle` (default 10 min) are evicted, then the least
/// recently used. An evicted breaker's series leave towerscope's exposition (with another
/// `metrics` recorder, its state gauges read 0); the key, back, gets a new breaker.
///
/// Admission happens in `call` (the key is in the request), so half-open permits are taken
/// there.
///
/// ```
/// use towerscope::breaker::{Breaker, KeyedCircuitBreakerLayer};
/// let layer = KeyedCircuitBreakerLayer::new(Breaker::builder("upstream").count_window(20));
/// ```
#[derive(Clone)]
pub struct KeyedCircuitBreakerLayer<C = HttpClassifier> {
    shared: Arc<Keyed>,
    classifier: C,
}

struct Keyed {
    template: BreakerBuilder,
    breakers: RwLock<HashMap<Arc<str>, Slot>>,
    max_keys: usize,
    idle: Duration,
    epoch: tokio::time::Instant,
}

struct Slot {
    breaker: Breaker,
    last_used: AtomicU64,
}

impl std::fmt::Debug for KeyedCircuitBreakerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .finish_non_exhaustive()
    }
}

impl KeyedCircuitBreakerLayer {
    /// Breakers built from `template`, each named `{template name}:{key}`.
    pub fn new(template: BreakerBuilder) -> Self {
        Self::with_limits(template, 1024, Duration::from_secs(600))
    }

    /// With a bound on keys and the idle time after which a key may be evicted.
    pub fn with_limits(template: BreakerBuilder, max_keys: usize, idle: Duration) -> Self {
        Self {
            shared: Arc::new(Keyed {
                template,
                breakers: RwLock::default(),
                max_keys: max_keys.max(1),
                idle,
                epoch: tokio::time::Instant::now(),
            }),
            classifier: HttpClassifier,
        }
    }
}

impl<C> KeyedCircuitBreakerLayer<C> {
    /// Classifies results with `classifier`.
    pub fn classifier<C2>(self, classifier: C2) -> KeyedCircuitBreakerLayer<C2> {
        KeyedCircuitBreakerLayer {
            shared: self.shared,
            classifier,
        }
    }

    /// The breaker of a key, if it exists.
    pub fn breaker(&self, key: &str) -> Option<Breaker> {
        self.shared.get(key)
    }

    /// Number of keys with a breaker.
    pub fn len(&self) -> usize {
        self.shared.read().len()
    }

    /// Whether no key has a breaker yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Keyed {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Slot>> {
        self.breakers.read().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn get(&self, key: &str) -> Option<Breaker> {
        self.read().get(key).map(|s| s.breaker.clone())
    }

    fn breaker(&self, key: &str) -> Breaker {
        let now = self.now();
        if let Some(slot) = self.read().get(key) {
            slot.last_used.store(now, Relaxed);
            return slot.breaker.clone();
        }
        let mut map = self.breakers.write().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = map.get(key) {
            return slot.breaker.clone();
        }
        let mut evicted = Vec::new();
        if map.len() >= self.max_keys {
            let idle_ms = self.idle.as_millis() as u64;
            let idle: Vec<_> = map
                .iter()
                .filter(|(_, s)| now.saturating_sub(s.last_used.load(Relaxed)) >= idle_ms)
                .map(|(k, _)| k.clone())
                .collect();
            evicted.extend(idle.iter().filter_map(|k| map.remove(k)));
            if map.len() >= self.max_keys {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, s)| s.last_used.load(Relaxed))
                    .map(|(k, _)| k.clone())
                {
                    evicted.extend(map.remove(&oldest));
                }
            }
        }
        let mut b = self.template.clone();
        b.name = format!("{}:{key}", self.template.name);
        let breaker = b.build();
        map.insert(
            Arc::from(key),
            Slot {
                breaker: breaker.clone(),
                last_used: AtomicU64::new(now),
            },
        );
        // Under the lock: a breaker made again for an evicted key registers its series after
        // the old ones are gone, not before (they would be the same series, then forgotten).
        for slot in evicted {
            slot.breaker.retire();
        }
        breaker
    }
}

impl<S, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<C> {
    type Service = KeyedCircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service of [`KeyedCircuitBreakerLayer`].
#[derive(Clone)]
pub struct KeyedCircuitBreaker<S, C = HttpClassifier> {
    inner: S,
    shared: Arc<Keyed>,
    classifier: C,
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for KeyedCircuitBreaker<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The default key: `host:port` of the request URI (port from the scheme when absent), or the
/// `Host` header.
pub fn authority_key<B>(req: &Request<B>) -> String {
    let uri = req.uri();
    if let Some(host) = uri.host() {
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        return format!("{host}:{port}");
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map_or_else(String::new, str::to_owned)
}

impl<S, C, B> Service<Request<B>> for KeyedCircuitBreaker<S, C>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // A URI with its port and no user info is its own key: no `String` made per call.
        let uri = req.uri();
        let breaker = match uri.authority().filter(|_| uri.port_u16().is_some()) {
            Some(a) if !a.as_str().contains('@') => self.shared.breaker(a.as_str()),
            _ => self.shared.breaker(&authority_key(&req)),
        };
        ResponseFuture::dispatch(breaker.admit(), &mut self.inner, req, &self.classifier)
    }
}
