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
//! let permit = limiter.try_acquire(600).unwrap();
//! // ...and settle it with what the response actually used: the surplus comes back.
//! limiter.settle(permit, 250);
//! assert_eq!(limiter.usage().tokens_used, 250);
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
//! limiter.set_limit(60, 100_000);
//! assert_eq!(limiter.usage().tokens_used, 250);
//!
//! // Both budgets refill continuously: after 0.15 s (250 of 100,000 per minute) the tokens are back.
//! clock.advance(Duration::from_millis(151));
//! assert_eq!(limiter.usage().tokens_used, 0);
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
//! limiter.settle(permit, 900);
//! # Ok(()) }
//! ```
//!
//! The layout: [`gcra`] holds the arithmetic as pure functions, `bucket` the atomic bucket,
//! [`TokenBucketLimiter`] the two-bucket limiter, `waiter` the async waiting, [`clock`] the
//! clocks, [`RateLimiter`] the trait every limiter implements, [`KeyPool`] the multi-key pool.
//! Behind features: `headers` (feature `http`) learns limits from provider response headers,
//! and `RedisLimiter` (feature `redis`) keeps the same two buckets in Redis for many replicas.

#![warn(missing_docs)]
// docs.rs (nightly, `--cfg docsrs`) marks each feature-gated item with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]
// The loom build is for the crate's own model checks, not a configuration users pick.
#![cfg_attr(docsrs, doc(auto_cfg(hide(loom))))]

mod bucket;
pub mod clock;
mod error;
pub mod gcra;
mod limiter;
#[cfg(not(loom))]
mod rate_limiter;
mod sync;
mod waiter;

#[cfg(not(loom))]
pub use clock::TokioClock;
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use error::{Budget, Denied, Error};
pub use limiter::{Builder, Burst, Permit, TokenBucketLimiter, Usage};
#[cfg(not(loom))]
pub use rate_limiter::RateLimiter;
pub use waiter::Reservation;
#[cfg(not(loom))]
mod pool;
#[cfg(not(loom))]
pub use pool::{headroom, KeyPool, PoolEntry, PoolPermit};
#[cfg(all(feature = "http", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod headers;

// Issue 7: the Redis backend (feature `redis`).
#[cfg(all(feature = "redis", not(loom)))]
mod redis_backend;
#[cfg(all(feature = "redis", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_backend::{RedisBuilder, RedisLimiter, RedisPermit};

// The README's Rust blocks run as doctests (`cargo test --doc`), so what a new user copies
// compiles. It shows the default features; its Redis block gates itself on `redis`.
#[cfg(all(doctest, feature = "http"))]
#[doc = include_str!("../README.md")]
mod readme {}
