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
//!    - a `-limit` that differs from the limiter's feeds `set_limit` (an equal one does nothing:
//!      a `set_limit` invalidates refunds of permits granted before it);
//!    - a `-remaining` is a hint that may only make the limiter *more* conservative: when the
//!      provider has less left than our own accounting, the gap is charged (tokens with
//!      `consume_tokens`, requests with zero-token admissions whose permits are kept). A larger
//!      provider figure never grants anything beyond our own accounting.
//!
//! Apply a response's headers as soon as they arrive (with the response's first byte): a
//! `remaining` describes the provider's buckets at that moment, and applied much later it
//! would charge units that have refilled since (conservative, but wasteful). Charging a
//! requests gap takes one zero-token admission per request, at most the gap (bounded by the
//! limit), as the public API has no batch charge for requests.
//!
//! [`KeyPool::learn`](crate::KeyPool::learn) does both for one key and turns a 429 into a cooldown.
//!
//! # Choices
//!
//! - Limits are taken to be per the limiter's period (configure the limiter's period to the
//!   provider's window, a minute for RPM/TPM).
//! - Sentinels change nothing: `-1` anywhere (Azure, "unknown"); a `0` limit (it would mean
//!   "unlimited" to `set_limit`); a `0` remaining *without* a limit for that budget in the same
//!   response (Azure's shape for deployments it does not report on). A real exhaustion still
//!   ends in a 429, which cools the key down.
//! - Anthropic rounds token remaining to the nearest thousand; we read `r` as its upper bound
//!   `r + 499`, so the rounding never charges tokens the key still has.
//! - Anthropic's `tokens-*` is its most restrictive token limit; where it is absent,
//!   `input-tokens-*` is used (prompt tokens are what an estimate is mostly made of).
//!   `output-tokens-*` is a budget a single token bucket does not model: reported as ignored.

mod time;

pub use time::{go_duration, imf_fixdate, rfc3339};

use crate::budget::Budget;
use crate::error::Error;
use crate::rate_limiter::RateLimiter;
use crate::usage::Usage;
use http::HeaderMap;
use std::time::{Duration, SystemTime};

/// A header that was present but changed nothing, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    /// The header name.
    pub header: String,
    /// Its value, lossily decoded.
    pub value: String,
    /// Why it was not used.
    pub reason: &'static str,
}

/// What a response's rate-limit headers say, as far as they could be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderLimits {
    /// Requests per period.
    pub requests_limit: Option<u64>,
    /// Tokens per period.
    pub tokens_limit: Option<u64>,
    /// Requests left now.
    pub requests_remaining: Option<u64>,
    /// Tokens left now (for Anthropic, the upper bound of the rounded figure).
    pub tokens_remaining: Option<u64>,
    /// Time until the requests budget is full again.
    pub requests_reset: Option<Duration>,
    /// Time until the tokens budget is full again.
    pub tokens_reset: Option<Duration>,
    /// How long to wait before retrying (`retry-after-ms`, else `retry-after`).
    pub retry_after: Option<Duration>,
    /// Headers present but unusable.
    pub ignored: Vec<Ignored>,
}

/// One change [`apply`] made to a limiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// `set_limit(requests, tokens)` was called.
    Limits {
        /// The new requests per period.
        requests: u64,
        /// The new tokens per period.
        tokens: u64,
    },
    /// This many requests were charged to match a lower provider `remaining`.
    ChargedRequests(u64),
    /// This many tokens were charged to match a lower provider `remaining`.
    ChargedTokens(u64),
    /// The key was put on cooldown for this long (a 429).
    Cooldown(Duration),
}

/// What learning from one response did and did not do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LearnReport {
    /// The parsed headers (their `ignored` list included).
    pub limits: ProviderLimits,
    /// The changes made, in order.
    pub applied: Vec<Applied>,
    /// Usable values deliberately not applied (e.g. a remaining above our own), and why.
    pub skipped: Vec<&'static str>,
}

fn text(v: &http::HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

/// Reads the headers present among `names` with `read`; the first readable one wins, the
/// others and any unreadable ones are reported.
struct Reader<'a> {
    headers: &'a HeaderMap,
    ignored: Vec<Ignored>,
}

impl Reader<'_> {
    fn ignore(&mut self, header: &str, value: String, reason: &'static str) {
        self.ignored.push(Ignored {
            header: header.to_owned(),
            value,
            reason,
        });
    }

    fn get<T>(&mut self, name: &str, read: impl Fn(&str) -> Result<T, &'static str>) -> Option<T> {
        let value = self.headers.get(name)?;
        let s = match value.to_str() {
            Ok(s) => s.trim(),
            Err(_) => {
                self.ignore(name, text(value), "not visible ASCII");
                return None;
            }
        };
        match read(s) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.ignore(name, s.to_owned(), reason);
                None
            }
        }
    }

    /// A non-negative count; `-1` is a sentinel.
    fn count(&mut self, name: &str) -> Option<u64> {
        self.get(name, |s| match s {
            "-1" => Err("sentinel -1 (unknown)"),
            _ if s.starts_with('-') => Err("negative count"),
            _ => s.parse::<u64>().map_err(|_| "not a non-negative integer"),
        })
    }

    fn limit(&mut self, name: &str) -> Option<u64> {
        let v = self.count(name)?;
        if v == 0 {
            self.ignore(name, "0".into(), "a zero limit would mean unlimited");
            return None;
        }
        Some(v)
    }
}

/// Parses every rate-limit header this module knows. `now` converts dates to durations.
pub fn parse(headers: &HeaderMap, now: SystemTime) -> ProviderLimits {
    let mut r = Reader {
        headers,
        ignored: Vec::new(),
    };
    let mut out = ProviderLimits::default();
    openai(&mut r, &mut out);
    anthropic(&mut r, &mut out, now);
    retry(&mut r, &mut out, now);
    azure_zero_sentinels(&mut r, &mut out);
    out.ignored = r.ignored;
    out
}

fn openai(r: &mut Reader, out: &mut ProviderLimits) {
    let reset = |s: &str| go_duration(s).ok_or("not a Go duration");
    out.requests_limit = r.limit("x-ratelimit-limit-requests");
    out.tokens_limit = r.limit("x-ratelimit-limit-tokens");
    out.requests_remaining = r.count("x-ratelimit-remaining-requests");
    out.tokens_remaining = r.count("x-ratelimit-remaining-tokens");
    out.requests_reset = r.get("x-ratelimit-reset-requests", reset);
    out.tokens_reset = r.get("x-ratelimit-reset-tokens", reset);
}

fn anthropic(r: &mut Reader, out: &mut ProviderLimits, now: SystemTime) {
    let reset = |s: &str| {
        rfc3339(s)
            .map(|t| t.duration_since(now).unwrap_or(Duration::ZERO))
            .ok_or("not an RFC 3339 date-time")
    };
    let p = "anthropic-ratelimit-";
    fill(
        &mut out.requests_limit,
        r.limit(&format!("{p}requests-limit")),
    );
    fill(
        &mut out.requests_remaining,
        r.count(&format!("{p}requests-remaining")),
    );
    fill(
        &mut out.requests_reset,
        r.get(&format!("{p}requests-reset"), reset),
    );
    // The most restrictive token budget first, else the input one.
    for class in ["tokens", "input-tokens"] {
        let limit = r.limit(&format!("{p}{class}-limit"));
        // Rounded to the nearest thousand: the true value is below r + 500.
        let remaining = r
            .count(&format!("{p}{class}-remaining"))
            .map(|v| v.saturating_add(499));
        let reset = r.get(&format!("{p}{class}-reset"), reset);
        if out.tokens_limit.is_some() || out.tokens_remaining.is_some() {
            if limit.is_some() || remaining.is_some() {
                let name = format!("{p}{class}-*");
                r.ignore(&name, String::new(), "a tighter token figure was used");
            }
            continue;
        }
        (out.tokens_limit, out.tokens_remaining, out.tokens_reset) = (limit, remaining, reset);
    }
    for suffix in ["limit", "remaining", "reset"] {
        let name = format!("{p}output-tokens-{suffix}");
        if let Some(v) = r.headers.get(&name) {
            r.ignore(
                &name,
                text(v),
                "output-token budget not modelled by one token bucket",
            );
        }
    }
}

fn fill<T>(slot: &mut Option<T>, value: Option<T>) {
    if slot.is_none() {
        *slot = value;
    }
}

fn retry(r: &mut Reader, out: &mut ProviderLimits, now: SystemTime) {
    out.retry_after = r.get("retry-after-ms", |s| {
        s.parse::<f64>()
            .ok()
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .map(|ms| Duration::from_nanos((ms * 1e6).min(u64::MAX as f64) as u64))
            .ok_or("not a non-negative number of milliseconds")
    });
    let seconds_or_date = |s: &str| {
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(Duration::from_secs(secs));
        }
        imf_fixdate(s)
            .map(|t| t.duration_since(now).unwrap_or(Duration::ZERO))
            .ok_or("neither seconds nor an HTTP date")
    };
    match out.retry_after {
        None => out.retry_after = r.get("retry-after", seconds_or_date),
        Some(_) => {
            if let Some(v) = r.headers.get("retry-after") {
                r.ignore("retry-after", text(v), "retry-after-ms takes precedence");
            }
        }
    }
}

/// Azure sends `remaining: 0` with no limit for deployments it does not report on.
fn azure_zero_sentinels(r: &mut Reader, out: &mut ProviderLimits) {
    if out.requests_remaining == Some(0) && out.requests_limit.is_none() {
        out.requests_remaining = None;
        r.ignore(
            "x-ratelimit-remaining-requests",
            "0".into(),
            "0 without a limit (Azure sentinel)",
        );
    }
    if out.tokens_remaining == Some(0) && out.tokens_limit.is_none() {
        out.tokens_remaining = None;
        r.ignore(
            "x-ratelimit-remaining-tokens",
            "0".into(),
            "0 without a limit (Azure sentinel)",
        );
    }
}

/// Brings `limiter` in line with `limits` (see the [module docs](self)): limits via
/// `set_limit` when they differ, lower remainings by charging the gap. Never grants more than
/// the limiter's own accounting.
pub async fn apply<L: RateLimiter>(
    limiter: &L,
    limits: ProviderLimits,
) -> Result<LearnReport, Error> {
    let mut report = LearnReport::default();
    let mut usage = limiter.usage().await?;
    let (our_requests, our_tokens) = (side(&usage, Budget::Requests), side(&usage, Budget::Tokens));
    let requests = limits.requests_limit.unwrap_or(our_requests.0);
    let tokens = limits.tokens_limit.unwrap_or(our_tokens.0);
    if (requests, tokens) != (our_requests.0, our_tokens.0) {
        limiter.set_limit(requests, tokens).await?;
        report.applied.push(Applied::Limits { requests, tokens });
        usage = limiter.usage().await?;
    }
    let (our_requests, our_tokens) = (side(&usage, Budget::Requests), side(&usage, Budget::Tokens));
    if let Some(theirs) = limits.tokens_remaining {
        if let Some(g) = gap(theirs, our_tokens.1, our_tokens.0, &mut report.skipped) {
            // g <= our remaining, so this creates no debt and does not wait (barring races).
            limiter.consume_tokens(g).await?;
            report.applied.push(Applied::ChargedTokens(g));
        }
    }
    if let Some(theirs) = limits.requests_remaining {
        if let Some(g) = gap(theirs, our_requests.1, our_requests.0, &mut report.skipped) {
            let charged = charge_requests(limiter, g).await;
            report.applied.push(Applied::ChargedRequests(charged));
        }
    }
    report.limits = limits;
    Ok(report)
}

/// One budget's (limit, remaining) as `apply` compares them: (0, u64::MAX) when unlimited.
fn side(usage: &Usage, budget: Budget) -> (u64, u64) {
    usage
        .get(budget)
        .map_or((0, u64::MAX), |b| (b.limit, b.remaining))
}

/// The units to charge so that ours does not exceed theirs, if any.
fn gap(theirs: u64, ours: u64, our_limit: u64, skipped: &mut Vec<&'static str>) -> Option<u64> {
    if our_limit == 0 {
        skipped.push("remaining ignored: our budget is unlimited (learn the limit first)");
        None
    } else if theirs >= ours {
        skipped.push("remaining not lower than our own: nothing to charge");
        None
    } else {
        Some(ours - theirs)
    }
}

/// Charges up to `n` requests through zero-token admissions whose permits are kept; stops at
/// the first denial (the bucket is then as empty as the provider says, or emptier).
async fn charge_requests<L: RateLimiter>(limiter: &L, n: u64) -> u64 {
    let mut charged = 0;
    while charged < n {
        match limiter.try_acquire(0u64).await {
            Ok(permit) => {
                // Settling a zero-token permit with zero keeps its request charged.
                let _ = limiter.settle(permit, 0u64).await;
                charged += 1;
            }
            Err(_) => break,
        }
    }
    charged
}

/// How long to cool a key down after a 429: the retry hint, else the reset of a budget the
/// provider says is empty, else one second. The flag says whether the provider said so.
pub fn cooldown_for(limits: &ProviderLimits) -> (Duration, bool) {
    if let Some(d) = limits.retry_after {
        return (d, true);
    }
    // No retry hint: wait for the reset of a budget the provider says is empty.
    let empty_reset = [
        (limits.requests_remaining, limits.requests_reset),
        (limits.tokens_remaining, limits.tokens_reset),
    ]
    .into_iter()
    .filter(|(rem, _)| *rem == Some(0))
    .filter_map(|(_, reset)| reset)
    .max();
    match empty_reset {
        Some(d) => (d, true),
        None => (Duration::from_secs(1), false),
    }
}

impl<K, L, C> crate::KeyPool<K, L, C>
where
    K: PartialEq + Send + Sync,
    L: RateLimiter,
    C: crate::Clock,
{
    /// Learns from one response of `key`: [`parse`]s its headers, [`apply`]s them to the key's
    /// limiter, and on a 429 puts the key on cooldown (see [`cooldown_for`]). `None` if the
    /// key is not in the pool.
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
        let limiter = self.limiter(key)?;
        let limits = parse(headers, now);
        let cooldown = (status == 429).then(|| cooldown_for(&limits).0);
        let mut report = apply(limiter.as_ref(), limits).await;
        if let Some(d) = cooldown {
            self.cool_down(key, d);
            if let Ok(r) = report.as_mut() {
                r.applied.push(Applied::Cooldown(d));
            }
        }
        Some(report)
    }
}
