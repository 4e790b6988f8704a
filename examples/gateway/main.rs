//! An LLM gateway in miniature: a pool of four API keys in front of a simulated provider, a few
//! hundred concurrent clients, ten seconds, no network.
//!
//! `cargo run --release --example gateway`
//!
//! Time is scaled: every limit is per **1-second period** (a provider's per-minute limits, 60×
//! faster), so the 10-second run spans ten windows. The provider keeps its own exact buckets
//! per key and answers 429 when one is short; the gateway must never cause one while keeping
//! each key's binding budget at least 98% used. Exits nonzero if it misses either target.
//! See `sim.rs` for the model and why the gateway's burst sits a jitter margin below the
//! provider's.

mod sim;

use ratekeeper::MonotonicClock;
use sim::{Config, KeySpec};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cfg = Config {
        keys: vec![
            // Tokens bind: 300 requests of ~250 tokens would need 75k.
            KeySpec {
                name: "alpha",
                rpm: 300,
                tpm: 40_000,
                guess: None,
            },
            // Requests bind.
            KeySpec {
                name: "beta",
                rpm: 120,
                tpm: 100_000,
                guess: None,
            },
            KeySpec {
                name: "gamma",
                rpm: 200,
                tpm: 30_000,
                guess: None,
            },
            // Learned from headers only: the gateway starts at 10 requests / 2,000 tokens.
            KeySpec {
                name: "delta",
                rpm: 150,
                tpm: 60_000,
                guess: Some((10, 2_000)),
            },
        ],
        period: Duration::from_secs(1),
        jitter_margin: Duration::from_millis(50),
        clients: 200,
        run_for: Duration::from_secs(10),
        latency: (Duration::from_millis(30), Duration::from_millis(150)),
        progress_every: Some(Duration::from_secs(1)),
    };
    println!(
        "{} keys, {} clients, {:?} run; limits per {:?} period (a provider minute scaled 60x); \
         gateway burst = provider burst - {:?} of refill",
        cfg.keys.len(),
        cfg.clients,
        cfg.run_for,
        cfg.period,
        cfg.jitter_margin
    );
    let period = cfg.period;
    let report = sim::run(cfg, Arc::new(MonotonicClock::new())).await;
    println!();
    println!("{}", sim::table(&report, period));
    println!(
        "per period: averages over {:.2} s, the first period's full burst included; util = accepted / \
         (burst + rate x elapsed), the most an exact bucket admits. * = limits learned from headers \
         (gateway ended at {:?}).",
        report.elapsed.as_secs_f64(),
        report.keys.iter().find(|k| k.spec.guess.is_some()).map(|k| k.gateway_limits),
    );
    let (rejected, util) = (report.rejected(), report.min_binding_util());
    println!(
        "provider 429s: {rejected}; lowest binding-budget utilization: {:.2}%",
        util * 100.0
    );
    if rejected > 0 || util < 0.98 {
        eprintln!("TARGET MISSED: want zero 429s at >= 98% utilization");
        std::process::exit(1);
    }
    println!("target met: zero provider 429s at >= 98% utilization of each key's binding budget");
}
