//! `KeyPool`: several API keys for one provider, each request sent through the key with the
//! most headroom. The design is documented on [`KeyPool`].

use crate::budget::{Budget, Cost, Limit};
use crate::clock::{Clock, MonotonicClock};
use crate::error::{Denied, Error};
use crate::rate_limiter::RateLimiter;
use crate::usage::{BudgetUsage, Usage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// One key of a [`KeyPool`]: its name, its limiter and its cooldown.
#[derive(Debug)]
pub(crate) struct PoolEntry<K, L> {
    key: K,
    limiter: Arc<L>,
    /// Pool clock reading until which the key is skipped (`0`: not cooling down).
    cooldown_until: AtomicU64,
    /// Pool clock reading before which the key's last denial said it cannot serve: a hint
    /// that lets sampling (large pools) pass over it. Not a cooldown: a key is still tried
    /// when nothing else is left.
    busy_until: AtomicU64,
    /// Header learning's bounds for this key and the limits they derive from.
    #[cfg(feature = "http")]
    pub(crate) learning: crate::headers::KeyLearning,
}

impl<K, L> PoolEntry<K, L> {
    /// A key not cooling down, with nothing learned yet.
    fn new(key: K, limiter: Arc<L>) -> Arc<Self> {
        Arc::new(PoolEntry {
            key,
            limiter,
            cooldown_until: AtomicU64::new(0),
            busy_until: AtomicU64::new(0),
            #[cfg(feature = "http")]
            learning: Default::default(),
        })
    }

    /// The key's limiter (shared with other keys of the same provider budget).
    #[cfg(feature = "http")]
    pub(crate) fn limiter(&self) -> &Arc<L> {
        &self.limiter
    }

    fn busy_at(&self, now: u64) -> Option<u64> {
        let until = self.busy_until.load(Ordering::Relaxed);
        (until > now).then_some(until)
    }

    fn cooling_at(&self, now: u64) -> Option<u64> {
        let until = self.cooldown_until.load(Ordering::Acquire);
        (until > now).then_some(until)
    }
}

type Snapshot<K, L> = Arc<Vec<Arc<PoolEntry<K, L>>>>;

/// A set of keys, each with a limiter, admitting each request on the key with the most
/// headroom.
///
/// # Design
///
/// Each key carries an `Arc<L>` limiter; keys that share one provider budget (an OpenAI
/// project, an Anthropic org and model class) are added with the *same* `Arc`, so they draw
/// on one budget. The key set lives in a `RwLock<Arc<Vec<Arc<Entry>>>>`: a call clones the
/// `Arc` of the current snapshot under the read lock (a few nanoseconds, never held across an
/// `await`) and works on that snapshot, while `add`/`remove` build a new vector and swap it
/// in. Traffic never stops for a change, and a request already admitted on a removed key can
/// still be settled, because its permit holds the entry. We use `std::sync::RwLock` rather
/// than an `arc-swap` dependency: the pool path already makes one `usage` call per key, so
/// an uncontended read lock is not what bounds it.
///
/// Cooldowns (after a provider 429) are one `AtomicU64` per key holding a reading of the
/// pool's clock (`0`: none). Give the pool the same clock as its limiters (e.g. a shared
/// `TokioClock` or `MonotonicClock`) so that "until" means the same instant everywhere.
///
/// # Choosing a key
///
/// For a request of `t` tokens a key's headroom is the smaller of its two budgets' fractions
/// left *after* this request: `(requests_remaining - 1) / requests_limit` and
/// `(tokens_remaining - t) / tokens_limit` (an unlimited budget counts as 1). Keys are tried
/// in order of headroom; the admission itself is the key's own atomic `try_acquire`, so a key
/// that loses a race just denies and the next one is tried. At most one key ever admits a
/// given call: the loop returns at the first success.
///
/// A pool of at most 64 keys ranks every key for every request. A larger one ranks a few
/// keys drawn at random (the best of a few random choices, whose headroom is close to the
/// best of all at a cost that does not grow with the pool: about 3.5 us at 100,000 keys), and
/// remembers for each key that denied when it can serve again, so that later draws pass it
/// over until then. [`add_all`](Self::add_all) adds many keys with one copy of the key set.
#[derive(Debug)]
pub struct KeyPool<K, L, C: Clock = MonotonicClock> {
    entries: RwLock<Snapshot<K, L>>,
    clock: C,
}

/// An admission through a [`KeyPool`]: the key it went to and that key's permit.
///
/// Settle it with [`KeyPool::settle`]; it keeps its key's entry alive, so it settles even if
/// the key was removed in the meantime.
#[derive(Debug)]
pub struct PoolPermit<K, L: RateLimiter> {
    entry: Arc<PoolEntry<K, L>>,
    permit: L::Permit,
}

impl<K, L: RateLimiter> PoolPermit<K, L> {
    /// The key the request was admitted on: send the request with this key.
    pub fn key(&self) -> &K {
        &self.entry.key
    }

    /// The limiter of that key.
    pub fn limiter(&self) -> &Arc<L> {
        &self.entry.limiter
    }

    /// The key's own permit.
    pub fn inner(&self) -> &L::Permit {
        &self.permit
    }
}

impl<K, L> KeyPool<K, L, MonotonicClock> {
    /// An empty pool timing cooldowns on a [`MonotonicClock`].
    pub fn new() -> Self {
        Self::with_clock(MonotonicClock::new())
    }
}

impl<K, L> Default for KeyPool<K, L, MonotonicClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, L, C: Clock> KeyPool<K, L, C> {
    /// An empty pool timing cooldowns on `clock` (use the limiters' clock).
    pub fn with_clock(clock: C) -> Self {
        KeyPool {
            entries: RwLock::new(Arc::new(Vec::new())),
            clock,
        }
    }

    /// The clock cooldowns are read on.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The current key set. Cheap: one `Arc` clone under a read lock held for no longer.
    pub(crate) fn snapshot(&self) -> Arc<Vec<Arc<PoolEntry<K, L>>>> {
        // A poisoned lock only means a writer panicked between building and swapping a
        // vector; the snapshot it guards is still a whole one.
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether the pool has no key.
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    fn update(&self, f: impl FnOnce(&mut Vec<Arc<PoolEntry<K, L>>>)) {
        let mut guard = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<_> = guard.as_ref().clone();
        f(&mut next);
        *guard = Arc::new(next);
    }
}

impl<K: PartialEq, L, C: Clock> KeyPool<K, L, C> {
    /// Adds `key` with its limiter (pass the same `Arc` for keys sharing a provider budget).
    /// A key already present is replaced, its cooldown cleared. Traffic is not stopped.
    pub fn add(&self, key: K, limiter: Arc<L>) {
        let entry = PoolEntry::new(key, limiter);
        self.update(|v| {
            // Keys sharing a limiter share the limits it was configured with (the base of
            // learning's ceilings), also across a replacement or a key rotation.
            #[cfg(feature = "http")]
            for e in v.iter().filter(|e| Arc::ptr_eq(&e.limiter, &entry.limiter)) {
                entry.learning.inherit(&e.learning);
            }
            v.retain(|e| e.key != entry.key);
            v.push(entry);
        });
    }

    /// Adds many keys in one step: what `add` does for each, in order, at the cost of one
    /// copy of the key set rather than one per key (adding 100,000 keys one by one copies the
    /// set 100,000 times).
    pub fn add_all(&self, keys: impl IntoIterator<Item = (K, Arc<L>)>)
    where
        K: std::hash::Hash + Eq,
    {
        use std::collections::{HashMap, HashSet};
        let new: Vec<Arc<PoolEntry<K, L>>> = keys
            .into_iter()
            .map(|(key, limiter)| PoolEntry::new(key, limiter))
            .collect();
        self.update(|v| {
            // Entries sharing a limiter, by the limiter's address, in the order `add` would
            // have met them.
            let mut by_limiter: HashMap<*const L, Vec<Arc<PoolEntry<K, L>>>> = HashMap::new();
            for e in v.iter() {
                by_limiter
                    .entry(Arc::as_ptr(&e.limiter))
                    .or_default()
                    .push(e.clone());
            }
            // The last of equal keys wins, as with repeated `add`s.
            let mut last: HashMap<&K, usize> = HashMap::new();
            for (i, e) in new.iter().enumerate() {
                last.insert(&e.key, i);
            }
            let replaced: HashSet<&K> = last.keys().copied().collect();
            v.retain(|e| !replaced.contains(&e.key));
            for (i, e) in new.iter().enumerate() {
                let shared = by_limiter.entry(Arc::as_ptr(&e.limiter)).or_default();
                #[cfg(feature = "http")]
                for s in shared.iter() {
                    e.learning.inherit(&s.learning);
                }
                shared.push(e.clone());
                if last.get(&e.key) == Some(&i) {
                    v.push(e.clone());
                }
            }
        });
    }

    /// Removes `key`; returns whether it was there. Permits already granted on it can still be
    /// settled.
    pub fn remove(&self, key: &K) -> bool {
        let mut found = false;
        self.update(|v| {
            let before = v.len();
            v.retain(|e| e.key != *key);
            found = v.len() != before;
        });
        found
    }

    /// The limiter of `key`, if present.
    pub fn limiter(&self, key: &K) -> Option<Arc<L>> {
        self.find(key).map(|e| e.limiter.clone())
    }

    pub(crate) fn find(&self, key: &K) -> Option<Arc<PoolEntry<K, L>>> {
        self.snapshot().iter().find(|e| e.key == *key).cloned()
    }

    /// Skips `key` for `duration` from now (e.g. a provider 429's `retry-after`). A longer
    /// cooldown already set is kept. Returns whether the key exists.
    pub fn cool_down(&self, key: &K, duration: Duration) -> bool {
        let until = self.clock.now().saturating_add(nanos(duration)).max(1);
        self.cool_down_until(key, until)
    }

    /// Skips `key` until the pool clock reads `until_ns`; a later deadline already set is kept.
    pub fn cool_down_until(&self, key: &K, until_ns: u64) -> bool {
        match self.find(key) {
            Some(e) => {
                e.cooldown_until.fetch_max(until_ns, Ordering::AcqRel);
                true
            }
            None => false,
        }
    }

    /// Ends `key`'s cooldown now.
    pub fn clear_cooldown(&self, key: &K) -> bool {
        self.find(key)
            .map(|e| e.cooldown_until.store(0, Ordering::Release))
            .is_some()
    }

    /// The pool clock reading until which `key` is cooling down, if it is.
    pub fn cooldown_until(&self, key: &K) -> Option<u64> {
        self.find(key)?.cooling_at(self.clock.now())
    }
}

/// Pools of at most this many keys rank every key for each request (exact, and cheap at this
/// size); larger pools sample.
pub(crate) const RANK_ALL: usize = 64;
/// Keys drawn per round of sampling in a larger pool: the best of a few random choices is
/// already near the best of all, and each key drawn costs cache misses on its limiter (at
/// 100,000 keys, 8 draws took 5.8 us a call, 4 draws 3.5 us).
pub(crate) const SAMPLE: usize = 4;
/// Rounds of sampling `try_acquire` makes before it reports a denial.
pub(crate) const ROUNDS: u64 = 4;

/// A small mixing generator for sampling (splitmix64 over a shared counter): no statistical
/// quality is needed, only draws that differ between calls and threads.
struct Mix(u64);

static DRAWS: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

impl Mix {
    fn seeded(round: u64) -> Mix {
        Mix(DRAWS.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ round)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The fraction of one budget left after taking `n` units (negative when it does not fit, so
/// such keys sort last but are still tried: they may have refilled).
fn fraction_after(b: &BudgetUsage, n: u64) -> f64 {
    if b.limit == 0 {
        return 1.0;
    }
    (b.remaining as f64 - n as f64) / b.limit as f64
}

/// A key's headroom for one request of `cost`: its tightest budget's fraction left after it
/// (1 when nothing is limited).
pub(crate) fn headroom(usage: &Usage, cost: Cost) -> f64 {
    usage
        .budgets()
        .map(|b| fraction_after(b, b.budget.units(1, cost)))
        .fold(1.0, f64::min)
}

/// A denial standing for "every key is cooling down until `until` (pool clock)".
fn cooldown_denial(until: u64, now: u64) -> Error {
    Error::RateLimitExceeded(Denied::until(
        Budget::Requests,
        std::time::Duration::ZERO,
        until,
        now,
    ))
}

/// Keeps the denial that a caller should see when no key admits: the soonest retry.
fn sooner(best: Option<Error>, next: Error) -> Option<Error> {
    let wait = |e: &Error| match e {
        Error::RateLimitExceeded(d) => Some(d.retry_after()),
        _ => None,
    };
    match (&best, wait(&next)) {
        (None, _) => Some(next),
        (Some(b), Some(n)) if wait(b).map_or(true, |w| n < w) => Some(next),
        _ => best,
    }
}

impl<K, L, C> KeyPool<K, L, C>
where
    K: Send + Sync,
    L: RateLimiter,
    C: Clock,
{
    /// The keys not cooling down, best headroom for `tokens` first; with the soonest cooldown
    /// end among the others (`None` if no key is cooling down). Looks at every key: for
    /// reports, and for choosing in pools of at most [`RANK_ALL`] keys.
    async fn ranked(&self, cost: Cost) -> (Vec<Arc<PoolEntry<K, L>>>, Option<u64>) {
        self.rank(self.snapshot().iter(), cost).await
    }

    /// The keys to try for one request, best first, and the soonest cooldown end among the
    /// keys looked at. A pool of at most [`RANK_ALL`] keys ranks them all; a larger one
    /// ranks [`SAMPLE`] keys drawn at random among those neither cooling down nor known to
    /// be busy (the best of a few random choices: near the best headroom, at a cost that does
    /// not grow with the pool). `round` draws another sample.
    ///
    /// The flag says whether every key was looked at (a small pool).
    async fn candidates(
        &self,
        cost: Cost,
        round: u64,
    ) -> (Vec<Arc<PoolEntry<K, L>>>, Option<u64>, bool) {
        let snap = self.snapshot();
        if snap.len() <= RANK_ALL {
            let (ranked, cool) = self.rank(snap.iter(), cost).await;
            return (ranked, cool, true);
        }
        let now = self.clock.now();
        let mut rng = Mix::seeded(round);
        let mut picked: Vec<&Arc<PoolEntry<K, L>>> = Vec::with_capacity(SAMPLE);
        let mut soonest_cool: Option<u64> = None;
        // Busy keys are passed over while others are left; the least busy is kept in case
        // every draw is busy.
        let mut least_busy: Option<(u64, &Arc<PoolEntry<K, L>>)> = None;
        for _ in 0..4 * SAMPLE {
            if picked.len() == SAMPLE {
                break;
            }
            let e = &snap[rng.below(snap.len())];
            if let Some(until) = e.cooling_at(now) {
                soonest_cool = Some(soonest_cool.map_or(until, |s| s.min(until)));
            } else if let Some(until) = e.busy_at(now) {
                if least_busy.map_or(true, |(u, _)| until < u) {
                    least_busy = Some((until, e));
                }
            } else if !picked.iter().any(|p| Arc::ptr_eq(p, e)) {
                picked.push(e);
            }
        }
        if picked.is_empty() {
            picked.extend(least_busy.map(|(_, e)| e));
        }
        let (ranked, _) = self.rank(picked.into_iter(), cost).await;
        (ranked, soonest_cool, false)
    }

    /// `entries` not cooling down, best headroom first, and the soonest cooldown end among
    /// the others.
    async fn rank<'a>(
        &self,
        entries: impl Iterator<Item = &'a Arc<PoolEntry<K, L>>>,
        cost: Cost,
    ) -> (Vec<Arc<PoolEntry<K, L>>>, Option<u64>)
    where
        K: 'a,
        L: 'a,
    {
        let now = self.clock.now();
        let mut soonest_cool: Option<u64> = None;
        let mut ranked = Vec::new();
        for e in entries {
            if let Some(until) = e.cooling_at(now) {
                soonest_cool = Some(soonest_cool.map_or(until, |s| s.min(until)));
                continue;
            }
            // A backend that cannot answer ranks last but is still tried.
            let h = match e.limiter.usage().await {
                Ok(u) => headroom(&u, cost),
                Err(_) => f64::NEG_INFINITY,
            };
            ranked.push((h, e.clone()));
        }
        // Stable sort: equal headroom keeps insertion order (deterministic, testable).
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        (ranked.into_iter().map(|(_, e)| e).collect(), soonest_cool)
    }

    /// Admits one request of `tokens` on the key with the most headroom, now, or says why not:
    /// the soonest retry among the keys' denials, a cooldown, or the capacity error if no key
    /// could ever hold it. Never admits on two keys.
    ///
    /// In a pool of more than 64 keys the choice is among a few keys drawn at random (4 per
    /// round, at most 4 rounds), not all: its cost does not grow with the pool, and a key
    /// that denies is passed over by later draws until its retry time. A denial then names
    /// the soonest retry among the keys drawn.
    pub async fn try_acquire(&self, cost: impl Into<Cost>) -> Result<PoolPermit<K, L>, Error> {
        let cost = cost.into();
        let mut best: Option<Error> = None;
        let mut soonest_cool: Option<u64> = None;
        for round in 0..ROUNDS {
            let (ranked, cool, whole) = self.candidates(cost, round).await;
            soonest_cool = match (soonest_cool, cool) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            for entry in ranked {
                match entry.limiter.try_acquire(cost).await {
                    Ok(permit) => return Ok(PoolPermit { entry, permit }),
                    // Lost the race for this key's last slot, or it is short: try the next.
                    Err(e) => {
                        if let Error::RateLimitExceeded(d) = &e {
                            self.note_busy(&entry, d);
                        }
                        best = sooner(best, e);
                    }
                }
            }
            if whole {
                break;
            }
        }
        Err(match (best, soonest_cool) {
            (Some(e @ Error::RateLimitExceeded(_)), _) => e,
            (_, Some(until)) => cooldown_denial(until, self.clock.now()),
            (Some(e), None) => e,
            (None, None) => Error::InvalidConfig("the key pool is empty"),
        })
    }

    /// Waits until one request of `cost` is admitted on some key: admits at once if a key
    /// can, otherwise waits on the key that can serve soonest (claiming its slot there, in
    /// that key's claim order). A key put on cooldown while we waited on it is given up: the
    /// permit is settled with zero tokens and the choice is made again.
    pub async fn acquire(&self, cost: impl Into<Cost>) -> Result<PoolPermit<K, L>, Error> {
        self.acquire_within(cost, Duration::MAX).await
    }

    /// [`acquire`](Self::acquire), but only if some key can admit within `max_wait`: when
    /// the soonest key (or the soonest end of a cooldown) lies further out,
    /// [`Error::RateLimitExceeded`] with that key's wait, at once and with nothing claimed.
    /// The bound holds across the whole call: a key given up after a wait (it went on
    /// cooldown meanwhile) leaves only what remains of `max_wait` for the next choice.
    pub async fn acquire_within(
        &self,
        cost: impl Into<Cost>,
        max_wait: Duration,
    ) -> Result<PoolPermit<K, L>, Error> {
        let cost = cost.into();
        let deadline = self.clock.now().saturating_add(nanos(max_wait));
        let mut round = 0;
        loop {
            let (ranked, soonest_cool, _) = self.candidates(cost, round).await;
            round += 1;
            // The key that can serve soonest, and its denial (whose wait says how soon).
            let mut soonest: Option<(Arc<PoolEntry<K, L>>, Denied)> = None;
            let mut last_err = None;
            for entry in ranked {
                match entry.limiter.try_acquire(cost).await {
                    Ok(permit) => return Ok(PoolPermit { entry, permit }),
                    Err(Error::RateLimitExceeded(d)) => {
                        self.note_busy(&entry, &d);
                        if soonest
                            .as_ref()
                            .map_or(true, |(_, s)| d.retry_after() < s.retry_after())
                        {
                            soonest = Some((entry, d));
                        }
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            let now = self.clock.now();
            let left = Duration::from_nanos(deadline.saturating_sub(now));
            // A cooldown ending before the best key frees up is worth waiting for instead.
            let cool_first = match (&soonest, soonest_cool) {
                (Some((_, d)), Some(until)) => until < now.saturating_add(nanos(d.retry_after())),
                _ => false,
            };
            if cool_first {
                soonest = None;
            }
            match (soonest, soonest_cool) {
                (Some((_, d)), _) if d.retry_after() > left => {
                    return Err(Error::RateLimitExceeded(d))
                }
                (Some((entry, _)), _) => match entry.limiter.acquire_within(cost, left).await {
                    Ok(permit) if entry.cooling_at(self.clock.now()).is_none() => {
                        return Ok(PoolPermit { entry, permit });
                    }
                    Ok(permit) => {
                        let _ = entry.limiter.settle(permit, Cost::ZERO).await;
                    }
                    // Someone claimed ahead of us since we ranked it: choose again (never
                    // with an unbounded wait, whose claim cannot be refused).
                    Err(Error::RateLimitExceeded(_)) => {}
                    Err(e) => return Err(e),
                },
                (None, Some(until)) if until > deadline => {
                    return Err(cooldown_denial(until, now));
                }
                (None, Some(until)) => {
                    let at = self.clock.instant_at(until);
                    tokio::time::sleep_until(at.into()).await;
                }
                (None, None) => {
                    return Err(last_err.unwrap_or(Error::InvalidConfig("the key pool is empty")))
                }
            }
        }
    }

    /// Remembers when a key that denied can serve again, so that sampling passes over it.
    fn note_busy(&self, entry: &PoolEntry<K, L>, d: &Denied) {
        let until = self.clock.now().saturating_add(nanos(d.retry_after()));
        entry.busy_until.store(until, Ordering::Relaxed);
    }

    /// Settles a pool permit on the key it was granted on.
    pub async fn settle(
        &self,
        permit: PoolPermit<K, L>,
        actual: impl Into<Cost>,
    ) -> Result<(), Error> {
        permit
            .entry
            .limiter
            .settle(permit.permit, actual.into())
            .await
    }
}

impl<K, L, C> RateLimiter for KeyPool<K, L, C>
where
    K: Send + Sync,
    L: RateLimiter,
    C: Clock,
{
    type Permit = PoolPermit<K, L>;

    async fn allow(&self) -> bool {
        KeyPool::try_acquire(self, Cost::ZERO).await.is_ok()
    }

    async fn wait(&self) -> Result<(), Error> {
        KeyPool::acquire(self, Cost::ZERO).await.map(drop)
    }

    /// A pool has no limits of its own: set them on each key's limiter.
    async fn set_limit(&self, _rpm: u64, _tpm: u64) -> Result<(), Error> {
        Err(Error::InvalidConfig(
            "a key pool has no limits of its own; set them per key",
        ))
    }

    /// A pool has no limits of its own: read them on each key's limiter.
    async fn limits(&self) -> Result<Vec<Limit>, Error> {
        Err(Error::InvalidConfig(
            "a key pool has no limits of its own; read them per key",
        ))
    }

    /// A pool has no limits of its own: set them on each key's limiter.
    async fn set_limits(&self, _limits: &[Limit]) -> Result<(), Error> {
        Err(Error::InvalidConfig(
            "a key pool has no limits of its own; set them per key",
        ))
    }

    /// Per budget (kind and window), the sum over distinct limiters (keys sharing one are
    /// counted once) not cooling down; a budget unlimited on any of them is unlimited.
    async fn usage(&self) -> Result<Usage, Error> {
        let (ranked, _) = self.ranked(Cost::ZERO).await;
        let mut seen: Vec<Arc<L>> = Vec::new();
        let mut usages = Vec::new();
        for e in ranked {
            if seen.iter().any(|s| Arc::ptr_eq(s, &e.limiter)) {
                continue;
            }
            seen.push(e.limiter.clone());
            usages.push(e.limiter.usage().await?);
        }
        let Some(first) = usages.first() else {
            return Ok(Usage::new([]));
        };
        let sums = first.budgets().filter_map(|b| {
            let mut sum = *b;
            for u in &usages[1..] {
                let o = u
                    .budgets()
                    .find(|o| o.budget == b.budget && o.window == b.window)?;
                sum.limit = sum.limit.saturating_add(o.limit);
                sum.capacity = sum.capacity.saturating_add(o.capacity);
                sum.used = sum.used.saturating_add(o.used);
                sum.remaining = sum.remaining.saturating_add(o.remaining);
            }
            Some(sum)
        });
        Ok(Usage::new(sums.collect::<Vec<_>>()))
    }

    async fn peek(&self, cost: impl Into<Cost> + Send) -> bool {
        let cost = cost.into();
        for e in self.candidates(cost, 0).await.0 {
            if e.limiter.peek(cost).await {
                return true;
            }
        }
        false
    }

    /// Records the cost on the key with the most headroom (waiting out any debt there).
    async fn consume_tokens(&self, cost: impl Into<Cost> + Send) -> Result<(), Error> {
        let cost = cost.into();
        match self.candidates(cost, 0).await.0.first() {
            Some(e) => e.limiter.consume_tokens(cost).await,
            None => Err(Error::InvalidConfig("no key to charge in the pool")),
        }
    }

    /// Records the usage on the key with the most headroom (a pool has no budget of its own).
    async fn charge(&self, requests: u64, cost: impl Into<Cost> + Send) -> Result<(), Error> {
        let cost = cost.into();
        match self.candidates(cost, 0).await.0.first() {
            Some(e) => e.limiter.charge(requests, cost).await,
            None => Err(Error::InvalidConfig("no key to charge in the pool")),
        }
    }

    async fn try_acquire(&self, cost: impl Into<Cost> + Send) -> Result<Self::Permit, Error> {
        KeyPool::try_acquire(self, cost).await
    }

    async fn acquire_within(
        &self,
        cost: impl Into<Cost> + Send,
        max_wait: Duration,
    ) -> Result<Self::Permit, Error> {
        KeyPool::acquire_within(self, cost, max_wait).await
    }

    async fn settle(
        &self,
        permit: Self::Permit,
        actual: impl Into<Cost> + Send,
    ) -> Result<(), Error> {
        KeyPool::settle(self, permit, actual).await
    }
}
