//! Exact GCRA per budget, in integer arithmetic, replayed from a log of what the real limiter
//! did.
//!
//! With a budget of `L` units per window `P` (ns) and burst `B`, the exact "now in units" at
//! `t` ns is `t·L/P`. Scaling every unit quantity by the budget's own `P` makes its whole
//! state an integer: `tatP = TAT·P`, `nowP = t·L`, a unit is `P`. No rounding anywhere.
//!
//! The state is *replayed* from what the real limiter admitted (and charged, and the limit
//! changes), never from the model's own decisions: that keeps the check sound when the real
//! limiter is conservative (a refusal the model would have admitted leaves no trace in either).
//! A settle that gives units back rewrites the logged take to the settled amount, a cancel to
//! zero: the log is then "the history without the withdrawn units", the upper bound the refund
//! rule promises never to exceed.

use ratekeeper::{Budget, Burst, Cost, Limit};
use std::time::Duration;

/// One budget of the set under test: what it counts, the window its limit is per, and its
/// burst policy. All three are fixed for the limiter's life; limit changes set counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub kind: Budget,
    /// The window, in ns.
    pub period: u64,
    pub burst: Burst,
}

impl Spec {
    /// The units one admission of `requests` requests costing `cost` takes from this budget,
    /// as the crate documents them, restated.
    pub fn units(&self, requests: u64, cost: Cost) -> u64 {
        match self.kind {
            Budget::Requests => requests,
            Budget::Tokens => cost.input.saturating_add(cost.output),
            Budget::InputTokens => cost.input,
            Budget::OutputTokens => cost.output,
            other => panic!("a budget kind the model does not know: {other:?}"),
        }
    }

    /// The crate's limit for `count` units of this budget.
    pub fn limit(&self, count: u64) -> Limit {
        Limit::new(self.kind, count)
            .per(Duration::from_nanos(self.period))
            .burst(self.burst)
    }

    /// The burst in units under `count`.
    pub fn burst_units(&self, count: u64) -> u64 {
        burst_units(self.burst, count, self.period)
    }

    /// A full bucket of `count` units per window.
    pub fn exact(&self, count: u64) -> Exact {
        Exact {
            limit: count,
            burst: self.burst_units(count),
            period: self.period,
            tat_p: 0,
        }
    }
}

/// The crate's documented burst policy, restated.
pub fn burst_units(b: Burst, limit: u64, period: u64) -> u64 {
    match b {
        Burst::Period => limit,
        Burst::Window(w) => {
            let w = w.as_nanos().min(u64::MAX as u128);
            (limit as u128 * w / period as u128).clamp(1, u64::MAX as u128) as u64
        }
        Burst::Units(n) => n,
        // The provider shape sets the rate too; the model generates plain bursts only.
        other => unreachable!("the model builds plain bursts only, not {other:?}"),
    }
}

/// How units were taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An immediate admission at its reading.
    Admission,
    /// A charge: taken unconditionally, as debt if need be, so outside the window bound.
    Charge,
    /// A waiter's claim, taken at its reading like a charge; the caller is admitted later, at
    /// its deadline, where the release-instant check counts it.
    Claim,
}

/// What the real limiter did, as the model replays it.
#[derive(Clone, Debug)]
pub enum Event {
    /// `n` units of budget `budget` taken at `at`.
    Take {
        budget: usize,
        at: u64,
        n: u64,
        kind: Kind,
    },
    /// New counts for every budget, in effect from `at`.
    Limits { at: u64, counts: Vec<u64> },
}

/// One bucket's exact state: limit, burst, window, and the TAT scaled by the window.
#[derive(Clone, Copy, Debug)]
pub struct Exact {
    /// Units per window; 0 is unlimited.
    pub limit: u64,
    pub burst: u64,
    pub period: u64,
    pub tat_p: u128,
}

impl Exact {
    fn p(&self) -> u128 {
        self.period as u128
    }

    fn now_p(&self, at: u64) -> u128 {
        at as u128 * self.limit as u128
    }

    /// Does taking `n` at `at` conform? Unlimited always does.
    pub fn conforms(&self, at: u64, n: u64) -> bool {
        if self.limit == 0 {
            return true;
        }
        let now = self.now_p(at);
        let after = self.tat_p.max(now).saturating_add(n as u128 * self.p());
        n <= self.burst && after <= now + self.burst as u128 * self.p()
    }

    /// Takes `n` units at `at`. Zero units take nothing, not even the restart of an idle
    /// TAT to `at` (which would only matter to a later reading from before `at`).
    pub fn take(&mut self, at: u64, n: u64) {
        if self.limit != 0 && n != 0 {
            self.tat_p = self
                .tat_p
                .max(self.now_p(at))
                .saturating_add(n as u128 * self.p());
        }
    }

    /// The earliest reading (ns) at which the bucket is out of debt: `ceil((tatP − B·P) / L)`,
    /// 0 when unlimited or not in debt.
    pub fn ready(&self) -> u128 {
        let debt = self.tat_p.saturating_sub(self.burst as u128 * self.p());
        match self.limit {
            0 => 0,
            l => debt.div_ceil(l as u128),
        }
    }

    /// Used units at `at`, scaled by the window (exact).
    pub fn used_p(&self, at: u64) -> u128 {
        self.tat_p.saturating_sub(self.now_p(at))
    }

    /// Whole units a call could take now: floor(burst - used), 0 when in debt.
    pub fn remaining(&self, at: u64) -> u64 {
        if self.limit == 0 {
            return u64::MAX;
        }
        let room = (self.burst as u128 * self.p()).saturating_sub(self.used_p(at));
        (room / self.p()) as u64
    }

    /// New limits at `at`, carrying the used units (in whole and fractional units).
    fn relimit(&mut self, at: u64, next: Exact) {
        let used = self.used_p(at);
        let carry = self.limit != 0 && next.limit != 0;
        *self = next;
        if carry {
            self.tat_p = self.now_p(at) + used;
        }
    }
}

/// The reference: the budget set, its initial counts, and the replayable log.
pub struct Model {
    pub specs: Vec<Spec>,
    pub initial: Vec<u64>,
    pub log: Vec<Event>,
}

impl Model {
    /// Every budget's exact state after the log.
    pub fn state(&self) -> Vec<Exact> {
        let mut buckets: Vec<Exact> = self
            .specs
            .iter()
            .zip(&self.initial)
            .map(|(s, &c)| s.exact(c))
            .collect();
        // When the last change took effect: changes apply in order of time, a reading older
        // than the last change's at the last change's (else the stretch between the two
        // would be refilled twice).
        let mut changed_at = 0;
        for e in &self.log {
            match e {
                Event::Take { budget, at, n, .. } => buckets[*budget].take(*at, *n),
                Event::Limits { at, counts } => {
                    // Only a change is logged (the limits in force again are a documented
                    // no-op); it carries every budget's used units at `at`, which restarts an
                    // idle TAT at `at`: only a later reading from before `at` can tell.
                    let at = (*at).max(changed_at);
                    changed_at = at;
                    for ((b, s), &c) in buckets.iter_mut().zip(&self.specs).zip(counts) {
                        b.relimit(at, s.exact(c));
                    }
                }
            }
        }
        buckets
    }
}
