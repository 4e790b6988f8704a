//! Errors. Messages start with `ratelimit:` like the Go originals.

use crate::gcra::Rate;
use std::fmt;
use std::time::Duration;

/// Which of a limiter's two budgets a decision is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Budget {
    /// The requests-per-period budget (RPM).
    Requests,
    /// The tokens-per-period budget (TPM).
    Tokens,
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Budget::Requests => "requests",
            Budget::Tokens => "tokens",
        })
    }
}

/// A denial: which budget was short and when the same call could succeed.
///
/// The wait is computed only when asked for ([`Denied::retry_after`]): a denial on the hot
/// path records what it saw and does no division.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denied {
    short: Short,
    /// The other budget, when it was short too; the longer wait wins.
    also: Option<Short>,
    now: u64,
}

/// One short budget: ready when its clock reading in quanta reaches `target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Short {
    budget: Budget,
    rate: Rate,
    target: u64,
}

impl Short {
    fn ready_at_ns(&self) -> u64 {
        self.rate.ns_for(self.target)
    }
}

impl Denied {
    pub(crate) fn new(budget: Budget, rate: Rate, target_units: u64, now_ns: u64) -> Self {
        Denied {
            short: Short {
                budget,
                rate,
                target: target_units,
            },
            also: None,
            now: now_ns,
        }
    }

    /// The same denial with a second short budget.
    pub(crate) fn also(mut self, budget: Budget, rate: Rate, target_units: u64) -> Self {
        self.also = Some(Short {
            budget,
            rate,
            target: target_units,
        });
        self
    }

    /// The short budget with the longer wait.
    fn worst(&self) -> (Budget, u64) {
        let a = (self.short.budget, self.short.ready_at_ns());
        match self.also {
            Some(b) if b.ready_at_ns() > a.1 => (b.budget, b.ready_at_ns()),
            _ => a,
        }
    }

    /// The budget that was short (the one with the longer wait, if both were).
    pub fn budget(&self) -> Budget {
        self.worst().0
    }

    /// The clock reading (nanoseconds) at which the same call could first succeed, had nothing
    /// else happened in between.
    pub fn ready_at_ns(&self) -> u64 {
        self.worst().1
    }

    /// How long until the same call could succeed, had nothing else happened in between.
    pub fn retry_after(&self) -> Duration {
        Duration::from_nanos(self.ready_at_ns().saturating_sub(self.now))
    }
}

/// Everything that can go wrong when asking a limiter for capacity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not now: a budget is short. Retry after [`Denied::retry_after`].
    #[error("ratelimit: rate limit exceeded ({} budget), retry after {:?}", .0.budget(), .0.retry_after())]
    RateLimitExceeded(Denied),
    /// The wait ended before the capacity was granted; any slot it had claimed was given back.
    #[error("ratelimit: wait cancelled")]
    Cancelled,
    /// Never: more than the bucket can ever hold at once was asked for.
    #[error("ratelimit: {requested} {budget} exceed the burst capacity of {capacity}")]
    InsufficientCapacity {
        /// The budget that is too small.
        budget: Budget,
        /// The units asked for.
        requested: u64,
        /// The most that budget can ever grant at once (its burst).
        capacity: u64,
    },
    /// A configuration that cannot describe a rate limit (a zero period, a zero burst).
    #[error("ratelimit: invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// The backend holding the limiter's state (e.g. Redis) could not be asked. Nothing was
    /// admitted: a limiter that cannot count fails closed unless configured otherwise.
    #[error("ratelimit: backend unavailable: {0}")]
    Unavailable(String),
}
