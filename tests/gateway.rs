//! The gateway example's parts, checked on tokio's paused clock (deterministic, no
//! wall-clock sleeping): the provider's enforcement and accounting models against their
//! definitions, the library's `ProviderShape` against the simulator's own arithmetic of the
//! shape (`shape.rs`), and shortened runs of `cargo run --release --example gateway` (fewer
//! windows and clients) asserting what the example asserts.

// The example's modules, shared: each target uses a part of them.
#![allow(dead_code)]

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

use gateway::Policy;
use provider::{Accounting, Enforcement, Provider, Request, Truth};
use ratekeeper::{ProviderShape, TokioClock};
use shape::Shape;
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
    Provider::new(
        &[truth],
        MINUTE,
        how,
        Accounting::ActualAtArrival,
        MINUTE * 10,
    )
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

#[tokio::test(start_paused = true)]
async fn an_adjusted_charge_comes_down_at_completion_in_every_model() {
    // 1,000 tokens a minute; prompt 100 + max_tokens 400 charged at arrival, 150 used.
    let truth = Truth {
        requests: 100,
        tokens: 1_000,
        headers: true,
    };
    let req = Request {
        prompt: 100,
        max_tokens: 400,
        output: 50,
    };
    let models = [
        Enforcement::TokenBucket,
        Enforcement::SlidingWindow,
        Enforcement::FixedWindow {
            offset: Duration::ZERO,
        },
    ];
    for how in models {
        let p = Provider::new(&[truth], MINUTE, how, Accounting::EstimateAdjusted, MINUTE);
        let a = p.call(0, &req).ticket.expect("accepted");
        let b = p.call(0, &req).ticket.expect("accepted");
        assert_eq!(
            p.call(0, &req).status,
            429,
            "{how:?}: 1,000 charged at arrival"
        );
        p.complete(0, a, &req);
        // 350 back: a request estimated at 500 still does not fit, one at 350 does.
        assert_eq!(p.call(0, &req).status, 429, "{how:?}");
        let small = Request {
            prompt: 100,
            max_tokens: 250,
            output: 250,
        };
        assert_eq!(p.call(0, &small).status, 200, "{how:?}");
        p.complete(0, b, &req);
        assert_eq!(
            p.served(0).tokens,
            150 + 150 + 350,
            "{how:?}: what it finally counted"
        );
    }
    // Fixed windows: a completion after its window ended gives nothing to the next one.
    let p = Provider::new(
        &[truth],
        MINUTE,
        Enforcement::FixedWindow {
            offset: Duration::ZERO,
        },
        Accounting::EstimateAdjusted,
        MINUTE * 2,
    );
    let a = p.call(0, &req).ticket.unwrap();
    p.call(0, &req).ticket.unwrap();
    advance(MINUTE).await;
    p.call(0, &req).ticket.unwrap();
    p.call(0, &req).ticket.unwrap();
    p.complete(0, a, &req);
    assert_eq!(p.call(0, &req).status, 429);
    // OpenAI's accounting keeps the estimate.
    let p = Provider::new(
        &[truth],
        MINUTE,
        Enforcement::TokenBucket,
        Accounting::MaxTokensAtArrival,
        MINUTE,
    );
    let a = p.call(0, &req).ticket.unwrap();
    p.complete(0, a, &req);
    assert_eq!(p.served(0).tokens, 500);
}

// ---------------------------------------------------------------------------------------
// The shape: the library's formula against the simulator's arithmetic of it.

const JITTER: Duration = Duration::from_millis(100);

fn sim_shape(largest: u64) -> Shape {
    Shape {
        window: MINUTE,
        interval: Duration::from_secs(1),
        jitter: JITTER,
        largest,
    }
}

/// The simulator's rate for `limit` with its burst, in whole units per minute.
fn sim_sustained(s: &Shape, limit: u64, burst: u64) -> Option<u64> {
    s.rate(limit, burst).map(|r| r.per(MINUTE))
}

#[test]
fn the_library_shape_is_the_simulators_where_both_apply() {
    // Requests (one unit) from 26 a minute up, tokens whose largest request fits the short
    // burst: the same burst, the same sustained rate.
    let cases = (26..=3_000u64)
        .step_by(7)
        .map(|l| (1, l))
        .chain((23_400..=400_000).step_by(997).map(|l| (350, l)));
    let mut checked = 0;
    for (largest, l) in cases {
        let lib = ProviderShape::new().largest(largest);
        let sim = sim_shape(largest);
        let b = sim.burst(l, largest);
        assert_eq!(lib.burst(l, MINUTE), b, "burst of {l}");
        let want = sim_sustained(&sim, l, b).expect("a safe rate");
        assert_eq!(lib.sustained(l, MINUTE), want, "rate of {l}");
        checked += 1;
    }
    assert!(checked > 800);
}

#[test]
fn where_the_library_departs_from_the_simulator_it_keeps_the_bound_it_claims() {
    let (w, j) = (MINUTE.as_nanos(), JITTER.as_nanos());
    // Below 26 a minute a one-unit burst takes the spacing bound, L per (W + L·J), in every
    // model (the simulator only in the short interval's): arrivals W/L apart.
    for l in 1..=25u64 {
        let got = ProviderShape::new().sustained(l, MINUTE) as u128;
        assert_eq!(ProviderShape::new().burst(l, MINUTE), 1);
        assert_eq!(got, (l as u128 * w) / (w + l as u128 * j), "{l}");
    }
    // A largest request above L·(s - J)/W: the sliding bound only, (L - n) per (W + J); the
    // simulator keeps the short bound, which would cut the rate to (c - n)/J or nothing.
    for l in (1_000..23_000u64).step_by(101) {
        let n = 350.min(l - 1);
        let lib = ProviderShape::new().largest(350);
        assert_eq!(lib.burst(l, MINUTE), n);
        let sliding = (l - n) as u128 * w / (w + j);
        assert_eq!(lib.sustained(l, MINUTE) as u128, sliding, "{l}");
        if let Some(sim) = sim_sustained(&sim_shape(350), l, n) {
            assert!(sim as u128 <= sliding);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Runs: the example's workload, shortened.

const LARGEST: u64 = 350;

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
        accounting: Accounting::MaxTokensAtArrival,
        policy: Policy::Provider(ProviderShape::new().largest(LARGEST)),
        gateway_accounting: ratekeeper::Accounting::Reserved,
        replicas: 1,
        clients: 150,
        delay: JITTER,
        latency: (Duration::from_millis(1_800), Duration::from_secs(9)),
        prompt: (50, 150),
        max_tokens: 200,
        low_key: None,
        progress_every: None,
        label: String::new(),
        start_spread: Duration::from_millis(20),
        cooldowns: (Duration::from_secs(1), Duration::from_secs(3_600)),
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
    let r = sim::run(cfg, clock.clone(), true, gateway::in_process(clock)).await;
    println!("{}", table::row(&name, &r));
    r
}

#[tokio::test(start_paused = true)]
async fn the_default_gets_no_429_under_any_model_with_openais_accounting() {
    println!("{}", table::header());
    for how in models() {
        let r = run(config(how)).await;
        assert_eq!(r.rejected(), 0, "{how:?}");
        let low = r.lowest();
        let want = match how {
            Enforcement::ShortInterval { .. } => 0.95,
            _ => 0.97,
        };
        assert!(low.binding().1 >= want, "{how:?}: {low:?}");
        // Never more than limit × duration, whatever the model would have allowed.
        assert!(r.highest() <= 1.0, "{how:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_default_shape_gets_no_429_when_the_provider_adjusts_or_knows_the_actual_tokens() {
    // Refunds at the end of a response come too late for the shape's small burst, and while
    // waiters are queued: the utilization is what the estimate over-states (the example
    // prints it); what must hold is safety.
    println!("{}", table::header());
    for accounting in [Accounting::EstimateAdjusted, Accounting::ActualAtArrival] {
        for how in [
            Enforcement::SlidingWindow,
            Enforcement::ShortInterval {
                interval: Duration::from_secs(1),
            },
        ] {
            let mut cfg = config(how);
            cfg.accounting = accounting;
            cfg.gateway_accounting = ratekeeper::Accounting::Actual;
            let r = run(cfg).await;
            assert_eq!(r.rejected(), 0, "{accounting:?} {how:?}");
            assert!(r.lowest().binding().1 >= 0.75, "{accounting:?} {how:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_window_burst_is_refused_by_windowed_providers() {
    // The independent provider catches what the crate's own model could not: a window's
    // worth at once and then the full rate, bunched further by the network's jitter.
    for how in [
        Enforcement::SlidingWindow,
        Enforcement::ShortInterval {
            interval: Duration::from_secs(1),
        },
    ] {
        let mut cfg = config(how);
        cfg.policy = Policy::FullWindow;
        cfg.gateway_accounting = ratekeeper::Accounting::Actual;
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
async fn a_learned_limit_goes_in_unconverted_and_causes_no_429() {
    for how in [
        Enforcement::SlidingWindow,
        Enforcement::ShortInterval {
            interval: Duration::from_secs(1),
        },
    ] {
        // delta starts from a guess; its first response's headers give 150 / 60,000 a minute,
        // which its limiter takes as they are (the shape is its burst policy).
        let mut cfg = config(how);
        cfg.keys[2].guess = Some((30, 24_000));
        let r = run(cfg).await;
        println!("{}", table::learned(&r).expect("delta learns"));
        assert_eq!(r.keys[2].gateway_limits, (150, 60_000));
        assert_eq!(r.rejected(), 0, "{how:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_whose_real_limit_is_lower_converges_without_headers() {
    // alpha really has 2/3 of its configuration and says only retry-after-ms: its 429s cut
    // its limits until they hold. Two models (the example runs all five over 60 windows).
    for how in [
        Enforcement::SlidingWindow,
        Enforcement::FixedWindow { offset: MINUTE / 2 },
    ] {
        let mut cfg = config(how);
        cfg.low_key = Some(0);
        cfg.periods = 40;
        let r = run(cfg).await;
        let alpha = &r.keys[0];
        let last = alpha.last_rejected.expect("a lower limit draws 429s");
        println!(
            "  alpha: {} 429s, the last in window {}, {:.2}% of its real limit",
            alpha.served.rejected,
            table::last_window(last, MINUTE),
            alpha.binding().1 * 100.0
        );
        assert!(alpha.served.rejected <= 20, "{how:?}");
        assert!(table::last_window(last, MINUTE) <= 20, "{how:?}");
        assert!(alpha.binding().1 >= 0.90, "{how:?}");
        let others: u64 = r.keys[1..].iter().map(|k| k.served.rejected).sum();
        assert_eq!(others, 0);
    }
}
