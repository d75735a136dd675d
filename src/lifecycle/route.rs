//! Route resolution: the matched route template, looked up once per request and shared by
//! every observer together with the per-route data each observer built for it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock, RwLock};

use http::{Method, Request, Uri};

use crate::shard;

/// How the layer finds a request's route template.
#[derive(Clone, Default)]
pub(crate) enum RouteSource {
    /// axum's `MatchedPath` extension (set by `Router` before the route's layers run);
    /// without the `axum` feature every request is unmatched.
    #[default]
    MatchedPath,
    /// A user closure, for plain Hyper/Tower services.
    Fn(Arc<RouteFn>),
    /// Route templates, matched against the path with axum's own matcher.
    Templates(Arc<matchit::Router<Box<str>>>),
}

/// The closure type of [`crate::lifecycle::ObserveLayer::route_fn`].
pub(crate) type RouteFn = dyn Fn(&Method, &Uri) -> Option<&'static str> + Send + Sync;

/// A route and the data each observer attached to it, built once per template.
#[derive(Debug)]
pub struct RouteEntry<R> {
    template: Option<Arc<str>>,
    data: R,
}

impl<R> RouteEntry<R> {
    /// The route template (`/users/{id}`), or `None` for requests that matched no route.
    pub fn template(&self) -> Option<&str> {
        self.template.as_deref()
    }

    /// The observers' per-route data.
    pub fn data(&self) -> &R {
        &self.data
    }
}

/// A route entry as a request holds it, from `call` to the end of its body: through its
/// thread shard's handle (see `crate::shard::Handles`).
pub(crate) type Held<R> = shard::Held<RouteEntry<R>>;

type Handles<R> = shard::Handles<RouteEntry<R>>;

fn handles<R>(entry: RouteEntry<R>) -> Arc<Handles<R>> {
    Arc::new(Handles::new(Arc::new(entry)))
}

/// Maps a route template to its shared entry.
///
/// The hot path is keyed by the address of the template string, not its contents: axum hands
/// every request of a route the same `Arc<str>`, and the table keeps that `Arc` alive, so the
/// address cannot be reused by another string. Templates that arrive in a fresh allocation
/// each time (axum's nested routers) fall back to a lookup by contents; both maps are bounded
/// by [`MAX_ROUTES`], past which further templates share one `_OTHER` entry.
pub(crate) struct RouteTable<R> {
    /// Lock-free front of `by_addr`: write-once slots, probed linearly from the address hash.
    fast: Box<[FastSlot<R>]>,
    by_addr: RwLock<HashMap<usize, Arc<Handles<R>>, BuildHasherDefault<AddrHasher>>>,
    by_name: RwLock<HashMap<Arc<str>, Arc<Handles<R>>>>,
    unmatched: Arc<Handles<R>>,
    overflow: Arc<Handles<R>>,
    // Keeps the `Arc<str>` of each addr key alive (see above).
    pins: RwLock<Vec<Pin>>,
}

#[allow(dead_code)] // held only to keep addresses alive
enum Pin {
    #[cfg(feature = "axum")]
    Matched(axum::extract::MatchedPath),
    Static,
}

/// A write-once (template address, entry) pair.
type FastSlot<R> = OnceLock<(usize, Arc<Handles<R>>)>;

const FAST_SLOTS: usize = 512;
const FAST_PROBES: usize = 8;

fn fast_slot(addr: usize) -> usize {
    let mut h = AddrHasher::default();
    h.write_usize(addr);
    (h.finish() >> 32) as usize % FAST_SLOTS
}

/// Bound on distinct route templates per layer; a safety net, since templates come from code.
pub const MAX_ROUTES: usize = 4096;

impl<R> RouteTable<R> {
    pub(crate) fn new(make: &dyn Fn(Option<&str>) -> R) -> Self {
        let overflow: Arc<str> = Arc::from("_OTHER");
        Self {
            fast: (0..FAST_SLOTS).map(|_| OnceLock::new()).collect(),
            by_addr: RwLock::default(),
            by_name: RwLock::default(),
            unmatched: handles(RouteEntry {
                template: None,
                data: make(None),
            }),
            overflow: handles(RouteEntry {
                data: make(Some(&overflow)),
                template: Some(overflow),
            }),
            pins: RwLock::default(),
        }
    }

    /// The entry for a request.
    pub(crate) fn resolve<B>(
        &self,
        source: &RouteSource,
        req: &Request<B>,
        make: &dyn Fn(Option<&str>) -> R,
    ) -> Held<R> {
        match source {
            #[cfg(feature = "axum")]
            RouteSource::MatchedPath => {
                match req.extensions().get::<axum::extract::MatchedPath>() {
                    Some(m) => self.lookup(m.as_str(), || Pin::Matched(m.clone()), make),
                    None => self.unmatched.held(),
                }
            }
            #[cfg(not(feature = "axum"))]
            RouteSource::MatchedPath => self.unmatched.held(),
            RouteSource::Fn(f) => match f(req.method(), req.uri()) {
                Some(t) => self.lookup(t, || Pin::Static, make),
                None => self.unmatched.held(),
            },
            // The templates live in the source, which lives as long as this table.
            RouteSource::Templates(router) => match router.at(req.uri().path()) {
                Ok(m) => self.lookup(m.value, || Pin::Static, make),
                Err(_) => self.unmatched.held(),
            },
        }
    }

    fn lookup(
        &self,
        template: &str,
        pin: impl FnOnce() -> Pin,
        make: &dyn Fn(Option<&str>) -> R,
    ) -> Held<R> {
        let addr = template.as_ptr() as usize;
        // Same address, kept alive by `pins`: same template.
        let start = fast_slot(addr);
        for i in 0..FAST_PROBES {
            match self.fast[(start + i) % FAST_SLOTS].get() {
                Some((a, e)) if *a == addr => return e.held(),
                Some(_) => continue,
                None => break,
            }
        }
        if let Some(e) = read(&self.by_addr).get(&addr) {
            return e.held();
        }
        self.lookup_slow(template, addr, pin, make)
    }

    #[cold]
    fn lookup_slow(
        &self,
        template: &str,
        addr: usize,
        pin: impl FnOnce() -> Pin,
        make: &dyn Fn(Option<&str>) -> R,
    ) -> Held<R> {
        if let Some(e) = read(&self.by_name).get(template) {
            return e.held();
        }
        let mut by_name = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = by_name.get(template) {
            return e.held();
        }
        if by_name.len() >= MAX_ROUTES {
            return self.overflow.held();
        }
        let name: Arc<str> = Arc::from(template);
        let entry = handles(RouteEntry {
            data: make(Some(&name)),
            template: Some(name.clone()),
        });
        by_name.insert(name, entry.clone());
        drop(by_name);
        self.pins
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(pin());
        self.by_addr
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, entry.clone());
        let start = fast_slot(addr);
        for i in 0..FAST_PROBES {
            if self.fast[(start + i) % FAST_SLOTS]
                .set((addr, entry.clone()))
                .is_ok()
            {
                break;
            }
        }
        entry.held()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        read(&self.by_name).len()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // The maps are always consistent (inserts are single calls), so a poisoned lock is usable.
    lock.read().unwrap_or_else(|e| e.into_inner())
}

/// Hashes a pointer (or any `usize` key): the low bits are alignment, so fold them away and
/// spread with one multiply. For maps keyed by addresses; not for untrusted keys.
#[derive(Default, Debug, Clone, Copy)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = ((n as u64) >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(t: Option<&str>) -> String {
        t.unwrap_or("<none>").to_owned()
    }

    #[test]
    fn same_template_same_entry_whatever_the_allocation() {
        let table = RouteTable::new(&make);
        let src = RouteSource::Fn(Arc::new(|_: &Method, uri: &Uri| match uri.path() {
            "/a" => Some("/a"),
            _ => None,
        }));
        let req = Request::get("/a").body(()).unwrap();
        let a1 = table.resolve(&src, &req, &make);
        let a2 = table.resolve(&src, &req, &make);
        assert!(std::ptr::eq(&*a1, &*a2));
        assert_eq!(a1.template(), Some("/a"));
        assert_eq!(a1.data(), "/a");
        // Same contents at another address: found by name, not duplicated.
        let other = String::from("/a");
        let a3 = table.lookup(&other, || Pin::Static, &make);
        assert!(std::ptr::eq(&*a1, &*a3));
        assert_eq!(table.len(), 1);
        let none = table.resolve(&src, &Request::get("/zzz").body(()).unwrap(), &make);
        assert_eq!(none.template(), None);
        assert_eq!(none.data(), "<none>");
    }

    #[test]
    fn table_is_bounded() {
        let table = RouteTable::new(&make);
        let names: Vec<String> = (0..MAX_ROUTES + 10).map(|i| format!("/r{i}")).collect();
        for n in &names {
            table.lookup(n, || Pin::Static, &make);
        }
        assert_eq!(table.len(), MAX_ROUTES);
        let last = table.lookup(names.last().unwrap(), || Pin::Static, &make);
        assert_eq!(last.template(), Some("_OTHER"));
    }
}
