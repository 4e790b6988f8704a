//! Throughput with 1, 2, 4, 8 and 16 threads admitting on one shared limiter. The figure is
//! wall time per admission across all threads (lower is better). On a machine with fewer
//! cores than threads the threads time-slice, so past the core count this measures
//! contention under preemption, not parallel scaling.

mod common;

use common::*;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::{
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

const THREADS: [usize; 5] = [1, 2, 4, 8, 16];

/// Runs `iters` calls of `op` split over `threads` threads, all starting together; returns the
/// wall time and asserts every call admitted.
fn run<L: Sync>(l: &L, threads: usize, iters: u64, op: &(impl Fn(&L) -> bool + Sync)) -> Duration {
    let per = iters.div_ceil(threads as u64);
    let start_line = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    start_line.wait();
                    (0..per).filter(|_| op(black_box(l))).count() as u64
                })
            })
            .collect();
        start_line.wait();
        let start = Instant::now();
        let admitted: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
        let t = start.elapsed();
        assert_eq!(admitted, per * threads as u64, "a call was denied");
        t
    })
}

fn bench<L: Sync>(
    c: &mut Criterion,
    name: &str,
    make: impl Fn() -> L,
    op: impl Fn(&L) -> bool + Sync,
) {
    let mut g = c.benchmark_group(format!("threads/{name}"));
    g.throughput(Throughput::Elements(1));
    for threads in THREADS {
        g.bench_with_input(
            BenchmarkId::from_parameter(threads),
            &threads,
            |b, &threads| b.iter_custom(|iters| run(&make(), threads, iters, &op)),
        );
    }
    g.finish();
}

fn throughput(c: &mut Criterion) {
    bench(
        c,
        "ratekeeper_allow",
        || Arc::new(rk_admit()),
        |l| l.allow(),
    );
    bench(
        c,
        "ratekeeper_try_acquire",
        || Arc::new(rk_admit()),
        |l| l.try_acquire(TOKENS).is_ok(),
    );
    bench(
        c,
        "governor_check",
        || Arc::new(gov_admit()),
        |g| g.check().is_ok(),
    );
    bench(
        c,
        "governor_stacked_rpm_tpm",
        || Arc::new(StackedGovernor::admit()),
        |g| g.check(),
    );
    bench(
        c,
        "leaky_bucket_try_acquire",
        || Arc::new(leaky_admit()),
        |l| l.try_acquire(1),
    );
    bench(
        c,
        "float_mutex_bucket",
        || Arc::new(FloatBucket::admit()),
        |f| f.allow_n(1.0),
    );
}

criterion_group! {
    name = benches;
    config = quick().sample_size(10);
    targets = throughput
}
criterion_main!(benches);
