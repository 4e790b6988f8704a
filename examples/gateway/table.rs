//! The tables the example prints: one row per enforcement model.

use crate::sim::Report;
use std::time::Duration;

/// The header line of a table.
pub fn header() -> String {
    format!(
        "  {:<38} {:>6} {:>8} {:>9}  {:>8} {:>8}  {:>7}",
        "provider enforces", "429s", "util", "(key)", "p50 wait", "p99 wait", "max"
    )
}

/// One row: 429s, the lowest binding-budget utilization (and its key), waits, and the
/// highest utilization of any budget (above 100%: more than limit × duration).
pub fn row(model: &str, r: &Report) -> String {
    let low = r.lowest();
    format!(
        "  {:<38} {:>6} {:>7.2}% {:>9}  {:>8} {:>8}  {:>6.1}%{}",
        model,
        r.rejected(),
        low.binding().1 * 100.0,
        low.spec.name,
        ms(r.wait_p50),
        ms(r.wait_p99),
        r.highest() * 100.0,
        match &r.errors {
            (0, _) => String::new(),
            (n, e) => format!(
                "  {n} backend errors, first: {}",
                e.as_deref().unwrap_or("")
            ),
        }
    )
}

/// The header line of an adaptation table.
pub fn adapt_header() -> String {
    format!(
        "  {:<38} {:>6} {:>14} {:>9} {:>12}  {:>7}",
        "provider enforces", "429s", "last 429", "util", "others' min", "max"
    )
}

/// One adaptation row for key `key`: its 429s, the window of its last, its binding
/// utilization of its real limit, the lowest utilization of the other keys, the highest of
/// any budget.
pub fn adapt_row(model: &str, r: &Report, key: usize, window: Duration) -> String {
    let k = &r.keys[key];
    let others = r
        .keys
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != key)
        .map(|(_, k)| k.binding().1)
        .fold(f64::INFINITY, f64::min);
    format!(
        "  {:<38} {:>6} {:>14} {:>8.2}% {:>11.2}%  {:>6.1}%",
        model,
        k.served.rejected,
        k.last_rejected.map_or("none".into(), |t| format!(
            "in window {}",
            last_window(t, window)
        )),
        k.binding().1 * 100.0,
        others * 100.0,
        r.highest() * 100.0,
    )
}

/// The window (counted from 1) holding instant `t`.
pub fn last_window(t: Duration, window: Duration) -> u128 {
    t.as_nanos() / window.as_nanos() + 1
}

/// What the learning key's limiter holds at the end of a run, if the run has one.
pub fn learned(r: &Report) -> Option<String> {
    let k = r.keys.iter().find(|k| k.spec.guess.is_some())?;
    Some(format!(
        "  {} learned {} requests / {} tokens per minute from headers (real: {} / {})",
        k.spec.name, k.gateway_limits.0, k.gateway_limits.1, k.spec.requests, k.spec.tokens
    ))
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{:.0}ms", d.as_secs_f64() * 1e3)
    }
}
