//! Quickstart: one limiter, a burst of callers, the denials they see, and the async waiter.
//!
//! `cargo run --release --example quickstart`

use ratekeeper::{Error, TokenBucketLimiter};
use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // 120 requests and 20,000 tokens per minute, at most one second's worth at once.
    let limiter = TokenBucketLimiter::builder(120, 20_000)
        .request_burst(ratekeeper::Burst::Window(Duration::from_secs(1)))
        .token_burst(ratekeeper::Burst::Window(Duration::from_secs(10)))
        .build()?;
    println!("limits: {:?}", limiter.usage());

    // Non-blocking: admit what fits now, see why the rest does not.
    for i in 0..4 {
        match limiter.try_acquire(500) {
            Ok(permit) => {
                println!("request {i}: admitted for {} tokens", permit.tokens());
                limiter.settle(permit, 320).unwrap(); // the response used fewer tokens
            }
            Err(Error::RateLimitExceeded(d)) => println!(
                "request {i}: denied, {} budget short, retry after {:?}",
                d.budget(),
                d.retry_after()
            ),
            Err(e) => return Err(e),
        }
    }
    println!("usage now: {:?}", limiter.usage());

    // Blocking: ten callers wait their turn, each sleeping once until its computed slot.
    let start = Instant::now();
    for i in 0..10 {
        let permit = limiter.acquire(400).await?;
        println!("waiter {i}: admitted after {:?}", start.elapsed());
        limiter.settle(permit, 400).unwrap();
    }
    println!("final usage: {:?}", limiter.usage());
    Ok(())
}
