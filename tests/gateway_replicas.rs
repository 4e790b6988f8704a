//! Two gateway replicas, each with its own `KeyPool` of `RedisLimiter`s, sharing every key's
//! budget through Redis: the provider simulator sees no 429 (`--replicas 2` of the gateway
//! example, shortened). Real time, since Redis keeps the time: every duration is scaled down
//! as in `examples/gateway/replicas.rs`. Skipped (passing) unless `RATEKEEPER_REDIS_URL` names
//! a Redis to use.
#![cfg(all(feature = "http", feature = "redis"))]
// The example's modules, shared: each target uses a part of them.
#![allow(dead_code)]

#[path = "../examples/gateway/gateway.rs"]
mod gateway;
#[path = "../examples/gateway/provider.rs"]
mod provider;
#[path = "../examples/gateway/replicas.rs"]
mod replicas;
#[path = "../examples/gateway/shape.rs"]
mod shape;
#[path = "../examples/gateway/sim.rs"]
mod sim;
#[path = "../examples/gateway/table.rs"]
mod table;

use gateway::Policy;
use provider::{Accounting, Enforcement};
use ratekeeper::ProviderShape;
use sim::{Config, KeySpec};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

fn base() -> Config {
    let key = |name, requests, tokens| KeySpec {
        name,
        requests,
        tokens,
        guess: None,
    };
    Config {
        keys: vec![
            key("alpha", 300, 40_000),
            key("beta", 120, 100_000),
            key("gamma", 200, 30_000),
            key("delta", 150, 60_000),
        ],
        window: MINUTE,
        periods: 0,
        enforcement: Enforcement::SlidingWindow,
        accounting: Accounting::MaxTokensAtArrival,
        policy: Policy::Provider(ProviderShape::new().largest(350)),
        gateway_accounting: ratekeeper::Accounting::Reserved,
        replicas: 1,
        clients: 200,
        delay: Duration::from_millis(100),
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

#[test]
fn two_replicas_sharing_redis_get_no_429() {
    let Ok(url) = std::env::var("RATEKEEPER_REDIS_URL") else {
        eprintln!("RATEKEEPER_REDIS_URL is not set: skipped");
        return;
    };
    // The strictest model for a shared budget (the example runs all five at once), three
    // scaled windows (18 s). The test may run unoptimised, on a machine busy with other
    // work: its real time is noisier than the example's, and a delay between Redis deciding
    // and the request leaving stands for ten times as much at full scale. The shape allows
    // for four times the example's jitter (1.2 s at full scale), which costs the emulated
    // short-interval bound of token keys most of their rate.
    let models = [Enforcement::SlidingWindow];
    let jitter = replicas::JITTER * 4;
    for (how, r) in replicas::run(&url, &base(), &models, 2, 3, jitter) {
        println!("{}", table::row(&how.name(MINUTE), &r));
        for k in r.keys.iter().filter(|k| k.served.rejected > 0) {
            println!(
                "  {}: {} 429s, last at {:?}",
                k.spec.name, k.served.rejected, k.last_rejected
            );
        }
        assert_eq!(r.rejected(), 0, "{how:?}");
        // Together the replicas use each shared budget as far as its (emulated) limiter
        // allows, not one replica's share of it: its binding budget's limit per W + J, over
        // the run.
        let scaled_window = MINUTE / replicas::SCALE;
        let per = (scaled_window + jitter).as_secs_f64();
        let span = 3.0 * scaled_window.as_secs_f64();
        for k in &r.keys {
            let (lr, lt) = k.gateway_limits;
            let used = (k.served.requests as f64 / (lr as f64 * span / per))
                .max(k.served.tokens as f64 / (lt as f64 * span / per));
            println!(
                "  {}: {:.1}% of what its limiter allows",
                k.spec.name,
                used * 100.0
            );
            assert!(used > 0.9, "{how:?}: {} {used}", k.spec.name);
        }
    }
}
