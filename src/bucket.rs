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
//! generation for another. Each slot holds what a decision needs precomputed (the rate and its
//! conversion shift, one unit and the burst in quanta, the capacity in units) and, apart, what
//! only reports read.
//!
//! # Immediate decisions skip the seqlock
//!
//! An admission released at its own reading ([`Bucket::decide`]) reads the slot of its state's
//! generation `g` without the `seq` checks, and the state word validates what it read:
//!
//! - The slot of `g` is rewritten only for version `g + 2`, and only after the state has left
//!   `g`: limit changes are serialised, and each one finishes switching the state before the
//!   next one starts writing a slot.
//! - A decision that writes commits with a CAS from the word it loaded. If the CAS succeeds the
//!   state had not left `g` at that point, so the setter's CAS that leaves `g` comes later in
//!   the state's modification order. Every write of the state is a read-modify-write, so that
//!   CAS (acquire) synchronises with ours (release): the slot loads, sequenced before our CAS,
//!   happen before the rewrite and cannot see it.
//! - A decision that writes nothing (a denial, an unlimited budget) reloads the state after an
//!   acquire fence ([`Bucket::still`]). A slot load that saw a rewrite would have synchronised
//!   with the setter's release fence (between its switch of the state and its data stores), so
//!   the reload would see the state past `g`. Finding the same word proves the loads saw `g`'s
//!   values, as consistent as the seqlock would have.
//!
//! Either way a decision is made wholly under one version or discarded. The state word holds
//! six bits of the version, so 64 limit changes between one decision's load and its CAS that
//! left the same word behind would go unnoticed, by this path as by the seqlock's.
//!
//! Invariants kept here:
//! - a denial writes nothing;
//! - only `set_limits` changes `gen`, and only while the caller holds the limiter's lock;
//! - every write to the state is [`Bucket::try_commit`]: a CAS from the exact word the
//!   decision was computed from. [`Bucket::update`] is the one retry loop around it.

use crate::budget::{Budget, Limit};
use crate::clock::TickScale;
use crate::error::Error;
use crate::gcra::{self, Rate, MAX_UNITS, TAT_BITS};
use crate::pending::{self, Pending};
use crate::sync::{fence, AtomicU64, Backoff, Ordering::*};
use crossbeam_utils::CachePadded;

pub(crate) const GEN_MASK: u64 = (1 << (64 - TAT_BITS)) - 1;

/// The per-tick shift of an unlimited budget (real shifts are below 64).
const TICK_UNLIMITED: u64 = 64;

#[inline]
/// The state word of a TAT under limits version `version`.
pub(crate) fn pack(version: u64, tat: u64) -> u64 {
    ((version & GEN_MASK) << TAT_BITS) | tat
}

/// The TAT a state word holds.
#[inline(always)]
pub(crate) fn tat_of(state: u64) -> u64 {
    state & MAX_UNITS
}

/// The limits generation a state word is measured under.
#[inline(always)]
pub(crate) fn gen_of(state: u64) -> u64 {
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
    /// [`of`](Self::of) each of `limits`, in order; the first error if any.
    pub(crate) fn all(limits: &[Limit]) -> Result<Vec<Params>, Error> {
        limits.iter().map(Params::of).collect()
    }

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

/// This thread's lost compare-exchanges on state words, for the contention bench: compiled
/// only with `--cfg ratekeeper_stats`, so normal builds carry no counter at all.
#[cfg(ratekeeper_stats)]
pub(crate) mod stats {
    use std::cell::Cell;

    thread_local! {
        static LOST: Cell<u64> = const { Cell::new(0) };
    }

    /// Counts a compare-exchange that lost (`won == false`).
    #[inline]
    pub(crate) fn lost(won: bool) {
        if !won {
            LOST.with(|l| l.set(l.get() + 1));
        }
    }

    /// This thread's count so far.
    pub(crate) fn count() -> u64 {
        LOST.with(Cell::get)
    }
}

/// The parameters of both generations of one budget, seqlock-guarded, field by field: a
/// generation's slot is index `gen & 1` of every field, so that one generation bit addresses
/// each word (`base + 8 * (gen & 1)`) with no slot stride to multiply by. The first five
/// fields are what a decision reads (an immediate one without the seqlock, see the module
/// docs); the last three only reports.
///
/// A bucket owns one beside its state word; the keyed limiter shares one among all the state
/// words of a tenant class, so that a tenant is only its words.
pub(crate) struct ParamSlots {
    /// The scale of the clock's counter, when it has one (fixed for its life): each write
    /// also computes the rate per tick of it.
    ticks: Option<TickScale>,
    /// The rate's multiplier; 0 for unlimited.
    mant: [AtomicU64; 2],
    /// The rate's shifts, see [`Rate::to_raw`].
    conv: [AtomicU64; 2],
    /// One unit in quanta, rounded up: what a request takes.
    unit_q: [AtomicU64; 2],
    /// The burst in quanta, rounded down.
    burst_q: [AtomicU64; 2],
    /// The most units one call can take: `n <= cap` iff `quanta(n) <= burst_q`.
    cap: [AtomicU64; 2],
    /// The rate in quanta per tick of the clock's counter ([`Rate::per_tick`]): multiplier
    /// and shift `k` (1..64); `k` is [`TICK_UNLIMITED`] when unlimited, 0 when the rate has no
    /// tick form (the counter is read as nanoseconds then).
    tick_m: [AtomicU64; 2],
    tick_k: [AtomicU64; 2],
    /// `version << 1`, odd while being written.
    seq: [AtomicU64; 2],
    burst: [AtomicU64; 2],
    limit: [AtomicU64; 2],
    window_ns: [AtomicU64; 2],
}

/// One generation's slot: index `i` (0 or 1) of every field of [`ParamSlots`].
#[derive(Clone, Copy)]
struct Slot<'a> {
    all: &'a ParamSlots,
    i: usize,
}

/// `n` units as an immediate decision takes them ([`Slot::units`]).
enum Units {
    /// `1 <= n <= cap`: this many quanta, at most the burst.
    Quanta(u64),
    /// More than the bucket can ever hold at once.
    OverCap,
    /// None: only the debt test applies (a cold path of its own).
    Zero,
}

impl<'a> Slot<'a> {
    /// `n` units in quanta for an immediate decision: one request is precomputed, other
    /// counts are checked against the capacity and converted at `conv` (the slot's word, passed
    /// in because the nanosecond decision has it loaded already and the tick decision
    /// needs it only here).
    #[inline(always)]
    fn units(self, n: u64, conv: impl FnOnce() -> u64) -> Units {
        if n == 1 {
            Units::Quanta(self.unit_q().load(Relaxed))
        } else if n > self.cap().load(Relaxed) {
            Units::OverCap
        } else if n == 0 {
            Units::Zero
        } else {
            Units::Quanta(gcra::quanta_within(gcra::frac_of(conv()), n))
        }
    }

    #[inline(always)]
    fn mant(self) -> &'a AtomicU64 {
        &self.all.mant[self.i]
    }
    #[inline(always)]
    fn conv(self) -> &'a AtomicU64 {
        &self.all.conv[self.i]
    }
    #[inline(always)]
    fn unit_q(self) -> &'a AtomicU64 {
        &self.all.unit_q[self.i]
    }
    #[inline(always)]
    fn burst_q(self) -> &'a AtomicU64 {
        &self.all.burst_q[self.i]
    }
    #[inline(always)]
    fn cap(self) -> &'a AtomicU64 {
        &self.all.cap[self.i]
    }
    #[inline(always)]
    fn tick_m(self) -> &'a AtomicU64 {
        &self.all.tick_m[self.i]
    }
    #[inline(always)]
    fn tick_k(self) -> &'a AtomicU64 {
        &self.all.tick_k[self.i]
    }
    #[inline(always)]
    fn seq(self) -> &'a AtomicU64 {
        &self.all.seq[self.i]
    }
    #[inline(always)]
    fn burst(self) -> &'a AtomicU64 {
        &self.all.burst[self.i]
    }
    #[inline(always)]
    fn limit(self) -> &'a AtomicU64 {
        &self.all.limit[self.i]
    }
    #[inline(always)]
    fn window_ns(self) -> &'a AtomicU64 {
        &self.all.window_ns[self.i]
    }
}

struct Inner {
    state: AtomicU64,
    /// Quanta by which refunds have moved the slots placed after their grants, in all: a
    /// grant's slot ends that much earlier than its recorded TAT at most (see `refund`).
    slid: AtomicU64,
    pending: Pending,
    slots: ParamSlots,
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

/// An immediate decision on one bucket ([`Bucket::decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Admitted: write this state word.
    Write(u64),
    /// Admitted with nothing to write (an unlimited budget, zero units).
    Keep,
    /// Refused ([`Bucket::refusal`] says why).
    Refuse,
}

/// What a refusing bucket lacks, on its raw words ([`Bucket::shortfall`]): cheap to compare
/// across buckets, turned into a [`Refusal`] only for the one an error names.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Short {
    /// More than the capacity (carried): never.
    Never(u64),
    /// Not before the reading reaches `target` quanta, at the rate `(mant, conv)`.
    Until { mant: u64, conv: u64, target: u64 },
}

impl Short {
    /// Whether this wait ends later than `other`'s (both [`Short::Until`]): same rates
    /// compare their targets, others their estimated instants ([`Rate::ns_estimate`]) and,
    /// when those are too close to tell apart, their exact ones ([`Rate::ns_for`]).
    #[inline(always)]
    pub(crate) fn later_than(self, other: Short) -> bool {
        match (self, other) {
            (
                Short::Until { mant, conv, target },
                Short::Until {
                    mant: m,
                    conv: c,
                    target: t,
                },
            ) if (mant, conv >> 8) == (m, c >> 8) => target > t, // one rate: the wait grows with the target
            _ => self.later_than_apart(other),
        }
    }

    /// [`later_than`](Self::later_than) for a capacity refusal or two different rates.
    #[inline(never)]
    fn later_than_apart(self, other: Short) -> bool {
        let (
            Short::Until { mant, conv, target },
            Short::Until {
                mant: m,
                conv: c,
                target: t,
            },
        ) = (self, other)
        else {
            return matches!(self, Short::Never(_));
        };
        let (Some(a), Some(b)) = (Rate::from_raw(mant, conv), Rate::from_raw(m, c)) else {
            return false;
        };
        let (ea, eb) = (a.ns_estimate(target), b.ns_estimate(t));
        if (ea - eb).abs() > 1e-9 * ea.max(eb) + 2.0 {
            ea > eb
        } else {
            a.ns_for(target) > b.ns_for(t)
        }
    }

    /// The refusal this stands for.
    pub(crate) fn refusal(self) -> Refusal {
        match self {
            Short::Never(cap) => Refusal::Capacity(cap),
            Short::Until { mant, conv, target } => match Rate::from_raw(mant, conv) {
                Some(rate) => Refusal::Wait { rate, target },
                None => Refusal::Capacity(0),
            },
        }
    }
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
    /// The state word this view was taken of.
    #[cfg_attr(not(feature = "keyed"), allow(dead_code))]
    #[inline]
    pub fn state(&self) -> u64 {
        self.state
    }

    /// Whether the bucket is full at `now_ns` (holds nothing in use, no debt): then its state
    /// says no more than a fresh bucket's. Always for an unlimited budget.
    #[cfg_attr(not(feature = "keyed"), allow(dead_code))]
    #[inline]
    pub fn is_full_at(&self, now_ns: u64) -> bool {
        match self.rate {
            Some(rate) => self.tat() <= rate.at(now_ns).lo,
            None => true,
        }
    }

    /// The burst in quanta (0 when unlimited).
    #[cfg_attr(not(feature = "keyed"), allow(dead_code))]
    #[inline]
    pub fn burst_q(&self) -> u64 {
        self.burst_q
    }

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

impl ParamSlots {
    /// `params` as version 0, for a clock whose counter has the scale `ticks` (if any, see
    /// [`Clock::tick_scale`](crate::Clock::tick_scale)).
    pub(crate) fn new(params: Params, ticks: Option<TickScale>) -> Self {
        let pair = || [AtomicU64::new(0), AtomicU64::new(0)];
        let slots = ParamSlots {
            ticks,
            // Slot 1 starts odd ("being written") so no reader can take it for valid.
            seq: [AtomicU64::new(0), AtomicU64::new(1)],
            mant: pair(),
            conv: pair(),
            unit_q: pair(),
            burst_q: pair(),
            cap: pair(),
            tick_m: pair(),
            tick_k: pair(),
            burst: pair(),
            limit: pair(),
            window_ns: pair(),
        };
        slots.write(0, params);
        slots
    }

    /// Installs `p` as `version` in the slot that version uses. The caller serialises writes
    /// and switches no state word to `version` before this returns.
    pub(crate) fn write(&self, version: u64, p: Params) {
        let slot = self.slot_of(version);
        let (mant, conv) = p.rate.map_or((0, 0), Rate::to_raw);
        let (unit_q, burst_q, cap) = match p.rate {
            Some(rate) => {
                let bq = rate.quanta_floor(p.burst);
                // `fit` keeps a quantum within the burst, so cap >= 1 and unit_q <= burst_q:
                // a request always fits an empty bucket.
                (rate.quanta(1), bq, rate.whole(bq).min(p.burst))
            }
            None => (0, 0, u64::MAX),
        };
        let (tick_m, tick_k) = match (p.rate, self.ticks) {
            (None, _) => (0, TICK_UNLIMITED),
            (Some(rate), Some(scale)) => rate.per_tick(scale.per_tick()).unwrap_or((0, 0)),
            (Some(_), None) => (0, 0),
        };
        let old = slot.seq().load(Relaxed);
        slot.seq().store(old | 1, Relaxed);
        // Orders the odd `seq` before the data stores, so a reader that sees new data also
        // sees the slot marked as being written when it re-checks `seq`.
        fence(Release);
        slot.mant().store(mant, Relaxed);
        slot.conv().store(conv, Relaxed);
        slot.unit_q().store(unit_q, Relaxed);
        slot.burst_q().store(burst_q, Relaxed);
        slot.cap().store(cap, Relaxed);
        slot.tick_m().store(tick_m, Relaxed);
        slot.tick_k().store(tick_k, Relaxed);
        slot.burst().store(p.burst, Relaxed);
        slot.limit().store(p.limit, Relaxed);
        slot.window_ns().store(p.window_ns, Relaxed);
        // Publishes the data with the new even `seq`.
        slot.seq().store(version << 1, Release);
    }

    /// The slot of `state`'s generation, if it holds that generation consistently: `read`
    /// loads what the caller needs from it between the two `seq` checks.
    #[inline]
    fn read_slot<T>(&self, state: u64, read: impl FnOnce(Slot) -> T) -> Option<(u64, T)> {
        let gen = gen_of(state);
        let slot = self.slot_of(gen);
        // Acquire: the data loads below see at least what the writer published with this seq.
        let seq = slot.seq().load(Acquire);
        let version = seq >> 1;
        if seq & 1 != 0 || version & GEN_MASK != gen {
            return None;
        }
        let data = read(slot);
        // Orders the data loads before the re-check: if the writer started over meanwhile,
        // the re-check sees its odd or newer seq.
        fence(Acquire);
        (slot.seq().load(Relaxed) == seq).then_some((version, data))
    }

    /// The slot of generation (or version) `gen`.
    #[inline(always)]
    fn slot_of(&self, gen: u64) -> Slot<'_> {
        Slot {
            all: self,
            i: (gen & 1) as usize,
        }
    }

    /// The slot of `state`'s generation.
    #[inline(always)]
    fn slot(&self, state: u64) -> Slot<'_> {
        self.slot_of(gen_of(state))
    }

    /// The decision view of `state` (a word loaded with Acquire, so the slot its generation
    /// names is published), or `None` if that generation's slot is being rewritten or holds
    /// another version: the word fell a whole generation behind.
    #[inline]
    pub(crate) fn view(&self, state: u64) -> Option<View> {
        let read = |s: Slot| {
            (
                s.mant().load(Relaxed),
                s.conv().load(Relaxed),
                s.burst_q().load(Relaxed),
                s.cap().load(Relaxed),
            )
        };
        let (version, (mant, conv, burst_q, cap)) = self.read_slot(state, read)?;
        Some(View {
            state,
            version,
            rate: Rate::from_raw(mant, conv),
            burst_q,
            cap,
        })
    }

    /// What reports read of `view`'s version, if its slot still holds it.
    pub(crate) fn report(&self, view: &View) -> Option<Report> {
        let read = |s: Slot| Report {
            limit: s.limit().load(Relaxed),
        };
        match self.read_slot(view.state, read) {
            Some((version, r)) if version == view.version => Some(r),
            _ => None,
        }
    }

    /// The limits of `view`'s version in the terms they were given, if its slot still holds
    /// it.
    pub(crate) fn params(&self, view: &View) -> Option<Params> {
        let read = |s: Slot| {
            (
                s.burst().load(Relaxed),
                s.limit().load(Relaxed),
                s.window_ns().load(Relaxed),
            )
        };
        match self.read_slot(view.state, read) {
            Some((version, (burst, limit, window_ns))) if version == view.version => Some(Params {
                rate: view.rate,
                burst,
                limit,
                window_ns,
            }),
            _ => None,
        }
    }
}

impl Bucket {
    /// A full bucket with the given parameters, at version 0, for a clock whose counter has
    /// the scale `ticks` (if any, see [`Clock::tick_scale`](crate::Clock::tick_scale)).
    pub(crate) fn new(limit: &Limit, params: Params, ticks: Option<TickScale>) -> Self {
        Bucket {
            budget: limit.budget(),
            window: limit.window(),
            inner: CachePadded::new(Inner {
                state: AtomicU64::new(pack(0, 0)),
                slid: AtomicU64::new(0),
                pending: Pending::new(),
                slots: ParamSlots::new(params, ticks),
            }),
        }
    }

    /// The slot of `state`'s generation.
    #[inline(always)]
    fn slot(&self, state: u64) -> Slot<'_> {
        self.inner.slots.slot(state)
    }

    /// The state word, for an immediate decision ([`decide`](Self::decide)).
    #[inline(always)]
    pub(crate) fn load(&self) -> u64 {
        // Acquire: pairs with the CAS that wrote this state, so the slot it names is
        // published (a limit change writes the slot before switching the generation).
        self.inner.state.load(Acquire)
    }

    /// Decides `n` units at reading `now_ns` on the state word `state`, for release at once.
    /// What was refused, and until when, [`refusal`](Self::refusal) says.
    ///
    /// Reads the slot without the seqlock: the decision stands only once
    /// [`commit`](Self::commit) from `state` succeeds or, when nothing is to be written,
    /// [`still`](Self::still)`(state)` holds (see the module docs).
    #[inline(always)]
    pub(crate) fn decide(&self, state: u64, now_ns: u64, n: u64) -> Decision {
        let slot = self.slot(state);
        let mant = slot.mant().load(Relaxed);
        if mant == 0 {
            return Decision::Keep; // unlimited
        }
        let conv = slot.conv().load(Relaxed);
        let nq = match slot.units(n, || conv) {
            Units::Quanta(nq) => nq,
            Units::OverCap => return Decision::Refuse,
            Units::Zero => return self.decide_zero(state, now_ns),
        };
        let burst_q = slot.burst_q().load(Relaxed);
        match gcra::admit_ns(tat_of(state), now_ns, nq, burst_q, mant, conv) {
            // The new TAT is below MAX_UNITS: moving it leaves the generation bits alone.
            Some(by) => Decision::Write(state + by),
            None => Decision::Refuse,
        }
    }

    /// [`decide`](Self::decide) at a reading of `t` ticks of the clock's counter (whose scale
    /// the bucket was built with): the rate per tick replaces the conversion of the reading,
    /// on the safe side of it (see [`gcra::admit_ticks`]). A rate with no tick form decides on
    /// the reading's nanoseconds.
    #[inline(always)]
    pub(crate) fn decide_ticks(&self, state: u64, t: u64, n: u64) -> Decision {
        let slot = self.slot(state);
        let k = slot.tick_k().load(Relaxed);
        if k.wrapping_sub(1) >= 63 {
            return if k == TICK_UNLIMITED {
                Decision::Keep
            } else {
                self.decide_ns_of(state, t, n)
            };
        }
        let nq = match slot.units(n, || slot.conv().load(Relaxed)) {
            Units::Quanta(nq) => nq,
            Units::OverCap => return Decision::Refuse,
            Units::Zero => return self.decide_ns_of(state, t, 0),
        };
        let m = slot.tick_m().load(Relaxed);
        let burst_q = slot.burst_q().load(Relaxed);
        match gcra::admit_ticks(tat_of(state), t, nq, burst_q, m, k) {
            Some(by) => Decision::Write(state + by),
            None => Decision::Refuse,
        }
    }

    /// [`decide`](Self::decide) on the nanoseconds of `t` ticks.
    #[cold]
    #[inline(never)]
    fn decide_ns_of(&self, state: u64, t: u64, n: u64) -> Decision {
        self.decide(
            state,
            self.inner.slots.ticks.unwrap_or(TickScale::NANOS).ns(t),
            n,
        )
    }

    /// Why [`decide`](Self::decide) refused `n` units at `now_ns` (its reading, in
    /// nanoseconds) on `state`: the capacity, or the reading to wait for, as the general
    /// [`gcra::admit`] reports it. Reads the slot as `decide` does: valid once `still(state)`
    /// holds.
    #[inline(always)]
    pub(crate) fn shortfall(&self, state: u64, now_ns: u64, n: u64) -> Short {
        self.short(state, now_ns, n).0
    }

    /// [`shortfall`](Self::shortfall) of a bucket not decided yet, in one pass: `None` where
    /// `n` units conform at `now_ns` (or the budget is unlimited). A refusal's details need no
    /// decision of the later buckets, only what each lacks.
    #[inline(always)]
    pub(crate) fn shortfall_if_short(&self, state: u64, now_ns: u64, n: u64) -> Option<Short> {
        match self.short(state, now_ns, n) {
            (short, false) => Some(short),
            (_, true) => None,
        }
    }

    /// What `n` units lack at `now_ns`, and whether they conform after all (then the target
    /// is one quantum ahead of the reading, see [`gcra::target_ns`]).
    #[inline(always)]
    fn short(&self, state: u64, now_ns: u64, n: u64) -> (Short, bool) {
        let slot = self.slot(state);
        let (mant, conv) = (slot.mant().load(Relaxed), slot.conv().load(Relaxed));
        let cap = slot.cap().load(Relaxed);
        if mant == 0 {
            // Unlimited: conforms. (`decide` never refuses here: a refused bucket gets here
            // only by a torn read, which `still` then rejects.)
            return (Short::Never(cap), true);
        }
        if n > cap {
            return (Short::Never(cap), false);
        }
        let nq = gcra::quanta_at(gcra::frac_of(conv), n);
        let burst_q = slot.burst_q().load(Relaxed);
        let tat = tat_of(state);
        let target = gcra::target_ns(tat, now_ns, nq, burst_q, mant, conv);
        // `target` is the latest of `tat + nq - burst_q` and the reading plus one quantum:
        // below it only where the units conform at the reading.
        let conforms = tat.saturating_add(nq).saturating_sub(burst_q) < target;
        (Short::Until { mant, conv, target }, conforms)
    }

    /// Zero units: conforming (no debt, no saturation) is all that is asked, and nothing is
    /// written, not even the restart of an idle TAT.
    #[cold]
    #[inline(never)]
    fn decide_zero(&self, state: u64, now_ns: u64) -> Decision {
        let slot = self.slot(state);
        let (mant, conv) = (slot.mant().load(Relaxed), slot.conv().load(Relaxed));
        let burst_q = slot.burst_q().load(Relaxed);
        match Rate::from_raw(mant, conv) {
            Some(rate) if gcra::admit(tat_of(state), rate.at(now_ns), 0, burst_q).is_err() => {
                Decision::Refuse
            }
            _ => Decision::Keep,
        }
    }

    /// Writes the decision `next` if the state is still `state`: the one write of an immediate
    /// admission, and what validates the slot it was decided on.
    #[inline(always)]
    pub(crate) fn commit(&self, state: u64, next: u64) -> bool {
        // AcqRel: publishes this decision to the next reader of the state, and synchronises
        // with the setter that later leaves this generation (see the module docs).
        let won = self
            .inner
            .state
            .compare_exchange_weak(state, next, AcqRel, Relaxed)
            .is_ok();
        #[cfg(ratekeeper_stats)]
        stats::lost(won);
        won
    }

    /// Whether the state is still `state` after the slot loads of a decision that writes
    /// nothing: if so, that decision stands.
    #[inline(always)]
    pub(crate) fn still(&self, state: u64) -> bool {
        // Orders the slot loads before the reload (see the module docs).
        fence(Acquire);
        self.inner.state.load(Relaxed) == state
    }

    /// The full limits version of `state`'s generation, validated as [`decide`](Self::decide)
    /// is: load it before the commit (or `still`) that validates the decision.
    #[inline(always)]
    pub(crate) fn version_at(&self, state: u64) -> u64 {
        self.slot(state).seq().load(Relaxed) >> 1
    }

    /// A consistent snapshot of the state and what decisions need. Loads only.
    #[inline]
    pub(crate) fn view(&self) -> View {
        let backoff = Backoff::new();
        loop {
            // Acquire: pairs with the CAS that wrote this state, so the slot it names is
            // published (a limit change writes the slot before switching the generation).
            let state = self.inner.state.load(Acquire);
            if let Some(v) = self.inner.slots.view(state) {
                return v;
            }
            // Only a reader that fell a whole generation behind gets here.
            backoff.spin();
        }
    }

    /// A snapshot for reports: the decision view and the reported limits, consistent.
    pub(crate) fn report(&self) -> (View, Report) {
        loop {
            let v = self.view();
            if let Some(r) = self.inner.slots.report(&v) {
                return (v, r);
            }
        }
    }

    /// The limits in force, in the terms they were given (for `Debug` and reports).
    pub(crate) fn params(&self) -> (u64, Params) {
        loop {
            let v = self.view();
            if let Some(p) = self.inner.slots.params(&v) {
                return (v.version, p);
            }
        }
    }

    /// The one write: the TAT `next` (under the view's version) if the state is still the
    /// view's. Writing the TAT a view already holds is a no-op that succeeds.
    #[inline]
    pub(crate) fn try_commit(&self, v: &View, next: u64) -> bool {
        if next == v.tat() {
            return true;
        }
        // AcqRel: publishes this decision (and what the caller wrote before it, such as the
        // pending word) to the next reader of the state, and acquires the state the decision
        // is based on.
        let won = self
            .inner
            .state
            .compare_exchange_weak(v.state, pack(v.version, next), AcqRel, Acquire)
            .is_ok();
        #[cfg(ratekeeper_stats)]
        stats::lost(won);
        won
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
    /// The grant's slot may have been slid back since by refunds of earlier grants, by at most
    /// `slid - grant.slid` (the total counts every slide since, also those of later grants,
    /// which did not move it). The rule is judged as if it had moved that far, which can only
    /// give back less: judged at `grant.end`, the expired part of a slid slot would count as
    /// unexpired. A refund that slides later slots adds what it slid to the total, before its
    /// CAS. (Settles out of order therefore give back less than they might; never more.)
    ///
    /// `fresh` is called after each load of the state and of the pending word, so that its
    /// reading is no older than any admission or claim they reflect: that is what makes the
    /// rule safe. After a limit change nothing is given back (the units were carried into the
    /// new limits as used; keeping them is the conservative choice).
    pub(crate) fn refund(&self, version: u64, grant: &Grant, give: Give, fresh: impl Fn() -> u64) {
        // What this refund's own failed attempts added to the slide total: they moved nothing,
        // so its retries do not count them against its own grant.
        let mut own = 0u64;
        self.update(|v| {
            let Some(rate) = v.rate else { return Err(()) };
            let q = match give {
                Give::Units(n) => rate.quanta_floor(n),
                Give::All => grant.end.saturating_sub(grant.start),
            };
            if v.version != version || q == 0 {
                return Err(());
            }
            let others = self.slid().saturating_sub(grant.slid).saturating_sub(own);
            let end = grant.end.saturating_sub(others);
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
                own += tat - next;
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
        self.inner.slots.write(version, params);
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
        Bucket::new(&l, Params::of(&l).unwrap(), None)
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

    /// The refusal details of a later bucket skip its decision: they must say "short"
    /// exactly where the decision refuses, and the same target as `shortfall`.
    #[test]
    fn a_shortfall_is_found_exactly_where_the_decision_refuses() {
        let s = 1_000_000_000;
        let b = bucket(60, 60 * s, 3); // one a second, three at once
        let mut refused = 0;
        for (k, take) in [0, 1, 2, 3, 1, 2].into_iter().enumerate() {
            let at = 10 * s + k as u64 * s / 3;
            if take > 0 {
                let _ = admit(&b, at, take);
            }
            for now in [at, at + 1, at + s / 2, at + s, at + 3 * s] {
                for n in 0..=4 {
                    let state = b.load();
                    let short = b.shortfall_if_short(state, now, n);
                    let refuses = matches!(b.decide(state, now, n), Decision::Refuse);
                    assert_eq!(short.is_some(), refuses, "k {k} now {now} n {n}");
                    if let (Some(Short::Until { target, .. }), Short::Until { target: t, .. }) =
                        (short, b.shortfall(state, now, n))
                    {
                        assert_eq!(target, t);
                    }
                    refused += refuses as u32;
                }
            }
        }
        assert!(refused > 10, "the sweep reached refusals: {refused}");
        let unlimited = bucket(0, 60 * s, 3);
        assert!(unlimited
            .shortfall_if_short(unlimited.load(), s, 5)
            .is_none());
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
        let b = Bucket::new(&l, Params::of(&l).unwrap(), None);
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
