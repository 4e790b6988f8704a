//! Stress test of the keyed limiter with an independent checker: worker threads admit on a
//! few keys in bursts separated by silences (so keys fall idle), a sweeper thread drops idle
//! keys all the while, and afterwards a checker that shares nothing with the crate verifies,
//! key by key, that no window of any length admitted more than `burst + rate × window`.
//!
//! Each operation reads the limiter's clock once and passes that reading to the `*_at` form;
//! the log holds it. Readings reach the limiter out of order across threads (and across
//! sweeps: a reading taken before a sweep may be used after it), which is what a dropped key
//! coming back must survive.
//!
//! The check, per key and budget, with admissions sorted by time and `S` their prefix sums:
//! `S_j - S_(i-1) <= burst + rate·(t_j - t_i)` for every `i <= j`, in one pass: keep the
//! least `S_(i-1)·P - L·t_i` seen and compare `S_j·P - L·t_j` with it plus `B·P`.
//! Settled permits count what they settled for (`min(actual, estimate)`).
//!
//! The machine has 2 vCPUs that do not run two threads truly in parallel.

use ratekeeper::{Clock, KeyedLimiter};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEYS: u64 = 6;
const THREADS: usize = 3;
/// Per key: 20 requests and 2,000 tokens per 20 ms, bursts of the whole window.
const PERIOD_NS: u64 = 20_000_000;
const RPP: u64 = 20;
const TPP: u64 = 2_000;
const RUN: Duration = Duration::from_millis(1_500);

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// (key, reading, requests, tokens) per admission.
type Log = Vec<(u64, u64, u64, u64)>;

/// The independent check: no window of admissions `[t_i, t_j]` exceeds the bound.
fn check(name: &str, mut adm: Vec<(u64, u64)>, limit: u64, burst: u64) {
    adm.sort_unstable();
    let p = PERIOD_NS as i128;
    let mut s: i128 = 0;
    let mut least = i128::MAX;
    for &(t, n) in &adm {
        // S_(i-1)·P - L·t_i for i = this admission, before adding it.
        least = least.min(s * p - limit as i128 * t as i128);
        s += n as i128;
        let here = s * p - limit as i128 * t as i128;
        assert!(
            here - least <= burst as i128 * p,
            "{name}: a window ending at {t} ns admitted more than {burst} + {limit} per {PERIOD_NS} ns"
        );
    }
}

#[test]
fn every_key_stays_within_its_window_while_idle_keys_are_swept() {
    let limiter = Arc::new(
        KeyedLimiter::<u64>::builder(RPP, TPP)
            .period_ns(PERIOD_NS)
            .build()
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let swept = Arc::new(AtomicUsize::new(0));
    let sweeper = {
        let (l, stop, swept) = (limiter.clone(), stop.clone(), swept.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                swept.fetch_add(l.evict_idle(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|w| {
            let l = limiter.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9 + w as u64);
                let mut log = Log::new();
                let start = std::time::Instant::now();
                while start.elapsed() < RUN {
                    let key = rng.below(KEYS);
                    for _ in 0..rng.below(40) {
                        let now = l.clock().now();
                        match rng.below(3) {
                            0 => {
                                if l.allow_at(now, &key) {
                                    log.push((key, now, 1, 0));
                                }
                            }
                            _ => {
                                let est = 1 + rng.below(300);
                                if let Ok(p) = l.try_acquire_at(now, &key, est) {
                                    let actual = rng.below(2 * est);
                                    l.settle(&key, p, actual).unwrap();
                                    log.push((key, now, 1, actual.min(est)));
                                }
                            }
                        }
                    }
                    // Silence: long enough, often, for the key to refill and be swept.
                    std::thread::sleep(Duration::from_micros(rng.below(30_000)));
                }
                log
            })
        })
        .collect();
    let logs: Vec<Log> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    sweeper.join().unwrap();
    let all: Log = logs.into_iter().flatten().collect();
    assert!(
        all.len() > 1_000,
        "too few admissions to say anything: {}",
        all.len()
    );
    let swept = swept.load(Ordering::Relaxed);
    assert!(
        swept > 10,
        "keys must have been dropped and re-created: {swept}"
    );
    for key in 0..KEYS {
        let of_key = all.iter().filter(|a| a.0 == key);
        check(
            &format!("key {key} requests"),
            of_key.clone().map(|a| (a.1, a.2)).collect(),
            RPP,
            RPP,
        );
        check(
            &format!("key {key} tokens"),
            of_key.map(|a| (a.1, a.3)).collect(),
            TPP,
            TPP,
        );
    }
    eprintln!(
        "keyed stress: {} admissions on {KEYS} keys, {swept} keys swept",
        all.len()
    );
}

#[test]
fn the_checker_catches_an_over_admission() {
    // Guard against a checker that passes everything: 21 requests at one instant.
    let r = std::panic::catch_unwind(|| check("x", vec![(5, 1); 21], RPP, RPP));
    assert!(r.is_err());
    check("x", vec![(5, 1); 20], RPP, RPP);
    // 20 at 0, then one more one unit's refill later, but not earlier.
    let mut ok: Vec<_> = vec![(0, 1); 20];
    ok.push((PERIOD_NS / RPP, 1));
    check("x", ok, RPP, RPP);
    let mut early: Vec<_> = vec![(0, 1); 20];
    early.push((PERIOD_NS / RPP - 1, 1));
    assert!(std::panic::catch_unwind(|| check("x", early, RPP, RPP)).is_err());
}
