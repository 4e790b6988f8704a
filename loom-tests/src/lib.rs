//! Loom models of ratekeeper live in `tests/`; run them with
//! `RUSTFLAGS="--cfg ratekeeper_loom" LOOM_MAX_PREEMPTIONS=3 CARGO_TARGET_DIR=target/loom cargo test -p loom-tests --release`.
//! (CI runs 3 preemptions; 4 takes about 9.5 minutes on 2 vCPUs and is worth a run before a release.)
//!
//! This library only holds what the models share: a limiter on a manual clock whose rates are
//! binary-exact, so that every time a model passes is a whole number of units and the expected
//! counts in each model follow from integer arithmetic alone; and a window checker over
//! release instants that shares no code with the crate.

#[cfg(ratekeeper_loom)]
pub use model::*;

#[cfg(ratekeeper_loom)]
mod model {
    use ratekeeper::{Limit, ManualClock, TokenBucketLimiter};
    use std::time::Duration;

    /// The models' time step in ns. Model times and comments count ticks: 64 ns keeps every
    /// model's rates (at most one unit per 2 ticks) well below one unit per 64 ns, where the
    /// limiter counts exact quanta; faster rates get coarse quanta of several units.
    pub const TICK: u64 = 64;

    /// The period every model uses: 64 ticks, so a limit of `2^k` refills one unit per
    /// `2^(6-k)` ticks.
    pub const PERIOD_NS: u64 = 64 * TICK;

    /// Units in use of the tightest budget of a kind (0 when unlimited).
    pub fn used(u: &ratekeeper::Usage, b: ratekeeper::Budget) -> u64 {
        u.get(b).map_or(0, |x| x.used)
    }

    /// Units one call could take of the tightest budget of a kind (`u64::MAX` when unlimited).
    pub fn remaining(u: &ratekeeper::Usage, b: ratekeeper::Budget) -> u64 {
        u.get(b).map_or(u64::MAX, |x| x.remaining)
    }

    /// The configured count of the tightest budget of a kind (0 when unlimited).
    pub fn limit(u: &ratekeeper::Usage, b: ratekeeper::Budget) -> u64 {
        u.get(b).map_or(0, |x| x.limit)
    }

    /// The limiter type the models share (its clock is also handed to the model, to move time).
    pub type Limiter = TokenBucketLimiter<std::sync::Arc<ManualClock>>;

    /// `rpm` requests and `tpm` tokens per [`PERIOD_NS`] (0 = unlimited), bursts of a full
    /// period, both full; on a manual clock reading 0. Must be called inside `loom::model`,
    /// since the limiter's atomics are loom's.
    pub fn limiter(rpm: u64, tpm: u64) -> (loom::sync::Arc<Limiter>, std::sync::Arc<ManualClock>) {
        budgets([
            ratekeeper::Limit::requests(rpm),
            ratekeeper::Limit::tokens(tpm),
        ])
    }

    /// A limiter deciding `limits` together, each per [`PERIOD_NS`] (whatever window it was
    /// given) with its own burst policy, every bucket full; on a manual clock reading 0. Must
    /// be called inside `loom::model`.
    pub fn budgets(
        limits: impl IntoIterator<Item = Limit>,
    ) -> (loom::sync::Arc<Limiter>, std::sync::Arc<ManualClock>) {
        let clock = std::sync::Arc::new(ManualClock::new(0));
        let l = TokenBucketLimiter::with_limits(limits)
            .period(Duration::from_nanos(PERIOD_NS))
            .clock(clock.clone())
            .build()
            .expect("valid model configuration");
        (loom::sync::Arc::new(l), clock)
    }

    /// The bound one budget promises over release instants: no window `[a, b]` holds more
    /// than `burst + limit × (b − a) / PERIOD_NS` units.
    #[derive(Clone, Copy, Debug)]
    pub struct Bound {
        /// Units per [`PERIOD_NS`].
        pub limit: u64,
        /// Units at once.
        pub burst: u64,
    }

    /// The first window `[a, b]` of `releases` (release instant in ns, units) holding more
    /// than `bound` allows, as `(a, b, units)`. Exact integers, scaled by the period:
    /// `units × P > burst × P + limit × (b − a)`. Independent of the crate: it sees only the
    /// instants callers were released at and what they kept.
    pub fn over_the_bound(releases: &[(u64, u64)], bound: Bound) -> Option<(u64, u64, u64)> {
        let p = PERIOD_NS as u128;
        for &(a, _) in releases {
            for &(b, _) in releases.iter().filter(|r| r.0 >= a) {
                let units: u64 = releases
                    .iter()
                    .filter(|r| (a..=b).contains(&r.0))
                    .map(|r| r.1)
                    .sum();
                let allowed = bound.burst as u128 * p + bound.limit as u128 * (b - a) as u128;
                if units as u128 * p > allowed {
                    return Some((a, b, units));
                }
            }
        }
        None
    }

    /// Panics with the window when `releases` exceed `bound`.
    pub fn assert_within(releases: &[(u64, u64)], bound: Bound) {
        if let Some((a, b, units)) = over_the_bound(releases, bound) {
            panic!(
                "{units} units released in [{a}, {b}] ns ({} ticks), over {bound:?}: {releases:?}",
                (b - a) / TICK
            );
        }
    }
}
