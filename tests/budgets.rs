//! Budget sets: requests, input, output and total tokens, per minute and per day, decided
//! together. Manual clocks throughout (no test sleeps); the concurrent test checks every budget
//! with its own window checker over what the threads were admitted.

use ratekeeper::{Budget, Burst, Cost, Error, Limit, ManualClock, TokenBucketLimiter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SEC: u64 = 1_000_000_000;
const MIN: u64 = 60 * SEC;
const DAY: u64 = 86_400 * SEC;

type Manual = TokenBucketLimiter<Arc<ManualClock>>;

/// An Anthropic-style key: 50 RPM, 40,000 input and 8,000 output tokens per minute.
fn anthropic() -> (Arc<ManualClock>, Manual) {
    let clock = Arc::new(ManualClock::new(0));
    let l = TokenBucketLimiter::with_limits([
        Limit::requests(50),
        Limit::input_tokens(40_000),
        Limit::output_tokens(8_000),
    ])
    .clock(clock.clone())
    .build()
    .unwrap();
    (clock, l)
}

fn denied(r: Result<ratekeeper::Permit, Error>) -> ratekeeper::Denied {
    match r {
        Err(Error::RateLimitExceeded(d)) => d,
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn used(l: &Manual, b: Budget) -> u64 {
    l.usage().get(b).map_or(0, |u| u.used)
}

#[test]
fn one_budget_short_means_nothing_taken_from_the_others() {
    let (_, l) = anthropic();
    let _p = l.try_acquire(Cost::new(1_000, 7_000)).unwrap();
    // Input and requests have room; output (1,000 left) does not.
    let d = denied(l.try_acquire(Cost::new(1_000, 2_000)));
    assert_eq!(d.budget(), Budget::OutputTokens);
    assert_eq!(d.window(), Duration::from_secs(60));
    assert_eq!(
        (
            used(&l, Budget::Requests),
            used(&l, Budget::InputTokens),
            used(&l, Budget::OutputTokens)
        ),
        (1, 1_000, 7_000),
        "a refusal by one budget wrote to none"
    );
    // 1,000 more output tokens refill in 1,000 / 8,000 of a minute: 7.5 s (rates are rounded
    // down, never up, so the wait may be a nanosecond longer, never shorter).
    let wait = d.retry_after();
    assert!(wait >= Duration::from_millis(7_500) && wait <= Duration::from_micros(7_500_001));
    // What fits all three still goes.
    let _q = l.try_acquire(Cost::new(39_000, 1_000)).unwrap();
    assert!(
        l.try_acquire(Cost::new(1, 0)).is_err(),
        "input is empty now"
    );
}

#[test]
fn the_budget_with_the_longest_wait_is_named() {
    let (_, l) = anthropic();
    let _ = l.try_acquire(Cost::new(40_000, 8_000)).unwrap();
    // Input needs 40,000 back (60 s), output 800 (6 s): the input budget is named.
    let d = denied(l.try_acquire(Cost::new(40_000, 800)));
    assert_eq!(d.budget(), Budget::InputTokens);
    let wait = d.retry_after();
    assert!(wait >= Duration::from_secs(60) && wait <= Duration::from_micros(60_000_001));
    // More than a budget ever holds is "never", whichever budget waits longest.
    match l.try_acquire(Cost::new(10, 8_001)) {
        Err(Error::InsufficientCapacity {
            budget,
            requested,
            capacity,
        }) => assert_eq!(
            (budget, requested, capacity),
            (Budget::OutputTokens, 8_001, 8_000)
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn settling_with_actual_input_and_output_refunds_and_charges_per_budget() {
    let (_, l) = anthropic();
    // Estimate: 2,000 prompt tokens, max_tokens 4,000.
    let p = l.try_acquire(Cost::new(2_000, 4_000)).unwrap();
    // The prompt was longer than estimated; the answer much shorter.
    l.settle(p, Cost::new(2_500, 300)).unwrap();
    let u = l.usage();
    assert_eq!(
        u.get(Budget::InputTokens).unwrap().used,
        2_500,
        "+500 charged"
    );
    assert_eq!(
        u.get(Budget::OutputTokens).unwrap().used,
        300,
        "3,700 came back"
    );
    assert_eq!(u.requests().unwrap().used, 1, "the request stays spent");
    // A total-tokens budget sees the sum of both.
    let clock = Arc::new(ManualClock::new(0));
    let t = TokenBucketLimiter::with_limits([Limit::requests(10), Limit::tokens(10_000)])
        .clock(clock)
        .build()
        .unwrap();
    let p = t.try_acquire(Cost::new(1_000, 2_000)).unwrap();
    assert_eq!(t.usage().tokens().unwrap().used, 3_000);
    t.settle(p, Cost::new(1_000, 500)).unwrap();
    assert_eq!(t.usage().tokens().unwrap().used, 1_500);
}

#[test]
fn a_daily_budget_binds_across_many_minutes_and_refills_over_the_day() {
    // 10 requests per minute, 100 per day (burst: an hour's worth, 4).
    let clock = Arc::new(ManualClock::new(0));
    let l = TokenBucketLimiter::with_limits([
        Limit::requests(10),
        Limit::requests(100)
            .per_day()
            .burst(Burst::Window(Duration::from_secs(3_600))),
    ])
    .clock(clock.clone())
    .build()
    .unwrap();
    // The hourly burst of the daily budget (100 × 1/24 = 4) binds before the minute's 10.
    let mut admitted = 0;
    for _ in 0..20 {
        admitted += l.allow() as u64;
    }
    assert_eq!(admitted, 4);
    let d = denied(l.try_acquire(0));
    assert_eq!(
        (d.budget(), d.window()),
        (Budget::Requests, Duration::from_secs(86_400))
    );
    // Over 20 minutes the day refills 100 × 20/1440 = 1.39 requests: one more.
    for _ in 0..20 {
        clock.advance(Duration::from_secs(60));
        admitted += l.allow() as u64;
    }
    assert_eq!(admitted, 5);
    // A whole day later both are full again and the daily burst binds. (After restarting from
    // idle at a reading between two quanta, the last unit of a burst comes one quantum — here
    // 50 ns — later: the limiter rounds the restart up, never down.)
    clock.advance(Duration::from_secs(86_400));
    let again = (0..20).filter(|_| l.allow()).count();
    clock.advance(Duration::from_micros(1));
    let again = again + (0..20).filter(|_| l.allow()).count();
    assert_eq!(again, 4);
    // Usage reports both request budgets; `requests()` is the tighter one.
    let u = l.usage();
    assert_eq!(u.budgets().count(), 2);
    assert_eq!(u.requests().unwrap().window, Duration::from_secs(86_400));
}

#[test]
fn a_limit_change_sets_one_budget_and_its_burst_and_keeps_used_units() {
    let (clock, l) = anthropic();
    let _ = l.try_acquire(Cost::new(10_000, 4_000)).unwrap();
    l.set_limits(&[Limit::output_tokens(16_000).burst(Burst::Window(Duration::from_secs(6)))])
        .unwrap();
    let u = l.usage();
    let out = u.get(Budget::OutputTokens).unwrap();
    assert_eq!((out.limit, out.capacity, out.used), (16_000, 1_600, 4_000));
    assert_eq!(
        u.get(Budget::InputTokens).unwrap().used,
        10_000,
        "others untouched"
    );
    // 4,000 used against a burst of 1,600: free again after 2,400 + 100 refill at 16,000/min.
    clock.advance(Duration::from_millis(9_374));
    assert!(l.try_acquire(Cost::new(0, 100)).is_err());
    clock.advance(Duration::from_millis(2));
    assert!(l.try_acquire(Cost::new(0, 100)).is_ok());
    // A budget the limiter does not have is refused, and nothing changes.
    let before = l.usage();
    assert!(matches!(
        l.set_limits(&[Limit::tokens(5)]),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        l.set_limits(&[Limit::requests(5).per_day()]),
        Err(Error::InvalidConfig(_))
    ));
    assert_eq!(l.usage(), before);
    // set_limit(rpm, tpm) on a limiter without a total-tokens budget: only 0 is accepted.
    assert!(l.set_limit(60, 0).is_ok());
    assert!(l.set_limit(60, 1).is_err());
}

#[test]
fn builds_reject_what_cannot_be_a_budget_set() {
    let e = |r: Result<TokenBucketLimiter, Error>| matches!(r, Err(Error::InvalidConfig(_)));
    assert!(e(TokenBucketLimiter::with_limits([]).build()));
    assert!(e(TokenBucketLimiter::with_limits([
        Limit::requests(1),
        Limit::requests(2)
    ])
    .build()));
    assert!(e(TokenBucketLimiter::with_limits(
        (0..7).map(|i| Limit::tokens(1).per(Duration::from_secs(i + 1)))
    )
    .build()));
    assert!(e(TokenBucketLimiter::with_limits([
        Limit::tokens(1).per(Duration::ZERO)
    ])
    .build()));
    // The same kind per two windows is two budgets.
    assert!(
        TokenBucketLimiter::with_limits([Limit::requests(1), Limit::requests(2).per_day()])
            .build()
            .is_ok()
    );
}

#[test]
fn a_reservation_waits_for_the_budget_that_binds_and_takes_all_for_that_instant() {
    let (_, l) = anthropic();
    let _ = l.try_acquire_at(0, Cost::new(0, 8_000)).unwrap();
    // Output binds: 4,000 back at 30 s. Requests and input have room now, but the slots are
    // placed for 30 s, so a request-only caller in between still sees them spent at 30 s.
    let r = l.reserve_at(0, Cost::new(100, 4_000), u64::MAX).unwrap();
    assert!((30 * SEC..=30 * SEC + 1_000).contains(&r.ready_at_ns()));
    let u = l.usage_at(30 * SEC);
    assert_eq!(u.get(Budget::InputTokens).unwrap().used, 100);
    assert_eq!(
        u.requests().unwrap().used,
        1,
        "the first request has expired by then"
    );
    // Its input slot lies at 30 s, not at 1 s: the bucket's single TAT restarts there, so a
    // caller at 1 s sees the 29 s between as spent too (the price of one word per bucket:
    // conservative, never an admission counted at an instant its caller is not released at).
    let early = l.usage_at(SEC).get(Budget::InputTokens).unwrap().used;
    assert_eq!(early, 100 + 29 * 40_000 / 60);
    // Dropping it gives every budget back.
    r.cancel_at(SEC);
    let u = l.usage_at(30 * SEC);
    assert_eq!(u.get(Budget::InputTokens).unwrap().used, 0);
    assert_eq!(u.get(Budget::OutputTokens).unwrap().used, 4_000);
}

/// The most any window admits beyond `burst + limit × window / period`, in units × period
/// (`<= 0`: the bound holds). Exact integer arithmetic; `log` sorted by time.
fn worst_window(log: &[(u64, u64)], limit: u64, burst: u64, period: u64) -> i128 {
    let (l, p) = (limit as i128, period as i128);
    let (mut prefix, mut min_start, mut worst) = (0i128, i128::MAX, i128::MIN);
    for &(t, n) in log {
        min_start = min_start.min(prefix - l * t as i128);
        prefix += n as i128 * p;
        worst = worst.max(prefix - l * t as i128 - min_start - burst as i128 * p);
    }
    worst
}

/// Three budgets under four threads on the real clock: every admission is logged with the
/// reading it was decided at and its units in each budget (as settled), and each budget is
/// checked on its own. All-or-nothing shows as: every logged admission took from all three.
/// (2 vCPUs here do not run the threads truly in parallel.)
#[test]
fn three_budgets_under_contention_each_stay_within_their_bound() {
    use ratekeeper::{Clock, MonotonicClock};
    let period = 100_000_000u64; // 100 ms
    let l = Arc::new(
        TokenBucketLimiter::with_limits([
            Limit::requests(400),
            Limit::input_tokens(20_000).burst(Burst::Units(4_000)),
            Limit::output_tokens(6_000).burst(Burst::Units(1_000)),
        ])
        .period(Duration::from_nanos(period))
        .clock(MonotonicClock::new())
        .build()
        .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4u64)
        .map(|seed| {
            let (l, stop) = (l.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut next = || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let mut log: Vec<(u64, Cost)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let now = l.clock().now();
                    let est = Cost::new(1 + next() % 300, 1 + next() % 120);
                    if let Ok(p) = l.try_acquire_at(now, est) {
                        // Settle at once with a random actual no larger than the estimate.
                        let actual = Cost::new(est.input - next() % est.input, next() % est.output);
                        l.settle_at(now, p, actual).unwrap();
                        log.push((now, actual));
                    }
                }
                log
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(600));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<(u64, Cost)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable_by_key(|e| e.0);
    let side = |f: &dyn Fn(&Cost) -> u64| all.iter().map(|(t, c)| (*t, f(c))).collect::<Vec<_>>();
    let requests = side(&|_| 1);
    let input = side(&|c| c.input);
    let output = side(&|c| c.output);
    assert!(
        worst_window(&requests, 400, 400, period) <= 0,
        "requests over"
    );
    assert!(
        worst_window(&input, 20_000, 4_000, period) <= 0,
        "input over"
    );
    assert!(
        worst_window(&output, 6_000, 1_000, period) <= 0,
        "output over"
    );
    // Saturated, not idle: the checks are not vacuous.
    assert!(requests.len() > 600, "{}", requests.len());
}

#[test]
fn the_window_checker_catches_an_over_admission() {
    let p = 1_000;
    let ok: Vec<(u64, u64)> = (0..10).map(|_| (0, 1)).chain([(100, 1)]).collect();
    assert!(worst_window(&ok, 10, 10, p) <= 0);
    let bad: Vec<(u64, u64)> = (0..10).map(|_| (0, 1)).chain([(99, 1)]).collect();
    assert!(worst_window(&bad, 10, 10, p) > 0);
}

#[test]
fn the_two_budget_limiter_is_a_budget_set_of_two() {
    let l = TokenBucketLimiter::new(500, 200_000);
    let limits = l.limits();
    assert_eq!(limits, vec![Limit::requests(500), Limit::tokens(200_000)]);
    let u = l.usage();
    assert_eq!(u.requests().unwrap().limit, 500);
    assert_eq!(u.tokens().unwrap().capacity, 200_000);
    // Unlimited budgets are not reported.
    let l = TokenBucketLimiter::new(0, 1_000);
    assert!(l.usage().requests().is_none());
    assert_eq!(format!("{l:?}"), "TokenBucketLimiter { limits: [\"unlimited requests per minute\", \"1000 tokens per minute\"], .. }");
    let _ = MIN + DAY;
}
