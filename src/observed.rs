//! [`Observed`]: any [`RateLimiter`] with metrics and traces around it, so that a single
//! limiter, a pool or the Redis backend reports what it admits, denies, waits for and gets
//! back, without a hook in their own hot paths. (The keyed limiter reports per class by
//! itself.)
//!
//! Series (`metrics` feature; every one labelled `class` with the name given here):
//! - `ratekeeper_admitted_units_total{budget}`: `requests` (1 per admission) and `tokens`
//!   (the estimate, input and output together);
//! - `ratekeeper_denied_total{budget}`: denials, by the budget that was short;
//! - `ratekeeper_waited_units_total{budget}` and the histogram `ratekeeper_wait_seconds`:
//!   what the waiting forms (`wait`, `acquire`) admitted, and how long each waited;
//! - `ratekeeper_refunded_units_total{budget="tokens"}`: the surplus settles gave back;
//! - gauges `ratekeeper_remaining_units{budget,window}` and
//!   `ratekeeper_remaining_ratio{budget,window}` (0 to 1), set from each [`usage`] call:
//!   an unlimited budget has no series at all, rather than a gauge at 1.8e19.
//!
//! `tracing` feature: a debug event for each denial and each limit change.
//!
//! [`usage`]: RateLimiter::usage

use crate::budget::{Budget, Cost, Limit};
use crate::error::Error;
use crate::rate_limiter::RateLimiter;
use crate::usage::Usage;

/// A limiter that reports through `metrics` and `tracing` (see the [module docs](self)).
#[derive(Debug)]
pub struct Observed<L> {
    inner: L,
    class: &'static str,
}

/// A permit of an [`Observed`] limiter: the inner permit and its estimate.
#[derive(Debug)]
pub struct ObservedPermit<P> {
    inner: P,
    cost: Cost,
}

impl<P> ObservedPermit<P> {
    /// The inner limiter's permit.
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

impl<L> Observed<L> {
    /// `inner`, reporting under the label `class = name`.
    pub fn new(inner: L, name: &'static str) -> Self {
        Observed { inner, class: name }
    }

    /// The limiter inside.
    pub fn inner(&self) -> &L {
        &self.inner
    }
}

#[allow(unused_variables)]
fn admitted(class: &'static str, cost: Cost, waited: Option<std::time::Duration>) {
    #[cfg(feature = "metrics")]
    {
        let name = if waited.is_some() {
            "ratekeeper_waited_units_total"
        } else {
            "ratekeeper_admitted_units_total"
        };
        metrics::counter!(name, "class" => class, "budget" => "requests").increment(1);
        if cost.total() > 0 {
            metrics::counter!(name, "class" => class, "budget" => "tokens").increment(cost.total());
        }
        if let Some(w) = waited {
            metrics::histogram!("ratekeeper_wait_seconds", "class" => class)
                .record(w.as_secs_f64());
        }
    }
}

#[allow(unused_variables)]
fn remaining(class: &'static str, usage: &Usage) {
    #[cfg(feature = "metrics")]
    for b in usage.budgets() {
        let budget = crate::obs::budget_label(b.budget);
        let window = format!("{}s", b.window.as_secs_f64());
        metrics::gauge!("ratekeeper_remaining_units", "class" => class, "budget" => budget, "window" => window.clone())
            .set(b.remaining as f64);
        metrics::gauge!("ratekeeper_remaining_ratio", "class" => class, "budget" => budget, "window" => window)
            .set(b.free_fraction());
    }
}

impl<L: RateLimiter> RateLimiter for Observed<L> {
    type Permit = ObservedPermit<L::Permit>;

    async fn allow(&self) -> bool {
        let ok = self.inner.allow().await;
        if ok {
            admitted(self.class, Cost::ZERO, None);
        } else {
            crate::obs::denied(
                self.class,
                &Error::RateLimitExceeded(crate::error::Denied::until(
                    Budget::Requests,
                    std::time::Duration::ZERO,
                    0,
                    0,
                )),
            );
        }
        ok
    }

    async fn wait(&self) -> Result<(), Error> {
        let t = std::time::Instant::now();
        let r = self.inner.wait().await;
        match &r {
            Ok(()) => admitted(self.class, Cost::ZERO, Some(t.elapsed())),
            Err(e) => crate::obs::denied(self.class, e),
        }
        r
    }

    async fn set_limit(&self, rpm: u64, tpm: u64) -> Result<(), Error> {
        let r = self.inner.set_limit(rpm, tpm).await;
        if r.is_ok() {
            crate::obs::limits_changed(self.class, &[Limit::requests(rpm), Limit::tokens(tpm)]);
        }
        r
    }

    async fn set_limits(&self, limits: &[Limit]) -> Result<(), Error> {
        let r = self.inner.set_limits(limits).await;
        if r.is_ok() {
            crate::obs::limits_changed(self.class, limits);
        }
        r
    }

    async fn usage(&self) -> Result<Usage, Error> {
        let u = self.inner.usage().await?;
        remaining(self.class, &u);
        Ok(u)
    }

    async fn limits(&self) -> Result<Vec<Limit>, Error> {
        self.inner.limits().await
    }

    async fn peek(&self, cost: impl Into<Cost> + Send) -> bool {
        self.inner.peek(cost).await
    }

    async fn consume_tokens(&self, cost: impl Into<Cost> + Send) -> Result<(), Error> {
        self.inner.consume_tokens(cost).await
    }

    async fn charge(&self, requests: u64, cost: impl Into<Cost> + Send) -> Result<(), Error> {
        self.inner.charge(requests, cost).await
    }

    async fn try_acquire(&self, cost: impl Into<Cost> + Send) -> Result<Self::Permit, Error> {
        let cost = cost.into();
        match self.inner.try_acquire(cost).await {
            Ok(inner) => {
                admitted(self.class, cost, None);
                Ok(ObservedPermit { inner, cost })
            }
            Err(e) => {
                crate::obs::denied(self.class, &e);
                Err(e)
            }
        }
    }

    async fn acquire_within(
        &self,
        cost: impl Into<Cost> + Send,
        max_wait: std::time::Duration,
    ) -> Result<Self::Permit, Error> {
        let cost = cost.into();
        let t = std::time::Instant::now();
        match self.inner.acquire_within(cost, max_wait).await {
            Ok(inner) => {
                admitted(self.class, cost, Some(t.elapsed()));
                Ok(ObservedPermit { inner, cost })
            }
            Err(e) => {
                crate::obs::denied(self.class, &e);
                Err(e)
            }
        }
    }

    async fn settle(
        &self,
        permit: Self::Permit,
        actual: impl Into<Cost> + Send,
    ) -> Result<(), Error> {
        let actual = actual.into();
        let surplus = permit.cost.total().saturating_sub(actual.total());
        let r = self.inner.settle(permit.inner, actual).await;
        if r.is_ok() && surplus > 0 {
            crate::obs::refunded(self.class, Budget::Tokens, surplus);
        }
        r
    }
}
