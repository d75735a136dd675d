//! A bounded map from query text to what was derived from it, shared by the analyser's cache
//! and the instrumented pool's per-query handles.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// At most `capacity` entries; when full, an arbitrary entry makes room. Reads take the read
/// lock only, so concurrent queries that hit do not serialise.
pub(crate) struct TextCache<V> {
    map: RwLock<HashMap<Box<str>, Arc<V>>>,
    capacity: usize,
}

impl<V> TextCache<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The value for `text`, made by `make` on first sight (outside the lock).
    pub(crate) fn get_or_insert_with(&self, text: &str, make: impl FnOnce() -> V) -> Arc<V> {
        if let Some(v) = self.map.read().unwrap_or_else(|e| e.into_inner()).get(text) {
            return v.clone();
        }
        let v = Arc::new(make());
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = map.get(text) {
            return existing.clone();
        }
        if map.len() >= self.capacity {
            if let Some(k) = map.keys().next().cloned() {
                map.remove(&k);
            }
        }
        map.insert(text.into(), v.clone());
        v
    }

    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}
