//! Observability hooks: `metrics` counters, histograms and gauges, and `tracing` events.
//! Each hook's body exists only under its feature; without either feature every hook is an
//! empty `#[inline(always)]` function and nothing of it reaches the hot path.

#![allow(unused_variables)]
// The keyed limiter calls every hook and `Observed` some; a build with neither leaves them
// waiting for callers.
#![cfg_attr(not(feature = "keyed"), allow(dead_code))]

use crate::budget::{Budget, Limit};
use crate::error::Error;

/// An admission by a keyed limiter of class `class`.
#[inline(always)]
pub(crate) fn admitted(
    class: &'static str,
    budgets: impl Iterator<Item = Budget>,
    ask: crate::take::Ask,
) {
    #[cfg(feature = "metrics")]
    for b in budgets {
        let n = ask.units(b);
        if n > 0 {
            metrics::counter!("ratekeeper_admitted_units_total", "class" => class, "budget" => budget_label(b)).increment(n);
        }
    }
}

/// A denial.
#[inline(always)]
pub(crate) fn denied(class: &'static str, e: &Error) {
    #[cfg(feature = "metrics")]
    {
        let budget = match e {
            Error::RateLimitExceeded(d) => budget_label(d.budget()),
            Error::InsufficientCapacity { budget, .. } => budget_label(*budget),
            _ => "none",
        };
        metrics::counter!("ratekeeper_denied_total", "class" => class, "budget" => budget)
            .increment(1);
    }
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "ratekeeper", class, error = %e, "denied");
}

/// Units a settle gave back: the surplus of the estimate over the actual cost (the refund
/// rule may keep part of it counted, when part of the slot has already expired).
#[inline(always)]
pub(crate) fn refunded(class: &'static str, budget: Budget, units: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!("ratekeeper_refunded_units_total", "class" => class, "budget" => budget_label(budget)).increment(units);
}

/// A sweep of a keyed limiter: how many keys it dropped and how many remain.
#[inline(always)]
pub(crate) fn evicted(class: &'static str, dropped: usize, held: usize) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("ratekeeper_evicted_keys_total", "class" => class)
            .increment(dropped as u64);
        metrics::gauge!("ratekeeper_keys", "class" => class).set(held as f64);
    }
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "ratekeeper", class, dropped, held, "idle keys swept");
}

/// A new key refused because the keyed limiter is at its cap.
#[inline(always)]
pub(crate) fn tenant_cap(class: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("ratekeeper_key_cap_refusals_total", "class" => class).increment(1);
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "ratekeeper", class, "new key refused: tenant cap reached");
}

/// A limit change that took effect.
#[inline(always)]
pub(crate) fn limits_changed(class: &'static str, limits: &[Limit]) {
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "ratekeeper", class, limits = ?limits, "limits changed");
}

#[cfg(feature = "metrics")]
pub(crate) fn budget_label(b: Budget) -> &'static str {
    match b {
        Budget::Requests => "requests",
        Budget::Tokens => "tokens",
        Budget::InputTokens => "input_tokens",
        Budget::OutputTokens => "output_tokens",
    }
}
