//! Instructions per admission, independent of machine noise: run one path `n` times under
//! `valgrind --tool=callgrind` and difference two values of `n` (`benches/callgrind.sh` does
//! both and prints the table). The set-up cost is the same in both runs and cancels.
//!
//! Only the instructions inside `run` are counted (`--toggle-collect`), so the clocks'
//! calibration, done once before, is left out: it takes a varying number of instructions.
//!
//! `instructions <path> <n>`; with no path (as `cargo bench` runs it) every path runs briefly,
//! so the binary is exercised without valgrind.

mod common;

use common::*;
use ratekeeper::Clock;
use std::hint::black_box;

/// The paths measured, by the name given on the command line.
const PATHS: [&str; 16] = [
    "ratekeeper_allow",
    "ratekeeper_allow_small_burst",
    "ratekeeper_try_acquire",
    "ratekeeper_try_acquire_3",
    "ratekeeper_allow_at",
    "ratekeeper_try_acquire_at",
    "ratekeeper_try_acquire_at_3",
    "ratekeeper_try_acquire_set_limit",
    "ratekeeper_allow_deny",
    "ratekeeper_allow_at_deny",
    "ratekeeper_try_acquire_deny",
    "ratekeeper_try_acquire_at_deny",
    "governor_check",
    "governor_check_fake_clock",
    "governor_stacked_rpm_tpm",
    "governor_check_deny",
];

/// Calls `op` `n` times and returns how many admitted.
fn repeat<L>(l: L, n: u64, op: impl Fn(&L) -> bool) -> u64 {
    (0..n).filter(|_| op(black_box(&l))).count() as u64
}

/// Calls `op` `n` times and returns how many were denied.
fn deny<L>(l: L, n: u64, op: impl Fn(&L) -> bool) -> u64 {
    (0..n).filter(|_| !op(black_box(&l))).count() as u64
}

/// How many of `n` calls of `path` decided as its name says (admit, or deny for `*_deny`).
/// Not inlined: `benches/callgrind.sh` counts the instructions inside this function only.
#[inline(never)]
fn run(path: &str, n: u64) -> u64 {
    match path {
        "ratekeeper_try_acquire_3" => repeat(rk_admit3(), n, |l| l.try_acquire(COST3).is_ok()),
        "ratekeeper_try_acquire_at_3" => {
            let l = rk_admit3();
            let now = black_box(l.clock().now());
            repeat(l, n, |l| l.try_acquire_at(now, COST3).is_ok())
        }
        "ratekeeper_allow_deny" => deny(rk_deny(), n, |l| l.allow()),
        "ratekeeper_allow_at_deny" => {
            let l = rk_deny();
            let now = black_box(l.clock().now());
            deny(l, n, |l| l.allow_at(now))
        }
        "ratekeeper_try_acquire_deny" => deny(rk_deny(), n, |l| l.try_acquire(1).is_ok()),
        "ratekeeper_try_acquire_at_deny" => {
            let l = rk_deny();
            let now = black_box(l.clock().now());
            deny(l, n, |l| l.try_acquire_at(now, 1).is_ok())
        }
        "governor_check_deny" => deny(gov_deny(), n, |g| g.check().is_ok()),
        "ratekeeper_allow" => repeat(rk_admit(), n, |l| l.allow()),
        "ratekeeper_allow_small_burst" => repeat(rk_admit_small_burst(), n, |l| l.allow()),
        "ratekeeper_try_acquire" => repeat(rk_admit(), n, |l| l.try_acquire(TOKENS).is_ok()),
        "ratekeeper_allow_at" => {
            let l = rk_admit();
            let now = black_box(l.clock().now());
            repeat(l, n, |l| l.allow_at(now))
        }
        "ratekeeper_try_acquire_at" => {
            let l = rk_admit();
            let now = black_box(l.clock().now());
            repeat(l, n, |l| l.try_acquire_at(now, TOKENS).is_ok())
        }
        "ratekeeper_try_acquire_set_limit" => set_limit_beside(n),
        "governor_check" => repeat(gov_admit(), n, |g| g.check().is_ok()),
        "governor_check_fake_clock" => repeat(gov_admit_fake(), n, |g| g.check().is_ok()),
        "governor_stacked_rpm_tpm" => repeat(StackedGovernor::admit(), n, |g| g.check()),
        other => panic!("unknown path {other:?}; one of {PATHS:?}"),
    }
}

/// Admissions per limit change: at ~30 ns an admission, 1,000 changes a second is one change
/// per 20,000–33,000 admissions; 10,000 overstates the rate two- to threefold.
const ADMISSIONS_PER_SET_LIMIT: u64 = 10_000;

/// `try_acquire` with a `set_limit` every `ADMISSIONS_PER_SET_LIMIT` calls, in the same
/// thread (callgrind serialises threads, so this counts the work, not cache-line transfers).
fn set_limit_beside(n: u64) -> u64 {
    let l = rk_admit();
    let limits = [1_000_000_000, 999_999_999];
    (0..n)
        .filter(|i| {
            if i % ADMISSIONS_PER_SET_LIMIT == 0 {
                let r = limits[(i / ADMISSIONS_PER_SET_LIMIT % 2) as usize];
                l.set_limit(r, r * 1_000).unwrap();
            }
            black_box(&l).try_acquire(TOKENS).is_ok()
        })
        .count() as u64
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (paths, n): (Vec<&str>, u64) = match args.as_slice() {
        [path, n] => (vec![path.as_str()], n.parse().expect("n is a number")),
        _ => (PATHS.to_vec(), 1_000),
    };
    // Calibrate both crates' clocks (a varying amount of work, once per process) before the
    // counted part starts.
    black_box(ratekeeper::MonotonicClock::new().now());
    black_box(gov_admit().check().is_ok());
    for path in paths {
        let decided = run(path, n);
        assert_eq!(
            decided, n,
            "{path}: every call must decide as the path's name says"
        );
    }
    if args.is_empty() {
        println!("instructions: all paths ran; see benches/callgrind.sh for the counts");
    }
}
