//! Contention: 1, 2, 4, 8, 16 and 32 threads admitting as fast as they can, on one limiter
//! (one hot state word per bucket) and on a pool of 64 keys (each call picks a key at random,
//! as a keyed gateway spreads tenants), beside governor on the same shapes. Reports
//! admissions per second over all threads and, when built with `--cfg ratekeeper_stats`,
//! compare-exchange retries per admission (the counter does not exist in normal builds):
//!
//! ```text
//! cargo bench --bench contention [-- MILLIS]                    # admissions/s only
//! RUSTFLAGS="--cfg ratekeeper_stats" CARGO_TARGET_DIR=target/stats \
//!     cargo bench --bench contention [-- MILLIS]                # and CAS retries
//! ```
//!
//! Each cell runs `MILLIS` ms (default 300) after all its threads have started. Every call
//! must admit (the limits are far above what any machine consumes), so the figure is the cost
//! of admitting under contention, not of denying. On a machine with fewer cores than threads
//! the threads time-slice: the figures then measure contention under preemption, not scaling.

mod common;

use common::*;
use std::{
    hint::black_box,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Barrier,
    },
    time::{Duration, Instant},
};

const THREADS: [usize; 6] = [1, 2, 4, 8, 16, 32];
const KEYS: usize = 64;

/// What one thread did: admissions, CAS retries when counted, and when it ran.
struct Done {
    admitted: u64,
    retries: Option<u64>,
    span: (Instant, Instant),
}

/// Runs `threads` threads calling `op(thread, i)` until `millis` have passed since they all
/// started; returns admissions per second and CAS retries per admission (if counted).
fn run(
    threads: usize,
    millis: u64,
    op: &(impl Fn(usize, u64) -> bool + Sync),
) -> (f64, Option<f64>) {
    let start_line = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    let (done, elapsed) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (start_line, stop) = (&start_line, &stop);
                s.spawn(move || {
                    start_line.wait();
                    let start = Instant::now();
                    let before = retries_here();
                    let mut admitted = 0u64;
                    let mut i = 0u64;
                    while !stop.load(Relaxed) {
                        // Check the stop flag once per 64 calls: its load is not what is measured.
                        for _ in 0..64 {
                            i += 1;
                            admitted += u64::from(op(t, i));
                        }
                    }
                    let retries = retries_here().zip(before).map(|(a, b)| a - b);
                    let span = (start, Instant::now());
                    assert_eq!(admitted, i, "a call was denied");
                    Done {
                        admitted,
                        retries,
                        span,
                    }
                })
            })
            .collect();
        start_line.wait();
        std::thread::sleep(Duration::from_millis(millis));
        stop.store(true, Relaxed);
        let done: Vec<Done> = workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect();
        // From the first worker's start to the last one's end, as the workers saw it: this
        // thread may be scheduled late on a busy machine, and its own clock would miss that.
        let first = done.iter().map(|d| d.span.0).min().expect("a worker");
        let last = done.iter().map(|d| d.span.1).max().expect("a worker");
        (done, last - first)
    });
    let admitted: u64 = done.iter().map(|d| d.admitted).sum();
    let retries: Option<u64> = done.iter().map(|d| d.retries).sum();
    (
        admitted as f64 / elapsed.as_secs_f64(),
        retries.map(|r| r as f64 / admitted.max(1) as f64),
    )
}

/// This thread's CAS retries so far, when the crate counts them.
fn retries_here() -> Option<u64> {
    #[cfg(ratekeeper_stats)]
    return Some(ratekeeper::TokenBucketLimiter::<ratekeeper::MonotonicClock>::cas_retries_here());
    #[cfg(not(ratekeeper_stats))]
    None
}

/// One measured call: `op(thread, call number)`, true when it admitted.
type Op<'a> = &'a (dyn Fn(usize, u64) -> bool + Sync);

/// A cheap per-call key choice: a hash of (thread, call number).
#[inline]
fn key(thread: usize, i: u64) -> usize {
    let x = (i ^ (thread as u64) << 40).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 58) as usize % KEYS
}

fn main() {
    let millis = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{cores} CPUs available; {millis} ms per cell; every call admitted.{}\n",
        if cfg!(ratekeeper_stats) {
            ""
        } else {
            " CAS retries: build with RUSTFLAGS=\"--cfg ratekeeper_stats\"."
        }
    );
    let one = rk_admit();
    let gov = gov_admit();
    let stacked = StackedGovernor::admit();
    let pool: Vec<_> = (0..KEYS).map(|_| rk_admit()).collect();
    let gov_pool: Vec<_> = (0..KEYS).map(|_| gov_admit()).collect();
    let cells: [(&str, Op); 7] = [
        ("ratekeeper allow(), one limiter", &|_, _| {
            black_box(&one).allow()
        }),
        ("ratekeeper try_acquire(10), one limiter", &|_, _| {
            black_box(&one).try_acquire(TOKENS).is_ok()
        }),
        ("governor check(), one limiter", &|_, _| {
            black_box(&gov).check().is_ok()
        }),
        ("governor check() + check_n(10), one pair", &|_, _| {
            black_box(&stacked).check()
        }),
        ("ratekeeper allow(), 64 keys", &|t, i| {
            pool[key(t, i)].allow()
        }),
        ("ratekeeper try_acquire(10), 64 keys", &|t, i| {
            pool[key(t, i)].try_acquire(TOKENS).is_ok()
        }),
        ("governor check(), 64 keys", &|t, i| {
            gov_pool[key(t, i)].check().is_ok()
        }),
    ];
    println!("| path | threads | admissions/s | ns/admission (wall, all threads) | CAS retries/admission |");
    println!("|---|---:|---:|---:|---:|");
    for (name, op) in cells {
        for threads in THREADS {
            let (per_s, retries) = run(threads, millis, &op);
            let retries = match (retries, name.starts_with("ratekeeper")) {
                (Some(r), true) => format!("{r:.4}"),
                _ => "—".into(),
            };
            println!(
                "| {name} | {threads} | {:.3e} | {:.1} | {retries} |",
                per_s,
                1e9 / per_s
            );
        }
    }
}
