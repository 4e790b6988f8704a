//! The Redis backend's waiting path, judged where the user meets it: an admission happens when
//! its caller is released (a waiter: the deadline it sleeps until), and a refund is judged
//! against every claim placed after it. Real redis-server, as in `tests/redis.rs`.
#![cfg(feature = "redis")]

use ratekeeper::{Burst, Clock, Cost, Error, Limit, ManualClock, RedisLimiter};
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

/// The independent checker: a bucket of `burst` units refilled at `limit` per `period_us`
/// admits at most `burst + limit·(t_j − t_i)/period` units released within any window
/// `[t_i, t_j]`. Returns the largest excess over that bound (in units, rounded up).
fn max_excess(log: &[(u64, u64)], limit: u64, burst: u64, period_us: u64) -> u64 {
    let mut log = log.to_vec();
    log.sort_unstable();
    let mut worst = 0u128;
    for i in 0..log.len() {
        let mut sum = 0u128;
        for &(tj, n) in &log[i..] {
            sum += n as u128;
            let allowed =
                burst as u128 * period_us as u128 + limit as u128 * (tj - log[i].0) as u128;
            let scaled = sum * period_us as u128;
            if scaled > allowed {
                worst = worst.max((scaled - allowed).div_ceil(period_us as u128));
            }
        }
    }
    worst as u64
}

/// One hour after the ratekeeper epoch: a manual clock far from zero.
const T0_NS: u64 = 3_600_000_000_000;
const T0_US: u64 = T0_NS / 1_000;

/// A waiter held up by its token budget takes its request slot at its own release instant,
/// not at the earlier instant the request bucket alone would allow: a caller that only asks
/// for requests meanwhile is admitted against what is really left.
///
/// 60 requests per 600 ms with a burst of one; 6,000 tokens per 600 ms with a burst of 200.
/// Twenty claims of 200 tokens at once are released every 20 ms by the token bucket; an
/// `allow` every 100 µs fills the request bucket's gaps. (The old script released the same
/// workload 10 requests over the window bound.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_held_waiters_take_their_request_slot_when_released() {
    let Some(url) = url() else { return };
    let clock = Arc::new(ManualClock::new(T0_NS));
    let l = RedisLimiter::builder(url.as_str(), key("held"), 60, 6_000)
        .period(Duration::from_millis(600))
        .request_burst(Burst::Window(Duration::from_millis(10)))
        .token_burst(Burst::Units(200))
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap();
    let mut log = Vec::new();
    let mut claims = Vec::new();
    for _ in 0..20 {
        let c = l.claim(200).await.unwrap();
        log.push((c.ready_at_us(), 1));
        claims.push(c);
    }
    let releases: Vec<u64> = log.iter().map(|&(t, _)| t - T0_US).collect();
    assert_eq!(releases.last(), Some(&380_000), "{releases:?}");
    let mut allowed = 0;
    for _ in 0..6_000 {
        clock.advance(Duration::from_micros(100));
        if l.allow().await {
            log.push((clock.now() / 1_000, 1));
            allowed += 1;
        }
    }
    let excess = max_excess(&log, 60, 1, 600_000);
    eprintln!("20 token-held waiters and {allowed} allows: request excess {excess}");
    assert_eq!(excess, 0);
    // Not vacuous: the allows fill the request bucket after the last waiter.
    assert!(allowed >= 15, "{allowed}");
    drop(claims);
}

/// A cancelled waiter gives back nothing that waiters behind it were placed on: with a burst
/// of one, every pending waiter has no slack, so a new claim lands after the last of them,
/// never on the same instant. (The old script put D on C's instant: 3 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiter_never_double_books_the_queue() {
    let Some(url) = url() else { return };
    let clock = Arc::new(ManualClock::new(T0_NS));
    let l = RedisLimiter::builder(url.as_str(), key("cancel"), 60, 0)
        .request_burst(Burst::Units(1))
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap();
    let x = l.claim(0).await.unwrap();
    let a = l.claim(0).await.unwrap();
    let b = l.claim(0).await.unwrap();
    let c = l.claim(0).await.unwrap();
    let secs = |us: u64| (us - T0_US) as f64 / 1e6;
    assert_eq!(
        [&x, &a, &b, &c].map(|c| secs(c.ready_at_us())),
        [0.0, 1.0, 2.0, 3.0]
    );
    clock.advance(Duration::from_millis(500));
    a.cancel().await.unwrap();
    let d = l.claim(0).await.unwrap();
    eprintln!(
        "after A's cancel: C at {} s, D at {} s",
        secs(c.ready_at_us()),
        secs(d.ready_at_us())
    );
    assert_eq!(secs(d.ready_at_us()), 4.0);
    let log: Vec<_> = [&x, &b, &c, &d].map(|c| (c.ready_at_us(), 1)).to_vec();
    assert_eq!(max_excess(&log, 60, 1, 60_000_000), 0);

    // At scale: 100 queued, every other one cancelled at 1 s, 50 new claims.
    let l = RedisLimiter::builder(url.as_str(), key("cancel-scale"), 60, 0)
        .request_burst(Burst::Units(1))
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap();
    let mut queued = Vec::new();
    for _ in 0..100 {
        queued.push(l.claim(0).await.unwrap());
    }
    clock.advance(Duration::from_secs(1));
    let mut kept = Vec::new();
    for (i, c) in queued.into_iter().enumerate() {
        if i % 2 == 1 {
            c.cancel().await.unwrap();
        } else {
            kept.push(c);
        }
    }
    for _ in 0..50 {
        kept.push(l.claim(0).await.unwrap());
    }
    let log: Vec<_> = kept.iter().map(|c| (c.ready_at_us(), 1)).collect();
    let excess = max_excess(&log, 60, 1, 60_000_000);
    eprintln!("100 queued, 50 cancelled at 1 s, 50 new: excess {excess}");
    assert_eq!(excess, 0);
}

/// Refunds behind a pending waiter share its slack: two refunds that each fit within it must
/// not, together, slide its slot further than it can go.
///
/// Tokens: a burst of 3 and one per second (requests unlimited). X, Y, Z are admitted at 0
/// (tail 3); A, B, C wait (released at 1, 2, 3 s, slots starting 2 units after their release
/// instants: slack 2). At 0.5 s, Y and Z settle for nothing (1 unit back each: the slack is
/// used up) and X too (half a unit still unexpired: nothing more may come back). New claims D,
/// E, F then leave every window within its bound. Refunds capped by the slack but not using
/// it up would let X's half unit through and put six releases in [1 s, 3.5 s] (bound 5.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_behind_a_pending_waiter_never_exceed_its_slack() {
    let Some(url) = url() else { return };
    let clock = Arc::new(ManualClock::new(T0_NS));
    let l = RedisLimiter::builder(url.as_str(), key("slack"), 0, 3)
        .period(Duration::from_secs(3))
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap();
    let (x, y, z) = (
        l.try_acquire(1).await.unwrap(),
        l.try_acquire(1).await.unwrap(),
        l.try_acquire(1).await.unwrap(),
    );
    let mut log = vec![(T0_US, 0), (T0_US, 0), (T0_US, 0)]; // X, Y, Z: settled for nothing
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let c = l.claim(1).await.unwrap();
        log.push((c.ready_at_us(), 1));
        waiters.push(c);
    }
    clock.advance(Duration::from_millis(500));
    l.settle(y, 0).await.unwrap();
    l.settle(z, 0).await.unwrap();
    l.settle(x, 0).await.unwrap();
    for _ in 0..3 {
        let c = l.claim(1).await.unwrap();
        log.push((c.ready_at_us(), 1));
        waiters.push(c);
    }
    let releases: Vec<f64> = log[3..]
        .iter()
        .map(|&(t, _)| (t - T0_US) as f64 / 1e6)
        .collect();
    let excess = max_excess(&log, 1, 3, 1_000_000);
    eprintln!("releases {releases:?}: token excess {excess}");
    assert_eq!(excess, 0);
    assert_eq!(releases, [1.0, 2.0, 3.0, 2.0, 3.0, 4.0]);
}

/// A permit settles only on a limiter of its own key: elsewhere it is refused and gives
/// nothing back. (The old script refunded it into the other key: 20,000 tokens admitted at
/// one instant with a burst of 10,000.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_settled_on_another_key_is_refused() {
    let Some(url) = url() else { return };
    let clock = Arc::new(ManualClock::new(T0_NS));
    let build = |name: String| {
        RedisLimiter::builder(url.as_str(), name, 1_000, 10_000)
            .manual_clock(clock.clone())
            .build()
    };
    let own = key("own");
    let (a, b) = (
        build(own.clone()).await.unwrap(),
        build(key("other")).await.unwrap(),
    );
    let pa = a.try_acquire(10_000).await.unwrap();
    let mut admitted = b.try_acquire(10_000).await.map_or(0, |p| p.tokens());
    let settled = b.settle(pa, 0).await;
    admitted += b.try_acquire(10_000).await.map_or(0, |p| p.tokens());
    eprintln!("foreign settle: {settled:?}; b admitted {admitted} tokens at one instant");
    assert_eq!(settled, Err(Error::ForeignPermit));
    assert_eq!(admitted, 10_000);
    // A replica of the same key may settle it.
    let a2 = build(own).await.unwrap();
    let p = a.try_acquire(0).await.unwrap();
    assert!(a2.settle(p, 0).await.is_ok());
}

/// Waiters with random cancels and timeouts, admissions, settles for less than the estimate,
/// across four tasks and real time, on three budgets (requests, input tokens, and output
/// tokens per a window of their own): every window of release instants stays within the
/// bound, for each budget, by an independent checker. Small bursts make waiting the common
/// case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_bound_holds_over_release_instants() {
    let Some(url) = url() else { return };
    const RPS: u64 = 100;
    const ITPS: u64 = 1_000;
    // Output tokens: 1,000 per 2 s.
    const OTP2S: u64 = 1_000;
    const RUN: Duration = Duration::from_millis(1_500);
    let second = Duration::from_secs(1);
    let limits = [
        Limit::requests(RPS).per(second).burst(Burst::Units(5)),
        Limit::input_tokens(ITPS)
            .per(second)
            .burst(Burst::Units(60)),
        Limit::output_tokens(OTP2S)
            .per(2 * second)
            .burst(Burst::Units(40)),
    ];
    let name = key("window");
    let mut tasks = Vec::new();
    for task in 0..4u64 {
        let l = RedisLimiter::with_limits(url.as_str(), name.as_str(), limits)
            .build()
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (task + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93);
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let (mut log, mut cancelled, mut denied) = (Vec::new(), 0u64, 0u64);
            let end = Instant::now() + RUN;
            while Instant::now() < end {
                let cost = Cost::new(1 + next(20), next(15));
                let actual = Cost::new(next(cost.input + 1), next(cost.output + 1));
                let patience = Duration::from_millis(next(40));
                let permit = match next(4) {
                    // A waiter that gives up after its patience: a cancel.
                    0 => match tokio::time::timeout(patience, l.acquire(cost)).await {
                        Ok(p) => p.unwrap(),
                        Err(_) => {
                            cancelled += 1;
                            continue;
                        }
                    },
                    // A waiter that asks only for what its patience allows.
                    1 => match l.acquire_within(cost, patience).await {
                        Ok(p) => p,
                        Err(Error::RateLimitExceeded(_)) => {
                            denied += 1;
                            continue;
                        }
                        Err(e) => panic!("{e}"),
                    },
                    // A waiter that waits its turn.
                    2 => l.acquire(cost).await.unwrap(),
                    _ => match l.try_acquire(cost).await {
                        Ok(p) => p,
                        Err(Error::RateLimitExceeded(_)) => {
                            denied += 1;
                            tokio::time::sleep(patience / 8).await;
                            continue;
                        }
                        Err(e) => panic!("{e}"),
                    },
                };
                log.push((permit.admitted_at_us().unwrap(), actual));
                // Some settle at once, some after others have claimed behind them.
                if next(2) == 0 {
                    tokio::time::sleep(Duration::from_millis(next(10))).await;
                }
                l.settle(permit, actual).await.unwrap();
            }
            (log, cancelled, denied)
        }));
    }
    let (mut log, mut cancelled, mut denied) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, c, d) = t.await.unwrap();
        log.extend(l);
        cancelled += c;
        denied += d;
    }
    let each = |f: fn(&Cost) -> u64| log.iter().map(|(t, c)| (*t, f(c))).collect::<Vec<_>>();
    let excess = (
        max_excess(&each(|_| 1), RPS, 5, 1_000_000),
        max_excess(&each(|c| c.input), ITPS, 60, 1_000_000),
        max_excess(&each(|c| c.output), OTP2S, 40, 2_000_000),
    );
    eprintln!(
        "4 tasks x {RUN:?}, 3 budgets: {} released, {cancelled} waiters cancelled, {denied} \
         denied; excess (requests, input, output) {excess:?}",
        log.len()
    );
    assert_eq!(excess, (0, 0, 0));
    // Not vacuous: every path ran, and a fair share of what the bound allows (155 requests)
    // was released. Cancelled slots that waiters were placed behind stay taken, so this
    // workload cannot reach the bound.
    assert!(
        cancelled > 0 && denied > 0 && log.len() as u64 >= RPS / 2,
        "{}",
        log.len()
    );
}

/// Whole tokens in use, as the script reports them.
async fn tokens_used(l: &RedisLimiter) -> u64 {
    l.usage().await.unwrap().tokens().map_or(0, |b| b.used)
}

/// A standing queue: three waiters always pending, each released waiter settling for 4 of the
/// 5 tokens it claimed. Each refund slides the waiters queued behind it and spends their
/// slack (5 units each at their claim). A single record of the pending waiters never forgets:
/// the queue never empties, so the slack spent since it began reaches 0 and blocks every later
/// refund. Two cohorts forget the spending of waiters already released, and the refunds keep
/// coming as in process (the same sequence, run beside it, is the reference).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_queue_keeps_its_refunds() {
    let Some(url) = url() else { return };
    let clock = Arc::new(ManualClock::new(T0_NS));
    let period = Duration::from_secs(10);
    let l = RedisLimiter::builder(url.as_str(), key("standing"), 0, 10)
        .period(period)
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap();
    let local = ratekeeper::TokenBucketLimiter::builder(0, 10)
        .period(period)
        .clock(clock.clone())
        .build()
        .unwrap();
    const STEPS: u64 = 240;
    let (mut queue, mut local_queue) = (Vec::new(), Vec::new());
    let (mut refunded, mut local_refunded) = ([0u64; 2], [0u64; 2]);
    let mut released = 0;
    for step in 0..STEPS {
        let now = T0_NS + step * 1_000_000_000;
        clock.set(now);
        let half = (2 * step / STEPS) as usize;
        // Settle every waiter released by now, for 4 of its 5 tokens.
        let (due, rest): (Vec<_>, Vec<_>) = queue
            .into_iter()
            .partition(|c: &ratekeeper::RedisClaim| c.ready_at_us() <= now / 1_000);
        queue = rest;
        for c in due {
            let before = tokens_used(&l).await;
            l.settle(c.into_permit(), 4).await.unwrap();
            refunded[half] += before - tokens_used(&l).await;
            released += 1;
        }
        let (due, rest): (Vec<_>, Vec<_>) = local_queue
            .into_iter()
            .partition(|r: &ratekeeper::Reservation<'_, Arc<ManualClock>>| r.ready_at_ns() <= now);
        local_queue = rest;
        for r in due {
            let before = local.usage_at(now).tokens().map_or(0, |b| b.used);
            local.settle_at(now, r.into_permit(), 4).unwrap();
            local_refunded[half] += before - local.usage_at(now).tokens().map_or(0, |b| b.used);
        }
        // Keep three waiters queued.
        while queue.len() < 3 {
            queue.push(l.claim(5).await.unwrap());
        }
        while local_queue.len() < 3 {
            local_queue.push(local.reserve_at(now, 5, u64::MAX).unwrap());
        }
    }
    eprintln!(
        "standing queue, {STEPS} s: {released} released; tokens refunded (first half, second \
         half): redis {refunded:?}, in process {local_refunded:?}"
    );
    // The second half still refunds, and as much as in process (the script's arithmetic is
    // exact; in process a slack is kept within 2^-14 and instants within 65.5 µs).
    assert!(refunded[1] > 0, "no refund in the second half");
    assert!(
        refunded[1].abs_diff(local_refunded[1]) <= 1,
        "redis {refunded:?}, in process {local_refunded:?}"
    );
    std::mem::forget(queue); // no refund tasks racing the key's end
}

/// A refund that slides the slots placed after its grant moves them earlier; a slid slot's
/// own refund is judged where it now ends, not where its grant recorded it.
///
/// 60 tokens per minute, a burst of 60. At 0: A takes 30 (slot [0, 30)), B 20 ([30, 50)); A
/// settles for nothing, so B slides to [0, 20). At 25 s B's slot has expired, and D restarts
/// the bucket with 40. B then settles for nothing: nothing of its slot is left to give back.
/// Judged at its recorded end (50), B would give back 20 and slide D's slot before the
/// instant D was released at: 80 tokens admitted at 25 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slid_slot_is_judged_where_it_now_ends() {
    let Some(url) = url() else { return };
    let clock = Arc::new(ManualClock::new(T0_NS));
    let l = RedisLimiter::builder(url.as_str(), key("slid"), 0, 60)
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap();
    let a = l.try_acquire(30).await.unwrap();
    let b = l.try_acquire(20).await.unwrap();
    l.settle(a, 0).await.unwrap();
    clock.advance(Duration::from_secs(25));
    let mut log = vec![(
        l.try_acquire(40).await.unwrap().admitted_at_us().unwrap(),
        40,
    )];
    l.settle(b, 0).await.unwrap();
    let mut more = 0;
    while let Ok(p) = l.try_acquire(1).await {
        log.push((p.admitted_at_us().unwrap(), 1));
        more += 1;
        assert!(more <= 100, "unbounded");
    }
    let excess = max_excess(&log, 60, 60, 60_000_000);
    eprintln!("after B's settle at 25 s: {more} more tokens admitted (D had 40); excess {excess}");
    assert_eq!((more, excess), (20, 0));
}

/// A cancel gives back the whole slot, the gap its placement opened included. A claim held
/// up by its token budget is placed in the request bucket at its release instant, 10 s out;
/// cancelled, it must leave that bucket as if it had never been made, not anchored at 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_token_held_claim_leaves_no_request_slot_behind() {
    let Some(url) = url() else { return };
    let clock = Arc::new(ManualClock::new(T0_NS));
    // One request per second (burst 2), ten tokens per second (burst 100).
    let l = RedisLimiter::builder(url.as_str(), key("gap"), 60, 600)
        .request_burst(Burst::Units(2))
        .token_burst(Burst::Units(100))
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap();
    let _first = l.try_acquire(100).await.unwrap();
    let used = |u: ratekeeper::Usage| {
        (
            u.requests().map_or(0, |b| b.used),
            u.tokens().map_or(0, |b| b.used),
        )
    };
    let before = used(l.usage().await.unwrap());
    let w = l.claim(100).await.unwrap();
    assert_eq!(w.delay(), Duration::from_secs(10), "held by its tokens");
    clock.advance(Duration::from_millis(500));
    w.cancel().await.unwrap();
    let after = used(l.usage().await.unwrap());
    let allowed = l.allow().await;
    eprintln!(
        "(requests, tokens) in use before the claim {before:?}, after its cancel {after:?}; \
         allow at once: {allowed}"
    );
    assert_eq!(before, (1, 100));
    // Half a second later: half a request and 5 tokens have refilled (rounded up).
    assert_eq!(after, (1, 95));
    assert!(
        allowed,
        "the request bucket stayed anchored at the cancelled release instant"
    );
}

/// Raising a limit while waiters are queued: they keep the deadlines they were given under the
/// old limit, so the first claim under the new one comes after the last of them, never among
/// them. (Carrying the queued units into the faster rate's shorter time would place it at 1 s,
/// among deadlines that run to 9 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_a_limit_with_waiters_queued_places_no_one_among_them() {
    let Some(url) = url() else { return };
    let clock = Arc::new(ManualClock::new(T0_NS));
    let l = RedisLimiter::builder(url.as_str(), key("raise"), 60, 0)
        .request_burst(Burst::Units(1))
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap();
    let mut queued = Vec::new();
    for _ in 0..10 {
        queued.push(l.claim(0).await.unwrap());
    }
    let secs = |us: u64| (us - T0_US) as f64 / 1e6;
    let last = queued.last().unwrap().ready_at_us();
    assert_eq!(secs(last), 9.0);
    l.set_limit(600, 0).await.unwrap();
    let next = l.claim(0).await.unwrap();
    eprintln!(
        "queued up to {} s at 60/min; after raising to 600/min the next claim is at {} s",
        secs(last),
        secs(next.ready_at_us())
    );
    assert!(next.ready_at_us() >= last);
    let mut log: Vec<_> = queued.iter().map(|c| (c.ready_at_us(), 1)).collect();
    log.push((next.ready_at_us(), 1));
    // Against the larger limit's own bound (600 per minute, burst 1).
    assert_eq!(max_excess(&log, 600, 1, 60_000_000), 0);
    std::mem::forget(queued);
    std::mem::forget(next);

    // Without waiters the same change takes effect at once: used units carry over, no more.
    let l = RedisLimiter::builder(url.as_str(), key("raise-idle"), 60, 0)
        .request_burst(Burst::Units(1))
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap();
    assert!(l.allow().await);
    l.set_limit(600, 0).await.unwrap();
    clock.advance(Duration::from_millis(100));
    assert!(l.allow().await, "one request's worth at 600/min is 0.1 s");
}
