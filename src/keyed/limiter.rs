//! [`KeyedLimiter`]: the public face of the keyed limiter.

use super::class::Class;
use super::store::Store;
use super::tenant::{Miss, Taken, Tenant};
use crate::bucket::{Give, Grant, Refusal};
use crate::budget::{Cost, Limit, MAX_BUDGETS};
use crate::clock::{Clock, MonotonicClock};
use crate::error::{Denied, Error};
use crate::sync::{lock, AtomicU64, Backoff, Mutex, Ordering::*};
use crate::take::Ask;
use crate::usage::{BudgetUsage, Usage};
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};
use std::sync::Arc;

/// The fewest tenants a sweep waits for: below this, idle tenants cost less than sweeping.
const MIN_SWEEP: usize = 1_024;

/// Each limiter's identity, for binding permits to it.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A tenant whose limits override its class's: its own parameter block and its words.
struct Overridden<const N: usize> {
    class: Class<N>,
    tenant: Tenant<N>,
}

/// Proof of an admission by a [`KeyedLimiter`]: settle it with the actual cost
/// ([`KeyedLimiter::settle`]); dropping it keeps the estimate as the usage.
#[must_use = "a permit is settled with the actual usage; dropping it keeps the estimate"]
#[derive(Debug, PartialEq, Eq)]
pub struct KeyedPermit<const N: usize = 2> {
    limiter: u64,
    class: u64,
    version: u64,
    cost: Cost,
    grants: [Grant; N],
}

impl<const N: usize> KeyedPermit<N> {
    /// The cost this permit was admitted for (the estimate).
    pub fn cost(&self) -> Cost {
        self.cost
    }
}

/// A rate limiter per key (tenant, API key, IP, route) for any number of keys: every key has
/// the budgets of one shared set of limits (its *class*), or its own ([`set_override`]).
///
/// A key costs only its state: one word per budget and one gate word, beside the key in a
/// lock-free map. Admission for a key already present takes no lock and allocates nothing;
/// a key seen for the first time is inserted. A key whose budgets are all full again carries
/// no information and is dropped by the next sweep: sweeps run as the map grows (when it has
/// doubled since the last one and is at least as large as the last one found it) and
/// whenever it reaches [`max_tenants`]
/// ([`KeyedBuilder::max_tenants`]); beyond that, a new key is refused with
/// [`Error::Unavailable`] (nothing is admitted without its state). [`evict_idle`] sweeps on
/// demand, e.g. from a timer, which keeps the sweeps off the request path.
///
/// The guarantees are the single limiter's, per key: over any window of readings a key's
/// budget admits at most `burst + rate × window`, all budgets are taken together or not at
/// all, and a dropped key never comes back more permissive than it left.
///
/// ```
/// use ratekeeper::{Error, KeyedLimiter, ManualClock};
/// use std::sync::Arc;
///
/// // Each tenant: 2 requests and 1,000 tokens per minute.
/// let clock = Arc::new(ManualClock::new(0));
/// let tenants = KeyedLimiter::<String, _>::builder(2, 1_000).clock(clock.clone()).build()?;
/// let alice = "alice".to_string();
/// let permit = tenants.try_acquire(&alice, 600)?;
/// tenants.settle(&alice, permit, 100)?; // the surplus comes back
/// assert!(tenants.try_acquire(&alice, 800).is_ok());
/// assert!(matches!(tenants.try_acquire(&alice, 1), Err(Error::RateLimitExceeded(_))));
/// // Another tenant has its own budgets.
/// assert!(tenants.try_acquire(&"bob".to_string(), 900).is_ok());
/// # Ok::<(), Error>(())
/// ```
///
/// [`set_override`]: Self::set_override
/// [`max_tenants`]: Self::max_tenants
/// [`evict_idle`]: Self::evict_idle
pub struct KeyedLimiter<K, C: Clock = MonotonicClock, const N: usize = 2> {
    id: u64,
    class: Class<N>,
    tenants: Store<K, Tenant<N>>,
    overrides: Store<K, Arc<Overridden<N>>>,
    /// How many overrides exist: while 0, admissions do not look for one.
    override_count: AtomicU64,
    /// Serialises override changes.
    override_lock: Mutex<()>,
    /// The latest reading at which a sweep judged tenants full: a new tenant is full from
    /// then on, never earlier, so a key dropped at that reading comes back no more permissive.
    floor: AtomicU64,
    /// The highest reading any `*_at` call passed (refunds never use an older one).
    readings: AtomicU64,
    max_tenants: usize,
    sweep_at: AtomicUsize,
    sweeping: Mutex<()>,
    name: &'static str,
    clock: C,
}

impl<K, C: Clock, const N: usize> std::fmt::Debug for KeyedLimiter<K, C, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limits: Vec<String> = self.class.limits().iter().map(|l| l.to_string()).collect();
        f.debug_struct("KeyedLimiter")
            .field("name", &self.name)
            .field("limits", &limits)
            .finish_non_exhaustive()
    }
}

/// Configures a [`KeyedLimiter`]; made by [`KeyedLimiter::builder`] or
/// [`KeyedLimiter::with_limits`].
pub struct KeyedBuilder<K, C, const N: usize = 2> {
    limits: Vec<Limit>,
    max_tenants: usize,
    name: &'static str,
    clock: C,
    key: std::marker::PhantomData<fn() -> K>,
}

impl<K, C: std::fmt::Debug, const N: usize> std::fmt::Debug for KeyedBuilder<K, C, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedBuilder")
            .field("limits", &self.limits)
            .field("max_tenants", &self.max_tenants)
            .field("name", &self.name)
            .field("clock", &self.clock)
            .finish()
    }
}

impl<K, C: Clock, const N: usize> KeyedBuilder<K, C, N> {
    /// The clock every key is timed on.
    pub fn clock<C2: Clock>(self, clock: C2) -> KeyedBuilder<K, C2, N> {
        KeyedBuilder {
            limits: self.limits,
            max_tenants: self.max_tenants,
            name: self.name,
            clock,
            key: std::marker::PhantomData,
        }
    }

    /// The most keys held at once (default 10,000,000): the hard cap on memory. At the cap,
    /// idle keys are swept first; a new key is refused only if none is idle.
    pub fn max_tenants(mut self, max: usize) -> Self {
        self.max_tenants = max.max(1);
        self
    }

    /// Every budget's window becomes `period_ns` (e.g. for tests on short windows).
    pub fn period_ns(mut self, period_ns: u64) -> Self {
        let w = std::time::Duration::from_nanos(period_ns);
        self.limits = self.limits.iter().map(|l| l.per(w)).collect();
        self
    }

    /// The class's name in metrics and traces (default `"default"`).
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// The limiter, or [`Error::InvalidConfig`] for limits that describe no rate limit or
    /// more than `N` budgets.
    pub fn build(self) -> Result<KeyedLimiter<K, C, N>, Error>
    where
        K: Hash + Eq + Clone + Send + Sync,
    {
        Ok(KeyedLimiter {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            class: Class::new(&self.limits)?,
            tenants: Store::new(),
            overrides: Store::new(),
            override_count: AtomicU64::new(0),
            override_lock: Mutex::new(()),
            floor: AtomicU64::new(0),
            readings: AtomicU64::new(0),
            max_tenants: self.max_tenants,
            sweep_at: AtomicUsize::new(MIN_SWEEP.min(self.max_tenants)),
            sweeping: Mutex::new(()),
            name: self.name,
            clock: self.clock,
        })
    }
}

impl<K> KeyedLimiter<K, MonotonicClock, 2> {
    /// Per key, `rpm` requests and `tpm` tokens per minute (`0`: unlimited), bursts of the
    /// full minute.
    pub fn builder(rpm: u64, tpm: u64) -> KeyedBuilder<K, MonotonicClock, 2> {
        Self::with_limits([Limit::requests(rpm), Limit::tokens(tpm)])
    }
}

impl<K, const N: usize> KeyedLimiter<K, MonotonicClock, N> {
    /// Per key, these budgets (at most `N`), decided together.
    pub fn with_limits(
        limits: impl IntoIterator<Item = Limit>,
    ) -> KeyedBuilder<K, MonotonicClock, N> {
        KeyedBuilder {
            limits: limits.into_iter().collect(),
            max_tenants: 10_000_000,
            name: "default",
            clock: MonotonicClock::new(),
            key: std::marker::PhantomData,
        }
    }
}

/// What one attempt on one tenant came to.
enum Step<T> {
    Done(T),
    Deny(Error),
    /// The tenant was marked: look the key up again.
    Again(Miss),
}

impl<K, C, const N: usize> KeyedLimiter<K, C, N>
where
    K: Hash + Eq + Clone + Send + Sync,
    C: Clock,
{
    /// The class's name (metrics label).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The limiter's clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The limits every key without an override has.
    pub fn limits(&self) -> Vec<Limit> {
        self.class.limits()
    }

    /// The keys held now (idle ones included until a sweep drops them).
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys held at once.
    pub fn max_tenants(&self) -> usize {
        self.max_tenants
    }

    #[inline]
    fn note_reading(&self, now: u64) {
        if now > self.readings.load(Relaxed) {
            self.readings.fetch_max(now, Relaxed);
        }
    }

    /// A reading no older than any admission a tenant word loaded just before reflects (see
    /// `TokenBucketLimiter::fresh_time`).
    fn fresh_time(&self, now: u64) -> u64 {
        now.max(self.clock.now().saturating_add(self.clock.skew_ns()))
            .max(self.readings.load(Relaxed))
    }

    /// Admits one request (no tokens) for `key` if its request budgets allow it now.
    #[inline]
    pub fn allow(&self, key: &K) -> bool {
        self.take(self.clock.now(), key, Ask::REQUEST).is_ok()
    }

    /// [`allow`](Self::allow) at clock reading `now`.
    #[inline]
    pub fn allow_at(&self, now: u64, key: &K) -> bool {
        self.note_reading(now);
        self.take(now, key, Ask::REQUEST).is_ok()
    }

    /// Admits one request of `cost` for `key` on every budget together, or on none; the
    /// errors are the single limiter's ([`TokenBucketLimiter::try_acquire`]), plus
    /// [`Error::Unavailable`] for a new key when [`max_tenants`](Self::max_tenants) keys are
    /// held and none is idle.
    ///
    /// [`TokenBucketLimiter::try_acquire`]: crate::TokenBucketLimiter::try_acquire
    #[inline]
    pub fn try_acquire(&self, key: &K, cost: impl Into<Cost>) -> Result<KeyedPermit<N>, Error> {
        self.try_acquire_now(self.clock.now(), key, cost.into())
    }

    /// [`try_acquire`](Self::try_acquire) at clock reading `now`.
    #[inline]
    pub fn try_acquire_at(
        &self,
        now: u64,
        key: &K,
        cost: impl Into<Cost>,
    ) -> Result<KeyedPermit<N>, Error> {
        self.note_reading(now);
        self.try_acquire_now(now, key, cost.into())
    }

    #[inline]
    fn try_acquire_now(&self, now: u64, key: &K, cost: Cost) -> Result<KeyedPermit<N>, Error> {
        let (class, t) = self.take(now, key, Ask::request(cost))?;
        Ok(KeyedPermit {
            limiter: self.id,
            class,
            version: t.version,
            cost,
            grants: t.grants,
        })
    }

    /// The one admission path: the key's override if it has one, else its tenant, created if
    /// absent; after a mark, the key is looked up again.
    #[inline]
    fn take(&self, now: u64, key: &K, ask: Ask) -> Result<(u64, Taken<N>), Error> {
        let backoff = Backoff::new();
        loop {
            let fresh = || self.fresh_time(now);
            let step =
                self.on_tenant(key, now, |class, t| match t.take(class, now, ask, fresh) {
                    Ok(taken) => Step::Done((class.id(), taken)),
                    Err(Miss::Refused(i, r)) => Step::Deny(refusal(class, i, r, now, ask)),
                    Err(m) => Step::Again(m),
                })?;
            match step {
                Step::Done(x) => {
                    let class = &self.class;
                    crate::obs::admitted(self.name, (0..class.len()).map(|i| class.budget(i)), ask);
                    return Ok(x);
                }
                Step::Deny(e) => {
                    crate::obs::denied(self.name, &e);
                    return Err(e);
                }
                Step::Again(m) => self.after_miss(key, m, &backoff),
            }
        }
    }

    /// Runs `f` on the key's tenant: its override's if it has one, else the class's, created
    /// if absent.
    #[inline]
    fn on_tenant<R>(
        &self,
        key: &K,
        now: u64,
        f: impl FnOnce(&Class<N>, &Tenant<N>) -> Step<R>,
    ) -> Result<Step<R>, Error> {
        let mut f = Some(f);
        loop {
            if self.override_count.load(Acquire) != 0 {
                let r = self.overrides.get(key, |o| {
                    (f.take().expect("called once"))(&o.class, &o.tenant)
                });
                if let Some(r) = r {
                    return Ok(r);
                }
            }
            let r = self
                .tenants
                .get(key, |t| (f.take().expect("called once"))(&self.class, t));
            match r {
                Some(r) => return Ok(r),
                None => self.create(key, now)?,
            }
        }
    }

    #[cold]
    fn after_miss(&self, key: &K, miss: Miss, backoff: &Backoff) {
        if miss == Miss::Evicted {
            // Help the sweep that marked it: the key's next tenant can only be inserted once
            // the marked one is gone.
            self.tenants.remove_if(key, Tenant::is_evicted);
        } else {
            backoff.spin();
        }
    }

    /// Inserts a fresh tenant for `key`, sweeping first if the map has grown enough.
    #[cold]
    #[inline(never)]
    fn create(&self, key: &K, now: u64) -> Result<(), Error> {
        let len = self.tenants.len();
        if len >= self.sweep_at.load(StdOrdering::Relaxed) {
            self.sweep(len >= self.max_tenants);
        }
        if self.tenants.len() >= self.max_tenants {
            crate::obs::tenant_cap(self.name);
            return Err(Error::Unavailable(format!(
                "keyed limiter {:?} holds its maximum of {} keys, none idle",
                self.name, self.max_tenants
            )));
        }
        // Full from the latest sweep's reading on (never earlier): see `floor`.
        let at = now.max(self.floor.load(Acquire));
        self.tenants
            .get_or_insert(key, || Tenant::fresh(&self.class, at), |_, _| ());
        Ok(())
    }

    /// Drops every key whose budgets are all full again (it says nothing a new key would
    /// not); returns how many. Runs beside admissions. Concurrent sweeps do not queue: one
    /// that finds another running returns 0 at once.
    pub fn evict_idle(&self) -> usize {
        self.sweep(false)
    }

    fn sweep(&self, wait: bool) -> usize {
        let _guard = if wait {
            lock(&self.sweeping)
        } else {
            match self.sweeping.try_lock() {
                Ok(g) => g,
                Err(_) => return 0,
            }
        };
        let before = self.tenants.len();
        let at = self.clock.now();
        // Before any mark: a key re-created after its tenant is dropped must see it.
        self.floor.fetch_max(at, Release);
        let mut dropped = 0;
        self.tenants.retain(|t| {
            let evicted = t.try_evict(&self.class, at);
            dropped += evicted as usize;
            !evicted
        });
        // The next sweep once the map has doubled since, and not before it is back at the
        // size this one found: keys that fall idle between requests (high limits refill in
        // microseconds) are then dropped and re-created at most once per that many new keys,
        // not at every small sweep.
        let next = (2 * self.tenants.len())
            .max(before)
            .max(MIN_SWEEP)
            .min(self.max_tenants);
        self.sweep_at.store(next, StdOrdering::Relaxed);
        crate::obs::evicted(self.name, dropped, self.tenants.len());
        dropped
    }

    /// Settles a permit for `key` with the actual cost, budget by budget: a surplus is
    /// refunded under the single limiter's rule, a shortfall charged as debt.
    /// [`Error::ForeignPermit`] (nothing changed) for a permit of another limiter.
    pub fn settle(
        &self,
        key: &K,
        permit: KeyedPermit<N>,
        actual: impl Into<Cost>,
    ) -> Result<(), Error> {
        self.settle_at(self.clock.now(), key, permit, actual)
    }

    /// [`settle`](Self::settle) at clock reading `now`.
    pub fn settle_at(
        &self,
        now: u64,
        key: &K,
        permit: KeyedPermit<N>,
        actual: impl Into<Cost>,
    ) -> Result<(), Error> {
        if permit.limiter != self.id {
            return Err(Error::ForeignPermit);
        }
        self.note_reading(now);
        let actual = actual.into();
        for i in 0..self.class.len() {
            let budget = self.class.budget(i);
            let (estimate, used) = (budget.units(1, permit.cost), budget.units(1, actual));
            if used > estimate {
                self.charge_budget(key, i, now, used - estimate)?;
            } else if used < estimate {
                let give = Give::Units(estimate - used);
                let fresh = || self.fresh_time(now);
                // On the key's tenant now, if it is in the permit's class: a permit of a
                // dropped tenant refunds nothing (its slot expired before the drop, and a
                // refund never moves a TAT into the past).
                let refund = |class: &Class<N>, t: &Tenant<N>| {
                    if class.id() == permit.class {
                        t.refund(class, i, permit.version, &permit.grants[i], give, &fresh);
                    }
                };
                crate::obs::refunded(self.name, budget, estimate - used);
                if self.override_count.load(Acquire) != 0
                    && self
                        .overrides
                        .get(key, |o| refund(&o.class, &o.tenant))
                        .is_some()
                {
                    continue;
                }
                self.tenants.get(key, |t| refund(&self.class, t));
            }
        }
        Ok(())
    }

    /// Records `requests` requests and `cost` for `key` used outside any permit, as debt if
    /// need be.
    pub fn charge(&self, key: &K, requests: u64, cost: impl Into<Cost>) -> Result<(), Error> {
        let (now, cost) = (self.clock.now(), cost.into());
        for i in 0..self.class.len() {
            let n = self.class.budget(i).units(requests, cost);
            if n > 0 {
                self.charge_budget(key, i, now, n)?;
            }
        }
        Ok(())
    }

    fn charge_budget(&self, key: &K, i: usize, now: u64, n: u64) -> Result<(), Error> {
        let backoff = Backoff::new();
        loop {
            let fresh = || self.fresh_time(now);
            let step = self.on_tenant(key, now, |class, t| {
                match t.charge(class, i, now, n, fresh) {
                    Ok(_) => Step::Done(()),
                    Err(m) => Step::Again(m),
                }
            })?;
            match step {
                Step::Done(()) => return Ok(()),
                Step::Deny(e) => return Err(e),
                Step::Again(m) => self.after_miss(key, m, &backoff),
            }
        }
    }

    /// Every limited budget of `key` now (a key not held is full). Reads only.
    pub fn usage(&self, key: &K) -> Usage {
        self.usage_at(self.clock.now(), key)
    }

    /// [`usage`](Self::usage) at clock reading `now`.
    pub fn usage_at(&self, now: u64, key: &K) -> Usage {
        let fresh = || self.fresh_time(now);
        let report = |class: &Class<N>, t: Option<&Tenant<N>>| {
            let mut out = [None; MAX_BUDGETS];
            for (i, slot) in out
                .iter_mut()
                .enumerate()
                .take(class.len().min(MAX_BUDGETS))
            {
                let v = match t.and_then(|t| t.view(class, i, fresh)) {
                    Some(v) => v,
                    None => class.current(i, class.current(i, 0).rate.map_or(0, |r| r.at(now).lo)),
                };
                if v.rate.is_some() {
                    *slot = Some(BudgetUsage {
                        budget: class.budget(i),
                        window: class.window(i),
                        limit: class.reported_limit(i, &v).unwrap_or(0),
                        capacity: v.capacity(),
                        used: v.used_at(now),
                        remaining: v.remaining_at(now),
                    });
                }
            }
            Usage::new(out.into_iter().flatten())
        };
        if self.override_count.load(Acquire) != 0 {
            if let Some(u) = self
                .overrides
                .get(key, |o| report(&o.class, Some(&o.tenant)))
            {
                return u;
            }
        }
        self.tenants
            .get(key, |t| report(&self.class, Some(t)))
            .unwrap_or_else(|| report(&self.class, None))
    }

    /// New limits for the class (each replaces the limit of the same budget and window), for
    /// every key without an override. Units in use carry over; every key is moved across
    /// before this returns, and admissions never mix the old and the new limits.
    pub fn set_limits(&self, limits: &[Limit]) -> Result<(), Error> {
        let now = self.clock.now();
        let changed = self.class.set_limits(
            limits,
            || self.fresh_time(now),
            |_| {
                self.tenants
                    .for_each(|t| t.migrate_all(&self.class, &|| self.fresh_time(now)));
            },
        )?;
        if changed {
            crate::obs::limits_changed(self.name, limits);
        }
        Ok(())
    }

    /// Gives `key` its own limits: `limits` replace those of the same budget and window of
    /// the class; the others stay the class's. Units in use carry over. Setting it again
    /// changes the override.
    pub fn set_override(&self, key: K, limits: &[Limit]) -> Result<(), Error> {
        let _g = lock(&self.override_lock);
        let now = self.clock.now();
        let at = self.fresh_time(now);
        if let Some(r) = self.overrides.get(&key, |o| {
            o.class.set_limits(
                limits,
                || self.fresh_time(now),
                |_| {
                    o.tenant.migrate_all(&o.class, &|| self.fresh_time(now));
                },
            )
        }) {
            r?;
            crate::obs::limits_changed(self.name, limits);
            return Ok(());
        }
        let all = crate::budget::replaced(&self.class.limits(), limits)?;
        let class = Class::<N>::new(&all)?;
        // Admissions that meet the moved tenant look for the override from now on.
        self.override_count.fetch_add(1, SeqCst);
        // The key's tenant stays in the map, marked moved, for as long as the override
        // exists: whoever meets it looks for the override, and no fresh tenant can take its
        // place meanwhile.
        let tats = loop {
            let carried = self.tenants.get_or_insert(
                &key,
                || Tenant::with_state(0, [0; N]).into_moved(),
                |t, new| {
                    if new {
                        Some(None)
                    } else {
                        t.freeze(&self.class, &class, at).map(Some)
                    }
                },
            );
            match carried {
                Some(tats) => break tats,
                None => {
                    self.tenants.remove_if(&key, Tenant::is_evicted);
                }
            }
        };
        let tenant = match tats {
            Some(tats) => Tenant::with_state(class.version(), tats),
            None => Tenant::fresh(&class, at.max(self.floor.load(Acquire))),
        };
        self.overrides
            .get_or_insert(&key, || Arc::new(Overridden { class, tenant }), |_, _| ());
        crate::obs::limits_changed(self.name, limits);
        Ok(())
    }

    /// Returns `key` to its class's limits (units in use carry over); whether it had an
    /// override.
    pub fn clear_override(&self, key: &K) -> bool {
        let _g = lock(&self.override_lock);
        let at = self.fresh_time(self.clock.now());
        let Some(tats) = self
            .overrides
            .get(key, |o| o.tenant.freeze(&o.class, &self.class, at))
        else {
            return false;
        };
        let tats = tats.expect("an override's tenant is never swept");
        let version = self.class.version();
        // The moved tenant left in the map is replaced in one step by the carried state.
        self.tenants.replace_if(
            key,
            true,
            |t| t.is_moved(),
            || Tenant::with_state(version, tats),
        );
        self.overrides.remove_if(key, |_| true);
        self.override_count.fetch_sub(1, SeqCst);
        true
    }

    /// The limits of `key`'s override, if it has one.
    pub fn override_limits(&self, key: &K) -> Option<Vec<Limit>> {
        self.overrides.get(key, |o| o.class.limits())
    }
}

/// The error for a refusal by budget `i` of `class`.
#[cold]
fn refusal<const N: usize>(class: &Class<N>, i: usize, r: Refusal, now: u64, ask: Ask) -> Error {
    let budget = class.budget(i);
    match r {
        Refusal::Capacity(capacity) => Error::InsufficientCapacity {
            budget,
            requested: ask.units(budget),
            capacity,
        },
        Refusal::Wait { rate, target } => {
            let window_ns = u64::try_from(class.window(i).as_nanos()).unwrap_or(u64::MAX);
            Error::RateLimitExceeded(Denied::lazy(budget, window_ns, rate, target, now))
        }
    }
}
