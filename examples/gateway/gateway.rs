//! The gateway side: a `KeyPool` of `TokenBucketLimiter`s shaped by a [`Policy`], learning
//! from the provider's headers, and settling permits the way the provider accounts.

use crate::shape::Shape;
use http::{HeaderMap, HeaderName, HeaderValue};
use ratekeeper::headers::{self, ProviderLimits};
use ratekeeper::{Budget, Burst, Clock, KeyPool, PoolPermit, RateLimiter, TokenBucketLimiter};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How each key's limiter is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The crate's default: a burst of the whole window (`Burst::Period`), the limit as
    /// configured or learned.
    FullWindow,
    /// The provider-safe shape, emulated with today's API: `Burst::Units(B)`, and the shape's
    /// rate as a limit per `W + J` (exactly `L - B` where the sliding bound binds). Learned
    /// limits are converted the same way; the bursts stay those computed at build
    /// (`Burst::Units` keeps its count across `set_limit`, and the rate is computed for it).
    /// `usage()` then reports the converted limit per `W + J`, not the provider's.
    Shaped(Shape),
}

/// When a permit is settled, and with what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// With the actual tokens, once the response is complete (the surplus is refunded as far
    /// as the limiter's refund rule allows).
    Actual,
    /// With the estimate, never refunding: for a provider that charges prompt + `max_tokens`
    /// and keeps it.
    Estimate,
    /// With the actual tokens at once, as if they were known at admission: what a refund
    /// that is still honoured seconds later would give. An oracle, not a real gateway.
    AtAdmission,
}

/// One key as the gateway is configured.
#[derive(Clone, Copy, Debug)]
pub struct KeyConfig {
    /// Requests per window.
    pub requests: u64,
    /// Tokens per window.
    pub tokens: u64,
}

/// What one key's limiter is built from: the policy already applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimiterSpec {
    /// The key (its index in the configuration): keys of replicas that share a backend use
    /// it to name the shared state.
    pub key: usize,
    /// Requests per `period`.
    pub requests: u64,
    /// Tokens per `period`.
    pub tokens: u64,
    /// The period.
    pub period: Duration,
    /// The request bucket's burst.
    pub request_burst: Burst,
    /// The token bucket's burst.
    pub token_burst: Burst,
}

/// A factory of in-process limiters on `clock`.
pub fn in_process<C: Clock>(clock: Arc<C>) -> impl Fn(&LimiterSpec) -> Limiter<C> {
    move |s| {
        TokenBucketLimiter::builder(s.requests, s.tokens)
            .period(s.period)
            .request_burst(s.request_burst)
            .token_burst(s.token_burst)
            .clock(clock.clone())
            .build()
            .expect("valid limits")
    }
}

/// The in-process limiter type on clock `C`.
pub type Limiter<C> = TokenBucketLimiter<Arc<C>>;

/// One gateway replica: its pool, and what it needs to convert learned limits.
pub struct Gateway<L, C: Clock> {
    /// The pool of keys (key = index into the configuration).
    pub pool: KeyPool<usize, L, Arc<C>>,
    policy: Policy,
    /// Per key, the bursts `(requests, tokens)` the limiter was built with.
    bursts: Vec<(u64, u64)>,
}

impl<L: RateLimiter + 'static, C: Clock + 'static> Gateway<L, C> {
    /// A replica for `keys`, limits per `window`, its limiters made by `make` and its pool
    /// timing cooldowns on `clock`; `largest` is the largest token estimate a request may
    /// carry (a shaped token burst is never below it).
    pub fn new(
        keys: &[KeyConfig],
        window: Duration,
        policy: Policy,
        largest: u64,
        clock: Arc<C>,
        make: &impl Fn(&LimiterSpec) -> L,
    ) -> Self {
        let pool = KeyPool::with_clock(clock);
        let mut bursts = Vec::new();
        for (key, k) in keys.iter().enumerate() {
            let spec = match policy {
                Policy::FullWindow => {
                    bursts.push((k.requests, k.tokens));
                    LimiterSpec {
                        key,
                        requests: k.requests,
                        tokens: k.tokens,
                        period: window,
                        request_burst: Burst::Period,
                        token_burst: Burst::Period,
                    }
                }
                Policy::Shaped(shape) => {
                    let (rb, tb) = (shape.burst(k.requests, 1), shape.burst(k.tokens, largest));
                    bursts.push((rb, tb));
                    LimiterSpec {
                        key,
                        requests: shape.limit(k.requests, rb).expect("a safe request rate"),
                        tokens: shape.limit(k.tokens, tb).expect("a safe token rate"),
                        period: shape.period(),
                        request_burst: Burst::Units(rb),
                        token_burst: Burst::Units(tb),
                    }
                }
            };
            pool.add(key, Arc::new(make(&spec)));
        }
        Gateway {
            pool,
            policy,
            bursts,
        }
    }

    /// Learns from one response of `key`: limits and remainings from its headers (converted
    /// to the shape), and a cooldown on a 429.
    pub async fn learn(&self, key: usize, status: u16, headers: &[(&'static str, String)]) {
        let map = header_map(headers);
        let result = match self.policy {
            Policy::FullWindow => self.pool.learn(&key, status, &map).await,
            Policy::Shaped(shape) => {
                let parsed = headers::parse(&map, SystemTime::now());
                if status == 429 {
                    let policy = headers::LearnPolicy::default();
                    let cooldown = headers::cooldown_for(&parsed, &policy).duration;
                    self.pool.cool_down(&key, cooldown);
                }
                let converted = self.convert(shape, key, parsed);
                let limiter = self.pool.limiter(&key).expect("keys stay");
                // The emulated shape converts limits itself; learned ones are taken as they come.
                let ceilings = headers::Ceilings::new()
                    .with(Budget::Requests, u64::MAX)
                    .with(Budget::Tokens, u64::MAX);
                Some(headers::apply(limiter.as_ref(), converted, &ceilings).await)
            }
        };
        if let Some(Err(e)) = result {
            eprintln!("learning failed on key {key}: {e}");
        }
    }

    /// A learned limit `L` becomes the shape's rate for the burst the key was built with.
    fn convert(&self, shape: Shape, key: usize, mut p: ProviderLimits) -> ProviderLimits {
        let (rb, tb) = self.bursts[key];
        p.requests.limit = p.requests.limit.and_then(|l| shape.limit(l, rb));
        p.tokens.limit = p.tokens.limit.and_then(|l| shape.limit(l, tb));
        p
    }

    /// Settles `permit` per `how`: `estimate` was admitted, `actual` were used.
    pub async fn settle(
        &self,
        permit: PoolPermit<usize, L>,
        how: Settle,
        estimate: u64,
        actual: u64,
    ) {
        let tokens = match how {
            Settle::Estimate => estimate,
            Settle::Actual | Settle::AtAdmission => actual,
        };
        let _ = self.pool.settle(permit, tokens).await;
    }

    /// The limits `(requests, tokens)` key `key`'s limiter holds now (zeros if it cannot say).
    pub async fn limits(&self, key: usize) -> (u64, u64) {
        let limiter = self.pool.limiter(&key).expect("keys stay");
        match limiter.usage().await {
            Ok(u) => (
                u.requests().map_or(0, |b| b.limit),
                u.tokens().map_or(0, |b| b.limit),
            ),
            Err(_) => (0, 0),
        }
    }
}

fn header_map(headers: &[(&'static str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("the provider writes visible ASCII"),
        );
    }
    map
}
