//! The atomic bucket: one GCRA bucket whose whole state is one `AtomicU64`.
//!
//! # The state word
//!
//! ```text
//!  63      58 57                                   0
//! +----------+--------------------------------------+
//! |   gen    |  TAT in quanta (see gcra.rs)         |
//! +----------+--------------------------------------+
//! ```
//!
//! `gen` is the low 6 bits of the *limits version*: which limits the TAT is measured under
//! (its quanta depend on the rate). A limit change writes the new parameters into the slot the
//! current generation is not using, then rewrites the state word with the next generation and
//! the TAT rescaled to the new quanta. Every decision reads the state word first, then the slot
//! of *its* generation, and commits with a CAS on the state word, so it succeeds only if neither
//! the TAT nor the generation changed: a decision is made wholly under one version of the
//! limits or not at all.
//!
//! # The parameter slots
//!
//! Two slots, used alternately by successive versions, each guarded like a seqlock: its `seq`
//! word holds `version << 1`, odd while being written. A reader whose generation is current
//! never meets a slot being written (the writer writes the other one); a stale reader may,
//! notices it (odd or changed `seq`) and starts over. The full 64-bit version in the slot is
//! what refunds compare, so a permit outlives any number of limit changes without mistaking one
//! generation for another. Each slot holds what a decision needs precomputed (the rate, the
//! burst in quanta, the capacity in units) and, apart, what only reports read.
//!
//! Invariants kept here:
//! - a denial writes nothing;
//! - only `set_limits` changes `gen`, and only while the caller holds the limiter's lock;
//! - every write to the state is [`Bucket::try_commit`]: a CAS from the exact word the
//!   decision was computed from. [`Bucket::update`] is the one retry loop around it.

use crate::budget::{Budget, Limit};
use crate::error::Error;
use crate::gcra::{self, Rate, MAX_UNITS, TAT_BITS};
use crate::pending::{self, Pending};
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

/// One bucket's limits under one version, as a limit change installs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Params {
    /// `None`: unlimited, admits everything and touches no state.
    pub rate: Option<Rate>,
    /// Capacity in units; at least 1 when limited. The rate is [fitted](Rate::fit) to it.
    pub burst: u64,
    /// The configured count per window, as reported.
    pub limit: u64,
    /// The window, in ns, as reported.
    pub window_ns: u64,
}

impl Params {
    /// The parameters a [`Limit`] stands for: the burst and the refill rate its burst policy
    /// gives (`limit` per window, except under [`Burst::Provider`](crate::Burst::Provider),
    /// whose rate is its own), and the limit and window as configured, for reports.
    pub(crate) fn of(limit: &Limit) -> Result<Params, Error> {
        let window_ns = limit.window_ns()?;
        let policy = limit.burst_policy();
        policy.check_shaped()?;
        let count = limit.count();
        let rate = policy
            .rate(count, window_ns)
            .and_then(|(units, per_ns)| Rate::new(units, per_ns));
        Ok(match rate {
            None => Params {
                rate: None,
                burst: 0,
                limit: 0,
                window_ns,
            },
            Some(rate) => {
                let burst = policy.units(count, window_ns);
                Params {
                    rate: Some(rate.fit(burst)),
                    burst,
                    limit: count,
                    window_ns,
                }
            }
        })
    }
}

/// One generation's parameters, seqlock-guarded. The first four words are what a decision
/// reads; the last three only reports.
struct Slot {
    /// `version << 1`, odd while being written.
    seq: AtomicU64,
    mant: AtomicU64,
    /// `shift | frac << 32`, see [`Rate::to_raw`].
    shifts: AtomicU64,
    /// The burst in quanta, rounded down.
    burst_q: AtomicU64,
    /// The most units one call can take: `n <= cap` iff `quanta(n) <= burst_q`.
    cap: AtomicU64,
    burst: AtomicU64,
    limit: AtomicU64,
    window_ns: AtomicU64,
}

struct Inner {
    state: AtomicU64,
    /// Quanta by which refunds have moved the slots placed after their grants, in all: a
    /// grant's slot ends that much earlier than its recorded TAT at most (see `refund`).
    slid: AtomicU64,
    pending: Pending,
    slots: [Slot; 2],
}

/// A consistent snapshot: the state word and what decisions need of its generation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    state: u64,
    pub version: u64,
    /// `None`: unlimited.
    pub rate: Option<Rate>,
    burst_q: u64,
    cap: u64,
}

/// What only reports need, read under the same seqlock as a [`View`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Report {
    pub limit: u64,
}

/// What a take took from one bucket: its slot `[start, end)` in quanta (the start is the TAT
/// it found, so a restart's gap belongs to the slot) and the bucket's slide total then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Grant {
    pub start: u64,
    pub end: u64,
    pub slid: u64,
}

/// How much of a grant a refund gives back.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Give {
    /// This many units of it (a settle's surplus).
    Units(u64),
    /// All of its slot, a restart's gap included (a cancelled reservation, a rolled-back take).
    All,
}

/// Why a bucket says no.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// More than the bucket can ever hold at once: never. Carries the capacity.
    Capacity(u64),
    /// Not before the reading (`lo`, in quanta at `rate`) reaches `target`.
    Wait { rate: Rate, target: u64 },
}

impl View {
    #[inline]
    pub fn tat(&self) -> u64 {
        tat_of(self.state)
    }

    /// The most units one call can ever take (`u64::MAX` when unlimited).
    #[inline]
    pub fn capacity(&self) -> u64 {
        self.cap
    }

    /// Admits `n` units at reading `now_ns` on this view: the TAT to write (equal to the
    /// current one when nothing is taken), or why not.
    #[inline]
    pub fn admit(&self, now_ns: u64, n: u64) -> Result<u64, Refusal> {
        let Some(rate) = self.rate else {
            return Ok(self.tat());
        };
        if n > self.cap {
            return Err(Refusal::Capacity(self.cap));
        }
        let nq = rate.quanta(n);
        match gcra::admit(self.tat(), rate.at(now_ns), nq, self.burst_q) {
            // Zero units take nothing: conforming is all that is asked, so nothing is written
            // (not even the restart of an idle TAT to `now`).
            Ok(_) if nq == 0 => Ok(self.tat()),
            Ok(next) => Ok(next),
            Err(target) => Err(Refusal::Wait { rate, target }),
        }
    }

    /// For a claim released at `rho_ns` (at or after its conformance instant): the slack
    /// between the start of its slot and `rho_ns` in quanta, given the TAT `next` it wrote.
    pub fn slack(&self, rho_ns: u64, n: u64, next: u64) -> u64 {
        match self.rate {
            Some(rate) => {
                let start = next.saturating_sub(rate.quanta(n));
                start.saturating_sub(rate.at(rho_ns).hi)
            }
            None => u64::MAX,
        }
    }

    /// Units in use at `now_ns`, to the nearest whole unit (0 when unlimited). Reporting only.
    pub fn used_at(&self, now_ns: u64) -> u64 {
        match self.rate {
            Some(rate) => rate.nearest(gcra::used(self.tat(), rate.at(now_ns).lo)),
            None => 0,
        }
    }

    /// Whole units a call could take at `now_ns`: `admit(now_ns, n)` succeeds iff
    /// `n <= remaining_at(now_ns)` (`u64::MAX` when unlimited).
    pub fn remaining_at(&self, now_ns: u64) -> u64 {
        match self.rate {
            Some(rate) => {
                let used = gcra::used(self.tat(), rate.at(now_ns).lo);
                rate.whole(self.burst_q.saturating_sub(used)).min(self.cap)
            }
            None => u64::MAX,
        }
    }
}

/// One GCRA bucket: one state word, its pending-waiters word and its parameter slots, on
/// their own cache line(s) so that a limiter's buckets do not false-share.
pub(crate) struct Bucket {
    /// What this bucket counts (fixed for its life).
    pub budget: Budget,
    /// The window of its limit (fixed for its life: a limit change keeps the window).
    pub window: std::time::Duration,
    inner: CachePadded<Inner>,
}

impl Bucket {
    /// A full bucket with the given parameters, at version 0.
    pub(crate) fn new(limit: &Limit, params: Params) -> Self {
        let slot = |seq| Slot {
            seq: AtomicU64::new(seq),
            mant: AtomicU64::new(0),
            shifts: AtomicU64::new(0),
            burst_q: AtomicU64::new(0),
            cap: AtomicU64::new(0),
            burst: AtomicU64::new(0),
            limit: AtomicU64::new(0),
            window_ns: AtomicU64::new(0),
        };
        let b = Bucket {
            budget: limit.budget(),
            window: limit.window(),
            inner: CachePadded::new(Inner {
                state: AtomicU64::new(pack(0, 0)),
                slid: AtomicU64::new(0),
                pending: Pending::new(),
                // Slot 1 starts odd ("being written") so no reader can take it for valid.
                slots: [slot(0), slot(1)],
            }),
        };
        b.write_slot(0, params);
        b
    }

    fn write_slot(&self, version: u64, p: Params) {
        let slot = &self.inner.slots[(version & 1) as usize];
        let (mant, shifts) = p.rate.map_or((0, 0), Rate::to_raw);
        let (burst_q, cap) = match p.rate {
            Some(rate) => {
                let bq = rate.quanta_floor(p.burst);
                (bq, rate.whole(bq).min(p.burst))
            }
            None => (0, u64::MAX),
        };
        let old = slot.seq.load(Relaxed);
        slot.seq.store(old | 1, Relaxed);
        // Orders the odd `seq` before the data stores, so a reader that sees new data also
        // sees the slot marked as being written when it re-checks `seq`.
        fence(Release);
        slot.mant.store(mant, Relaxed);
        slot.shifts.store(shifts, Relaxed);
        slot.burst_q.store(burst_q, Relaxed);
        slot.cap.store(cap, Relaxed);
        slot.burst.store(p.burst, Relaxed);
        slot.limit.store(p.limit, Relaxed);
        slot.window_ns.store(p.window_ns, Relaxed);
        // Publishes the data with the new even `seq`.
        slot.seq.store(version << 1, Release);
    }

    /// The slot of `state`'s generation, if it holds that generation consistently: `read`
    /// loads what the caller needs from it between the two `seq` checks.
    #[inline]
    fn read_slot<T>(&self, state: u64, read: impl FnOnce(&Slot) -> T) -> Option<(u64, T)> {
        let gen = gen_of(state);
        let slot = &self.inner.slots[(gen & 1) as usize];
        // Acquire: the data loads below see at least what the writer published with this seq.
        let seq = slot.seq.load(Acquire);
        let version = seq >> 1;
        if seq & 1 != 0 || version & GEN_MASK != gen {
            return None;
        }
        let data = read(slot);
        // Orders the data loads before the re-check: if the writer started over meanwhile,
        // the re-check sees its odd or newer seq.
        fence(Acquire);
        (slot.seq.load(Relaxed) == seq).then_some((version, data))
    }

    /// A consistent snapshot of the state and what decisions need. Loads only.
    #[inline]
    pub(crate) fn view(&self) -> View {
        let backoff = Backoff::new();
        loop {
            // Acquire: pairs with the CAS that wrote this state, so the slot it names is
            // published (a limit change writes the slot before switching the generation).
            let state = self.inner.state.load(Acquire);
            let read = |s: &Slot| {
                (
                    s.mant.load(Relaxed),
                    s.shifts.load(Relaxed),
                    s.burst_q.load(Relaxed),
                    s.cap.load(Relaxed),
                )
            };
            if let Some((version, (mant, shifts, burst_q, cap))) = self.read_slot(state, read) {
                return View {
                    state,
                    version,
                    rate: Rate::from_raw(mant, shifts),
                    burst_q,
                    cap,
                };
            }
            // Only a reader that fell a whole generation behind gets here.
            backoff.spin();
        }
    }

    /// A snapshot for reports: the decision view and the reported limits, consistent.
    pub(crate) fn report(&self) -> (View, Report) {
        loop {
            let v = self.view();
            let read = |s: &Slot| Report {
                limit: s.limit.load(Relaxed),
            };
            if let Some((version, r)) = self.read_slot(v.state, read) {
                if version == v.version {
                    return (v, r);
                }
            }
        }
    }

    /// The limits in force, in the terms they were given (for `Debug` and reports).
    pub(crate) fn params(&self) -> (u64, Params) {
        loop {
            let v = self.view();
            let read = |s: &Slot| {
                (
                    s.burst.load(Relaxed),
                    s.limit.load(Relaxed),
                    s.window_ns.load(Relaxed),
                )
            };
            if let Some((version, (burst, limit, window_ns))) = self.read_slot(v.state, read) {
                if version == v.version {
                    let p = Params {
                        rate: v.rate,
                        burst,
                        limit,
                        window_ns,
                    };
                    return (version, p);
                }
            }
        }
    }

    /// The one write: the TAT `next` (under the view's version) if the state is still the
    /// view's. Writing the TAT a view already holds is a no-op that succeeds.
    #[inline]
    pub(crate) fn try_commit(&self, v: &View, next: u64) -> bool {
        next == v.tat()
            // AcqRel: publishes this decision (and what the caller wrote before it, such as
            // the pending word) to the next reader of the state, and acquires the state the
            // decision is based on.
            || self
                .inner
                .state
                .compare_exchange_weak(v.state, pack(v.version, next), AcqRel, Acquire)
                .is_ok()
    }

    /// The one retry loop: `decide` maps a view to the TAT to write (or `Err` to stop) and is
    /// called again after a lost race.
    #[inline]
    pub(crate) fn update<T>(&self, mut decide: impl FnMut(&View) -> Result<(u64, T), T>) -> T {
        let backoff = Backoff::new();
        loop {
            let v = self.view();
            match decide(&v) {
                Err(stop) => return stop,
                Ok((next, out)) => {
                    if self.try_commit(&v, next) {
                        return out;
                    }
                }
            }
            backoff.spin();
        }
    }

    /// How far refunds have slid later slots, in all, as of a state loaded just before: what
    /// a take records with its grant, so that its own refund knows how far its slot may have
    /// moved since.
    #[inline]
    pub(crate) fn slid(&self) -> u64 {
        // Relaxed: a refund adds to it before its state CAS, which the caller's state load
        // acquired.
        self.inner.slid.load(Relaxed)
    }

    /// Records a claim released at `rho_ns`, later than its reading `now_ns`, before it is
    /// committed (see `pending.rs`).
    #[inline]
    pub(crate) fn note_pending(&self, now_ns: u64, rho_ns: u64, slack: u64) {
        self.inner.pending.note(now_ns, rho_ns, slack);
    }

    /// Takes `n` units at `now_ns` unconditionally, as debt if need be (usage beyond an
    /// estimate). Returns the reading at which the bucket is out of debt again.
    pub(crate) fn charge(&self, now_ns: u64, n: u64) -> u64 {
        self.update(|v| {
            let Some(rate) = v.rate else {
                return Err(now_ns);
            };
            let at = rate.at(now_ns);
            let nq = rate.quanta(n);
            if nq == 0 {
                return Err(now_ns);
            }
            let next = gcra::claim(v.tat(), at, nq);
            let target = gcra::ready(next, v.burst_q);
            Ok((next, rate.ns_for(target).max(now_ns)))
        })
    }

    /// Gives back `give` of a grant taken under `version`, under the rule of
    /// [`gcra::refund`].
    ///
    /// The grant's slot may have been slid back since by refunds of earlier grants: it ends at
    /// least `slid - grant.slid` before `grant.end`, and the rule is judged at that earlier end
    /// (judged at `grant.end`, the expired part of a slid slot would count as unexpired). A
    /// refund that slides later slots adds what it slid to the total, before its CAS.
    ///
    /// `fresh` is called after each load of the state and of the pending word, so that its
    /// reading is no older than any admission or claim they reflect: that is what makes the
    /// rule safe. After a limit change nothing is given back (the units were carried into the
    /// new limits as used; keeping them is the conservative choice).
    pub(crate) fn refund(&self, version: u64, grant: &Grant, give: Give, fresh: impl Fn() -> u64) {
        self.update(|v| {
            let Some(rate) = v.rate else { return Err(()) };
            let q = match give {
                Give::Units(n) => rate.quanta_floor(n),
                Give::All => grant.end.saturating_sub(grant.start),
            };
            if v.version != version || q == 0 {
                return Err(());
            }
            let end = grant
                .end
                .saturating_sub(self.slid().saturating_sub(grant.slid));
            let word = self.inner.pending.load();
            let u = fresh();
            let slack = pending::slack_at(word, u);
            let tat = v.tat();
            let next = gcra::refund(tat, end, rate.at(u).hi, q, slack);
            if next == tat {
                return Err(());
            }
            if tat > end {
                // Slots placed after the grant slide back by as much (before the CAS; lost if
                // it fails: conservative). Pending waiters among them spend their slack.
                self.inner.slid.fetch_add(tat - next, Relaxed);
                if slack.is_some() {
                    self.inner.pending.spend(u, tat - next);
                }
            }
            Ok((next, ()))
        })
    }

    /// Installs `params` as version `version` (the current version + 1), carrying the used
    /// units across at the reading `fresh()` returns, which it calls after each load of the
    /// state (as [`refund`](Self::refund) does, and for the same reason: the reading must not
    /// be older than an admission the state reflects). Returns that reading. The caller
    /// serialises calls (the limiter's lock).
    pub(crate) fn set_limits(&self, version: u64, params: Params, fresh: impl Fn() -> u64) -> u64 {
        let old = self.view();
        debug_assert_eq!(version, old.version + 1);
        self.write_slot(version, params);
        // Waiters pending now keep their deadlines, but their slots are about to be rescaled:
        // until they are released nothing may slide past them (before the switch, so that a
        // refund under the new version sees it).
        self.inner.pending.freeze();
        let backoff = Backoff::new();
        let mut state = old.state;
        loop {
            let now = fresh();
            let word = self.inner.pending.load();
            // Only this (serialised) writer changes the generation, so `old.rate` stays the
            // rate of whatever state we read here.
            let tat = match (old.rate, params.rate) {
                (Some(o), Some(n)) => {
                    let carried = gcra::rescale(tat_of(state), o, o.at(now), n, n.at(now));
                    if pending::slack_at(word, now).is_some() {
                        // Waiters keep deadlines set on the old timeline: a faster rate would
                        // carry their units into less time and place the next claims between
                        // their deadlines. So the tail stays, as an instant, where it was.
                        let tail = n.at(o.ns_for(tat_of(state))).hi.min(MAX_UNITS);
                        carried.max(tail)
                    } else {
                        carried
                    }
                }
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

#[cfg(all(test, not(ratekeeper_loom)))]
mod tests {
    use super::*;
    use crate::budget::Burst;

    fn bucket(limit: u64, period_ns: u64, burst: u64) -> Bucket {
        let l = Limit::requests(limit)
            .per(std::time::Duration::from_nanos(period_ns))
            .burst(Burst::Units(burst));
        Bucket::new(&l, Params::of(&l).unwrap())
    }

    fn params(limit: u64, period_ns: u64, burst: u64) -> Params {
        let l = Limit::requests(limit)
            .per(std::time::Duration::from_nanos(period_ns))
            .burst(Burst::Units(burst));
        Params::of(&l).unwrap()
    }

    /// A grant of units whose slot needed no restart, as a take would record it.
    fn grant(end: u64) -> Grant {
        Grant {
            start: 0,
            end,
            slid: 0,
        }
    }

    fn admit(b: &Bucket, now: u64, n: u64) -> Result<u64, Refusal> {
        b.update(|v| match v.admit(now, n) {
            Ok(next) => Ok((next, Ok(next))),
            Err(r) => Err(Err(r)),
        })
    }

    #[test]
    fn admits_burst_then_refuses_without_writing() {
        let b = bucket(1, 8, 3); // one unit per 8 ns
        for _ in 0..3 {
            admit(&b, 800, 1).unwrap();
        }
        let before = b.inner.state.load(SeqCst);
        match admit(&b, 800, 1) {
            Err(Refusal::Wait { target, .. }) => assert_eq!(target, 101),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.inner.state.load(SeqCst), before, "a denial wrote");
        assert_eq!(admit(&b, 800, 4), Err(Refusal::Capacity(3)));
        assert!(admit(&b, 807, 1).is_err());
        assert!(admit(&b, 808, 1).is_ok());
    }

    #[test]
    fn unlimited_touches_no_state() {
        let l = Limit::tokens(0);
        let b = Bucket::new(&l, Params::of(&l).unwrap());
        for _ in 0..1000 {
            admit(&b, 5, u64::MAX).unwrap();
        }
        b.charge(5, u64::MAX);
        assert_eq!(b.inner.state.load(SeqCst), pack(0, 0));
    }

    #[test]
    fn set_limits_keeps_used_units_and_switches_generation() {
        let b = bucket(1, 8, 100);
        admit(&b, 1000, 40).unwrap();
        assert_eq!(b.view().used_at(1000), 40);
        b.set_limits(1, params(16, 128, 10), || 1000); // one unit per 8 ns, burst 10
        let v = b.view();
        assert_eq!(v.version, 1);
        assert_eq!(v.used_at(1000), 40, "used units must carry across");
        assert_eq!(b.params().1.burst, 10);
        // 40 used of 10: one unit is free once 31 have refilled (248 ns).
        assert!(admit(&b, 1247, 1).is_err());
        assert!(admit(&b, 1248, 1).is_ok());
        // Many generations later the slot still resolves (gen wraps at 64).
        for ver in 2..200 {
            b.set_limits(ver, params(10, 100, 10), || 2000);
        }
        assert_eq!(b.view().version, 199);
    }

    #[test]
    fn refund_is_exact_alone_and_forfeited_across_limit_change() {
        let b = bucket(1, 8, 100);
        let g = grant(admit(&b, 1000, 30).unwrap());
        b.refund(0, &g, Give::Units(30), || 1000);
        assert_eq!(b.view().used_at(1000), 0);
        let g = grant(admit(&b, 1000, 30).unwrap());
        b.set_limits(1, params(1, 8, 100), || 1000);
        b.refund(0, &g, Give::Units(30), || 1000);
        assert_eq!(b.view().used_at(1000), 30);
    }

    #[test]
    fn a_pending_waiter_behind_a_grant_limits_its_refund_to_the_slack() {
        let b = bucket(1, 8, 1); // one unit per 8 ns, burst 1
        let g = admit(&b, 0, 1).unwrap();
        // A waiter behind it, released at 8 ns with slack 0 (burst 1 - 1).
        let v = b.view();
        let next = v.admit(8, 1).unwrap();
        b.note_pending(0, 8, v.slack(8, 1, next));
        assert!(b.try_commit(&v, next));
        let tat = b.view().tat();
        let g = grant(g);
        b.refund(0, &g, Give::Units(1), || 0);
        assert_eq!(
            b.view().tat(),
            tat,
            "nothing may slide past the pending waiter"
        );
        // Once the waiter is released (and its instant is past), the refund is free again:
        // the grant has expired by then, so still nothing, but for its own reason.
        b.refund(0, &g, Give::Units(1), || 1 << 20);
        assert_eq!(b.view().tat(), tat);
    }

    #[test]
    fn a_slot_slid_by_an_earlier_refund_is_judged_where_it_now_ends() {
        let b = bucket(1, 8, 100); // one unit per 8 ns, one quantum per unit
        let a = grant(admit(&b, 0, 30).unwrap()); // slot [0, 30)
        let slid = b.slid();
        let g = Grant {
            start: 30,
            end: admit(&b, 0, 20).unwrap(),
            slid,
        }; // slot [30, 50)
        b.refund(0, &a, Give::Units(30), || 0); // B slides back to [0, 20)
        assert_eq!(b.slid(), 30);
        // At 10 units B's slot has 10 left, not the 40 its recorded end would say.
        b.refund(0, &g, Give::All, || 80);
        assert_eq!(
            b.view().tat(),
            10,
            "the bucket is empty from 10 units on, never below"
        );
    }

    #[test]
    fn a_cancelled_claim_at_the_tail_gives_back_its_restart_gap_too() {
        let b = bucket(1, 8, 4); // one unit per 8 ns, burst 4
                                 // A claim released at 800 ns finds the bucket idle: its slot restarts there.
        let v = b.view();
        let end = v.admit(800, 1).unwrap();
        assert!(b.try_commit(&v, end));
        let g = Grant {
            start: v.tat(),
            end,
            slid: 0,
        };
        assert_eq!((g.start, g.end), (0, 101));
        b.refund(0, &g, Give::All, || 0);
        assert_eq!(b.view().tat(), 0, "the bucket is as if the claim never was");
    }

    #[test]
    fn charges_run_into_debt_and_say_when_it_is_paid() {
        let b = bucket(1, 8, 1);
        // 5 units at 0 with a burst of 1: out of debt (full, holding nothing) at 4 units.
        assert_eq!(b.charge(0, 5), 32);
        assert_eq!(admit(&b, 32, 0), Ok(5), "out of debt: zero units conform");
        assert!(admit(&b, 39, 1).is_err());
        assert!(admit(&b, 40, 1).is_ok());
    }
}
