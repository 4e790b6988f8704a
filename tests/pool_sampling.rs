//! KeyPool's choice in pools too large to rank whole (more than 64 keys): a few keys drawn
//! at random, best headroom first, keys that denied passed over until their retry time.

use ratekeeper::{Error, KeyPool, ManualClock, TokenBucketLimiter};
use std::sync::Arc;
use std::time::Duration;

type Manual = TokenBucketLimiter<Arc<ManualClock>>;

fn pool(
    keys: usize,
    clock: &Arc<ManualClock>,
) -> (KeyPool<usize, Manual, Arc<ManualClock>>, Vec<Arc<Manual>>) {
    let limiters: Vec<_> = (0..keys)
        .map(|_| {
            Arc::new(
                TokenBucketLimiter::builder(10, 0)
                    .clock(clock.clone())
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    let pool = KeyPool::with_clock(clock.clone());
    pool.add_all(limiters.iter().cloned().enumerate());
    (pool, limiters)
}

#[tokio::test]
async fn a_large_pool_admits_while_keys_have_room_and_never_on_two() {
    let clock = Arc::new(ManualClock::new(0));
    let (pool, limiters) = pool(1_000, &clock);
    assert_eq!(pool.len(), 1_000);
    // Half the keys drained.
    for l in limiters.iter().step_by(2) {
        for _ in 0..10 {
            let _ = l.try_acquire(0).unwrap();
        }
    }
    let mut admitted = 0;
    for _ in 0..2_000 {
        let p = pool.try_acquire(0).await.unwrap();
        assert_eq!(p.key() % 2, 1, "a drained key never admits");
        admitted += 1;
        std::mem::drop(p);
    }
    let used: u64 = limiters
        .iter()
        .map(|l| l.usage().requests().unwrap().used)
        .sum();
    assert_eq!(used, 5_000 + admitted, "each admission on exactly one key");
}

#[tokio::test]
async fn sampling_prefers_headroom() {
    let clock = Arc::new(ManualClock::new(0));
    let (pool, limiters) = pool(1_000, &clock);
    // Key i has i % 10 requests used: headroom from 1.0 down to 0.1.
    for (i, l) in limiters.iter().enumerate() {
        for _ in 0..i % 10 {
            let _ = l.try_acquire(0).unwrap();
        }
    }
    let mut sum = 0;
    for _ in 0..500 {
        let p = pool.try_acquire(0).await.unwrap();
        sum += p.key() % 10;
        // Give the slot back so the pool stays as it was.
        pool.settle(p, 0).await.unwrap();
    }
    // Uniform choice would average 4.5 requests used; the best of four draws averages
    // 1.5 at first, and stays under 3 as the 500 requests (settling returns their
    // tokens, not the request) fill the emptiest keys.
    let mean = sum as f64 / 500.0;
    assert!(mean < 3.0, "mean requests used on the chosen key: {mean}");
}

#[tokio::test]
async fn an_exhausted_large_pool_denies_with_a_retry_time() {
    let clock = Arc::new(ManualClock::new(0));
    let (pool, limiters) = pool(200, &clock);
    for l in &limiters {
        for _ in 0..10 {
            let _ = l.try_acquire(0).unwrap();
        }
    }
    match pool.try_acquire(0).await {
        Err(Error::RateLimitExceeded(d)) => {
            assert!(
                d.retry_after() > Duration::ZERO && d.retry_after() <= Duration::from_millis(6_001)
            )
        }
        other => panic!("{other:?}"),
    }
    clock.advance(Duration::from_millis(6_001));
    assert!(pool.try_acquire(0).await.is_ok(), "a key refilled");
}

#[test]
fn add_all_is_repeated_add() {
    let clock = Arc::new(ManualClock::new(0));
    let (pool, limiters) = pool(3, &clock);
    pool.add_all([
        (1, limiters[0].clone()),
        (7, limiters[0].clone()),
        (7, limiters[2].clone()),
    ]);
    assert_eq!(pool.len(), 4);
    assert!(
        Arc::ptr_eq(&pool.limiter(&7).unwrap(), &limiters[2]),
        "the last of equal keys wins"
    );
    assert!(Arc::ptr_eq(&pool.limiter(&1).unwrap(), &limiters[0]));
}
