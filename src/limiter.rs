//! The limiter: a set of budgets (requests, tokens, input and output tokens, each per its own
//! window), decided together, all or nothing, with no lock.
//!
//! The transaction that takes from every budget lives in `take.rs`; the async waiting in
//! `waiter.rs`; this file holds the limiter, its builder, and the operations that are not a
//! take: settling, charging, reports and limit changes.
//!
//! # No mixed admissions
//!
//! A limit change gives every bucket the same new limits version, one after the other. Every
//! decision reads each bucket's version; one that sees two versions met a change halfway and
//! waits for it (`await_limit_change`) before deciding again, and every grant carries the
//! version it was decided under. Every admission that returns is therefore explained wholly by
//! one version of the limits.

use crate::bucket::{Bucket, Give, Grant, Params};
use crate::budget::{Budget, Burst, Cost, Limit, Spec, MAX_BUDGETS};
use crate::clock::{Clock, MonotonicClock, TickScale};
use crate::error::Error;
use crate::sync::{lock, AtomicU64, Mutex, Ordering::Relaxed};
use crate::take::{Ask, Ns, Reading, Ticks};
use crate::usage::{BudgetUsage, Usage};

/// Proof of an admission: one request and its estimated [`Cost`], bound to the limiter that
/// issued it.
///
/// Hand it back to [`TokenBucketLimiter::settle`] with the actual cost once known. Dropping it
/// keeps the estimate as the usage. Not `Clone`: a permit settles once.
#[must_use = "a permit is settled with the actual usage; dropping it keeps the estimate"]
#[derive(Debug, PartialEq, Eq)]
pub struct Permit {
    pub(crate) limiter: u64,
    pub(crate) version: u64,
    pub(crate) cost: Cost,
    /// What it took from each bucket (the limiter's bucket order).
    pub(crate) grants: [Grant; MAX_BUDGETS],
}

impl Permit {
    /// The cost this permit was admitted for (the estimate).
    pub fn cost(&self) -> Cost {
        self.cost
    }

    /// The tokens this permit was admitted for, input and output together.
    pub fn tokens(&self) -> u64 {
        self.cost.total()
    }
}

/// What the provider counts against a token budget, and so what [`settle`] may give back.
///
/// [`settle`]: TokenBucketLimiter::settle
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Accounting {
    /// The provider counts what a request really used: `settle` refunds the surplus of the
    /// estimate (as far as the refund rule allows: only the part of the grant's slot not yet
    /// expired) and charges a shortfall. The default of [`TokenBucketLimiter::new`].
    #[default]
    Actual,
    /// The provider counts the estimate (prompt + `max_tokens`) when the request arrives and
    /// keeps it, as OpenAI documents: `settle` never gives back tokens of a request the
    /// provider counted, and still charges a shortfall. Settling with [`Cost::ZERO`] says
    /// the provider counted nothing (the request was refused or never sent) and gives the
    /// tokens back as under `Actual`. The default of
    /// [`TokenBucketLimiter::for_provider`]: counting what the provider counts, or more,
    /// whichever way it accounts.
    Reserved,
}

/// What limit changes need: serialised by the limiter's mutex. No decision takes it; only a
/// call that met a change halfway between two buckets waits on it for the change to finish.
#[derive(Debug)]
struct Config {
    /// The limit of each bucket, in bucket order.
    limits: Vec<Limit>,
    version: u64,
    /// The reading the last change took effect at: changes take effect in order of time.
    changed_at: u64,
}

/// Each limiter's identity, for binding permits to it. Never reused within a process.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A lock-free rate limiter over a set of budgets: by default requests and tokens per minute.
///
/// Each budget is a GCRA bucket whose whole state is one `AtomicU64`; admissions are a few
/// loads and compare-exchanges, a denial writes nothing, and an admission takes from every
/// budget or from none. See the [crate docs](crate) for an example.
pub struct TokenBucketLimiter<C: Clock = MonotonicClock> {
    id: u64,
    pub(crate) buckets: Box<[Bucket]>,
    /// Whether the first bucket is the only request budget (as `new` and `builder` make it):
    /// `allow` then decides that bucket alone.
    lone_first_request: bool,
    /// The scale of the clock's counter when it has one ([`Clock::tick_scale`], read once at
    /// build): the plain calls then decide on the counter, and every bucket holds its rate
    /// per tick.
    ticks: Option<TickScale>,
    /// The highest reading any `*_at` call passed: refunds and limit changes never use an
    /// older one, so a reading ahead of the clock cannot buy a refund.
    readings: AtomicU64,
    config: Mutex<Config>,
    accounting: Accounting,
    pub(crate) clock: C,
}

impl<C: Clock> std::fmt::Debug for TokenBucketLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limits: Vec<String> = self.limits().iter().map(|l| l.to_string()).collect();
        f.debug_struct("TokenBucketLimiter")
            .field("limits", &limits)
            .finish_non_exhaustive()
    }
}

/// Configures a [`TokenBucketLimiter`]; made by [`TokenBucketLimiter::builder`] or
/// [`TokenBucketLimiter::with_limits`].
#[derive(Debug, Clone)]
pub struct Builder<C> {
    spec: Spec,
    accounting: Accounting,
    clock: C,
}

impl<C: Clock> Builder<C> {
    crate::budget::spec_methods!();

    /// The largest single request's tokens, on every token budget shaped with
    /// [`Burst::Provider`]: the burst is never below it, so such a request can be admitted at
    /// all (see [`ProviderShape::largest`](crate::ProviderShape::largest)). Other budgets are
    /// left as they are.
    pub fn largest_request(mut self, tokens: u64) -> Self {
        self.spec.largest_request(tokens);
        self
    }

    /// What the provider counts, and so what `settle` gives back (default
    /// [`Accounting::Actual`]; [`Accounting::Reserved`] from
    /// [`TokenBucketLimiter::for_provider`]).
    pub fn accounting(mut self, accounting: Accounting) -> Self {
        self.accounting = accounting;
        self
    }

    /// The clock the plain (non-`_at`) methods read.
    pub fn clock<D: Clock>(self, clock: D) -> Builder<D> {
        Builder {
            spec: self.spec,
            accounting: self.accounting,
            clock,
        }
    }

    /// Builds the limiter, every bucket full. [`Error::InvalidConfig`] for no budget, more than
    /// [`MAX_BUDGETS`](crate::MAX_BUDGETS), two limits of one budget and window, a zero window
    /// or a zero burst.
    pub fn build(self) -> Result<TokenBucketLimiter<C>, Error> {
        let limits = self.spec.into_limits()?;
        let ticks = self.clock.tick_scale();
        let buckets = limits
            .iter()
            .map(|l| Ok(Bucket::new(l, Params::of(l)?, ticks)))
            .collect::<Result<Vec<_>, Error>>()?;
        let mut requests = buckets.iter().map(|b| b.budget == Budget::Requests);
        let lone_first_request = requests.next() == Some(true) && !requests.any(|r| r);
        Ok(TokenBucketLimiter {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            buckets: buckets.into_boxed_slice(),
            lone_first_request,
            ticks,
            readings: AtomicU64::new(0),
            config: Mutex::new(Config {
                limits,
                version: 0,
                changed_at: 0,
            }),
            accounting: self.accounting,
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

    /// A builder for `rpm` requests and `tpm` tokens per period, with other periods, bursts,
    /// further budgets and clocks.
    pub fn builder(rpm: u64, tpm: u64) -> Builder<MonotonicClock> {
        Self::with_limits([Limit::requests(rpm), Limit::tokens(tpm)])
    }

    /// A builder for any set of budgets, decided together:
    ///
    /// ```
    /// use ratekeeper::{Limit, TokenBucketLimiter};
    ///
    /// // An Anthropic-style key: requests, input and output tokens per minute.
    /// let key = TokenBucketLimiter::with_limits([
    ///     Limit::requests(50),
    ///     Limit::input_tokens(40_000),
    ///     Limit::output_tokens(8_000),
    /// ])
    /// .build()?;
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn with_limits(limits: impl IntoIterator<Item = Limit>) -> Builder<MonotonicClock> {
        Builder {
            spec: Spec::new(limits),
            accounting: Accounting::Actual,
            clock: MonotonicClock::new(),
        }
    }

    /// A builder for a provider's API key: `rpm` requests and `tpm` tokens per minute, each
    /// shaped with [`Burst::PROVIDER`] (safe whichever way the provider enforces its limits,
    /// see [`Burst`]), settled with [`Accounting::Reserved`]. Give it the largest request you
    /// send ([`largest_request`](Builder::largest_request)): the token burst is never below
    /// it, and a request above the burst is refused at once.
    ///
    /// ```
    /// use ratekeeper::{Accounting, TokenBucketLimiter};
    ///
    /// let key = TokenBucketLimiter::for_provider(500, 200_000)
    ///     .largest_request(8_192)
    ///     .build()?;
    /// let usage = key.usage();
    /// let tokens = usage.tokens().unwrap();
    /// // The provider's limit is reported as it is; the burst is its own.
    /// assert_eq!((tokens.limit, tokens.capacity), (200_000, 8_192));
    /// // Anthropic adjusts output tokens to the actual count when a response ends: settle
    /// // refunds there.
    /// let anthropic = TokenBucketLimiter::for_provider(50, 40_000)
    ///     .largest_request(4_096)
    ///     .accounting(Accounting::Actual)
    ///     .build()?;
    /// # let _ = anthropic;
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn for_provider(rpm: u64, tpm: u64) -> Builder<MonotonicClock> {
        Self::with_limits([
            Limit::requests(rpm).burst(Burst::PROVIDER),
            Limit::tokens(tpm).burst(Burst::PROVIDER),
        ])
        .accounting(Accounting::Reserved)
    }
}

impl<C: Clock> TokenBucketLimiter<C> {
    /// The clock reading for an operation: the one clock read of the hot path.
    #[inline(always)]
    pub(crate) fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Remembers a reading passed to an `*_at` form, before the operation writes anything (a
    /// refund that sees the write then sees the reading too). One load on the hot path.
    #[inline(always)]
    pub(crate) fn note_reading(&self, now: u64) {
        if now > self.readings.load(Relaxed) {
            self.raise_readings(now);
        }
    }

    #[cold]
    fn raise_readings(&self, now: u64) {
        // Relaxed: the operation's own state CAS (AcqRel) publishes this to any refund that
        // sees its effect; a refund loads it after the state and the pending word.
        self.readings.fetch_max(now, Relaxed);
    }

    /// A reading no older than any reading reflected in a state loaded just before: the
    /// latest of `now`, a fresh reading of the clock plus its [`skew_ns`](Clock::skew_ns),
    /// and every reading an `*_at` call was given. Refunds and limit changes need one to stay
    /// safe (a later reading only gives back less, or carries more units over as used).
    #[inline]
    pub(crate) fn fresh_time(&self, now: u64) -> u64 {
        now.max(self.clock.now().saturating_add(self.clock.skew_ns()))
            .max(self.readings.load(Relaxed))
    }

    /// The limiter's clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// What the provider counts, as configured at build: what `settle` gives back.
    pub fn accounting(&self) -> Accounting {
        self.accounting
    }

    /// The limits in force, one per budget, in the order given at build.
    pub fn limits(&self) -> Vec<Limit> {
        lock(&self.config).limits.clone()
    }

    /// The scale of the clock's counter, when the plain calls decide on it.
    #[inline(always)]
    pub(crate) fn ticks(&self) -> Option<TickScale> {
        self.ticks
    }

    /// Compare-exchanges on bucket state words that lost a race on this thread so far, in
    /// every limiter (a thread-local count, for the contention bench). Only with
    /// `--cfg ratekeeper_stats`; normal builds have no counter.
    #[cfg(ratekeeper_stats)]
    pub fn cas_retries_here() -> u64 {
        crate::bucket::stats::count()
    }

    /// This limiter's identity, which its permits carry.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether `permit` was issued by this limiter.
    pub(crate) fn owns(&self, permit: &Permit) -> bool {
        permit.limiter == self.id
    }

    /// Admits one request (no tokens) if every request budget allows it now. Token budgets
    /// are not consulted.
    #[inline(always)]
    pub fn allow(&self) -> bool {
        match self.ticks {
            Some(_) => self.allow_now(Ticks(self.clock.ticks())),
            None => self.allow_now(Ns(self.now())),
        }
    }

    /// [`allow`](Self::allow) at clock reading `now` (nanoseconds).
    #[inline(always)]
    pub fn allow_at(&self, now: u64) -> bool {
        self.note_reading(now);
        self.allow_now(Ns(now))
    }

    #[inline(always)]
    fn allow_now<R: Reading>(&self, now: R) -> bool {
        match &*self.buckets {
            [first, ..] if self.lone_first_request => Self::admit_one(first, now),
            _ => self.admit_now(now, Ask::REQUEST),
        }
    }

    /// Admits one request costing `cost` (a plain number is input tokens) on every budget
    /// together, or on none.
    ///
    /// On denial, [`Error::RateLimitExceeded`] names the budget with the longest wait and how
    /// long until the same call could succeed; more than a budget's burst is
    /// [`Error::InsufficientCapacity`], at once.
    #[inline]
    pub fn try_acquire(&self, cost: impl Into<Cost>) -> Result<Permit, Error> {
        match self.ticks {
            Some(_) => self.acquire_now(Ticks(self.clock.ticks()), cost.into()),
            None => self.acquire_now(Ns(self.now()), cost.into()),
        }
    }

    /// [`try_acquire`](Self::try_acquire) at clock reading `now`.
    #[inline]
    pub fn try_acquire_at(&self, now: u64, cost: impl Into<Cost>) -> Result<Permit, Error> {
        self.note_reading(now);
        self.acquire_now(Ns(now), cost.into())
    }

    /// Would `try_acquire(cost)` succeed now? Reads only: this *peeks*, it reserves nothing
    /// (to hold a slot, [`reserve`](Self::reserve) it).
    #[inline]
    pub fn peek(&self, cost: impl Into<Cost>) -> bool {
        self.peek_at(self.now(), cost)
    }

    /// [`peek`](Self::peek) at clock reading `now`.
    pub fn peek_at(&self, now: u64, cost: impl Into<Cost>) -> bool {
        let ask = Ask::request(cost.into());
        let version = self.buckets[0].view().version;
        self.buckets.iter().all(|b| {
            let v = b.view();
            v.version == version && v.admit(now, ask.units(b.budget)).is_ok()
        })
    }

    /// Every limited budget now. Reads only.
    #[inline]
    pub fn usage(&self) -> Usage {
        self.usage_at(self.now())
    }

    /// [`usage`](Self::usage) at clock reading `now`: every budget under one limits version.
    pub fn usage_at(&self, now: u64) -> Usage {
        'again: loop {
            let mut out = [None; MAX_BUDGETS];
            let mut version = None;
            for (i, b) in self.buckets.iter().enumerate() {
                let (v, r) = b.report();
                if *version.get_or_insert(v.version) != v.version {
                    self.await_limit_change(); // a limit change is between two buckets
                    continue 'again;
                }
                if v.rate.is_some() {
                    out[i] = Some(BudgetUsage {
                        budget: b.budget,
                        window: b.window,
                        limit: r.limit,
                        capacity: v.capacity(),
                        used: v.used_at(now),
                        remaining: v.remaining_at(now),
                    });
                }
            }
            return Usage::new(out.into_iter().flatten());
        }
    }

    /// Settles a permit with the actual cost, budget by budget: a surplus is refunded (safely:
    /// never more than if it had never been admitted) unless the limiter's [`Accounting`] is
    /// `Reserved`, a shortfall is charged as debt that later callers wait out.
    /// [`Error::ForeignPermit`] (and nothing changed) for a permit of another limiter.
    pub fn settle(&self, permit: Permit, actual: impl Into<Cost>) -> Result<(), Error> {
        self.settle_now(self.now(), permit, actual.into())
    }

    /// [`settle`](Self::settle) at clock reading `now`.
    pub fn settle_at(
        &self,
        now: u64,
        permit: Permit,
        actual: impl Into<Cost>,
    ) -> Result<(), Error> {
        self.note_reading(now);
        self.settle_now(now, permit, actual.into())
    }

    fn settle_now(&self, now: u64, permit: Permit, actual: Cost) -> Result<(), Error> {
        if !self.owns(&permit) {
            return Err(Error::ForeignPermit);
        }
        // A reserved estimate stays counted: the provider keeps it, unless it counted nothing.
        let keep = self.accounting == Accounting::Reserved && actual != Cost::ZERO;
        for (i, b) in self.buckets.iter().enumerate() {
            let (estimate, used) = (b.budget.units(1, permit.cost), b.budget.units(1, actual));
            if used > estimate {
                b.charge(now, used - estimate);
            } else if used < estimate && !keep {
                let fresh = || self.fresh_time(now);
                let give = Give::Units(estimate - used);
                b.refund(permit.version, &permit.grants[i], give, fresh);
            }
        }
        Ok(())
    }

    /// Gives back everything a permit took, restart gaps included (a cancelled reservation).
    pub(crate) fn give_back(&self, permit: &Permit, now: u64) {
        for (i, b) in self.buckets.iter().enumerate() {
            b.refund(permit.version, &permit.grants[i], Give::All, || {
                self.fresh_time(now)
            });
        }
    }

    /// Records `requests` requests and `cost` used outside any permit (e.g. a provider
    /// reporting less remaining than our own accounting), as debt if need be, in one step per
    /// budget and without waiting.
    pub fn charge(&self, requests: u64, cost: impl Into<Cost>) {
        self.charge_now(self.now(), requests, cost.into());
    }

    /// [`charge`](Self::charge) at clock reading `now`; returns the reading at which every
    /// budget is out of debt again.
    pub fn charge_at(&self, now: u64, requests: u64, cost: impl Into<Cost>) -> u64 {
        self.note_reading(now);
        self.charge_now(now, requests, cost.into())
    }

    pub(crate) fn charge_now(&self, now: u64, requests: u64, cost: Cost) -> u64 {
        self.buckets
            .iter()
            .map(|b| match b.budget.units(requests, cost) {
                0 => now,
                n => b.charge(now, n),
            })
            .fold(now, u64::max)
    }

    /// New counts for the request and the total-tokens budget (the first of each kind); `0`
    /// is unlimited. Units in use carry over; windows and burst policies stay. Runs beside any
    /// other call; admissions never mix the old and the new limits.
    ///
    /// A change forfeits the refunds of permits and reservations taken under the old limits
    /// (their units were carried over as used; keeping them is the safe side). Setting the
    /// limits already in force changes nothing. [`Error::InvalidConfig`] if a count other than
    /// 0 is given for a kind of budget the limiter does not have.
    pub fn set_limit(&self, rpm: u64, tpm: u64) -> Result<(), Error> {
        self.set_limit_now(self.now(), rpm, tpm)
    }

    /// [`set_limit`](Self::set_limit) at clock reading `now`.
    pub fn set_limit_at(&self, now: u64, rpm: u64, tpm: u64) -> Result<(), Error> {
        self.note_reading(now);
        self.set_limit_now(now, rpm, tpm)
    }

    fn set_limit_now(&self, now: u64, rpm: u64, tpm: u64) -> Result<(), Error> {
        let current = self.limits();
        let mut changes = Vec::with_capacity(2);
        for (budget, count) in [(Budget::Requests, rpm), (Budget::Tokens, tpm)] {
            match current.iter().find(|l| l.budget() == budget) {
                Some(l) => changes.push(l.with_count(count)),
                None if count == 0 => {}
                None => return Err(Error::InvalidConfig("the limiter has no such budget")),
            }
        }
        self.set_limits_now(now, &changes)
    }

    /// New limits for some budgets: each replaces the limit of the same budget and window
    /// (its count and burst policy). All of them take effect together, as one version, with
    /// the guarantees of [`set_limit`](Self::set_limit). [`Error::InvalidConfig`] (and nothing
    /// changed) for a limit of a budget and window the limiter does not have.
    pub fn set_limits(&self, limits: &[Limit]) -> Result<(), Error> {
        self.set_limits_now(self.now(), limits)
    }

    /// [`set_limits`](Self::set_limits) at clock reading `now`.
    ///
    /// The change takes effect at the latest of `now`, a fresh reading of the clock (plus its
    /// [`skew_ns`](Clock::skew_ns)), every `*_at` reading seen and the previous change's
    /// instant: never at a reading older than an admission it has to carry over (see the
    /// comment inside).
    ///
    /// A decision made afterwards at a reading older than that instant (a caller that read the
    /// clock before the change) is one at the change's instant, or stricter: the carried-over
    /// state places everything at or after it. Such an admission counts as released at the
    /// change's instant.
    pub fn set_limits_at(&self, now: u64, limits: &[Limit]) -> Result<(), Error> {
        self.note_reading(now);
        self.set_limits_now(now, limits)
    }

    fn set_limits_now(&self, now: u64, limits: &[Limit]) -> Result<(), Error> {
        let mut config = lock(&self.config);
        let next = crate::budget::replaced(&config.limits, limits)?;
        let params = Params::all(&next)?;
        if self
            .buckets
            .iter()
            .zip(&params)
            .all(|(b, p)| b.params().1 == *p)
        {
            // Nothing changes: keep the version, so permits out now can still be refunded
            // (limits re-learned from every response are mostly the same limits).
            config.limits = next;
            return Ok(());
        }
        config.version += 1;
        let version = config.version;
        // Carrying used units across a change at reading `s` refills the time after `s` at
        // the new rate. An admission already made at a later reading `t > s` had the stretch
        // [s, t] refilled at the old rate; converting at `s` would refill it again at the new
        // one and admit more than either limit allows around `t`. The same holds for a
        // previous change made at `t`. So, like a refund, each bucket takes a reading after
        // loading the state it converts, and no older than the last change's.
        let floor = config.changed_at;
        let at = || self.fresh_time(now).max(floor);
        let mut latest = floor;
        for (b, p) in self.buckets.iter().zip(params) {
            latest = latest.max(b.set_limits(version, p, at));
        }
        config.limits = next;
        config.changed_at = latest;
        Ok(())
    }

    /// Waits until a limit change seen halfway between two buckets has finished, by taking
    /// the lock it holds throughout. Retrying at once would keep writing the bucket the setter
    /// is trying to switch, and the two could chase each other indefinitely (a loom model
    /// found this livelock). Only a caller that met a change in progress gets here, and it has
    /// to wait for the setter either way: blocked on the lock it sleeps instead of spinning
    /// while a descheduled setter holds things up.
    #[cold]
    pub(crate) fn await_limit_change(&self) {
        drop(lock(&self.config));
    }
}
