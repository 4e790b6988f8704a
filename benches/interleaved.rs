//! Single-thread time per call, ratekeeper and governor interleaved in one process: each round
//! runs every variant once (a fresh limiter, `CALLS` calls), in an order rotated from round to
//! round, and the figures are medians over the rounds. A neighbour that steals the CPU for a
//! while slows a few rounds of every variant alike instead of the whole of one variant, so
//! the ratios (taken within each round, then the median) are what to compare on a shared
//! machine.
//!
//! `cargo bench --bench interleaved [-- ROUNDS [CALLS]]` (default 31 rounds of 200,000 calls).

mod common;

use common::*;
use ratekeeper::Clock;
use std::{
    hint::black_box,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant},
};

/// One measured path: its name, the reference it is divided by, and how to time `calls` of it.
struct Variant {
    name: &'static str,
    reference: Option<&'static str>,
    run: fn(u64) -> f64,
}

/// Times `calls` calls of `op` on `l` in ns per call, asserting each returned `expect`.
#[inline(always)]
fn time<L>(l: L, calls: u64, expect: bool, op: impl Fn(&L) -> bool) -> f64 {
    let start = Instant::now();
    let matched = (0..calls).filter(|_| op(black_box(&l)) == expect).count() as u64;
    let t = start.elapsed();
    assert_eq!(matched, calls, "a call decided the other way");
    t.as_nanos() as f64 / calls as f64
}

/// `try_acquire` while another thread wakes every millisecond and, if `change`, sets the limits.
fn beside_set_limit(calls: u64, change: bool) -> f64 {
    let l = rk_admit();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let limits = [1_000_000_000, 999_999_999];
            let mut i = 0;
            while !stop.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                if change {
                    i ^= 1;
                    l.set_limit(limits[i], limits[i] * 1_000).unwrap();
                }
            }
        });
        let ns = time(&l, calls, true, |l| l.try_acquire(TOKENS).is_ok());
        stop.store(true, Relaxed);
        ns
    })
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "governor check()",
        reference: None,
        run: |n| time(gov_admit(), n, true, |g| g.check().is_ok()),
    },
    Variant {
        name: "ratekeeper allow()",
        reference: Some("governor check()"),
        run: |n| time(rk_admit(), n, true, |l| l.allow()),
    },
    Variant {
        name: "ratekeeper allow() 1 µs burst",
        reference: Some("governor check()"),
        run: |n| time(rk_admit_small_burst(), n, true, |l| l.allow()),
    },
    Variant {
        name: "ratekeeper try_acquire(10)",
        reference: Some("governor check()"),
        run: |n| time(rk_admit(), n, true, |l| l.try_acquire(TOKENS).is_ok()),
    },
    Variant {
        name: "governor stacked check() + check_n(10)",
        reference: None,
        run: |n| time(StackedGovernor::admit(), n, true, |g| g.check()),
    },
    Variant {
        name: "ratekeeper try_acquire(10) vs stacked",
        reference: Some("governor stacked check() + check_n(10)"),
        run: |n| time(rk_admit(), n, true, |l| l.try_acquire(TOKENS).is_ok()),
    },
    Variant {
        name: "ratekeeper try_acquire, 3 budgets",
        reference: Some("governor check()"),
        run: |n| time(rk_admit3(), n, true, |l| l.try_acquire(COST3).is_ok()),
    },
    Variant {
        name: "governor check() fake clock",
        reference: None,
        run: |n| time(gov_admit_fake(), n, true, |g| g.check().is_ok()),
    },
    Variant {
        name: "ratekeeper allow_at(now)",
        reference: Some("governor check() fake clock"),
        run: |n| {
            let l = rk_admit();
            let now = black_box(l.clock().now());
            time(l, n, true, |l| l.allow_at(now))
        },
    },
    Variant {
        name: "ratekeeper try_acquire_at(now, 10)",
        reference: Some("governor check() fake clock"),
        run: |n| {
            let l = rk_admit();
            let now = black_box(l.clock().now());
            time(l, n, true, |l| l.try_acquire_at(now, TOKENS).is_ok())
        },
    },
    Variant {
        name: "deny: governor check()",
        reference: None,
        run: |n| time(gov_deny(), n, false, |g| g.check().is_ok()),
    },
    Variant {
        name: "deny: ratekeeper allow()",
        reference: Some("deny: governor check()"),
        run: |n| time(rk_deny(), n, false, |l| l.allow()),
    },
    Variant {
        name: "deny: ratekeeper try_acquire(1)",
        reference: Some("deny: governor check()"),
        run: |n| time(rk_deny(), n, false, |l| l.try_acquire(1).is_ok()),
    },
    Variant {
        name: "try_acquire(10) beside a quiet 1 kHz thread",
        reference: None,
        run: |n| beside_set_limit(n, false),
    },
    Variant {
        name: "try_acquire(10) beside set_limit 1,000×/s",
        reference: Some("try_acquire(10) beside a quiet 1 kHz thread"),
        run: |n| beside_set_limit(n, true),
    },
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = args.first().copied().unwrap_or(31) as usize;
    let calls = args.get(1).copied().unwrap_or(200_000);
    let mut ns = vec![Vec::with_capacity(rounds); VARIANTS.len()];
    for round in 0..rounds {
        for k in 0..VARIANTS.len() {
            let i = (k + round) % VARIANTS.len();
            ns[i].push((VARIANTS[i].run)(calls));
        }
    }
    println!("{rounds} interleaved rounds of {calls} calls; medians over rounds\n");
    println!("| path | ns/call | ratio | ratio range (middle half of rounds) |");
    println!("|---|---:|---:|---|");
    for (i, v) in VARIANTS.iter().enumerate() {
        let (ratio, spread) = match v.reference {
            Some(r) => {
                let j = VARIANTS
                    .iter()
                    .position(|w| w.name == r)
                    .expect("reference");
                let mut per_round: Vec<f64> = (0..rounds).map(|k| ns[i][k] / ns[j][k]).collect();
                per_round.sort_by(f64::total_cmp);
                let (q1, q3) = (per_round[rounds / 4], per_round[rounds * 3 / 4]);
                (
                    format!("{:.2}× {r}", median(per_round)),
                    format!("{q1:.2}–{q3:.2}"),
                )
            }
            None => ("—".into(), "—".into()),
        };
        println!(
            "| {} | {:.1} | {} | {} |",
            v.name,
            median(ns[i].clone()),
            ratio,
            spread
        );
    }
}
