//! What a limiter reports about its budgets: a snapshot, inline, with no allocation.

use crate::budget::{Budget, MAX_BUDGETS};
use std::time::Duration;

/// One limited budget at one instant.
///
/// `used` counts units in use (to the nearest whole unit; beyond `capacity` when the budget
/// carries debt), `remaining` what one call could take now (rounded down): an admission of
/// `n` units of this budget at the same instant succeeds iff `n <= remaining`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetUsage {
    /// What the budget counts.
    pub budget: Budget,
    /// The window its limit is per.
    pub window: Duration,
    /// The configured units per window.
    pub limit: u64,
    /// The most one call can ever take (the burst).
    pub capacity: u64,
    /// Units in use now, debt included.
    pub used: u64,
    /// Units one call could take now.
    pub remaining: u64,
}

impl BudgetUsage {
    /// The fraction of the capacity still free now, in `[0, 1]` (a gauge that stays finite).
    pub fn free_fraction(&self) -> f64 {
        if self.capacity == 0 {
            return 0.0;
        }
        (self.remaining as f64 / self.capacity as f64).clamp(0.0, 1.0)
    }
}

/// A snapshot of every *limited* budget of a limiter, taken under one version of its limits.
///
/// An unlimited budget has nothing to report and is left out, so [`Usage::requests`] is `None`
/// for a limiter without a request limit: a gauge never shows `u64::MAX`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    len: u8,
    budgets: [Option<BudgetUsage>; MAX_BUDGETS],
}

impl Usage {
    /// A snapshot of these budgets (for other backends); at most [`MAX_BUDGETS`](crate::MAX_BUDGETS)
    /// are kept.
    pub fn new(budgets: impl IntoIterator<Item = BudgetUsage>) -> Usage {
        let mut u = Usage {
            len: 0,
            budgets: [None; MAX_BUDGETS],
        };
        for b in budgets.into_iter().take(MAX_BUDGETS) {
            u.budgets[u.len as usize] = Some(b);
            u.len += 1;
        }
        u
    }

    /// Every limited budget, in the limiter's order.
    pub fn budgets(&self) -> impl Iterator<Item = &BudgetUsage> {
        self.budgets[..self.len as usize].iter().flatten()
    }

    /// The tightest budget of this kind (the one with the least remaining), if any is limited.
    pub fn get(&self, budget: Budget) -> Option<&BudgetUsage> {
        self.budgets()
            .filter(|b| b.budget == budget)
            .min_by_key(|b| b.remaining)
    }

    /// The tightest request budget (`None`: requests are unlimited).
    pub fn requests(&self) -> Option<&BudgetUsage> {
        self.get(Budget::Requests)
    }

    /// The tightest total-tokens budget (`None`: no total-tokens limit).
    pub fn tokens(&self) -> Option<&BudgetUsage> {
        self.get(Budget::Tokens)
    }

    /// Whether no budget is limited.
    pub fn is_unlimited(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.budgets()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(budget: Budget, window: u64, remaining: u64) -> BudgetUsage {
        BudgetUsage {
            budget,
            window: Duration::from_secs(window),
            limit: 100,
            capacity: 100,
            used: 100 - remaining,
            remaining,
        }
    }

    #[test]
    fn the_tightest_budget_of_a_kind_answers_for_it() {
        let u = Usage::new([
            b(Budget::Requests, 60, 40),
            b(Budget::Requests, 86_400, 7),
            b(Budget::Tokens, 60, 90),
        ]);
        assert_eq!(u.requests().unwrap().remaining, 7);
        assert_eq!(u.tokens().unwrap().remaining, 90);
        assert!(u.get(Budget::OutputTokens).is_none());
        assert_eq!(u.budgets().count(), 3);
        assert!(Usage::new([]).is_unlimited());
        assert_eq!(u.tokens().unwrap().free_fraction(), 0.9);
    }
}
