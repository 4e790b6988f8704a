//! Property tests: arbitrary bytes under every header name `parse` knows (and unknown ones),
//! repeated at random, fed to `KeyPool::learn` with arbitrary statuses, configurations and
//! learning policies. 5,000 cases of one to three responses each (about 10,000 header maps)
//! per run; each response asserts:
//!
//! - no panic, and `learn` completes at its first poll (it never waits);
//! - bounded work, counted rather than timed: at most 3 `usage`, 1 `set_limit` and 1 `charge`
//!   calls, nothing else (a wall bound of 5 s per call is a hang detector only);
//! - never more permissive than the configuration: each budget's limit is unchanged or at
//!   most its ceiling (computed here, independently), never turned unlimited; and after all
//!   responses, counting what the limiter still admits at the same instant, requests and
//!   tokens admitted in all stay within `max(configured, ceiling)`;
//! - a 429 cools the key within the policy's `[min, max]`; another status leaves it as it was;
//! - the report stays small (ignored values cut to 64 characters) and the parsed figures are
//!   consistent (no zero limit, no remaining above its limit).

mod headers_support;

use headers_support::{limits, ready, Counting};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use ratekeeper::headers::{known_headers, Applied, Clamped, LearnPolicy, ProviderBudget};
use ratekeeper::{Budget, Clock, KeyPool, ManualClock};
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

const CASES: u32 = 5_000;

/// Names near the known ones, or that a response carries anyway: never read as limits.
const UNKNOWN: &[&str] = &[
    "x-ratelimit-limit-request",
    "x-ratelimit-remaining",
    "x-ratelimit-limit-requests-day",
    "ratelimit-limit",
    "ratelimit-policy",
    "anthropic-ratelimit-output-tokens",
    "retry-after-s",
    "content-length",
    "date",
];

const ODD: &[&str] = &[
    "",
    "0",
    "-0",
    "-1",
    "-5",
    "+7",
    " 42 ",
    "1",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999",
    "99999999999h",
    "1e300",
    "1e400",
    "inf",
    "-inf",
    "NaN",
    "0.5",
    "1.",
    ".5",
    "0s",
    "6m0s",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Thu, 01 Jan 1970 00:00:00 GMT",
    "9999-12-31T23:59:59Z",
    "2024-05-01T12:00:00Z",
];

fn name() -> impl Strategy<Value = String> {
    let known: Vec<&'static str> = known_headers().collect();
    prop_oneof![
        8 => select(known).prop_map(String::from),
        1 => select(UNKNOWN).prop_map(String::from),
        // Any valid name; a regex strategy would cost more than the rest of the test.
        1 => prop::collection::vec(select(&b"abcdefghijklmnopqrstuvwxyz0123456789-"[..]), 1..24)
            .prop_map(|b| String::from_utf8(b).unwrap()),
    ]
}

/// A value of one of ten shapes, built from three numbers: proptest's own strategies for
/// strings and unions cost about 100 µs a value in a debug build, this a few. Shrinking still
/// works on the numbers.
fn value() -> impl Strategy<Value = Vec<u8>> {
    (0u8..10, any::<u64>(), any::<u64>()).prop_map(|(shape, n, m)| shaped(shape, n, m))
}

/// A pseudo-random byte stream seeded by `seed` (xorshift64*).
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn shaped(shape: u8, n: u64, m: u64) -> Vec<u8> {
    const UNITS: [&str; 7] = ["ns", "us", "µs", "ms", "s", "m", "h"];
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const ZONES: [&str; 7] = ["Z", "z", "+02:00", "-04:30", "+23:59", "+24:00", ""];
    // Date-time fields, a little past their valid ranges.
    let f = |div: u64, modulo: u64| (n / div) % modulo;
    let s = match shape {
        // Any bytes (most are refused by `http` and never reach a map).
        0 => return bytes(n, (m % 48) as usize),
        // Bytes `http` accepts: tab, visible ASCII, obs-text.
        1 => {
            let b = bytes(n, (m % 48) as usize);
            return b
                .into_iter()
                .map(|b| match b {
                    0..=0x1f => b'\t',
                    0x7f => b' ',
                    b => b,
                })
                .collect();
        }
        2 => ODD[(n % ODD.len() as u64) as usize].to_owned(),
        3 => n.to_string(),
        // Counts of one to six digits: the size of the case's own limits.
        4 => (n % 10u64.pow(1 + (m % 6) as u32)).to_string(),
        5 => (n as i64).to_string(),
        6 => f64::from_bits(n).to_string(),
        7 => {
            let parts = 1 + m % 3;
            (0..parts)
                .map(|i| {
                    let v = (n >> (i * 20)) % 1_000_000_000_000;
                    format!("{v}{}", UNITS[((m >> (8 * i)) % 7) as usize])
                })
                .collect()
        }
        8 => {
            let frac = match m % 3 {
                0 => String::new(),
                _ => format!(".{}", m % 1_000_000_000),
            };
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}{}",
                f(1, 10_000),
                f(10_000, 14),
                f(140_000, 33),
                f(4_620_000, 25),
                f(115_500_000, 61),
                m % 62,
                ZONES[((m >> 32) % 7) as usize]
            )
        }
        _ => format!(
            "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
            DAYS[(m % 7) as usize],
            f(1, 33),
            MONTHS[((m >> 8) % 12) as usize],
            f(33, 10_000),
            f(330_000, 25),
            f(8_250_000, 61),
            (m >> 16) % 62
        ),
    };
    s.into_bytes()
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((name(), value()), 0..24).prop_map(|pairs| {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            // Bytes `http` itself refuses never reach a HeaderMap.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_bytes(&v),
            ) {
                m.append(n, v);
            }
        }
        m
    })
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![3 => Just(429u16), 3 => Just(200u16), 1 => any::<u16>()]
}

#[derive(Clone, Debug)]
struct Case {
    rpm: u64,
    tpm: u64,
    /// Admissions (of `pre_tokens` each) made before the first response.
    pre: u64,
    pre_tokens: u64,
    factor: u64,
    max_requests: Option<u64>,
    max_tokens: Option<u64>,
    cooldown: (Duration, Duration),
    /// Two keys on one limiter, the responses alternating between them.
    shared: bool,
    responses: Vec<(u16, HeaderMap)>,
}

fn case() -> impl Strategy<Value = Case> {
    let limits = (
        prop_oneof![1 => Just(0u64), 6 => 1u64..=100],
        prop_oneof![1 => Just(0u64), 6 => 1u64..=20_000],
    );
    let policy = (
        0u64..=8,
        prop::option::of(0u64..=500),
        prop::option::of(0u64..=50_000),
        (0u64..=5_000, 0u64..=7_200_000),
    );
    let responses = prop::collection::vec((status(), header_map()), 1..=3);
    (
        limits,
        0u64..=20,
        0u64..=500,
        policy,
        any::<bool>(),
        responses,
    )
        .prop_map(
            |((rpm, tpm), pre, pre_tokens, (factor, mr, mt, (min, max)), shared, responses)| Case {
                rpm,
                tpm,
                pre,
                pre_tokens,
                factor,
                max_requests: mr,
                max_tokens: mt,
                cooldown: (Duration::from_millis(min), Duration::from_millis(max)),
                shared,
                responses,
            },
        )
}

/// The most a learned limit may be, computed from the case alone (not by the crate).
fn ceiling(configured: u64, factor: u64, explicit: Option<u64>) -> u64 {
    match (explicit, configured) {
        (Some(m), _) => m.max(1),
        (None, 0) => u64::MAX,
        (None, c) => c.saturating_mul(factor.max(1)),
    }
}

#[derive(Default)]
struct Stats {
    maps: u64,
    headers: u64,
    statuses_429: u64,
    clamped_limits: u64,
    clamped_cooldowns: u64,
    charges: u64,
    ignored: u64,
    learn_max: Duration,
    learn_total: Duration,
}

fn check(case: Case, stats: &RefCell<Stats>) -> Result<(), TestCaseError> {
    let mut stats = stats.borrow_mut();
    let clock = Arc::new(ManualClock::new(0));
    let limiter = Counting::new(&clock, case.rpm, case.tpm);
    let pool = KeyPool::with_clock(clock.clone());
    let keys: &[&str] = if case.shared { &["a", "b"] } else { &["a"] };
    let mut policy = LearnPolicy::new()
        .factor(case.factor)
        .cooldown(case.cooldown.0, case.cooldown.1);
    if let Some(m) = case.max_requests {
        policy = policy.max_limit(Budget::Requests, m);
    }
    if let Some(m) = case.max_tokens {
        policy = policy.max_limit(Budget::Tokens, m);
    }
    for k in keys {
        pool.add(*k, limiter.clone());
        pool.set_learn_policy(k, policy.clone());
    }
    let (min_cd, max_cd) = (policy.min_cooldown(), policy.max_cooldown());
    let ceilings = (
        ceiling(case.rpm, case.factor, case.max_requests),
        ceiling(case.tpm, case.factor, case.max_tokens),
    );

    // Use the key a little first; count it ourselves.
    let (mut requests, mut tokens) = (0u64, 0u64);
    for _ in 0..case.pre {
        if limiter.inner.try_acquire(case.pre_tokens).is_ok() {
            requests += 1;
            tokens += case.pre_tokens;
        }
    }

    let wall = UNIX_EPOCH + Duration::from_secs(1_714_564_800);
    for (i, (status, headers)) in case.responses.iter().enumerate() {
        let key = keys[i % keys.len()];
        stats.maps += 1;
        stats.headers += headers.len() as u64;
        let before = limits(&limiter.inner);
        let cooldown_before = pool.cooldown_until(&key);
        limiter.calls.reset();

        let started = Instant::now();
        let report = ready(pool.learn_at(&key, *status, headers, wall));
        let took = started.elapsed();
        stats.learn_max = stats.learn_max.max(took);
        stats.learn_total += took;
        prop_assert!(
            took < Duration::from_secs(5),
            "hang detector: learn took {took:?}"
        );
        let report = report.expect("key present").expect("in-process limiter");

        // Work: counted calls.
        let (usage, set_limit, charge, other) = limiter.calls.get();
        prop_assert!(
            usage <= 3 && set_limit <= 1 && charge <= 1 && other == 0,
            "calls: usage {usage}, set_limit {set_limit}, charge {charge}, other {other}"
        );
        stats.charges += charge;

        // Limits: unchanged, or within the ceiling and still limited.
        let after = limits(&limiter.inner);
        for (name, b, a, configured, c) in [
            ("requests", before.0, after.0, case.rpm, ceilings.0),
            ("tokens", before.1, after.1, case.tpm, ceilings.1),
        ] {
            prop_assert!(
                a == b || (a != 0 && a <= c),
                "{name}: limit {b} -> {a}, ceiling {c}"
            );
            prop_assert!(configured == 0 || a != 0, "{name}: turned unlimited");
        }
        for c in &report.clamped {
            match c {
                Clamped::Limit {
                    budget,
                    learned,
                    ceiling,
                } => {
                    let expected = match budget {
                        Budget::Requests => ceilings.0,
                        _ => ceilings.1,
                    };
                    prop_assert!(learned > ceiling && *ceiling == expected, "{c:?}");
                    stats.clamped_limits += 1;
                }
                Clamped::Cooldown { used, .. } => {
                    prop_assert!(*used >= min_cd && *used <= max_cd);
                    stats.clamped_cooldowns += 1;
                }
            }
        }

        // Cooldown: within [min, max] on a 429, untouched otherwise.
        let cooldown_after = pool.cooldown_until(&key);
        if *status == 429 {
            stats.statuses_429 += 1;
            let d = report.applied.iter().find_map(|a| match a {
                Applied::Cooldown(d) => Some(*d),
                _ => None,
            });
            let d = d.expect("a 429 reports its cooldown");
            prop_assert!(
                d >= min_cd && d <= max_cd,
                "cooldown {d:?} outside [{min_cd:?}, {max_cd:?}]"
            );
            let until = cooldown_after.expect("a 429 cools the key");
            let left = Duration::from_nanos(until - clock.now());
            // A longer cooldown already set is kept, so `left` may be an earlier one's.
            let earlier =
                cooldown_before.map_or(Duration::ZERO, |u| Duration::from_nanos(u - clock.now()));
            prop_assert!(
                left >= min_cd && left <= max_cd.max(earlier),
                "left {left:?}"
            );
        } else {
            prop_assert_eq!(cooldown_after, cooldown_before);
        }

        // The report and the figures.
        stats.ignored += report.limits.ignored.len() as u64;
        for ig in &report.limits.ignored {
            prop_assert!(ig.value.chars().count() <= 65, "{:?}", ig);
        }
        for b in ProviderBudget::ALL {
            let f = report.limits.figures(b);
            prop_assert!(f.limit != Some(0));
            if let (Some(l), Some(r)) = (f.limit, f.remaining) {
                prop_assert!(r <= l, "{b:?}: remaining {r} > limit {l}");
            }
        }
    }

    // Independent check at the same instant: what the limiter still admits, plus what it
    // admitted before, never exceeds max(configured, ceiling) per budget. Tokens first, in
    // halving chunks (each takes a request too), then the requests left.
    let final_limits = limits(&limiter.inner);
    let bound = |configured: u64, c: u64| configured.max(c);
    if case.tpm != 0 {
        let cap = bound(case.tpm, ceilings.1);
        let mut chunk = cap.next_power_of_two();
        while chunk > 0 {
            while tokens <= cap && limiter.inner.try_acquire(chunk).is_ok() {
                tokens += chunk;
                requests += 1;
            }
            chunk /= 2;
        }
        prop_assert!(
            tokens <= cap,
            "tokens admitted {tokens} > {cap} (limits now {final_limits:?})"
        );
    }
    if case.rpm != 0 {
        let cap = bound(case.rpm, ceilings.0);
        while requests <= cap && limiter.inner.try_acquire(0).is_ok() {
            requests += 1;
        }
        prop_assert!(
            requests <= cap,
            "requests admitted {requests} > {cap} (limits now {final_limits:?})"
        );
    }
    Ok(())
}

#[test]
fn arbitrary_headers_never_loosen_hang_or_escape_the_cooldown_range() {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let stats = RefCell::new(Stats::default());
    let started = Instant::now();
    let result = runner.run(&case(), |c| check(c, &stats));
    let stats = stats.into_inner();
    eprintln!(
        "{CASES} cases (plus shrinking), {} header maps, {} headers, {} 429s; \
         {} limits and {} cooldowns clamped, {} charges, {} ignored; \
         learn max {:?}, mean {:?}; whole test {:?}",
        stats.maps,
        stats.headers,
        stats.statuses_429,
        stats.clamped_limits,
        stats.clamped_cooldowns,
        stats.charges,
        stats.ignored,
        stats.learn_max,
        stats.learn_total / stats.maps.max(1) as u32,
        started.elapsed(),
    );
    result.unwrap();
    assert!(stats.maps >= 5_000, "{} header maps", stats.maps);
}
