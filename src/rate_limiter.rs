//! The `RateLimiter` trait: what every limiter offers, wherever its buckets live.
//!
//! # Why every method is async
//!
//! The trait abstracts over where the buckets live: in this process ([`TokenBucketLimiter`])
//! or in a shared store (the Redis backend) where even `allow` is a round trip. For the
//! in-process limiter the futures are ready at once, except the waiting ones, and a concrete
//! `TokenBucketLimiter` keeps its synchronous inherent methods of the same names: on a concrete
//! type `limiter.allow()` is the `bool`; in code generic over `L: RateLimiter` it is
//! `limiter.allow().await`.
//!
//! # Holding "any limiter"
//!
//! The methods return `impl Future + Send` (so the futures can be spawned on a multi-threaded
//! runtime), which makes the trait not object-safe: there is no `dyn RateLimiter`. Hold a
//! limiter through a generic parameter (`struct Client<L: RateLimiter> { limiter: Arc<L> }`),
//! or, where the set of backends is closed, an enum that implements the trait by delegation.

use crate::budget::{Cost, Limit};
use crate::clock::Clock;
use crate::error::Error;
use crate::limiter::{Permit, TokenBucketLimiter};
use crate::usage::Usage;
use std::future::{ready, Future};
use std::time::Duration;

/// A rate limiter over a set of budgets (requests, tokens, input and output tokens), each
/// admission taking from all of them or from none.
///
/// Every method is async because the trait abstracts over where the buckets live: in this
/// process ([`TokenBucketLimiter`], where the futures are ready at once except the waiting
/// ones) or in a shared store, where even `allow` is a round trip. A concrete
/// `TokenBucketLimiter` keeps synchronous inherent methods of the same names: on the concrete
/// type `limiter.allow()` is the `bool`; in code generic over `L: RateLimiter` it is
/// `limiter.allow().await`. The futures are `Send`; returning `impl Future` makes the trait not
/// object-safe, so hold a limiter through a generic parameter, or an enum that delegates.
///
/// A cost is anything that converts into [`Cost`]: a plain number is input tokens.
pub trait RateLimiter: Send + Sync {
    /// Proof of an admission, to be settled with the actual cost.
    type Permit: Send;

    /// Admits one request (no tokens) if every request budget allows it now; never waits.
    fn allow(&self) -> impl Future<Output = bool> + Send;

    /// Waits until one request is allowed.
    fn wait(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Sets new counts for the request and total-tokens budgets (`0`: unlimited), keeping the
    /// units already in use.
    fn set_limit(&self, rpm: u64, tpm: u64) -> impl Future<Output = Result<(), Error>> + Send;

    /// Sets new limits for the budgets they name (kind and window), all in one version.
    fn set_limits(&self, limits: &[Limit]) -> impl Future<Output = Result<(), Error>> + Send;

    /// A snapshot of every limited budget.
    fn usage(&self) -> impl Future<Output = Result<Usage, Error>> + Send;

    /// The limit of every budget, unlimited ones included, in the limiter's order.
    fn limits(&self) -> impl Future<Output = Result<Vec<Limit>, Error>> + Send;

    /// Would one request of `cost` be admitted now? Takes nothing.
    fn peek(&self, cost: impl Into<Cost> + Send) -> impl Future<Output = bool> + Send;

    /// Records `cost` actually used; if that puts a budget in debt, waits it out.
    fn consume_tokens(
        &self,
        cost: impl Into<Cost> + Send,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Records `requests` requests and `cost` used outside any permit, as debt if need be;
    /// never waits (one step, whatever the counts).
    fn charge(
        &self,
        requests: u64,
        cost: impl Into<Cost> + Send,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Admits one request of `cost` now, or says why not; never waits.
    fn try_acquire(
        &self,
        cost: impl Into<Cost> + Send,
    ) -> impl Future<Output = Result<Self::Permit, Error>> + Send;

    /// Waits until one request of `cost` is admitted on every budget together, but only if
    /// that wait would end within `max_wait`: otherwise [`Error::RateLimitExceeded`] at once,
    /// with nothing taken. The one waiting method an implementation writes;
    /// [`acquire`](Self::acquire) is this with no bound.
    fn acquire_within(
        &self,
        cost: impl Into<Cost> + Send,
        max_wait: Duration,
    ) -> impl Future<Output = Result<Self::Permit, Error>> + Send;

    /// Waits until one request of `cost` is admitted on every budget together:
    /// [`acquire_within`](Self::acquire_within) with no bound.
    fn acquire(
        &self,
        cost: impl Into<Cost> + Send,
    ) -> impl Future<Output = Result<Self::Permit, Error>> + Send {
        self.acquire_within(cost, Duration::MAX)
    }

    /// Settles a permit with the actual cost (refund surplus, charge shortfall).
    fn settle(
        &self,
        permit: Self::Permit,
        actual: impl Into<Cost> + Send,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

impl<C: Clock> RateLimiter for TokenBucketLimiter<C> {
    type Permit = Permit;

    fn allow(&self) -> impl Future<Output = bool> + Send {
        ready(TokenBucketLimiter::allow(self))
    }

    fn wait(&self) -> impl Future<Output = Result<(), Error>> + Send {
        TokenBucketLimiter::wait(self)
    }

    fn set_limit(&self, rpm: u64, tpm: u64) -> impl Future<Output = Result<(), Error>> + Send {
        ready(TokenBucketLimiter::set_limit(self, rpm, tpm))
    }

    fn set_limits(&self, limits: &[Limit]) -> impl Future<Output = Result<(), Error>> + Send {
        ready(TokenBucketLimiter::set_limits(self, limits))
    }

    fn usage(&self) -> impl Future<Output = Result<Usage, Error>> + Send {
        ready(Ok(TokenBucketLimiter::usage(self)))
    }

    fn limits(&self) -> impl Future<Output = Result<Vec<Limit>, Error>> + Send {
        ready(Ok(TokenBucketLimiter::limits(self)))
    }

    fn peek(&self, cost: impl Into<Cost> + Send) -> impl Future<Output = bool> + Send {
        ready(TokenBucketLimiter::peek(self, cost))
    }

    fn consume_tokens(
        &self,
        cost: impl Into<Cost> + Send,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        TokenBucketLimiter::consume_tokens(self, cost.into())
    }

    fn charge(
        &self,
        requests: u64,
        cost: impl Into<Cost> + Send,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        TokenBucketLimiter::charge(self, requests, cost);
        ready(Ok(()))
    }

    fn try_acquire(
        &self,
        cost: impl Into<Cost> + Send,
    ) -> impl Future<Output = Result<Permit, Error>> + Send {
        ready(TokenBucketLimiter::try_acquire(self, cost))
    }

    fn acquire_within(
        &self,
        cost: impl Into<Cost> + Send,
        max_wait: Duration,
    ) -> impl Future<Output = Result<Permit, Error>> + Send {
        TokenBucketLimiter::acquire_within(self, cost.into(), max_wait)
    }

    fn settle(
        &self,
        permit: Permit,
        actual: impl Into<Cost> + Send,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        ready(TokenBucketLimiter::settle(self, permit, actual))
    }
}
