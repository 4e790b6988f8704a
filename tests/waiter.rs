//! The async waiter on tokio's paused clock: exact deadlines, one wake per waiter, claim
//! order, cancellation that gives slots back.

mod common;
use common::{limit, used};
use ratekeeper::Budget;
use ratekeeper::{Burst, Clock, Error, RateLimiter, TokenBucketLimiter, TokioClock};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// One request per `interval_ms`, burst `burst`, unlimited tokens unless `tpm` says otherwise.
fn limiter(rpm: u64, tpm: u64, request_burst: u64) -> TokenBucketLimiter<TokioClock> {
    TokenBucketLimiter::builder(rpm, tpm)
        .request_burst(Burst::Units(request_burst))
        .clock(TokioClock::new())
        .build()
        .unwrap()
}

/// Counts how often the wrapped future is polled.
struct Polls<F> {
    inner: Pin<Box<F>>,
    polls: Arc<AtomicUsize>,
}

impl<F: Future> Future for Polls<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

/// Tokio's timer fires on millisecond ticks: a wake is at the deadline, rounded up to the tick.
fn assert_woken_at(woken: Instant, deadline: Instant) {
    assert!(woken >= deadline, "woken {woken:?} before {deadline:?}");
    assert!(
        woken - deadline <= Duration::from_millis(1),
        "woken {:?} after the deadline",
        woken - deadline
    );
}

#[tokio::test(start_paused = true)]
async fn wait_returns_at_once_under_the_limit() {
    let l = limiter(60, 0, 3);
    let start = Instant::now();
    for _ in 0..3 {
        l.wait().await.unwrap();
    }
    assert_eq!(Instant::now(), start, "no time may pass under the limit");
}

#[tokio::test(start_paused = true)]
async fn at_capacity_blocks_for_exactly_the_computed_time() {
    let l = limiter(60, 0, 1); // one per second
    let start = Instant::now();
    let _ = l.acquire(0).await.unwrap();
    let r = l.reserve(0).unwrap();
    let deadline = Instant::from_std(l.clock().instant_at(r.ready_at_ns()));
    assert_eq!(r.delay_from(l.clock().now()).as_millis(), 1000);
    let _ = r.ready().await;
    assert_woken_at(Instant::now(), deadline);
    assert!(Instant::now() - start >= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_waiter_gives_its_slot_back() {
    let l = limiter(60, 0, 1);
    let _ = l.acquire(0).await.unwrap();
    // A waiter that gives up after 300 ms (its slot was at 1 s).
    let r = tokio::time::timeout(Duration::from_millis(300), l.acquire(0)).await;
    assert!(r.is_err(), "the timeout must win");
    // Its slot came back: the next waiter is served at 1 s, not 2 s.
    let start = Instant::now();
    let _ = l.acquire(0).await.unwrap();
    let waited = Instant::now() - start;
    assert!(waited <= Duration::from_millis(701), "waited {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn cancel_future_ends_the_wait_with_cancelled() {
    let l = limiter(60, 0, 1);
    let _ = l.acquire(0).await.unwrap();
    let before = l.usage();
    let r = l
        .acquire_until(0, tokio::time::sleep(Duration::from_millis(100)))
        .await;
    assert_eq!(r.unwrap_err(), Error::Cancelled);
    // 100 ms passed: the request budget is where it was, less the refill.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let after = l.usage();
    assert_eq!(used(&before, Budget::Requests), 1);
    assert_eq!(
        used(&after, Budget::Requests),
        0,
        "the cancelled claim was given back"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_form_errors_at_once_without_claiming() {
    let l = limiter(60, 0, 1);
    let _ = l.acquire(0).await.unwrap();
    let start = Instant::now();
    let before = l.usage();
    match l.acquire_within(0, Duration::from_millis(500)).await {
        Err(Error::RateLimitExceeded(d)) => assert_eq!(d.retry_after().as_millis(), 1000),
        other => panic!("{other:?}"),
    }
    assert_eq!(Instant::now(), start, "it must not sleep");
    assert_eq!(l.usage(), before, "it must not claim");
    // Within a long enough deadline it waits normally.
    let _ = l
        .acquire_within(0, Duration::from_millis(1001))
        .await
        .unwrap();
    assert!(Instant::now() - start >= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn impossible_requests_fail_fast() {
    let l = limiter(60, 1000, 1);
    let start = Instant::now();
    assert!(matches!(
        l.acquire(1001).await,
        Err(Error::InsufficientCapacity { .. })
    ));
    assert!(matches!(
        l.acquire(u64::MAX).await,
        Err(Error::InsufficientCapacity { .. })
    ));
    assert_eq!(Instant::now(), start);
}

#[tokio::test(start_paused = true)]
async fn a_near_zero_refill_does_not_overflow_the_deadline() {
    // One request per u64::MAX ns (~585 years).
    let l = TokenBucketLimiter::builder(1, 0)
        .period(Duration::from_nanos(u64::MAX))
        .clock(TokioClock::new())
        .build()
        .unwrap();
    let _ = l.acquire(0).await.unwrap();
    // The next slot lies beyond the range of the TAT: refused, never wrapped into the past.
    let start = Instant::now();
    assert!(matches!(
        l.acquire(0).await,
        Err(Error::RateLimitExceeded(_))
    ));
    assert_eq!(Instant::now(), start);
    // One per century still queues, with a deadline a century out.
    let l = TokenBucketLimiter::builder(1, 0)
        .period(Duration::from_secs(86_400 * 365 * 100))
        .clock(TokioClock::new())
        .build()
        .unwrap();
    let _ = l.acquire(0).await.unwrap();
    let r = l.reserve(0).unwrap();
    assert!(r.delay_from(l.clock().now()) > Duration::from_secs(86_400 * 365 * 99));
    drop(r);
    // A bounded wait refuses at once, claiming nothing.
    let start = Instant::now();
    assert!(matches!(
        l.acquire_within(0, Duration::from_secs(3600)).await,
        Err(Error::RateLimitExceeded(_))
    ));
    assert_eq!(Instant::now(), start);
    // Lowering a live limiter to a tiny rate: the deadline saturates, it does not wrap.
    let l = limiter(60, 0, 1);
    let _ = l.acquire(0).await.unwrap();
    l.set_limit(1, 0).unwrap();
    let r = l.reserve(0).unwrap();
    assert!(r.delay_from(l.clock().now()) >= Duration::from_secs(59));
}

#[tokio::test(start_paused = true)]
async fn consume_tokens_records_usage_and_waits_out_debt() {
    let l = limiter(0, 600, 1); // 10 tokens per second, burst 600
    l.consume_tokens(100).await.unwrap();
    assert_eq!(used(&l.usage(), Budget::Tokens), 100, "recorded at once");
    let start = Instant::now();
    l.consume_tokens(600).await.unwrap(); // 100 over the burst: 10 s of debt
    assert!(Instant::now() - start >= Duration::from_secs(10));
    assert!(Instant::now() - start <= Duration::from_millis(10_001));

    // Dropping it stops the wait but keeps the charge (the tokens were spent).
    let before = used(&l.usage(), Budget::Tokens);
    let r = tokio::time::timeout(Duration::from_millis(50), l.consume_tokens(300)).await;
    assert!(r.is_err());
    assert!(used(&l.usage(), Budget::Tokens) + 5 >= before + 300);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_released_in_claim_order_each_at_its_own_deadline() {
    let l = Arc::new(limiter(600, 0, 1)); // one per 100 ms
    let claims = Arc::new(Mutex::new(Vec::new()));
    let releases = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let tasks: Vec<_> = (0..20u32)
        .map(|i| {
            let (l, claims, releases) = (l.clone(), claims.clone(), releases.clone());
            tokio::spawn(async move {
                let r = l.reserve(0).unwrap();
                let deadline = Instant::from_std(l.clock().instant_at(r.ready_at_ns()));
                claims.lock().unwrap().push((i, deadline));
                let _ = r.ready().await;
                releases.lock().unwrap().push((i, Instant::now()));
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let claims = claims.lock().unwrap();
    let releases = releases.lock().unwrap();
    let claim_order: Vec<u32> = claims.iter().map(|c| c.0).collect();
    let release_order: Vec<u32> = releases.iter().map(|r| r.0).collect();
    assert_eq!(release_order, claim_order, "released out of claim order");
    for (k, ((_, deadline), (_, at))) in claims.iter().zip(releases.iter()).enumerate() {
        assert_woken_at(*at, *deadline);
        assert!(*at - start >= Duration::from_millis(100 * k as u64));
    }
}

#[tokio::test(start_paused = true)]
async fn a_thousand_waiters_each_woken_once_and_the_sequence_conforms() {
    const N: usize = 1000;
    let l = Arc::new(limiter(6000, 600_000, 10)); // 100 requests/s, burst 10
    let start = Instant::now();
    let polls: Vec<_> = (0..N).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let (l, admitted, polls) = (l.clone(), admitted.clone(), polls[i].clone());
            tokio::spawn(Polls {
                inner: Box::pin(async move {
                    let p = l.acquire(50).await.unwrap();
                    admitted.lock().unwrap().push(Instant::now());
                    l.settle(p, 50).unwrap();
                }),
                polls,
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let total: usize = polls.iter().map(|p| p.load(Ordering::Relaxed)).sum();
    let max = polls
        .iter()
        .map(|p| p.load(Ordering::Relaxed))
        .max()
        .unwrap();
    // One poll to claim and register the timer, one when the timer fires.
    assert!(max <= 2, "a waiter was polled {max} times");
    println!("polls per admitted waiter: {:.3}", total as f64 / N as f64);
    // The admitted sequence conforms: at most burst + rate * t by any time t.
    let mut times = admitted.lock().unwrap().clone();
    times.sort();
    assert_eq!(times.len(), N);
    for (k, at) in times.iter().enumerate() {
        let elapsed = *at - start;
        let allowed = 10.0 + elapsed.as_secs_f64() * 100.0;
        assert!((k + 1) as f64 <= allowed + 1e-9, "#{k} at {elapsed:?}");
    }
    // And it was not slower than the limit: the last one went at (N - burst) / rate.
    let last = *times.last().unwrap() - start;
    assert!(last <= Duration::from_millis(9_900 + 2), "{last:?}");
}

#[tokio::test(start_paused = true)]
async fn a_cancel_storm_never_delays_survivors_and_frees_slots() {
    const N: usize = 1000;
    let l = Arc::new(limiter(6000, 0, 1)); // one per 10 ms
    let start = Instant::now();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut tasks = Vec::new();
    let mut dropped = 0;
    for _ in 0..N {
        let l = l.clone();
        // Half give up at a random time within the 10 s the queue takes to drain.
        let give_up = (next() % 2 == 0).then(|| Duration::from_micros(next() % 10_000_000));
        dropped += give_up.is_some() as usize;
        tasks.push(tokio::spawn(async move {
            let r = l.reserve(0).unwrap();
            let deadline = Instant::from_std(l.clock().instant_at(r.ready_at_ns()));
            match give_up {
                Some(d) => {
                    let _ = tokio::time::timeout(d, r.ready()).await;
                    None
                }
                None => {
                    let _ = r.ready().await;
                    Some((deadline, Instant::now()))
                }
            }
        }));
    }
    assert!(dropped > 400);
    let mut admitted = Vec::new();
    for t in tasks {
        if let Some((deadline, at)) = t.await.unwrap() {
            // No later than the slot it claimed, whatever was cancelled around it.
            assert_woken_at(at, deadline);
            admitted.push(at);
        }
    }
    // Slots given back are reused: a newcomer now is served well before the 10 s that the
    // full queue of claims would have put it at.
    let r = l.reserve(0).unwrap();
    let served = Instant::now() - start + r.delay_from(l.clock().now());
    assert!(
        served < Duration::from_secs(10),
        "freed slots not reused: {served:?}"
    );
    // Never earlier than the limit allows: admissions conform to 100/s with burst 1.
    admitted.sort();
    for (k, at) in admitted.iter().enumerate() {
        assert!((k as f64) <= 1.0 + (*at - start).as_secs_f64() * 100.0);
    }
}

#[tokio::test(start_paused = true)]
async fn set_limit_during_a_wait_keeps_the_claimed_deadline() {
    let l = limiter(60, 0, 1);
    let _ = l.acquire(0).await.unwrap();
    let r = l.reserve(0).unwrap(); // due at 1 s under 60 RPM
    let deadline = Instant::from_std(l.clock().instant_at(r.ready_at_ns()));
    l.set_limit(6, 0).unwrap(); // ten times slower
    let _ = r.ready().await;
    assert_woken_at(Instant::now(), deadline);
    // The claim's unit was carried as used: the next request waits under the new limits.
    let r = l.reserve(0).unwrap();
    assert!(r.delay_from(l.clock().now()) >= Duration::from_secs(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_are_send_and_work_through_the_trait() {
    async fn through_trait<L: RateLimiter>(l: &L) -> bool {
        let p = l.acquire(10).await.unwrap();
        l.settle(p, 5).await.unwrap();
        l.allow().await && l.peek(1).await && used(&l.usage().await.unwrap(), Budget::Tokens) <= 10
    }
    let l = TokenBucketLimiter::builder(1000, 100_000)
        .clock(TokioClock::new())
        .build()
        .unwrap();
    let l = Arc::new(l);
    let l2 = l.clone();
    let ok = tokio::spawn(async move { through_trait(&*l2).await })
        .await
        .unwrap();
    assert!(ok);
    RateLimiter::set_limit(&*l, 10, 1000).await.unwrap();
    assert_eq!(limit(&l.usage(), Budget::Requests), 10);
}
