//! The keyed limiter where a user meets it: per-key budgets, idle keys dropped and coming
//! back no more permissive, the hard cap, overrides and limit changes carrying units over.

use ratekeeper::{Budget, Error, KeyedLimiter, Limit, ManualClock};
use std::sync::Arc;
use std::time::Duration;

type Keyed = KeyedLimiter<String, Arc<ManualClock>>;

const MIN: u64 = 60_000_000_000;

/// 4 requests and 1,000 tokens per minute per key, on a clock reading 0. (Readings that are
/// not a whole number of quanta cost up to one quantum after a restart from idle: the tests
/// stay on exact readings or leave a margin.)
fn keyed() -> (Keyed, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(0));
    let k = KeyedLimiter::<String, _>::builder(4, 1_000)
        .clock(clock.clone())
        .build()
        .unwrap();
    (k, clock)
}

fn key(s: &str) -> String {
    s.to_string()
}

#[test]
fn each_key_has_its_own_budgets() {
    let (k, _clock) = keyed();
    for _ in 0..4 {
        let _ = k.try_acquire(&key("a"), 100).unwrap();
    }
    match k.try_acquire(&key("a"), 1) {
        Err(Error::RateLimitExceeded(d)) => {
            assert_eq!(d.budget(), Budget::Requests);
            let wait = d.retry_after().as_nanos() as i128 - 15_000_000_000;
            assert!((0..1_000).contains(&wait), "15 s, rounded up: {wait}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        k.try_acquire(&key("b"), 1_000).is_ok(),
        "b is untouched by a"
    );
    match k.try_acquire(&key("b"), 1) {
        Err(Error::RateLimitExceeded(d)) => assert_eq!(d.budget(), Budget::Tokens),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        k.try_acquire(&key("c"), u64::MAX),
        Err(Error::InsufficientCapacity { .. })
    ));
    let u = k.usage(&key("a"));
    assert_eq!(u.requests().unwrap().used, 4);
    assert_eq!(u.tokens().unwrap().used, 400);
    assert_eq!(k.usage(&key("never seen")).requests().unwrap().used, 0);
}

#[test]
fn settle_refunds_the_surplus_and_charges_the_shortfall() {
    let (k, clock) = keyed();
    let p = k.try_acquire(&key("a"), 800).unwrap();
    k.settle(&key("a"), p, 300).unwrap();
    assert_eq!(k.usage(&key("a")).tokens().unwrap().used, 300);
    let p = k.try_acquire(&key("a"), 100).unwrap();
    k.settle(&key("a"), p, 900).unwrap();
    assert_eq!(k.usage(&key("a")).tokens().unwrap().used, 1_200, "debt");
    assert!(k.try_acquire(&key("a"), 1).is_err());
    clock.advance(Duration::from_secs(13)); // 216 tokens refill: out of debt, 16 free
    assert!(k.try_acquire(&key("a"), 16).is_ok());
    // A permit settles only where it was issued.
    let (other, _) = keyed();
    let p = other.try_acquire(&key("a"), 1).unwrap();
    assert_eq!(k.settle(&key("a"), p, 0), Err(Error::ForeignPermit));
}

#[test]
fn idle_keys_are_dropped_and_busy_ones_kept() {
    let (k, clock) = keyed();
    for i in 0..100 {
        let _ = k.try_acquire(&format!("tenant-{i}"), 10).unwrap();
    }
    assert_eq!(k.len(), 100);
    assert_eq!(k.evict_idle(), 0, "every key holds units in use");
    clock.advance(Duration::from_secs(30));
    let _ = k.try_acquire(&key("tenant-7"), 10).unwrap();
    // At 40 s the request taken at 0 has refilled (15 s a request), tenant-7's has not.
    clock.advance(Duration::from_secs(10));
    assert_eq!(k.evict_idle(), 99);
    assert_eq!(k.len(), 1);
    assert_eq!(k.usage(&key("tenant-7")).requests().unwrap().remaining, 3);
}

#[test]
fn a_dropped_key_comes_back_no_more_permissive_than_it_left() {
    let (k, clock) = keyed();
    let t0 = 0;
    for _ in 0..4 {
        let _ = k.try_acquire_at(t0, &key("a"), 0).unwrap();
    }
    clock.set(t0 + MIN + 1_000);
    assert_eq!(k.evict_idle(), 1);
    // A call with a reading taken before the sweep (a thread that read the clock, then was
    // descheduled) meets the new tenant: at that reading the old one had 2 requests free
    // (half a minute refilled 2), and the new one must not have more.
    let half = t0 + MIN / 2;
    let mut admitted = 0;
    while k.try_acquire_at(half, &key("a"), 0).is_ok() {
        admitted += 1;
    }
    assert!(
        admitted <= 2,
        "{admitted} admitted at a reading where 2 had refilled"
    );
    // From the sweep's reading on, the key is full again.
    assert!(k.try_acquire_at(t0 + 2 * MIN, &key("a"), 1_000).is_ok());
    let _ = clock;
}

#[test]
fn the_cap_refuses_a_new_key_only_while_no_key_is_idle() {
    let clock = Arc::new(ManualClock::new(0));
    let k = KeyedLimiter::<u64, _>::builder(1, 0)
        .clock(clock.clone())
        .max_tenants(3)
        .build()
        .unwrap();
    for t in 0..3 {
        let _ = k.try_acquire(&t, 0).unwrap();
    }
    assert!(matches!(k.try_acquire(&3, 0), Err(Error::Unavailable(_))));
    assert!(
        k.try_acquire(&0, 0).is_err(),
        "an existing key is decided as usual"
    );
    clock.advance(Duration::from_secs(61));
    assert!(
        k.try_acquire(&3, 0).is_ok(),
        "idle keys were swept to make room"
    );
    assert!(k.len() <= 3);
}

#[test]
fn an_override_carries_units_both_ways_and_leaves_the_class_alone() {
    let (k, _clock) = keyed();
    for _ in 0..3 {
        let _ = k.try_acquire(&key("vip"), 0).unwrap();
    }
    k.set_override(key("vip"), &[Limit::requests(10)]).unwrap();
    assert_eq!(
        k.override_limits(&key("vip")).unwrap()[0],
        Limit::requests(10)
    );
    let u = k.usage(&key("vip"));
    assert_eq!(u.requests().unwrap().used, 3, "units in use carry over");
    assert_eq!(u.requests().unwrap().limit, 10);
    for _ in 0..7 {
        let _ = k.try_acquire(&key("vip"), 0).unwrap();
    }
    assert!(k.try_acquire(&key("vip"), 0).is_err());
    assert_eq!(k.usage(&key("other")).requests().unwrap().limit, 4);
    // Changing it again keeps the units; clearing it carries them back to the class.
    k.set_override(key("vip"), &[Limit::requests(20)]).unwrap();
    assert_eq!(k.usage(&key("vip")).requests().unwrap().used, 10);
    assert!(k.clear_override(&key("vip")));
    assert!(!k.clear_override(&key("vip")));
    let u = k.usage(&key("vip"));
    assert_eq!(
        (u.requests().unwrap().limit, u.requests().unwrap().used),
        (4, 10)
    );
    assert!(k.try_acquire(&key("vip"), 0).is_err());
    assert!(k
        .set_override(key("x"), &[Limit::requests(1).per_hour()])
        .is_err());
}

#[test]
fn a_class_limit_change_moves_every_key_and_keeps_its_units() {
    let (k, _clock) = keyed();
    for i in 0..50 {
        for _ in 0..2 {
            let _ = k.try_acquire(&format!("t{i}"), 100).unwrap();
        }
    }
    k.set_limits(&[Limit::requests(2), Limit::tokens(10_000)])
        .unwrap();
    assert_eq!(k.limits()[0], Limit::requests(2));
    for i in 0..50 {
        let u = k.usage(&format!("t{i}"));
        assert_eq!(u.requests().unwrap().used, 2);
        assert_eq!(u.tokens().unwrap().used, 200);
        assert!(k.try_acquire(&format!("t{i}"), 0).is_err(), "2 of 2 in use");
    }
    assert!(k.set_limits(&[Limit::requests(2).per_hour()]).is_err());
}

#[test]
fn unlimited_budgets_report_nothing_and_admit_everything() {
    let k = KeyedLimiter::<u64>::builder(0, 0).build().unwrap();
    for _ in 0..1_000 {
        let _ = k.try_acquire(&1, u64::MAX).unwrap();
    }
    assert!(k.usage(&1).is_unlimited());
    assert!(KeyedLimiter::<u64>::with_limits([]).build().is_err());
}
