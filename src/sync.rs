//! The one place that picks the synchronisation primitives, so that `--cfg loom` swaps every
//! shared word of the crate for loom's model-checked version (the pattern of tokio's
//! `src/loom/mod.rs`).

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{fence, AtomicU64, Ordering},
    Mutex, MutexGuard,
};

#[cfg(not(loom))]
pub(crate) use portable_atomic::{fence, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks, ignoring poison: the guarded data is written only by code that cannot panic halfway.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(loom)]
    return m.lock().unwrap();
    #[cfg(not(loom))]
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a CAS loop does after losing a race. Under loom a spin must yield, or the model
/// checker would explore an endless loop.
pub(crate) struct Backoff(#[cfg(not(loom))] crossbeam_utils::Backoff);

impl Backoff {
    #[inline]
    pub(crate) fn new() -> Self {
        #[cfg(not(loom))]
        return Backoff(crossbeam_utils::Backoff::new());
        #[cfg(loom)]
        Backoff()
    }

    #[inline]
    pub(crate) fn spin(&self) {
        #[cfg(not(loom))]
        self.0.spin();
        #[cfg(loom)]
        loom::thread::yield_now();
    }
}
