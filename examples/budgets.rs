//! Every budget a provider enforces, decided together.
//!
//! `cargo run --release --example budgets`
//!
//! Two provider keys, each with its own clients, on tokio's paused clock (twenty provider
//! minutes run in a moment, the same every run):
//!
//! - an **Anthropic-style** key: 50 requests, 40,000 input tokens and 8,000 output tokens per
//!   minute;
//! - an **OpenAI-style** key: 60 requests and 20,000 tokens per minute, and 120 requests per
//!   day (a free tier), which runs out a little past halfway.
//!
//! A request's prompt is known when it is sent, its output only when the answer is back: each
//! client admits on the prompt plus `max_tokens`, waits out the generation, and settles with
//! the output actually produced. An independent checker (exact integer arithmetic, nothing of
//! the crate) then verifies, budget by budget, that no window of release instants holds more
//! than `burst + limit × window / period`. Exits nonzero if any budget went over.

use ratekeeper::{Budget, Clock, Cost, Limit, TokenBucketLimiter, TokioClock};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const RUN: Duration = Duration::from_secs(20 * 60);
const CLIENTS: u64 = 10;

/// One admission as the checker sees it: release instant (ns since start) and cost.
type Log = Arc<Mutex<Vec<(u64, Cost)>>>;

/// splitmix64: deterministic, so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// A client: prompt known up front, output known only after the call.
async fn client(key: Arc<TokenBucketLimiter<TokioClock>>, seed: u64, log: Log) {
    let mut rng = Rng(seed);
    let end = RUN.as_nanos() as u64;
    loop {
        let prompt = rng.range(300, 3_000);
        let max_tokens = 1_000;
        let Ok(permit) = key.acquire(Cost::new(prompt, max_tokens)).await else {
            return;
        };
        // Released now: with paused time the clock reads exactly the deadline.
        let released = key.clock().now();
        if released >= end {
            return; // admitted after the run: not counted (and not settled: kept as spent)
        }
        tokio::time::sleep(Duration::from_millis(rng.range(2_000, 20_000))).await;
        let output = rng.range(20, max_tokens);
        key.settle(permit, Cost::new(prompt, output))
            .expect("the key's own permit");
        log.lock()
            .unwrap()
            .push((released, Cost::new(prompt, output)));
    }
}

/// The largest excess over `burst + limit × (b - a) / period` of any window `[a, b]` of
/// `events` (time, units), in units × period; `<= 0` means the bound holds.
fn worst_window(mut events: Vec<(u64, u64)>, limit: u64, burst: u64, period: u64) -> i128 {
    events.sort_unstable();
    let (l, p) = (limit as i128, period as i128);
    let (mut sum, mut lowest, mut worst) = (0i128, i128::MAX, i128::MIN);
    for (t, n) in events {
        // Windows ending at this event start at some event i: their excess is
        // (S_j - S_(i-1))·P - L·(t_j - t_i) - B·P; keep the smallest S_(i-1)·P - L·t_i.
        lowest = lowest.min(sum - l * t as i128);
        sum += n as i128 * p;
        worst = worst.max(sum - l * t as i128 - lowest - burst as i128 * p);
    }
    worst
}

/// Prints one key's budgets and checks each; returns whether every bound held.
fn report(name: &str, key: &TokenBucketLimiter<TokioClock>, log: &[(u64, Cost)]) -> bool {
    let run_ns = RUN.as_nanos() as f64;
    let mut ok = true;
    println!("{name}: {} requests admitted and settled", log.len());
    for (limit, usage) in key.limits().iter().zip(key.usage().budgets()) {
        let period = limit.window().as_nanos() as u64;
        let events: Vec<(u64, u64)> = log
            .iter()
            .map(|(t, c)| {
                let n = match limit.budget() {
                    Budget::Requests => 1,
                    Budget::InputTokens => c.input,
                    Budget::OutputTokens => c.output,
                    _ => c.input + c.output,
                };
                (*t, n)
            })
            .collect();
        let admitted: u64 = events.iter().map(|e| e.1).sum();
        let excess = worst_window(events, limit.count(), usage.capacity, period);
        // Utilization in the units users read: admitted ÷ (limit × duration), for windows
        // the run spans; a daily budget in a 20-minute run is read against what it allows.
        let per_run = limit.count() as f64 * run_ns / period as f64;
        let util = match period as f64 <= run_ns {
            true => format!("{:5.1}%", admitted as f64 / per_run * 100.0),
            false => "    -".to_string(),
        };
        let allowed = usage.capacity as f64 + per_run;
        println!(
            "  {:<30} admitted {:>9}  {util} of limit × duration  {:5.1}% of burst + rate × \
             run  tightest window {}",
            limit.to_string(),
            admitted,
            admitted as f64 / allowed * 100.0,
            if excess <= 0 {
                format!("{:.1} units under", -(excess as f64) / period as f64)
            } else {
                ok = false;
                format!("OVER by {:.1} units", excess as f64 / period as f64)
            }
        );
    }
    ok
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    let clock = TokioClock::new();
    let anthropic = Arc::new(
        TokenBucketLimiter::with_limits([
            Limit::requests(50),
            Limit::input_tokens(40_000),
            Limit::output_tokens(8_000),
        ])
        .clock(clock)
        .build()
        .expect("valid limits"),
    );
    let openai = Arc::new(
        TokenBucketLimiter::with_limits([
            Limit::requests(60),
            Limit::tokens(20_000),
            Limit::requests(120).per_day(),
        ])
        .clock(clock)
        .build()
        .expect("valid limits"),
    );
    let (a_log, o_log): (Log, Log) = Default::default();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        tasks.push(tokio::spawn(client(anthropic.clone(), i, a_log.clone())));
        tasks.push(tokio::spawn(client(
            openai.clone(),
            1_000 + i,
            o_log.clone(),
        )));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    println!(
        "{} clients per key, {:?} of provider time (tokio paused clock)\n",
        CLIENTS, RUN
    );
    let a_ok = report("anthropic-style key", &anthropic, &a_log.lock().unwrap());
    let o_ok = report("openai-style key", &openai, &o_log.lock().unwrap());
    if !(a_ok && o_ok) {
        eprintln!("OVER-ADMISSION: a budget's window bound failed");
        std::process::exit(1);
    }
    println!("\nevery budget within burst + rate × window over every window of release instants");
}
