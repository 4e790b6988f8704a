//! 10,000 concurrent waiters on one limiter, on tokio's multi-thread runtime: how many times
//! each waiter's future is polled until admitted, the admitted rate against the limit, and
//! how late each admission comes after its computed deadline. Governor's `until_ready` on
//! the same quota gives the comparison for polls and rate (it computes no deadline).
//!
//! Not a criterion bench: one run of each scenario is the measurement; `cargo bench` runs it.

use ratekeeper::{Burst, Clock, TokenBucketLimiter};
use std::{
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

const WAITERS: usize = 10_000;
const PER_SEC: u64 = 50_000;
const BURST: u64 = 100;

/// Wraps a future and counts how often it is polled.
struct Counted<F> {
    inner: Pin<Box<F>>,
    polls: u32,
}

impl<F: Future> Future for Counted<F> {
    type Output = (F::Output, u32);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.polls += 1;
        let polls = self.polls;
        self.inner.as_mut().poll(cx).map(|out| (out, polls))
    }
}

fn counted<F: Future>(f: F) -> Counted<F> {
    Counted {
        inner: Box::pin(f),
        polls: 0,
    }
}

/// The value at quantile `q` of sorted `v`.
fn pct(v: &[u64], q: f64) -> u64 {
    v[((v.len() - 1) as f64 * q) as usize]
}

fn poll_summary(polls: &[u32]) -> String {
    let mean = polls.iter().map(|&p| f64::from(p)).sum::<f64>() / polls.len() as f64;
    format!(
        "polls/waiter mean {mean:.2}, max {}",
        polls.iter().max().unwrap_or(&0)
    )
}

/// The rate over the waiters admitted after the burst, from the first `start` to `last_ns`.
fn rate(last_ns: f64) -> f64 {
    (WAITERS as u64 - BURST) as f64 / (last_ns / 1e9)
}

async fn ratekeeper_waiters() {
    let l = Arc::new(
        TokenBucketLimiter::builder(PER_SEC, 0)
            .period(std::time::Duration::from_secs(1))
            .request_burst(Burst::Units(BURST))
            .build()
            .expect("valid configuration"),
    );
    let start = l.clock().now();
    let tasks: Vec<_> = (0..WAITERS)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(counted(async move {
                // `acquire` is exactly claim + ready; taking the two steps apart shows the deadline.
                let r = l.reserve(0).expect("fits the burst");
                let deadline = r.ready_at_ns();
                let _permit = r.ready().await;
                (deadline, l.clock().now())
            }))
        })
        .collect();
    let mut polls = Vec::with_capacity(WAITERS);
    let mut late = Vec::with_capacity(WAITERS);
    let mut last = 0;
    for t in tasks {
        let ((deadline, at), p) = t.await.expect("waiter");
        assert!(at >= deadline, "admitted before its deadline");
        polls.push(p);
        late.push(at - deadline);
        last = last.max(at);
    }
    late.sort_unstable();
    println!(
        "ratekeeper acquire: {WAITERS} waiters, {}, admitted {:.0}/s vs limit {PER_SEC}/s, \
         lateness p50 {} us, p99 {} us, max {} us",
        poll_summary(&polls),
        rate((last - start) as f64),
        pct(&late, 0.5) / 1_000,
        pct(&late, 0.99) / 1_000,
        pct(&late, 1.0) / 1_000,
    );
}

async fn governor_waiters() {
    let quota = governor::Quota::per_second(NonZeroU32::new(PER_SEC as u32).expect("not zero"))
        .allow_burst(NonZeroU32::new(BURST as u32).expect("not zero"));
    let g = Arc::new(governor::RateLimiter::direct(quota));
    let start = Instant::now();
    let tasks: Vec<_> = (0..WAITERS)
        .map(|_| {
            let g = g.clone();
            tokio::spawn(async move {
                let (_, polls) = counted(g.until_ready()).await;
                (polls, start.elapsed())
            })
        })
        .collect();
    let mut polls = Vec::with_capacity(WAITERS);
    let mut last = std::time::Duration::ZERO;
    for t in tasks {
        let (p, at) = t.await.expect("waiter");
        polls.push(p);
        last = last.max(at);
    }
    println!(
        "governor until_ready: {WAITERS} waiters, {}, admitted {:.0}/s vs limit {PER_SEC}/s",
        poll_summary(&polls),
        rate(last.as_nanos() as f64),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "waiters: tokio multi-thread runtime, {} worker threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    rt.block_on(ratekeeper_waiters());
    rt.block_on(governor_waiters());
}
