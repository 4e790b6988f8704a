//! The rate-limit header fields of a response, from a key's usage.

use crate::budget::Budget;
use crate::usage::Usage;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use std::time::Duration;

/// Whole seconds, rounded up (a client that waits this long is not early).
pub(crate) fn secs_up(d: Duration) -> u64 {
    d.as_secs() + (d.subsec_nanos() > 0) as u64
}

fn name(b: Budget) -> &'static str {
    match b {
        Budget::Requests => "requests",
        Budget::Tokens => "tokens",
        Budget::InputTokens => "input-tokens",
        Budget::OutputTokens => "output-tokens",
    }
}

fn put(h: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

/// Seconds until `remaining` of a budget is back to its capacity, from its usage: the units
/// in use refill at `limit` per `window`.
fn reset_secs(used: u64, limit: u64, window: Duration) -> u64 {
    if used == 0 || limit == 0 {
        return 0;
    }
    let ns = (used as u128)
        .saturating_mul(window.as_nanos())
        .div_ceil(limit as u128);
    secs_up(Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
}

/// Writes the IETF fields (and, if asked, the `x-ratelimit-*` ones) for `usage`. A budget
/// that is unlimited has no entry: nothing says "unlimited" with a huge number.
pub(crate) fn write(h: &mut HeaderMap, usage: &Usage, x_ratelimit: bool) {
    let mut policy = Vec::new();
    let mut state = Vec::new();
    for b in usage.budgets() {
        let n = name(b.budget);
        let reset = reset_secs(b.used, b.limit, b.window);
        policy.push(format!(
            "\"{n}\";q={};w={}",
            b.limit,
            secs_up(b.window).max(1)
        ));
        state.push(format!("\"{n}\";r={};t={reset}", b.remaining));
        if x_ratelimit {
            put(h, x_name("limit", b.budget), b.limit.to_string());
            put(h, x_name("remaining", b.budget), b.remaining.to_string());
            put(h, x_name("reset", b.budget), format!("{reset}s"));
        }
    }
    if !policy.is_empty() {
        put(h, "ratelimit-policy", policy.join(", "));
        put(h, "ratelimit", state.join(", "));
    }
}

fn x_name(what: &str, b: Budget) -> &'static str {
    match (what, b) {
        ("limit", Budget::Requests) => "x-ratelimit-limit-requests",
        ("limit", Budget::Tokens) => "x-ratelimit-limit-tokens",
        ("limit", Budget::InputTokens) => "x-ratelimit-limit-input-tokens",
        ("limit", _) => "x-ratelimit-limit-output-tokens",
        ("remaining", Budget::Requests) => "x-ratelimit-remaining-requests",
        ("remaining", Budget::Tokens) => "x-ratelimit-remaining-tokens",
        ("remaining", Budget::InputTokens) => "x-ratelimit-remaining-input-tokens",
        ("remaining", _) => "x-ratelimit-remaining-output-tokens",
        (_, Budget::Requests) => "x-ratelimit-reset-requests",
        (_, Budget::Tokens) => "x-ratelimit-reset-tokens",
        (_, Budget::InputTokens) => "x-ratelimit-reset-input-tokens",
        (_, _) => "x-ratelimit-reset-output-tokens",
    }
}

/// `Retry-After` in whole seconds, at least 1 (a 429 that says "retry now" invites a loop).
pub(crate) fn retry_after(h: &mut HeaderMap, wait: Duration) {
    h.insert(RETRY_AFTER, HeaderValue::from(secs_up(wait).max(1)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::BudgetUsage;

    #[test]
    fn fields_follow_the_draft_and_round_waits_up() {
        let u = Usage::new([
            BudgetUsage {
                budget: Budget::Requests,
                window: Duration::from_secs(60),
                limit: 60,
                capacity: 60,
                used: 60,
                remaining: 0,
            },
            BudgetUsage {
                budget: Budget::Tokens,
                window: Duration::from_secs(60),
                limit: 1_000,
                capacity: 1_000,
                used: 250,
                remaining: 750,
            },
        ]);
        let mut h = HeaderMap::new();
        write(&mut h, &u, true);
        assert_eq!(
            h["ratelimit-policy"],
            "\"requests\";q=60;w=60, \"tokens\";q=1000;w=60"
        );
        assert_eq!(
            h["ratelimit"],
            "\"requests\";r=0;t=60, \"tokens\";r=750;t=15"
        );
        assert_eq!(h["x-ratelimit-remaining-tokens"], "750");
        assert_eq!(h["x-ratelimit-reset-requests"], "60s");
        retry_after(&mut h, Duration::from_millis(1_001));
        assert_eq!(h[RETRY_AFTER], "2");
        retry_after(&mut h, Duration::ZERO);
        assert_eq!(h[RETRY_AFTER], "1");
        let mut none = HeaderMap::new();
        write(&mut none, &Usage::new([]), true);
        assert!(none.is_empty(), "unlimited: no fields at all");
        // Saturates instead of overflowing: u64::MAX nanoseconds, in seconds, rounded up.
        assert_eq!(
            reset_secs(u64::MAX, 1, Duration::MAX),
            u64::MAX / 1_000_000_000 + 1
        );
    }
}
