//! Errors, and the denial that says which budget was short and until when. Every message
//! starts with `ratelimit:`.

use crate::budget::Budget;
use crate::gcra::Rate;
use std::time::Duration;

/// A denial: which budget was short and when the same call could succeed.
///
/// On the hot path a denial records what the bucket saw and does no division: the wait is
/// computed when asked for ([`Denied::retry_after`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denied {
    budget: Budget,
    window_ns: u64,
    ready: Ready,
    now: u64,
}

/// When the same call could succeed: a deadline, or the reading in quanta a bucket must reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ready {
    At(u64),
    Quanta { rate: Rate, target: u64 },
}

impl Denied {
    /// A denial by `budget` (counted per `window`) at clock reading `now_ns`, until
    /// `ready_at_ns` on the same clock. For backends other than the in-process limiter.
    pub fn until(budget: Budget, window: Duration, ready_at_ns: u64, now_ns: u64) -> Self {
        Denied {
            budget,
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            ready: Ready::At(ready_at_ns),
            now: now_ns,
        }
    }

    /// A denial until the bucket's reading (in quanta at `rate`) reaches `target`.
    pub(crate) fn lazy(budget: Budget, window_ns: u64, rate: Rate, target: u64, now: u64) -> Self {
        Denied {
            budget,
            window_ns,
            ready: Ready::Quanta { rate, target },
            now,
        }
    }

    /// The budget that was short (the one with the longest wait, if several were).
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// The window of that budget's limit (a minute for RPM, a day for RPD).
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns)
    }

    /// The clock reading (nanoseconds) at which the same call could first succeed, had nothing
    /// else happened in between.
    pub fn ready_at_ns(&self) -> u64 {
        match self.ready {
            Ready::At(ns) => ns,
            Ready::Quanta { rate, target } => rate.ns_for(target),
        }
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
    #[error("ratelimit: rate limit exceeded ({} per {:?}), retry after {:?}", .0.budget(), .0.window(), .0.retry_after())]
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
    /// A configuration that cannot describe a rate limit (a zero window, a zero burst, a
    /// budget the limiter does not have).
    #[error("ratelimit: invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// A permit settled on a limiter other than the one that issued it. Nothing was changed:
    /// a permit's units can only be given back where they were taken.
    #[error("ratelimit: the permit was issued by another limiter")]
    ForeignPermit,
    /// The backend holding the limiter's state (e.g. Redis) could not be asked. Nothing was
    /// admitted: a limiter that cannot count fails closed unless configured otherwise.
    #[error("ratelimit: backend unavailable: {0}")]
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_reports_its_budget_window_and_wait() {
        let d = Denied::until(Budget::Tokens, Duration::from_secs(60), 5_000, 1_000);
        assert_eq!(d.budget(), Budget::Tokens);
        assert_eq!(d.window(), Duration::from_secs(60));
        assert_eq!(d.retry_after(), Duration::from_nanos(4_000));
        let e = Error::RateLimitExceeded(d);
        assert!(e
            .to_string()
            .starts_with("ratelimit: rate limit exceeded (tokens per 60s)"));
        // A deadline in the past is no wait at all.
        let d = Denied::until(Budget::Requests, Duration::from_secs(1), 5, 10);
        assert_eq!(d.retry_after(), Duration::ZERO);
        assert!(Error::ForeignPermit.to_string().starts_with("ratelimit:"));
    }
}
