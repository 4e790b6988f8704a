//! Reading a [`HeaderMap`] into [`ProviderLimits`], row by row of one table.
//!
//! Every header this module knows is one [`Row`] of [`ROWS`]: its name, the provider budget it
//! speaks of, which figure (limit, remaining, reset) and how to read it. A new budget or a new
//! provider is new rows, not new code. Each figure may be given several times (a header
//! repeated, or two providers' names for one budget, as a proxy may add): the most
//! conservative value wins (the lowest limit, the lowest remaining, the latest reset) and every
//! other one is reported in [`ProviderLimits::ignored`].
//!
//! Work is linear in the size of the map and independent of any value's magnitude.

use super::time::{go_duration, imf_fixdate, rfc3339};
use super::{Figures, Ignored, ProviderBudget, ProviderLimits};
use http::{HeaderMap, HeaderValue};
use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Limit,
    Remaining,
    Reset,
}

#[derive(Clone, Copy, Debug)]
enum Format {
    /// A non-negative integer; `-1` is a sentinel for "unknown".
    Count,
    /// A count rounded to the nearest thousand (Anthropic's token figures): read as its upper
    /// bound, so the rounding never charges units the key still has.
    RoundedThousand,
    /// A Go `time.Duration` from now (OpenAI's resets).
    GoDuration,
    /// An RFC 3339 instant (Anthropic's resets).
    Rfc3339,
}

struct Row {
    name: &'static str,
    budget: ProviderBudget,
    field: Field,
    format: Format,
}

const fn row(name: &'static str, budget: ProviderBudget, field: Field, format: Format) -> Row {
    Row {
        name,
        budget,
        field,
        format,
    }
}

use Field::{Limit, Remaining, Reset};
use Format::{Count, GoDuration, Rfc3339, RoundedThousand};
use ProviderBudget::{InputTokens, OutputTokens, Requests, Tokens};

/// Every per-budget header known. OpenAI's and Azure OpenAI's `x-ratelimit-*` (Azure sends
/// the remaining pair only), then Anthropic's `anthropic-ratelimit-*`.
// One row per line: the table is the thing to read.
#[rustfmt::skip]
const ROWS: &[Row] = &[
    row("x-ratelimit-limit-requests",                 Requests,     Limit,     Count),
    row("x-ratelimit-remaining-requests",             Requests,     Remaining, Count),
    row("x-ratelimit-reset-requests",                 Requests,     Reset,     GoDuration),
    row("x-ratelimit-limit-tokens",                   Tokens,       Limit,     Count),
    row("x-ratelimit-remaining-tokens",               Tokens,       Remaining, Count),
    row("x-ratelimit-reset-tokens",                   Tokens,       Reset,     GoDuration),
    row("anthropic-ratelimit-requests-limit",         Requests,     Limit,     Count),
    row("anthropic-ratelimit-requests-remaining",     Requests,     Remaining, Count),
    row("anthropic-ratelimit-requests-reset",         Requests,     Reset,     Rfc3339),
    row("anthropic-ratelimit-tokens-limit",           Tokens,       Limit,     Count),
    row("anthropic-ratelimit-tokens-remaining",       Tokens,       Remaining, RoundedThousand),
    row("anthropic-ratelimit-tokens-reset",           Tokens,       Reset,     Rfc3339),
    row("anthropic-ratelimit-input-tokens-limit",     InputTokens,  Limit,     Count),
    row("anthropic-ratelimit-input-tokens-remaining", InputTokens,  Remaining, RoundedThousand),
    row("anthropic-ratelimit-input-tokens-reset",     InputTokens,  Reset,     Rfc3339),
    row("anthropic-ratelimit-output-tokens-limit",    OutputTokens, Limit,     Count),
    row("anthropic-ratelimit-output-tokens-remaining",OutputTokens, Remaining, RoundedThousand),
    row("anthropic-ratelimit-output-tokens-reset",    OutputTokens, Reset,     Rfc3339),
];

/// The names of every header [`parse`](super::parse) reads, the two retry hints included.
pub fn known_headers() -> impl Iterator<Item = &'static str> {
    ROWS.iter()
        .map(|r| r.name)
        .chain([RETRY_AFTER_MS, RETRY_AFTER])
}

const RETRY_AFTER_MS: &str = "retry-after-ms";
const RETRY_AFTER: &str = "retry-after";

/// The longest value kept in an [`Ignored`] report, in characters: a header value can be
/// arbitrarily long, the report stays small.
const SHOWN_CHARS: usize = 64;

/// `s`, cut to [`SHOWN_CHARS`] characters (an ellipsis marks a cut).
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(SHOWN_CHARS).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// One usable value of one header.
struct Candidate {
    name: &'static str,
    /// The value as received (trimmed, cut for reports).
    text: String,
    /// The value used: a count, or a wait in nanoseconds (saturated).
    read: u64,
    /// The value as sent, before any rounding allowance (for the remaining > limit check).
    raw: u64,
}

struct Parser<'a> {
    headers: &'a HeaderMap,
    now: SystemTime,
    ignored: Vec<Ignored>,
}

impl Parser<'_> {
    fn ignore(&mut self, header: &str, value: String, reason: &'static str) {
        self.ignored.push(Ignored {
            header: header.to_owned(),
            value,
            reason,
        });
    }

    /// Every value of `name` read with `read`, in order; unreadable ones are reported.
    fn candidates(
        &mut self,
        name: &'static str,
        read: impl Fn(&str) -> Result<(u64, u64), &'static str>,
        out: &mut Vec<Candidate>,
    ) {
        let headers = self.headers;
        for v in headers.get_all(name) {
            let Ok(s) = v.to_str() else {
                self.ignore(name, lossy(v), "not visible ASCII");
                continue;
            };
            let s = s.trim();
            match read(s) {
                Ok((read, raw)) => out.push(Candidate {
                    name,
                    text: shown(s),
                    read,
                    raw,
                }),
                Err(reason) => self.ignore(name, shown(s), reason),
            }
        }
    }

    /// Keeps the most conservative of `candidates` (the lowest, or with `lowest` false the
    /// highest; the first of equals) and reports the others that are duplicates of a header or
    /// disagree with the winner. Another header agreeing with the winner is not reported.
    fn pick(&mut self, candidates: Vec<Candidate>, lowest: bool) -> Option<Candidate> {
        let mut best: Option<Candidate> = None;
        let mut others = Vec::new();
        for c in candidates {
            match best.take() {
                None => best = Some(c),
                Some(b) => {
                    let better = if lowest {
                        c.read < b.read
                    } else {
                        c.read > b.read
                    };
                    let (win, lose) = if better { (c, b) } else { (b, c) };
                    best = Some(win);
                    others.push(lose);
                }
            }
        }
        let best = best?;
        for c in others {
            let reason = match (c.name == best.name, c.read == best.read) {
                (true, true) => "duplicate header (same value)",
                (true, false) => "duplicate header: the more conservative value was used",
                (false, false) => {
                    "contradicts another header for the same budget: the more conservative \
                     value was used"
                }
                (false, true) => continue,
            };
            self.ignore(c.name, c.text, reason);
        }
        Some(best)
    }
}

/// A value's bytes for a report, lossily decoded and cut.
pub(super) fn lossy(v: &HeaderValue) -> String {
    shown(&String::from_utf8_lossy(v.as_bytes()))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Reads one value of `row`: `(read, raw)`, or why not.
fn read(row: &Row, s: &str, now: SystemTime) -> Result<(u64, u64), &'static str> {
    let wait = |d: Duration| Ok((nanos(d), nanos(d)));
    match row.format {
        Count | RoundedThousand => {
            let n = count(s)?;
            if row.field == Limit && n == 0 {
                return Err("a zero limit would mean unlimited");
            }
            match row.format {
                RoundedThousand => Ok((n.saturating_add(499), n)),
                _ => Ok((n, n)),
            }
        }
        GoDuration => wait(go_duration(s).ok_or("not a Go duration")?),
        Rfc3339 => wait(until(rfc3339(s).ok_or("not an RFC 3339 date-time")?, now)),
    }
}

/// A non-negative count; `-1` is a sentinel. A count beyond `u64` is rejected, not saturated:
/// for a limit, rejecting keeps the limiter as it is, the conservative side.
fn count(s: &str) -> Result<u64, &'static str> {
    match s {
        "-1" => Err("sentinel -1 (unknown)"),
        _ if s.starts_with('-') => Err("negative count"),
        _ => s.parse::<u64>().map_err(|_| "not a non-negative integer"),
    }
}

/// The time from `now` until `t` (zero if `t` is past).
fn until(t: SystemTime, now: SystemTime) -> Duration {
    t.duration_since(now).unwrap_or(Duration::ZERO)
}

/// `retry-after-ms`: a non-negative number of milliseconds. Beyond `u64` nanoseconds (and
/// `inf`) it saturates: a wait is read on its long side, and the cooldown clamps it.
fn millis(s: &str) -> Result<(u64, u64), &'static str> {
    let ms: f64 = s
        .parse()
        .map_err(|_| "not a non-negative number of milliseconds")?;
    if ms.is_nan() || ms < 0.0 {
        return Err("not a non-negative number of milliseconds");
    }
    let ns = ms * 1e6;
    let ns = if ns >= u64::MAX as f64 {
        u64::MAX
    } else {
        ns as u64
    };
    Ok((ns, ns))
}

/// `retry-after`: whole seconds (any number of digits; saturating) or an HTTP date (a past one
/// is zero).
fn seconds_or_date(s: &str, now: SystemTime) -> Result<(u64, u64), &'static str> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let ns = s
            .parse::<u64>()
            .map_or(u64::MAX, |secs| secs.saturating_mul(1_000_000_000));
        return Ok((ns, ns));
    }
    let t = imf_fixdate(s).ok_or("neither seconds nor an HTTP date")?;
    let ns = nanos(until(t, now));
    Ok((ns, ns))
}

/// Parses every rate-limit header this module knows (see the [module docs](super)). `now`
/// converts dates to durations.
pub fn parse(headers: &HeaderMap, now: SystemTime) -> ProviderLimits {
    let mut p = Parser {
        headers,
        now,
        ignored: Vec::new(),
    };
    let mut out = ProviderLimits::default();
    for budget in ProviderBudget::ALL {
        *out.figures_mut(budget) = figures(&mut p, budget);
    }
    out.retry_after = retry(&mut p);
    out.ignored = p.ignored;
    out
}

/// The figures of one budget, from every row that speaks of it, checked against each other.
fn figures(p: &mut Parser, budget: ProviderBudget) -> Figures {
    let mut pick = |field: Field, lowest: bool| {
        let mut candidates = Vec::new();
        for row in ROWS
            .iter()
            .filter(|r| r.budget == budget && r.field == field)
        {
            let now = p.now;
            p.candidates(row.name, |s| read(row, s, now), &mut candidates);
        }
        p.pick(candidates, lowest)
    };
    let limit = pick(Limit, true);
    let remaining = pick(Remaining, true);
    let reset = pick(Reset, false).map(|c| Duration::from_nanos(c.read));
    let limit = limit.map(|c| c.read);
    let remaining = match (remaining, limit) {
        (None, _) => None,
        // Either figure is wrong; the lower limit is kept and nothing counts as used.
        (Some(r), Some(l)) if r.raw > l => {
            p.ignore(
                r.name,
                r.text,
                "remaining above the limit in the same response: read as the limit",
            );
            Some(l)
        }
        // A rounding allowance never reads above the limit.
        (Some(r), Some(l)) => Some(r.read.min(l)),
        // Azure's shape for a deployment it does not report on. With a reset still ahead it
        // reads as a real exhaustion instead (the conservative side).
        (Some(r), None) if r.read == 0 && reset.map_or(true, |d| d.is_zero()) => {
            p.ignore(
                r.name,
                r.text,
                "0 without a limit or a reset (Azure sentinel)",
            );
            None
        }
        (Some(r), None) => Some(r.read),
    };
    Figures {
        limit,
        remaining,
        reset,
    }
}

/// The retry hint: `retry-after-ms`, else `retry-after`. Each one's duplicates keep the
/// longest. When both are sent and agree within a second (`retry-after` has whole seconds),
/// the precise `retry-after-ms` wins; when they disagree, the longer wait wins.
fn retry(p: &mut Parser) -> Option<Duration> {
    let mut ms = Vec::new();
    p.candidates(RETRY_AFTER_MS, millis, &mut ms);
    let ms = p.pick(ms, false);
    let mut secs = Vec::new();
    let now = p.now;
    p.candidates(RETRY_AFTER, |s| seconds_or_date(s, now), &mut secs);
    let secs = p.pick(secs, false);
    let chosen = match (ms, secs) {
        (Some(m), Some(s)) if m.read.abs_diff(s.read) < 1_000_000_000 => {
            p.ignore(
                s.name,
                s.text,
                "retry-after-ms gives the same wait more precisely",
            );
            m
        }
        (Some(m), Some(s)) => {
            let (long, short) = if m.read >= s.read { (m, s) } else { (s, m) };
            p.ignore(
                short.name,
                short.text,
                "contradicts the other retry hint: the longer wait was used",
            );
            long
        }
        (m, s) => m.or(s)?,
    };
    Some(Duration::from_nanos(chosen.read))
}
