//! A Redis limiter's budgets: the [`Limit`]s it was given and the limits the script takes for
//! them, checked up front so that the script's doubles stay exact.

use super::protocol::{BucketLimits, Limits, ARG_MAX};
use crate::budget::{Budget, Limit, Spec};
use crate::error::Error;

/// A full bucket, in the script's ticks, stays below this so that its doubles are exact.
const EXACT_LIMIT: u128 = 1 << 52;

/// One version of a limiter's budgets: the limits as given (kind, window, burst policy,
/// count), in bucket order, and the script's limits for them. The kinds and windows never
/// change over a limiter's life; a limit change makes a new `Budgets` with new counts and
/// burst policies.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Budgets {
    pub limits: Vec<Limit>,
    pub script: Limits,
}

impl Budgets {
    /// The budgets of a new limiter. [`Error::InvalidConfig`] for no budget, more than
    /// [`MAX_BUDGETS`](crate::MAX_BUDGETS), two limits of one budget and window, or a limit the script cannot
    /// hold exactly (see [`bucket`]).
    pub(crate) fn new(limits: Vec<Limit>) -> Result<Budgets, Error> {
        let limits = Spec::checked(limits)?;
        let script = limits.iter().map(bucket).collect::<Result<Vec<_>, _>>()?;
        Ok(Budgets {
            script: Limits::new(script),
            limits,
        })
    }

    /// These budgets with `changes`: each replaces the limit of the same budget and window
    /// (its count and burst policy). [`Error::InvalidConfig`] for a budget and window these
    /// do not have, or a limit the script cannot hold exactly.
    pub(crate) fn with(&self, changes: &[Limit]) -> Result<Budgets, Error> {
        let next = crate::budget::replaced(&self.limits, changes)?;
        Budgets::new(next)
    }

    /// These budgets with new counts for the first request and the first total-tokens
    /// budget (`0`: unlimited), as `TokenBucketLimiter::set_limit` does: a count other than 0
    /// for a kind of budget these do not have is [`Error::InvalidConfig`].
    pub(crate) fn with_counts(&self, rpm: u64, tpm: u64) -> Result<Budgets, Error> {
        let mut changes = Vec::with_capacity(2);
        for (budget, count) in [(Budget::Requests, rpm), (Budget::Tokens, tpm)] {
            match self.limits.iter().find(|l| l.budget() == budget) {
                Some(l) => changes.push(l.with_count(count)),
                None if count == 0 => {}
                None => return Err(Error::InvalidConfig("the limiter has no such budget")),
            }
        }
        self.with(&changes)
    }
}

/// One budget's script limits (burst 0 when unlimited), after checking the script can be
/// exact: a window of whole microseconds, a count and a burst within its integers, and a full
/// bucket below 2^52 ticks.
pub(crate) fn bucket(l: &Limit) -> Result<BucketLimits, Error> {
    let window_ns = l.window_ns()?;
    let window_us = window_ns / 1_000;
    if window_ns % 1_000 != 0 || window_us > ARG_MAX {
        return Err(Error::InvalidConfig(
            "the redis backend needs windows of whole microseconds (below 2^53)",
        ));
    }
    let limit = l.count();
    if limit == 0 {
        return Ok(BucketLimits {
            limit,
            window_us,
            burst: 0,
        });
    }
    // The same policy as in process (a window stays a window across set_limits).
    l.burst_policy().check()?;
    let burst = l.burst_policy().units(limit, window_ns);
    // The script counts a unit as P = window/gcd(limit, window) ticks; a full bucket must
    // stay below 2^52 ticks for its doubles to be exact.
    let p = (window_us / gcd(limit, window_us)) as u128;
    if limit > ARG_MAX || burst as u128 * p >= EXACT_LIMIT {
        return Err(Error::InvalidConfig(
            "limit and window too fine for the redis backend's exact arithmetic",
        ));
    }
    Ok(BucketLimits {
        limit,
        window_us,
        burst,
    })
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Burst, MAX_BUDGETS};
    use std::time::Duration;

    fn b(limit: u64, window_us: u64, burst: u64) -> BucketLimits {
        BucketLimits {
            limit,
            window_us,
            burst,
        }
    }

    const MIN_US: u64 = 60_000_000;

    #[test]
    fn bursts_follow_the_policy_and_unlimited_has_none() {
        let set = Budgets::new(vec![
            Limit::requests(600),
            Limit::tokens(100_000).burst(Burst::Window(Duration::from_secs(6))),
            Limit::requests(10_000).per_day(),
            Limit::output_tokens(0),
        ])
        .unwrap();
        assert_eq!(
            set.script.as_slice(),
            [
                b(600, MIN_US, 600),
                b(100_000, MIN_US, 10_000),
                b(10_000, 86_400_000_000, 10_000),
                b(0, MIN_US, 0),
            ]
        );
    }

    #[test]
    fn budget_sets_are_checked_as_in_process() {
        let bad = |limits: Vec<Limit>| matches!(Budgets::new(limits), Err(Error::InvalidConfig(_)));
        assert!(bad(vec![]));
        assert!(bad(vec![Limit::requests(1); MAX_BUDGETS + 1]));
        assert!(bad(vec![Limit::requests(1), Limit::requests(2)]));
        assert!(!bad(vec![Limit::requests(1), Limit::requests(2).per_day()]));
        assert!(bad(vec![
            Limit::requests(1).per(Duration::from_nanos(1_500))
        ]));
        assert!(bad(vec![Limit::requests(1).per(Duration::ZERO)]));
        assert!(bad(vec![Limit::requests(10).burst(Burst::Units(0))]));
    }

    #[test]
    fn limit_changes_replace_the_same_budget_and_window() {
        let set = Budgets::new(vec![
            Limit::requests(60),
            Limit::requests(1_000).per_day(),
            Limit::input_tokens(40_000),
        ])
        .unwrap();
        let next = set
            .with(&[Limit::requests(500).per_day().burst(Burst::Units(50))])
            .unwrap();
        assert_eq!(next.limits[1].count(), 500);
        assert_eq!(next.script.as_slice()[1].burst, 50);
        assert_eq!(next.limits[0], set.limits[0]);
        assert!(set.with(&[Limit::requests(5).per_hour()]).is_err());
        // set_limit's counts: the first request budget; no total-tokens budget here.
        let counted = set.with_counts(30, 0).unwrap();
        assert_eq!(counted.limits[0].count(), 30);
        assert_eq!(counted.limits[1].count(), 1_000);
        assert!(set.with_counts(30, 100).is_err());
    }

    #[test]
    fn limits_whose_full_bucket_reaches_2_pow_52_ticks_are_refused() {
        // Coprime with the window: a unit is 6e7 ticks; 2^52 / 6e7 ≈ 75.06e6 units is the edge.
        assert!(bucket(&Limit::tokens(75_100_003)).is_err());
        assert!(bucket(&Limit::tokens(70_000_001)).is_ok());
        // Round limits reduce: 1.5e8 per minute is 5 per 2 µs, P = 2.
        assert_eq!(
            bucket(&Limit::tokens(150_000_000)).map(|b| b.burst),
            Ok(150_000_000)
        );
        // A count the script's integers cannot hold, even with a burst of one.
        assert!(bucket(&Limit::tokens(1 << 60).burst(Burst::Units(1))).is_err());
    }
}
