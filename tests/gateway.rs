//! The gateway example's simulation, shortened and on tokio's paused clock: deterministic,
//! no wall-clock sleeping. Same model as `cargo run --release --example gateway`.

#[path = "../examples/gateway/sim.rs"]
mod sim;

use ratekeeper::TokioClock;
use sim::{Config, KeySpec};
use std::sync::Arc;
use std::time::Duration;

fn config(run_for: Duration) -> Config {
    Config {
        keys: vec![
            KeySpec {
                name: "alpha",
                rpm: 300,
                tpm: 40_000,
                guess: None,
            },
            KeySpec {
                name: "beta",
                rpm: 120,
                tpm: 100_000,
                guess: None,
            },
            KeySpec {
                name: "delta",
                rpm: 150,
                tpm: 60_000,
                guess: Some((10, 2_000)),
            },
        ],
        period: Duration::from_secs(1),
        jitter_margin: Duration::from_millis(50),
        clients: 150,
        run_for,
        latency: (Duration::from_millis(30), Duration::from_millis(150)),
        progress_every: None,
    }
}

#[tokio::test(start_paused = true)]
async fn zero_429s_at_98_percent_of_the_binding_budget() {
    let cfg = config(Duration::from_secs(20));
    let report = sim::run(cfg.clone(), Arc::new(TokioClock::new())).await;
    println!("{}", sim::table(&report, cfg.period));
    assert_eq!(report.rejected(), 0, "the provider answered 429");
    assert!(
        report.min_binding_util() >= 0.98,
        "utilization {}",
        report.min_binding_util()
    );
    // The guessed key learned its true limits from the headers alone.
    let delta = report.keys.iter().find(|k| k.spec.guess.is_some()).unwrap();
    assert_eq!(delta.gateway_limits, (150, 60_000));
    // No key is ever pushed past what an exact bucket allows.
    for k in &report.keys {
        assert!(k.request_util <= 1.0 && k.token_util <= 1.0, "{k:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn with_no_scheduling_jitter_even_a_zero_margin_causes_no_429() {
    // Under paused time there is no scheduling jitter, so even a zero margin never causes a
    // 429: what the gateway admits at an instant, the provider sees at that same instant.
    let mut cfg = config(Duration::from_secs(5));
    cfg.jitter_margin = Duration::ZERO;
    let report = sim::run(cfg, Arc::new(TokioClock::new())).await;
    assert_eq!(report.rejected(), 0);
}
