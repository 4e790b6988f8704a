//! One gateway replica sharing a Redis budget: hammers `try_acquire` for a while and prints
//! one line per admission, `<redis time µs> <tokens>`, for an independent checker.
//!
//! `cargo run --features redis --example redis_replica -- redis://127.0.0.1:6390/ KEY RPM TPM PERIOD_MS RUN_MS`
//!
//! The multi-process test in `tests/redis.rs` runs several of these against one key.

use ratekeeper::{Error, RedisLimiter};
use std::io::Write;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    let (rpm, tpm, period_ms, run_ms) = (num(2), num(3), num(4), num(5));
    let limiter = RedisLimiter::builder(arg(0), arg(1), rpm, tpm)
        .period(Duration::from_millis(period_ms.max(1)))
        .build()
        .await?;
    let out = std::io::stdout();
    let mut out = out.lock();
    let end = Instant::now() + Duration::from_millis(run_ms);
    let mut i = 0u64;
    while Instant::now() < end {
        i += 1;
        let tokens = 1 + (i * 7919 + std::process::id() as u64) % 20; // 1..=20, varied
        if let Ok(permit) = limiter.try_acquire(tokens).await {
            let t = permit.admitted_at_us().unwrap_or(0);
            let _ = writeln!(out, "{t} {tokens}");
        }
    }
    Ok(())
}
