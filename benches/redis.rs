//! Through one local Redis: admissions per second, latency p50/p99 of one `try_acquire`
//! (one script call), and the script's own cost inside Redis (INFO commandstats).
//!
//! `RATEKEEPER_REDIS_URL=redis://127.0.0.1:6390/ cargo bench --features redis --bench redis`

use ratekeeper::{Error, RedisLimiter};
use std::time::{Duration, Instant};

/// Per day: high enough that nothing here is denied (about 300,000 calls per run), low enough
/// that the state persists between calls, as for any busy key (with limits far above the
/// traffic, every call would find the state expired and create it afresh).
const REQUESTS_PER_DAY: u64 = 1_000_000;
const TOKENS_PER_DAY: u64 = 100_000_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let Ok(url) = std::env::var("RATEKEEPER_REDIS_URL") else {
        eprintln!("SKIPPED: set RATEKEEPER_REDIS_URL to benchmark the Redis backend");
        return Ok(());
    };
    let build = || {
        RedisLimiter::builder(url.as_str(), "bench", REQUESTS_PER_DAY, TOKENS_PER_DAY)
            .period(Duration::from_secs(86_400))
            .build()
    };
    let limiter = build().await?;
    forget(&url, limiter.keys()).await; // an earlier run's usage
    reset_stats(&url).await;

    // Latency: one caller, one call at a time.
    let mut lat = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        limiter.try_acquire(10).await?;
        lat.push(t.elapsed());
    }
    lat.sort_unstable();
    let pct = |p: usize| lat[lat.len() * p / 100 - 1];
    println!(
        "redis try_acquire latency, 1 caller: p50 {:?}, p99 {:?}, max {:?}",
        pct(50),
        pct(99),
        lat[lat.len() - 1]
    );

    // Throughput: concurrent callers over a few connections, for 3 s.
    for (conns, tasks_per_conn) in [(1, 1), (1, 16), (4, 16)] {
        let mut handles = Vec::new();
        let end = Instant::now() + Duration::from_secs(3);
        for _ in 0..conns {
            let l = build().await?;
            for _ in 0..tasks_per_conn {
                let l = l.clone();
                handles.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < end {
                        if l.try_acquire(10).await.is_ok() {
                            n += 1;
                        }
                    }
                    n
                }));
            }
        }
        let mut total = 0;
        for h in handles {
            total += h.await.unwrap_or(0);
        }
        println!(
            "redis admissions/s, {conns} connection(s) x {tasks_per_conn} task(s): {:.0}",
            total as f64 / 3.0
        );
    }
    println!("script cost inside Redis: {}", script_stats(&url).await);
    forget(&url, limiter.keys()).await;
    Ok(())
}

async fn forget(url: &str, (state, limits): (&str, &str)) {
    if let Ok(mut c) = connect(url).await {
        let _: Result<(), _> = redis::cmd("DEL")
            .arg(state)
            .arg(limits)
            .query_async(&mut c)
            .await;
    }
}

async fn reset_stats(url: &str) {
    if let Ok(mut c) = connect(url).await {
        let _: Result<(), _> = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut c)
            .await;
    }
}

async fn connect(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

/// The evalsha line of INFO commandstats: calls and µs per call of the script.
async fn script_stats(url: &str) -> String {
    let Ok(mut c) = connect(url).await else {
        return "unavailable".into();
    };
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha") || l.starts_with("cmdstat_eval:"))
        .collect::<Vec<_>>()
        .join("; ")
}
