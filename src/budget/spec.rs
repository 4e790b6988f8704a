//! The budgets a builder collects before it builds: one spec that the in-process builder
//! ([`Builder`](crate::Builder)) and the Redis builder share, so a set of budgets means the
//! same thing, and is refused for the same reasons, wherever it is kept.

use super::{Budget, Burst, Limit, MAX_BUDGETS};
use crate::error::Error;
use std::time::Duration;

/// The limits a builder has been given, in the order given (which is the limiter's bucket
/// order).
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    limits: Vec<Limit>,
}

impl Spec {
    pub(crate) fn new(limits: impl IntoIterator<Item = Limit>) -> Spec {
        Spec {
            limits: limits.into_iter().collect(),
        }
    }

    /// Every budget counted over `period`.
    pub(crate) fn per(&mut self, period: Duration) {
        for l in &mut self.limits {
            *l = l.per(period);
        }
    }

    /// The burst policy of each request budget (`requests`) or each token budget.
    pub(crate) fn burst(&mut self, burst: Burst, requests: bool) {
        let picked = |l: &&mut Limit| (l.budget() == Budget::Requests) == requests;
        for l in self.limits.iter_mut().filter(picked) {
            *l = l.burst(burst);
        }
    }

    /// Every token budget shaped with [`Burst::Provider`] takes `tokens` as its largest
    /// request.
    pub(crate) fn largest_request(&mut self, tokens: u64) {
        for l in &mut self.limits {
            if let (Burst::Provider(shape), true) =
                (l.burst_policy(), l.budget() != Budget::Requests)
            {
                *l = l.burst(Burst::Provider(shape.largest(tokens)));
            }
        }
    }

    pub(crate) fn push(&mut self, limit: Limit) {
        self.limits.push(limit);
    }

    /// The limits, if one limiter can hold them: at least one budget, at most
    /// [`MAX_BUDGETS`], no two of one budget and window (a limit change names a budget by
    /// its kind and window, so two would be ambiguous). Whether each limit's numbers are
    /// representable is the backend's to check.
    pub(crate) fn checked(limits: Vec<Limit>) -> Result<Vec<Limit>, Error> {
        if limits.is_empty() {
            return Err(Error::InvalidConfig("a limiter needs at least one budget"));
        }
        if limits.len() > MAX_BUDGETS {
            return Err(Error::InvalidConfig("more budgets than MAX_BUDGETS"));
        }
        for (i, l) in limits.iter().enumerate() {
            if limits[..i].iter().any(|m| m.same_budget(l)) {
                return Err(Error::InvalidConfig("two limits for one budget and window"));
            }
        }
        Ok(limits)
    }

    /// [`checked`](Self::checked) on this spec's limits.
    pub(crate) fn into_limits(self) -> Result<Vec<Limit>, Error> {
        Spec::checked(self.limits)
    }
}

/// The builder methods that fill a [`Spec`], written once for every builder of a budget set
/// (each keeps its spec in a field `spec`): the same names, defaults and documentation
/// wherever the budgets are kept.
macro_rules! spec_methods {
    () => {
        /// The window every budget's limit is counted over (default: one minute).
        pub fn period(mut self, period: std::time::Duration) -> Self {
            self.spec.per(period);
            self
        }

        /// The burst policy of every request budget (default:
        /// [`Burst::Period`](crate::Burst::Period)).
        pub fn request_burst(mut self, burst: $crate::Burst) -> Self {
            self.spec.burst(burst, true);
            self
        }

        /// The burst policy of every token budget (default:
        /// [`Burst::Period`](crate::Burst::Period)).
        pub fn token_burst(mut self, burst: $crate::Burst) -> Self {
            self.spec.burst(burst, false);
            self
        }

        /// One more budget.
        pub fn limit(mut self, limit: $crate::Limit) -> Self {
            self.spec.push(limit);
            self
        }
    };
}
pub(crate) use spec_methods;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_are_set_per_kind_of_budget() {
        let mut s = Spec::new([
            Limit::requests(60),
            Limit::input_tokens(1_000),
            Limit::output_tokens(500),
        ]);
        s.burst(Burst::Units(3), true);
        s.burst(Burst::Units(7), false);
        let l = s.into_limits().unwrap();
        assert_eq!(l[0].burst_policy(), Burst::Units(3));
        assert_eq!(l[1].burst_policy(), Burst::Units(7));
        assert_eq!(l[2].burst_policy(), Burst::Units(7));
    }

    #[test]
    fn a_set_no_limiter_can_hold_is_refused() {
        assert!(Spec::new([]).into_limits().is_err());
        let same = Spec::new([Limit::tokens(10), Limit::tokens(20)]);
        assert!(same.into_limits().is_err());
        let per_day = Spec::new([
            Limit::tokens(10),
            Limit::tokens(20).per(Duration::from_secs(86_400)),
        ]);
        assert_eq!(per_day.into_limits().unwrap().len(), 2);
        let many = Spec::new(
            (0..=MAX_BUDGETS as u64).map(|d| Limit::tokens(1).per(Duration::from_secs(d + 1))),
        );
        assert!(many.into_limits().is_err());
    }
}
