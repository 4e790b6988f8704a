//! The two-bucket limiter: one request bucket and one token bucket, decided together.
//!
//! # Order of an admission
//!
//! `try_acquire(n)` decides the token bucket first *without writing*, then admits on the
//! request bucket, then commits the token decision. If the token commit loses a race and the
//! fresh decision refuses, the request slot is given back (the rollback path). Deciding tokens
//! first means the common denial (tokens short) writes nothing at all.
//!
//! # No mixed admissions
//!
//! `set_limit` gives both buckets the same new limits version, one after the other. Every
//! grant carries the version it was decided under; an admission whose two grants carry
//! different versions straddled a limit change, so it is given back and decided again. Every
//! admission that returns is therefore explained wholly by one version of the limits.

use crate::bucket::{Bucket, Grant, Limits, Refusal};
use crate::clock::{Clock, MonotonicClock};
use crate::error::{Budget, Denied, Error};
use crate::gcra::Rate;
use crate::sync::{lock, Mutex};
use std::time::Duration;

/// One minute in nanoseconds: the default period (RPM, TPM).
const MINUTE_NS: u64 = 60_000_000_000;

/// How large a bucket's burst is, as a function of its limit.
///
/// The policy, not the number, is what a limiter keeps: after `set_limit` a window stays a
/// window (scaled to the new limit), and an explicit count stays that count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Burst {
    /// The whole period's worth: a bucket of `limit` units (the default).
    #[default]
    Period,
    /// At most this window's worth at once: `floor(limit × window / period)`, at least 1.
    /// Anthropic enforces "60 RPM" as one per second: `Burst::Window(Duration::from_secs(1))`.
    Window(Duration),
    /// Exactly this many units.
    Units(u64),
}

impl Burst {
    /// The burst in units for `limit` per `period_ns` (shared with the Redis backend).
    pub(crate) fn units(self, limit: u64, period_ns: u64) -> u64 {
        match self {
            Burst::Period => limit,
            Burst::Window(w) => {
                let w = w.as_nanos().min(u64::MAX as u128);
                let b = limit as u128 * w / period_ns as u128;
                b.clamp(1, u64::MAX as u128) as u64
            }
            Burst::Units(n) => n,
        }
    }

    /// Rejects policies that admit nothing.
    pub(crate) fn check(self) -> Result<(), Error> {
        match self {
            Burst::Units(0) => Err(Error::InvalidConfig("a burst of zero units admits nothing")),
            Burst::Window(w) if w.is_zero() => {
                Err(Error::InvalidConfig("a zero burst window admits nothing"))
            }
            _ => Ok(()),
        }
    }
}

/// A snapshot of both budgets, as the Go interface's `Usage`.
///
/// `*_used` counts units in use now, to the nearest whole unit (up to the burst; beyond it when
/// the token bucket carries debt); `*_remaining` is what a call could take now, rounded down. A `try_acquire(t)` at the same instant
/// succeeds iff `requests_remaining >= 1 && tokens_remaining >= t`. An unlimited budget reports
/// `limit == 0`, `used == 0` and `remaining == u64::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Requests in use.
    pub requests_used: u64,
    /// The configured requests per period (0: unlimited).
    pub requests_limit: u64,
    /// Tokens in use, including debt.
    pub tokens_used: u64,
    /// The configured tokens per period (0: unlimited).
    pub tokens_limit: u64,
    /// Requests that could be admitted now.
    pub requests_remaining: u64,
    /// Tokens that could be admitted now.
    pub tokens_remaining: u64,
}

/// Proof of an admission: one request and an estimated number of tokens.
///
/// Hand it back to [`TokenBucketLimiter::settle`] with the actual token count once known.
/// Dropping it keeps the estimate as the usage. Not `Clone`: a permit settles once.
#[derive(Debug, PartialEq, Eq)]
pub struct Permit {
    pub(crate) tokens: u64,
    pub(crate) request: Grant,
    pub(crate) token: Grant,
}

impl Permit {
    /// The tokens this permit was admitted for (the estimate).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

/// What `set_limit` needs to recompute limits: serialised by the limiter's mutex. No decision
/// takes it; only a call that met a change halfway between the two buckets waits on it for
/// the change to finish ([`TokenBucketLimiter::await_limit_change`]).
#[derive(Debug)]
struct Config {
    period_ns: u64,
    request_burst: Burst,
    token_burst: Burst,
    version: u64,
    /// The reading the last change took effect at: changes take effect in order of time.
    changed_at: u64,
}

impl Config {
    fn limits(&self, limit: u64, burst: Burst) -> Limits {
        match Rate::new(limit, self.period_ns) {
            None => Limits::UNLIMITED,
            Some(rate) => {
                let burst = burst.units(limit, self.period_ns);
                Limits {
                    rate: Some(rate.fit(burst)),
                    burst,
                    limit,
                }
            }
        }
    }
}

/// A lock-free rate limiter over two budgets: requests and tokens per period.
///
/// Each budget is a GCRA bucket whose whole state is one `AtomicU64`; admissions are a few
/// loads and compare-exchanges, and a denial writes nothing. See the [crate docs](crate) for
/// an example.
pub struct TokenBucketLimiter<C: Clock = MonotonicClock> {
    pub(crate) requests: Bucket,
    pub(crate) tokens: Bucket,
    config: Mutex<Config>,
    pub(crate) clock: C,
}

impl<C: Clock> std::fmt::Debug for TokenBucketLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBucketLimiter")
            .field("requests", &self.requests.view().limits)
            .field("tokens", &self.tokens.view().limits)
            .finish_non_exhaustive()
    }
}

/// Configures a [`TokenBucketLimiter`]; made by [`TokenBucketLimiter::builder`].
#[derive(Debug, Clone)]
pub struct Builder<C> {
    rpm: u64,
    tpm: u64,
    period: Duration,
    request_burst: Burst,
    token_burst: Burst,
    clock: C,
}

impl<C: Clock> Builder<C> {
    /// The period the two limits are counted over (default: one minute).
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// The request bucket's burst policy (default: [`Burst::Period`]).
    pub fn request_burst(mut self, burst: Burst) -> Self {
        self.request_burst = burst;
        self
    }

    /// The token bucket's burst policy (default: [`Burst::Period`]).
    pub fn token_burst(mut self, burst: Burst) -> Self {
        self.token_burst = burst;
        self
    }

    /// The clock the plain (non-`_at`) methods read.
    pub fn clock<D: Clock>(self, clock: D) -> Builder<D> {
        Builder {
            rpm: self.rpm,
            tpm: self.tpm,
            period: self.period,
            request_burst: self.request_burst,
            token_burst: self.token_burst,
            clock,
        }
    }

    /// Builds the limiter, both buckets full.
    pub fn build(self) -> Result<TokenBucketLimiter<C>, Error> {
        let period_ns = u64::try_from(self.period.as_nanos())
            .map_err(|_| Error::InvalidConfig("period longer than u64::MAX nanoseconds"))?;
        if period_ns == 0 {
            return Err(Error::InvalidConfig("zero period"));
        }
        self.request_burst.check()?;
        self.token_burst.check()?;
        let config = Config {
            period_ns,
            request_burst: self.request_burst,
            token_burst: self.token_burst,
            version: 0,
            changed_at: 0,
        };
        let r = config.limits(self.rpm, config.request_burst);
        let t = config.limits(self.tpm, config.token_burst);
        Ok(TokenBucketLimiter {
            requests: Bucket::new(r),
            tokens: Bucket::new(t),
            config: Mutex::new(config),
            clock: self.clock,
        })
    }
}

impl TokenBucketLimiter<MonotonicClock> {
    /// `rpm` requests and `tpm` tokens per minute, each with a burst of the full minute's
    /// worth, both buckets full. `0` means unlimited for that budget.
    pub fn new(rpm: u64, tpm: u64) -> Self {
        Self::builder(rpm, tpm)
            .build()
            .expect("the default configuration is valid")
    }

    /// A builder for other periods, bursts and clocks.
    pub fn builder(rpm: u64, tpm: u64) -> Builder<MonotonicClock> {
        Builder {
            rpm,
            tpm,
            period: Duration::from_nanos(MINUTE_NS),
            request_burst: Burst::Period,
            token_burst: Burst::Period,
            clock: MonotonicClock::new(),
        }
    }
}

impl<C: Clock> TokenBucketLimiter<C> {
    /// The clock reading for an admission: the one clock read of the hot path.
    #[inline]
    fn now(&self) -> u64 {
        self.clock.now()
    }

    /// A reading no older than any admission reflected in a state loaded just before: the
    /// later of `now` and a fresh reading of the clock, plus the clock's
    /// [`skew_ns`](Clock::skew_ns). Refunds and limit changes need one to stay safe (a later
    /// reading only gives back less, or carries more units over as used).
    #[inline]
    pub(crate) fn fresh_time(&self, now: u64) -> u64 {
        now.max(self.clock.now())
            .saturating_add(self.clock.skew_ns())
    }

    /// The limiter's clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Admits one request (no tokens) if the request budget allows it now.
    #[inline]
    pub fn allow(&self) -> bool {
        self.allow_at(self.now())
    }

    /// [`allow`](Self::allow) at clock reading `now` (nanoseconds).
    #[inline]
    pub fn allow_at(&self, now: u64) -> bool {
        self.requests.admit(now, 1).is_ok()
    }

    /// Admits one request and `tokens` tokens together, or neither.
    ///
    /// On denial, [`Error::RateLimitExceeded`] says which budget was short and how long until
    /// the same call could succeed; more tokens than the token burst is
    /// [`Error::InsufficientCapacity`], at once.
    #[inline]
    pub fn try_acquire(&self, tokens: u64) -> Result<Permit, Error> {
        self.try_acquire_at(self.now(), tokens)
    }

    /// [`try_acquire`](Self::try_acquire) at clock reading `now`.
    #[inline]
    pub fn try_acquire_at(&self, now: u64, tokens: u64) -> Result<Permit, Error> {
        loop {
            let ticket = match self.tokens.view().decide(now, tokens) {
                Ok(t) => t,
                Err(r) => return Err(self.denied(r, now, tokens)),
            };
            let request = match self.requests.admit(now, 1) {
                Ok(g) => g,
                Err(r) => return Err(refusal_error(Budget::Requests, r, now, 1)),
            };
            let token = match self.tokens.commit(ticket, now, tokens) {
                Ok(g) => g,
                Err(r) => {
                    // Tokens ran out between decision and commit: the rollback path.
                    self.requests.refund(request, 1, || self.fresh_time(now));
                    return Err(self.denied(r, now, tokens));
                }
            };
            if request.version == token.version {
                return Ok(Permit {
                    tokens,
                    request,
                    token,
                });
            }
            // The two grants straddle a limit change: undo, let the change finish, and decide
            // again under one version.
            self.give_back(request, token, tokens, now);
            self.await_limit_change();
        }
    }

    /// Waits until a `set_limit` seen halfway between the two buckets has finished, by taking
    /// the lock it holds throughout. Retrying at once would keep writing the bucket the setter
    /// is trying to switch, and the two could chase each other indefinitely (a loom model
    /// found this livelock). Only a caller that met a change in progress gets here, and it
    /// has to wait for the setter either way: blocked on the lock it sleeps instead of
    /// spinning while a descheduled setter holds things up. (A spin on the generations was
    /// equivalent but left loom unable to explore two spinning waiters beyond one
    /// preemption.)
    #[cold]
    pub(crate) fn await_limit_change(&self) {
        drop(lock(&self.config));
    }

    /// Gives back a request grant and a token grant under the safe refund rule.
    pub(crate) fn give_back(&self, request: Grant, token: Grant, tokens: u64, now: u64) {
        self.requests.refund(request, 1, || self.fresh_time(now));
        self.tokens.refund(token, tokens, || self.fresh_time(now));
    }

    /// The error for a token refusal, naming the budget with the longer wait. Cold path.
    #[cold]
    fn denied(&self, r: Refusal, now: u64, tokens: u64) -> Error {
        let err = refusal_error(Budget::Tokens, r, now, tokens);
        match (err, self.requests.view().decide(now, 1)) {
            (Error::RateLimitExceeded(t), Err(Refusal::Wait { rate, target })) => {
                Error::RateLimitExceeded(t.also(Budget::Requests, rate, target))
            }
            (err, _) => err,
        }
    }

    /// Would `try_acquire(tokens)` succeed now? Reads only.
    #[inline]
    pub fn reserve(&self, tokens: u64) -> bool {
        self.reserve_at(self.now(), tokens)
    }

    /// [`reserve`](Self::reserve) at clock reading `now`.
    #[inline]
    pub fn reserve_at(&self, now: u64, tokens: u64) -> bool {
        self.tokens.view().decide(now, tokens).is_ok()
            && self.requests.view().decide(now, 1).is_ok()
    }

    /// Both budgets now. Reads only.
    #[inline]
    pub fn usage(&self) -> Usage {
        self.usage_at(self.now())
    }

    /// [`usage`](Self::usage) at clock reading `now`: both budgets under one limits version.
    pub fn usage_at(&self, now: u64) -> Usage {
        loop {
            let r = self.requests.view();
            let t = self.tokens.view();
            if r.version != t.version {
                self.await_limit_change(); // a set_limit is between the two buckets
                continue;
            }
            let side =
                |v: &crate::bucket::View| (v.used_at(now), v.limits.limit, v.remaining_at(now));
            let (requests_used, requests_limit, requests_remaining) = side(&r);
            let (tokens_used, tokens_limit, tokens_remaining) = side(&t);
            return Usage {
                requests_used,
                requests_limit,
                tokens_used,
                tokens_limit,
                requests_remaining,
                tokens_remaining,
            };
        }
    }

    /// Settles a permit with the tokens actually used: a surplus is refunded (safely: never
    /// more than if it had never been admitted), a shortfall is charged as debt that later
    /// callers wait out.
    pub fn settle(&self, permit: Permit, actual_tokens: u64) {
        self.settle_at(self.now(), permit, actual_tokens)
    }

    /// [`settle`](Self::settle) at clock reading `now`.
    pub fn settle_at(&self, now: u64, permit: Permit, actual_tokens: u64) {
        if actual_tokens > permit.tokens {
            self.tokens.charge(now, actual_tokens - permit.tokens);
        } else if actual_tokens < permit.tokens {
            let surplus = permit.tokens - actual_tokens;
            self.tokens
                .refund(permit.token, surplus, || self.fresh_time(now));
        }
    }

    /// Records `tokens` used outside any permit (a charge, possibly into debt), without
    /// waiting. The async [`consume_tokens`](Self::consume_tokens) also waits the debt out.
    pub fn charge_tokens(&self, tokens: u64) {
        self.charge_tokens_at(self.now(), tokens);
    }

    /// [`charge_tokens`](Self::charge_tokens) at clock reading `now`; returns the reading at
    /// which the token bucket is out of debt again.
    pub fn charge_tokens_at(&self, now: u64, tokens: u64) -> u64 {
        self.tokens.charge(now, tokens).ready_ns
    }

    /// Records `requests` requests and `tokens` tokens used outside any permit (e.g. a
    /// provider reporting less remaining than our own accounting), as debt if need be, in
    /// O(1) and without waiting.
    pub fn charge(&self, requests: u64, tokens: u64) {
        self.charge_at(self.now(), requests, tokens);
    }

    /// [`charge`](Self::charge) at clock reading `now`; returns the reading at which both
    /// budgets are out of debt again.
    pub fn charge_at(&self, now: u64, requests: u64, tokens: u64) -> u64 {
        let r = if requests > 0 {
            self.requests.charge(now, requests).ready_ns
        } else {
            now
        };
        let t = if tokens > 0 {
            self.tokens.charge(now, tokens).ready_ns
        } else {
            now
        };
        r.max(t)
    }

    /// New limits for the next decision; `0` is unlimited. Units in use carry over unchanged;
    /// the burst policies stay. Runs beside any other call; admissions never mix the two.
    ///
    /// A change forfeits the refunds of permits and reservations taken under the old limits
    /// (their units were carried over as used; keeping them is the safe side). Setting the
    /// limits already in force changes nothing.
    pub fn set_limit(&self, rpm: u64, tpm: u64) {
        self.set_limit_at(self.now(), rpm, tpm)
    }

    /// [`set_limit`](Self::set_limit) at clock reading `now`.
    ///
    /// The change takes effect at the latest of `now`, a fresh reading of the clock (plus its
    /// [`skew_ns`](Clock::skew_ns)) and the previous change's instant: never at a reading
    /// older than an admission it has to carry over (see the comment inside).
    pub fn set_limit_at(&self, now: u64, rpm: u64, tpm: u64) {
        let mut config = lock(&self.config);
        let r = config.limits(rpm, config.request_burst);
        let t = config.limits(tpm, config.token_burst);
        if self.requests.view().limits == r && self.tokens.view().limits == t {
            // Nothing changes: keep the version, so permits out now can still be refunded
            // (limits re-learned from every response are mostly the same limits).
            return;
        }
        config.version += 1;
        let version = config.version;
        // Carrying used units across a change at reading `s` refills the time after `s` at
        // the new rate. An admission already made at a later reading `t > s` had the stretch
        // [s, t] refilled at the old rate; converting at `s` would refill it again at the new
        // one and admit more than either limit allows around `t`. The same holds for a
        // previous change made at `t`. So, like a refund, each bucket takes a reading after
        // loading the state it converts, and no older than the last change's. The stress
        // test's checker caught this: a caller that read the clock and then waited for the
        // lock (or was descheduled) let through up to 77 requests over the bound.
        let floor = config.changed_at;
        let at = || self.fresh_time(now).max(floor);
        let r_at = self.requests.set_limits(version, r, at);
        let t_at = self.tokens.set_limits(version, t, at);
        config.changed_at = r_at.max(t_at);
    }
}

/// The error for a bucket's refusal of `n` units at `now`.
pub(crate) fn refusal_error(budget: Budget, r: Refusal, now: u64, n: u64) -> Error {
    match r {
        Refusal::Capacity(capacity) => Error::InsufficientCapacity {
            budget,
            requested: n,
            capacity,
        },
        Refusal::Wait { rate, target } => {
            Error::RateLimitExceeded(Denied::new(budget, rate, target, now))
        }
    }
}
