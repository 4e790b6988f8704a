//! The atomic bucket: one GCRA bucket whose whole state is one `AtomicU64`.
//!
//! # The state word
//!
//! ```text
//!  63      58 57                                   0
//! +----------+--------------------------------------+
//! |   gen    |  TAT in units (see gcra.rs)          |
//! +----------+--------------------------------------+
//! ```
//!
//! `gen` is the low 6 bits of the *limits version*: which limits the TAT is measured under
//! (its units depend on the rate). `set_limit` writes the new limits into the parameter slot
//! the current generation is not using, then rewrites the state word with the next generation
//! and the TAT rescaled to the new units. Every admission reads the state word first, then the
//! slot of *its* generation, and commits with a CAS on the state word, so it succeeds only if
//! neither the TAT nor the generation changed: a decision is made wholly under one version of
//! the limits or not at all.
//!
//! # The parameter slots
//!
//! Two slots, used alternately by successive versions, each guarded like a seqlock: its
//! `version` word holds `version << 1`, odd while `set_limit` writes it. A reader whose
//! generation is current never meets a slot being written (the writer writes the other one);
//! a stale reader may, notices it (odd or changed version) and starts over. The full 64-bit
//! version in the slot is what refunds compare, so a permit outlives any number of limit
//! changes without mistaking one generation for another.
//!
//! Invariants kept here:
//! - a denial writes nothing;
//! - only `set_limits` changes `gen`, and only while the caller holds the limiter's lock;
//! - every write to the TAT is a CAS from the exact word the decision was computed from.

use crate::gcra::{self, Rate, MAX_UNITS, TAT_BITS};
use crate::sync::{fence, AtomicU64, Backoff, Ordering::*};
use crossbeam_utils::CachePadded;

const GEN_MASK: u64 = (1 << (64 - TAT_BITS)) - 1;

#[inline]
fn pack(version: u64, tat: u64) -> u64 {
    ((version & GEN_MASK) << TAT_BITS) | tat
}

#[inline]
fn tat_of(state: u64) -> u64 {
    state & MAX_UNITS
}

#[inline]
fn gen_of(state: u64) -> u64 {
    state >> TAT_BITS
}

/// The limits of one bucket under one version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `None`: unlimited, admits everything and touches no state.
    pub rate: Option<Rate>,
    /// Capacity in units; at least 1 when limited. The rate is [fitted](Rate::fit) to it.
    pub burst: u64,
    /// The configured limit per period, as reported by `usage`.
    pub limit: u64,
}

impl Limits {
    pub(crate) const UNLIMITED: Limits = Limits {
        rate: None,
        burst: 0,
        limit: 0,
    };
}

/// One generation's parameters, seqlock-guarded.
struct Slot {
    /// `version << 1`, odd while being written.
    seq: AtomicU64,
    mant: AtomicU64,
    /// `shift | frac << 32`, see [`Rate::to_raw`].
    shift: AtomicU64,
    burst: AtomicU64,
    limit: AtomicU64,
}

struct Inner {
    state: AtomicU64,
    slots: [Slot; 2],
}

/// A consistent snapshot: the state word and the limits of its generation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    state: u64,
    pub version: u64,
    pub limits: Limits,
}

impl View {
    /// Units in use at `now`, to the nearest whole unit (0 when unlimited). Reporting only:
    /// decisions go by [`remaining_at`](Self::remaining_at), which rounds down.
    #[inline]
    pub fn used_at(&self, now: u64) -> u64 {
        match self.limits.rate {
            Some(rate) => rate.nearest(gcra::used(tat_of(self.state), rate.at(now).lo)),
            None => 0,
        }
    }

    /// Whole units a call could take at `now`: `decide(now, n)` admits iff `n <= remaining`
    /// (`u64::MAX` when unlimited).
    #[inline]
    pub fn remaining_at(&self, now: u64) -> u64 {
        match self.limits.rate {
            Some(rate) => {
                let used = gcra::used(tat_of(self.state), rate.at(now).lo);
                rate.whole(rate.quanta_floor(self.limits.burst).saturating_sub(used))
            }
            None => u64::MAX,
        }
    }

    /// The most units one call can ever take (`u64::MAX` when unlimited): the burst, or less
    /// where coarse quanta (or the TAT's range) round it down. `n <= capacity` iff
    /// `quanta(n) <= quanta_floor(burst)`.
    #[inline]
    pub fn capacity(&self) -> u64 {
        match self.limits.rate {
            Some(rate) => rate.whole(rate.quanta_floor(self.limits.burst)),
            None => u64::MAX,
        }
    }

    /// Decides admitting `n` at `now` without writing.
    #[inline]
    pub fn decide(&self, now: u64, n: u64) -> Result<Ticket, Refusal> {
        let Some(rate) = self.limits.rate else {
            return Ok(Ticket::unlimited(self.version));
        };
        let (nq, bq) = (rate.quanta(n), rate.quanta_floor(self.limits.burst));
        // Two compares on the hot path; the capacity itself only for the error.
        if nq > bq || n > self.limits.burst {
            return Err(Refusal::Capacity(self.capacity()));
        }
        match gcra::admit(tat_of(self.state), rate.at(now), nq, bq) {
            // Zero units take nothing: conforming is all that is asked, so nothing is written.
            Ok(_) if n == 0 => Ok(Ticket {
                prev: self.state,
                next: self.state,
                version: self.version,
            }),
            Ok(next) => Ok(Ticket {
                prev: self.state,
                next: pack(self.version, next),
                version: self.version,
            }),
            Err(target) => Err(Refusal::Wait { rate, target }),
        }
    }
}

/// A decision to admit, not yet committed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    prev: u64,
    next: u64,
    version: u64,
}

impl Ticket {
    #[inline]
    fn grant(&self) -> Grant {
        Grant {
            version: self.version,
            tat: tat_of(self.next),
        }
    }

    fn unlimited(version: u64) -> Self {
        // prev == next: committing it writes nothing.
        Ticket {
            prev: 0,
            next: 0,
            version,
        }
    }
}

/// What an admission or claim took: enough to give it back safely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The full limits version the units were taken under.
    pub version: u64,
    /// The TAT right after taking them (0 when unlimited).
    pub tat: u64,
}

/// Why a bucket says no.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// More than the burst: never.
    Capacity(u64),
    /// Not before unit-time `target` at `rate`.
    Wait { rate: Rate, target: u64 },
}

/// A claim made by a waiter: taken now, conforming at `ready_ns`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claim {
    pub grant: Grant,
    pub ready_ns: u64,
}

/// One GCRA bucket: one state word and its parameter slots, on their own cache line(s) so that
/// a limiter's two buckets do not false-share.
pub(crate) struct Bucket {
    inner: CachePadded<Inner>,
}

impl Bucket {
    /// A full bucket with the given limits, at version 0.
    pub(crate) fn new(limits: Limits) -> Self {
        let slot = |seq| Slot {
            seq: AtomicU64::new(seq),
            mant: AtomicU64::new(0),
            shift: AtomicU64::new(0),
            burst: AtomicU64::new(0),
            limit: AtomicU64::new(0),
        };
        let b = Bucket {
            inner: CachePadded::new(Inner {
                state: AtomicU64::new(pack(0, 0)),
                // Slot 1 starts odd ("being written") so no reader can take it for valid.
                slots: [slot(0), slot(1)],
            }),
        };
        b.write_slot(0, limits);
        b
    }

    fn write_slot(&self, version: u64, limits: Limits) {
        let slot = &self.inner.slots[(version & 1) as usize];
        let (mant, shift) = limits.rate.map_or((0, 0), Rate::to_raw);
        let old = slot.seq.load(Relaxed);
        slot.seq.store(old | 1, Relaxed);
        fence(Release);
        slot.mant.store(mant, Relaxed);
        slot.shift.store(shift, Relaxed);
        slot.burst.store(limits.burst, Relaxed);
        slot.limit.store(limits.limit, Relaxed);
        slot.seq.store(version << 1, Release);
    }

    /// The limits of generation `gen` of `state`, if the slot holds them consistently.
    #[inline]
    fn read_slot(&self, state: u64) -> Option<View> {
        let gen = gen_of(state);
        let slot = &self.inner.slots[(gen & 1) as usize];
        let seq = slot.seq.load(Acquire);
        let version = seq >> 1;
        if seq & 1 != 0 || version & GEN_MASK != gen {
            return None;
        }
        let mant = slot.mant.load(Relaxed);
        let shift = slot.shift.load(Relaxed);
        let burst = slot.burst.load(Relaxed);
        let limit = slot.limit.load(Relaxed);
        fence(Acquire);
        if slot.seq.load(Relaxed) != seq {
            return None;
        }
        Some(View {
            state,
            version,
            limits: Limits {
                rate: Rate::from_raw(mant, shift),
                burst,
                limit,
            },
        })
    }

    /// A consistent snapshot of the state and its limits. Loads only.
    #[inline]
    pub(crate) fn view(&self) -> View {
        let backoff = Backoff::new();
        loop {
            let state = self.inner.state.load(Acquire);
            if let Some(v) = self.read_slot(state) {
                return v;
            }
            // Only a reader that fell a whole generation behind gets here.
            backoff.spin();
        }
    }

    /// Commits a ticket decided for `n` units at `now`. If the state moved since the decision,
    /// decides again against the new state (which may refuse).
    #[inline]
    pub(crate) fn commit(&self, t: Ticket, now: u64, n: u64) -> Result<Grant, Refusal> {
        // The uncontended case inline: one CAS (none for a ticket that writes nothing).
        if self.try_commit(&t) {
            return Ok(t.grant());
        }
        self.commit_contended(now, n)
    }

    /// Writes a ticket's state if the state is still the one it was decided from.
    #[inline]
    fn try_commit(&self, t: &Ticket) -> bool {
        t.prev == t.next
            || self
                .inner
                .state
                .compare_exchange_weak(t.prev, t.next, AcqRel, Acquire)
                .is_ok()
    }

    /// The CAS lost a race (or failed spuriously): back off, decide again, retry.
    #[cold]
    #[inline(never)]
    fn commit_contended(&self, now: u64, n: u64) -> Result<Grant, Refusal> {
        let backoff = Backoff::new();
        loop {
            backoff.spin();
            let t = self.view().decide(now, n)?;
            if self.try_commit(&t) {
                return Ok(t.grant());
            }
        }
    }

    /// Admits `n` units at `now`, all or nothing. A refusal writes nothing.
    #[inline]
    pub(crate) fn admit(&self, now: u64, n: u64) -> Result<Grant, Refusal> {
        let ticket = self.view().decide(now, n)?;
        self.commit(ticket, now, n)
    }

    /// Takes `n` units at `now` for a waiter that will not be served before the claim conforms,
    /// provided it conforms by clock reading `by` (`u64::MAX`: whenever). Returns the grant
    /// and the reading at which the claim conforms. Refuses `n > burst` (never), and a claim
    /// that would conform only after `by` (writing nothing).
    pub(crate) fn claim(&self, now: u64, n: u64, by: u64) -> Result<Claim, Refusal> {
        self.take(now, n, Some(by))
    }

    /// Takes `n` units at `now` unconditionally, as debt if need be (actual usage beyond an
    /// estimate). Returns when the bucket is out of debt again.
    pub(crate) fn charge(&self, now: u64, n: u64) -> Claim {
        match self.take(now, n, None) {
            Ok(c) => c,
            // `take` refuses only when given a bound.
            Err(_) => unreachable!("an unbounded take never refuses"),
        }
    }

    fn take(&self, now: u64, n: u64, by: Option<u64>) -> Result<Claim, Refusal> {
        let backoff = Backoff::new();
        loop {
            let v = self.view();
            let Some(rate) = v.limits.rate else {
                let grant = Grant {
                    version: v.version,
                    tat: 0,
                };
                return Ok(Claim {
                    grant,
                    ready_ns: now,
                });
            };
            let (nq, bq) = (rate.quanta(n), rate.quanta_floor(v.limits.burst));
            let next = gcra::claim(tat_of(v.state), rate.at(now), nq);
            let target = gcra::ready(next, bq);
            if let Some(by) = by {
                if n > v.capacity() {
                    return Err(Refusal::Capacity(v.capacity()));
                }
                // Conforms by `by` iff at(by).lo >= target (`at` is monotonic and ns_for its
                // exact inverse). A saturated TAT never conforms.
                if next >= MAX_UNITS || target > rate.at(by.max(now)).lo {
                    return Err(Refusal::Wait { rate, target });
                }
            }
            if n == 0
                || self
                    .inner
                    .state
                    .compare_exchange_weak(v.state, pack(v.version, next), AcqRel, Acquire)
                    .is_ok()
            {
                let ready = rate.ns_for(target);
                return Ok(Claim {
                    grant: Grant {
                        version: v.version,
                        tat: next,
                    },
                    ready_ns: ready.max(now),
                });
            }
            backoff.spin();
        }
    }

    /// Gives back up to `n` units of `grant` under the safe rule of [`gcra::refund`].
    ///
    /// `now` is called after each load of the state, so that its reading is not older than any
    /// admission already reflected in the state: that is what makes the rule safe. If the
    /// limits changed since the grant, nothing is given back (the units were carried into the
    /// new limits as used; keeping them is the conservative choice).
    pub(crate) fn refund(&self, grant: Grant, n: u64, now: impl Fn() -> u64) {
        let backoff = Backoff::new();
        loop {
            let v = self.view();
            let Some(rate) = v.limits.rate else { return };
            if v.version != grant.version || n == 0 {
                return;
            }
            let tat = tat_of(v.state);
            let next = gcra::refund(tat, grant.tat, rate.at(now()).hi, rate.quanta_floor(n));
            if next == tat {
                return;
            }
            if self
                .inner
                .state
                .compare_exchange_weak(v.state, pack(v.version, next), AcqRel, Acquire)
                .is_ok()
            {
                return;
            }
            backoff.spin();
        }
    }

    /// Installs `limits` as version `version` (the current version + 1), carrying the used
    /// units across at the reading `now()` returns, which it calls after each load of the
    /// state (as [`refund`](Self::refund) does, and for the same reason: the reading must not
    /// be older than an admission the state reflects). Returns that reading. The caller
    /// serialises calls (the limiter's lock).
    pub(crate) fn set_limits(&self, version: u64, limits: Limits, now: impl Fn() -> u64) -> u64 {
        let old = self.view();
        debug_assert_eq!(version, old.version + 1);
        self.write_slot(version, limits);
        let backoff = Backoff::new();
        let mut state = old.state;
        loop {
            let now = now();
            // Only this (serialised) writer changes the generation, so `old.limits` stay the
            // limits of whatever state we read here.
            let tat = match (old.limits.rate, limits.rate) {
                (Some(o), Some(n)) => gcra::rescale(tat_of(state), o, o.at(now), n, n.at(now)),
                // From unlimited nothing was counted; to unlimited nothing is read.
                _ => 0,
            };
            match self
                .inner
                .state
                .compare_exchange_weak(state, pack(version, tat), AcqRel, Acquire)
            {
                Ok(_) => return now,
                Err(cur) => state = cur,
            }
            backoff.spin();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn limits(limit: u64, period_ns: u64, burst: u64) -> Limits {
        Limits {
            rate: Rate::new(limit, period_ns).map(|r| r.fit(burst)),
            burst,
            limit,
        }
    }

    impl Limits {
        fn with_rate(self, limit: u64, period_ns: u64) -> Limits {
            Limits {
                rate: Rate::new(limit, period_ns).map(|r| r.fit(self.burst)),
                ..self
            }
        }
    }

    #[test]
    fn admits_burst_then_refuses_without_writing() {
        let b = Bucket::new(limits(1, 8, 3)); // one unit per 8 ns
        for _ in 0..3 {
            b.admit(800, 1).unwrap();
        }
        let before = b.inner.state.load(SeqCst);
        match b.admit(800, 1) {
            Err(Refusal::Wait { target, .. }) => assert_eq!(target, 101),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.inner.state.load(SeqCst), before, "a denial wrote");
        assert_eq!(b.admit(800, 4), Err(Refusal::Capacity(3)));
        assert!(b.admit(807, 1).is_err());
        assert!(b.admit(808, 1).is_ok());
    }

    #[test]
    fn unlimited_touches_no_state() {
        let b = Bucket::new(Limits::UNLIMITED);
        for _ in 0..1000 {
            b.admit(5, u64::MAX).unwrap();
        }
        let _ = b.charge(5, u64::MAX);
        assert_eq!(b.inner.state.load(SeqCst), pack(0, 0));
    }

    #[test]
    fn set_limits_keeps_used_units_and_switches_generation() {
        let b = Bucket::new(limits(1, 8, 100));
        b.admit(1000, 40).unwrap();
        assert_eq!(b.view().used_at(1000), 40);
        b.set_limits(1, limits(16, 128, 10), || 1000); // one unit per 8 ns, burst 10
        let v = b.view();
        assert_eq!(v.version, 1);
        assert_eq!(v.used_at(1000), 40, "used units must carry across");
        assert_eq!(v.limits.burst, 10);
        // 40 used of 10: one unit is free once 31 have refilled (248 ns).
        assert!(b.admit(1247, 1).is_err());
        assert!(b.admit(1248, 1).is_ok());
        // Many generations later the slot still resolves (gen wraps at 64).
        for ver in 2..200 {
            b.set_limits(ver, limits(10, 100, 10), || 2000);
        }
        assert_eq!(b.view().version, 199);
    }

    #[test]
    fn refund_is_exact_alone_and_forfeited_across_limit_change() {
        let b = Bucket::new(limits(1, 8, 100));
        let g = b.admit(1000, 30).unwrap();
        b.refund(g, 30, || 1000);
        assert_eq!(b.view().used_at(1000), 0);
        let g = b.admit(1000, 30).unwrap();
        b.set_limits(1, limits(1, 8, 100), || 1000);
        b.refund(g, 30, || 1000);
        assert_eq!(b.view().used_at(1000), 30);
    }

    #[test]
    fn claims_queue_up_with_increasing_deadlines() {
        let b = Bucket::new(limits(1, 10, 1).with_rate(1, 8)); // one unit per 8 ns, burst 1
        let c0 = b.claim(0, 1, u64::MAX).unwrap();
        let c1 = b.claim(0, 1, u64::MAX).unwrap();
        let c2 = b.claim(0, 1, u64::MAX).unwrap();
        assert_eq!((c0.ready_ns, c1.ready_ns, c2.ready_ns), (0, 8, 16));
        assert_eq!(b.claim(0, 2, u64::MAX).unwrap_err(), Refusal::Capacity(1));
        // A bounded claim that would conform too late writes nothing.
        let before = b.inner.state.load(SeqCst);
        assert!(matches!(
            b.claim(0, 1, 23),
            Err(Refusal::Wait { target: 3, .. })
        ));
        assert_eq!(b.inner.state.load(SeqCst), before);
        assert_eq!(b.claim(0, 1, 24).unwrap().ready_ns, 24);
        // Debt: a charge beyond the burst conforms once it is paid off.
        assert_eq!(b.charge(0, 5).ready_ns, 64);
    }
}
