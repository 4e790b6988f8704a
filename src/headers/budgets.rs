//! The seam between header learning and the limiter's API: the only code in `headers` that
//! reads a [`Usage`] or the limiter's limits, or calls `set_limits` / `charge`. Everything else
//! works on [`Held`] rows, one per budget kind, so a limiter with more budgets is more rows
//! here, not new code elsewhere.
//!
//! Providers report one figure per kind (requests, tokens, input and output tokens), for their
//! short window. A limiter with several budgets of one kind (per minute and per day) learns
//! into the first of them in its order: the one the builder was given first, by convention the
//! short window.

use crate::budget::{Budget, Cost, Limit};
use crate::error::Error;
use crate::rate_limiter::RateLimiter;
use crate::usage::Usage;

/// One budget of a limiter, as learning needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) budget: Budget,
    /// Units per period; `0` is unlimited.
    pub(crate) limit: u64,
    /// Units that could be admitted now (`u64::MAX` when unlimited).
    pub(crate) remaining: u64,
    /// Units placed beyond the burst now (claims waiting their turn, or debt), once a usage
    /// report filled it.
    pub(crate) backlog: Option<u64>,
    /// The limit in force, whose window and burst policy a change keeps.
    spec: Option<Limit>,
}

/// The budgets a usage report shows (limited ones only), one row per kind.
pub(crate) fn held(usage: &Usage) -> Vec<Held> {
    let mut out: Vec<Held> = Vec::new();
    for b in usage.budgets() {
        if out.iter().all(|h| h.budget != b.budget) {
            out.push(Held {
                budget: b.budget,
                limit: b.limit,
                remaining: b.remaining,
                backlog: Some(b.used.saturating_sub(b.capacity)),
                spec: None,
            });
        }
    }
    out
}

/// The limiter's budgets now, unlimited ones included, one row per kind: one `limits` call.
/// Their `remaining` is unknown (`u64::MAX`) until [`fill_remaining`].
pub(crate) async fn read<L: RateLimiter>(limiter: &L) -> Result<Vec<Held>, Error> {
    let mut out: Vec<Held> = Vec::new();
    for l in limiter.limits().await? {
        if out.iter().all(|h| h.budget != l.budget()) {
            out.push(Held {
                budget: l.budget(),
                limit: l.count(),
                remaining: u64::MAX,
                backlog: None,
                spec: Some(l),
            });
        }
    }
    Ok(out)
}

/// Fills each row's `remaining` from the limiter's usage now: one `usage` call.
pub(crate) async fn fill_remaining<L: RateLimiter>(
    limiter: &L,
    held: &mut [Held],
) -> Result<(), Error> {
    let usage = limiter.usage().await?;
    for h in held {
        let window = h.spec.map(|l| l.window());
        let b = usage
            .budgets()
            .find(|b| b.budget == h.budget && Some(b.window) == window);
        h.remaining = b.map_or(u64::MAX, |b| b.remaining);
        h.backlog = Some(b.map_or(0, |b| b.used.saturating_sub(b.capacity)));
    }
    Ok(())
}

/// How long the limited budgets' backlogs take to drain at their limits, in ns (the longest;
/// `None` until a usage report filled them).
pub(crate) fn backlog_ns(held: &[Held]) -> Option<u64> {
    let mut longest = Some(0u64);
    for h in held.iter().filter(|h| h.limit != 0) {
        let window = h.spec.map_or(0, |l| l.window().as_nanos());
        let ns = h.backlog? as u128 * window / h.limit as u128;
        longest = longest.map(|l| l.max(u64::try_from(ns).unwrap_or(u64::MAX)));
    }
    longest
}

/// The shortest window of the limited budgets, in ns (a minute when none is limited).
pub(crate) fn shortest_window_ns(held: &[Held]) -> u64 {
    held.iter()
        .filter(|h| h.limit != 0)
        .filter_map(|h| h.spec)
        .map(|l| u64::try_from(l.window().as_nanos()).unwrap_or(u64::MAX))
        .min()
        .unwrap_or(60_000_000_000)
}

/// Each budget's limit now, `(budget, limit)` with `0` unlimited.
pub(crate) fn limits(held: &[Held]) -> Vec<(Budget, u64)> {
    held.iter().map(|h| (h.budget, h.limit)).collect()
}

fn find(pairs: &[(Budget, u64)], budget: Budget) -> Option<u64> {
    pairs.iter().find(|(b, _)| *b == budget).map(|(_, v)| *v)
}

/// Sets the budgets in `changes` to new counts (never `0`: callers clamp to at least 1),
/// keeping their windows and burst policies: one `set_limits` call for all of them.
pub(crate) async fn set_limits<L: RateLimiter>(
    limiter: &L,
    held: &[Held],
    changes: &[(Budget, u64)],
) -> Result<(), Error> {
    let limits: Vec<Limit> = held
        .iter()
        .filter_map(|h| Some(h.spec?.with_count(find(changes, h.budget)?)))
        .collect();
    limiter.set_limits(&limits).await
}

/// Records in `held` what [`set_limits`] changed (no second read of the limiter).
pub(crate) fn changed(held: &mut [Held], changes: &[(Budget, u64)]) {
    for h in held {
        if let Some(limit) = find(changes, h.budget) {
            h.limit = limit;
            h.spec = h.spec.map(|l| l.with_count(limit));
        }
    }
}

/// Charges `units` per budget, as debt if need be: one `charge` call, O(1) whatever the counts.
///
/// One call charges a cost to every budget by what it counts, so a total-tokens gap and an
/// input gap are met together by the larger of the two as input (a budget may be charged more
/// than its own gap: the conservative side).
pub(crate) async fn charge<L: RateLimiter>(
    limiter: &L,
    units: &[(Budget, u64)],
) -> Result<(), Error> {
    let n = |b| find(units, b).unwrap_or(0);
    let output = n(Budget::OutputTokens);
    let input = n(Budget::InputTokens).max(n(Budget::Tokens).saturating_sub(output));
    limiter
        .charge(n(Budget::Requests), Cost::new(input, output))
        .await
}
