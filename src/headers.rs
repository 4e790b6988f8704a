//! Learning a key's limits from the provider's response headers (feature `http`).
//!
//! Two steps, so each can be tested and used alone:
//!
//! 1. [`parse`] reads a [`HeaderMap`] into [`ProviderLimits`]: OpenAI's
//!    `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (resets as Go durations, `6m0s`),
//!    Azure OpenAI's remaining-only pair, Anthropic's
//!    `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`
//!    (resets as RFC 3339 instants), and `retry-after-ms` / `retry-after` (seconds or an HTTP
//!    date). Every header it cannot use is listed in [`ProviderLimits::ignored`] with the reason.
//! 2. [`apply`] brings a limiter in line with them, through the public [`RateLimiter`] API only:
//!    - a `-limit` that differs from the limiter's feeds one `set_limit` (an equal one does
//!      nothing: a `set_limit` invalidates refunds of permits granted before it), after being
//!      clamped to the key's [`Ceilings`];
//!    - a `-remaining` is a hint that may only make the limiter *more* conservative: when the
//!      provider has less left than our own accounting, the gap is charged, every budget in one
//!      `charge` call (O(1) whatever the figures, as debt if a race made it so, never waiting).
//!      A larger provider figure never grants anything beyond our own accounting.
//!
//! [`KeyPool::learn`](crate::KeyPool::learn) does both for one key with the key's
//! [`LearnPolicy`], and turns a 429 into a cooldown clamped to the policy's range. Where a
//! key's responses carry no limit headers, its limits also adapt to its 429s within its
//! [`AdaptPolicy`]: each 429 cuts them, and they are probed back up slowly while none comes,
//! never above the configured limits (see [`AdaptPolicy`]). Limit headers take precedence.
//!
//! Apply a response's headers as soon as they arrive (with the response's first byte): a
//! `remaining` describes the provider's buckets at that moment, and applied much later it
//! would charge units that have refilled since (conservative, but wasteful).
//!
//! # Trust
//!
//! A response header is input from a stranger: the provider, or any proxy, mock or misbehaving
//! vendor in front of it. So:
//!
//! - A learned limit never exceeds the key's ceiling ([`LearnPolicy::DEFAULT_FACTOR`] times the
//!   configured limit, or an explicit [`LearnPolicy::max_limit`]); above it, it is clamped and
//!   reported in [`LearnReport::clamped`]. A lower limit is always taken.
//! - A 429's cooldown is clamped to the policy's `[min, max]` (1 s to 1 h by default): a hint
//!   of zero, a date in the past, or no hint at all gives the minimum, never zero; a hint of
//!   centuries gives the maximum.
//! - Nothing in `parse` or `apply` loops or waits in proportion to any value: `learn` makes at
//!   most three `usage` calls, one `set_limit` and one `charge` (adaptation sets limits only
//!   where the headers set none).
//! - Adaptation only ever lowers a key below its configured limits, or raises it back towards
//!   them: no response can lift it above them.
//! - When a figure is given more than once (a repeated header, or two providers' names for one
//!   budget) the most conservative value wins: the lowest limit, the lowest remaining, the
//!   latest reset, the longest retry hint. The others are reported in `ignored`, and so are
//!   contradictions: a remaining above the limit in the same response (read as the limit);
//!   `retry-after-ms` and `retry-after` more than a second apart (the longer wins); a retry
//!   hint on a response that is not a 429 (no cooldown).
//!
//! # Choices
//!
//! - Limits are taken to be per the limiter's period (configure the limiter's period to the
//!   provider's window, a minute for RPM/TPM).
//! - Sentinels change nothing: `-1` anywhere (Azure, "unknown"); a `0` limit (it would mean
//!   "unlimited" to `set_limit`); a `0` remaining with neither a limit nor a reset for that
//!   budget in the same response (Azure's shape for deployments it does not report on). A real
//!   exhaustion still ends in a 429, which cools the key down.
//! - Counts beyond `u64` are rejected (for a limit, keeping the limiter as it is is the safe
//!   side); waits beyond `u64` nanoseconds saturate (the cooldown then clamps them).
//! - Anthropic rounds token remaining to the nearest thousand; we read `r` as its upper bound
//!   `r + 499` (at most the limit), so the rounding never charges tokens the key still has.
//! - Anthropic's `tokens-*` is its most restrictive token limit; where it is absent,
//!   `input-tokens-*` feeds the token budget (prompt tokens are what an estimate is mostly made
//!   of). `output-tokens-*` is parsed but no budget of a two-budget limiter takes it: reported
//!   in [`LearnReport::skipped`].

mod adapt;
mod budgets;
mod parse;
mod policy;
mod time;

pub use adapt::AdaptPolicy;
pub use parse::{known_headers, parse};
pub use policy::{Ceilings, LearnPolicy};

pub(crate) use policy::KeyLearning;

use crate::budget::Budget;
use crate::error::Error;
use crate::rate_limiter::RateLimiter;
use budgets::Held;
use http::HeaderMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A header that was present but changed nothing, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    /// The header name.
    pub header: String,
    /// Its value, lossily decoded and cut to 64 characters.
    pub value: String,
    /// Why it was not used.
    pub reason: &'static str,
}

/// A budget as providers report on it. Each maps to the limiter budget of the same name;
/// [`apply`] documents the fallbacks where a limiter lacks one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProviderBudget {
    /// Requests per period.
    Requests,
    /// Tokens per period (input and output together, or the provider's tightest token limit).
    Tokens,
    /// Input (prompt) tokens per period.
    InputTokens,
    /// Output (completion) tokens per period.
    OutputTokens,
}

impl ProviderBudget {
    /// Every provider budget, in the order [`parse`] reads them.
    pub const ALL: [ProviderBudget; 4] = [
        ProviderBudget::Requests,
        ProviderBudget::Tokens,
        ProviderBudget::InputTokens,
        ProviderBudget::OutputTokens,
    ];
}

/// What a response says about one budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// Units per period (never 0).
    pub limit: Option<u64>,
    /// Units left now (at most `limit` when both are known; for Anthropic tokens, the upper
    /// bound of the rounded figure).
    pub remaining: Option<u64>,
    /// Time until the budget is full again.
    pub reset: Option<Duration>,
}

impl Figures {
    /// Neither a limit nor a remaining: nothing [`apply`] could use.
    pub fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none()
    }
}

/// What a response's rate-limit headers say, as far as they could be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderLimits {
    /// Requests.
    pub requests: Figures,
    /// Tokens.
    pub tokens: Figures,
    /// Input tokens (Anthropic).
    pub input_tokens: Figures,
    /// Output tokens (Anthropic).
    pub output_tokens: Figures,
    /// How long to wait before retrying (`retry-after-ms`, else `retry-after`).
    pub retry_after: Option<Duration>,
    /// Headers present but unusable, duplicated or contradicted.
    pub ignored: Vec<Ignored>,
}

impl ProviderLimits {
    /// The figures of `budget`.
    pub fn figures(&self, budget: ProviderBudget) -> &Figures {
        match budget {
            ProviderBudget::Requests => &self.requests,
            ProviderBudget::Tokens => &self.tokens,
            ProviderBudget::InputTokens => &self.input_tokens,
            ProviderBudget::OutputTokens => &self.output_tokens,
        }
    }

    /// The figures of `budget`, to change.
    pub fn figures_mut(&mut self, budget: ProviderBudget) -> &mut Figures {
        match budget {
            ProviderBudget::Requests => &mut self.requests,
            ProviderBudget::Tokens => &mut self.tokens,
            ProviderBudget::InputTokens => &mut self.input_tokens,
            ProviderBudget::OutputTokens => &mut self.output_tokens,
        }
    }
}

/// One change [`apply`] or [`KeyPool::learn`](crate::KeyPool::learn) made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The budget's limit was set (all changed budgets in one `set_limit` call).
    Limit {
        /// The budget.
        budget: Budget,
        /// Its new units per period.
        limit: u64,
    },
    /// This many units were charged to match a lower provider `remaining` (all budgets in one
    /// `charge` call).
    Charged {
        /// The budget.
        budget: Budget,
        /// The units charged.
        units: u64,
    },
    /// The key was put on cooldown for this long (a 429).
    Cooldown(Duration),
}

/// A learned value that was outside the key's bounds, and what was used instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Clamped {
    /// A limit above the budget's ceiling: the ceiling was used.
    Limit {
        /// The budget.
        budget: Budget,
        /// The limit the headers said.
        learned: u64,
        /// The limit set instead.
        ceiling: u64,
    },
    /// A 429's retry hint outside the cooldown range: the nearest end was used.
    Cooldown {
        /// The wait the headers said.
        hint: Duration,
        /// The cooldown used instead.
        used: Duration,
    },
}

/// A usable figure deliberately not applied, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The provider budget the figure was about.
    pub budget: ProviderBudget,
    /// Why it was not applied.
    pub reason: &'static str,
}

/// What learning from one response did and did not do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LearnReport {
    /// The parsed headers (their `ignored` list included).
    pub limits: ProviderLimits,
    /// The changes made, in order.
    pub applied: Vec<Applied>,
    /// Values outside the key's bounds, and what was used instead.
    pub clamped: Vec<Clamped>,
    /// Usable figures deliberately not applied (e.g. a remaining above our own), and why.
    pub skipped: Vec<Skipped>,
}

/// The provider budget whose figures feed the limiter's `budget`.
fn source(budget: Budget, limits: &ProviderLimits) -> ProviderBudget {
    match budget {
        Budget::Requests => ProviderBudget::Requests,
        // The combined (or tightest) token figures, else the input ones.
        Budget::Tokens if limits.tokens.is_empty() && !limits.input_tokens.is_empty() => {
            ProviderBudget::InputTokens
        }
        Budget::Tokens => ProviderBudget::Tokens,
        Budget::InputTokens => ProviderBudget::InputTokens,
        Budget::OutputTokens => ProviderBudget::OutputTokens,
    }
}

/// Brings `limiter` in line with `limits` (see the [module docs](self)): limits above
/// `ceilings` are clamped, then set with one `set_limit` where they differ; lower remainings
/// are charged with one `charge`. Never grants more than the limiter's own accounting; never
/// waits (beyond the backend's own calls) and does work independent of the figures' size.
pub async fn apply<L: RateLimiter>(
    limiter: &L,
    limits: ProviderLimits,
    ceilings: &Ceilings,
) -> Result<LearnReport, Error> {
    apply_held(limiter, limits, ceilings).await.map(|(r, _)| r)
}

/// [`apply`], also returning the limiter's budgets as it left them (what adaptation starts
/// from, without reading them again).
async fn apply_held<L: RateLimiter>(
    limiter: &L,
    limits: ProviderLimits,
    ceilings: &Ceilings,
) -> Result<(LearnReport, Vec<Held>), Error> {
    let mut report = LearnReport::default();
    let mut held = budgets::read(limiter).await?;
    let mut changes = Vec::new();
    for h in &held {
        let Some(learned) = limits.figures(source(h.budget, &limits)).limit else {
            continue;
        };
        let ceiling = ceilings.of(h);
        let limit = if learned > ceiling {
            report.clamped.push(Clamped::Limit {
                budget: h.budget,
                learned,
                ceiling,
            });
            ceiling
        } else {
            learned
        };
        if limit != h.limit {
            changes.push((h.budget, limit));
        }
    }
    if !changes.is_empty() {
        budgets::set_limits(limiter, &held, &changes).await?;
        report.applied.extend(
            changes
                .iter()
                .map(|&(budget, limit)| Applied::Limit { budget, limit }),
        );
        budgets::changed(&mut held, &changes);
    }
    if ProviderBudget::ALL
        .iter()
        .any(|&pb| limits.figures(pb).remaining.is_some())
    {
        budgets::fill_remaining(limiter, &mut held).await?;
    }
    let gaps = gaps(&held, &limits, &mut report.skipped);
    if !gaps.is_empty() {
        budgets::charge(limiter, &gaps).await?;
        report.applied.extend(
            gaps.iter()
                .map(|&(budget, units)| Applied::Charged { budget, units }),
        );
    }
    for pb in ProviderBudget::ALL {
        let used = held.iter().any(|h| source(h.budget, &limits) == pb);
        if !used && !limits.figures(pb).is_empty() {
            report.skipped.push(Skipped {
                budget: pb,
                reason: "no budget of this limiter takes these figures",
            });
        }
    }
    report.limits = limits;
    Ok((report, held))
}

/// The units to charge per budget so that ours do not exceed theirs.
fn gaps(held: &[Held], limits: &ProviderLimits, skipped: &mut Vec<Skipped>) -> Vec<(Budget, u64)> {
    let mut out = Vec::new();
    for h in held {
        let budget = source(h.budget, limits);
        let Some(theirs) = limits.figures(budget).remaining else {
            continue;
        };
        let reason = if h.limit == 0 {
            "remaining ignored: our budget is unlimited (learn its limit first)"
        } else if theirs >= h.remaining {
            "remaining not lower than our own: nothing to charge"
        } else {
            out.push((h.budget, h.remaining - theirs));
            continue;
        };
        skipped.push(Skipped { budget, reason });
    }
    out
}

/// The cooldown a 429 earns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cooldown {
    /// How long the key is skipped: the hint clamped to the policy's range, or the minimum
    /// when there is no hint.
    pub duration: Duration,
    /// What the provider said, if anything: the retry hint, else the latest reset of a budget
    /// it says is empty.
    pub hint: Option<Duration>,
}

/// How long to cool a key down after a 429 under `policy`: the retry hint, else the latest
/// reset of a budget the provider says is empty, else the policy's minimum; always within
/// `[policy.min_cooldown(), policy.max_cooldown()]`.
pub fn cooldown_for(limits: &ProviderLimits, policy: &LearnPolicy) -> Cooldown {
    let empty_reset = ProviderBudget::ALL
        .iter()
        .map(|b| limits.figures(*b))
        .filter(|f| f.remaining == Some(0))
        .filter_map(|f| f.reset)
        .max();
    let hint = limits.retry_after.or(empty_reset);
    Cooldown {
        duration: policy.clamp_cooldown(hint.unwrap_or(Duration::ZERO)),
        hint,
    }
}

impl<K, L, C> crate::KeyPool<K, L, C>
where
    K: PartialEq + Send + Sync,
    L: RateLimiter,
    C: crate::Clock,
{
    /// Learns from one response of `key`: [`parse`]s its headers, [`apply`]s them to the key's
    /// limiter within the key's [`LearnPolicy`] ceilings, and on a 429 puts the key on a
    /// cooldown clamped to the policy's range (see [`cooldown_for`]). `None` if the key is not
    /// in the pool.
    ///
    /// The ceilings derive from the limits the key's limiter had when learning first touched
    /// it (keys sharing a limiter share that capture while one of them is in the pool), so a
    /// learned limit never becomes the base of the next ceiling.
    pub async fn learn(
        &self,
        key: &K,
        status: u16,
        headers: &HeaderMap,
    ) -> Option<Result<LearnReport, Error>> {
        self.learn_at(key, status, headers, SystemTime::now()).await
    }

    /// [`learn`](Self::learn) with the wall-clock time that dates in headers are measured from.
    pub async fn learn_at(
        &self,
        key: &K,
        status: u16,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Option<Result<LearnReport, Error>> {
        let entry = self.find(key)?;
        let policy = entry.learning.policy();
        let mut limits = parse(headers, now);
        let signal = adapt_signal(&limits, status, &policy);
        let cooldown = if status == 429 {
            let c = cooldown_for(&limits, &policy);
            // Before anything that may wait on a backend: the key is out at once.
            self.cool_down(key, c.duration);
            Some(c)
        } else {
            if limits.retry_after.is_some() {
                unused_retry_hints(headers, &mut limits);
            }
            None
        };
        let mut report = match self.configured(&entry).await {
            Ok(configured) => {
                let ceilings = policy.ceilings_for(&configured);
                let limiter = entry.limiter().as_ref();
                match apply_held(limiter, limits, &ceilings).await {
                    Ok((mut r, held)) => {
                        let at = self.clock().now();
                        let adapt = &entry.learning.adapt;
                        let on = adapt.on(limiter, &held, &configured, &ceilings, signal, at);
                        match on.await {
                            Ok(changes) => {
                                r.applied.extend(
                                    changes
                                        .into_iter()
                                        .map(|(budget, limit)| Applied::Limit { budget, limit }),
                                );
                                Ok(r)
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        if let (Some(c), Ok(r)) = (cooldown, report.as_mut()) {
            r.applied.push(Applied::Cooldown(c.duration));
            if let Some(hint) = c.hint.filter(|h| *h != c.duration) {
                r.clamped.push(Clamped::Cooldown {
                    hint,
                    used: c.duration,
                });
            }
        }
        Some(report)
    }

    /// The limits `entry`'s limiter was configured with: captured the first time it learns
    /// (before it changes anything), or taken from a key sharing the limiter that captured
    /// them already.
    async fn configured(
        &self,
        entry: &Arc<crate::pool::PoolEntry<K, L>>,
    ) -> Result<Vec<(Budget, u64)>, Error> {
        if let Some(c) = entry.learning.configured() {
            return Ok(c.to_vec());
        }
        let now = budgets::limits(&budgets::read(entry.limiter().as_ref()).await?);
        // Read after the limiter: a sibling whose learning changed the limits we just read
        // had captured the configured ones before it changed anything.
        for e in self.snapshot().iter() {
            if Arc::ptr_eq(e.limiter(), entry.limiter()) && !Arc::ptr_eq(e, entry) {
                entry.learning.inherit(&e.learning);
            }
        }
        Ok(entry.learning.capture(now).to_vec())
    }

    /// Sets the [`LearnPolicy`] of `key` (its ceilings and cooldown range); returns whether
    /// the key exists. A key starts with [`LearnPolicy::default`], and re-adding it resets
    /// that.
    pub fn set_learn_policy(&self, key: &K, policy: LearnPolicy) -> bool {
        self.find(key)
            .map(|e| e.learning.set_policy(policy))
            .is_some()
    }

    /// The [`LearnPolicy`] of `key`, if present.
    pub fn learn_policy(&self, key: &K) -> Option<LearnPolicy> {
        self.find(key).map(|e| e.learning.policy())
    }

    /// Sets how `key`'s limits follow 429s when its provider sends no limit headers (see
    /// [`AdaptPolicy`]); returns whether the key exists. A key starts with
    /// [`AdaptPolicy::DEFAULT`], and re-adding it resets that and its adaptation.
    pub fn set_adapt_policy(&self, key: &K, policy: AdaptPolicy) -> bool {
        self.find(key)
            .map(|e| e.learning.adapt.set_policy(policy))
            .is_some()
    }

    /// The [`AdaptPolicy`] of `key`, if present.
    pub fn adapt_policy(&self, key: &K) -> Option<AdaptPolicy> {
        self.find(key).map(|e| e.learning.adapt.policy())
    }

    /// The scale of its configured limits `key` runs at after adapting to 429s (1 when it
    /// never had to, or when its provider sends limit headers), if present.
    pub fn adapt_scale(&self, key: &K) -> Option<f64> {
        self.find(key).map(|e| e.learning.adapt.scale())
    }
}

/// What one response says for adaptation: limit headers decide; else a 429 and the cooldown
/// it earns, or a plain response.
fn adapt_signal(limits: &ProviderLimits, status: u16, policy: &LearnPolicy) -> adapt::Signal {
    if ProviderBudget::ALL
        .iter()
        .any(|&b| limits.figures(b).limit.is_some())
    {
        adapt::Signal::Headers
    } else if status == 429 {
        adapt::Signal::Refused(cooldown_for(limits, policy).duration)
    } else {
        adapt::Signal::Served
    }
}

/// Reports the retry hints of a response that is not a 429: they earn no cooldown.
fn unused_retry_hints(headers: &HeaderMap, limits: &mut ProviderLimits) {
    for name in ["retry-after-ms", "retry-after"] {
        for v in headers.get_all(name) {
            let value = parse::lossy(v);
            // Values already reported (unreadable, duplicated) are not reported twice.
            let known = |i: &Ignored| i.header == name && i.value == value;
            if !limits.ignored.iter().any(known) {
                limits.ignored.push(Ignored {
                    header: name.to_owned(),
                    value,
                    reason: "retry hint on a response that is not a 429: no cooldown",
                });
            }
        }
    }
}
