//! The gateway side: a `KeyPool` of limiters shaped by a [`Policy`], learning from the
//! provider's responses (limits from headers, cooldowns and adaptation from 429s), and
//! settling each permit with the tokens the response used.

use crate::shape::Shape;
use http::{HeaderMap, HeaderName, HeaderValue};
use ratekeeper::headers::{self, LearnPolicy};
use ratekeeper::{
    Accounting, Burst, Clock, KeyPool, PoolPermit, ProviderShape, RateLimiter, TokenBucketLimiter,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How each key's limiter is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// A burst of the whole window (`Burst::Period`): what `TokenBucketLimiter::new` gives.
    FullWindow,
    /// The library's provider-safe shape, `Burst::Provider`, as `for_provider` sets it.
    Provider(ProviderShape),
    /// The same shape emulated for a backend that refills at limit / window (the Redis
    /// backend today): `Burst::Units(B)` and the shape's rate as a limit per `W + J`,
    /// computed by the simulator's own arithmetic (`shape.rs`). The limits must be known:
    /// learned ones would need the same conversion, so this gateway only cools keys down.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Emulated(Shape),
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
    /// What the limiter's `settle` gives back.
    pub accounting: Accounting,
}

/// A factory of in-process limiters on `clock` (each call a new one, with its own budgets).
pub fn in_process<C: Clock>(
    clock: Arc<C>,
) -> impl Fn(&LimiterSpec) -> std::future::Ready<Limiter<C>> {
    move |s| {
        std::future::ready(
            TokenBucketLimiter::builder(s.requests, s.tokens)
                .period(s.period)
                .request_burst(s.request_burst)
                .token_burst(s.token_burst)
                .accounting(s.accounting)
                .clock(clock.clone())
                .build()
                .expect("valid limits"),
        )
    }
}

/// The in-process limiter type on clock `C`.
pub type Limiter<C> = TokenBucketLimiter<Arc<C>>;

/// One gateway replica: its pool, and how it learns and settles.
pub struct Gateway<L, C: Clock> {
    /// The pool of keys (key = index into the configuration).
    pub pool: KeyPool<usize, L, Arc<C>>,
    policy: Policy,
    /// The backend has no accounting mode of its own: `settle` keeps the estimate itself.
    reserve_by_hand: bool,
    /// The cooldown range of an emulated shape's 429s (scaled with time in a scaled run).
    cooldowns: LearnPolicy,
}

/// What each key's limiter is built from under `policy`, for `keys` with limits per `window`.
pub fn specs(
    keys: &[KeyConfig],
    window: Duration,
    policy: Policy,
    accounting: Accounting,
) -> Vec<LimiterSpec> {
    let mut out = Vec::new();
    for (key, k) in keys.iter().enumerate() {
        let (requests, tokens, period, request_burst, token_burst) = match policy {
            Policy::FullWindow => (k.requests, k.tokens, window, Burst::Period, Burst::Period),
            Policy::Provider(shape) => (
                k.requests,
                k.tokens,
                window,
                Burst::Provider(shape.largest(1)),
                Burst::Provider(shape),
            ),
            Policy::Emulated(shape) => {
                let (rb, tb) = (
                    shape.burst(k.requests, 1),
                    shape.burst(k.tokens, shape.largest),
                );
                (
                    shape.limit(k.requests, rb).expect("a safe request rate"),
                    shape.limit(k.tokens, tb).expect("a safe token rate"),
                    shape.period(),
                    Burst::Units(rb),
                    Burst::Units(tb),
                )
            }
        };
        out.push(LimiterSpec {
            key,
            requests,
            tokens,
            period,
            request_burst,
            token_burst,
            accounting,
        });
    }
    out
}

impl<L: RateLimiter + 'static, C: Clock + 'static> Gateway<L, C> {
    /// A replica with no key yet, learning per `policy` and timing cooldowns on `clock`.
    /// `accounting` is what settling gives back; a backend whose limiters cannot be told
    /// (`native_accounting` false) gets it applied here.
    pub fn new(
        policy: Policy,
        accounting: Accounting,
        native_accounting: bool,
        clock: Arc<C>,
    ) -> Self {
        Gateway {
            pool: KeyPool::with_clock(clock),
            policy,
            reserve_by_hand: !native_accounting && accounting == Accounting::Reserved,
            cooldowns: LearnPolicy::default(),
        }
    }

    /// Cooldowns after a 429 within `min ..= max` (a run on scaled time scales them too).
    pub fn with_cooldowns(mut self, min: Duration, max: Duration) -> Self {
        self.cooldowns = LearnPolicy::new().cooldown(min, max);
        self
    }

    /// Adds key `key` with its limiter.
    pub fn add(&self, key: usize, limiter: L) {
        self.pool.add(key, Arc::new(limiter));
    }

    /// Learns from one response of `key`: limits from its headers, a cooldown on a 429, and
    /// (for a key without headers) adaptation; an emulated shape only cools down.
    pub async fn learn(&self, key: usize, status: u16, headers: &[(&'static str, String)]) {
        let map = header_map(headers);
        if let Policy::Emulated(_) = self.policy {
            if status == 429 {
                let parsed = headers::parse(&map, SystemTime::now());
                let cooldown = headers::cooldown_for(&parsed, &self.cooldowns);
                self.pool.cool_down(&key, cooldown.duration);
            }
            return;
        }
        if let Some(Err(e)) = self.pool.learn(&key, status, &map).await {
            eprintln!("learning failed on key {key}: {e}");
        }
    }

    /// Settles `permit`: `estimate` was admitted, `actual` were used (0: nothing was counted).
    pub async fn settle(&self, permit: PoolPermit<usize, L>, estimate: u64, actual: u64) {
        let tokens = if self.reserve_by_hand && actual != 0 {
            actual.max(estimate)
        } else {
            actual
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
