//! The gateway example's parts, checked on tokio's paused clock (deterministic, no
//! wall-clock sleeping): the provider's enforcement models against their definitions, the
//! shape's formula against the inequalities that make it safe, and shortened runs of
//! `cargo run --release --example gateway` (10 windows instead of 30).

#[path = "../examples/gateway/gateway.rs"]
mod gateway;
#[path = "../examples/gateway/provider.rs"]
mod provider;
#[path = "../examples/gateway/shape.rs"]
mod shape;
#[path = "../examples/gateway/sim.rs"]
mod sim;
#[path = "../examples/gateway/table.rs"]
mod table;

use gateway::{Policy, Settle};
use provider::{Accounting, Enforcement, Provider, Request, Truth};
use ratekeeper::TokioClock;
use shape::{BurstChoice, Shape};
use sim::{Config, KeySpec, Report};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::advance;

const MINUTE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The provider: each model admits what its definition admits, and no more.

fn provider(how: Enforcement, requests: u64, headers: bool) -> Provider {
    let truth = Truth {
        requests,
        tokens: 1_000_000,
        headers,
    };
    Provider::new(&[truth], MINUTE, how, Accounting::Actual, MINUTE * 10)
}

const ONE: Request = Request {
    prompt: 1,
    max_tokens: 10,
    output: 1,
};

/// Sends `n` requests now; returns how many were accepted.
fn send(p: &Provider, n: u64) -> u64 {
    (0..n).filter(|_| p.call(0, &ONE).status == 200).count() as u64
}

fn retry_after_ms(p: &Provider) -> u64 {
    let r = p.call(0, &ONE);
    assert_eq!(r.status, 429);
    let (_, v) = r
        .headers
        .iter()
        .find(|(n, _)| *n == "retry-after-ms")
        .expect("a 429 says when to retry");
    v.parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn token_bucket_starts_full_and_refills_continuously() {
    let p = provider(Enforcement::TokenBucket, 60, true);
    assert_eq!(send(&p, 61), 60, "capacity = limit");
    assert_eq!(retry_after_ms(&p), 1_000, "one request per second");
    advance(Duration::from_millis(999)).await;
    assert_eq!(send(&p, 1), 0);
    advance(Duration::from_millis(1)).await;
    assert_eq!(send(&p, 2), 1);
}

#[tokio::test(start_paused = true)]
async fn sliding_window_holds_at_most_the_limit_in_any_window() {
    let p = provider(Enforcement::SlidingWindow, 10, true);
    assert_eq!(send(&p, 5), 5);
    advance(Duration::from_secs(30)).await;
    assert_eq!(send(&p, 6), 5, "10 within (t - 60 s, t]");
    assert_eq!(retry_after_ms(&p), 30_000, "until the first five leave");
    advance(Duration::from_millis(29_999)).await;
    assert_eq!(send(&p, 1), 0, "the first five are still in the window");
    advance(Duration::from_millis(1)).await;
    assert_eq!(send(&p, 6), 5, "an arrival at t leaves at t + 60 s exactly");
}

#[tokio::test(start_paused = true)]
async fn fixed_windows_reset_at_their_boundaries() {
    let p = provider(
        Enforcement::FixedWindow {
            offset: Duration::ZERO,
        },
        10,
        true,
    );
    advance(Duration::from_secs(59)).await;
    assert_eq!(send(&p, 11), 10);
    assert_eq!(retry_after_ms(&p), 1_000, "until the next window");
    advance(Duration::from_secs(1)).await;
    assert_eq!(send(&p, 11), 10, "20 within a second across the boundary");

    let p = provider(Enforcement::FixedWindow { offset: MINUTE / 2 }, 10, true);
    assert_eq!(
        send(&p, 11),
        10,
        "the stretch before the offset is a window"
    );
    advance(Duration::from_secs(30)).await;
    assert_eq!(send(&p, 11), 10);
    advance(Duration::from_millis(59_999)).await;
    assert_eq!(send(&p, 1), 0);
    advance(Duration::from_millis(1)).await;
    assert_eq!(send(&p, 1), 1);
}

#[tokio::test(start_paused = true)]
async fn short_interval_enforces_a_second_of_the_limit() {
    let short = Enforcement::ShortInterval {
        interval: Duration::from_secs(1),
    };
    let p = provider(short, 120, true);
    assert_eq!(send(&p, 3), 2, "120 per minute is 2 per second");
    assert_eq!(retry_after_ms(&p), 500);
    advance(Duration::from_millis(500)).await;
    assert_eq!(send(&p, 2), 1);
    // Its headers still describe the documented per-minute bucket.
    let r = p.call(0, &ONE);
    let remaining = r
        .headers
        .iter()
        .find(|(n, _)| *n == "x-ratelimit-remaining-requests")
        .map(|(_, v)| v.parse::<u64>().unwrap());
    assert_eq!(
        remaining,
        Some(118),
        "120, less 3 accepted, plus 1 refilled in 0.5 s"
    );
    // A limit below one per interval is still one request at a time.
    let p = provider(short, 30, true);
    assert_eq!(send(&p, 2), 1);
    advance(Duration::from_secs(2)).await;
    assert_eq!(send(&p, 2), 1);
}

#[tokio::test(start_paused = true)]
async fn accounting_and_silent_keys() {
    let truth = Truth {
        requests: 100,
        tokens: 1_000,
        headers: false,
    };
    let req = Request {
        prompt: 100,
        max_tokens: 400,
        output: 50,
    };
    let p = Provider::new(
        &[truth],
        MINUTE,
        Enforcement::TokenBucket,
        Accounting::MaxTokensAtArrival,
        MINUTE,
    );
    assert_eq!(p.charge(&req), 500);
    let ok = p.call(0, &req);
    assert_eq!(
        (ok.status, ok.headers.len()),
        (200, 0),
        "no rate-limit headers"
    );
    assert_eq!(p.call(0, &req).status, 200);
    let refused = p.call(0, &req);
    assert_eq!(refused.status, 429, "500 + 500 used the 1,000 tokens");
    let names: Vec<_> = refused.headers.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["retry-after-ms"]);
    assert_eq!(p.served(0).tokens, 1_000);
    assert_eq!(p.served(0).rejected, 1);
}

// ---------------------------------------------------------------------------------------
// The shape: the limiter configuration it produces satisfies the inequalities of its docs.

fn shape(burst: BurstChoice) -> Shape {
    Shape {
        window: MINUTE,
        interval: Duration::from_secs(1),
        jitter: Duration::from_millis(100),
        burst,
    }
}

#[test]
fn shape_of_the_example_keys() {
    let s = shape(BurstChoice::ShortInterval);
    assert_eq!(s.period(), Duration::from_millis(60_100));
    // Requests: floor(120 × 0.9 / 60) = 1, rate (120 - 1) per 60.1 s.
    assert_eq!(s.burst(120, 1), 1);
    assert_eq!(s.limit(120, 1), Some(119));
    // Tokens: 40,000 × 0.9 / 60 = 600 (above the largest request), rate 39,400 per 60.1 s.
    assert_eq!(s.burst(40_000, 350), 600);
    assert_eq!(s.limit(40_000, 600), Some(39_400));
    // A burst below the largest request is raised to it.
    assert_eq!(s.burst(20_000, 350), 350);
    // 30 per minute: a short-interval bucket of one request; the spacing bound
    // (30 per 60 s + 30 × 0.1 s) binds: floor(30 × 60.1 / 63) = 28.
    assert_eq!(s.burst(30, 1), 1);
    assert_eq!(s.limit(30, 1), Some(28));
    // Nothing safe: a burst as large as the limit.
    assert_eq!(s.limit(10, 10), None);
    assert_eq!(shape(BurstChoice::Smallest).burst(40_000, 350), 350);
}

#[test]
fn shape_satisfies_every_models_inequality() {
    // In exact integers (ns): B + r(W + J) <= L, r <= L/W, and for the short interval either
    // B + rJ <= c (c = max(L·s/W, 1)) or, with B = 1, 1/r - J >= 1/ρ.
    let (w, s_ns, j) = (60_000_000_000u128, 1_000_000_000u128, 100_000_000u128);
    for choice in [BurstChoice::ShortInterval, BurstChoice::Smallest] {
        let s = shape(choice);
        let p = s.period().as_nanos();
        for (largest, limits) in [(1u64, 1..=2_000u64), (350, 350..=200_000)] {
            for l in limits.step_by(7) {
                let b = s.burst(l, largest);
                let Some(n) = s.limit(l, b) else { continue };
                let (l, b, n) = (l as u128, b as u128, n as u128);
                // r = n / p units per ns.
                assert!(b * p + n * (w + j) <= l * p, "sliding: L={l} B={b} n={n}");
                assert!(n * w <= l * p, "nominal: L={l}");
                let c = (l * s_ns).max(w); // units × W
                let continuous = b * p * w + n * j * w <= c * p;
                let spacing = b == 1 && p * w >= (w + l * j) * n;
                assert!(continuous || spacing, "short interval: L={l} B={b} n={n}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Runs: the example's workload, 10 windows.

fn config(how: Enforcement) -> Config {
    Config {
        keys: vec![
            KeySpec {
                name: "alpha",
                requests: 300,
                tokens: 40_000,
                guess: None,
            },
            KeySpec {
                name: "beta",
                requests: 120,
                tokens: 100_000,
                guess: None,
            },
            KeySpec {
                name: "delta",
                requests: 150,
                tokens: 60_000,
                guess: None,
            },
        ],
        window: MINUTE,
        periods: 10,
        enforcement: how,
        accounting: Accounting::Actual,
        policy: Policy::Shaped(shape(BurstChoice::ShortInterval)),
        settle: Settle::Actual,
        replicas: 1,
        clients: 150,
        delay: Duration::from_millis(100),
        latency: (Duration::from_millis(1_800), Duration::from_secs(9)),
        prompt: (50, 150),
        max_tokens: 200,
        low_key: None,
        progress_every: None,
    }
}

fn models() -> [Enforcement; 5] {
    [
        Enforcement::TokenBucket,
        Enforcement::SlidingWindow,
        Enforcement::FixedWindow {
            offset: Duration::ZERO,
        },
        Enforcement::FixedWindow { offset: MINUTE / 2 },
        Enforcement::ShortInterval {
            interval: Duration::from_secs(1),
        },
    ]
}

async fn run(cfg: Config) -> Report {
    let name = cfg.enforcement.name(cfg.window);
    let clock = Arc::new(TokioClock::new());
    let r = sim::run(cfg, clock.clone(), gateway::in_process(clock)).await;
    println!("{}", table::row(&name, &r));
    r
}

#[tokio::test(start_paused = true)]
async fn the_shape_gets_no_429_under_any_model_when_the_provider_keeps_max_tokens() {
    println!("{}", table::header());
    for how in models() {
        let mut cfg = config(how);
        cfg.accounting = Accounting::MaxTokensAtArrival;
        cfg.settle = Settle::Estimate;
        let r = run(cfg).await;
        assert_eq!(r.rejected(), 0, "{how:?}");
        let low = r.lowest();
        assert!(low.binding().1 >= 0.97, "{how:?}: {low:?}");
        // Never more than limit × duration, whatever the model would have allowed.
        assert!(r.highest() <= 1.0, "{how:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_shape_gets_no_429_under_any_model_with_actual_accounting() {
    // Refunds at the end of a response come too late for the shape's small burst (the
    // example's "actual" table shows the utilization this costs); what must hold is safety.
    println!("{}", table::header());
    for how in models() {
        let r = run(config(how)).await;
        assert_eq!(r.rejected(), 0, "{how:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_window_burst_is_refused_by_windowed_providers() {
    // The independent provider catches what the crate's own model could not: today's
    // default admits a window's worth at once and then the full rate, and the network's
    // jitter bunches arrivals further.
    for how in [
        Enforcement::SlidingWindow,
        Enforcement::ShortInterval {
            interval: Duration::from_secs(1),
        },
    ] {
        let mut cfg = config(how);
        cfg.policy = Policy::FullWindow;
        let r = run(cfg).await;
        assert!(r.rejected() > 0, "{how:?}");
    }
    // Against a bucket of capacity = limit it passes, but uses more than limit × duration:
    // the starting burst is not the gateway's to keep.
    let mut cfg = config(Enforcement::TokenBucket);
    cfg.policy = Policy::FullWindow;
    assert!(run(cfg).await.highest() > 1.05);
}

#[tokio::test(start_paused = true)]
async fn uncoordinated_replicas_overrun_even_the_shape() {
    let mut cfg = config(Enforcement::SlidingWindow);
    cfg.replicas = 2;
    assert!(run(cfg).await.rejected() > 0);
}

#[tokio::test(start_paused = true)]
async fn a_learned_limit_is_converted_to_the_shape() {
    // delta starts from a guess; its first response's headers give 150 / 60,000 per minute,
    // which the gateway converts for the bursts it was built with (1 and 360).
    let mut cfg = config(Enforcement::TokenBucket);
    cfg.keys[2].guess = Some((30, 24_000));
    let s = shape(BurstChoice::ShortInterval);
    let want = (s.limit(150, 1).unwrap(), s.limit(60_000, 360).unwrap());
    assert_eq!(want, (149, 59_640));
    let r = run(cfg).await;
    println!("{}", table::learned(&r).expect("delta learns"));
    assert_eq!(r.keys[2].gateway_limits, want);
}

#[tokio::test(start_paused = true)]
#[ignore = "open bug: set_limit raising a limit while waiters are queued rescales their \
            units into the new rate's time, but they keep their old deadlines, so new claims \
            are released between them"]
async fn a_learned_limit_causes_no_429() {
    for how in [
        Enforcement::SlidingWindow,
        Enforcement::ShortInterval {
            interval: Duration::from_secs(1),
        },
    ] {
        let mut cfg = config(how);
        cfg.keys[2].guess = Some((30, 24_000));
        cfg.accounting = Accounting::MaxTokensAtArrival;
        cfg.settle = Settle::Estimate;
        assert_eq!(run(cfg).await.rejected(), 0, "{how:?}");
    }
}

#[tokio::test(start_paused = true)]
#[ignore = "open bug: a refund while waiters are pending lowers the TAT under their \
            deadlines, so a new claim can be released between them"]
async fn refunds_right_after_admission_cause_no_429() {
    for how in [
        Enforcement::SlidingWindow,
        Enforcement::ShortInterval {
            interval: Duration::from_secs(1),
        },
    ] {
        let mut cfg = config(how);
        cfg.settle = Settle::AtAdmission;
        assert_eq!(run(cfg).await.rejected(), 0, "{how:?}");
    }
}
