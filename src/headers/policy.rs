//! The bounds on what a response may teach: ceilings on learned limits and the range of a
//! 429's cooldown. A response header is input from a stranger (the provider, or any proxy or
//! mock in front of it), so nothing it says may lift a key above what its user allowed or
//! take it out of service for longer than the user allowed.

use super::budgets::{self, Held};
use crate::budget::Budget;
use crate::usage::Usage;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How far header learning may move a key: the most a learned limit may be, and the range a
/// 429's cooldown is clamped to. Set per key with
/// [`KeyPool::set_learn_policy`](crate::KeyPool::set_learn_policy).
///
/// A learned limit above the ceiling is lowered to it and reported in
/// [`LearnReport::clamped`](super::LearnReport::clamped); a lower one is always taken (it only
/// makes the key more conservative). A budget's ceiling is its explicit
/// [`max_limit`](Self::max_limit) if set, else the limit the key was configured with times
/// [`factor`](Self::factor) (no ceiling for a budget configured as unlimited: any learned
/// limit is stricter than none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LearnPolicy {
    factor: u64,
    max: Vec<(Budget, u64)>,
    min_cooldown: Duration,
    max_cooldown: Duration,
}

impl LearnPolicy {
    /// The default ceiling factor: a learned limit may be at most 32 times the configured one.
    ///
    /// Why 32: the legitimate reason to learn a *higher* limit is that the key is on a higher
    /// tier than the figure it was configured with (a conservative guess, or a tier upgrade
    /// since). One tier step at OpenAI or Anthropic raises a limit by up to about 20 times
    /// (Anthropic's tier 1 to tier 2 is 50 to 1,000 requests per minute); 32 is the next power
    /// of two. A value from a broken or hostile header (`99999999999`) is then held to 32 times
    /// what the user asked for. Users who rely on the limiter for spend control set
    /// [`max_limit`](Self::max_limit) or a factor of 1.
    pub const DEFAULT_FACTOR: u64 = 32;

    /// The default shortest cooldown after a 429: one second. A 429 means the provider refused
    /// just now; a hint of zero, a date in the past or no hint at all must not send the next
    /// request straight back to it.
    pub const DEFAULT_MIN_COOLDOWN: Duration = Duration::from_secs(1);

    /// The default longest cooldown after a 429: one hour. Per-minute budgets never need more
    /// than a minute; daily budgets may legitimately say hours, and re-trying such a key once
    /// an hour costs one 429 an hour, while a bogus hint (`retry-after: 99999999999`) costs the
    /// key an hour of service at most.
    pub const DEFAULT_MAX_COOLDOWN: Duration = Duration::from_secs(3600);

    /// The shortest cooldown that can be configured: a 429 always takes the key out for a
    /// moment, never for zero.
    pub const FLOOR_COOLDOWN: Duration = Duration::from_millis(1);

    /// The defaults: factor [`DEFAULT_FACTOR`](Self::DEFAULT_FACTOR), no explicit maximum,
    /// cooldowns within [`DEFAULT_MIN_COOLDOWN`](Self::DEFAULT_MIN_COOLDOWN) ..=
    /// [`DEFAULT_MAX_COOLDOWN`](Self::DEFAULT_MAX_COOLDOWN).
    pub fn new() -> Self {
        LearnPolicy {
            factor: Self::DEFAULT_FACTOR,
            max: Vec::new(),
            min_cooldown: Self::DEFAULT_MIN_COOLDOWN,
            max_cooldown: Self::DEFAULT_MAX_COOLDOWN,
        }
    }

    /// Learned limits may be at most `factor` times the configured ones (`0` is read as `1`:
    /// learning may then only lower a limit).
    pub fn factor(mut self, factor: u64) -> Self {
        self.factor = factor.max(1);
        self
    }

    /// Learned limits of `budget` may be at most `max`, whatever the configured limit (this
    /// replaces the factor for that budget). `0` is read as `1`: a limit of 0 would mean
    /// "unlimited" to `set_limit`.
    pub fn max_limit(mut self, budget: Budget, max: u64) -> Self {
        self.max.retain(|(b, _)| *b != budget);
        self.max.push((budget, max.max(1)));
        self
    }

    /// A 429's cooldown is clamped to `min ..= max` (`min` at least
    /// [`FLOOR_COOLDOWN`](Self::FLOOR_COOLDOWN); a `max` below `min` is read as `min`).
    pub fn cooldown(mut self, min: Duration, max: Duration) -> Self {
        self.min_cooldown = min.max(Self::FLOOR_COOLDOWN);
        self.max_cooldown = max.max(self.min_cooldown);
        self
    }

    /// The shortest cooldown after a 429.
    pub fn min_cooldown(&self) -> Duration {
        self.min_cooldown
    }

    /// The longest cooldown after a 429.
    pub fn max_cooldown(&self) -> Duration {
        self.max_cooldown
    }

    /// `d` clamped to the cooldown range.
    pub fn clamp_cooldown(&self, d: Duration) -> Duration {
        d.clamp(self.min_cooldown, self.max_cooldown)
    }

    /// The ceilings for a limiter configured as `configured` says (read it once, when the
    /// limiter is built, before anything was learned).
    pub fn ceilings(&self, configured: &Usage) -> Ceilings {
        self.ceilings_for(&budgets::limits(&budgets::held(configured)))
    }

    /// The ceilings for configured limits given as `(budget, limit)`, `0` unlimited.
    pub(crate) fn ceilings_for(&self, configured: &[(Budget, u64)]) -> Ceilings {
        let max = configured
            .iter()
            .map(|&(budget, limit)| {
                let explicit = self.max.iter().find(|(b, _)| *b == budget).map(|m| m.1);
                let derived = match limit {
                    0 => u64::MAX,
                    l => l.saturating_mul(self.factor),
                };
                (budget, explicit.unwrap_or(derived))
            })
            .collect();
        Ceilings { max }
    }
}

impl Default for LearnPolicy {
    fn default() -> Self {
        Self::new()
    }
}

/// The most a learned limit may be, per budget, as [`apply`](super::apply) enforces it.
///
/// A budget without an entry may only have its limit lowered by learning (its ceiling is its
/// limit at the time); `u64::MAX` is no ceiling. Build one with
/// [`LearnPolicy::ceilings`] or by hand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ceilings {
    max: Vec<(Budget, u64)>,
}

impl Ceilings {
    /// No entry: learning may only lower limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Learned limits of `budget` may be at most `max` (`0` is read as `1`).
    pub fn with(mut self, budget: Budget, max: u64) -> Self {
        self.max.retain(|(b, _)| *b != budget);
        self.max.push((budget, max.max(1)));
        self
    }

    /// The ceiling of `budget`, if it has one of its own.
    pub fn get(&self, budget: Budget) -> Option<u64> {
        self.max.iter().find(|(b, _)| *b == budget).map(|m| m.1)
    }

    /// The ceiling that applies to `held` now: its own, else its current limit.
    pub(crate) fn of(&self, held: &Held) -> u64 {
        self.get(held.budget).unwrap_or(match held.limit {
            0 => u64::MAX,
            l => l,
        })
    }
}

/// What a [`KeyPool`](crate::KeyPool) entry remembers for header learning: its policy, and the
/// limits its limiter had when learning first touched it (the "configured" limits the
/// ceilings derive from; captured once, so that a learned limit never becomes the base of the
/// next ceiling).
#[derive(Debug, Default)]
pub(crate) struct KeyLearning {
    policy: Mutex<LearnPolicy>,
    configured: OnceLock<Vec<(Budget, u64)>>,
    /// How 429s without limit headers move the key's limits.
    pub(crate) adapt: super::adapt::Adapt,
}

impl KeyLearning {
    pub(crate) fn policy(&self) -> LearnPolicy {
        // A poisoned lock only means a panic while cloning or replacing a whole value.
        self.policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_policy(&self, policy: LearnPolicy) {
        *self.policy.lock().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    pub(crate) fn configured(&self) -> Option<&[(Budget, u64)]> {
        self.configured.get().map(Vec::as_slice)
    }

    /// Records `limits` as the configured ones unless some were recorded already (then those
    /// are kept and returned).
    pub(crate) fn capture(&self, limits: Vec<(Budget, u64)>) -> &[(Budget, u64)] {
        self.configured.get_or_init(|| limits)
    }

    /// Takes `other`'s configured limits if it has some and this has none (keys sharing a
    /// limiter share its configuration).
    pub(crate) fn inherit(&self, other: &KeyLearning) {
        if let Some(c) = other.configured() {
            let _ = self.configured.set(c.to_vec());
        }
    }
}
