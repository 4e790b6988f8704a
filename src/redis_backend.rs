//! A limiter whose buckets live in Redis, shared by every replica of a gateway.
//!
//! # One script call per decision
//!
//! Each operation is one call of one Lua script (`EVALSHA`, falling back to `EVAL` after a
//! Redis restart empties the script cache). The script decides every bucket of a budget key
//! (requests and tokens) with the in-process limiter's GCRA rules, all or nothing; a denial
//! writes nothing. Scripts run atomically, so replicas never race. Time comes from Redis
//! `TIME` inside the script, never from a replica's clock, so replicas with skewed clocks
//! agree. The protocol and the arithmetic's encoding are described once, at the top of
//! `src/redis_backend/gcra.lua`; `protocol.rs` holds the typed requests and replies.
//!
//! # Keys, expiry, and what survives a restart
//!
//! * `<prefix>{name}:s`, the state: expires once every bucket is full again, so idle keys
//!   cost no memory.
//! * `<prefix>{name}:c`, the limits in force (from [`set_limit`](RedisLimiter::set_limit),
//!   or, until one, the limits of the first replica that counted anything): expires a day
//!   after it was stored or last refreshed (a write to the state refreshes it once half a day
//!   has passed), and never before the state counted in them.
//!
//! The hash tag `{name}` puts both on one Redis Cluster slot. A Redis restart without
//! persistence, a `FLUSHALL` or an expiry loses both. Usage then starts from full buckets
//! (waiters already sleeping are released at their deadlines, which the new state cannot
//! know), and the limits come back with the next call: every call carries the limits its
//! limiter last set (or was built with), and the script stores them when it finds none. A
//! replica that never called `set_limit` re-applies its build-time limits, so build replicas
//! alike, or call `set_limit` on each (learning from headers does).
//!
//! # Hostile state
//!
//! Whatever sits in those keys is input from a stranger. The script checks every field (a
//! canonical integer in its range) and loops only a bounded number of times, whatever it
//! reads. A state it cannot read whole is replaced by the **closed** state (every bucket fully
//! used as of now, so it reopens after one window) and corrupt stored limits are rewritten
//! from this limiter's; both with a TTL, and neither is ever read as "unlimited". Each repair
//! is counted ([`RedisLimiter::repairs`]); the call that found it gets the decision the
//! repaired state gives (normally a denial).
//!
//! # Waiting
//!
//! [`claim`](RedisLimiter::claim) places one slot in every bucket for one release instant
//! (the latest instant at which each bucket conforms), as a take would at that instant;
//! [`acquire`](RedisLimiter::acquire) and [`wait`](RedisLimiter::wait) claim and sleep until
//! it. A claim given back before its release, and a settled surplus, are refunds under the
//! in-process rule: only the part of the grant not yet expired comes back, and, while a
//! waiter placed behind the grant is pending, no more than how far that waiter's slot can
//! still slide (its slack). A limit change forfeits the refunds of older grants, and, while
//! waiters are pending, keeps the tail where it was in time: they keep the deadlines the old
//! limits gave them, and the next claim comes after them.
//!
//! # Failures
//!
//! Every call is bounded by a timeout ([`RedisBuilder::timeout`], default 250 ms). When Redis
//! cannot be asked (unreachable, slow, restarted, a script error), the limiter **fails
//! closed** by default: [`Error::Unavailable`], `allow`/`reserve` return `false`, nothing is
//! admitted. [`RedisBuilder::fail_open`] instead hands such calls to a local
//! [`TokenBucketLimiter`] (size it as this replica's share of the budget). A call that timed
//! out may still have been executed by Redis: its units stay counted (conservative, never an
//! over-admission).

mod claim;
mod limits;
mod protocol;

pub use claim::RedisClaim;

use crate::budget::{Budget, Burst, Cost, Limit};
use crate::clock::{Clock, ManualClock};
use crate::error::{Denied, Error};
use crate::limiter::{Permit, TokenBucketLimiter};
use crate::rate_limiter::RateLimiter;
use crate::usage::{BudgetUsage, Usage};
use limits::Config;
use protocol::{
    decode, push_limits, Ask, BucketReading, Charge, Events, Give, Grant, Head, Limits, ReadUsage,
    Request, SetLimits, Settle, Take, TakeReply, ARG_MAX, BUCKETS, REQUESTS, TOKENS,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;

/// The script (its SHA1 is computed once).
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
    /// ratekeeper epoch) instead of Redis `TIME`. Keys then expire an hour after their last
    /// write in real time (real expiry cannot follow a manual clock). For tests that compare
    /// with the in-process limiter.
    pub fn manual_clock(mut self, clock: Arc<ManualClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Connects and builds the limiter. [`Error::InvalidConfig`] for a period that is not a
    /// positive whole number of µs, a zero burst, or limits too fine for exact arithmetic;
    /// [`Error::Unavailable`] when Redis cannot be reached.
    pub async fn build(self) -> Result<RedisLimiter, Error> {
        let period_us = u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX);
        if period_us == 0 || period_us > ARG_MAX || self.period.subsec_nanos() % 1_000 != 0 {
            return Err(Error::InvalidConfig(
                "the redis backend needs a period of whole microseconds",
            ));
        }
        let config = Config {
            period_us,
            request_burst: self.request_burst,
            token_burst: self.token_burst,
        };
        let limits = config.limits(self.rpm, self.tpm)?;
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
        let state = format!("{}{{{}}}:s", self.prefix, self.name);
        Ok(RedisLimiter {
            inner: Arc::new(Inner {
                conn,
                issuer: state.as_str().into(),
                keys: [state, format!("{}{{{}}}:c", self.prefix, self.name)],
                config,
                limits: ArcSwap::from_pointee(limits),
                changing: tokio::sync::Mutex::new(()),
                timeout: self.timeout,
                on_failure: self.on_failure,
                clock: self.clock,
                repairs: AtomicU64::new(0),
                limits_stored: AtomicU64::new(0),
            }),
        })
    }
}

fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(format!("redis: {e}"))
}

/// A requests-and-tokens limiter for one budget key, kept in Redis and shared by every
/// process that uses the same key. The module docs say what is stored, for how long, and what
/// survives a restart; the script's own design is written at the top of
/// `src/redis_backend/gcra.lua`.
///
/// Cheap to clone (one shared connection that reconnects by itself).
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    /// The state key, which permits carry: a permit settles only on its own key.
    issuer: Arc<str>,
    keys: [String; 2],
    config: Config,
    /// The limits this limiter sends with every call: its last `set_limit`, else those it was
    /// built with. Read without a lock on every call; replaced whole by a limit change.
    limits: ArcSwap<Limits>,
    /// Serialises limit changes, so that the limits stored here and the last ones sent to
    /// Redis are the same. Never taken by a decision.
    changing: tokio::sync::Mutex<()>,
    timeout: Duration,
    on_failure: OnFailure,
    clock: Option<Arc<ManualClock>>,
    repairs: AtomicU64,
    limits_stored: AtomicU64,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("keys", &self.inner.keys)
            .field("limits", &self.sent_limits())
            .field("repairs", &self.repairs())
            .finish_non_exhaustive()
    }
}

/// Proof of an admission by a [`RedisLimiter`]; settle it with the actual token count on a
/// limiter of the same key.
#[derive(Debug)]
pub struct RedisPermit {
    tokens: u64,
    issuer: Arc<str>,
    issued: Issued,
}

#[derive(Debug)]
enum Issued {
    /// Granted by the script.
    Redis(Grant),
    /// Admitted by the local fail-open limiter (settled there).
    Local(Permit, Arc<TokenBucketLimiter>),
}

impl RedisPermit {
    /// The tokens this permit was admitted for (the estimate).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The Redis time (µs since 2025-01-01T00:00:00Z) at which the caller was released (for a
    /// waiter, the deadline it slept until), or `None` for a permit of the fail-open local
    /// limiter. For auditing admissions across replicas.
    pub fn admitted_at_us(&self) -> Option<u64> {
        match &self.issued {
            Issued::Redis(g) => Some(g.release_us),
            Issued::Local(..) => None,
        }
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

    /// The two Redis keys of this budget: the state and the stored limits.
    pub fn keys(&self) -> (&str, &str) {
        (&self.inner.keys[0], &self.inner.keys[1])
    }

    /// How many of this limiter's calls found corrupt state or corrupt limits in Redis and
    /// repaired them (closed: the state as fully used, the limits from this limiter's). For
    /// an alert: a healthy deployment never sees one.
    pub fn repairs(&self) -> u64 {
        self.inner.repairs.load(Relaxed)
    }

    /// How many of this limiter's calls found no limits stored (first use, a restart,
    /// `FLUSHALL`, a day idle) and stored this limiter's.
    pub fn limits_stored(&self) -> u64 {
        self.inner.limits_stored.load(Relaxed)
    }

    /// The script limits this limiter sends (its last `set_limit`, else its build).
    fn sent_limits(&self) -> Limits {
        **self.inner.limits.load()
    }

    /// One script call, bounded by the timeout; the reply decoded to `R`'s type.
    async fn call<R: Request>(&self, request: &R) -> Result<(Head, R::Reply), Error> {
        let inner = &self.inner;
        let time = match &inner.clock {
            Some(c) => (c.now() / 1_000).min(ARG_MAX).to_string(),
            None => String::new(),
        };
        let mut args = Vec::with_capacity(4 + 3 * BUCKETS + 8);
        args.push(BUCKETS as u64);
        push_limits(&self.inner.limits.load(), &mut args);
        request.args(&mut args);
        let mut invocation = script().prepare_invoke();
        invocation
            .key(&inner.keys[0])
            .key(&inner.keys[1])
            .arg(R::OP.name())
            .arg(time)
            .arg(&args[..]);
        let mut conn = inner.conn.clone();
        let reply: Vec<i64> =
            match tokio::time::timeout(inner.timeout, invocation.invoke_async(&mut conn)).await {
                Ok(reply) => reply.map_err(unavailable)?,
                Err(_) => return Err(Error::Unavailable("redis: call timed out".into())),
            };
        let (head, body) = decode::<R>(&reply)?;
        self.count(head.events);
        Ok((head, body))
    }

    fn count(&self, events: Events) {
        if events.state_repaired() || events.limits_repaired() {
            self.inner.repairs.fetch_add(1, Relaxed);
        }
        if events.limits_stored() {
            self.inner.limits_stored.fetch_add(1, Relaxed);
        }
    }

    /// The local limiter to fall back on, when failing open.
    fn fallback(&self) -> Option<&Arc<TokenBucketLimiter>> {
        match &self.inner.on_failure {
            OnFailure::Closed => None,
            OnFailure::Open(local) => Some(local),
        }
    }

    /// A take of `ask`: now, or for release within `max_wait_us`.
    async fn take(
        &self,
        ask: Ask,
        max_wait_us: u64,
        dry: bool,
    ) -> Result<(Head, TakeReply), Error> {
        self.call(&Take {
            ask,
            max_wait_us,
            dry,
        })
        .await
    }

    fn permit(&self, tokens: u64, grant: Grant) -> RedisPermit {
        RedisPermit {
            tokens,
            issuer: self.inner.issuer.clone(),
            issued: Issued::Redis(grant),
        }
    }

    /// Admits one request (no tokens) if the request budget allows it now. `false` also when
    /// Redis cannot be asked (failing closed).
    pub async fn allow(&self) -> bool {
        match self.take(Ask::request_only(), 0, false).await {
            Ok((_, r)) => matches!(r, TakeReply::Granted(_)),
            Err(_) => self.fallback().is_some_and(|l| l.allow()),
        }
    }

    /// Would `try_acquire(cost)` succeed now? Writes nothing (but a repair); `false` when
    /// Redis cannot be asked (failing closed). The two budgets count requests and total
    /// tokens (a cost's input and output together).
    pub async fn peek(&self, cost: impl Into<Cost>) -> bool {
        let tokens = cost.into().total();
        match self.take(Ask::request(tokens), 0, true).await {
            Ok((_, r)) => matches!(r, TakeReply::Granted(_)),
            Err(_) => self.fallback().is_some_and(|l| l.peek(tokens)),
        }
    }

    /// Admits one request and its tokens together, or neither; never waits.
    pub async fn try_acquire(&self, cost: impl Into<Cost>) -> Result<RedisPermit, Error> {
        let tokens = cost.into().total();
        match self.take(Ask::request(tokens), 0, false).await {
            Ok((_, TakeReply::Granted(g))) => Ok(self.permit(tokens, g)),
            Ok((head, r)) => Err(refusal(r, head.now_us, tokens, self.period())),
            Err(e) => {
                let local = self.fallback().ok_or(e)?;
                Ok(self.local_permit(tokens, local.try_acquire(tokens)?, local))
            }
        }
    }

    fn local_permit(
        &self,
        tokens: u64,
        permit: Permit,
        local: &Arc<TokenBucketLimiter>,
    ) -> RedisPermit {
        RedisPermit {
            tokens,
            issuer: self.inner.issuer.clone(),
            issued: Issued::Local(permit, local.clone()),
        }
    }

    /// Claims one request and `tokens` tokens for the earliest instant every bucket allows,
    /// whether or not that is now: the slot is placed in every bucket for that one release
    /// instant. Fails only when `tokens` exceeds the token burst
    /// ([`Error::InsufficientCapacity`]), when a bucket is saturated, or when Redis cannot be
    /// asked (a claim never falls back to the local limiter: [`acquire`](Self::acquire) does).
    pub async fn claim(&self, cost: impl Into<Cost>) -> Result<RedisClaim, Error> {
        self.claim_within(cost, Duration::MAX).await
    }

    /// [`claim`](Self::claim), but only if the release instant lies within `max_wait`:
    /// otherwise [`Error::RateLimitExceeded`] at once, and nothing is claimed. A caller with
    /// limited patience should ask this way rather than claim and cancel: a cancelled slot
    /// that waiters were placed behind cannot be given back.
    pub async fn claim_within(
        &self,
        cost: impl Into<Cost>,
        max_wait: Duration,
    ) -> Result<RedisClaim, Error> {
        let tokens = cost.into().total();
        let max_wait_us = u64::try_from(max_wait.as_micros()).unwrap_or(u64::MAX);
        match self.take(Ask::request(tokens), max_wait_us, false).await? {
            (head, TakeReply::Granted(g)) => Ok(RedisClaim::new(
                self.clone(),
                self.permit(tokens, g),
                head.now_us,
                g.release_us,
            )),
            (head, r) => Err(refusal(r, head.now_us, tokens, self.period())),
        }
    }

    /// Claims one request and `tokens` tokens, sleeps until the claimed slot's release instant
    /// and returns the permit. Dropping the future before then gives the slot back (in a task
    /// spawned on the current runtime).
    pub async fn acquire(&self, cost: impl Into<Cost>) -> Result<RedisPermit, Error> {
        self.acquire_within(cost, Duration::MAX).await
    }

    /// [`acquire`](Self::acquire), but only if the wait would end within `max_wait`: when
    /// the release instant lies further out, [`Error::RateLimitExceeded`] at once, without
    /// sleeping and without claiming anything. Fails open like `acquire`.
    pub async fn acquire_within(
        &self,
        cost: impl Into<Cost>,
        max_wait: Duration,
    ) -> Result<RedisPermit, Error> {
        let tokens = cost.into().total();
        match self.claim_within(tokens, max_wait).await {
            Ok(claim) => Ok(claim.wait().await),
            Err(e @ Error::Unavailable(_)) => {
                let local = self.fallback().ok_or(e)?;
                let permit = local.acquire_within(tokens, max_wait).await?;
                Ok(self.local_permit(tokens, permit, local))
            }
            Err(e) => Err(e),
        }
    }

    /// Waits until one request (no tokens) is admitted: `acquire(0)`.
    pub async fn wait(&self) -> Result<(), Error> {
        self.acquire(0u64).await.map(drop)
    }

    /// Charges `tokens` used at once (debt allowed) and waits until the token budget is out
    /// of debt. Dropping the future keeps the charge.
    pub async fn consume_tokens(&self, cost: impl Into<Cost>) -> Result<(), Error> {
        let tokens = cost.into().total();
        let (head, r) = match self
            .call(&Charge {
                ask: Ask::tokens_only(tokens),
            })
            .await
        {
            Ok(r) => r,
            Err(e) => return self.fallback().ok_or(e)?.consume_tokens(tokens).await,
        };
        tokio::time::sleep(Duration::from_micros(
            r.ready_us.saturating_sub(head.now_us),
        ))
        .await;
        Ok(())
    }

    /// Records `requests` and `tokens` used outside any permit (debt allowed), in one script
    /// call, without waiting.
    pub async fn charge(&self, requests: u64, cost: impl Into<Cost>) -> Result<(), Error> {
        let tokens = cost.into().total();
        let ask = Ask::usage(requests, tokens);
        match self.call(&Charge { ask }).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.fallback().ok_or(e)?.charge(requests, tokens);
                Ok(())
            }
        }
    }

    /// Settles a permit with the tokens actually used: a surplus is refunded under the refund
    /// rule (nothing after a limit change), a shortfall is charged as debt. A permit of
    /// another key is refused and changes nothing.
    pub async fn settle(&self, permit: RedisPermit, actual: impl Into<Cost>) -> Result<(), Error> {
        let actual_tokens = actual.into().total();
        if permit.issuer != self.inner.issuer {
            return Err(Error::ForeignPermit);
        }
        let estimate = permit.tokens;
        match permit.issued {
            Issued::Local(p, local) => local.settle(p, actual_tokens),
            Issued::Redis(grant) => {
                let (mut give, mut charge) = ([0; BUCKETS], [0; BUCKETS]);
                give[TOKENS] = estimate.saturating_sub(actual_tokens);
                charge[TOKENS] = actual_tokens.saturating_sub(estimate);
                if give != charge {
                    let give = Give::Units(give);
                    self.call(&Settle {
                        grant,
                        give,
                        charge,
                    })
                    .await?;
                }
                Ok(())
            }
        }
    }

    /// Gives back everything a permit took, gaps included (a cancelled claim).
    pub(crate) async fn give_back(&self, permit: &RedisPermit) -> Result<(), Error> {
        if let Issued::Redis(grant) = permit.issued {
            let settle = Settle {
                grant,
                give: Give::All,
                charge: [0; BUCKETS],
            };
            self.call(&settle).await?;
        }
        Ok(())
    }

    fn period(&self) -> Duration {
        Duration::from_micros(self.inner.config.period_us)
    }

    /// The limits in force as this limiter knows them (its last `set_limit`, else its build):
    /// requests and tokens per its period, with its burst policies.
    pub async fn limits(&self) -> Result<Vec<Limit>, Error> {
        let limits = self.sent_limits();
        let period = self.period();
        Ok(vec![
            Limit::requests(limits[REQUESTS].limit)
                .per(period)
                .burst(self.inner.config.request_burst),
            Limit::tokens(limits[TOKENS].limit)
                .per(period)
                .burst(self.inner.config.token_burst),
        ])
    }

    /// New counts for the budgets named (requests and tokens, per this limiter's period, with
    /// its burst policies); [`Error::InvalidConfig`] for any other budget, window or burst.
    pub async fn set_limits(&self, limits: &[Limit]) -> Result<(), Error> {
        let now = self.limits().await?;
        let (mut rpm, mut tpm) = (now[REQUESTS].count(), now[TOKENS].count());
        for l in limits {
            match now.iter().position(|m| m.same_budget(l)) {
                Some(REQUESTS) if l.burst_policy() == now[REQUESTS].burst_policy() => {
                    rpm = l.count()
                }
                Some(TOKENS) if l.burst_policy() == now[TOKENS].burst_policy() => tpm = l.count(),
                _ => return Err(Error::InvalidConfig("the limiter has no such budget")),
            }
        }
        self.set_limit(rpm, tpm).await
    }

    /// Both budgets now, by Redis time.
    pub async fn usage(&self) -> Result<Usage, Error> {
        match self.call(&ReadUsage).await {
            Ok((_, buckets)) => Ok(usage(&buckets)),
            Err(e) => Ok(self.fallback().ok_or(e)?.usage()),
        }
    }

    /// New limits for every replica's next decision (`0`: unlimited), stored in Redis with the
    /// units in use carried over. This limiter remembers them and re-applies them if Redis
    /// loses the stored limits. Fails (closed or open alike) when Redis cannot be asked: a
    /// limit change is never silently dropped.
    pub async fn set_limit(&self, rpm: u64, tpm: u64) -> Result<(), Error> {
        let limits = self.inner.config.limits(rpm, tpm)?;
        let _one_at_a_time = self.inner.changing.lock().await;
        self.inner.limits.store(Arc::new(limits));
        self.call(&SetLimits(limits)).await.map(drop)
    }
}

/// The budget of script bucket index `k`.
fn budget(k: usize) -> Budget {
    if k == REQUESTS {
        Budget::Requests
    } else {
        Budget::Tokens
    }
}

/// A usage report from the buckets as read (unlimited ones are left out).
fn usage(b: &[BucketReading; BUCKETS]) -> Usage {
    let limited = b.iter().enumerate().filter(|(_, r)| r.limits.limit > 0);
    Usage::new(limited.map(|(k, r)| BudgetUsage {
        budget: budget(k),
        window: Duration::from_micros(r.limits.window_us),
        limit: r.limits.limit,
        capacity: r.limits.burst,
        used: r.used,
        remaining: r.limits.burst.saturating_sub(r.used),
    }))
}

/// The error for a take that was not granted.
fn refusal(r: TakeReply, now_us: u64, tokens: u64, window: Duration) -> Error {
    match r {
        TakeReply::Never { bucket, burst } => Error::InsufficientCapacity {
            budget: budget(bucket),
            requested: if bucket == REQUESTS { 1 } else { tokens },
            capacity: burst,
        },
        // The Redis deadline itself, in ns since the ratekeeper epoch.
        TakeReply::Denied { bucket, ready_us } => Error::RateLimitExceeded(Denied::until(
            budget(bucket),
            window,
            ready_us.saturating_mul(1_000),
            now_us.saturating_mul(1_000),
        )),
        TakeReply::Granted(_) => Error::Unavailable("redis: a grant is not a refusal".into()),
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

    #[test]
    fn refusals_become_errors_without_panicking() {
        match refusal(
            TakeReply::Denied {
                bucket: REQUESTS,
                ready_us: 1_250,
            },
            1_000,
            5,
            Duration::from_secs(60),
        ) {
            Error::RateLimitExceeded(d) => {
                assert_eq!(d.budget(), Budget::Requests);
                assert_eq!(d.retry_after(), Duration::from_micros(250));
                assert_eq!(d.ready_at_ns(), 1_250_000);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            refusal(
                TakeReply::Never {
                    bucket: TOKENS,
                    burst: 100
                },
                0,
                500,
                Duration::from_secs(60),
            ),
            Error::InsufficientCapacity {
                budget: Budget::Tokens,
                requested: 500,
                capacity: 100
            }
        );
        // A deadline beyond the ns range saturates instead of wrapping.
        let far = refusal(
            TakeReply::Denied {
                bucket: TOKENS,
                ready_us: u64::MAX,
            },
            0,
            1,
            Duration::from_secs(60),
        );
        assert!(matches!(far, Error::RateLimitExceeded(d) if d.ready_at_ns() == u64::MAX));
    }

    #[test]
    fn usage_leaves_unlimited_buckets_out() {
        let reading = |used, limit, burst| BucketReading {
            used,
            limits: protocol::BucketLimits {
                limit,
                window_us: 60_000_000,
                burst,
            },
        };
        let u = usage(&[reading(3, 10, 10), reading(0, 0, 0)]);
        let r = u.requests().unwrap();
        assert_eq!((r.used, r.limit, r.remaining), (3, 10, 7));
        assert_eq!(r.window, Duration::from_secs(60));
        assert!(u.tokens().is_none(), "unlimited: not reported");
        // Debt beyond the burst leaves nothing, never a wrapped count.
        let u = usage(&[reading(12, 10, 10), reading(0, 0, 0)]);
        assert_eq!(u.requests().unwrap().remaining, 0);
    }
}
