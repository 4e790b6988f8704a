//! What a limiter counts: the kinds of budget, the cost of one request, and the limit of each
//! budget (how many per window, and how much of that may go at once).

use crate::error::Error;

mod shape;
mod spec;

pub use shape::ProviderShape;
pub(crate) use spec::{spec_methods, Spec};
use std::fmt;
use std::time::Duration;

/// The most budgets one limiter decides together (e.g. requests, input and output tokens per
/// minute, requests and tokens per day). A fixed bound keeps permits and usage reports inline:
/// the hot path allocates nothing.
pub const MAX_BUDGETS: usize = 6;

/// What a budget counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Budget {
    /// Requests: one per admission (RPM, RPD).
    Requests,
    /// All tokens of a request, input and output together (TPM, TPD).
    Tokens,
    /// Input (prompt) tokens only (Anthropic's ITPM).
    InputTokens,
    /// Output (completion) tokens only (Anthropic's OTPM).
    OutputTokens,
}

impl Budget {
    /// The units one admission of `requests` requests costing `cost` takes from a budget of
    /// this kind.
    #[inline]
    pub(crate) fn units(self, requests: u64, cost: Cost) -> u64 {
        match self {
            Budget::Requests => requests,
            Budget::Tokens => cost.input.saturating_add(cost.output),
            Budget::InputTokens => cost.input,
            Budget::OutputTokens => cost.output,
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Budget::Requests => "requests",
            Budget::Tokens => "tokens",
            Budget::InputTokens => "input tokens",
            Budget::OutputTokens => "output tokens",
        })
    }
}

/// The tokens of one request, beyond the request itself.
///
/// Output tokens are unknown when a request is admitted: admit on an estimate (the request's
/// `max_tokens`), then settle with the counts the response reports. A plain number converts
/// to input tokens only, which is all a limiter with a single total-tokens budget needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cost {
    /// Input (prompt) tokens.
    pub input: u64,
    /// Output (completion) tokens, or an estimate of them.
    pub output: u64,
}

impl Cost {
    /// No tokens at all.
    pub const ZERO: Cost = Cost {
        input: 0,
        output: 0,
    };

    /// A cost of `input` prompt tokens and `output` completion tokens.
    pub const fn new(input: u64, output: u64) -> Cost {
        Cost { input, output }
    }

    /// Input and output together (saturating).
    pub const fn total(self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

impl From<u64> for Cost {
    /// `tokens` input tokens and no output tokens.
    fn from(tokens: u64) -> Cost {
        Cost {
            input: tokens,
            output: 0,
        }
    }
}

/// How large a bucket's burst is, as a function of its limit, and (for
/// [`Provider`](Burst::Provider)) how fast it refills.
///
/// The policy, not the number, is what a limiter keeps: after a limit change a window stays a
/// window (scaled to the new limit), and an explicit count stays that count.
///
/// # Which to use
///
/// A provider documents "L per minute" but may enforce it as a token bucket of capacity `L`,
/// as a sliding or fixed window of a minute (at most `L` in any minute, or in each clock
/// minute), or over a short interval ("60 RPM may be enforced as one per second"), and the
/// network delays each request differently on its way there.
///
/// - [`Provider`](Burst::Provider) (what [`TokenBucketLimiter::for_provider`] uses): a small
///   burst and a rate just under `L` per window, such that *no* model above refuses what
///   arrives, up to the jitter it is given (for a token budget whose largest request exceeds
///   `L·(s - J)/W`, the windowed models: see [`ProviderShape`]). It sustains `1 - s/(W + J)` of the limit (98.3%
///   of a per-minute limit with the defaults) and reports the provider's limit unchanged, so
///   limits learned from headers pass through as they are. The default for provider keys.
/// - [`Period`](Burst::Period) (the default of [`TokenBucketLimiter::new`]): a bucket of the
///   whole window's worth, refilled at `L` per window: for a provider known to enforce a plain
///   token bucket of capacity `L`, or a limit of your own. Against a windowed provider it
///   admits up to twice the limit within one window (a full bucket, then a window's refill),
///   and against a short-interval one a whole minute's worth at once.
/// - [`Window`](Burst::Window) and [`Units`](Burst::Units): an explicit burst, refilled at `L`
///   per window. Safe against a provider enforcing exactly that bucket, and for pacing of
///   your own.
///
/// [`TokenBucketLimiter::for_provider`]: crate::TokenBucketLimiter::for_provider
/// [`TokenBucketLimiter::new`]: crate::TokenBucketLimiter::new
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Burst {
    /// The whole window's worth: a bucket of `limit` units (the default).
    #[default]
    Period,
    /// At most this window's worth at once: `floor(limit × window / period)`, at least 1.
    /// Anthropic enforces "60 RPM" as one per second: `Burst::Window(Duration::from_secs(1))`.
    Window(Duration),
    /// Exactly this many units.
    Units(u64),
    /// The provider-safe shape: a burst of `max(largest, floor(L·(s - J)/W))` units and the
    /// rate that keeps every enforcement model's bound given the jitter `J` (see
    /// [`ProviderShape`]); `usage()` still reports `L` as the limit, and the burst as the
    /// capacity.
    Provider(ProviderShape),
}

impl Burst {
    /// [`Burst::Provider`] with [`ProviderShape::DEFAULT`]: a one-second short interval,
    /// 100 ms of jitter, single requests of one unit.
    pub const PROVIDER: Burst = Burst::Provider(ProviderShape::DEFAULT);

    /// The burst in units for `limit` per `period_ns` (shared with the Redis backend).
    pub(crate) fn units(self, limit: u64, period_ns: u64) -> u64 {
        match self {
            Burst::Period => limit,
            Burst::Window(w) => {
                let w = w.as_nanos().min(u64::MAX as u128);
                let b = limit as u128 * w / period_ns.max(1) as u128;
                b.clamp(1, u64::MAX as u128) as u64
            }
            Burst::Units(n) => n,
            Burst::Provider(shape) => shape.shape(limit, period_ns).map_or(0, |(b, _)| b),
        }
    }

    /// The refill rate for `limit` per `period_ns`, as `(units, per_ns)`: the limit itself
    /// except for [`Burst::Provider`]. `None` when unlimited (a zero limit).
    pub(crate) fn rate(self, limit: u64, period_ns: u64) -> Option<(u64, u64)> {
        match self {
            Burst::Provider(shape) => shape
                .shape(limit, period_ns)
                .map(|(_, r)| (r.units, r.per_ns)),
            _ => (limit > 0 && period_ns > 0).then_some((limit, period_ns)),
        }
    }

    /// Rejects policies that admit nothing, and [`Burst::Provider`], whose rate is not the
    /// limit's: for a backend whose buckets refill at `limit` per window (the Redis
    /// backend). The in-process limiter checks with [`check_shaped`](Self::check_shaped).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn check(self) -> Result<(), Error> {
        match self {
            Burst::Provider(_) => Err(Error::InvalidConfig(
                "Burst::Provider needs a backend that refills at the shape's rate",
            )),
            other => other.check_shaped(),
        }
    }

    /// Rejects policies that admit nothing.
    pub(crate) fn check_shaped(self) -> Result<(), Error> {
        match self {
            Burst::Units(0) => Err(Error::InvalidConfig("a burst of zero units admits nothing")),
            Burst::Window(w) if w.is_zero() => {
                Err(Error::InvalidConfig("a zero burst window admits nothing"))
            }
            _ => Ok(()),
        }
    }
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);

/// The limit of one budget: `count` units of a [`Budget`] per `window`, with a [`Burst`]
/// policy. A count of 0 means unlimited.
///
/// ```
/// use ratekeeper::{Burst, Limit};
/// use std::time::Duration;
///
/// let rpm = Limit::requests(50).per_minute();
/// let itpm = Limit::input_tokens(40_000).per_minute();
/// let rpd = Limit::requests(10_000).per_day().burst(Burst::Window(Duration::from_secs(60)));
/// assert_eq!(rpd.window(), Duration::from_secs(86_400));
/// # let _ = (rpm, itpm);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    budget: Budget,
    count: u64,
    window: Duration,
    burst: Burst,
}

impl Limit {
    /// `count` units of `budget` per minute, with a full-window burst.
    pub const fn new(budget: Budget, count: u64) -> Limit {
        Limit {
            budget,
            count,
            window: MINUTE,
            burst: Burst::Period,
        }
    }

    /// `count` requests per minute.
    pub const fn requests(count: u64) -> Limit {
        Limit::new(Budget::Requests, count)
    }

    /// `count` tokens (input and output together) per minute.
    pub const fn tokens(count: u64) -> Limit {
        Limit::new(Budget::Tokens, count)
    }

    /// `count` input tokens per minute.
    pub const fn input_tokens(count: u64) -> Limit {
        Limit::new(Budget::InputTokens, count)
    }

    /// `count` output tokens per minute.
    pub const fn output_tokens(count: u64) -> Limit {
        Limit::new(Budget::OutputTokens, count)
    }

    /// The same count per `window` instead.
    pub const fn per(mut self, window: Duration) -> Limit {
        self.window = window;
        self
    }

    /// Per second.
    pub const fn per_second(self) -> Limit {
        self.per(SECOND)
    }

    /// Per minute (the default).
    pub const fn per_minute(self) -> Limit {
        self.per(MINUTE)
    }

    /// Per hour.
    pub const fn per_hour(self) -> Limit {
        self.per(HOUR)
    }

    /// Per day.
    pub const fn per_day(self) -> Limit {
        self.per(DAY)
    }

    /// With this burst policy (default [`Burst::Period`]).
    pub const fn burst(mut self, burst: Burst) -> Limit {
        self.burst = burst;
        self
    }

    /// The same budget, window and burst policy with another count.
    pub const fn with_count(mut self, count: u64) -> Limit {
        self.count = count;
        self
    }

    /// What this limit counts.
    pub const fn budget(&self) -> Budget {
        self.budget
    }

    /// Units per window (0: unlimited).
    pub const fn count(&self) -> u64 {
        self.count
    }

    /// The window the count is per.
    pub const fn window(&self) -> Duration {
        self.window
    }

    /// The burst policy.
    pub const fn burst_policy(&self) -> Burst {
        self.burst
    }

    /// The window in nanoseconds, if it is a usable one.
    pub(crate) fn window_ns(&self) -> Result<u64, Error> {
        match u64::try_from(self.window.as_nanos()) {
            Ok(0) => Err(Error::InvalidConfig("zero window")),
            Ok(ns) => Ok(ns),
            Err(_) => Err(Error::InvalidConfig(
                "window longer than u64::MAX nanoseconds",
            )),
        }
    }

    /// Whether `other` is the same budget (kind and window): the identity a limit change
    /// goes by.
    pub(crate) fn same_budget(&self, other: &Limit) -> bool {
        self.budget == other.budget && self.window == other.window
    }
}

/// `limits` with `changes` applied: each change replaces the limit of the same budget and
/// window. A change for a budget `limits` do not have is [`Error::InvalidConfig`], so a
/// limit change can never add a budget nobody was counting.
pub(crate) fn replaced(limits: &[Limit], changes: &[Limit]) -> Result<Vec<Limit>, Error> {
    let mut next = limits.to_vec();
    for l in changes {
        let slot = next
            .iter_mut()
            .find(|m| m.same_budget(l))
            .ok_or(Error::InvalidConfig("the limiter has no such budget"))?;
        *slot = *l;
    }
    Ok(next)
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = match self.window {
            SECOND => "second".to_string(),
            MINUTE => "minute".to_string(),
            HOUR => "hour".to_string(),
            DAY => "day".to_string(),
            w => format!("{w:?}"),
        };
        match self.count {
            0 => write!(f, "unlimited {} per {per}", self.budget),
            n => write!(f, "{n} {} per {per}", self.budget),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_split_by_budget_and_saturate() {
        let c = Cost::new(300, 200);
        assert_eq!(Budget::Requests.units(1, c), 1);
        assert_eq!(Budget::Tokens.units(1, c), 500);
        assert_eq!(Budget::InputTokens.units(1, c), 300);
        assert_eq!(Budget::OutputTokens.units(1, c), 200);
        assert_eq!(Cost::from(7), Cost::new(7, 0));
        assert_eq!(Budget::Tokens.units(1, Cost::new(u64::MAX, 1)), u64::MAX);
    }

    #[test]
    fn limits_read_as_their_users_write_them() {
        assert_eq!(Limit::requests(60).to_string(), "60 requests per minute");
        assert_eq!(
            Limit::output_tokens(8_000).per_day().to_string(),
            "8000 output tokens per day"
        );
        assert_eq!(Limit::tokens(0).to_string(), "unlimited tokens per minute");
        assert!(Limit::requests(1).per(Duration::ZERO).window_ns().is_err());
        assert!(Limit::requests(1).per(Duration::MAX).window_ns().is_err());
    }

    #[test]
    fn burst_policies_scale_with_the_limit() {
        let min = 60_000_000_000;
        assert_eq!(Burst::Period.units(600, min), 600);
        assert_eq!(Burst::Window(SECOND).units(600, min), 10);
        assert_eq!(Burst::Window(SECOND).units(1, min), 1, "at least one");
        assert_eq!(Burst::Units(3).units(600, min), 3);
        assert!(Burst::Units(0).check().is_err());
        assert!(Burst::Window(Duration::ZERO).check().is_err());
        // The provider shape: its own burst, and a rate below the limit's.
        let shape = ProviderShape::new().largest(350);
        assert_eq!(Burst::Provider(shape).units(40_000, min), 600);
        assert_eq!(
            Burst::Provider(shape).rate(40_000, min),
            Some((197, 300_500_000))
        );
        assert_eq!(Burst::Period.rate(40_000, min), Some((40_000, min)));
        assert_eq!(Burst::PROVIDER.rate(0, min), None);
        assert_eq!(Burst::Period.rate(0, min), None);
        // A backend that refills at the limit's rate cannot take the shape.
        assert!(Burst::PROVIDER.check().is_err());
        assert!(Burst::PROVIDER.check_shaped().is_ok());
    }
}
