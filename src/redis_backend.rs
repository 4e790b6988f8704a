//! A limiter whose buckets live in Redis, shared by every replica of a gateway.
//!
//! # Budget sets
//!
//! A limiter decides any set of budgets, as [`TokenBucketLimiter`] does: requests, total
//! tokens, input and output tokens, each with its own count, window and burst policy (up to
//! [`MAX_BUDGETS`](crate::MAX_BUDGETS)); [`RedisLimiter::builder`] makes the common requests
//! and tokens per minute. One admission of a [`Cost`] takes from every budget what
//! [`Budget`] counts of it, or from none. Replicas sharing a key must be built with the same
//! budgets in the same order: the script stores the bucket count with the limits (stored
//! limits for another count are rewritten as corrupt), but cannot tell one kind of budget
//! from another.
//!
//! # One script call per decision
//!
//! Each operation is one call of one Lua script (`EVALSHA`, falling back to `EVAL` after a
//! Redis restart empties the script cache). The script decides every bucket of a budget key
//! with the in-process limiter's GCRA rules, all or nothing; a denial writes nothing; a
//! settle gives back and charges every budget in one call. Scripts run atomically, so
//! replicas never race. Time comes from Redis `TIME` inside the script, never from a
//! replica's clock, so replicas with skewed clocks agree. The protocol and the arithmetic's
//! encoding are described once, at the top of `src/redis_backend/gcra.lua`; `protocol.rs`
//! holds the typed requests and replies.
//!
//! # Keys, expiry, and what survives a restart
//!
//! * `<prefix>{name}:s`, the state: expires once every bucket is full again, so idle keys
//!   cost no memory.
//! * `<prefix>{name}:c`, the limits in force (from [`set_limits`](RedisLimiter::set_limits),
//!   or, until one, the limits of the first replica that counted anything): expires a day
//!   after it was stored or last refreshed (a write to the state refreshes it once half a day
//!   has passed), and never before the state counted in them.
//!
//! The hash tag `{name}` puts both on one Redis Cluster slot. A Redis restart without
//! persistence, a `FLUSHALL` or an expiry loses both. Usage then starts from full buckets
//! (waiters already sleeping are released at their deadlines, which the new state cannot
//! know), and the limits come back with the next call: every call carries the limits its
//! limiter last set (or was built with), and the script stores them when it finds none. A
//! replica that never changed its limits re-applies its build-time ones, so build replicas
//! alike, or change the limits on each (learning from headers does).
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
//! closed** by default: [`Error::Unavailable`], `allow`/`peek` return `false`, nothing is
//! admitted. [`RedisBuilder::fail_open`] instead hands such calls to a local
//! [`TokenBucketLimiter`] (size it as this replica's share of the budget). A call that timed
//! out may still have been executed by Redis: its units stay counted (conservative, never an
//! over-admission).

mod claim;
mod limits;
mod protocol;

pub use claim::RedisClaim;

use crate::budget::{Budget, Cost, Limit, Spec, MAX_BUDGETS};
use crate::clock::{Clock, ManualClock};
use crate::error::{Denied, Error};
use crate::limiter::{Permit, TokenBucketLimiter};
use crate::rate_limiter::RateLimiter;
use crate::usage::{BudgetUsage, Usage};
use arc_swap::ArcSwap;
use limits::Budgets;
use protocol::{
    decode, push_limits, Ask, BucketReading, Charge, Events, Give, Grant, Head, ReadUsage, Request,
    SetLimits, Settle, Take, TakeReply, ARG_MAX,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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

/// Configures a [`RedisLimiter`]; made by [`RedisLimiter::builder`] or
/// [`RedisLimiter::with_limits`].
#[derive(Clone, Debug)]
pub struct RedisBuilder {
    url: String,
    name: String,
    prefix: String,
    spec: Spec,
    timeout: Duration,
    on_failure: OnFailure,
    clock: Option<Arc<ManualClock>>,
}

impl RedisBuilder {
    crate::budget::spec_methods!();

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

    /// Test hook: feed the script this clock's reading (floored to whole µs, counted from the
    /// ratekeeper epoch) instead of Redis `TIME`. Keys then expire an hour after their last
    /// write in real time (real expiry cannot follow a manual clock). For tests that compare
    /// with the in-process limiter; never for replicas sharing a key in production.
    #[doc(hidden)]
    pub fn manual_clock(mut self, clock: Arc<ManualClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Connects and builds the limiter. [`Error::InvalidConfig`] for no budget, more than
    /// [`MAX_BUDGETS`](crate::MAX_BUDGETS), two limits of one budget and window, a window
    /// that is not a positive whole number of µs, a zero burst, or limits too fine for exact
    /// arithmetic; [`Error::Unavailable`] when Redis cannot be reached.
    pub async fn build(self) -> Result<RedisLimiter, Error> {
        let budgets = Budgets::new(self.spec.into_limits()?)?;
        let n = budgets.limits.len();
        let mut kinds = [Budget::Requests; MAX_BUDGETS];
        let mut windows = [Duration::ZERO; MAX_BUDGETS];
        for (k, l) in budgets.limits.iter().enumerate() {
            kinds[k] = l.budget();
            windows[k] = l.window();
        }
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
                n,
                kinds,
                windows,
                budgets: ArcSwap::from_pointee(budgets),
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

/// A limiter for one budget key, kept in Redis and shared by every process that uses the
/// same key: any set of budgets (requests, tokens, input and output tokens, each per its own
/// window), decided together. The module docs say what is stored, for how long, and what
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
    /// The number of budgets, and each one's kind and window (fixed for the limiter's life;
    /// a limit change keeps them).
    n: usize,
    kinds: [Budget; MAX_BUDGETS],
    windows: [Duration; MAX_BUDGETS],
    /// The limits this limiter sends with every call: its last limit change, else those it
    /// was built with. Read without a lock on every call; replaced whole by a limit change.
    budgets: ArcSwap<Budgets>,
    /// Serialises limit changes, so that the limits stored here and the last ones sent to
    /// Redis are the same, and a change made of a few budgets loses no other. Never taken by
    /// a decision.
    changing: tokio::sync::Mutex<()>,
    timeout: Duration,
    on_failure: OnFailure,
    clock: Option<Arc<ManualClock>>,
    repairs: AtomicU64,
    limits_stored: AtomicU64,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let budgets = self.inner.budgets.load();
        let limits: Vec<String> = budgets.limits.iter().map(|l| l.to_string()).collect();
        f.debug_struct("RedisLimiter")
            .field("keys", &self.inner.keys)
            .field("limits", &limits)
            .field("repairs", &self.repairs())
            .finish_non_exhaustive()
    }
}

/// Proof of an admission by a [`RedisLimiter`]; settle it with the actual cost on a limiter
/// of the same key.
#[derive(Debug)]
pub struct RedisPermit {
    cost: Cost,
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
    /// The cost this permit was admitted for (the estimate).
    pub fn cost(&self) -> Cost {
        self.cost
    }

    /// The tokens this permit was admitted for, input and output together.
    pub fn tokens(&self) -> u64 {
        self.cost.total()
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
        Self::with_limits(url, name, [Limit::requests(rpm), Limit::tokens(tpm)])
    }

    /// A builder for the budget key `name` with any set of budgets, decided together:
    ///
    /// ```no_run
    /// use ratekeeper::{Cost, Limit, RedisLimiter};
    ///
    /// # async fn f() -> Result<(), ratekeeper::Error> {
    /// // An Anthropic-style key: requests, input and output tokens per minute.
    /// let key = RedisLimiter::with_limits(
    ///     "redis://127.0.0.1:6379/",
    ///     "anthropic-key-1",
    ///     [
    ///         Limit::requests(50),
    ///         Limit::input_tokens(40_000),
    ///         Limit::output_tokens(8_000),
    ///     ],
    /// )
    /// .build()
    /// .await?;
    /// // Admit on the prompt and the request's max_tokens; settle with what the response says.
    /// let permit = key.try_acquire(Cost::new(1_200, 1_024)).await?;
    /// key.settle(permit, Cost::new(1_200, 310)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_limits(
        url: impl Into<String>,
        name: impl Into<String>,
        limits: impl IntoIterator<Item = Limit>,
    ) -> RedisBuilder {
        RedisBuilder {
            url: url.into(),
            name: name.into(),
            prefix: "ratekeeper:".into(),
            spec: Spec::new(limits),
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

    /// What `requests` requests of `cost` take from each budget; every budget consulted
    /// (`all`), or only those asked for something.
    fn ask(&self, requests: u64, cost: Cost, all: bool) -> Ask {
        let inner = &self.inner;
        let mut units = [0; MAX_BUDGETS];
        for (u, kind) in units.iter_mut().zip(&inner.kinds[..inner.n]) {
            *u = kind.units(requests, cost);
        }
        Ask::new(inner.n, units, all)
    }

    /// One script call, bounded by the timeout; the reply decoded to `R`'s type.
    async fn call<R: Request>(&self, request: &R) -> Result<(Head, R::Reply), Error> {
        let inner = &self.inner;
        let time = match &inner.clock {
            Some(c) => (c.now() / 1_000).min(ARG_MAX).to_string(),
            None => String::new(),
        };
        let mut args = Vec::with_capacity(1 + 3 * inner.n + 4 + 5 * inner.n);
        args.push(inner.n as u64);
        push_limits(&inner.budgets.load().script, &mut args);
        request.args(inner.n, &mut args);
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
        let (head, body) = decode::<R>(&reply, inner.n)?;
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

    fn permit(&self, cost: Cost, grant: Grant) -> RedisPermit {
        RedisPermit {
            cost,
            issuer: self.inner.issuer.clone(),
            issued: Issued::Redis(grant),
        }
    }

    /// The error for a take of `ask` that was not granted.
    fn refusal(&self, r: TakeReply, now_us: u64, ask: &Ask) -> Error {
        refusal(r, now_us, ask, &self.inner.kinds, &self.inner.windows)
    }

    /// Admits one request (no tokens) if every request budget allows it now (the others are
    /// not consulted). `false` also when Redis cannot be asked (failing closed).
    pub async fn allow(&self) -> bool {
        match self.take(self.ask(1, Cost::ZERO, false), 0, false).await {
            Ok((_, r)) => matches!(r, TakeReply::Granted(_)),
            Err(_) => self.fallback().is_some_and(|l| l.allow()),
        }
    }

    /// Would `try_acquire(cost)` succeed now? Writes nothing (but a repair); `false` when
    /// Redis cannot be asked (failing closed).
    pub async fn peek(&self, cost: impl Into<Cost>) -> bool {
        let cost = cost.into();
        match self.take(self.ask(1, cost, true), 0, true).await {
            Ok((_, r)) => matches!(r, TakeReply::Granted(_)),
            Err(_) => self.fallback().is_some_and(|l| l.peek(cost)),
        }
    }

    /// Admits one request of `cost` on every budget together, or on none; never waits.
    pub async fn try_acquire(&self, cost: impl Into<Cost>) -> Result<RedisPermit, Error> {
        let cost = cost.into();
        let ask = self.ask(1, cost, true);
        match self.take(ask, 0, false).await {
            Ok((_, TakeReply::Granted(g))) => Ok(self.permit(cost, g)),
            Ok((head, r)) => Err(self.refusal(r, head.now_us, &ask)),
            Err(e) => {
                let local = self.fallback().ok_or(e)?;
                Ok(self.local_permit(cost, local.try_acquire(cost)?, local))
            }
        }
    }

    fn local_permit(
        &self,
        cost: Cost,
        permit: Permit,
        local: &Arc<TokenBucketLimiter>,
    ) -> RedisPermit {
        RedisPermit {
            cost,
            issuer: self.inner.issuer.clone(),
            issued: Issued::Local(permit, local.clone()),
        }
    }

    /// Claims one request of `cost` for the earliest instant every budget allows, whether or
    /// not that is now: the slot is placed in every budget for that one release instant.
    /// Fails only when the cost exceeds a budget's burst ([`Error::InsufficientCapacity`]),
    /// when a budget is saturated, or when Redis cannot be asked (a claim never falls back to
    /// the local limiter: [`acquire`](Self::acquire) does).
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
        let cost = cost.into();
        let max_wait_us = u64::try_from(max_wait.as_micros()).unwrap_or(u64::MAX);
        let ask = self.ask(1, cost, true);
        match self.take(ask, max_wait_us, false).await? {
            (head, TakeReply::Granted(g)) => Ok(RedisClaim::new(
                self.clone(),
                self.permit(cost, g),
                head.now_us,
                g.release_us,
            )),
            (head, r) => Err(self.refusal(r, head.now_us, &ask)),
        }
    }

    /// Claims one request of `cost`, sleeps until the claimed slot's release instant and
    /// returns the permit. Dropping the future before then gives the slot back (in a task
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
        let cost = cost.into();
        match self.claim_within(cost, max_wait).await {
            Ok(claim) => Ok(claim.wait().await),
            Err(e @ Error::Unavailable(_)) => {
                let local = self.fallback().ok_or(e)?;
                let permit = local.acquire_within(cost, max_wait).await?;
                Ok(self.local_permit(cost, permit, local))
            }
            Err(e) => Err(e),
        }
    }

    /// Waits until one request (no tokens) is admitted: `acquire(0)`.
    pub async fn wait(&self) -> Result<(), Error> {
        self.acquire(Cost::ZERO).await.map(drop)
    }

    /// Charges `cost` used at once to every budget that counts some of it (debt allowed) and
    /// waits until each is out of debt. Dropping the future keeps the charge.
    pub async fn consume_tokens(&self, cost: impl Into<Cost>) -> Result<(), Error> {
        let cost = cost.into();
        let ask = self.ask(0, cost, false);
        let (head, r) = match self.call(&Charge { ask }).await {
            Ok(r) => r,
            Err(e) => return self.fallback().ok_or(e)?.consume_tokens(cost).await,
        };
        tokio::time::sleep(Duration::from_micros(
            r.ready_us.saturating_sub(head.now_us),
        ))
        .await;
        Ok(())
    }

    /// Records `requests` requests of `cost` used outside any permit (debt allowed), in one
    /// script call, without waiting.
    pub async fn charge(&self, requests: u64, cost: impl Into<Cost>) -> Result<(), Error> {
        let cost = cost.into();
        let ask = self.ask(requests, cost, false);
        match self.call(&Charge { ask }).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.fallback().ok_or(e)?.charge(requests, cost);
                Ok(())
            }
        }
    }

    /// Settles a permit with the actual cost, budget by budget, in one script call: a surplus
    /// is refunded under the refund rule (nothing after a limit change), a shortfall is
    /// charged as debt. A permit of another key is refused and changes nothing.
    pub async fn settle(&self, permit: RedisPermit, actual: impl Into<Cost>) -> Result<(), Error> {
        let actual = actual.into();
        if permit.issuer != self.inner.issuer {
            return Err(Error::ForeignPermit);
        }
        match permit.issued {
            Issued::Local(p, local) => local.settle(p, actual),
            Issued::Redis(grant) => {
                let (mut give, mut charge) = ([0; MAX_BUDGETS], [0; MAX_BUDGETS]);
                let kinds = &self.inner.kinds[..self.inner.n];
                for (k, kind) in kinds.iter().enumerate() {
                    let (estimate, used) = (kind.units(1, permit.cost), kind.units(1, actual));
                    give[k] = estimate.saturating_sub(used);
                    charge[k] = used.saturating_sub(estimate);
                }
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
                charge: [0; MAX_BUDGETS],
            };
            self.call(&settle).await?;
        }
        Ok(())
    }

    /// The limits in force as this limiter knows them (its last limit change, else its
    /// build), one per budget, in the order given at build.
    pub async fn limits(&self) -> Result<Vec<Limit>, Error> {
        Ok(self.inner.budgets.load().limits.clone())
    }

    /// New limits for some budgets, for every replica's next decision: each replaces the
    /// limit of the same budget and window (its count, `0` for unlimited, and its burst
    /// policy); all take effect together, stored in Redis with the units in use carried
    /// over. [`Error::InvalidConfig`] (and nothing changed) for a budget and window this
    /// limiter does not have. This limiter remembers them and re-applies them if Redis loses
    /// the stored limits. Fails (closed or open alike) when Redis cannot be asked: a limit
    /// change is never silently dropped.
    pub async fn set_limits(&self, limits: &[Limit]) -> Result<(), Error> {
        let _one_at_a_time = self.inner.changing.lock().await;
        let next = self.inner.budgets.load().with(limits)?;
        self.install(next).await
    }

    /// New counts for the first request and the first total-tokens budget (`0`: unlimited),
    /// windows and burst policies kept, as [`set_limits`](Self::set_limits) stores them.
    /// [`Error::InvalidConfig`] for a count other than 0 for a kind of budget this limiter
    /// does not have.
    pub async fn set_limit(&self, rpm: u64, tpm: u64) -> Result<(), Error> {
        let _one_at_a_time = self.inner.changing.lock().await;
        let next = self.inner.budgets.load().with_counts(rpm, tpm)?;
        self.install(next).await
    }

    /// Keeps `next` as the limits to send, and stores them in Redis. The caller holds
    /// `changing`.
    async fn install(&self, next: Budgets) -> Result<(), Error> {
        let script = next.script;
        self.inner.budgets.store(Arc::new(next));
        self.call(&SetLimits(script)).await.map(drop)
    }

    /// Every limited budget now, by Redis time.
    pub async fn usage(&self) -> Result<Usage, Error> {
        match self.call(&ReadUsage).await {
            Ok((_, buckets)) => Ok(usage(&self.inner.kinds, &buckets[..self.inner.n])),
            Err(e) => Ok(self.fallback().ok_or(e)?.usage()),
        }
    }
}

/// The error for a take of `ask` that was not granted: the budget that refused (bucket `k` is
/// of kind `kinds[k]`, per `windows[k]`), with its window and wait.
fn refusal(
    r: TakeReply,
    now_us: u64,
    ask: &Ask,
    kinds: &[Budget; MAX_BUDGETS],
    windows: &[Duration; MAX_BUDGETS],
) -> Error {
    match r {
        TakeReply::Never { bucket, burst } => Error::InsufficientCapacity {
            budget: kinds[bucket],
            requested: ask.units[bucket],
            capacity: burst,
        },
        // The Redis deadline itself, in ns since the ratekeeper epoch.
        TakeReply::Denied { bucket, ready_us } => Error::RateLimitExceeded(Denied::until(
            kinds[bucket],
            windows[bucket],
            ready_us.saturating_mul(1_000),
            now_us.saturating_mul(1_000),
        )),
        TakeReply::Granted(_) => Error::Unavailable("redis: a grant is not a refusal".into()),
    }
}

/// A usage report from the buckets as read, each of the kind in `kinds` at its index
/// (unlimited ones are left out).
fn usage(kinds: &[Budget], buckets: &[BucketReading]) -> Usage {
    let limited = buckets
        .iter()
        .zip(kinds)
        .filter(|(r, _)| r.limits.limit > 0);
    Usage::new(limited.map(|(r, &budget)| BudgetUsage {
        budget,
        window: Duration::from_micros(r.limits.window_us),
        limit: r.limits.limit,
        capacity: r.limits.burst,
        used: r.used,
        remaining: r.limits.burst.saturating_sub(r.used),
    }))
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

    fn acquire_within(
        &self,
        cost: impl Into<Cost> + Send,
        max_wait: Duration,
    ) -> impl Future<Output = Result<RedisPermit, Error>> + Send {
        RedisLimiter::acquire_within(self, cost.into(), max_wait)
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
    use protocol::BucketLimits;

    #[test]
    fn refusals_name_their_budget_and_window_without_panicking() {
        let mut kinds = [Budget::Requests; MAX_BUDGETS];
        let mut windows = [Duration::from_secs(60); MAX_BUDGETS];
        kinds[1] = Budget::InputTokens;
        (kinds[2], windows[2]) = (Budget::Requests, Duration::from_secs(86_400));
        let mut units = [0; MAX_BUDGETS];
        units[..3].copy_from_slice(&[1, 500, 1]);
        let ask = Ask::new(3, units, true);
        let refuse = |r| refusal(r, 1_000, &ask, &kinds, &windows);
        match refuse(TakeReply::Denied {
            bucket: 2,
            ready_us: 1_250,
        }) {
            Error::RateLimitExceeded(d) => {
                assert_eq!(d.budget(), Budget::Requests);
                assert_eq!(d.window(), Duration::from_secs(86_400), "the daily budget");
                assert_eq!(d.retry_after(), Duration::from_micros(250));
                assert_eq!(d.ready_at_ns(), 1_250_000);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            refuse(TakeReply::Never {
                bucket: 1,
                burst: 100
            }),
            Error::InsufficientCapacity {
                budget: Budget::InputTokens,
                requested: 500,
                capacity: 100
            }
        );
        // A deadline beyond the ns range saturates instead of wrapping.
        let far = refuse(TakeReply::Denied {
            bucket: 1,
            ready_us: u64::MAX,
        });
        assert!(matches!(far, Error::RateLimitExceeded(d) if d.ready_at_ns() == u64::MAX));
    }

    #[test]
    fn usage_names_each_budget_and_leaves_unlimited_ones_out() {
        let reading = |used, limit, window_us, burst| BucketReading {
            used,
            limits: BucketLimits {
                limit,
                window_us,
                burst,
            },
        };
        let kinds = [Budget::Requests, Budget::OutputTokens, Budget::Requests];
        let u = usage(
            &kinds,
            &[
                reading(3, 10, 60_000_000, 10),
                reading(0, 0, 60_000_000, 0),
                reading(12, 100, 86_400_000_000, 10),
            ],
        );
        assert_eq!(u.budgets().count(), 2, "unlimited: not reported");
        assert!(u.get(Budget::OutputTokens).is_none());
        // The tightest request budget answers for requests: the daily one, in debt, with
        // nothing left (never a wrapped count).
        let r = u.requests().unwrap();
        assert_eq!((r.used, r.limit, r.remaining), (12, 100, 0));
        assert_eq!(r.window, Duration::from_secs(86_400));
    }
}
