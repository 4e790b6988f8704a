//! KeyPool: headroom choice, race fallback, single admission, cooldowns, runtime key changes,
//! header learning end to end. ManualClock where time must stand still, paused tokio where
//! something waits.

mod common;
#[cfg(feature = "http")]
use common::remaining;
use common::{limit, used};
use ratekeeper::Budget;
use ratekeeper::{
    Cost, Error, KeyPool, Limit, ManualClock, RateLimiter, TokenBucketLimiter, TokioClock, Usage,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

type Manual = TokenBucketLimiter<Arc<ManualClock>>;

fn manual(clock: &Arc<ManualClock>, rpm: u64, tpm: u64) -> Arc<Manual> {
    Arc::new(
        TokenBucketLimiter::builder(rpm, tpm)
            .clock(clock.clone())
            .build()
            .unwrap(),
    )
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(0))
}

#[tokio::test]
async fn picks_the_key_with_the_most_headroom_for_this_request() {
    let c = clock();
    let pool = KeyPool::with_clock(c.clone());
    let (a, b) = (manual(&c, 10, 10_000), manual(&c, 10, 10_000));
    pool.add("a", a.clone());
    pool.add("b", b.clone());
    // a: 5 of 10 requests used, tokens untouched; b: 1 request but 9,000 tokens used.
    for _ in 0..5 {
        let _ = a.try_acquire(0).unwrap();
    }
    let _ = b.try_acquire(9_000).unwrap();
    // Headroom after a 100-token request: a = min(4/10, 1.0) = 0.4, b = min(8/10, 900/10,000)
    // = 0.09. Both budgets count: a, though it has fewer requests left.
    let p = pool.try_acquire(100).await.unwrap();
    assert_eq!(*p.key(), "a");
    // Now a has no request left: b, whose tokens still fit.
    for _ in 0..4 {
        let _ = a.try_acquire(0).unwrap();
    }
    let p = pool.try_acquire(500).await.unwrap();
    assert_eq!(*p.key(), "b");
    // Exactly one key admitted each call.
    assert_eq!(used(&a.usage(), Budget::Requests), 10);
    assert_eq!(used(&b.usage(), Budget::Requests), 2);
}

/// A limiter whose `usage` is a stale snapshot: it ranks first, then loses the race.
struct Stale {
    inner: Arc<Manual>,
    shown: Usage,
}

impl RateLimiter for Stale {
    type Permit = ratekeeper::Permit;
    async fn allow(&self) -> bool {
        self.inner.allow()
    }
    async fn wait(&self) -> Result<(), Error> {
        RateLimiter::wait(self.inner.as_ref()).await
    }
    async fn set_limit(&self, rpm: u64, tpm: u64) -> Result<(), Error> {
        RateLimiter::set_limit(self.inner.as_ref(), rpm, tpm).await
    }
    async fn set_limits(&self, limits: &[Limit]) -> Result<(), Error> {
        RateLimiter::set_limits(self.inner.as_ref(), limits).await
    }
    async fn usage(&self) -> Result<Usage, Error> {
        Ok(self.shown)
    }
    async fn limits(&self) -> Result<Vec<Limit>, Error> {
        RateLimiter::limits(self.inner.as_ref()).await
    }
    async fn peek(&self, cost: impl Into<Cost> + Send) -> bool {
        self.inner.peek(cost)
    }
    async fn consume_tokens(&self, cost: impl Into<Cost> + Send) -> Result<(), Error> {
        RateLimiter::consume_tokens(self.inner.as_ref(), cost).await
    }
    async fn charge(&self, requests: u64, cost: impl Into<Cost> + Send) -> Result<(), Error> {
        RateLimiter::charge(self.inner.as_ref(), requests, cost).await
    }
    async fn try_acquire(&self, cost: impl Into<Cost> + Send) -> Result<Self::Permit, Error> {
        self.inner.try_acquire(cost)
    }
    async fn acquire_within(
        &self,
        cost: impl Into<Cost> + Send,
        max_wait: std::time::Duration,
    ) -> Result<ratekeeper::Permit, Error> {
        RateLimiter::acquire_within(self.inner.as_ref(), cost, max_wait).await
    }
    async fn settle(&self, p: Self::Permit, actual: impl Into<Cost> + Send) -> Result<(), Error> {
        self.inner.settle(p, actual)
    }
}

#[tokio::test]
async fn a_key_that_loses_the_race_falls_through_to_the_next() {
    let c = clock();
    let (a, b) = (manual(&c, 1, 0), manual(&c, 5, 0));
    // a showed full headroom when ranked, but someone took its only slot since.
    let shown = a.usage();
    let _ = a.try_acquire(0).unwrap();
    let pool = KeyPool::with_clock(c.clone());
    pool.add(
        "a",
        Arc::new(Stale {
            inner: a.clone(),
            shown,
        }),
    );
    pool.add(
        "b",
        Arc::new(Stale {
            inner: b.clone(),
            shown: b.usage(),
        }),
    );
    let p = pool.try_acquire(0).await.unwrap();
    assert_eq!(*p.key(), "b");
    assert_eq!(
        (
            used(&a.usage(), Budget::Requests),
            used(&b.usage(), Budget::Requests)
        ),
        (1, 1)
    );
}

#[test]
fn threads_racing_for_the_last_slots_never_get_more_than_exist() {
    // 2 vCPUs that do not run two threads truly in parallel: this checks correctness only.
    let c = clock();
    let pool = Arc::new(KeyPool::with_clock(c.clone()));
    let keys = [manual(&c, 7, 0), manual(&c, 5, 0), manual(&c, 3, 0)];
    for (i, k) in keys.iter().enumerate() {
        pool.add(i, k.clone());
    }
    let granted = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (pool, granted) = (pool.clone(), granted.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                for _ in 0..20 {
                    if let Ok(p) = rt.block_on(pool.try_acquire(0)) {
                        granted.fetch_add(1, Ordering::Relaxed);
                        // Dropping a permit keeps its charge.
                        drop(p);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Time stood still: exactly the 15 slots that exist, each on one key.
    assert_eq!(granted.load(Ordering::Relaxed), 15);
    let used: Vec<_> = keys
        .iter()
        .map(|k| used(&k.usage(), Budget::Requests))
        .collect();
    assert_eq!(used, vec![7, 5, 3]);
}

#[tokio::test]
async fn cooling_keys_are_skipped_until_their_cooldown_ends() {
    let c = clock();
    let pool = KeyPool::with_clock(c.clone());
    let (a, b) = (manual(&c, 100, 0), manual(&c, 10, 0));
    pool.add("a", a.clone());
    pool.add("b", b.clone());
    assert!(pool.cool_down(&"a", Duration::from_secs(2)));
    assert_eq!(*pool.try_acquire(0).await.unwrap().key(), "b");
    assert!(pool.cool_down(&"b", Duration::from_secs(1)));
    // Both cooling: denied, told to wait for the sooner end.
    match pool.try_acquire(0).await {
        Err(Error::RateLimitExceeded(d)) => assert_eq!(d.retry_after(), Duration::from_secs(1)),
        other => panic!("expected a cooldown denial, got {other:?}"),
    }
    // A shorter cooldown does not shorten a longer one.
    pool.cool_down(&"a", Duration::from_millis(1));
    c.advance(Duration::from_millis(1_500));
    assert_eq!(*pool.try_acquire(0).await.unwrap().key(), "b");
    c.advance(Duration::from_millis(600));
    assert_eq!(*pool.try_acquire(0).await.unwrap().key(), "a");
    assert!(!pool.cool_down(&"missing", Duration::from_secs(1)));
}

type Limiter = TokenBucketLimiter<TokioClock>;

/// A pool of two spent keys on tokio's clock: "slow" frees up in a minute (one per minute),
/// "fast" in a second (one per second).
fn slow_and_fast() -> (
    KeyPool<&'static str, Limiter, TokioClock>,
    Arc<Limiter>,
    Arc<Limiter>,
) {
    let c = TokioClock::new();
    let pool = KeyPool::with_clock(c);
    let build = |rpm| {
        Arc::new(
            TokenBucketLimiter::builder(rpm, 0)
                .clock(c)
                .build()
                .unwrap(),
        )
    };
    let (slow, fast) = (build(1), build(60));
    pool.add("slow", slow.clone());
    pool.add("fast", fast.clone());
    for _ in 0..60 {
        let _ = fast.try_acquire(0).unwrap();
    }
    let _ = slow.try_acquire(0).unwrap();
    (pool, slow, fast)
}

#[tokio::test(start_paused = true)]
async fn acquire_waits_on_the_key_that_frees_up_first() {
    let (pool, slow, _) = slow_and_fast();
    let start = tokio::time::Instant::now();
    let p = pool.acquire(0).await.unwrap();
    assert_eq!(*p.key(), "fast");
    // tokio's timer wheel rounds a deadline up to its next millisecond.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited <= Duration::from_millis(1_001),
        "{waited:?}"
    );
    assert_eq!(used(&slow.usage(), Budget::Requests), 1);
}

#[tokio::test(start_paused = true)]
async fn acquire_waits_out_a_cooldown_when_every_key_cools() {
    let c = TokioClock::new();
    let pool = KeyPool::with_clock(c);
    let a = Arc::new(TokenBucketLimiter::builder(10, 0).clock(c).build().unwrap());
    pool.add("a", a);
    pool.cool_down(&"a", Duration::from_millis(750));
    let start = tokio::time::Instant::now();
    let p = pool.acquire(0).await.unwrap();
    assert_eq!(*p.key(), "a");
    assert_eq!(start.elapsed(), Duration::from_millis(750));
}

fn retry_after(r: Result<impl Sized, Error>) -> Duration {
    match r {
        Err(Error::RateLimitExceeded(d)) => d.retry_after(),
        Err(e) => panic!("expected a rate-limit denial, got {e}"),
        Ok(_) => panic!("expected a rate-limit denial, got a permit"),
    }
}

#[tokio::test(start_paused = true)]
async fn acquire_within_refuses_at_once_when_no_key_frees_up_in_time() {
    let (pool, slow, fast) = slow_and_fast();
    let start = tokio::time::Instant::now();
    // The soonest key frees up in 1 s: half a second is not enough, and nothing is claimed.
    let wait = retry_after(pool.acquire_within(0, Duration::from_millis(500)).await);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(
        wait > Duration::from_millis(999) && wait <= Duration::from_micros(1_000_001),
        "{wait:?}"
    );
    assert_eq!(used(&fast.usage(), Budget::Requests), 60);
    assert_eq!(used(&slow.usage(), Budget::Requests), 1);
    // Two seconds is: it waits on the fast key as `acquire` does.
    let p = pool
        .acquire_within(0, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(*p.key(), "fast");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited <= Duration::from_millis(1_001),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn acquire_within_does_not_wait_for_a_cooldown_that_ends_too_late() {
    let c = TokioClock::new();
    let pool = KeyPool::with_clock(c);
    let a = Arc::new(TokenBucketLimiter::builder(10, 0).clock(c).build().unwrap());
    pool.add("a", a.clone());
    pool.cool_down(&"a", Duration::from_millis(750));
    let start = tokio::time::Instant::now();
    let wait = retry_after(pool.acquire_within(0, Duration::from_millis(500)).await);
    assert_eq!(
        (start.elapsed(), wait),
        (Duration::ZERO, Duration::from_millis(750))
    );
    assert_eq!(used(&a.usage(), Budget::Requests), 0);
    let p = pool
        .acquire_within(0, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(*p.key(), "a");
    assert_eq!(start.elapsed(), Duration::from_millis(750));
}

/// The bound is for the whole call: a key given up after a wait (it went on cooldown
/// meanwhile) leaves only the rest of `max_wait`, not a fresh one.
#[tokio::test(start_paused = true)]
async fn acquire_within_bounds_the_whole_call_across_a_key_given_up() {
    let c = TokioClock::new();
    let pool = Arc::new(KeyPool::with_clock(c));
    let a = Arc::new(TokenBucketLimiter::builder(60, 0).clock(c).build().unwrap());
    pool.add("a", a.clone());
    for _ in 0..60 {
        let _ = a.try_acquire(0).unwrap();
    }
    // While the caller waits on a's next slot (1 s out), a 429 cools a for 2 s.
    let p2 = pool.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        p2.cool_down(&"a", Duration::from_secs(2));
    });
    let start = tokio::time::Instant::now();
    let r = pool.acquire_within(0, Duration::from_millis(1_500)).await;
    // Released at 1 s onto a cooling key, it gives the key up; the cooldown ends at 2.2 s,
    // past the 1.5 s bound, so the call ends there rather than waiting again.
    let wait = retry_after(r);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited <= Duration::from_millis(1_001),
        "{waited:?}"
    );
    assert!(
        wait >= Duration::from_millis(1_199) && wait <= Duration::from_millis(1_200),
        "{wait:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_added_and_removed_under_traffic() {
    let c = clock();
    let pool = Arc::new(KeyPool::with_clock(c.clone()));
    let limiters: Vec<_> = (0..6).map(|_| manual(&c, 50, 5_000)).collect();
    pool.add(0, limiters[0].clone());
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut admitted = 0u64;
                for _ in 0..300 {
                    if let Ok(p) = pool.try_acquire(10).await {
                        admitted += 1;
                        pool.settle(p, 10).await.unwrap();
                    }
                    tokio::task::yield_now().await;
                }
                admitted
            })
        })
        .collect();
    for (i, l) in limiters.iter().enumerate().skip(1) {
        pool.add(i, l.clone());
        tokio::task::yield_now().await;
        if i % 2 == 0 {
            assert!(pool.remove(&(i - 1)));
        }
    }
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    // Frozen time: nothing refills, so every admission used a real slot of some key.
    let in_use: u64 = limiters
        .iter()
        .map(|l| used(&l.usage(), Budget::Requests))
        .sum();
    assert_eq!(total, in_use);
    assert!(limiters
        .iter()
        .all(|l| used(&l.usage(), Budget::Requests) <= 50));
    assert!(pool.len() >= 3);
}

#[tokio::test]
async fn a_permit_outlives_its_key() {
    let c = clock();
    let pool = KeyPool::with_clock(c.clone());
    let a = manual(&c, 10, 1_000);
    pool.add("a", a.clone());
    let p = pool.try_acquire(800).await.unwrap();
    assert!(pool.remove(&"a"));
    assert!(pool.is_empty());
    pool.settle(p, 100).await.unwrap();
    assert_eq!(used(&a.usage(), Budget::Tokens), 100);
    assert!(matches!(
        pool.try_acquire(1).await,
        Err(Error::InvalidConfig(_))
    ));
}

#[tokio::test]
async fn shared_budget_is_counted_once_and_the_pool_is_a_rate_limiter() {
    async fn through_trait<L: RateLimiter>(l: &L, tokens: u64) -> Result<(), Error> {
        let p = l.try_acquire(tokens).await?;
        l.settle(p, tokens / 2).await
    }
    let c = clock();
    let pool = KeyPool::with_clock(c.clone());
    let org = manual(&c, 10, 1_000);
    pool.add("org-key-1", org.clone());
    pool.add("org-key-2", org.clone());
    pool.add("other", manual(&c, 5, 500));
    through_trait(&pool, 400).await.unwrap();
    let u = RateLimiter::usage(&pool).await.unwrap();
    assert_eq!(
        (limit(&u, Budget::Requests), limit(&u, Budget::Tokens)),
        (15, 1_500)
    );
    assert_eq!(
        (used(&u, Budget::Requests), used(&u, Budget::Tokens)),
        (1, 200)
    );
    assert!(RateLimiter::set_limit(&pool, 1, 1).await.is_err());
    // The 400 went to the org budget (more headroom); it has 800 tokens left after settling.
    assert!(RateLimiter::peek(&pool, 800).await);
    assert!(!RateLimiter::peek(&pool, 801).await);
}

#[cfg(feature = "http")]
mod learning {
    use super::*;
    use http::{HeaderMap, HeaderValue};
    use ratekeeper::headers::{Applied, LearnPolicy};
    use ratekeeper::Budget;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[tokio::test]
    async fn responses_teach_limits_and_429s_cool_the_key() {
        let c = clock();
        let pool = KeyPool::with_clock(c.clone());
        let guess = manual(&c, 5, 1_000);
        pool.add("k", guess.clone());
        pool.add("spare", manual(&c, 5, 1_000));
        // A guess far below the real limits: allow learning up to 100 times it.
        assert!(pool.set_learn_policy(&"k", LearnPolicy::new().factor(100)));
        let ok = headers(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-limit-tokens", "90000"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-remaining-tokens", "89000"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "666ms"),
        ]);
        let r = pool.learn(&"k", 200, &ok).await.unwrap().unwrap();
        assert_eq!(
            r.applied[..2],
            [
                Applied::Limit {
                    budget: Budget::Requests,
                    limit: 60
                },
                Applied::Limit {
                    budget: Budget::Tokens,
                    limit: 90_000
                }
            ]
        );
        // The provider has 1 request / 1,000 tokens less than we do: charged.
        assert!(r.applied.contains(&Applied::Charged {
            budget: Budget::Tokens,
            units: 1_000
        }));
        assert!(r.applied.contains(&Applied::Charged {
            budget: Budget::Requests,
            units: 1
        }));
        assert_eq!(remaining(&guess.usage(), Budget::Requests), 59);

        let limited = headers(&[("retry-after-ms", "2500"), ("retry-after", "3")]);
        let r = pool.learn(&"k", 429, &limited).await.unwrap().unwrap();
        assert_eq!(
            r.applied.last(),
            Some(&Applied::Cooldown(Duration::from_millis(2_500)))
        );
        assert_eq!(pool.cooldown_until(&"k"), Some(c.now_ns() + 2_500_000_000));
        assert_eq!(*pool.try_acquire(1).await.unwrap().key(), "spare");
        assert!(pool.learn(&"missing", 200, &ok).await.is_none());
    }

    trait NowNs {
        fn now_ns(&self) -> u64;
    }
    impl NowNs for Arc<ManualClock> {
        fn now_ns(&self) -> u64 {
            ratekeeper::Clock::now(self)
        }
    }
}
