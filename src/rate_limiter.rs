//! The `RateLimiter` trait: the Go interface this crate grew from (Allow, Wait, SetLimit,
//! GetUsage, Reserve, ConsumeTokens), plus `acquire`/`settle` for LLM clients.
//!
//! # Why every method is async
//!
//! The trait abstracts over where the buckets live: in this process ([`TokenBucketLimiter`])
//! or in a shared store (a Redis backend) where even `allow` is a round trip. For the
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

use crate::clock::Clock;
use crate::error::Error;
use crate::limiter::{Permit, TokenBucketLimiter, Usage};
use std::future::{ready, Future};

/// A requests-and-tokens rate limiter: the Go interface this crate grew from (Allow, Wait,
/// SetLimit, GetUsage, Reserve, ConsumeTokens), plus `try_acquire`/`acquire`/`settle`.
///
/// Every method is async because the trait abstracts over where the buckets live: in this
/// process ([`TokenBucketLimiter`], where the futures are ready at once except the waiting
/// ones) or in a shared store, where even `allow` is a round trip. A concrete
/// `TokenBucketLimiter` keeps synchronous inherent methods of the same names: on the concrete
/// type `limiter.allow()` is the `bool`; in code generic over `L: RateLimiter` it is
/// `limiter.allow().await`.
///
/// The futures are `Send`, so they can be spawned on a multi-threaded runtime. Returning
/// `impl Future` makes the trait not object-safe: there is no `dyn RateLimiter`. Hold a limiter
/// through a generic parameter (`struct Client<L: RateLimiter> { limiter: Arc<L> }`), or, where
/// the set of backends is closed, an enum that implements the trait by delegation.
pub trait RateLimiter: Send + Sync {
    /// Proof of an admission, to be settled with the actual token count.
    type Permit: Send;

    /// Admits one request (no tokens) if allowed now; never waits.
    fn allow(&self) -> impl Future<Output = bool> + Send;

    /// Waits until one request is allowed.
    fn wait(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Sets new limits per period (`0`: unlimited), keeping the units already in use.
    fn set_limit(&self, rpm: u64, tpm: u64) -> impl Future<Output = Result<(), Error>> + Send;

    /// A snapshot of both budgets.
    fn usage(&self) -> impl Future<Output = Result<Usage, Error>> + Send;

    /// Would one request with `tokens` tokens be admitted now? Consumes nothing.
    fn reserve(&self, tokens: u64) -> impl Future<Output = bool> + Send;

    /// Records `tokens` actually used; if that puts the token budget in debt, waits it out.
    fn consume_tokens(&self, tokens: u64) -> impl Future<Output = Result<(), Error>> + Send;

    /// Records `requests` requests and `tokens` tokens used outside any permit, as debt if need
    /// be; never waits (O(1), whatever the counts).
    fn charge(&self, requests: u64, tokens: u64) -> impl Future<Output = Result<(), Error>> + Send;

    /// Admits one request and `tokens` tokens now, or says why not; never waits.
    fn try_acquire(&self, tokens: u64) -> impl Future<Output = Result<Self::Permit, Error>> + Send;

    /// Waits until one request and `tokens` tokens are admitted together.
    fn acquire(&self, tokens: u64) -> impl Future<Output = Result<Self::Permit, Error>> + Send;

    /// Settles a permit with the tokens actually used (refund surplus, charge shortfall).
    fn settle(
        &self,
        permit: Self::Permit,
        actual_tokens: u64,
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
        TokenBucketLimiter::set_limit(self, rpm, tpm);
        ready(Ok(()))
    }

    fn usage(&self) -> impl Future<Output = Result<Usage, Error>> + Send {
        ready(Ok(TokenBucketLimiter::usage(self)))
    }

    fn reserve(&self, tokens: u64) -> impl Future<Output = bool> + Send {
        ready(TokenBucketLimiter::reserve(self, tokens))
    }

    fn consume_tokens(&self, tokens: u64) -> impl Future<Output = Result<(), Error>> + Send {
        TokenBucketLimiter::consume_tokens(self, tokens)
    }

    fn charge(&self, requests: u64, tokens: u64) -> impl Future<Output = Result<(), Error>> + Send {
        TokenBucketLimiter::charge(self, requests, tokens);
        ready(Ok(()))
    }

    fn try_acquire(&self, tokens: u64) -> impl Future<Output = Result<Permit, Error>> + Send {
        ready(TokenBucketLimiter::try_acquire(self, tokens))
    }

    fn acquire(&self, tokens: u64) -> impl Future<Output = Result<Permit, Error>> + Send {
        TokenBucketLimiter::acquire(self, tokens)
    }

    fn settle(
        &self,
        permit: Permit,
        actual_tokens: u64,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        TokenBucketLimiter::settle(self, permit, actual_tokens);
        ready(Ok(()))
    }
}
