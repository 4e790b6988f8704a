//! The one transaction: take from every budget, all or nothing, for one release instant.
//!
//! An admission (`try_acquire`, `allow`) and a waiter's claim (`reserve`) are the same
//! operation with a different deadline `by`: the caller is *released* at an instant `rho`, the
//! latest of the instants at which each budget conforms (its reading `now` when all conform at
//! once), and only if `rho <= by`.
//!
//! 1. **Decide** every budget on a snapshot, writing nothing. A budget that does not conform
//!    at `now` says when it would; a refusal returns here, so a denial writes nothing.
//! 2. **Place** each budget's units as an admission at `rho`: its TAT becomes
//!    `max(tat, rho) + n`. A budget that would conform earlier is *not* placed at its own
//!    earlier instant: its units would then count for a moment the caller is not released at,
//!    and another caller could be admitted against units the waiter only uses later.
//! 3. **Commit** each budget with one CAS from the snapshot it was decided on, the binding
//!    budget (the one that set `rho`) first. A CAS that loses a race decides that budget again
//!    at `rho`; if it no longer conforms by then, the budgets already committed are given back
//!    under the refund rule and the whole take starts over.
//!
//! A waiter released after its reading is recorded in each bucket's pending word *before*
//! the CAS (see `pending.rs`), so a refund judged later knows how far it may slide the tail.
//! All snapshots must carry one limits version; a take that sees two waits for the change to
//! finish and starts over.
//!
//! # The immediate path
//!
//! An admission (`rho = now`) has no binding bucket and places nothing in the future, so it
//! takes the short form of the same steps ([`take_now`](TokenBucketLimiter::take_now)):
//! decide each budget on its state word alone ([`Bucket::decide`], no seqlock: the commit or a
//! reload validates what was read), then commit in bucket order. It writes no pending word
//! (nothing is pending) and, on a refusal, gathers the refusal's details in a cold path.

use crate::bucket::{gen_of, tat_of, Bucket, Decision, Give, Grant, Refusal, Short, View};
use crate::budget::{Budget, Cost, MAX_BUDGETS};
use crate::clock::{Clock, TickScale};
use crate::error::{Denied, Error};
use crate::limiter::{Permit, TokenBucketLimiter};
use crate::sync::Backoff;
use std::ops::ControlFlow::{self, Break, Continue};

#[cfg(doc)]
use crate::gcra::Rate;

/// What one take asks of each budget.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ask {
    /// Requests (1 for an admission, 0 for a charge of tokens only).
    pub requests: u64,
    pub cost: Cost,
    /// Budgets asked for zero units are not consulted (`allow` looks at requests only; a
    /// `try_acquire(0)` still checks that no token budget is in debt).
    pub skip_zero: bool,
}

impl Ask {
    /// One request and nothing else, consulting request budgets only.
    pub const REQUEST: Ask = Ask {
        requests: 1,
        cost: Cost::ZERO,
        skip_zero: true,
    };

    /// One request of `cost`, consulting every budget.
    pub fn request(cost: Cost) -> Ask {
        Ask {
            requests: 1,
            cost,
            skip_zero: false,
        }
    }

    #[inline]
    pub fn units(&self, budget: Budget) -> u64 {
        budget.units(self.requests, self.cost)
    }
}

/// What a take took: enough to give it back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Taken {
    pub version: u64,
    /// What it took from each bucket (bucket order).
    pub grants: [Grant; MAX_BUDGETS],
    /// The instant the caller is released at.
    pub rho: u64,
}

/// Why a take did not complete: bucket `usize` refused.
type Refused = (usize, Refusal);

enum Attempt {
    Done(Taken),
    Refused(Refused),
    /// Met a limit change, or lost a race after committing part of the take: start over.
    Again,
}

/// Runs `$step` for each bucket index `$i` in `0..$len`, returning from the enclosing function
/// with the value of the first `Break`. With `$n > 0` (and then `$len == $n`) the steps are
/// written out one by one: every index is a constant, each step is inlined, and a take's
/// per-bucket words stay in registers (a loop with such a body is too large for the optimiser
/// to unroll, and a closure called once per bucket is not inlined).
macro_rules! each {
    ($n:expr, $len:expr, |$i:ident| $step:expr) => {
        if $n == 0 {
            for $i in 0..$len {
                if let Break(tried) = $step {
                    return tried;
                }
            }
        } else {
            each!(@one $n, 0, $i, $step);
            each!(@one $n, 1, $i, $step);
            each!(@one $n, 2, $i, $step);
            each!(@one $n, 3, $i, $step);
            each!(@one $n, 4, $i, $step);
            each!(@one $n, 5, $i, $step);
        }
    };
    (@one $n:expr, $k:literal, $i:ident, $step:expr) => {
        if $k < $n {
            let $i = $k;
            if let Break(tried) = $step {
                return tried;
            }
        }
    };
}

/// A clock reading an immediate take decides at.
pub(crate) trait Reading: Copy {
    /// [`Bucket::decide`] at this reading.
    fn decide(self, b: &Bucket, state: u64, n: u64) -> Decision;
    /// This reading in nanoseconds (for errors, refusal details and rollbacks), on a clock
    /// whose counter has the scale `ticks` ([`Clock::tick_scale`]).
    fn ns(self, ticks: Option<TickScale>) -> u64;
}

/// A reading in nanoseconds: the `*_at` forms, and every clock without a counter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ns(pub u64);

impl Reading for Ns {
    #[inline(always)]
    fn decide(self, b: &Bucket, state: u64, n: u64) -> Decision {
        b.decide(state, self.0, n)
    }
    #[inline(always)]
    fn ns(self, _: Option<TickScale>) -> u64 {
        self.0
    }
}

/// A reading of a clock's raw counter, on the buckets' rates per tick
/// ([`Bucket::decide_ticks`]): the plain calls on a clock with a
/// [`tick_scale`](Clock::tick_scale).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticks(pub u64);

impl Reading for Ticks {
    #[inline(always)]
    fn decide(self, b: &Bucket, state: u64, n: u64) -> Decision {
        b.decide_ticks(state, self.0, n)
    }
    #[inline(always)]
    fn ns(self, ticks: Option<TickScale>) -> u64 {
        ticks.unwrap_or(TickScale::NANOS).ns(self.0)
    }
}

/// The buckets an immediate take decided, by index bit.
type Mask = u32;

/// The working state of one try of an immediate take.
struct Try<const L: usize> {
    /// The state word each bucket was decided on, and the word to write.
    states: [u64; L],
    nexts: [u64; L],
    /// The buckets to write.
    writes: Mask,
    /// The generation of the first bucket decided, which every other must carry
    /// (`u64::MAX` until then: generations are 6 bits).
    gen: u64,
    /// The first bucket decided (`usize::MAX` until then), and its state word.
    first: usize,
    first_state: u64,
    /// The limits version (loaded only when needed).
    version: u64,
    /// The buckets committed so far.
    done: Mask,
}

/// How one try of an immediate take ended.
enum Tried {
    /// Taken under this limits version (0 when the caller did not ask for it).
    Done(u64),
    Refused(Refused),
    /// Met a limit change, or lost a race after committing part of the take: start over.
    Again,
}

impl<C: Clock> TokenBucketLimiter<C> {
    /// One request of `cost` at reading `now` for immediate release (`try_acquire`), all or
    /// nothing: the permit, or why not.
    #[inline(never)]
    pub(crate) fn acquire_now<R: Reading>(&self, now: R, cost: Cost) -> Result<Permit, Error> {
        // Sets of one to three budgets get a copy of the take with the bucket count fixed, so
        // that its loops unroll and each bucket's words stay in registers.
        match self.buckets.len() {
            1 => self.acquire_in::<R, 1>(now, cost),
            2 => self.acquire_in::<R, 2>(now, cost),
            3 => self.acquire_in::<R, 3>(now, cost),
            _ => self.acquire_in::<R, 0>(now, cost),
        }
    }

    /// [`acquire_now`](Self::acquire_now) on exactly `N` buckets (`N == 0`: any number).
    #[inline(always)]
    fn acquire_in<R: Reading, const N: usize>(&self, now: R, cost: Cost) -> Result<Permit, Error> {
        let ask = Ask::request(cost);
        let backoff = Backoff::new();
        loop {
            let mut grants = [Grant::default(); MAX_BUDGETS];
            match self.attempt_now::<R, true, N, N>(now, ask, &mut grants) {
                Tried::Done(version) => {
                    return Ok(Permit {
                        limiter: self.id(),
                        version,
                        cost,
                        grants,
                    })
                }
                Tried::Refused(r) => return Err(self.refusal_now(now.ns(self.ticks()), ask, r)),
                Tried::Again => backoff.spin(),
            }
        }
    }

    /// [`acquire_now`](Self::acquire_now) for any ask, as a [`Taken`] (a waiter whose
    /// deadline is its reading).
    pub(crate) fn take_now(&self, now: u64, ask: Ask) -> Result<Taken, Error> {
        let mut grants = [Grant::default(); MAX_BUDGETS];
        let backoff = Backoff::new();
        loop {
            match self.attempt_now::<Ns, true, 0, MAX_BUDGETS>(Ns(now), ask, &mut grants) {
                Tried::Done(version) => {
                    return Ok(Taken {
                        version,
                        grants,
                        rho: now,
                    })
                }
                Tried::Refused(r) => return Err(self.refusal_now(now, ask, r)),
                Tried::Again => {
                    grants = [Grant::default(); MAX_BUDGETS];
                    backoff.spin();
                }
            }
        }
    }

    /// Whether an immediate take of `ask` at `now` succeeds, taking it if so: a take with no
    /// permit to build (`allow` beside several request budgets), which skips what only a
    /// permit or an error needs.
    #[inline(never)]
    pub(crate) fn admit_now<R: Reading>(&self, now: R, ask: Ask) -> bool {
        let mut grants = [Grant::default(); MAX_BUDGETS];
        let backoff = Backoff::new();
        loop {
            match self.attempt_now::<R, false, 0, MAX_BUDGETS>(now, ask, &mut grants) {
                Tried::Done(_) => return true,
                Tried::Refused(_) => return false,
                Tried::Again => backoff.spin(),
            }
        }
    }

    /// One request at `now` on a limiter with a single request budget, `bucket`: the whole of
    /// `allow` then, one load, one decision and one CAS.
    #[inline(always)]
    pub(crate) fn admit_one<R: Reading>(bucket: &Bucket, now: R) -> bool {
        let backoff = Backoff::new();
        loop {
            let state = bucket.load();
            match now.decide(bucket, state, 1) {
                Decision::Write(next) => {
                    if bucket.commit(state, next) {
                        return true;
                    }
                }
                Decision::Keep => {
                    if bucket.still(state) {
                        return true; // unlimited
                    }
                }
                Decision::Refuse => {
                    if bucket.still(state) {
                        return false;
                    }
                }
            }
            backoff.spin();
        }
    }

    /// One try of an immediate take on the first `N` buckets (`N == 0`: all of them; `L`, the
    /// length of its per-bucket arrays, is `N`, or `MAX_BUDGETS` when `N == 0`), writing
    /// what it took from each bucket into `grants` (whose entries for buckets it did not write
    /// it leaves alone; after `Again` they may hold a rolled-back grant). `PERMIT`: load the
    /// version and the slide totals (a permit's refunds need them) and find the refusal an
    /// error reports.
    #[inline(always)]
    fn attempt_now<R: Reading, const PERMIT: bool, const N: usize, const L: usize>(
        &self,
        now: R,
        ask: Ask,
        grants: &mut [Grant; MAX_BUDGETS],
    ) -> Tried {
        // The slice, loaded once (the limiter's fields are reloaded after every atomic access
        // otherwise), with its length a constant when `N > 0`.
        let buckets: &[Bucket] = match <&[Bucket; N]>::try_from(&*self.buckets) {
            Ok(fixed) if N > 0 => fixed,
            _ => &self.buckets,
        };
        let len = buckets.len();
        let mut t = Try {
            states: [0; L],
            nexts: [0; L],
            writes: 0,
            gen: u64::MAX,
            first: usize::MAX,
            first_state: 0,
            version: 0,
            done: 0,
        };
        // 1. Decide, writing nothing.
        each!(N, len, |i| self
            .decide_step::<R, PERMIT, L>(buckets, &mut t, i, now, ask));
        if t.first == usize::MAX {
            // Nothing to take from (every budget skipped).
            return Tried::Done(if PERMIT { buckets[0].view().version } else { 0 });
        }
        // Loaded before any commit, so validated as the decisions are. A permit needs it, and
        // so does the rollback of a take that writes more than one bucket.
        if PERMIT || t.writes & t.writes.wrapping_sub(1) != 0 {
            t.version = buckets[t.first].version_at(t.first_state);
        }
        // 2. Commit in bucket order.
        each!(N, len, |i| self.commit_step::<R, PERMIT, L>(
            buckets, &mut t, i, now, ask, grants
        ));
        Tried::Done(t.version)
    }

    /// Step 1 of [`attempt_now`](Self::attempt_now) for bucket `i`.
    #[inline(always)]
    fn decide_step<R: Reading, const PERMIT: bool, const L: usize>(
        &self,
        buckets: &[Bucket],
        t: &mut Try<L>,
        i: usize,
        now: R,
        ask: Ask,
    ) -> ControlFlow<Tried> {
        let b = &buckets[i];
        let n = ask.units(b.budget);
        if n == 0 && ask.skip_zero {
            return Continue(());
        }
        let state = b.load();
        if t.first == usize::MAX {
            (t.first, t.first_state, t.gen) = (i, state, gen_of(state));
        } else if gen_of(state) != t.gen {
            self.await_limit_change();
            return Break(Tried::Again);
        }
        t.states[i] = state;
        match now.decide(b, state, n) {
            Decision::Write(next) => {
                t.nexts[i] = next;
                t.writes |= 1 << i;
                Continue(())
            }
            // Nothing to write: the reload validates the decision at once.
            Decision::Keep if b.still(state) => Continue(()),
            Decision::Keep => Break(Tried::Again),
            Decision::Refuse if PERMIT => Break(self.refusal_from(now, ask, i, state)),
            // `allow` needs no details.
            Decision::Refuse if b.still(state) => Break(Tried::Refused((i, Refusal::Capacity(0)))),
            Decision::Refuse => Break(Tried::Again),
        }
    }

    /// Step 2 of [`attempt_now`](Self::attempt_now) for bucket `i`.
    #[inline(always)]
    fn commit_step<R: Reading, const PERMIT: bool, const L: usize>(
        &self,
        buckets: &[Bucket],
        t: &mut Try<L>,
        i: usize,
        now: R,
        ask: Ask,
        grants: &mut [Grant; MAX_BUDGETS],
    ) -> ControlFlow<Tried> {
        if t.writes & 1 << i == 0 {
            return Continue(());
        }
        let b = &buckets[i];
        // Read before the CAS: a slide added after it is counted against this grant whether
        // or not it moved it (conservative). Only a permit or a rollback needs it.
        let slid = if PERMIT || t.writes != 1 << i {
            b.slid()
        } else {
            0
        };
        let (start, end) = if b.commit(t.states[i], t.nexts[i]) {
            (tat_of(t.states[i]), tat_of(t.nexts[i]))
        } else if t.done == 0 {
            return Break(Tried::Again); // nothing to undo: decide everything again
        } else {
            match Self::recommit_now(b, t.states[i], now, ask.units(b.budget)) {
                Some(slot) => slot,
                None => {
                    self.roll_back(t.version, *grants, t.done, now.ns(self.ticks()));
                    return Break(Tried::Again);
                }
            }
        };
        grants[i] = Grant { start, end, slid };
        t.done |= 1 << i;
        Continue(())
    }

    /// The refusal of an immediate take whose bucket `i` refused on `state`: a budget the
    /// cost can never fit first ("never" says more than "not now"), else the budget with the
    /// longest wait. Decides the buckets after `i` as the take would have; those before it
    /// conformed.
    #[cold]
    #[inline(never)]
    fn refusal_from<R: Reading>(&self, now: R, ask: Ask, i: usize, state: u64) -> Tried {
        let now_ns = now.ns(self.ticks());
        let b = &self.buckets[i];
        let short = b.shortfall(state, now_ns, ask.units(b.budget));
        if !b.still(state) {
            return Tried::Again;
        }
        let mut worst = (i, short);
        if let Short::Until { .. } = short {
            for (j, b) in self.buckets.iter().enumerate().skip(i + 1) {
                let n = ask.units(b.budget);
                if n == 0 && ask.skip_zero {
                    continue;
                }
                let state = b.load();
                let short = b.shortfall_if_short(state, now_ns, n);
                if !b.still(state) {
                    return Tried::Again;
                }
                match short {
                    None => {}
                    Some(never @ Short::Never(_)) => {
                        worst = (j, never);
                        break;
                    }
                    Some(until) if until.later_than(worst.1) => worst = (j, until),
                    Some(_) => {}
                }
            }
        }
        Tried::Refused((worst.0, worst.1.refusal()))
    }

    /// The error for an immediate take's refusal: what the bucket saw, with no re-reading.
    #[cold]
    #[inline(never)]
    fn refusal_now(&self, now: u64, ask: Ask, (i, r): Refused) -> Error {
        let b = &self.buckets[i];
        match r {
            Refusal::Capacity(capacity) => Error::InsufficientCapacity {
                budget: b.budget,
                requested: ask.units(b.budget),
                capacity,
            },
            Refusal::Wait { rate, target } => {
                let window_ns = u64::try_from(b.window.as_nanos()).unwrap_or(u64::MAX);
                Error::RateLimitExceeded(Denied::lazy(b.budget, window_ns, rate, target, now))
            }
        }
    }

    /// Bucket `b` changed between an immediate decision on `state` and its commit: decide it
    /// again under the same generation and commit; the slot taken, or `None` if it no longer
    /// conforms (or the limits changed).
    #[cold]
    #[inline(never)]
    fn recommit_now<R: Reading>(b: &Bucket, state: u64, now: R, n: u64) -> Option<(u64, u64)> {
        let backoff = Backoff::new();
        loop {
            let s = b.load();
            if gen_of(s) != gen_of(state) {
                return None;
            }
            match now.decide(b, s, n) {
                Decision::Write(next) => {
                    if b.commit(s, next) {
                        return Some((tat_of(s), tat_of(next)));
                    }
                }
                Decision::Keep => {
                    if b.still(s) {
                        return Some((tat_of(s), tat_of(s)));
                    }
                }
                Decision::Refuse => {
                    if b.still(s) {
                        return None;
                    }
                }
            }
            backoff.spin();
        }
    }

    /// Takes `ask` at reading `now` for release at the earliest instant every budget
    /// conforms, provided that is no later than `by`.
    #[inline]
    pub(crate) fn take(&self, now: u64, ask: Ask, by: u64) -> Result<Taken, Error> {
        if by <= now {
            return self.take_now(now, ask);
        }
        let backoff = Backoff::new();
        loop {
            match self.attempt(now, ask, by) {
                Attempt::Done(t) => return Ok(t),
                Attempt::Refused(r) => return Err(self.refusal_error(now, ask, r)),
                Attempt::Again => backoff.spin(),
            }
        }
    }

    #[inline]
    fn attempt(&self, now: u64, ask: Ask, by: u64) -> Attempt {
        let mut views: [Option<View>; MAX_BUDGETS] = [None; MAX_BUDGETS];
        let mut nexts = [0u64; MAX_BUDGETS];
        let mut version = None;
        let mut rho = now;
        let mut binding = None;
        // 1. Decide.
        for (i, b) in self.buckets.iter().enumerate() {
            let n = ask.units(b.budget);
            if n == 0 && ask.skip_zero {
                continue;
            }
            let v = b.view();
            if *version.get_or_insert(v.version) != v.version {
                self.await_limit_change();
                return Attempt::Again;
            }
            match v.admit(now, n) {
                Ok(next) => nexts[i] = next,
                Err(Refusal::Wait { rate, target }) if by > now => {
                    let ready = rate.ns_for(target);
                    if ready > by {
                        return Attempt::Refused((i, Refusal::Wait { rate, target }));
                    }
                    if ready > rho {
                        rho = ready;
                        binding = Some(i);
                    }
                }
                Err(r) => return Attempt::Refused((i, r)),
            }
            views[i] = Some(v);
        }
        let Some(version) = version else {
            // Nothing to take from (every budget skipped).
            return Attempt::Done(Taken {
                version: self.buckets[0].view().version,
                grants: [Grant::default(); MAX_BUDGETS],
                rho,
            });
        };
        // 2. Place at rho (a later instant only for a waiter; otherwise the decision stands).
        if rho > now {
            for (i, b) in self.buckets.iter().enumerate() {
                if let Some(v) = &views[i] {
                    match v.admit(rho, ask.units(b.budget)) {
                        Ok(next) => nexts[i] = next,
                        // Conforming at `ready <= rho` implies conforming at rho.
                        Err(r) => return Attempt::Refused((i, r)),
                    }
                }
            }
        }
        // 3. Commit, the binding bucket first: losing its race needs no rollback.
        let order = binding
            .into_iter()
            .chain((0..self.buckets.len()).filter(|&i| Some(i) != binding));
        let mut grants = [Grant::default(); MAX_BUDGETS];
        let mut done: Mask = 0;
        for i in order {
            let Some(v) = &views[i] else { continue };
            let b = &self.buckets[i];
            let n = ask.units(b.budget);
            // Read before the CAS: a slide added after it is counted against this grant
            // whether or not it moved it (conservative).
            let slid = b.slid();
            let committed = if rho > now && v.rate.is_some() {
                b.note_pending(now, rho, v.slack(rho, n, nexts[i]));
                b.try_commit(v, nexts[i])
            } else {
                b.try_commit(v, nexts[i])
            };
            let slot = if committed {
                Some((v.tat(), nexts[i]))
            } else {
                self.recommit(i, version, now, rho, n)
            };
            match slot {
                Some((start, end)) => {
                    grants[i] = Grant { start, end, slid };
                    done |= 1 << i;
                }
                None => {
                    self.roll_back(version, grants, done, now);
                    return Attempt::Again;
                }
            }
        }
        Attempt::Done(Taken {
            version,
            grants,
            rho,
        })
    }

    /// Bucket `i` changed between decision and commit: decide it again at `rho`, under the
    /// same version, and commit; the slot taken, or `None` if it no longer conforms by then.
    #[cold]
    #[inline(never)]
    fn recommit(&self, i: usize, version: u64, now: u64, rho: u64, n: u64) -> Option<(u64, u64)> {
        let b = &self.buckets[i];
        b.update(|v| {
            if v.version != version {
                return Err(None);
            }
            match v.admit(rho, n) {
                Ok(next) => {
                    if rho > now && v.rate.is_some() {
                        b.note_pending(now, rho, v.slack(rho, n, next));
                    }
                    Ok((next, Some((v.tat(), next))))
                }
                Err(_) => Err(None),
            }
        })
    }

    /// Gives back the buckets a failed take had already committed (`done`, by index bit).
    #[cold]
    fn roll_back(&self, version: u64, grants: [Grant; MAX_BUDGETS], done: Mask, now: u64) {
        for (i, b) in self.buckets.iter().enumerate() {
            if done & 1 << i != 0 {
                b.refund(version, &grants[i], Give::All, || self.fresh_time(now));
            }
        }
    }

    /// The error for a refusal: a budget the cost can never fit first ("never" says more than
    /// "not now"), else the budget with the longest wait. Cold path: it looks at every budget
    /// again.
    #[cold]
    #[inline(never)]
    fn refusal_error(&self, now: u64, ask: Ask, (i, r): Refused) -> Error {
        for o in self.buckets.iter() {
            let n = ask.units(o.budget);
            let capacity = o.view().capacity();
            if n > capacity {
                return Error::InsufficientCapacity {
                    budget: o.budget,
                    requested: n,
                    capacity,
                };
            }
        }
        let b = &self.buckets[i];
        let window_ns = u64::try_from(b.window.as_nanos()).unwrap_or(u64::MAX);
        let (rate, target) = match r {
            Refusal::Capacity(capacity) => {
                return Error::InsufficientCapacity {
                    budget: b.budget,
                    requested: ask.units(b.budget),
                    capacity,
                }
            }
            Refusal::Wait { rate, target } => (rate, target),
        };
        // Another budget may be short for longer: name the latest.
        let mut worst: Option<(usize, u64)> = None;
        for (j, o) in self.buckets.iter().enumerate() {
            let n = ask.units(o.budget);
            if j == i || (n == 0 && ask.skip_zero) {
                continue;
            }
            if let Err(Refusal::Wait { rate, target }) = o.view().admit(now, n) {
                let ready = rate.ns_for(target);
                if worst.map_or(true, |(_, w)| ready > w) {
                    worst = Some((j, ready));
                }
            }
        }
        let denied = match worst {
            Some((j, ready)) if ready > rate.ns_for(target) => {
                let o = &self.buckets[j];
                Denied::until(o.budget, o.window, ready, now)
            }
            _ => Denied::lazy(b.budget, window_ns, rate, target, now),
        };
        Error::RateLimitExceeded(denied)
    }
}
