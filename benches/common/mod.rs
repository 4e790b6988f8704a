//! Shared set-up for the benches: the limiter configurations every bench compares, and the
//! mutex-guarded float bucket used as the baseline.
//!
//! Every "admit" configuration has limits far above what one machine can consume, so each
//! measured call is an admission; the benches assert that they all were.

#![allow(dead_code)] // each bench binary uses a different subset

use governor::{
    clock::{DefaultClock, FakeRelativeClock},
    state::{InMemoryState, NotKeyed},
    Quota,
};
use ratekeeper::{Burst, Cost, Limit, ManualClock, TokenBucketLimiter};
use std::{
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Tokens asked for by each two-bucket admission.
pub const TOKENS: u64 = 10;
/// The same, for governor's `check_n`.
pub const TOKENS_NZ: NonZeroU32 = match NonZeroU32::new(TOKENS as u32) {
    Some(n) => n,
    None => panic!("TOKENS is not zero"),
};

/// 10^9 requests and 10^12 tokens per second: refill outruns any consumer on one machine.
const ADMIT_RPS: u64 = 1_000_000_000;
const ADMIT_TPS: u64 = 1_000_000_000_000;

/// A direct governor limiter with its default (quanta TSC) clock.
pub type Governor = governor::RateLimiter<NotKeyed, InMemoryState, DefaultClock>;
/// A direct governor limiter with its fake clock, to isolate its algorithm.
pub type GovernorFake = governor::RateLimiter<
    NotKeyed,
    InMemoryState,
    FakeRelativeClock,
    governor::middleware::NoOpMiddleware<governor::nanos::Nanos>,
>;

/// Admit configuration, burst = one second of refill.
pub fn rk_admit() -> TokenBucketLimiter {
    TokenBucketLimiter::builder(ADMIT_RPS, ADMIT_TPS)
        .period(Duration::from_secs(1))
        .build()
        .expect("valid configuration")
}

/// The cost asked of a three-budget limiter: `TOKENS` input and `TOKENS` output tokens.
pub const COST3: Cost = Cost::new(TOKENS, TOKENS);

/// Admit configuration as a set of three budgets, Anthropic-style: requests, input tokens and
/// output tokens, each per second with a burst of one second.
pub fn rk_admit3() -> TokenBucketLimiter {
    TokenBucketLimiter::with_limits([
        Limit::requests(ADMIT_RPS),
        Limit::input_tokens(ADMIT_TPS),
        Limit::output_tokens(ADMIT_TPS),
    ])
    .period(Duration::from_secs(1))
    .build()
    .expect("valid configuration")
}

/// Admit configuration with bursts of 1 µs and 0.1 µs of refill: the high-rate, small-burst
/// case a coarse clock would starve. Reported separately to show the default clock serves it
/// at the same cost.
pub fn rk_admit_small_burst() -> TokenBucketLimiter {
    TokenBucketLimiter::builder(ADMIT_RPS, ADMIT_TPS)
        .period(Duration::from_secs(1))
        .request_burst(Burst::Units(1_000))
        .token_burst(Burst::Units(100_000))
        .build()
        .expect("valid configuration")
}

/// The admit configuration on a manual clock that never moves: no clock cost at all beyond
/// one relaxed load.
pub fn rk_admit_manual() -> TokenBucketLimiter<ManualClock> {
    TokenBucketLimiter::builder(ADMIT_RPS, ADMIT_TPS)
        .period(Duration::from_secs(1))
        .clock(ManualClock::new(1_000_000_000))
        .build()
        .expect("valid configuration")
}

/// One request and one token per hour: after one admission everything is denied.
pub fn rk_deny() -> TokenBucketLimiter {
    let l = TokenBucketLimiter::builder(1, 1)
        .period(Duration::from_secs(3600))
        .build()
        .expect("valid configuration");
    assert!(l.try_acquire(1).is_ok(), "the first admission fits");
    l
}

/// 10^9 cells per second (governor's interval is whole nanoseconds; more would round to 0).
fn admit_quota() -> Quota {
    Quota::per_second(NonZeroU32::new(ADMIT_RPS as u32).expect("not zero"))
}

/// Governor at the admit quota, default clock.
pub fn gov_admit() -> Governor {
    governor::RateLimiter::direct(admit_quota())
}

/// The same quota on governor's fake clock (never advanced).
pub fn gov_admit_fake() -> GovernorFake {
    governor::RateLimiter::direct_with_clock(admit_quota(), FakeRelativeClock::default())
}

/// Governor with one cell per hour, already spent.
pub fn gov_deny() -> Governor {
    let g = governor::RateLimiter::direct(Quota::per_hour(NonZeroU32::MIN));
    assert!(g.check().is_ok(), "the first cell fits");
    g
}

/// RPM + TPM the way governor users stack them: one limiter per budget.
pub struct StackedGovernor {
    requests: Governor,
    tokens: Governor,
}

impl StackedGovernor {
    /// Both limiters at the admit quota.
    pub fn admit() -> Self {
        StackedGovernor {
            requests: gov_admit(),
            tokens: gov_admit(),
        }
    }

    /// Both limiters spent.
    pub fn deny() -> Self {
        StackedGovernor {
            requests: gov_deny(),
            tokens: gov_deny(),
        }
    }

    /// Admits one request and `TOKENS` tokens: `check()` then `check_n()`. (Like most stacked
    /// set-ups, a token denial does not give the request back.)
    #[inline]
    pub fn check(&self) -> bool {
        self.requests.check().is_ok() && matches!(self.tokens.check_n(TOKENS_NZ), Ok(Ok(())))
    }
}

/// leaky-bucket with room for every call a bench makes.
pub fn leaky_admit() -> leaky_bucket::RateLimiter {
    leaky_bucket::RateLimiter::builder()
        .max(usize::MAX / 2)
        .initial(usize::MAX / 2)
        .refill(1_000_000)
        .interval(Duration::from_millis(1))
        .build()
}

/// leaky-bucket that is empty and refills once an hour.
pub fn leaky_deny() -> leaky_bucket::RateLimiter {
    leaky_bucket::RateLimiter::builder()
        .max(1)
        .initial(0)
        .refill(1)
        .interval(Duration::from_secs(3600))
        .build()
}

/// The baseline: a token bucket in `f64` behind a mutex, as in Go's `x/time/rate`.
pub struct FloatBucket {
    state: Mutex<FloatState>,
    per_sec: f64,
    burst: f64,
}

struct FloatState {
    tokens: f64,
    last: Instant,
}

impl FloatBucket {
    /// `per_sec` refill with `burst` capacity, full.
    pub fn new(per_sec: f64, burst: f64) -> Self {
        FloatBucket {
            state: Mutex::new(FloatState {
                tokens: burst,
                last: Instant::now(),
            }),
            per_sec,
            burst,
        }
    }

    /// A bucket with room for every call a bench makes.
    pub fn admit() -> Self {
        Self::new(1e9, 1e12)
    }

    /// A spent bucket refilling once an hour.
    pub fn deny() -> Self {
        Self::new(1.0 / 3600.0, 1.0).tap_spend()
    }

    fn tap_spend(self) -> Self {
        assert!(self.allow_n(1.0));
        self
    }

    /// Takes `n` tokens if the bucket holds them (reads the clock once, under no lock).
    #[inline]
    pub fn allow_n(&self, n: f64) -> bool {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.last = s.last.max(now);
        s.tokens = (s.tokens + elapsed * self.per_sec).min(self.burst);
        if s.tokens >= n {
            s.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Criterion settings kept small: the machine's CPUs are shared.
pub fn quick() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
        .configure_from_args()
}
