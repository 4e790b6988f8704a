//! The one place that picks the synchronisation primitives, so that `--cfg ratekeeper_loom`
//! swaps every shared word of the crate for loom's model-checked version (the pattern of
//! tokio's `src/loom/mod.rs`). The cfg is the crate's own, as crossbeam's `crossbeam_loom`:
//! dependencies that know `cfg(loom)` (tokio) build normally under it.

#[cfg(ratekeeper_loom)]
pub(crate) use loom::sync::{
    atomic::{fence, AtomicU64, Ordering},
    Mutex, MutexGuard,
};

#[cfg(not(ratekeeper_loom))]
pub(crate) use portable_atomic::{fence, AtomicU64, Ordering};
#[cfg(not(ratekeeper_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks, ignoring poison: the guarded data is written only by code that cannot panic halfway.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(ratekeeper_loom)]
    return m.lock().unwrap();
    #[cfg(not(ratekeeper_loom))]
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a CAS loop does after losing a race. Under loom a spin must yield, or the model
/// checker would explore an endless loop.
pub(crate) struct Backoff(#[cfg(not(ratekeeper_loom))] crossbeam_utils::Backoff);

impl Backoff {
    #[inline]
    pub(crate) fn new() -> Self {
        #[cfg(not(ratekeeper_loom))]
        return Backoff(crossbeam_utils::Backoff::new());
        #[cfg(ratekeeper_loom)]
        Backoff()
    }

    #[inline]
    pub(crate) fn spin(&self) {
        #[cfg(not(ratekeeper_loom))]
        self.0.spin();
        #[cfg(ratekeeper_loom)]
        loom::thread::yield_now();
    }
}
