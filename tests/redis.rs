//! The Redis backend against a real `redis-server` (no mock).
//!
//! Set `RATEKEEPER_REDIS_URL` (e.g. `redis://127.0.0.1:6390/`; `.ci/run` does) to run these;
//! without it every test says so and returns. The restart test starts its own `redis-server`.
#![cfg(feature = "redis")]

use ratekeeper::{
    Budget, Burst, Clock, Cost, Error, Limit, ManualClock, RedisLimiter, TokenBucketLimiter,
};
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

/// A key no other test (or earlier run) uses.
fn key(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{test}-{}-{nanos}", std::process::id())
}

/// Deletes a limiter's keys (test-mode state does not expire).
async fn cleanup(url: &str, limiter: &RedisLimiter) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (s, c) = limiter.keys();
    let _: () = redis::cmd("DEL")
        .arg(s)
        .arg(c)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// xorshift64*: a reproducible operation sequence per seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Same operations, same times: the script and the in-process limiter decide alike.
///
/// The in-process limiter counts whole units (rounding readings down) and its rate is a
/// binary fraction; the script is exact. They agree exactly where neither rounds: rates that
/// are binary fractions of a ns (k·1000 per 1024 µs = k/1024 per ns) read at multiples of
/// 128 µs, where every such bucket holds whole units. Small fixed bursts make denials common.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_with_in_process_limiter_on_random_sequences() {
    let Some(url) = url() else { return };
    const LIMITS: [(u64, u64); 3] = [(1_000, 125_000), (2_000, 250_000), (3_000, 64_000)];
    let period = Duration::from_micros(1024);
    let (rb, tb) = (Burst::Units(2), Burst::Units(20_000));
    let mut denials = 0;
    let mut admissions = 0;
    for seed in 1..=12u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let clock = Arc::new(ManualClock::new(0));
        let local = TokenBucketLimiter::builder(1_000, 125_000)
            .period(period)
            .request_burst(rb)
            .token_burst(tb)
            .clock(clock.clone())
            .build()
            .unwrap();
        let remote = RedisLimiter::builder(url.as_str(), key("parity"), 1_000, 125_000)
            .period(period)
            .request_burst(rb)
            .token_burst(tb)
            .manual_clock(clock.clone())
            .build()
            .await
            .unwrap();
        let mut permits = Vec::new();
        for step in 0..150 {
            if rng.next(6) == 0 {
                clock.advance(Duration::from_micros(128));
            }
            let ctx = format!("seed {seed} step {step} at {} ns", clock.now());
            match rng.next(10) {
                0..=3 => {
                    let n = rng.next(22_000);
                    match (local.try_acquire(n), remote.try_acquire(n).await) {
                        (Ok(a), Ok(b)) => {
                            admissions += 1;
                            permits.push((a, b));
                        }
                        (Err(Error::RateLimitExceeded(a)), Err(Error::RateLimitExceeded(b))) => {
                            denials += 1;
                            // The script's deadline is the in-process one rounded up to a µs.
                            let (x, y) = (a.ready_at_ns(), b.ready_at_ns());
                            assert!(y >= x && y - x < 1_000, "{ctx}: deadlines {x} vs {y}");
                            if x.abs_diff(y) == 0 {
                                assert_eq!(a.budget(), b.budget(), "{ctx}");
                            }
                        }
                        (Err(a), Err(b)) => assert_eq!(a, b, "{ctx}"),
                        (a, b) => panic!("{ctx}: in process {a:?}, redis {b:?}"),
                    }
                }
                4 => assert_eq!(local.allow(), remote.allow().await, "{ctx}"),
                5 => {
                    let n = rng.next(20_000);
                    assert_eq!(local.peek(n), remote.peek(n).await, "{ctx}");
                }
                6 | 7 if !permits.is_empty() => {
                    let (a, b) = permits.swap_remove(rng.next(permits.len() as u64) as usize);
                    let actual = rng.next(2 * a.tokens() + 1);
                    local.settle(a, actual).unwrap();
                    remote.settle(b, actual).await.unwrap();
                }
                8 => {
                    let (rpm, tpm) = LIMITS[rng.next(3) as usize];
                    local.set_limit(rpm, tpm).unwrap();
                    remote.set_limit(rpm, tpm).await.unwrap();
                }
                _ => {}
            }
            assert_eq!(local.usage(), remote.usage().await.unwrap(), "{ctx}: usage");
        }
        cleanup(&url, &remote).await;
    }
    eprintln!("parity: 12 seeds x 150 steps, {admissions} admitted, {denials} denied, all alike");
    // The sequences exercise both outcomes, not just one.
    assert!(
        admissions > 50 && denials > 50,
        "{admissions} admitted, {denials} denied"
    );
}

/// The independent checker: however the admissions were made, a bucket of `burst` units
/// refilled at `limit` per `period_us` admits at most `burst + limit·(t_j − t_i)/period` units
/// at times within any window `[t_i, t_j]`. Returns the largest excess over that bound (in
/// units, rounded up), 0 when the log never over-admits.
fn max_excess(log: &[(u64, u64)], limit: u64, burst: u64, period_us: u64) -> u64 {
    let mut log = log.to_vec();
    log.sort_unstable();
    let mut worst = 0u128;
    for i in 0..log.len() {
        let mut sum = 0u128;
        for &(tj, n) in &log[i..] {
            sum += n as u128;
            let allowed_scaled =
                burst as u128 * period_us as u128 + limit as u128 * (tj - log[i].0) as u128;
            let scaled = sum * period_us as u128;
            if scaled > allowed_scaled {
                worst = worst.max((scaled - allowed_scaled).div_ceil(period_us as u128));
            }
        }
    }
    worst as u64
}

// 100 requests and 1,000 tokens per second; 1..=20 tokens per request (10.5 on average), so
// both budgets bind.
const RPS: u64 = 100;
const TPS: u64 = 1_000;
const RUN: Duration = Duration::from_millis(1_500);

fn tokens_for(i: u64) -> u64 {
    1 + (i * 7919) % 20
}

/// Checks both budgets of a log of `(t_us, tokens)`; returns (request excess, token excess).
fn check(log: &[(u64, u64)]) -> (u64, u64) {
    let requests: Vec<_> = log.iter().map(|&(t, _)| (t, 1)).collect();
    (
        max_excess(&requests, RPS, RPS, 1_000_000),
        max_excess(log, TPS, TPS, 1_000_000),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_separate_connections_never_over_admit() {
    let Some(url) = url() else { return };
    let name = key("replicas");
    let mut tasks = Vec::new();
    for r in 0..4u64 {
        let limiter = RedisLimiter::builder(url.as_str(), name.as_str(), RPS, TPS)
            .period(Duration::from_secs(1))
            .build()
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let (mut log, mut denied) = (Vec::new(), 0u64);
            let end = Instant::now() + RUN;
            let mut i = r;
            while Instant::now() < end {
                i += 4;
                match limiter.try_acquire(tokens_for(i)).await {
                    Ok(p) => log.push((p.admitted_at_us().unwrap(), p.tokens())),
                    Err(Error::RateLimitExceeded(_)) => denied += 1,
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            (log, denied)
        }));
    }
    let (mut log, mut denied) = (Vec::new(), 0);
    for t in tasks {
        let (l, d) = t.await.unwrap();
        log.extend(l);
        denied += d;
    }
    let tokens: u64 = log.iter().map(|&(_, n)| n).sum();
    let (req_excess, tok_excess) = check(&log);
    eprintln!(
        "redis, 4 replicas x {RUN:?}: {} requests / {tokens} tokens admitted, {denied} denied; \
         excess over exact GCRA: {req_excess} requests, {tok_excess} tokens",
        log.len()
    );
    assert_eq!(
        (req_excess, tok_excess),
        (0, 0),
        "over-admission across replicas"
    );
    // Close to the most the budgets allow (burst + 1.5 s of refill), so the check is not vacuous.
    assert!(
        log.len() as u64 >= RPS || tokens >= TPS,
        "admitted too little"
    );
    assert!(denied > 0);
}

/// The failure this backend prevents: each replica limiting locally admits about N× the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_limiting_locally_over_admit_n_times() {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for r in 0..4u64 {
        tasks.push(tokio::spawn(async move {
            let limiter = TokenBucketLimiter::builder(RPS, TPS)
                .period(Duration::from_secs(1))
                .build()
                .unwrap();
            let mut log = Vec::new();
            let mut i = r;
            while start.elapsed() < RUN {
                i += 4;
                if limiter.try_acquire(tokens_for(i)).is_ok() {
                    log.push((start.elapsed().as_micros() as u64, tokens_for(i)));
                }
                tokio::task::yield_now().await;
            }
            log
        }));
    }
    let mut log = Vec::new();
    for t in tasks {
        log.extend(t.await.unwrap());
    }
    let (req_excess, tok_excess) = check(&log);
    eprintln!(
        "local, 4 replicas x {RUN:?}: {} requests admitted; excess over the shared limit: \
         {req_excess} requests, {tok_excess} tokens",
        log.len()
    );
    // Each replica alone admits what the whole budget allows (burst + 1.5 s of refill =
    // 250 requests), so four admit about 4×; at least 3× whatever the scheduling.
    let budget = RPS + RPS * RUN.as_millis() as u64 / 1_000;
    assert!(log.len() as u64 >= 3 * budget, "expected N× over-admission");
    assert!(
        req_excess >= 2 * budget,
        "the checker must see it: {req_excess}"
    );
}

/// Separate OS processes (examples/redis_replica.rs) sharing one key.
#[test]
fn replica_processes_never_over_admit() {
    let Some(url) = url() else { return };
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join("redis_replica"))
        .unwrap();
    if !bin.exists() {
        // `cargo test --test redis` does not build examples; build it the same way.
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", "redis_replica", "--features", "redis"])
            .status()
            .unwrap();
        assert!(
            status.success() && bin.exists(),
            "cannot build {}",
            bin.display()
        );
    }
    let name = key("processes");
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(&bin)
                .args([url.as_str(), &name, "100", "1000", "1000", "1500"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut log = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "replica failed: {out:?}");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut it = line.split(' ').map(|x| x.parse::<u64>().unwrap());
            log.push((it.next().unwrap(), it.next().unwrap()));
        }
    }
    let (req_excess, tok_excess) = check(&log);
    eprintln!(
        "redis, 3 processes x 1.5 s: {} requests / {} tokens admitted; excess: {req_excess} \
         requests, {tok_excess} tokens",
        log.len(),
        log.iter().map(|&(_, n)| n).sum::<u64>()
    );
    assert_eq!((req_excess, tok_excess), (0, 0));
    assert!(
        log.len() as u64 >= RPS / 2,
        "admitted too little: {}",
        log.len()
    );
}

/// A dropped waiter gives its whole slot back; after a limit change it gives nothing back.
///
/// The waiter's slot is placed in both buckets for its release instant (10 s out, set by the
/// request bucket), so the token bucket is reserved up to that instant while it waits; the
/// cancel gives back that gap as well as its units: the buckets are as before the claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_waiter_returns_its_slot_unless_limits_changed() {
    let Some(url) = url() else { return };
    let clock = Arc::new(ManualClock::new(1_000_000));
    let limiter = RedisLimiter::builder(url.as_str(), key("waiter"), 1, 100)
        .period(Duration::from_secs(10))
        .manual_clock(clock)
        .build()
        .await
        .unwrap();
    let first = limiter.acquire(10).await.unwrap(); // immediate: the bucket is full
    assert_eq!(first.tokens(), 10);
    let before = limiter.usage().await.unwrap();
    // The second claim waits 10 s; drop it after 50 ms.
    let claimed = limiter.claim(10).await.unwrap();
    assert_eq!(claimed.delay(), Duration::from_secs(10));
    let with = limiter.usage().await.unwrap();
    assert_eq!(with.requests().map_or(0, |b| b.used), 2);
    assert_eq!(
        with.tokens().map_or(0, |b| b.used),
        110,
        "reserved up to 10 s out"
    );
    let waited = tokio::time::timeout(Duration::from_millis(50), claimed.wait()).await;
    assert!(waited.is_err());
    let used = settle_usage(&limiter, |u| u.requests().map_or(0, |b| b.used) == 1).await;
    assert_eq!(used, before, "as if the claim had never been made");

    let claimed = limiter.claim(10).await.unwrap();
    // A real change (the same limits would be a no-op). The waiter's tail stays at 11 s: 220
    // tokens at the new rate.
    limiter.set_limit(1, 200).await.unwrap();
    let with = limiter.usage().await.unwrap();
    assert_eq!(with.tokens().map_or(0, |b| b.used), 220);
    drop(claimed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let used = limiter.usage().await.unwrap();
    assert_eq!(used, with, "kept after set_limit");
    cleanup(&url, &limiter).await;
}

/// Polls usage (the refund runs in a spawned task) until `done`, for at most 2 s.
async fn settle_usage(
    limiter: &RedisLimiter,
    done: impl Fn(&ratekeeper::Usage) -> bool,
) -> ratekeeper::Usage {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let u = limiter.usage().await.unwrap();
        if done(&u) || Instant::now() > end {
            return u;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A set_limit by one replica keeps the units used by another, and applies to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_limit_from_another_replica_keeps_used_units() {
    let Some(url) = url() else { return };
    let name = key("setlimit");
    let clock = Arc::new(ManualClock::new(5_000_000));
    let build = |c: Arc<ManualClock>| {
        RedisLimiter::builder(url.as_str(), name.as_str(), 10, 1_000)
            .manual_clock(c)
            .build()
    };
    let (a, b) = (
        build(clock.clone()).await.unwrap(),
        build(clock).await.unwrap(),
    );
    let p = a.try_acquire(300).await.unwrap();
    b.set_limit(20, 400).await.unwrap();
    let u = a.usage().await.unwrap();
    assert_eq!(
        (
            u.tokens().map_or(0, |b| b.used),
            u.tokens().map_or(0, |b| b.limit),
            u.tokens().map_or(u64::MAX, |b| b.remaining)
        ),
        (300, 400, 100)
    );
    assert!(matches!(
        a.try_acquire(101).await,
        Err(Error::RateLimitExceeded(d)) if d.budget() == Budget::Tokens
    ));
    // The permit straddles the change: its surplus is forfeited, as in process.
    a.settle(p, 0).await.unwrap();
    assert_eq!(b.usage().await.unwrap().tokens().map_or(0, |b| b.used), 300);
    cleanup(&url, &a).await;
}

/// State expires once both buckets are full again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_expires_when_buckets_are_full_again() {
    let Some(url) = url() else { return };
    // One request refills in 20 ms; 100 tokens in 200 ms.
    let limiter = RedisLimiter::builder(url.as_str(), key("expiry"), 10, 1_000)
        .period(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    limiter.try_acquire(100).await.unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(limiter.keys().0)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Set, and no longer than the 200 ms until the buckets are full (+1 ms rounding).
    assert!((1..=201).contains(&ttl), "state PTTL {ttl} ms");
    // A denial writes nothing, so a denied key stays absent.
    let denied = RedisLimiter::builder(url.as_str(), key("expiry-denied"), 10, 1_000)
        .build()
        .await
        .unwrap();
    assert!(matches!(
        denied.try_acquire(2_000).await,
        Err(Error::InsufficientCapacity {
            capacity: 1_000,
            ..
        })
    ));
    let exists: i64 = redis::cmd("EXISTS")
        .arg(denied.keys().0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

/// Limits the script cannot compute exactly are refused up front.
#[tokio::test]
async fn limits_too_fine_for_doubles_are_rejected() {
    let Some(url) = url() else { return };
    let r = RedisLimiter::builder(url.as_str(), key("fine"), 10, 999_999_937)
        .build()
        .await;
    assert!(matches!(r, Err(Error::InvalidConfig(_))));
    let l = RedisLimiter::builder(url.as_str(), key("fine"), 10, 100)
        .build()
        .await
        .unwrap();
    assert!(matches!(
        l.set_limit(10, 999_999_937).await,
        Err(Error::InvalidConfig(_))
    ));
}

/// A `redis-server` of the test's own, on a free loopback port, killed on drop.
struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        // Ready once it accepts connections.
        let end = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        OwnRedis { child, port }
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Redis restarted mid-run (no persistence). Documented outcome: while it is down, calls fail
/// closed with `Error::Unavailable` within the timeout (or go to the local limiter when failing
/// open); no panic; once it is back, calls succeed again without rebuilding the limiter, and
/// the usage starts from full buckets (the state died with the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_run_fails_closed_then_recovers() {
    if url().is_none() {
        return;
    }
    let port = OwnRedis::free_port();
    let mut server = OwnRedis::start(port);
    let url = format!("redis://127.0.0.1:{}/", server.port);
    let timeout = Duration::from_millis(100);
    // Per hour: nothing visible refills during the test, however slowly it runs.
    let hour = Duration::from_secs(3_600);
    let closed = RedisLimiter::builder(url.as_str(), "restart", 1_000, 100_000)
        .period(hour)
        .timeout(timeout)
        .build()
        .await
        .unwrap();
    let open = RedisLimiter::builder(url.as_str(), "restart", 1_000, 100_000)
        .period(hour)
        .timeout(timeout)
        .fail_open(TokenBucketLimiter::new(5, 500))
        .build()
        .await
        .unwrap();
    closed.try_acquire(100).await.unwrap();
    assert_eq!(
        closed.usage().await.unwrap().tokens().map_or(0, |b| b.used),
        100
    );

    // A hammering task runs across the whole outage: it must never panic.
    let hammer = {
        let l = closed.clone();
        tokio::spawn(async move {
            let (mut ok, mut unavailable) = (0u32, 0u32);
            let end = Instant::now() + Duration::from_millis(1_500);
            while Instant::now() < end {
                match l.try_acquire(1).await {
                    Ok(_) => ok += 1,
                    Err(Error::Unavailable(_)) => unavailable += 1,
                    Err(e) => panic!("unexpected {e}"),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ok, unavailable)
        })
    };

    server.stop();
    let t = Instant::now();
    let err = closed.try_acquire(1).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    // Bounded by the per-call timeout, not waiting on TCP (a generous bound, not a target).
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "failing took {:?}",
        t.elapsed()
    );
    assert!(!closed.allow().await);
    assert!(matches!(closed.usage().await, Err(Error::Unavailable(_))));
    // Failing open: the local limiter (5 requests) decides while Redis is away.
    let local: Vec<_> = try_acquire_n(&open, 7).await;
    assert_eq!(local.iter().filter(|r| r.is_ok()).count(), 5);
    assert!(local.iter().flatten().all(|p| p.admitted_at_us().is_none()));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let _server = OwnRedis::start(port);
    // The connection manager reconnects by itself; the state is gone, so the buckets are full.
    let end = Instant::now() + Duration::from_secs(5);
    let usage = loop {
        match closed.usage().await {
            Ok(u) => break u,
            Err(_) if Instant::now() < end => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("did not recover: {e}"),
        }
    };
    assert!(
        usage.tokens().map_or(0, |b| b.used) < 100,
        "state died with the server: {usage:?}"
    );
    let permit = closed.try_acquire(10).await.unwrap();
    assert!(permit.admitted_at_us().is_some());
    let (ok, unavailable) = hammer.await.unwrap();
    eprintln!("restart: hammer saw {ok} admissions, {unavailable} Unavailable, no panic");
    assert!(ok > 0 && unavailable > 0);
}

/// `n` sequential try_acquire(1) calls.
async fn try_acquire_n(l: &RedisLimiter, n: usize) -> Vec<Result<ratekeeper::RedisPermit, Error>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(l.try_acquire(1).await);
    }
    out
}

/// The script decides any number of buckets (1 to 8, more than a limiter's budgets can be),
/// each with its own window: here requests per minute, tokens per minute and requests per
/// day, called directly with the protocol written at the top of the script.
#[tokio::test]
async fn the_script_decides_a_list_of_buckets() {
    let Some(url) = url() else { return };
    let script = redis::Script::new(include_str!("../src/redis_backend/gcra.lua"));
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let name = key("three");
    let (s, c) = (format!("{{{name}}}:s"), format!("{{{name}}}:c"));
    // (limit, window µs, burst) per bucket.
    let limits: [u64; 9] = [
        60,
        60_000_000,
        60,
        1_000,
        60_000_000,
        1_000,
        100,
        86_400_000_000,
        5,
    ];
    let call = |op: &'static str, rest: Vec<u64>| {
        let mut inv = script.prepare_invoke();
        inv.key(&s)
            .key(&c)
            .arg(op)
            .arg("3600000000")
            .arg(3)
            .arg(&limits[..]);
        inv.arg(rest);
        inv
    };
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        // not dry, consult all three, no wait; 1 request, 10 tokens, 1 request of the day
        let r: Vec<i64> = call("take", vec![0, 0b111, 0, 1, 10, 1])
            .invoke_async(&mut conn)
            .await
            .unwrap();
        outcomes.push((r[0], if r[0] == 0 { r[3] } else { 0 }));
    }
    // Five admitted; the sixth is refused by the daily bucket (number 3), its burst spent.
    assert_eq!(outcomes, [(1, 0), (1, 0), (1, 0), (1, 0), (1, 0), (0, 3)]);
    let usage: Vec<i64> = call("usage", vec![]).invoke_async(&mut conn).await.unwrap();
    // status, now, events, then (used, limit, window, burst) per bucket.
    assert_eq!(
        &usage[3..],
        [
            5,
            60,
            60_000_000,
            60,
            50,
            1_000,
            60_000_000,
            1_000,
            5,
            100,
            86_400_000_000,
            5
        ]
    );
    let _: () = redis::cmd("DEL")
        .arg(&s)
        .arg(&c)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A budget set against the in-process limiter with the same budgets: requests, input tokens
/// and output tokens, the last per a window of its own. Same operations, same times, same
/// decisions, the same refusing budget and window, the same usage; settles that give back one
/// budget and charge another; limit changes of one budget's count and burst policy.
///
/// As in `parity_with_in_process_limiter_on_random_sequences`, every rate is a binary
/// fraction of a ns and readings fall on multiples of 128 µs, where neither side rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_set_decides_as_in_process() {
    let Some(url) = url() else { return };
    let ms = Duration::from_micros(1024);
    let limits = [
        Limit::requests(1_000).per(ms).burst(Burst::Units(2)),
        Limit::input_tokens(125_000)
            .per(ms)
            .burst(Burst::Units(20_000)),
        Limit::output_tokens(64_000)
            .per(2 * ms)
            .burst(Burst::Units(8_000)),
    ];
    let output_changes = [
        Limit::output_tokens(32_000)
            .per(2 * ms)
            .burst(Burst::Units(3_000)),
        Limit::output_tokens(128_000).per(2 * ms),
        limits[2],
    ];
    let (mut admitted, mut denied, mut by_output) = (0, 0, 0);
    for seed in 1..=8u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let clock = Arc::new(ManualClock::new(0));
        let local = TokenBucketLimiter::with_limits(limits)
            .clock(clock.clone())
            .build()
            .unwrap();
        let remote = RedisLimiter::with_limits(url.as_str(), key("set-parity"), limits)
            .manual_clock(clock.clone())
            .build()
            .await
            .unwrap();
        let mut permits = Vec::new();
        for step in 0..150 {
            if rng.next(6) == 0 {
                clock.advance(Duration::from_micros(128));
            }
            let ctx = format!("seed {seed} step {step} at {} ns", clock.now());
            let cost = |rng: &mut Rng| Cost::new(rng.next(22_000), rng.next(9_000));
            match rng.next(10) {
                0..=3 => {
                    let c = cost(&mut rng);
                    match (local.try_acquire(c), remote.try_acquire(c).await) {
                        (Ok(a), Ok(b)) => {
                            admitted += 1;
                            assert_eq!(b.cost(), c);
                            permits.push((a, b));
                        }
                        (Err(Error::RateLimitExceeded(a)), Err(Error::RateLimitExceeded(b))) => {
                            denied += 1;
                            let (x, y) = (a.ready_at_ns(), b.ready_at_ns());
                            assert!(y >= x && y - x < 1_000, "{ctx}: deadlines {x} vs {y}");
                            if x == y {
                                assert_eq!(a.budget(), b.budget(), "{ctx}");
                                assert_eq!(a.window(), b.window(), "{ctx}");
                            }
                            by_output += (b.budget() == Budget::OutputTokens) as u32;
                        }
                        (Err(a), Err(b)) => assert_eq!(a, b, "{ctx}"),
                        (a, b) => panic!("{ctx}: in process {a:?}, redis {b:?}"),
                    }
                }
                4 => assert_eq!(local.allow(), remote.allow().await, "{ctx}"),
                5 => {
                    let c = cost(&mut rng);
                    assert_eq!(local.peek(c), remote.peek(c).await, "{ctx}");
                }
                6 | 7 if !permits.is_empty() => {
                    let (a, b) = permits.swap_remove(rng.next(permits.len() as u64) as usize);
                    // Either side of the estimate, per budget: some settles refund one budget
                    // and charge the other.
                    let e = a.cost();
                    let actual = Cost::new(rng.next(2 * e.input + 1), rng.next(2 * e.output + 1));
                    local.settle(a, actual).unwrap();
                    remote.settle(b, actual).await.unwrap();
                }
                8 => {
                    let change = output_changes[rng.next(3) as usize];
                    local.set_limits(&[change]).unwrap();
                    remote.set_limits(&[change]).await.unwrap();
                    assert_eq!(local.limits(), remote.limits().await.unwrap(), "{ctx}");
                }
                _ => {}
            }
            assert_eq!(local.usage(), remote.usage().await.unwrap(), "{ctx}: usage");
        }
        cleanup(&url, &remote).await;
    }
    eprintln!(
        "budget-set parity: 8 seeds x 150 steps, {admitted} admitted, {denied} denied \
         ({by_output} by output tokens), all alike"
    );
    assert!(admitted > 50 && denied > 50 && by_output > 5);
}

/// The refusing budget is named with its own window and wait: an Anthropic-style key
/// (requests, input and output tokens per minute) and an OpenAI-style one with requests per
/// day beside requests and tokens per minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_name_the_budget_and_window_that_refused() {
    let Some(url) = url() else { return };
    let clock = Arc::new(ManualClock::new(3_600_000_000_000));
    let anthropic = RedisLimiter::with_limits(
        url.as_str(),
        key("anthropic"),
        [
            Limit::requests(50),
            Limit::input_tokens(40_000),
            Limit::output_tokens(8_000),
        ],
    )
    .manual_clock(clock.clone())
    .build()
    .await
    .unwrap();
    let p = anthropic
        .try_acquire(Cost::new(1_000, 6_000))
        .await
        .unwrap();
    assert_eq!(p.cost(), Cost::new(1_000, 6_000));
    // 2,000 output tokens left: 4,000 more wait 2,000 / (8,000 per minute) = 15 s.
    match anthropic.try_acquire(Cost::new(1_000, 4_000)).await {
        Err(Error::RateLimitExceeded(d)) => {
            assert_eq!(d.budget(), Budget::OutputTokens);
            assert_eq!(d.window(), Duration::from_secs(60));
            assert_eq!(d.retry_after(), Duration::from_secs(15));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        anthropic
            .try_acquire(Cost::new(40_001, 0))
            .await
            .unwrap_err(),
        Error::InsufficientCapacity {
            budget: Budget::InputTokens,
            requested: 40_001,
            capacity: 40_000
        }
    );
    // `allow` asks requests only: the spent output tokens do not stop it.
    assert!(anthropic.allow().await);

    let openai = RedisLimiter::with_limits(
        url.as_str(),
        key("openai"),
        [
            Limit::requests(60),
            Limit::tokens(10_000),
            Limit::requests(5).per_day(),
        ],
    )
    .manual_clock(clock.clone())
    .build()
    .await
    .unwrap();
    for _ in 0..5 {
        openai.try_acquire(100).await.unwrap();
    }
    match openai.try_acquire(100).await {
        Err(Error::RateLimitExceeded(d)) => {
            assert_eq!(d.budget(), Budget::Requests);
            assert_eq!(d.window(), Duration::from_secs(86_400), "the daily budget");
            // One request of the day refills in 86,400 / 5 s.
            assert_eq!(d.retry_after(), Duration::from_secs(17_280));
        }
        other => panic!("{other:?}"),
    }
    cleanup(&url, &anthropic).await;
    cleanup(&url, &openai).await;
}

/// Output tokens are known only after the call: a settle gives back what one budget was
/// over-estimated by and charges what another was under-estimated by, in one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_gives_back_and_charges_each_budget() {
    let Some(url) = url() else { return };
    let clock = Arc::new(ManualClock::new(3_600_000_000_000));
    let l = RedisLimiter::with_limits(
        url.as_str(),
        key("settle-set"),
        [
            Limit::requests(50),
            Limit::input_tokens(40_000),
            Limit::output_tokens(8_000),
            Limit::tokens(100_000).per_day(),
        ],
    )
    .manual_clock(clock.clone())
    .build()
    .await
    .unwrap();
    let p = l.try_acquire(Cost::new(1_000, 4_000)).await.unwrap();
    l.settle(p, Cost::new(1_200, 500)).await.unwrap();
    let u = l.usage().await.unwrap();
    let used = |b: Budget| u.get(b).map(|b| b.used);
    assert_eq!(
        (
            used(Budget::Requests),
            used(Budget::InputTokens),
            used(Budget::OutputTokens),
            used(Budget::Tokens)
        ),
        (Some(1), Some(1_200), Some(500), Some(1_700))
    );
    assert_eq!(u.budgets().count(), 4, "every limited budget is reported");
    assert_eq!(
        u.tokens().map(|b| b.window),
        Some(Duration::from_secs(86_400))
    );
    // What the output budget got back is there to take at once.
    assert!(l.peek(Cost::new(0, 7_500)).await);
    assert!(!l.peek(Cost::new(0, 7_501)).await);
    cleanup(&url, &l).await;
}

/// A daily budget across many minutes of a manual clock: the per-minute budget refills every
/// minute, the daily one only by its own rate, and the daily budget ends the day's admissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_budget_holds_across_many_minutes() {
    let Some(url) = url() else { return };
    let clock = Arc::new(ManualClock::new(3_600_000_000_000));
    let l = RedisLimiter::with_limits(
        url.as_str(),
        key("daily"),
        [Limit::requests(10), Limit::requests(144).per_day()],
    )
    .manual_clock(clock.clone())
    .build()
    .await
    .unwrap();
    // A request every second for 30 minutes.
    let mut log = Vec::new();
    let mut daily_denials = 0;
    for _ in 0..1_800 {
        clock.advance(Duration::from_secs(1));
        match l.try_acquire(0).await {
            Ok(p) => log.push((p.admitted_at_us().unwrap(), 1)),
            Err(Error::RateLimitExceeded(d)) => {
                daily_denials += (d.window() == Duration::from_secs(86_400)) as u32
            }
            Err(e) => panic!("{e}"),
        }
    }
    let minute = max_excess(&log, 10, 10, 60_000_000);
    let day = max_excess(&log, 144, 144, 86_400_000_000);
    eprintln!(
        "30 min at one request/s: {} admitted, {daily_denials} denials by the daily budget; \
         excess {minute} per minute, {day} per day",
        log.len()
    );
    assert_eq!((minute, day), (0, 0));
    // The day's 144 are spent within a quarter hour (the minute's budget paces them), then one
    // more each time the daily budget refills one, every 10 minutes from the first at 1 s:
    // at 601 s and 1201 s.
    assert_eq!(log.len(), 146);
    assert!(daily_denials > 900, "{daily_denials}");
    cleanup(&url, &l).await;
}

/// `limits` and `set_limits` per budget, burst policy included, seen by another replica; a
/// budget the limiter does not have is refused and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_change_per_budget_with_their_burst_policy() {
    let Some(url) = url() else { return };
    let name = key("set-limits");
    let limits = [
        Limit::requests(60),
        Limit::input_tokens(40_000),
        Limit::output_tokens(8_000).burst(Burst::Window(Duration::from_secs(10))),
    ];
    let build = || RedisLimiter::with_limits(url.as_str(), name.as_str(), limits).build();
    let (a, b) = (build().await.unwrap(), build().await.unwrap());
    assert_eq!(a.limits().await.unwrap(), limits);
    let output = |l: &RedisLimiter| {
        let l = l.clone();
        async move { *l.usage().await.unwrap().get(Budget::OutputTokens).unwrap() }
    };
    assert_eq!(
        output(&a).await.capacity,
        1_333,
        "8,000 per minute, 10 s at once"
    );
    let change = Limit::output_tokens(4_000).burst(Burst::Units(100));
    a.set_limits(&[change]).await.unwrap();
    assert_eq!(a.limits().await.unwrap()[2], change);
    let seen = output(&b).await;
    assert_eq!(
        (seen.limit, seen.capacity),
        (4_000, 100),
        "the other replica"
    );
    // Not a budget of this limiter: refused, nothing changed.
    let wrong = a.set_limits(&[change, Limit::tokens(5)]).await;
    assert!(matches!(wrong, Err(Error::InvalidConfig(_))), "{wrong:?}");
    assert!(a
        .set_limits(&[Limit::output_tokens(1).per_hour()])
        .await
        .is_err());
    assert_eq!(a.limits().await.unwrap()[2], change);
    // set_limit's counts: the request budget; no total-tokens budget, so only 0 there.
    a.set_limit(30, 0).await.unwrap();
    assert_eq!(a.limits().await.unwrap()[0].count(), 30);
    assert!(a.set_limit(30, 100).await.is_err());
    assert_eq!(
        b.usage().await.unwrap().requests().map(|r| r.limit),
        Some(30)
    );
    cleanup(&url, &a).await;
}
