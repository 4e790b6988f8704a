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

use crate::bucket::{Give, Grant, Refusal, View};
use crate::budget::{Budget, Cost, MAX_BUDGETS};
use crate::clock::Clock;
use crate::error::{Denied, Error};
use crate::limiter::TokenBucketLimiter;
use crate::sync::Backoff;

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

impl<C: Clock> TokenBucketLimiter<C> {
    /// Takes `ask` at reading `now` for immediate release (an admission).
    #[inline]
    pub(crate) fn take_now(&self, now: u64, ask: Ask) -> Result<Taken, Error> {
        self.take(now, ask, now)
    }

    /// Takes `ask` at reading `now` for release at the earliest instant every budget
    /// conforms, provided that is no later than `by`.
    #[inline]
    pub(crate) fn take(&self, now: u64, ask: Ask, by: u64) -> Result<Taken, Error> {
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
        let mut done = [false; MAX_BUDGETS];
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
                    done[i] = true;
                }
                None => {
                    self.roll_back(version, &grants, &done, now);
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

    /// Gives back the buckets a failed take had already committed.
    #[cold]
    fn roll_back(
        &self,
        version: u64,
        grants: &[Grant; MAX_BUDGETS],
        done: &[bool; MAX_BUDGETS],
        now: u64,
    ) {
        for (i, b) in self.buckets.iter().enumerate() {
            if done[i] {
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
