//! The map from key to tenant: papaya's lock-free hash map.
//!
//! Why papaya (measured by `benches/keyed_maps.rs`, which runs the candidates side by side):
//! - its reads are lock-free, so admission for an existing key takes no lock (dashmap's
//!   `get` takes a shard's read lock, and a sweep holds that shard's write lock while it
//!   walks it, stalling a slice of all tenants);
//! - its entries are boxed and a resize moves the boxes, never copies a value, so a CAS on a
//!   tenant's word can never land in a stale copy (scc's `HashIndex`, lock-free too, clones
//!   its entries when it resizes: a concurrent CAS on the old copy would be lost);
//! - a reader holding a guard may still read an entry removed meanwhile, which is exactly
//!   the orphan the tenant's gate (`tenant.rs`) is built for.
//!
//! Under `--cfg ratekeeper_loom` the map is a loom mutex around a `HashMap` of `Arc`s: the
//! models check the tenant protocol against any linearizable map, with the same "an entry
//! read before its removal stays readable" semantics.

use std::hash::Hash;

#[cfg(not(ratekeeper_loom))]
pub(crate) struct Store<K, V> {
    map: papaya::HashMap<K, V>,
}

#[cfg(not(ratekeeper_loom))]
impl<K: Hash + Eq + Clone + Send + Sync, V: Send + Sync> Store<K, V> {
    pub(crate) fn new() -> Self {
        Store {
            // Blocking resizes: an incremental resize leaves the copying to later
            // operations, admissions among them.
            map: papaya::HashMap::builder()
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
        }
    }

    /// `f` on the value of `key`, if present. Lock-free, allocates nothing.
    #[inline]
    pub(crate) fn get<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.map.pin().get(key).map(f)
    }

    /// `f` on the value of `key`, inserting `make()` first if absent; `f` is told whether the
    /// value is the one just made.
    pub(crate) fn get_or_insert<R>(
        &self,
        key: &K,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&V, bool) -> R,
    ) -> R {
        let m = self.map.pin();
        if let Some(v) = m.get(key) {
            return f(v, false);
        }
        match m.try_insert(key.clone(), make()) {
            Ok(v) => f(v, true),
            Err(e) => f(e.current, false),
        }
    }

    /// Removes `key` if `pred` holds for its value; whether it did.
    pub(crate) fn remove_if(&self, key: &K, pred: impl Fn(&V) -> bool) -> bool {
        matches!(self.map.pin().remove_if(key, |_, v| pred(v)), Ok(Some(_)))
    }

    /// Replaces the value of `key` with `make()` in one step if `pred` holds for the value
    /// present (or `absent` and there is none); whether it did. Readers of the old value may
    /// still read it: it is retired, never copied.
    pub(crate) fn replace_if(
        &self,
        key: &K,
        absent: bool,
        pred: impl Fn(&V) -> bool,
        make: impl Fn() -> V,
    ) -> bool {
        use papaya::{Compute, Operation};
        let m = self.map.pin();
        let r = m.compute(key.clone(), |entry| match entry {
            Some((_, v)) if pred(v) => Operation::Insert(make()),
            None if absent => Operation::Insert(make()),
            _ => Operation::Abort(()),
        });
        matches!(r, Compute::Inserted(..) | Compute::Updated { .. })
    }

    /// Keeps only the values for which `keep` holds.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        self.map.pin().retain(|_, v| keep(v));
    }

    /// `f` on every value present.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&V)) {
        for (_, v) in self.map.pin().iter() {
            f(v);
        }
    }

    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(ratekeeper_loom)]
pub(crate) struct Store<K, V> {
    map: crate::sync::Mutex<std::collections::HashMap<K, std::sync::Arc<V>>>,
}

#[cfg(ratekeeper_loom)]
impl<K: Hash + Eq + Clone + Send + Sync, V: Send + Sync> Store<K, V> {
    pub(crate) fn new() -> Self {
        Store {
            map: crate::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn entry(&self, key: &K) -> Option<std::sync::Arc<V>> {
        crate::sync::lock(&self.map).get(key).cloned()
    }

    pub(crate) fn get<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        // The lock is released before `f` runs: a removal may come in between, as with a
        // lock-free map whose reader holds an entry that is being removed.
        self.entry(key).map(|v| f(&v))
    }

    pub(crate) fn get_or_insert<R>(
        &self,
        key: &K,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&V, bool) -> R,
    ) -> R {
        if let Some(v) = self.entry(key) {
            return f(&v, false);
        }
        let made = make();
        let (v, new) = {
            let mut m = crate::sync::lock(&self.map);
            match m.get(key) {
                Some(v) => (v.clone(), false),
                None => {
                    let v = std::sync::Arc::new(made);
                    m.insert(key.clone(), v.clone());
                    (v, true)
                }
            }
        };
        f(&v, new)
    }

    pub(crate) fn remove_if(&self, key: &K, pred: impl Fn(&V) -> bool) -> bool {
        let mut m = crate::sync::lock(&self.map);
        if m.get(key).is_some_and(|v| pred(v)) {
            m.remove(key);
            true
        } else {
            false
        }
    }

    pub(crate) fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        crate::sync::lock(&self.map).retain(|_, v| keep(v));
    }

    pub(crate) fn replace_if(
        &self,
        key: &K,
        absent: bool,
        pred: impl Fn(&V) -> bool,
        make: impl Fn() -> V,
    ) -> bool {
        let mut m = crate::sync::lock(&self.map);
        let ok = match m.get(key) {
            Some(v) => pred(v),
            None => absent,
        };
        if ok {
            m.insert(key.clone(), std::sync::Arc::new(make()));
        }
        ok
    }

    pub(crate) fn for_each(&self, mut f: impl FnMut(&V)) {
        let all: Vec<_> = crate::sync::lock(&self.map).values().cloned().collect();
        for v in all {
            f(&v);
        }
    }

    pub(crate) fn len(&self) -> usize {
        crate::sync::lock(&self.map).len()
    }
}
