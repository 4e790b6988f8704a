//! Hostile state in Redis: every stored field is input from a stranger.
//!
//! Each test writes one kind of garbage into a real redis-server (`RATEKEEPER_REDIS_URL`, as
//! in `tests/redis.rs`) and asserts that the limiter stays closed, the server stays
//! responsive, and the damage is repaired with a TTL.
#![cfg(feature = "redis")]

use ratekeeper::{Error, ManualClock, RedisLimiter};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn url() -> Option<String> {
    let url = std::env::var("RATEKEEPER_REDIS_URL").ok();
    if url.is_none() {
        eprintln!(
            "SKIPPED: set RATEKEEPER_REDIS_URL=redis://127.0.0.1:PORT/ to run the Redis tests"
        );
    }
    url
}

fn key(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{test}-{}-{nanos}", std::process::id())
}

/// The stored fields the tests corrupt.
mod field {
    pub const REQUESTS_USED: &str = "u1";
    pub const TOKENS_USED: &str = "u2";
    pub const REQUEST_LIMIT: &str = "l1";
    pub const GENERATION: &str = "g";
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn hset(url: &str, key: &str, field: &str, value: &str) {
    let mut c = raw(url).await;
    let _: () = redis::cmd("HSET")
        .arg(key)
        .arg(field)
        .arg(value)
        .query_async(&mut c)
        .await
        .unwrap();
}

/// `HSET` as a stranger would: the key is left without a TTL.
async fn hset_persist(url: &str, key: &str, field: &str, value: &str) {
    hset(url, key, field, value).await;
    let mut c = raw(url).await;
    let _: i64 = redis::cmd("PERSIST")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
}

async fn pttl(url: &str, key: &str) -> i64 {
    let mut c = raw(url).await;
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

async fn del(url: &str, limiter: &RedisLimiter) {
    let mut c = raw(url).await;
    let (s, l) = limiter.keys();
    let _: () = redis::cmd("DEL")
        .arg(s)
        .arg(l)
        .query_async(&mut c)
        .await
        .unwrap();
}

const MINUTE: Duration = Duration::from_secs(60);

/// A limiter on a frozen manual clock: 1,000 requests and 4,000 tokens per minute.
async fn frozen(url: &str, name: &str) -> (RedisLimiter, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(3_600_000_000_000));
    let limiter = RedisLimiter::builder(url, key(name), 1_000, 4_000)
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap();
    (limiter, clock)
}

/// `NaN` in the tokens in use: 40 waiting `acquire(2000)` at one instant may take at most the
/// 4,000-token burst. A `NaN` that slips through `tonumber` and `math.max` leaves the token
/// bucket out of every decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_tokens_in_use_admit_no_more_than_the_burst() {
    let Some(url) = url() else { return };
    let (limiter, _clock) = frozen(&url, "nan-tu").await;
    limiter.try_acquire(0).await.unwrap(); // a complete, valid state to corrupt
    hset(&url, limiter.keys().0, field::TOKENS_USED, "nan").await;
    let (mut admitted, mut t0) = (0u64, None);
    for _ in 0..40 {
        // The clock is frozen: a waiter that is not released at once is never released
        // within this test.
        match tokio::time::timeout(Duration::from_millis(200), limiter.acquire(2_000)).await {
            Ok(Ok(p)) => {
                let at = p.admitted_at_us().unwrap();
                let t0 = *t0.get_or_insert(at);
                if at - t0 <= 100_000 {
                    admitted += p.tokens();
                }
            }
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => break,
        }
    }
    eprintln!("tokens admitted within 0.1 s after tu = nan: {admitted} (burst 4,000)");
    assert!(admitted <= 4_000, "{admitted} tokens admitted, burst 4,000");
    assert_eq!(limiter.repairs(), 1, "the repair is counted once");
    del(&url, &limiter).await;
}

/// `NaN` as a stored limit: the script must end (no loop on NaN) and the server must answer
/// everyone else within 50 ms throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_stored_limit_never_blocks_the_server() {
    let Some(url) = url() else { return };
    let (limiter, _clock) = frozen(&url, "nan-rl").await;
    limiter.set_limit(999, 4_000).await.unwrap(); // stores the limits
    hset(&url, limiter.keys().1, field::REQUEST_LIMIT, "nan").await;
    // Connect first: a server stuck in a script does not even finish a handshake.
    let mut ping = raw(&url).await;
    let call = {
        let l = limiter.clone();
        tokio::spawn(async move { l.try_acquire(1).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Three PINGs: every one must be answered, the fastest within 50 ms (one slow answer
    // may be this machine descheduling the test; a server stuck in a script answers none).
    let (mut pong, mut waited) = (Ok(String::new()), Duration::MAX);
    for _ in 0..3 {
        let t = Instant::now();
        pong = tokio::time::timeout(
            Duration::from_secs(10),
            redis::cmd("PING").query_async::<String>(&mut ping),
        )
        .await
        .unwrap_or_else(|_| Ok("no answer in 10 s".into()));
        waited = waited.min(t.elapsed());
        if pong.is_err() {
            break;
        }
    }
    eprintln!("PING while a call meets rl = nan: {pong:?} after {waited:?}");
    if pong.is_err() {
        // BUSY: free the server for the other tests before failing.
        let _: Result<(), _> = redis::cmd("SCRIPT")
            .arg("KILL")
            .query_async(&mut ping)
            .await;
    }
    let result = call.await.unwrap();
    eprintln!("the call itself: {result:?}");
    assert_eq!(pong.as_deref().ok(), Some("PONG"));
    assert!(waited < Duration::from_millis(50), "PING took {waited:?}");
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(limiter.repairs(), 1);
    del(&url, &limiter).await;
}

/// Garbage as a stored limit: the limits are rewritten from the caller's configuration (here
/// its last `set_limit`), the key gets a TTL, and calls work again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_stored_limit_is_rewritten_from_the_configuration() {
    let Some(url) = url() else { return };
    let (limiter, _clock) = frozen(&url, "abc-rl").await;
    limiter.set_limit(999, 4_000).await.unwrap();
    hset(&url, limiter.keys().1, field::REQUEST_LIMIT, "abc").await;
    let mut failed = 0;
    for _ in 0..5 {
        if let Err(Error::Unavailable(e)) = limiter.usage().await {
            eprintln!("usage: {e}");
            failed += 1;
        }
    }
    let fresh = RedisLimiter::builder(url.as_str(), "unused", 1, 1)
        .build()
        .await;
    let ttl = pttl(&url, limiter.keys().1).await;
    let set = limiter.set_limit(500, 4_000).await;
    eprintln!(
        "rl = abc: {failed} of 5 calls failed, limits PTTL {ttl} ms, set_limit {set:?}, \
         fresh limiter ok: {}",
        fresh.is_ok()
    );
    assert_eq!(failed, 0, "calls failed on a corrupt limit");
    assert!(ttl > 0, "the limits key has no TTL ({ttl})");
    assert!(set.is_ok());
    let u = limiter.usage().await.unwrap();
    assert_eq!(
        (
            u.requests().map_or(0, |b| b.limit),
            u.tokens().map_or(0, |b| b.limit)
        ),
        (500, 4_000)
    );
    assert_eq!(
        limiter.repairs(),
        1,
        "repaired by the first call, then sound"
    );
    del(&url, &limiter).await;
}

/// Garbage as the stored generation: the caller gets a decision (never "unexpected reply"),
/// and units are taken only by a call that was admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_stored_generation_gets_a_decision_not_a_lost_budget() {
    let Some(url) = url() else { return };
    let (limiter, _clock) = frozen(&url, "abc-ver").await;
    limiter.set_limit(999, 4_000).await.unwrap();
    hset(&url, limiter.keys().1, field::GENERATION, "abc").await;
    let before = limiter
        .usage()
        .await
        .map(|u| u.tokens().map_or(0, |b| b.used));
    let r = limiter.try_acquire(2_000).await;
    let after = limiter
        .usage()
        .await
        .map(|u| u.tokens().map_or(0, |b| b.used));
    eprintln!("ver = abc: try_acquire {r:?}, tokens used {before:?} -> {after:?}");
    match r {
        Ok(_) => {}
        Err(Error::RateLimitExceeded(_)) => assert_eq!(before, after, "a denial took units"),
        Err(e) => panic!("no decision: {e}"),
    }
    assert_eq!(limiter.repairs(), 1);
    del(&url, &limiter).await;
}

/// `NaN` in the requests in use: denied now (the closed side), but with a TTL of at most a
/// window, after which the budget is whole again, in real time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_requests_in_use_close_the_key_for_one_window_only() {
    let Some(url) = url() else { return };
    let limiter = RedisLimiter::builder(url.as_str(), key("nan-ru"), 10, 1_000)
        .period(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    limiter.try_acquire(1).await.unwrap();
    hset_persist(&url, limiter.keys().0, field::REQUESTS_USED, "nan").await;
    let first = limiter.try_acquire(1).await;
    let ttl = pttl(&url, limiter.keys().0).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = limiter.try_acquire(1).await;
    eprintln!(
        "ru = nan: at once {:?}, state PTTL {ttl} ms, after 0.6 s {:?}",
        first.as_ref().map(|_| "admitted"),
        later.as_ref().map(|_| "admitted")
    );
    assert!(first.is_err(), "corrupt state must not admit");
    assert!((1..=501).contains(&ttl), "state PTTL {ttl} ms");
    assert!(later.is_ok(), "still closed after a window: {later:?}");
    assert_eq!(limiter.repairs(), 1);
    del(&url, &limiter).await;
}

/// An infinite number in use must not become a TTL of centuries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_requests_in_use_get_no_century_long_ttl() {
    let Some(url) = url() else { return };
    let limiter = RedisLimiter::builder(url.as_str(), key("inf-ru"), 60, 1_000)
        .build()
        .await
        .unwrap();
    limiter.try_acquire(1).await.unwrap();
    hset_persist(&url, limiter.keys().0, field::REQUESTS_USED, "inf").await;
    let waited = tokio::time::timeout(Duration::from_millis(100), limiter.acquire(1)).await;
    eprintln!("acquire after ru = inf: {waited:?}");
    tokio::time::sleep(Duration::from_millis(50)).await; // the dropped waiter's refund
    let ttl = pttl(&url, limiter.keys().0).await;
    eprintln!(
        "ru = inf: state PTTL {ttl} ms ({:.1} years)",
        ttl as f64 / 3.156e10
    );
    assert!(
        (1..=MINUTE.as_millis() as i64 + 1).contains(&ttl),
        "PTTL {ttl}"
    );
    assert_eq!(limiter.repairs(), 1);
    del(&url, &limiter).await;
}

/// The stored limits vanish (FLUSHALL, a restart without persistence, expiry: here a DEL of
/// this key's two hashes): the limiter re-applies the limits it last set, not its build-time
/// ones, and another replica then sees them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_limits_are_reapplied_from_the_last_set_limit() {
    let Some(url) = url() else { return };
    let name = key("flushed");
    let clock = Arc::new(ManualClock::new(3_600_000_000_000));
    let build = || {
        RedisLimiter::builder(url.as_str(), name.as_str(), 1_000, 100_000)
            .manual_clock(clock.clone())
            .build()
    };
    let (a, b) = (build().await.unwrap(), build().await.unwrap());
    a.set_limit(10, 1_000).await.unwrap();
    assert_eq!(
        b.usage().await.unwrap().requests().map_or(0, |b| b.limit),
        10
    );
    del(&url, &a).await;
    let mut admitted = 0;
    for _ in 0..20 {
        admitted += a.try_acquire(0).await.is_ok() as u32;
    }
    let seen_by_b = b.usage().await.unwrap().requests().map_or(0, |b| b.limit);
    let ttl = pttl(&url, a.keys().1).await;
    eprintln!(
        "after the limits vanished: {admitted} of 20 admitted at one instant (learned limit 10), \
         the other replica sees {seen_by_b} per minute, limits PTTL {ttl} ms"
    );
    assert_eq!(admitted, 10);
    assert_eq!(seen_by_b, 10);
    assert!(ttl > 0, "limits PTTL {ttl}");
    assert_eq!(a.limits_stored(), 1, "re-applied once");
    assert_eq!(a.repairs() + b.repairs(), 0, "lost is not corrupt");
    del(&url, &a).await;
}
