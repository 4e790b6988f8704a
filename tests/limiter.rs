//! The two-bucket limiter's behaviour, on a manual clock (no test sleeps).

mod common;
use common::{limit, remaining, used};
use ratekeeper::{Budget, Burst, Clock, Error, ManualClock, TokenBucketLimiter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SEC: u64 = 1_000_000_000;
const MIN: u64 = 60 * SEC;

fn manual(rpm: u64, tpm: u64) -> (Arc<ManualClock>, TokenBucketLimiter<Arc<ManualClock>>) {
    let clock = Arc::new(ManualClock::new(0));
    let l = TokenBucketLimiter::builder(rpm, tpm)
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

#[test]
fn construction_valid_invalid_and_unlimited() {
    let (_, l) = manual(10, 1000);
    let u = l.usage();
    assert_eq!(
        (limit(&u, Budget::Requests), limit(&u, Budget::Tokens)),
        (10, 1000)
    );
    assert_eq!(
        (
            remaining(&u, Budget::Requests),
            remaining(&u, Budget::Tokens)
        ),
        (10, 1000)
    );

    let bad = |b: ratekeeper::Builder<ratekeeper::MonotonicClock>| b.build().unwrap_err();
    assert!(matches!(
        bad(TokenBucketLimiter::builder(1, 1).period(Duration::ZERO)),
        Error::InvalidConfig(_)
    ));
    assert!(matches!(
        bad(TokenBucketLimiter::builder(1, 1).request_burst(Burst::Units(0))),
        Error::InvalidConfig(_)
    ));
    assert!(matches!(
        bad(TokenBucketLimiter::builder(1, 1).token_burst(Burst::Window(Duration::ZERO))),
        Error::InvalidConfig(_)
    ));

    // 0 = unlimited: admits everything, any token count, and counts nothing.
    let (_, l) = manual(0, 0);
    for _ in 0..10_000 {
        assert!(l.allow());
        let _ = l.try_acquire(u64::MAX).unwrap();
    }
    let u = l.usage();
    assert_eq!(
        (used(&u, Budget::Requests), used(&u, Budget::Tokens)),
        (0, 0)
    );
    assert_eq!(
        (
            remaining(&u, Budget::Requests),
            remaining(&u, Budget::Tokens)
        ),
        (u64::MAX, u64::MAX)
    );
    // One unlimited budget leaves the other enforced.
    let (_, l) = manual(2, 0);
    assert!(l.try_acquire(u64::MAX).is_ok());
    assert!(l.try_acquire(u64::MAX).is_ok());
    assert_eq!(denied(l.try_acquire(0)).budget(), Budget::Requests);
}

#[test]
fn allow_under_limit_burst_then_block_then_refill() {
    let (clock, l) = manual(60, 0); // one per second, burst 60
    for _ in 0..60 {
        assert!(l.allow());
    }
    assert!(!l.allow(), "the burst is spent");
    clock.advance(Duration::from_millis(999));
    assert!(!l.allow(), "less than one interval later");
    clock.advance(Duration::from_millis(2));
    assert!(l.allow(), "one refilled");
    assert!(!l.allow());
}

#[test]
fn burst_window_limits_what_goes_at_once() {
    // "60 RPM" enforced as one per second.
    let clock = Arc::new(ManualClock::new(0));
    let l = TokenBucketLimiter::builder(60, 0)
        .request_burst(Burst::Window(Duration::from_secs(1)))
        .clock(clock.clone())
        .build()
        .unwrap();
    assert!(l.allow());
    assert!(!l.allow());
    clock.advance(Duration::from_millis(1001));
    assert!(l.allow());
    // Per-second periods are the same math.
    let l = TokenBucketLimiter::builder(5, 0)
        .period(Duration::from_secs(1))
        .clock(ManualClock::new(0))
        .build()
        .unwrap();
    assert_eq!((0..10).filter(|_| l.allow()).count(), 5);
}

#[test]
fn try_acquire_is_all_or_nothing_and_names_the_short_budget() {
    let (clock, l) = manual(10, 1000);
    let p = l.try_acquire(800).unwrap();
    assert_eq!(p.tokens(), 800);
    // Tokens short: the request bucket must be left as it was.
    let before = l.usage();
    let d = denied(l.try_acquire(300));
    assert_eq!(d.budget(), Budget::Tokens);
    assert_eq!(l.usage(), before, "a denial changed the usage");
    // 100 tokens refill in 6 s at 1000 per minute: the exact retry instant.
    assert_eq!(
        d.retry_after(),
        Duration::from_secs(6) + Duration::from_nanos(1)
    );
    clock.set(d.ready_at_ns() - 1);
    assert!(l.try_acquire(300).is_err());
    clock.set(d.ready_at_ns());
    assert!(l.try_acquire(300).is_ok());

    // Requests short.
    let (_, l) = manual(1, 1000);
    let _ = l.try_acquire(1).unwrap();
    assert_eq!(denied(l.try_acquire(1)).budget(), Budget::Requests);
}

#[test]
fn both_short_reports_the_longer_wait() {
    let (_, l) = manual(1, 1000);
    let _ = l.try_acquire(1000).unwrap();
    // Requests refill in 60 s, 500 tokens in 30 s: requests wait longer.
    let d = denied(l.try_acquire(500));
    assert_eq!(d.budget(), Budget::Requests);
    assert!(d.retry_after() >= Duration::from_secs(60));
}

#[test]
fn more_than_the_burst_fails_at_once() {
    let (_, l) = manual(10, 1000);
    match l.try_acquire(1001) {
        Err(Error::InsufficientCapacity {
            budget,
            requested,
            capacity,
        }) => assert_eq!((budget, requested, capacity), (Budget::Tokens, 1001, 1000)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        l.try_acquire(u64::MAX),
        Err(Error::InsufficientCapacity { .. })
    ));
    assert_eq!(used(&l.usage(), Budget::Requests), 0, "nothing was taken");
    assert!(!l.peek(1001));
}

#[test]
fn reserve_predicts_try_acquire_and_changes_nothing() {
    let (clock, l) = manual(3, 100);
    for step in 0..200u64 {
        clock.set(step * 7 * SEC);
        let tokens = (step * 37) % 120;
        let before = l.usage();
        let predicted = l.peek(tokens);
        assert_eq!(l.usage(), before, "reserve wrote");
        let u = l.usage();
        assert_eq!(
            predicted,
            remaining(&u, Budget::Requests) >= 1 && remaining(&u, Budget::Tokens) >= tokens,
            "usage disagrees with reserve at step {step}"
        );
        assert_eq!(l.try_acquire(tokens).is_ok(), predicted, "step {step}");
    }
}

#[test]
fn usage_before_and_after_admissions_and_charges() {
    let (clock, l) = manual(10, 1000);
    assert!(l.allow());
    let p = l.try_acquire(300).unwrap();
    let u = l.usage();
    assert_eq!(
        (used(&u, Budget::Requests), remaining(&u, Budget::Requests)),
        (2, 8)
    );
    assert_eq!(
        (used(&u, Budget::Tokens), remaining(&u, Budget::Tokens)),
        (300, 700)
    );
    l.charge(0, 200);
    assert_eq!(used(&l.usage(), Budget::Tokens), 500);
    l.settle(p, 100).unwrap(); // 200 of the estimate come back
    assert_eq!(used(&l.usage(), Budget::Tokens), 300);
    clock.advance(Duration::from_secs(6)); // 100 tokens and 1 request refill
    let u = l.usage();
    assert_eq!(
        (used(&u, Budget::Requests), used(&u, Budget::Tokens)),
        (1, 200)
    );
}

#[test]
fn settle_refunds_surplus_and_charges_shortfall_as_debt() {
    let (clock, l) = manual(100, 1000);
    let p = l.try_acquire(400).unwrap();
    l.settle(p, 1500).unwrap(); // 1,100 more than the estimate: 500 tokens of debt
    let u = l.usage();
    assert_eq!(
        (used(&u, Budget::Tokens), remaining(&u, Budget::Tokens)),
        (1500, 0)
    );
    let d = denied(l.try_acquire(1));
    assert_eq!(d.budget(), Budget::Tokens);
    // The debt (500) plus one token must refill first: 501 tokens = 30.06 s.
    assert!(d.retry_after() > Duration::from_millis(30_060));
    clock.set(d.ready_at_ns());
    assert!(l.try_acquire(1).is_ok());
}

#[test]
fn a_refund_after_others_admitted_is_never_more_permissive() {
    // A 10-token bucket refilling 1 token per second.
    let (clock, l) = manual(1000, 60);
    let l = {
        drop(l);
        TokenBucketLimiter::builder(1000, 60)
            .token_burst(Burst::Units(10))
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let p = l.try_acquire(10).unwrap(); // empties the bucket at t = 0
    clock.set(20 * SEC); // the bucket refilled long ago...
    let _ = l.try_acquire(10).unwrap(); // ...and someone else emptied it at t = 20 s
                                        // Had the first 10 never been admitted, the second admission would have found the bucket
                                        // just as full (it caps at 10), so the bucket must stay empty: nothing comes back.
    l.settle(p, 0).unwrap();
    assert_eq!(remaining(&l.usage(), Budget::Tokens), 0);
    assert!(l.try_acquire(1).is_err());

    // Alone, a refund is exact.
    clock.set(100 * SEC);
    let p = l.try_acquire(8).unwrap();
    l.settle(p, 3).unwrap();
    // (A restart from idle is up to one quantum, <= 64 ns, late: look just after it.)
    clock.advance(Duration::from_micros(1));
    assert_eq!(remaining(&l.usage(), Budget::Tokens), 7);
}

#[test]
fn set_limit_takes_effect_now_and_keeps_used_units() {
    let (clock, l) = manual(10, 1000);
    for _ in 0..4 {
        let _ = l.try_acquire(100).unwrap();
    }
    clock.set(3 * SEC); // 0.5 requests and 50 tokens refilled
    let before = l.usage();
    l.set_limit(4, 200).unwrap();
    let after = l.usage();
    assert_eq!(
        used(&before, Budget::Requests),
        used(&after, Budget::Requests)
    );
    assert_eq!(used(&before, Budget::Tokens), used(&after, Budget::Tokens));
    assert_eq!(
        (
            limit(&after, Budget::Requests),
            limit(&after, Budget::Tokens)
        ),
        (4, 200)
    );
    // 3.5 requests / 350 tokens in use against bursts of 4 / 200: tokens are in debt, and
    // the request bucket needs another half request (7.5 s at 4 per minute).
    assert_eq!(denied(l.try_acquire(1)).budget(), Budget::Tokens);
    assert!(!l.allow());
    clock.set(10 * SEC + 400_000_000);
    assert!(
        !l.allow(),
        "7.4 s at 4 per minute is less than half a request"
    );
    clock.set(10 * SEC + 500_001_000);
    assert!(l.allow(), "half a request refilled at the new rate");
    assert!(!l.allow());
    // Raising the limit again gives room at once.
    l.set_limit(100, 10_000).unwrap();
    assert!(l.try_acquire(5000).is_ok());
    // To unlimited and back: nothing counted while unlimited.
    l.set_limit(0, 0).unwrap();
    assert!(l.try_acquire(u64::MAX).is_ok());
    l.set_limit(10, 1000).unwrap();
    assert_eq!(used(&l.usage(), Budget::Tokens), 0);
}

/// Requests at 500 or 4000 per 100 ms with a fixed burst of 4000, on a manual clock.
fn churned() -> (Arc<ManualClock>, TokenBucketLimiter<Arc<ManualClock>>) {
    let clock = Arc::new(ManualClock::new(0));
    let l = TokenBucketLimiter::builder(500, 0)
        .period(Duration::from_millis(100))
        .request_burst(Burst::Units(4000))
        .clock(clock.clone())
        .build()
        .unwrap();
    (clock, l)
}

fn drain_at(l: &TokenBucketLimiter<Arc<ManualClock>>, now: u64) -> u64 {
    let mut n = 0;
    while l.allow_at(now) {
        n += 1;
    }
    n
}

/// A change whose reading is older than an admission it carries over (its caller read the
/// clock, then waited for the lock or was descheduled) must not refill the stretch between
/// the two again. Before the fix, raising the limit at a reading 50 ms stale re-credited
/// those 50 ms at the new rate: 5750 requests at one instant against a burst of 4000.
#[test]
fn a_limit_change_with_a_stale_reading_refills_nothing_twice() {
    const MS: u64 = 1_000_000;
    let (clock, l) = churned();
    clock.set(50 * MS);
    let mut admitted = drain_at(&l, 50 * MS);
    // A restart from idle lands up to one quantum late: step past it.
    let t = 50 * MS + 1_000;
    clock.set(t);
    admitted += drain_at(&l, t);
    assert_eq!(admitted, 4000);
    l.set_limit_at(0, 4000, 0).unwrap(); // read at 0, applied with the clock at 50 ms
    assert_eq!(
        drain_at(&l, t),
        0,
        "the whole burst went within the last 1 us"
    );
    assert_eq!(used(&l.usage_at(t), Budget::Requests), 4000);
}

/// Two changes whose readings cross, on a clock the caller does not move (times passed to
/// the `_at` forms only): the later change takes effect at the earlier one's instant, not
/// before it. Before the fix the second change re-credited [0, 50 ms] at 4000 per 100 ms on
/// top of the refill that stretch had already given: 7749 requests in the window
/// [0, 50 ms] against a bound of 6000.
#[test]
fn limit_changes_whose_readings_cross_refill_nothing_twice() {
    const MS: u64 = 1_000_000;
    let (_, l) = churned();
    l.set_limit_at(0, 4000, 0).unwrap();
    let mut admitted = drain_at(&l, 0);
    assert_eq!(admitted, 4000);
    l.set_limit_at(50 * MS, 500, 0).unwrap(); // 2000 refilled at 4000/100 ms: 2000 in use carry over
    l.set_limit_at(0, 4000, 0).unwrap(); // read before the first change, applied after it
    admitted += drain_at(&l, 50 * MS);
    // Burst + rate x window, the most any limits in force allowed: 4000 + 40/ms x 50 ms; the
    // two conversions of the carried units round up, which may cost one unit.
    assert!(
        admitted <= 6000,
        "the window [0, 50 ms] admitted {admitted}"
    );
    assert!(
        admitted >= 5999,
        "{admitted}: the carried units were not exact"
    );
}

#[test]
fn set_limit_keeps_a_burst_window_a_window() {
    let clock = Arc::new(ManualClock::new(0));
    let l = TokenBucketLimiter::builder(60, 6000)
        .request_burst(Burst::Window(Duration::from_secs(1)))
        .token_burst(Burst::Window(Duration::from_secs(10)))
        .clock(clock.clone())
        .build()
        .unwrap();
    assert_eq!(remaining(&l.usage(), Budget::Requests), 1);
    assert_eq!(remaining(&l.usage(), Budget::Tokens), 1000);
    l.set_limit(600, 60_000).unwrap();
    assert_eq!(
        remaining(&l.usage(), Budget::Requests),
        10,
        "one second of 600 RPM"
    );
    assert_eq!(
        remaining(&l.usage(), Budget::Tokens),
        10_000,
        "ten seconds of 60k TPM"
    );
}

#[test]
fn a_clock_going_backwards_refills_nothing() {
    let (clock, l) = manual(60, 0);
    clock.set(100 * SEC);
    assert!(l.allow());
    // A restart from idle lands up to one quantum (<= 64 ns) late; step past it.
    clock.advance(Duration::from_micros(1));
    for _ in 1..60 {
        assert!(l.allow());
    }
    clock.set(50 * SEC); // backwards
    assert!(!l.allow());
    clock.set(100 * SEC); // and forward again to where it was: still nothing refilled
    assert!(!l.allow());
    clock.set(101 * SEC + 1_000);
    assert!(l.allow());
    assert!(!l.allow());
}

#[test]
fn extreme_inputs_never_panic_or_open_the_gate() {
    let (clock, l) = manual(u64::MAX, u64::MAX);
    // A burst of u64::MAX is held in coarse quanta: what a full bucket can take at once is
    // what usage reports, a call for it succeeds, and one unit more is refused as impossible,
    // naming a capacity below what was asked.
    let capacity = remaining(&l.usage(), Budget::Tokens);
    assert!(capacity > u64::MAX / 2);
    match l.try_acquire(capacity + 1) {
        Err(Error::InsufficientCapacity {
            requested,
            capacity: c,
            ..
        }) => assert!(c < requested && c == capacity, "{c} vs {requested}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(l.try_acquire(capacity).unwrap().tokens(), capacity);
    clock.set(u64::MAX);
    let _ = l.try_acquire(1);
    let _ = l.usage();
    // A charge of u64::MAX saturates the bucket: it closes, it does not wrap open.
    let (clock, l) = manual(10, 1000);
    l.charge(0, u64::MAX);
    assert!(l.try_acquire(1).is_err());
    assert!(l.allow(), "the request budget is untouched");
    clock.set(u64::MAX); // 584 years on: past the TAT's range, which closes the gate
    assert!(l.try_acquire(1).is_err());
    assert!(!l.allow());
    // Tiny and huge periods.
    for period in [
        Duration::from_nanos(1),
        Duration::from_secs(u64::MAX / 2_000_000_000),
    ] {
        let l = TokenBucketLimiter::builder(1, 1)
            .period(period)
            .clock(ManualClock::new(0))
            .build()
            .unwrap();
        let _ = l.try_acquire(1);
        let _ = l.try_acquire(1);
        l.set_limit(u64::MAX, 0).unwrap();
        let _ = l.usage();
    }
}

/// Keeps a limiter saturated for `periods` periods of simulated time, retrying each denial
/// exactly at its `ready_at_ns`, and checks the count against the exact bound.
fn saturate(limit: u64, period_ns: u64, chunk: u64, periods: u64) {
    let clock = Arc::new(ManualClock::new(0));
    let l = TokenBucketLimiter::builder(0, limit)
        .period(Duration::from_nanos(period_ns))
        .clock(clock.clone())
        .build()
        .unwrap();
    let end = period_ns as u128 * periods as u128;
    let mut admitted: u128 = 0;
    loop {
        match l.try_acquire(chunk) {
            Ok(_) => admitted += chunk as u128,
            Err(Error::RateLimitExceeded(d)) => {
                assert!(
                    d.ready_at_ns() > clock.now(),
                    "a denial must point to the future"
                );
                if d.ready_at_ns() as u128 > end {
                    break;
                }
                clock.set(d.ready_at_ns());
            }
            Err(e) => panic!("{e}"),
        }
    }
    // Exact bound over [0, end]: the burst (one period) + limit per period.
    let max = limit as u128 * (periods as u128 + 1);
    let min = (max as f64 * (1.0 - 1e-6)) as u128 - chunk as u128;
    assert!(admitted <= max, "{limit}/{period_ns}: {admitted} > {max}");
    assert!(admitted >= min, "{limit}/{period_ns}: {admitted} < {min}");
}

#[test]
fn precision_from_one_per_day_to_ten_billion_per_minute() {
    const DAY: u64 = 86_400 * SEC;
    saturate(1, DAY, 1, 10_000);
    saturate(7, DAY, 1, 3_000);
    saturate(60, MIN, 1, 20_000);
    // 1000.00002 ns per token: integer-ns intervals would lose 0.1% here.
    saturate(59_999_999, MIN, 1_000, 20);
    saturate(10_000_000_000, MIN, 1_000_000, 20);
}

#[test]
fn concurrent_admissions_never_exceed_burst_plus_refill() {
    let (clock, l) = manual(1000, 100_000);
    let l = Arc::new(l);
    let admitted_requests = Arc::new(AtomicU64::new(0));
    let admitted_tokens = Arc::new(AtomicU64::new(0));
    for round in 0..5u64 {
        // Each round: 4 threads hammer at one instant; then time moves by 6 s (100 requests,
        // 10,000 tokens of refill).
        clock.set(round * 6 * SEC);
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let (l, r, t) = (
                    l.clone(),
                    admitted_requests.clone(),
                    admitted_tokens.clone(),
                );
                std::thread::spawn(move || {
                    for k in 0..2000u64 {
                        if (k + i) % 3 == 0 {
                            if l.allow() {
                                r.fetch_add(1, Ordering::Relaxed);
                            }
                        } else {
                            let n = 1 + (k * 31 + i) % 400;
                            if l.try_acquire(n).is_ok() {
                                r.fetch_add(1, Ordering::Relaxed);
                                t.fetch_add(n, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        // The independent count, not the limiter's view.
        let elapsed_refill = round * 100;
        assert!(admitted_requests.load(Ordering::Relaxed) <= 1000 + elapsed_refill);
        assert!(admitted_tokens.load(Ordering::Relaxed) <= 100_000 + round * 10_000);
    }
    // The burst was hit (the threads asked for far more than it).
    assert!(admitted_requests.load(Ordering::Relaxed) >= 1000);
}

#[test]
fn set_limit_is_safe_beside_concurrent_admissions() {
    let (clock, l) = manual(600, 60_000);
    let l = Arc::new(l);
    clock.set(SEC);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admitted = Arc::new(AtomicU64::new(0));
    // The workers start once the setter has made its first change: 60,000 admissions can
    // otherwise all be over before the setter thread is first scheduled.
    let started = Arc::new(std::sync::Barrier::new(4));
    let setter = {
        let (l, stop, started) = (l.clone(), stop.clone(), started.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Alternate between two limits with the same 600-request burst ceiling.
                if i % 2 == 0 {
                    l.set_limit(600, 60_000).unwrap();
                } else {
                    l.set_limit(300, 30_000).unwrap();
                }
                if i == 0 {
                    started.wait();
                }
                i += 1;
            }
            i
        })
    };
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (l, a, started) = (l.clone(), admitted.clone(), started.clone());
            std::thread::spawn(move || {
                started.wait();
                for _ in 0..20_000 {
                    if l.try_acquire(10).is_ok() {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let changes = setter.join().unwrap();
    assert!(changes > 0);
    // At one instant, the most any mix of the two limits could admit is the larger burst
    // (600 requests, 6,000 of 10 tokens): limit changes must not add capacity.
    let n = admitted.load(Ordering::Relaxed);
    assert!(n <= 600, "admitted {n} across {changes} limit changes");
    assert!(n > 0, "nothing admitted");
    // No lower bound beyond that: an admission straddling a change is given back and the part
    // taken under the old version is forfeited (the safe side), so heavy churn costs capacity.
    // Once the churn stops and a full period refills, the bucket is exactly its final self.
    clock.set(SEC + 120 * SEC);
    let u = l.usage();
    assert_eq!(used(&u, Budget::Requests), 0);
    let burst = limit(&u, Budget::Requests); // Burst::Period: the burst is the limit
    assert!(l.allow());
    // A restart from idle lands up to one quantum (<= 64 ns) late; step past it.
    clock.advance(Duration::from_micros(1));
    let again = 1 + (1..burst + 10).filter(|_| l.allow()).count() as u64;
    assert_eq!(again, burst, "after {changes} changes");
}

#[test]
fn huge_limits_stay_usable_on_a_long_running_clock() {
    // u64::MAX per minute, the way callers spell "no practical limit", on a clock that has
    // run for a year: admits, at any token count the burst holds, and never panics.
    let clock = Arc::new(ManualClock::new(365 * 86_400 * SEC));
    let l = TokenBucketLimiter::builder(u64::MAX, u64::MAX)
        .clock(clock.clone())
        .build()
        .unwrap();
    for _ in 0..1000 {
        assert!(l.allow());
        let p = l.try_acquire(1_000_000_000_000).unwrap();
        l.settle(p, 1).unwrap();
    }
    assert!(l.try_acquire(u64::MAX / 2).is_ok());
    let u = l.usage();
    assert!(remaining(&u, Budget::Tokens) <= u64::MAX / 2 + 1);
    // The same through the system clock.
    let l = TokenBucketLimiter::new(u64::MAX / 2, u64::MAX / 2);
    assert!(l.allow());
    assert!(l.try_acquire(1 << 40).is_ok());
    // A limit set from a header can be just as large.
    let (_, l) = manual(10, 1000);
    l.set_limit(u64::MAX, u64::MAX).unwrap();
    assert!(l.try_acquire(1 << 50).is_ok());
}

#[test]
fn setting_the_same_limits_keeps_refunds_alive() {
    let (_, l) = manual(10, 1000);
    let p = l.try_acquire(600).unwrap();
    l.set_limit(10, 1000).unwrap(); // re-learned from a response header: unchanged
    l.settle(p, 100).unwrap();
    assert_eq!(
        used(&l.usage(), Budget::Tokens),
        100,
        "the surplus came back"
    );
    let p = l.try_acquire(600).unwrap();
    l.set_limit(10, 2000).unwrap(); // a real change forfeits the refund
    l.settle(p, 100).unwrap();
    assert_eq!(used(&l.usage(), Budget::Tokens), 700);
}

/// A clock whose readings may lie a second before one taken on another thread.
struct Skewed(ManualClock);

impl Clock for Skewed {
    fn now(&self) -> u64 {
        self.0.now()
    }
    fn instant_at(&self, ns: u64) -> std::time::Instant {
        self.0.instant_at(ns)
    }
    fn skew_ns(&self) -> u64 {
        SEC
    }
}

#[test]
fn refunds_allow_for_the_clocks_skew() {
    // One token per second. A refund cannot trust its reading by the clock's skew, so it
    // gives back only what lies beyond "now + skew": 9 of 10 here, all 10 with no skew.
    let skewed = TokenBucketLimiter::builder(0, 60)
        .clock(Skewed(ManualClock::new(0)))
        .build()
        .unwrap();
    let p = skewed.try_acquire(10).unwrap();
    skewed.settle(p, 0).unwrap();
    assert_eq!(used(&skewed.usage(), Budget::Tokens), 1);
    let (_, exact) = manual(0, 60);
    let p = exact.try_acquire(10).unwrap();
    exact.settle(p, 0).unwrap();
    assert_eq!(used(&exact.usage(), Budget::Tokens), 0);
}

#[test]
fn charge_records_requests_and_tokens_in_one_step_as_debt_if_need_be() {
    let (_clock, l) = manual(60, 6_000);
    l.charge_at(0, 3, 500);
    let u = l.usage_at(0);
    assert_eq!(
        (used(&u, Budget::Requests), used(&u, Budget::Tokens)),
        (3, 500)
    );
    assert_eq!(
        (
            remaining(&u, Budget::Requests),
            remaining(&u, Budget::Tokens)
        ),
        (57, 5_500)
    );
    // Any count is one step: no loop per request, no panic, and the gate closes.
    let ready = l.charge_at(0, u64::MAX, u64::MAX);
    assert!(
        ready > 1_000 * 60_000_000_000,
        "debt of u64::MAX is paid off late: {ready}"
    );
    assert!(!l.allow_at(0) && l.try_acquire_at(86_400_000_000_000, 0).is_err());
}

/// Raising a limit while waiters are queued: they keep the deadlines they were given under the
/// old limit, so the first claim under the new one must come after the last of them, not
/// between. (Converting the queued units into the faster rate's shorter time placed new claims
/// from 1 s on, among deadlines running to 9 s: 88 releases in [1 s, 9 s] where the larger
/// limit allows 81.)
#[test]
fn raising_a_limit_with_waiters_queued_releases_no_one_between_their_deadlines() {
    let clock = Arc::new(ManualClock::new(0));
    let l = TokenBucketLimiter::builder(60, 0)
        .request_burst(Burst::Units(1))
        .clock(clock.clone())
        .build()
        .unwrap();
    let queued: Vec<_> = (0..10)
        .map(|_| l.reserve_at(0, 0, u64::MAX).unwrap())
        .collect();
    let last = queued.last().unwrap().ready_at_ns();
    assert_eq!(last / SEC, 9);
    l.set_limit_at(0, 600, 0).unwrap();
    let next = l.reserve_at(0, 0, u64::MAX).unwrap();
    assert!(
        next.ready_at_ns() >= last,
        "{} before {last}",
        next.ready_at_ns()
    );
    // Without waiters the same change takes effect at once: used units carry over, no more.
    let clock = Arc::new(ManualClock::new(0));
    let l = TokenBucketLimiter::builder(60, 0)
        .request_burst(Burst::Units(1))
        .clock(clock)
        .build()
        .unwrap();
    assert!(l.allow_at(0));
    l.set_limit_at(0, 600, 0).unwrap();
    assert!(
        l.allow_at(SEC / 10 + 1),
        "one request's worth at 600/min is 0.1 s"
    );
}
