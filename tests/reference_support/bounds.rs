//! The independent checks: what a window of admissions may hold, from the configuration and
//! the instants alone. Neither trusts the model's arithmetic nor the crate's.
//!
//! # The bound across limit changes
//!
//! Without changes a budget promises that no window `[a, b]` of release instants holds more
//! than `burst + rate × (b − a)`. Across changes the limits in force move, and a waiter
//! released after a change was placed under the limits before it. With `V₀, V₁, …` the
//! successive limits (in the order the changes were made, a change to the limits already in
//! force being none), a window whose releases were decided under versions `lo..=hi` holds at
//! most
//!
//! ```text
//! max(burst_v) + max(rate_v) × (b − a)     over v in lo..=hi
//! ```
//!
//! the largest burst and the largest rate among the limits in force from the first decision
//! in the window to the last. (The looser form, the largest burst and rate among all limits in
//! force in or before the window, follows from it: it counts versions before `lo` too.) Why it
//! should hold: each version's bucket is exact GCRA from the state carried into it, the used
//! units or, with waiters pending, the tail kept where it was in time, so the units in the
//! window never refill faster than the fastest rate in force meanwhile, nor start from more
//! room than the largest burst. It holds for decisions at readings at or after the instant the
//! last change took effect; a decision at an older reading is judged by the new rate
//! extrapolated back, and goes over after a change to a slower rate (see `driver::decided_at`
//! and `a_reading_older_than_a_limit_change_is_not_judged_by_the_new_rate`). A window reaching
//! back to a version under which the budget was unlimited bounds nothing.

use super::exact::{Event, Kind, Model, Spec};

/// A caller released at `at` with `n` units of budget `budget`, decided under limits version
/// `version`, as the calls returned it.
#[derive(Clone, Copy, Debug)]
pub struct Release {
    pub budget: usize,
    pub at: u64,
    pub n: u64,
    pub version: usize,
}

/// The check over release instants, every budget on its own: no window `[a, b]` of the instants
/// at which callers were released holds more than the bound above (see the module docs). The
/// instants come straight from what the calls returned (a reading, a waiter's deadline), the
/// amounts from what was settled or cancelled, the versions from the order of the calls, the
/// bound from the configuration (`history[v]`: every budget's count under version `v`);
/// nothing from the model.
pub fn assert_release_bound(specs: &[Spec], history: &[Vec<u64>], rel: &[Release]) {
    for (i, spec) in specs.iter().enumerate() {
        let p = spec.period as u128;
        let mut at: Vec<(u64, u128, usize)> = rel
            .iter()
            .filter(|r| r.budget == i && r.n > 0)
            .map(|r| (r.at, r.n as u128, r.version))
            .collect();
        at.sort_unstable();
        for (k, &(a, _, _)) in at.iter().enumerate() {
            let (mut sum, mut lo, mut hi) = (0u128, usize::MAX, 0);
            for &(b, n, v) in &at[k..] {
                sum += n;
                (lo, hi) = (lo.min(v), hi.max(v));
                let counts: Vec<u64> = history[lo..=hi].iter().map(|c| c[i]).collect();
                if counts.contains(&0) {
                    // Unlimited meanwhile: this window and every longer one are unbounded.
                    break;
                }
                let rate = *counts.iter().max().unwrap() as u128;
                let burst = counts.iter().map(|&c| spec.burst_units(c)).max().unwrap() as u128;
                // Scaled by the window: sum·P <= burst·P + L·(b − a); a saturated right side
                // bounds nothing representable.
                let bound = (burst * p).saturating_add(rate.saturating_mul((b - a) as u128));
                assert!(
                    sum * p <= bound || bound == u128::MAX,
                    "budget {i} ({:?} per {} ns): {sum} units released in [{a}, {b}] ns under \
                     versions {lo}..={hi}, over {burst} + {rate} x {} / {}",
                    spec.kind,
                    spec.period,
                    b - a,
                    spec.period
                );
            }
        }
    }
}

/// The check over *decision* instants of immediate admissions, as the model logged them: on
/// each budget, no window `[a, b]` of admission readings holds more than `burst + rate·(b − a)`
/// units, with the largest burst and rate among all the limits the run used. Exact GCRA keeps
/// this bound for admissions in any time order; carrying used units across a change keeps it
/// across changes, as long as no stretch of time is refilled twice. A budget that was ever
/// unlimited is skipped: it admits anything meanwhile.
pub fn assert_window_bound(model: &Model) {
    let changes = model.log.iter().filter_map(|e| match e {
        Event::Limits { counts, .. } => Some(counts.clone()),
        _ => None,
    });
    let history: Vec<Vec<u64>> = std::iter::once(model.initial.clone())
        .chain(changes)
        .collect();
    for (i, spec) in model.specs.iter().enumerate() {
        let p = spec.period as u128;
        let counts: Vec<u64> = history.iter().map(|c| c[i]).collect();
        if counts.contains(&0) {
            continue;
        }
        let rate = *counts.iter().max().unwrap() as u128;
        let burst_p = counts
            .iter()
            .map(|&c| spec.burst_units(c) as u128 * p)
            .max()
            .unwrap();
        let mut admitted: Vec<(u64, u64)> = model
            .log
            .iter()
            .filter_map(|e| match *e {
                Event::Take {
                    budget,
                    at,
                    n,
                    kind: Kind::Admission,
                } if budget == i => Some((at, n)),
                _ => None,
            })
            .collect();
        admitted.sort_unstable();
        for (k, &(a, _)) in admitted.iter().enumerate() {
            let mut sum: u128 = 0;
            for &(b, n) in &admitted[k..] {
                sum += n as u128;
                // Scaled by the window: sum·P <= burst·P + L·(b - a). Below 2^107 on the
                // left; a saturated right side bounds nothing representable.
                let bound = burst_p.saturating_add(rate.saturating_mul((b - a) as u128));
                assert!(
                    sum * p <= bound || bound == u128::MAX,
                    "budget {i}: {sum} units admitted in [{a}, {b}] ns, over burst + rate x window"
                );
            }
        }
    }
}
