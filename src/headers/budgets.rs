//! The seam between header learning and the limiter's API: the only code in `headers` that
//! reads a [`Usage`] or calls `set_limit` / `charge`. Everything else works on [`Held`] rows,
//! one per budget, so a limiter with more budgets is more rows here, not new code elsewhere.

use crate::error::{Budget, Error};
use crate::limiter::Usage;
use crate::rate_limiter::RateLimiter;

/// One budget of a limiter, as learning needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) budget: Budget,
    /// Units per period; `0` is unlimited.
    pub(crate) limit: u64,
    /// Units that could be admitted now (`u64::MAX` when unlimited).
    pub(crate) remaining: u64,
}

/// The budgets of `usage`, one row each.
pub(crate) fn held(usage: &Usage) -> Vec<Held> {
    vec![
        Held {
            budget: Budget::Requests,
            limit: usage.requests_limit,
            remaining: usage.requests_remaining,
        },
        Held {
            budget: Budget::Tokens,
            limit: usage.tokens_limit,
            remaining: usage.tokens_remaining,
        },
    ]
}

/// The limiter's budgets now.
pub(crate) async fn read<L: RateLimiter>(limiter: &L) -> Result<Vec<Held>, Error> {
    Ok(held(&limiter.usage().await?))
}

/// Each budget's limit now, `(budget, limit)` with `0` unlimited.
pub(crate) fn limits(held: &[Held]) -> Vec<(Budget, u64)> {
    held.iter().map(|h| (h.budget, h.limit)).collect()
}

fn find(pairs: &[(Budget, u64)], budget: Budget) -> Option<u64> {
    pairs.iter().find(|(b, _)| *b == budget).map(|(_, v)| *v)
}

/// Sets the budgets in `changes` to new limits (never `0`: callers clamp to at least 1), the
/// others to what `held` says they are: one `set_limit` call for all of them.
pub(crate) async fn set_limits<L: RateLimiter>(
    limiter: &L,
    held: &[Held],
    changes: &[(Budget, u64)],
) -> Result<(), Error> {
    let now = |b| held.iter().find(|h| h.budget == b).map(|h| h.limit);
    // A budget the limiter does not have is unlimited there, and stays so.
    let limit = |b| find(changes, b).or_else(|| now(b)).unwrap_or(0);
    limiter
        .set_limit(limit(Budget::Requests), limit(Budget::Tokens))
        .await
}

/// Charges `units` per budget, as debt if need be: one `charge` call, O(1) whatever the counts.
pub(crate) async fn charge<L: RateLimiter>(
    limiter: &L,
    units: &[(Budget, u64)],
) -> Result<(), Error> {
    let n = |b| find(units, b).unwrap_or(0);
    limiter.charge(n(Budget::Requests), n(Budget::Tokens)).await
}
