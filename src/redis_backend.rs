//! A limiter whose two buckets live in Redis, shared by every replica of a gateway.
//!
//! # One script call per decision
//!
//! Each operation is one call of one Lua script (`EVALSHA`, falling back to `EVAL` after a
//! Redis restart empties the script cache). The script decides both buckets of a budget key
//! (requests and tokens) with the in-process limiter's GCRA rules ([`crate::gcra`]): all or
//! nothing, a denial writes nothing. Scripts run atomically, so replicas never race.
//!
//! * **Keys**: `<prefix>{name}:s` (a hash with both buckets' state; it expires once both buckets are
//!   full again, so idle keys cost no memory) and `<prefix>{name}:c` (the limits stored by
//!   [`set_limit`](RedisLimiter::set_limit), no expiry). The hash tag `{name}` puts both keys
//!   on one Redis Cluster slot.
//! * **Time** comes from Redis `TIME` inside the script, never from the replica's clock, so
//!   replicas with skewed clocks agree. Redis 7 replicates scripts by their effects, so the
//!   replica servers do not re-read the clock either.
//! * **Encoding**: Lua numbers are doubles, exact for integers below 2^53. Time is whole
//!   microseconds since 2025-01-01T00:00:00Z. A bucket of `l` units per period `p` µs, with
//!   `l/p = L/P` in lowest terms, counts in ticks of `1/L` µs: one unit is exactly `P` ticks
//!   and the bucket refills `L` ticks per µs. Its state is not the TAT itself but the ticks
//!   in use (`TAT − now`) as of the last write, stored with that write's time; so no number
//!   grows with the clock, and every number stays below `burst·P` plus debt (capped at 2^52,
//!   where the bucket denies: saturation closes the gate). The builder and `set_limit`
//!   reject limits whose full bucket reaches 2^52 ticks ([`Error::InvalidConfig`]): any
//!   limit up to 7·10^7 per minute passes, round limits far beyond. Admissions are exact
//!   continuous GCRA at µs readings (no rounding at all); deadlines round up to a µs;
//!   `usage` reports used units rounded up; a `set_limit` carries a fraction of a unit
//!   exactly where it can and rounds it up otherwise.
//! * **`set_limit`** stores the new limits beside the state, with a version, and rescales both
//!   TATs in the same script so the units in use stay used, whichever replica calls it.
//!   Every replica's next call reads the stored limits; until the first `set_limit`, the
//!   limits the caller was built with are used (replicas should be built alike).
//!
//! # Waiting
//!
//! [`acquire`](RedisLimiter::acquire) claims a future slot in Redis (the TATs may run ahead of
//! now) and the script returns its deadline; the caller sleeps on `tokio::time::sleep` for
//! `deadline − Redis now`. A waiter dropped before its deadline gives the slot back in a task
//! spawned on the current tokio runtime, under the safe refund rule
//! `r = min(n, granted_tat − now)` and only if the limits version is unchanged.
//!
//! # Failures
//!
//! Every call is bounded by a timeout ([`RedisBuilder::timeout`], default 250 ms). When Redis
//! cannot be asked (unreachable, slow, restarted, a script error), the limiter **fails
//! closed** by default: [`Error::Unavailable`], `allow`/`reserve` return `false`, nothing is
//! admitted. [`RedisBuilder::fail_open`] instead hands such calls to a local
//! [`TokenBucketLimiter`] (size it as this replica's share of the budget). A call that timed
//! out may still have been executed by Redis: its units stay counted (conservative, never an
//! over-admission). A Redis restart without persistence forgets the usage: every bucket is full
//! again, exactly as for a key that has expired.

use crate::budget::{Budget, Burst, Cost, Limit};
use crate::clock::{Clock, ManualClock};
use crate::error::{Denied, Error};
use crate::limiter::{Permit, TokenBucketLimiter};
use crate::rate_limiter::RateLimiter;
use crate::usage::{BudgetUsage, Usage};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Keeps a full bucket, in the script's ticks, below this, so that its doubles stay exact.
const EXACT_LIMIT: u128 = 1 << 52;

/// The script: both buckets, one atomic call (its SHA1 is computed once).
fn script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(include_str!("redis_backend/gcra.lua")))
}

/// What a Redis-backed limiter does when Redis cannot be asked.
#[derive(Clone, Debug, Default)]
enum OnFailure {
    /// Nothing is admitted: [`Error::Unavailable`].
    #[default]
    Closed,
    /// Decisions fall back to a local limiter.
    Open(Arc<TokenBucketLimiter>),
}

/// Configures a [`RedisLimiter`]; made by [`RedisLimiter::builder`].
#[derive(Clone, Debug)]
pub struct RedisBuilder {
    url: String,
    name: String,
    prefix: String,
    rpm: u64,
    tpm: u64,
    period: Duration,
    request_burst: Burst,
    token_burst: Burst,
    timeout: Duration,
    on_failure: OnFailure,
    clock: Option<Arc<ManualClock>>,
}

impl RedisBuilder {
    /// The period the limits count over (default one minute); whole microseconds.
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// The request bucket's burst policy (default: the whole period's worth).
    pub fn request_burst(mut self, burst: Burst) -> Self {
        self.request_burst = burst;
        self
    }

    /// The token bucket's burst policy (default: the whole period's worth).
    pub fn token_burst(mut self, burst: Burst) -> Self {
        self.token_burst = burst;
        self
    }

    /// The key prefix (default `ratekeeper:`), before the `{name}` hash tag.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The most one Redis call may take (connecting included) before it counts as a failure
    /// (default 250 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Fail open: while Redis cannot be asked, decide with `local` instead of failing closed.
    /// Size `local` as this replica's share of the budget (e.g. the limits divided by the
    /// number of replicas).
    pub fn fail_open(mut self, local: TokenBucketLimiter) -> Self {
        self.on_failure = OnFailure::Open(Arc::new(local));
        self
    }

    /// Test mode: feed the script this clock's reading (floored to whole µs, counted from the
    /// ratekeeper epoch) instead of Redis `TIME`, and keep state without expiry (real expiry
    /// would not follow a manual clock). For tests that compare with the in-process limiter.
    pub fn manual_clock(mut self, clock: Arc<ManualClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Connects and builds the limiter. [`Error::InvalidConfig`] for a period that is not a
    /// positive whole number of µs, a zero burst, or limits too fine for exact arithmetic;
    /// [`Error::Unavailable`] when Redis cannot be reached.
    pub async fn build(self) -> Result<RedisLimiter, Error> {
        let period_us = u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX);
        if period_us == 0 || self.period.subsec_nanos() % 1_000 != 0 {
            return Err(Error::InvalidConfig(
                "the redis backend needs a period of whole microseconds",
            ));
        }
        let config = Config {
            period_us,
            request_burst: self.request_burst,
            token_burst: self.token_burst,
        };
        let defaults = config.limits(self.rpm, self.tpm)?;
        let client = redis::Client::open(self.url.as_str()).map_err(unavailable)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            self.timeout,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await
        .map_err(|_| Error::Unavailable("redis: connect timed out".into()))?
        .map_err(unavailable)?;
        Ok(RedisLimiter {
            inner: Arc::new(Inner {
                conn,
                keys: [
                    format!("{}{{{}}}:s", self.prefix, self.name),
                    format!("{}{{{}}}:c", self.prefix, self.name),
                ],
                config,
                defaults,
                timeout: self.timeout,
                on_failure: self.on_failure,
                clock: self.clock,
            }),
        })
    }
}

/// The limits of both buckets as the script takes them: `[period_us, rl, rb, tl, tb]`.
type Limits = [u64; 5];

#[derive(Debug)]
struct Config {
    period_us: u64,
    request_burst: Burst,
    token_burst: Burst,
}

impl Config {
    fn limits(&self, rpm: u64, tpm: u64) -> Result<Limits, Error> {
        let rb = self.bucket(rpm, self.request_burst)?;
        let tb = self.bucket(tpm, self.token_burst)?;
        Ok([self.period_us, rpm, rb, tpm, tb])
    }

    /// The burst of one bucket (0 when unlimited), after checking the script can be exact.
    fn bucket(&self, limit: u64, burst: Burst) -> Result<u64, Error> {
        if limit == 0 {
            return Ok(0);
        }
        // The same policy as in process (a window stays a window across set_limit).
        burst.check()?;
        let units = burst.units(limit, self.period_us.saturating_mul(1000));
        // The script counts a unit as P = period/gcd(limit, period) ticks; a full bucket must
        // stay below 2^52 ticks for its doubles to be exact.
        let p = (self.period_us / gcd(limit, self.period_us)) as u128;
        if units as u128 * p >= EXACT_LIMIT {
            return Err(Error::InvalidConfig(
                "limit and period too fine for the redis backend's exact arithmetic",
            ));
        }
        Ok(units)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(format!("redis: {e}"))
}

/// A requests-and-tokens limiter for one budget key, kept in Redis and shared by every
/// process that uses the same key. The script's design (keys, encoding, time) is written at the top of `src/redis_backend/gcra.lua`.
///
/// Cheap to clone (one shared connection that reconnects by itself).
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    keys: [String; 2],
    config: Config,
    defaults: Limits,
    timeout: Duration,
    on_failure: OnFailure,
    clock: Option<Arc<ManualClock>>,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("keys", &self.inner.keys)
            .field("defaults", &self.inner.defaults)
            .finish_non_exhaustive()
    }
}

/// Proof of an admission by a [`RedisLimiter`]; settle it with the actual token count.
#[derive(Debug)]
pub struct RedisPermit {
    tokens: u64,
    admitted_us: Option<u64>,
    grant: Grant,
}

#[derive(Debug)]
enum Grant {
    /// Admitted by Redis at Redis time `at` (µs): the ticks in use right after the grant in
    /// each bucket (the TAT relative to `at`) and the limits version.
    Redis {
        at: u64,
        request_used: u64,
        token_used: u64,
        version: u64,
    },
    /// Admitted by the local fail-open limiter.
    Local(Permit),
}

impl RedisPermit {
    /// The tokens this permit was admitted for (the estimate).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The Redis time (µs since 2025-01-01T00:00:00Z) of the admission, or `None` for a permit
    /// of the fail-open local limiter. For auditing admissions across replicas.
    pub fn admitted_at_us(&self) -> Option<u64> {
        self.admitted_us
    }
}

impl RedisLimiter {
    /// A builder for the budget key `name` with `rpm` requests and `tpm` tokens per period
    /// (`0`: unlimited), kept in the Redis at `url` (e.g. `redis://127.0.0.1:6379/`).
    pub fn builder(
        url: impl Into<String>,
        name: impl Into<String>,
        rpm: u64,
        tpm: u64,
    ) -> RedisBuilder {
        RedisBuilder {
            url: url.into(),
            name: name.into(),
            prefix: "ratekeeper:".into(),
            rpm,
            tpm,
            period: Duration::from_secs(60),
            request_burst: Burst::Period,
            token_burst: Burst::Period,
            timeout: Duration::from_millis(250),
            on_failure: OnFailure::Closed,
            clock: None,
        }
    }

    /// The two Redis keys of this budget: the state (expiring) and the stored limits.
    pub fn keys(&self) -> (&str, &str) {
        (&self.inner.keys[0], &self.inner.keys[1])
    }

    /// One script call, bounded by the timeout.
    async fn call(&self, op: &str, args: &[u64]) -> Result<Vec<i64>, Error> {
        let inner = &self.inner;
        let time = match &inner.clock {
            Some(c) => (c.now() / 1_000).to_string(),
            None => String::new(),
        };
        let mut invocation = script().prepare_invoke();
        invocation.key(&inner.keys[0]).key(&inner.keys[1]);
        invocation
            .arg(op)
            .arg(time)
            .arg(&inner.defaults[..])
            .arg(args);
        let mut conn = inner.conn.clone();
        match tokio::time::timeout(inner.timeout, invocation.invoke_async(&mut conn)).await {
            Ok(reply) => reply.map_err(unavailable),
            Err(_) => Err(Error::Unavailable("redis: call timed out".into())),
        }
    }

    /// The local limiter to fall back on, when failing open.
    fn fallback(&self) -> Option<&TokenBucketLimiter> {
        match &self.inner.on_failure {
            OnFailure::Closed => None,
            OnFailure::Open(local) => Some(local),
        }
    }

    /// Admits one request (no tokens) if the request budget allows it now. `false` also when
    /// Redis cannot be asked (failing closed).
    pub async fn allow(&self) -> bool {
        match self.call("acq", &[0, 0, 0]).await {
            Ok(r) => r.first() == Some(&1),
            Err(_) => self.fallback().is_some_and(|l| l.allow()),
        }
    }

    /// Would `try_acquire(tokens)` succeed now? Writes nothing; `false` when Redis cannot be
    /// asked (failing closed).
    pub async fn peek(&self, cost: impl Into<Cost>) -> bool {
        let tokens = cost.into().total();
        match self.call("acq", &[tokens, 1, 1]).await {
            Ok(r) => r.first() == Some(&1),
            Err(_) => self.fallback().is_some_and(|l| l.peek(tokens)),
        }
    }

    /// Admits one request and `tokens` tokens together, or neither; never waits.
    pub async fn try_acquire(&self, cost: impl Into<Cost>) -> Result<RedisPermit, Error> {
        let tokens = cost.into().total();
        let r = match self.call("acq", &[tokens, 1, 0]).await {
            Ok(r) => r,
            Err(e) => return self.local(e, |l| l.try_acquire(tokens), tokens),
        };
        match (get(&r, 0), r.len()) {
            (1, 5) => Ok(RedisPermit {
                tokens,
                admitted_us: Some(get(&r, 1)),
                grant: Grant::Redis {
                    at: get(&r, 1),
                    request_used: get(&r, 2),
                    token_used: get(&r, 3),
                    version: get(&r, 4),
                },
            }),
            _ => Err(refusal(&r, tokens)),
        }
    }

    /// Hands a failed call to the fail-open limiter, or fails closed with `e`.
    fn local(
        &self,
        e: Error,
        op: impl FnOnce(&TokenBucketLimiter) -> Result<Permit, Error>,
        tokens: u64,
    ) -> Result<RedisPermit, Error> {
        let local = self.fallback().ok_or(e)?;
        Ok(RedisPermit {
            tokens,
            admitted_us: None,
            grant: Grant::Local(op(local)?),
        })
    }

    /// Claims one request and `tokens` tokens, sleeps until the claimed slot's deadline and
    /// returns the permit. Dropping the future before then gives the slot back (in a task
    /// spawned on the current runtime).
    pub async fn acquire(&self, cost: impl Into<Cost>) -> Result<RedisPermit, Error> {
        let tokens = cost.into().total();
        let r = match self.call("claim", &[tokens, 1]).await {
            Ok(r) => r,
            Err(e) => {
                let Some(local) = self.fallback() else {
                    return Err(e);
                };
                let permit = local.acquire(tokens).await?;
                return Ok(RedisPermit {
                    tokens,
                    admitted_us: None,
                    grant: Grant::Local(permit),
                });
            }
        };
        if get(&r, 0) != 1 || r.len() != 6 {
            return Err(refusal(&r, tokens));
        }
        let (now, ready) = (get(&r, 1), get(&r, 5));
        let grant = Grant::Redis {
            at: now,
            request_used: get(&r, 2),
            token_used: get(&r, 3),
            version: get(&r, 4),
        };
        let guard = ClaimGuard {
            limiter: Some(self.clone()),
            refund: refund_args(&grant, 1, tokens),
        };
        tokio::time::sleep(Duration::from_micros(ready.saturating_sub(now))).await;
        guard.disarm();
        Ok(RedisPermit {
            tokens,
            admitted_us: Some(ready.max(now)),
            grant,
        })
    }

    /// Waits until one request is admitted (a claim on the request bucket only).
    pub async fn wait(&self) -> Result<(), Error> {
        let r = match self.call("claim", &[0, 0]).await {
            Ok(r) => r,
            Err(e) => return self.fallback().ok_or(e)?.wait().await,
        };
        if get(&r, 0) != 1 || r.len() != 6 {
            return Err(refusal(&r, 0));
        }
        let grant = Grant::Redis {
            at: get(&r, 1),
            request_used: get(&r, 2),
            token_used: 0,
            version: get(&r, 4),
        };
        let guard = ClaimGuard {
            limiter: Some(self.clone()),
            refund: refund_args(&grant, 1, 0),
        };
        let delay = get(&r, 5).saturating_sub(get(&r, 1));
        tokio::time::sleep(Duration::from_micros(delay)).await;
        guard.disarm();
        Ok(())
    }

    /// Charges `tokens` used at once (debt allowed) and waits until the token budget is out
    /// of debt. Dropping the future keeps the charge.
    pub async fn consume_tokens(&self, cost: impl Into<Cost>) -> Result<(), Error> {
        let tokens = cost.into().total();
        let r = match self.call("charge", &[tokens, 0]).await {
            Ok(r) => r,
            Err(e) => return self.fallback().ok_or(e)?.consume_tokens(tokens).await,
        };
        let delay = get(&r, 2).saturating_sub(get(&r, 1));
        tokio::time::sleep(Duration::from_micros(delay)).await;
        Ok(())
    }

    /// Records `requests` and `tokens` used outside any permit (debt allowed), in one script
    /// call, without waiting.
    pub async fn charge(&self, requests: u64, cost: impl Into<Cost>) -> Result<(), Error> {
        let tokens = cost.into().total();
        match self.call("charge", &[tokens, requests]).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.fallback().ok_or(e)?.charge(requests, tokens);
                Ok(())
            }
        }
    }

    /// Settles a permit with the tokens actually used: a surplus is refunded under the safe
    /// rule (nothing after a limit change), a shortfall is charged as debt.
    pub async fn settle(&self, permit: RedisPermit, actual: impl Into<Cost>) -> Result<(), Error> {
        let actual_tokens = actual.into().total();
        let grant = match permit.grant {
            Grant::Local(p) => {
                return match self.fallback() {
                    Some(local) => local.settle(p, actual_tokens),
                    None => Ok(()),
                };
            }
            g => g,
        };
        if actual_tokens > permit.tokens {
            self.call("charge", &[actual_tokens - permit.tokens, 0])
                .await?;
        } else if actual_tokens < permit.tokens {
            let args = refund_args(&grant, 0, permit.tokens - actual_tokens);
            self.call("refund", &args).await?;
        }
        Ok(())
    }

    /// Both budgets now, by Redis time.
    pub async fn usage(&self) -> Result<Usage, Error> {
        let r = match self.call("usage", &[]).await {
            Ok(r) => r,
            Err(e) => return Ok(self.fallback().ok_or(e)?.usage()),
        };
        let window = Duration::from_micros(self.inner.config.period_us);
        let side = |budget, used: u64, limit: u64, burst: u64| {
            (limit > 0).then_some(BudgetUsage {
                budget,
                window,
                limit,
                capacity: burst,
                used,
                remaining: burst.saturating_sub(used),
            })
        };
        let requests = side(Budget::Requests, get(&r, 1), get(&r, 2), get(&r, 3));
        let tokens = side(Budget::Tokens, get(&r, 4), get(&r, 5), get(&r, 6));
        Ok(Usage::new(requests.into_iter().chain(tokens)))
    }

    /// New limits for every replica's next decision (`0`: unlimited), stored in Redis with the
    /// units in use carried over. Fails (closed or open alike) when Redis cannot be asked: a
    /// limit change is never silently dropped.
    pub async fn set_limit(&self, rpm: u64, tpm: u64) -> Result<(), Error> {
        let [_, rl, rb, tl, tb] = self.inner.config.limits(rpm, tpm)?;
        self.call("set", &[rl, rb, tl, tb]).await.map(|_| ())
    }

    /// The limits in force (as stored in Redis, else the ones it was built with): requests
    /// and tokens per this limiter's period, with its burst policies.
    pub async fn limits(&self) -> Result<Vec<Limit>, Error> {
        let c = &self.inner.config;
        let period = Duration::from_micros(c.period_us);
        let u = self.usage().await?;
        Ok(vec![
            Limit::requests(u.requests().map_or(0, |b| b.limit))
                .per(period)
                .burst(c.request_burst),
            Limit::tokens(u.tokens().map_or(0, |b| b.limit))
                .per(period)
                .burst(c.token_burst),
        ])
    }

    /// New counts for the budgets named (requests and tokens, per this limiter's period);
    /// [`Error::InvalidConfig`] for any other budget or window.
    pub async fn set_limits(&self, limits: &[Limit]) -> Result<(), Error> {
        let period = Duration::from_micros(self.inner.config.period_us);
        let usage = self.usage().await?;
        let mut rpm = usage.requests().map_or(0, |b| b.limit);
        let mut tpm = usage.tokens().map_or(0, |b| b.limit);
        for l in limits {
            match (l.budget(), l.window() == period) {
                (Budget::Requests, true) => rpm = l.count(),
                (Budget::Tokens, true) => tpm = l.count(),
                _ => return Err(Error::InvalidConfig("the limiter has no such budget")),
            }
        }
        self.set_limit(rpm, tpm).await
    }
}

/// Reads reply element `i` as a non-negative integer (0 if absent or negative).
fn get(r: &[i64], i: usize) -> u64 {
    r.get(i).map_or(0, |&v| u64::try_from(v).unwrap_or(0))
}

/// The script's arguments to give back `req` requests and `tokens` tokens of a grant.
fn refund_args(grant: &Grant, req: u64, tokens: u64) -> [u64; 6] {
    match *grant {
        Grant::Redis {
            at,
            request_used,
            token_used,
            version,
        } => [version, at, request_used, req, token_used, tokens],
        Grant::Local(_) => [u64::MAX, 0, 0, 0, 0, 0],
    }
}

/// The error for a refusal reply: `{0, now, budget, ready}` or `{-1, budget, capacity}`.
fn refusal(r: &[i64], tokens: u64) -> Error {
    let budget = |b: u64| {
        if b == 1 {
            Budget::Requests
        } else {
            Budget::Tokens
        }
    };
    match r.first() {
        Some(-1) => Error::InsufficientCapacity {
            budget: budget(get(r, 1)),
            requested: tokens,
            capacity: get(r, 2),
        },
        Some(0) if r.len() == 4 => {
            let (now, ready) = (get(r, 1), get(r, 3));
            // The Redis deadline itself, in ns since the ratekeeper epoch.
            Error::RateLimitExceeded(Denied::until(
                budget(get(r, 2)),
                Duration::ZERO,
                ready.saturating_mul(1_000),
                now.saturating_mul(1_000),
            ))
        }
        _ => Error::Unavailable(format!("redis: unexpected reply {r:?}")),
    }
}

/// Gives a claimed slot back if the waiter is dropped before its deadline.
struct ClaimGuard {
    limiter: Option<RedisLimiter>,
    refund: [u64; 6],
}

impl ClaimGuard {
    fn disarm(mut self) {
        self.limiter = None;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(limiter) = self.limiter.take() else {
            return;
        };
        // Drop cannot await: the refund runs in a task. Without a runtime (or if Redis is
        // down) the slot stays claimed, which only under-admits.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let args = self.refund;
            handle.spawn(async move {
                let _ = limiter.call("refund", &args).await;
            });
        }
    }
}

impl RateLimiter for RedisLimiter {
    type Permit = RedisPermit;

    fn allow(&self) -> impl Future<Output = bool> + Send {
        RedisLimiter::allow(self)
    }

    fn wait(&self) -> impl Future<Output = Result<(), Error>> + Send {
        RedisLimiter::wait(self)
    }

    fn set_limit(&self, rpm: u64, tpm: u64) -> impl Future<Output = Result<(), Error>> + Send {
        RedisLimiter::set_limit(self, rpm, tpm)
    }

    fn set_limits(&self, limits: &[Limit]) -> impl Future<Output = Result<(), Error>> + Send {
        RedisLimiter::set_limits(self, limits)
    }

    fn usage(&self) -> impl Future<Output = Result<Usage, Error>> + Send {
        RedisLimiter::usage(self)
    }

    fn limits(&self) -> impl Future<Output = Result<Vec<Limit>, Error>> + Send {
        RedisLimiter::limits(self)
    }

    fn peek(&self, cost: impl Into<Cost> + Send) -> impl Future<Output = bool> + Send {
        RedisLimiter::peek(self, cost.into())
    }

    fn consume_tokens(
        &self,
        cost: impl Into<Cost> + Send,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        RedisLimiter::consume_tokens(self, cost.into())
    }

    fn charge(
        &self,
        requests: u64,
        cost: impl Into<Cost> + Send,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        RedisLimiter::charge(self, requests, cost.into())
    }

    fn try_acquire(
        &self,
        cost: impl Into<Cost> + Send,
    ) -> impl Future<Output = Result<RedisPermit, Error>> + Send {
        RedisLimiter::try_acquire(self, cost.into())
    }

    fn acquire(
        &self,
        cost: impl Into<Cost> + Send,
    ) -> impl Future<Output = Result<RedisPermit, Error>> + Send {
        RedisLimiter::acquire(self, cost.into())
    }

    fn settle(
        &self,
        permit: RedisPermit,
        actual: impl Into<Cost> + Send,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        RedisLimiter::settle(self, permit, actual.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(period_us: u64) -> Config {
        Config {
            period_us,
            request_burst: Burst::Period,
            token_burst: Burst::Window(Duration::from_secs(6)),
        }
    }

    #[test]
    fn bursts_follow_the_policy_and_unlimited_has_none() {
        let c = config(60_000_000);
        assert_eq!(
            c.limits(600, 100_000),
            Ok([60_000_000, 600, 600, 100_000, 10_000])
        );
        assert_eq!(c.limits(0, 0), Ok([60_000_000, 0, 0, 0, 0]));
    }

    #[test]
    fn limits_whose_full_bucket_reaches_2_pow_52_ticks_are_refused() {
        let c = config(60_000_000);
        // Coprime with the period: a unit is 6e7 ticks; 2^52 / 6e7 ≈ 75.06e6 units is the edge.
        assert!(c.bucket(75_100_003, Burst::Period).is_err());
        assert!(c.bucket(70_000_001, Burst::Period).is_ok());
        // Round limits reduce: 1.5e8 per minute is 5 per 2 µs, P = 2.
        assert_eq!(c.bucket(150_000_000, Burst::Period), Ok(150_000_000));
        assert!(c.bucket(10, Burst::Units(0)).is_err());
    }

    #[test]
    fn refusal_replies_become_errors_without_panicking() {
        let e = refusal(&[0, 1_000, 1, 1_250], 5);
        match e {
            Error::RateLimitExceeded(d) => {
                assert_eq!(d.budget(), Budget::Requests);
                assert_eq!(d.retry_after(), Duration::from_micros(250));
                assert_eq!(d.ready_at_ns(), 1_250_000);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            refusal(&[-1, 2, 100], 500),
            Error::InsufficientCapacity {
                budget: Budget::Tokens,
                requested: 500,
                capacity: 100
            }
        );
        assert!(matches!(refusal(&[7], 1), Error::Unavailable(_)));
        assert!(matches!(refusal(&[], 1), Error::Unavailable(_)));
    }
}
