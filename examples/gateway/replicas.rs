//! `--replicas N`: N gateway replicas, each with its own `KeyPool`, whose keys are
//! `RedisLimiter`s of the same names, so every replica draws on each key's one budget.
//!
//! # Time
//!
//! Redis keeps the time (`TIME` inside its script), so this run is real time, not tokio's
//! paused clock. Every duration of the workload is divided by [`SCALE`] alike: a 6-second
//! window, 0-10 ms of network delay each way, a 100 ms short interval, 180-900 ms of
//! generation, cooldowns from 100 ms. Five windows take 30 seconds.
//!
//! # The shape, emulated
//!
//! The Redis backend refills its buckets at limit / window and refuses `Burst::Provider`
//! (its script has no separate rate), so these keys get the shape the way the simulator
//! computes it (`shape.rs`): `Burst::Units(B)` and the shape's rate as a limit per `W + J`,
//! with the limits known (a learned one would need the same conversion). Its jitter is the
//! simulated delay plus an allowance for this machine: a waiter released from Redis time
//! sleeps on the local clock, and on a loaded machine its timer and the Redis round trip
//! add milliseconds of their own, which at this scale stand for tenths of seconds.

use crate::gateway::{LimiterSpec, Policy};
use crate::provider::Enforcement;
use crate::shape::Shape;
use crate::sim::{self, Config, Report};
use crate::table;
use ratekeeper::{Accounting, RedisLimiter, TokioClock};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every duration of the workload is divided by this.
pub const SCALE: u32 = 10;

/// The jitter the emulated shape allows for: the simulated 10 ms, plus 20 ms for Redis round
/// trips and timers on a busy machine (tokio's timers alone round up to the millisecond).
pub const JITTER: Duration = Duration::from_millis(30);

/// Windows per run: 30 seconds.
pub const PERIODS: u32 = 5;

/// `base` (a full-scale configuration) on time divided by [`SCALE`], with `replicas` replicas
/// sharing the keys through Redis, `periods` windows long, under `how`, the shape allowing
/// for `jitter` (in scaled time).
pub fn scaled(
    base: &Config,
    how: Enforcement,
    replicas: usize,
    periods: u32,
    jitter: Duration,
) -> Config {
    let s = |d: Duration| d / SCALE;
    let window = s(base.window);
    let enforcement = match how {
        Enforcement::FixedWindow { offset } => Enforcement::FixedWindow { offset: s(offset) },
        Enforcement::ShortInterval { interval } => Enforcement::ShortInterval {
            interval: s(interval),
        },
        other => other,
    };
    let interval = s(Duration::from_secs(1));
    Config {
        window,
        periods,
        enforcement,
        policy: Policy::Emulated(Shape {
            window,
            interval,
            jitter,
            largest: base.prompt.1 + base.max_tokens,
        }),
        gateway_accounting: Accounting::Reserved,
        replicas,
        delay: s(base.delay),
        latency: (s(base.latency.0), s(base.latency.1)),
        cooldowns: (s(base.cooldowns.0), s(base.cooldowns.1)),
        progress_every: base.progress_every.map(|_| (periods / 5).max(1)),
        label: format!("[{}]", how.name(base.window)),
        // Known limits: the emulation cannot learn.
        keys: base
            .keys
            .iter()
            .map(|k| crate::sim::KeySpec { guess: None, ..*k })
            .collect(),
        low_key: None,
        // 800 clients' first calls at once would queue Redis replies for longer than the
        // jitter allowed for: they start within a tenth of the window (six full-scale
        // seconds), as a gateway's traffic ramps up.
        start_spread: window / 10,
        ..base.clone()
    }
}

/// Runs every model in `models` at once (each its own provider and Redis keys), each with
/// `replicas` replicas of `base`'s clients, on one multi-threaded runtime; the shape allows
/// for `jitter`.
pub fn run(
    url: &str,
    base: &Config,
    models: &[Enforcement],
    replicas: usize,
    periods: u32,
    jitter: Duration,
) -> Vec<(Enforcement, Report)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // Fresh names per run: nothing left over from an earlier one.
    let run_id = format!(
        "rk-gateway-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (m, &how) in models.iter().enumerate() {
            let cfg = scaled(base, how, replicas, periods, jitter);
            let (url, prefix) = (url.to_owned(), format!("{run_id}-{m}:"));
            tasks.push(tokio::spawn(async move {
                let clock = Arc::new(TokioClock::new());
                let make = move |s: &LimiterSpec| {
                    let (s, url, prefix) = (*s, url.clone(), prefix.clone());
                    async move {
                        let l = RedisLimiter::builder(
                            url,
                            format!("key{}", s.key),
                            s.requests,
                            s.tokens,
                        )
                        .prefix(prefix)
                        .period(s.period)
                        .request_burst(s.request_burst)
                        .token_burst(s.token_burst)
                        .timeout(Duration::from_secs(1))
                        .build()
                        .await
                        .expect("redis at RATEKEEPER_REDIS_URL");
                        // Loads the script before the run's clock matters.
                        let _ = l.usage().await;
                        l
                    }
                };
                (how, sim::run(cfg, clock, false, make).await)
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("a model's run"));
        }
        out
    })
}

/// The `--replicas N` run: every model at once; 0 unless a model saw a 429.
pub fn main(url: &str, replicas: usize, base: Config, models: &[Enforcement]) -> i32 {
    let periods = PERIODS;
    let window = base.window / SCALE;
    println!(
        "{replicas} replicas x {} clients, each replica its own KeyPool of RedisLimiters sharing \
         the 4 keys ({url}); real time scaled by 1/{SCALE}: {periods} windows of {:?}, network \
         delay 0-{:?} each way; the shape emulated with {:?} of jitter. The {} models run at \
         once.",
        base.clients,
        window,
        base.delay / SCALE,
        JITTER,
        models.len()
    );
    let started = Instant::now();
    let rows = run(url, &base, models, replicas, periods, JITTER);
    println!("\nREPLICAS through Redis, OpenAI accounting, known limits");
    println!("{}", table::header());
    let mut missed = 0;
    for (how, r) in &rows {
        println!("{}", table::row(&how.name(base.window), r));
        for k in r.keys.iter().filter(|k| k.served.rejected > 0) {
            println!(
                "      {}: {} 429s, the last {:?} into the run (window {})",
                k.spec.name,
                k.served.rejected,
                k.last_rejected.unwrap_or_default(),
                table::last_window(k.last_rejected.unwrap_or_default(), window)
            );
        }
        missed += r.rejected();
    }
    println!(
        "({} runs at once in {:.1}s of wall time; waits are in scaled time)",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    if missed > 0 {
        eprintln!("TARGET MISSED: {missed} 429s with {replicas} replicas sharing Redis");
        return 1;
    }
    println!("target met: 0 429s with {replicas} replicas sharing each key through Redis");
    0
}
