//! Loom models of ratekeeper live in `tests/`; run them with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=4 CARGO_TARGET_DIR=target/loom cargo test -p loom-tests --release`.
//!
//! This library only holds what the models share: a limiter on a manual clock whose rates are
//! binary-exact, so that every time a model passes is a whole number of units and the expected
//! counts in each model follow from integer arithmetic alone.

#[cfg(ratekeeper_loom)]
pub use model::*;

#[cfg(ratekeeper_loom)]
mod model {
    use ratekeeper::{ManualClock, TokenBucketLimiter};
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
        let clock = std::sync::Arc::new(ManualClock::new(0));
        let l = TokenBucketLimiter::builder(rpm, tpm)
            .period(Duration::from_nanos(PERIOD_NS))
            .clock(clock.clone())
            .build()
            .expect("valid model configuration");
        (loom::sync::Arc::new(l), clock)
    }
}
