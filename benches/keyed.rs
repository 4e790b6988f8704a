//! The keyed limiter beside governor's keyed limiter (same key type `u64`, same run), and
//! `KeyPool::try_acquire` at 100,000 keys.
//!
//! - bytes per key: live heap bytes (a counting allocator) after 1,000,000 keys, for
//!   ratekeeper (requests + tokens per key) and governor (one quota per key; and two keyed
//!   limiters, the way governor stacks RPM + TPM);
//! - admission for an existing key: `try_acquire(key, 10)` and `allow(key)` against
//!   governor's `check_key` (and the stacked pair), over 100,000 keys in a scattered order,
//!   every call an admission; the fastest of several rounds (the machine is shared);
//! - 1,000,000 keys created and dropped as idle, three times over: live heap bytes and RSS
//!   after each cycle (no growth: the map's table is reused, every tenant is freed);
//! - `KeyPool::try_acquire` at 100,000 keys.
//!
//! Single-threaded figures; the machine has 2 vCPUs that do not run two threads truly in
//! parallel. `cargo bench --bench keyed --features keyed`

use governor::{DefaultKeyedRateLimiter, Quota};
use ratekeeper::{Burst, KeyPool, KeyedLimiter, Limit, ManualClock, TokenBucketLimiter};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts sizes on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const KEYS: u64 = 1_000_000;
const HOT: u64 = 100_000;
const CALLS: u64 = 1_000_000;
const ROUNDS: usize = 5;
const POOL: usize = 100_000;

/// Bursts of 10^9 requests and 10^12 tokens refilling one unit a day: every measured call
/// admits, and no key falls idle during the run (each admission holds its unit for a day),
/// so every call meets an existing key.
fn rk() -> KeyedLimiter<u64> {
    KeyedLimiter::<u64>::with_limits([
        Limit::requests(1)
            .per_day()
            .burst(Burst::Units(1_000_000_000)),
        Limit::tokens(1)
            .per_day()
            .burst(Burst::Units(1_000_000_000_000)),
    ])
    .build()
    .unwrap()
}

/// The same shape for governor: a burst of 10^9 cells, one a day.
fn gov() -> DefaultKeyedRateLimiter<u64> {
    let quota = Quota::with_period(Duration::from_secs(86_400))
        .unwrap()
        .allow_burst(NonZeroU32::new(1_000_000_000).unwrap());
    governor::RateLimiter::keyed(quota)
}

fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1 << 20) as f64
}

fn live_mib() -> f64 {
    LIVE.load(Relaxed) as f64 / (1 << 20) as f64
}

/// Bytes per key for `fill` inserting `KEYS` keys into what `make` builds.
fn bytes_per_key<T>(make: impl FnOnce() -> T, fill: impl Fn(&T, u64)) -> (f64, T) {
    let before = LIVE.load(Relaxed);
    let t = make();
    for i in 0..KEYS {
        fill(&t, key(i));
    }
    ((LIVE.load(Relaxed) - before) as f64 / KEYS as f64, t)
}

/// The fastest of `ROUNDS` rounds of `CALLS` calls of `op` over the hot keys, in ns.
fn per_call(op: impl Fn(u64) -> bool) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            let mut ok = 0u64;
            for i in 0..CALLS {
                ok += op(black_box(key((i * 7_919) % HOT))) as u64;
            }
            assert_eq!(ok, CALLS, "every call must admit");
            t.elapsed().as_nanos() as f64 / CALLS as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    println!(
        "keyed: u64 keys, single thread; 2 vCPUs that do not run two threads truly in parallel"
    );

    // Memory per key.
    let (rk_bytes, k) = bytes_per_key(rk, |k, key| {
        let _ = k.try_acquire(&key, 1).unwrap();
    });
    let (gov_bytes, g) = bytes_per_key(gov, |g, key| {
        g.check_key(&key).unwrap();
    });
    let (gov2_bytes, g2) = bytes_per_key(
        || (gov(), gov()),
        |g, key| {
            g.0.check_key(&key).unwrap();
            g.1.check_key(&key).unwrap();
        },
    );
    println!("bytes per key ({KEYS} keys): ratekeeper (requests + tokens) {rk_bytes:.1}, governor one quota {gov_bytes:.1}, governor two quotas (stacked) {gov2_bytes:.1}");

    // Admission for an existing key.
    let tokens = NonZeroU32::new(10).unwrap();
    let rk_try = per_call(|key| k.try_acquire(&key, 10).is_ok());
    let rk_allow = per_call(|key| k.allow(&key));
    let gov_check = per_call(|key| g.check_key(&key).is_ok());
    let gov_stacked = per_call(|key| {
        g2.0.check_key(&key).is_ok() && matches!(g2.1.check_key_n(&key, tokens), Ok(Ok(())))
    });
    println!("existing key, ns per admission ({HOT} keys): ratekeeper try_acquire(key, 10) {rk_try:.1}, allow(key) {rk_allow:.1}; governor check_key {gov_check:.1}, stacked check_key + check_key_n {gov_stacked:.1}");
    println!(
        "ratio: try_acquire / check_key {:.2}, allow / check_key {:.2}, try_acquire / stacked {:.2}",
        rk_try / gov_check,
        rk_allow / gov_check,
        rk_try / gov_stacked
    );
    drop((k, g, g2));

    // 1M keys created and dropped, three times, on a manual clock: a key is created at one
    // instant and idle a minute later (4 requests per minute per key).
    let clock = Arc::new(ManualClock::new(0));
    let k = KeyedLimiter::<u64, _>::builder(4, 0)
        .clock(clock.clone())
        .build()
        .unwrap();
    let rss0 = rss_mib();
    println!(
        "create/evict: before: live heap {:.1} MiB, RSS {rss0:.1} MiB",
        live_mib()
    );
    for cycle in 1..=3u64 {
        let t = Instant::now();
        for i in 0..KEYS {
            let _ = k.try_acquire(&key(i + cycle * KEYS), 1).unwrap();
        }
        let created = t.elapsed();
        let (live_full, rss_full) = (live_mib(), rss_mib());
        clock.advance(Duration::from_secs(60));
        let t = Instant::now();
        let dropped = k.evict_idle();
        let evicted = t.elapsed();
        assert_eq!((dropped as u64, k.len()), (KEYS, 0));
        println!(
            "cycle {cycle}: {KEYS} created in {:.0} ms (live {live_full:.1} MiB, RSS {rss_full:.1} MiB), dropped in {:.0} ms -> live heap {:.1} MiB, RSS {:.1} MiB",
            created.as_secs_f64() * 1e3,
            evicted.as_secs_f64() * 1e3,
            live_mib(),
            rss_mib()
        );
    }
    drop(k);

    // KeyPool::try_acquire at 100k keys.
    let pool: KeyPool<u64, TokenBucketLimiter> = KeyPool::new();
    pool.add_all(
        (0..POOL as u64).map(|i| (i, Arc::new(TokenBucketLimiter::new(1_000_000_000, 0)))),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let pool_ns = rt.block_on(async {
        let mut best = f64::INFINITY;
        for _ in 0..ROUNDS {
            let n = 100_000;
            let t = Instant::now();
            for _ in 0..n {
                let p = pool.try_acquire(10).await.unwrap();
                black_box(p);
            }
            best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
        }
        best
    });
    println!(
        "KeyPool::try_acquire at {POOL} keys: {:.2} us",
        pool_ns / 1e3
    );
}
