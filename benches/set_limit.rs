//! Admissions while another thread calls `set_limit` 1,000 times a second, against the same
//! admissions beside a thread that wakes just as often but changes nothing. The difference
//! is what limit changes cost the hot path (an admission straddling one is retried).

mod common;

use common::*;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ratekeeper::TokenBucketLimiter;
use std::{
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant},
};

/// Two limits, both far above what the bench consumes, to alternate between.
const LIMITS: [u64; 2] = [1_000_000_000, 999_999_999];

/// Times `iters` admissions while a background thread ticks every millisecond and, when
/// `change` is set, changes the limits on each tick.
fn admissions_beside(l: &TokenBucketLimiter, iters: u64, change: bool) -> Duration {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                if change {
                    i ^= 1;
                    l.set_limit(LIMITS[i], LIMITS[i] * 1_000).unwrap();
                }
            }
        });
        let start = Instant::now();
        let admitted = (0..iters)
            .filter(|_| black_box(l).try_acquire(TOKENS).is_ok())
            .count();
        let t = start.elapsed();
        stop.store(true, Relaxed);
        assert_eq!(admitted as u64, iters, "a call was denied");
        t
    })
}

fn set_limit(c: &mut Criterion) {
    let mut g = c.benchmark_group("set_limit_1000_per_s");
    for (name, change) in [
        ("try_acquire_quiet_neighbour", false),
        ("try_acquire_beside_set_limit", true),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| admissions_beside(&rk_admit(), iters, change))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = quick().measurement_time(Duration::from_secs(2));
    targets = set_limit
}
criterion_main!(benches);
