//! Single-thread cost of one decision: admit, deny, peek and usage, for ratekeeper beside
//! governor (default and fake clock), two stacked governors, leaky-bucket and a mutex float
//! bucket. Each sample gets a fresh limiter, and every call is checked to have decided as
//! the bench's name says, so an "admit" figure never measures a denial.

mod common;

use common::*;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkGroup, Criterion};
use ratekeeper::Clock;
use std::time::Instant;

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Times `op` on a limiter made fresh for each sample, asserting it returned `expect` every time.
fn bench<L>(
    g: &mut Group,
    name: &str,
    make: impl Fn() -> L,
    op: impl Fn(&L) -> bool,
    expect: bool,
) {
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let l = make();
            let mut matched = 0u64;
            let start = Instant::now();
            for _ in 0..iters {
                matched += u64::from(op(black_box(&l)) == expect);
            }
            let t = start.elapsed();
            assert_eq!(matched, iters, "{name}: a call decided the other way");
            t
        })
    });
}

fn admit(c: &mut Criterion) {
    let mut g = c.benchmark_group("admit");
    bench(&mut g, "ratekeeper_allow", rk_admit, |l| l.allow(), true);
    bench(
        &mut g,
        "ratekeeper_allow_small_burst",
        rk_admit_small_burst,
        |l| l.allow(),
        true,
    );
    bench(
        &mut g,
        "ratekeeper_try_acquire",
        rk_admit,
        |l| l.try_acquire(TOKENS).is_ok(),
        true,
    );
    bench(
        &mut g,
        "ratekeeper_try_acquire_small_burst",
        rk_admit_small_burst,
        |l| l.try_acquire(TOKENS).is_ok(),
        true,
    );
    bench(
        &mut g,
        "governor_check",
        gov_admit,
        |g| g.check().is_ok(),
        true,
    );
    bench(
        &mut g,
        "governor_stacked_rpm_tpm",
        StackedGovernor::admit,
        |g| g.check(),
        true,
    );
    bench(
        &mut g,
        "leaky_bucket_try_acquire",
        leaky_admit,
        |l| l.try_acquire(1),
        true,
    );
    bench(
        &mut g,
        "float_mutex_bucket",
        FloatBucket::admit,
        |f| f.allow_n(1.0),
        true,
    );
    g.finish();
}

/// The algorithm without the clock: a manual clock, `*_at` with a fixed reading, and governor's
/// fake clock.
fn admit_no_clock(c: &mut Criterion) {
    let mut g = c.benchmark_group("admit_no_clock");
    bench(
        &mut g,
        "ratekeeper_allow_manual_clock",
        rk_admit_manual,
        |l| l.allow(),
        true,
    );
    bench(
        &mut g,
        "ratekeeper_try_acquire_manual_clock",
        rk_admit_manual,
        |l| l.try_acquire(TOKENS).is_ok(),
        true,
    );
    let now = black_box(rk_admit().clock().now());
    bench(
        &mut g,
        "ratekeeper_allow_at",
        rk_admit,
        |l| l.allow_at(now),
        true,
    );
    bench(
        &mut g,
        "ratekeeper_try_acquire_at",
        rk_admit,
        |l| l.try_acquire_at(now, TOKENS).is_ok(),
        true,
    );
    bench(
        &mut g,
        "governor_check_fake_clock",
        gov_admit_fake,
        |g| g.check().is_ok(),
        true,
    );
    g.finish();
}

fn deny(c: &mut Criterion) {
    let mut g = c.benchmark_group("deny");
    bench(&mut g, "ratekeeper_allow", rk_deny, |l| l.allow(), false);
    bench(
        &mut g,
        "ratekeeper_try_acquire",
        rk_deny,
        |l| l.try_acquire(1).is_ok(),
        false,
    );
    bench(
        &mut g,
        "governor_check",
        gov_deny,
        |g| g.check().is_ok(),
        false,
    );
    bench(
        &mut g,
        "governor_stacked_rpm_tpm",
        StackedGovernor::deny,
        |g| g.check(),
        false,
    );
    bench(
        &mut g,
        "leaky_bucket_try_acquire",
        leaky_deny,
        |l| l.try_acquire(1),
        false,
    );
    bench(
        &mut g,
        "float_mutex_bucket",
        FloatBucket::deny,
        |f| f.allow_n(1.0),
        false,
    );
    g.finish();
}

/// Reading without admitting: `reserve` (would it fit?) and `usage`. Governor has no peek.
fn peek(c: &mut Criterion) {
    let mut g = c.benchmark_group("peek");
    bench(
        &mut g,
        "ratekeeper_reserve",
        rk_admit,
        |l| l.peek(TOKENS),
        true,
    );
    bench(
        &mut g,
        "ratekeeper_usage",
        rk_admit,
        |l| l.usage().requests().is_some_and(|b| b.remaining > 0),
        true,
    );
    g.finish();
}

criterion_group! {
    name = benches;
    config = quick();
    targets = admit, admit_no_clock, deny, peek
}
criterion_main!(benches);
