//! Adaptation through the pool, as a gateway meets it: `KeyPool::learn` with 429s that carry
//! no limit headers lowers the key's limits, a quiet window probes them back up, and limit
//! headers take over.
#![cfg(feature = "http")]

use http::{HeaderMap, HeaderValue};
use ratekeeper::headers::{AdaptPolicy, Applied};
use ratekeeper::{Budget, KeyPool, ManualClock, TokenBucketLimiter};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

type Pool = KeyPool<&'static str, TokenBucketLimiter<Arc<ManualClock>>, Arc<ManualClock>>;

fn pool() -> (
    Arc<ManualClock>,
    Pool,
    Arc<TokenBucketLimiter<Arc<ManualClock>>>,
) {
    let clock = Arc::new(ManualClock::new(1));
    let pool = KeyPool::with_clock(clock.clone());
    let l = Arc::new(
        TokenBucketLimiter::for_provider(200, 30_000)
            .largest_request(350)
            .clock(clock.clone())
            .build()
            .unwrap(),
    );
    pool.add("k", l.clone());
    (clock, pool, l)
}

fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    m
}

async fn learn(pool: &Pool, status: u16, h: &HeaderMap) -> Vec<Applied> {
    pool.learn_at(&"k", status, h, SystemTime::UNIX_EPOCH)
        .await
        .unwrap()
        .unwrap()
        .applied
}

fn limits(l: &TokenBucketLimiter<Arc<ManualClock>>) -> (u64, u64) {
    let ls = l.limits();
    (ls[0].count(), ls[1].count())
}

#[tokio::test]
async fn bare_429s_cut_the_limits_and_quiet_windows_probe_them_back() {
    let (clock, pool, l) = pool();
    let refused = map(&[("retry-after-ms", "20")]);
    let applied = learn(&pool, 429, &refused).await;
    assert_eq!(limits(&l), (140, 21_000));
    assert_eq!(
        applied,
        [
            Applied::Limit {
                budget: Budget::Requests,
                limit: 140
            },
            Applied::Limit {
                budget: Budget::Tokens,
                limit: 21_000
            },
            Applied::Cooldown(Duration::from_secs(1)),
        ],
        "the cooldown stays last"
    );
    // In flight from before the cut: no second cut within the cooldown and a second more.
    clock.advance(Duration::from_millis(1_500));
    learn(&pool, 429, &refused).await;
    assert_eq!(limits(&l), (140, 21_000));
    clock.advance(Duration::from_millis(600));
    learn(&pool, 429, &refused).await;
    assert_eq!(limits(&l), (98, 14_700));
    assert_eq!(pool.adapt_scale(&"k"), Some(0.49));
    // A window without a 429: half way to 5% below the level that drew the last one (0.7).
    clock.advance(Duration::from_secs(59));
    learn(&pool, 200, &HeaderMap::new()).await;
    assert_eq!(limits(&l), (98, 14_700), "not a whole window yet");
    clock.advance(Duration::from_secs(1));
    learn(&pool, 200, &HeaderMap::new()).await;
    assert_eq!(limits(&l), (115, 17_325));
    // It settles at 0.665 of the configuration and stays there.
    for _ in 0..20 {
        clock.advance(Duration::from_secs(60));
        learn(&pool, 200, &HeaderMap::new()).await;
    }
    assert_eq!(limits(&l), (133, 19_950));
}

#[tokio::test]
async fn limit_headers_take_precedence() {
    let (_clock, pool, l) = pool();
    learn(&pool, 429, &HeaderMap::new()).await;
    assert_eq!(limits(&l), (140, 21_000));
    let h = map(&[
        ("x-ratelimit-limit-requests", "180"),
        ("x-ratelimit-limit-tokens", "25000"),
    ]);
    learn(&pool, 429, &h).await;
    assert_eq!(limits(&l), (180, 25_000), "the headers' limits, not a cut");
    assert_eq!(pool.adapt_scale(&"k"), Some(1.0));
    learn(&pool, 429, &HeaderMap::new()).await;
    assert_eq!(
        limits(&l),
        (180, 25_000),
        "a key with headers is not adapted"
    );
}

#[tokio::test]
async fn an_off_policy_only_cools_down() {
    let (_clock, pool, l) = pool();
    assert!(pool.set_adapt_policy(&"k", AdaptPolicy::off()));
    assert_eq!(pool.adapt_policy(&"k"), Some(AdaptPolicy::off()));
    learn(&pool, 429, &HeaderMap::new()).await;
    assert_eq!(limits(&l), (200, 30_000));
    assert!(pool.cooldown_until(&"k").is_some());
}
