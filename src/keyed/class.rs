//! A tenant class: the limits every tenant of a keyed limiter shares, as one parameter block
//! per budget (the same seqlock slots a single bucket has), so that a tenant is only its
//! state words.
//!
//! # Versions
//!
//! A limit change installs the new parameters in the slots under the next version, then
//! publishes that version. A tenant word carries the generation of the version it was last
//! written under; a word behind the published version is migrated (its used units carried
//! across at a fresh reading, as a bucket's limit change does) before anything is decided on
//! it, by whoever meets it first: the change itself walks every tenant, and an admission that
//! meets a word the walk has not reached yet migrates it.
//!
//! Generation 63 is never used by a version (`next_version` skips it), so that a state word
//! can never look like the marks of `tenant.rs`.

use crate::bucket::{pack, ParamSlots, Params, View, GEN_MASK};
use crate::budget::{Budget, Limit};
use crate::error::Error;
use crate::sync::{lock, AtomicU64, Mutex, Ordering::*};
use std::time::Duration;

/// The generation no version uses.
pub(crate) const MARK_GEN: u64 = GEN_MASK;

/// Every class's identity, for binding permits to the class whose quanta they are in.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The version after `v`: the next one whose generation is not [`MARK_GEN`] and whose parity
/// differs from `v`'s (successive versions use the two slots alternately).
fn next_version(v: u64) -> u64 {
    if (v + 1) & GEN_MASK == MARK_GEN {
        v + 3
    } else {
        v + 1
    }
}

/// What limit changes need, serialised by the class's mutex.
struct Config {
    limits: Vec<Limit>,
    /// The reading the last change took effect at.
    changed_at: u64,
}

/// The shared limits of a tenant class with at most `N` budgets.
pub(crate) struct Class<const N: usize> {
    id: u64,
    /// The budgets in use, `len <= N`; the words past `len` are never read.
    len: usize,
    kinds: [(Budget, Duration); N],
    slots: [ParamSlots; N],
    version: AtomicU64,
    config: Mutex<Config>,
}

impl<const N: usize> Class<N> {
    pub(crate) fn new(limits: &[Limit]) -> Result<Self, Error> {
        if limits.is_empty() || limits.len() > N {
            return Err(Error::InvalidConfig(
                "a keyed limiter's class needs between 1 and N budgets",
            ));
        }
        let params = limits
            .iter()
            .map(Params::of)
            .collect::<Result<Vec<_>, Error>>()?;
        // Budgets past `len` are unlimited placeholders: never consulted.
        let placeholder = Params::of(&Limit::requests(0))?;
        Ok(Class {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            len: limits.len(),
            kinds: std::array::from_fn(|i| {
                limits
                    .get(i)
                    .map_or((Budget::Requests, Duration::ZERO), |l| {
                        (l.budget(), l.window())
                    })
            }),
            slots: std::array::from_fn(|i| {
                ParamSlots::new(params.get(i).copied().unwrap_or(placeholder), None)
            }),
            version: AtomicU64::new(0),
            config: Mutex::new(Config {
                limits: limits.to_vec(),
                changed_at: 0,
            }),
        })
    }

    #[inline]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The number of budgets.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// What budget `i` counts.
    #[inline]
    pub(crate) fn budget(&self, i: usize) -> Budget {
        self.kinds[i].0
    }

    /// The window of budget `i`.
    #[inline]
    pub(crate) fn window(&self, i: usize) -> Duration {
        self.kinds[i].1
    }

    /// The published version.
    #[inline]
    pub(crate) fn version(&self) -> u64 {
        // Acquire: the slots of this version were written before it was published.
        self.version.load(Acquire)
    }

    /// The decision view of a tenant's word of budget `i`, if its generation's slot is
    /// readable (see `ParamSlots::view`).
    #[inline]
    pub(crate) fn view(&self, i: usize, state: u64) -> Option<View> {
        self.slots[i].view(state)
    }

    /// A view of budget `i` under the published version, for a word that holds TAT `tat`.
    pub(crate) fn current(&self, i: usize, tat: u64) -> View {
        loop {
            let v = self.version();
            if let Some(view) = self.slots[i].view(pack(v, tat)) {
                return view;
            }
        }
    }

    /// The configured count of budget `i` under `view`'s version (for reports).
    pub(crate) fn reported_limit(&self, i: usize, view: &View) -> Option<u64> {
        self.slots[i].report(view).map(|r| r.limit)
    }

    /// The limits in force, in the order given.
    pub(crate) fn limits(&self) -> Vec<Limit> {
        lock(&self.config).limits.clone()
    }

    /// New limits for some budgets (matched by kind and window, as for a single limiter).
    /// Installs them as the next version and calls `migrate(reading)` with a reading no older
    /// than `at()` or the previous change's, to move every tenant across, all under the
    /// class's lock so that no third version overwrites a slot the walk still reads. Returns
    /// whether anything changed.
    pub(crate) fn set_limits(
        &self,
        limits: &[Limit],
        at: impl Fn() -> u64,
        migrate: impl FnOnce(u64),
    ) -> Result<bool, Error> {
        let mut config = lock(&self.config);
        let next = crate::budget::replaced(&config.limits, limits)?;
        let params = Params::all(&next)?;
        let version = self.version.load(Relaxed);
        let same = params.iter().enumerate().all(|(i, p)| {
            let v = self.current(i, 0);
            self.slots[i].params(&v) == Some(*p)
        });
        config.limits = next;
        if same {
            return Ok(false);
        }
        let next_v = next_version(version);
        for (i, p) in params.into_iter().enumerate() {
            self.slots[i].write(next_v, p);
        }
        // Release: the slots are written before any reader can see the version.
        self.version.store(next_v, Release);
        let reading = at().max(config.changed_at);
        config.changed_at = reading;
        migrate(reading);
        Ok(true)
    }
}

#[cfg(all(test, not(ratekeeper_loom)))]
mod tests {
    use super::*;

    #[test]
    fn versions_alternate_slots_and_never_use_the_mark_generation() {
        let mut v = 0;
        for _ in 0..1_000 {
            let n = next_version(v);
            assert_ne!(n & GEN_MASK, MARK_GEN);
            assert_ne!(
                n & 1,
                v & 1,
                "successive versions use the two slots in turn"
            );
            v = n;
        }
    }

    #[test]
    fn a_class_checks_its_budget_count() {
        assert!(Class::<2>::new(&[]).is_err());
        let three = [Limit::requests(1), Limit::tokens(1), Limit::input_tokens(1)];
        assert!(Class::<2>::new(&three).is_err());
        let c = Class::<2>::new(&three[..1]).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.budget(0), Budget::Requests);
    }
}
