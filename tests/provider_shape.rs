//! The provider-safe shape and the accounting modes, checked where a user meets them: a
//! limiter built with [`TokenBucketLimiter::for_provider`] is driven greedily on a manual
//! clock, and what it *released* is judged by plain arithmetic written here (no crate type or
//! formula) against every enforcement model the shape claims, with the jitter taken
//! adversarially: any two releases may arrive up to `J` closer together than they were
//! released.

use ratekeeper::{Accounting, Burst, Cost, Limit, ManualClock, ProviderShape, TokenBucketLimiter};
use std::sync::Arc;
use std::time::Duration;

const W: u64 = 60_000_000_000;
const S: u64 = 1_000_000_000;
const J: u64 = 100_000_000;

/// A tiny deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        lo + (z ^ (z >> 31)) % (hi - lo + 1)
    }
}

/// Every admission `(release ns, units)` of a greedy client that asks every `step_ns` for
/// `windows` windows, each ask as many times as it is granted.
fn greedy(
    limiter: &TokenBucketLimiter<Arc<ManualClock>>,
    clock: &ManualClock,
    step_ns: u64,
    windows: u64,
    tokens: (u64, u64),
) -> Vec<(u64, u64)> {
    let mut rng = Rng(7);
    let mut out = Vec::new();
    let mut t = 0;
    while t < windows * W {
        clock.set(t);
        loop {
            let n = rng.range(tokens.0, tokens.1);
            match limiter.try_acquire(n) {
                Ok(p) => {
                    out.push((t, n));
                    limiter.settle(p, n).unwrap();
                }
                Err(_) => break,
            }
        }
        t += step_ns;
    }
    out
}

/// The most units released within any closed span of `span` ns.
fn most_within(releases: &[(u64, u64)], span: u64) -> u64 {
    let (mut best, mut sum, mut lo) = (0, 0, 0);
    for &(t, n) in releases {
        sum += n;
        while releases[lo].0 + span < t {
            sum -= releases[lo].1;
            lo += 1;
        }
        best = best.max(sum);
    }
    best
}

/// Whether a provider bucket of `c` units (at least one) refilled at `limit` per `W`, full at
/// the start, takes every release, each arriving up to `J` earlier relative to the others:
/// for every pair `i <= k`, the units released in `[t_i, t_k]` fit `c + ρ·(t_k - t_i - J)⁺`.
/// In units × W to stay exact.
fn short_interval_takes(releases: &[(u64, u64)], limit: u64, c_times_w: u128) -> bool {
    for i in 0..releases.len() {
        let mut sum = 0u128;
        for &(t, n) in &releases[i..] {
            let dt = t - releases[i].0;
            if dt > 3 * S {
                break; // the bucket's whole capacity refills within a second here
            }
            sum += n as u128;
            let refill = dt.saturating_sub(J) as u128 * limit as u128;
            if sum * W as u128 > c_times_w + refill {
                return false;
            }
        }
    }
    true
}

fn manual() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(0))
}

#[test]
fn releases_fit_every_enforcement_model_with_the_jitter() {
    let clock = manual();
    let (rpm, tpm) = (300u64, 40_000u64);
    let limiter = TokenBucketLimiter::for_provider(rpm, tpm)
        .largest_request(350)
        .clock(clock.clone())
        .build()
        .unwrap();
    let releases = greedy(&limiter, &clock, 7_000_000, 10, (50, 350));
    let requests: Vec<(u64, u64)> = releases.iter().map(|&(t, _)| (t, 1)).collect();
    for (name, r, limit) in [("tokens", &releases, tpm), ("requests", &requests, rpm)] {
        // Sliding and fixed windows: releases within W + J arrive within one window.
        let most = most_within(r, W + J);
        assert!(most <= limit, "{name}: {most} within W + J, limit {limit}");
        // A short interval of one second: a bucket of limit/60 (at least one unit).
        let c = (limit as u128 * S as u128).max(W as u128);
        assert!(short_interval_takes(r, limit, c), "{name}: short interval");
        // A token bucket of capacity `limit` is implied by the sliding bound. And the shape
        // uses the limit: a greedy client gets at least 97% of it over 10 windows (both
        // budgets run near their limits here: small asks fill the token bucket's gaps).
        let total: u64 = r.iter().map(|&(_, n)| n).sum();
        eprintln!("{name}: {total} in 10 windows, at most {most} within W + J");
        assert!(
            total * 100 >= limit * 10 * 97,
            "{name}: only {total} in 10 windows"
        );
    }
}

#[test]
fn a_full_window_burst_breaks_the_same_checks() {
    // The checks above can fail: today's default releases the whole window at once.
    let clock = manual();
    let limiter = TokenBucketLimiter::builder(300, 40_000)
        .clock(clock.clone())
        .build()
        .unwrap();
    let releases = greedy(&limiter, &clock, 7_000_000, 3, (50, 350));
    assert!(most_within(&releases, W + J) > 40_000);
    let c = 40_000u128 * S as u128;
    assert!(!short_interval_takes(&releases, 40_000, c));
}

#[test]
fn usage_reports_the_providers_limit_and_the_shapes_burst() {
    let clock = manual();
    let limiter = TokenBucketLimiter::for_provider(120, 40_000)
        .largest_request(350)
        .clock(clock.clone())
        .build()
        .unwrap();
    let u = limiter.usage();
    let (r, t) = (u.requests().unwrap(), u.tokens().unwrap());
    assert_eq!((r.limit, r.capacity), (120, 1));
    assert_eq!((t.limit, t.capacity), (40_000, 600));
    // A learned limit goes in as the provider says it; the shape follows it.
    limiter.set_limit(60, 90_000).unwrap();
    let u = limiter.usage();
    assert_eq!(u.tokens().unwrap().limit, 90_000);
    assert_eq!(u.tokens().unwrap().capacity, 1_350); // 90,000 × 0.9 / 60
    assert_eq!(u.requests().unwrap().capacity, 1);
    // A request above the burst is refused at once, not after a wait.
    assert!(matches!(
        limiter.try_acquire(1_351),
        Err(ratekeeper::Error::InsufficientCapacity { .. })
    ));
    // The request budget keeps one unit whatever the largest request.
    let shape = match limiter.limits()[0].burst_policy() {
        Burst::Provider(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(shape.largest_units(), 1);
    assert_eq!(limiter.accounting(), Accounting::Reserved);
}

#[test]
fn the_shape_sustains_what_it_says() {
    // Over 20 windows a greedy client of one-unit requests gets the shape's rate.
    let clock = manual();
    let shape = ProviderShape::new();
    let limiter =
        TokenBucketLimiter::with_limits([Limit::requests(600).burst(Burst::Provider(shape))])
            .clock(clock.clone())
            .build()
            .unwrap();
    let sustained = shape.sustained(600, Duration::from_secs(60));
    assert_eq!(sustained, 590); // floor(590 / 60.1 × 60) with B = 9: (600 - 9) per 60.1 s
    let mut admitted = 0u64;
    let mut t = 0;
    while t <= 20 * W {
        clock.set(t);
        while limiter.allow() {
            admitted += 1;
        }
        t += 1_000_000;
    }
    let burst = shape.burst(600, Duration::from_secs(60));
    assert_eq!(burst, 9);
    // B + r·T, with r = 591 per 60.1 s: 9 + 591 × 1200 / 60.1 = 11,809.
    assert!((11_800..=11_809).contains(&admitted), "{admitted}");
}

fn tokens_used(l: &TokenBucketLimiter<Arc<ManualClock>>) -> u64 {
    l.usage().tokens().unwrap().used
}

#[test]
fn reserved_accounting_keeps_the_estimate_and_charges_a_shortfall() {
    let clock = manual();
    let build = |a| {
        TokenBucketLimiter::builder(100, 10_000)
            .accounting(a)
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let reserved = build(Accounting::Reserved);
    let p = reserved.try_acquire(Cost::new(100, 400)).unwrap();
    reserved.settle(p, Cost::new(100, 50)).unwrap();
    assert_eq!(tokens_used(&reserved), 500, "the provider keeps max_tokens");
    let p = reserved.try_acquire(Cost::new(100, 400)).unwrap();
    reserved.settle(p, Cost::new(100, 700)).unwrap();
    assert_eq!(tokens_used(&reserved), 1_300, "a shortfall is charged");
    let p = reserved.try_acquire(Cost::new(100, 400)).unwrap();
    reserved.settle(p, Cost::ZERO).unwrap();
    assert_eq!(
        tokens_used(&reserved),
        1_300,
        "refused or never sent: nothing counted"
    );
    // The request itself stays counted in every mode.
    assert_eq!(reserved.usage().requests().unwrap().used, 3);

    let actual = build(Accounting::Actual);
    let p = actual.try_acquire(Cost::new(100, 400)).unwrap();
    actual.settle(p, Cost::new(100, 50)).unwrap();
    assert_eq!(tokens_used(&actual), 150, "the surplus comes back");
    assert_eq!(Accounting::default(), Accounting::Actual);
    assert_eq!(
        TokenBucketLimiter::new(1, 1).accounting(),
        Accounting::Actual,
        "new() is unchanged"
    );
}
