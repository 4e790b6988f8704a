//! **ratekeeper** keeps a service inside two rate limits at once, requests per period and
//! tokens per period (an LLM provider's RPM and TPM), on its hottest paths: each budget is a
//! GCRA bucket whose whole state is one `AtomicU64`, an admission is a few atomic
//! instructions with no lock, and nothing is ever admitted beyond the limits.
//!
//! ```
//! use ratekeeper::{Error, ManualClock, TokenBucketLimiter};
//! use std::{sync::Arc, time::Duration};
//!
//! // 3 requests and 1,000 tokens per minute, both buckets full at start. `new(3, 1_000)`
//! // reads the system clock; a manual clock makes this example deterministic.
//! let clock = Arc::new(ManualClock::new(0));
//! let limiter = TokenBucketLimiter::builder(3, 1_000).clock(clock.clone()).build()?;
//!
//! // Admit one request with an estimate of 600 tokens (prompt + max_tokens)...
//! let permit = limiter.try_acquire(600)?;
//! // ...and settle it with what the response actually used: the surplus comes back.
//! limiter.settle(permit, 250)?;
//! assert_eq!(limiter.usage().tokens().unwrap().used, 250);
//!
//! // A request that does not fit is denied, naming the budget and how long to wait.
//! match limiter.try_acquire(900) {
//!     Err(Error::RateLimitExceeded(denied)) => {
//!         assert_eq!(denied.budget(), ratekeeper::Budget::Tokens);
//!         assert!(denied.retry_after().as_secs() > 0);
//!     }
//!     other => panic!("expected a denial, got {other:?}"),
//! }
//!
//! // More than a bucket can ever hold fails at once, not after a wait.
//! assert!(matches!(limiter.try_acquire(5_000), Err(Error::InsufficientCapacity { .. })));
//!
//! // Limits learned at runtime (e.g. from response headers) apply to the next decision,
//! // and units already used stay used.
//! limiter.set_limit(60, 100_000)?;
//! assert_eq!(limiter.usage().tokens().unwrap().used, 250);
//!
//! // Both budgets refill continuously: after 0.15 s (250 of 100,000 per minute) the tokens are back.
//! clock.advance(Duration::from_millis(151));
//! assert_eq!(limiter.usage().tokens().unwrap().used, 0);
//! # Ok::<(), Error>(())
//! ```
//!
//! Async callers wait their turn instead: [`TokenBucketLimiter::acquire`] claims a slot with
//! one CAS per bucket and sleeps once, until the computed deadline.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ratekeeper::Error> {
//! let limiter = ratekeeper::TokenBucketLimiter::new(600, 60_000);
//! let permit = limiter.acquire(1_200).await?;
//! limiter.settle(permit, 900)?;
//! # Ok(()) }
//! ```
//!
//! Beyond requests and tokens per minute, a limiter decides any set of budgets together, all
//! or nothing: requests, input tokens, output tokens and total tokens, each per its own window
//! ([`Limit`], [`TokenBucketLimiter::with_limits`]).
//!
//! # When a caller is admitted
//!
//! Every guarantee is stated against one instant: the one at which the caller is *released*.
//! For `allow`, `try_acquire` and their `*_at` forms it is the clock reading the call decided
//! at; for a waiter (`acquire`, `reserve`, and every waiting form built on them) it is the
//! deadline it sleeps until ([`Reservation::ready_at_ns`]), however late its timer fires. A
//! waiter cancelled before that is not admitted, and its slot is given back. The promise: over
//! any window of release instants, a budget admits at most `burst + rate × window`. A
//! decision at a reading older than a limit change counts as released at the change's
//! instant.
//!
//! # Layout
//!
//! `gcra` holds the arithmetic as pure functions, `bucket` the atomic bucket, `pending` what a
//! refund must know about waiters, `take` the all-or-nothing transaction across budgets,
//! [`TokenBucketLimiter`] the limiter, `waiter` the async waiting, [`clock`] the clocks,
//! [`RateLimiter`] the trait every limiter implements, [`KeyPool`] the multi-key pool. Behind
//! features: `headers` (feature `http`, on by default) learns limits from provider response
//! headers and adapts to bare 429s; `RedisLimiter` (feature `redis`) keeps the same buckets in
//! Redis for many replicas; `KeyedLimiter` (feature `keyed`) holds per-tenant budgets for
//! millions of keys; `middleware` (feature `tower`) limits HTTP requests per key; `observed`
//! (features `metrics`, `tracing`) reports what any limiter does.

#![warn(missing_docs)]
// docs.rs (nightly, `--cfg docsrs`) marks each feature-gated item with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]
// The loom build is for the crate's own model checks, not a configuration users pick.
#![cfg_attr(docsrs, doc(auto_cfg(hide(ratekeeper_loom))))]

mod bucket;
mod budget;
pub mod clock;
mod error;
mod gcra;
mod limiter;
mod obs;
mod pending;
mod pool;
mod rate_limiter;
mod sync;
mod take;
mod usage;
mod waiter;

pub use budget::{Budget, Burst, Cost, Limit, ProviderShape, MAX_BUDGETS};
pub use clock::{Clock, ManualClock, MonotonicClock, TokioClock};
pub use error::{Denied, Error};
pub use limiter::{Accounting, Builder, Permit, TokenBucketLimiter};
pub use pool::{KeyPool, PoolPermit};
pub use rate_limiter::RateLimiter;
pub use usage::{BudgetUsage, Usage};
pub use waiter::Reservation;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod headers;

#[cfg(feature = "keyed")]
mod keyed;
#[cfg(feature = "keyed")]
#[cfg_attr(docsrs, doc(cfg(feature = "keyed")))]
pub use keyed::{KeyedBuilder, KeyedLimiter, KeyedPermit};

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod middleware;

#[cfg(any(feature = "metrics", feature = "tracing"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "metrics", feature = "tracing"))))]
pub mod observed;

#[cfg(feature = "redis")]
mod redis_backend;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_backend::{RedisBuilder, RedisClaim, RedisLimiter, RedisPermit};

// The README's Rust blocks run as doctests (`cargo test --doc`), so what a new user copies
// compiles. It shows the default features; its Redis block gates itself on `redis`.
#[cfg(all(doctest, feature = "http"))]
#[doc = include_str!("../README.md")]
mod readme {}
