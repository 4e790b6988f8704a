//! One simulated run: gateway replicas, clients, the network between them and the provider.
//!
//! Each client loops: draw a prompt, estimate it as prompt + `max_tokens`, wait for a permit
//! from its replica's pool, send (the provider sees the request an up-delay later), receive the
//! headers a down-delay after that and learn from them, wait out the generation (the provider
//! completes the response, and may adjust its charge, a down-delay before the gateway sees the
//! end), settle with the tokens used. On a 429 the permit is settled with nothing (the provider
//! charged nothing) and the client asks again. Delays are drawn per request, uniformly in
//! `[0, delay]` each way.
//!
//! Time is tokio's: on a paused runtime a whole run takes a fraction of a second of wall
//! time at full scale, and is deterministic (a fixed seed per client). A run against a shared
//! backend (Redis, whose time is real) runs on real time, every duration scaled alike.

use crate::gateway::{self, Gateway, KeyConfig, LimiterSpec, Policy};
use crate::provider::{Accounting, Enforcement, Provider, Request, Served, Truth};
use ratekeeper::{Clock, RateLimiter};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One provider key.
#[derive(Clone, Copy, Debug)]
pub struct KeySpec {
    /// Its name.
    pub name: &'static str,
    /// Requests per window, as configured (and, unless it is the low key, enforced).
    pub requests: u64,
    /// Tokens per window, likewise.
    pub tokens: u64,
    /// `Some((requests, tokens))`: the gateway starts from this guess and learns the rest
    /// from headers.
    pub guess: Option<(u64, u64)>,
}

/// A run's parameters.
#[derive(Clone, Debug)]
pub struct Config {
    /// The keys.
    pub keys: Vec<KeySpec>,
    /// The window limits are counted over.
    pub window: Duration,
    /// How long clients send, in windows.
    pub periods: u32,
    /// How the provider enforces.
    pub enforcement: Enforcement,
    /// How the provider charges tokens.
    pub accounting: Accounting,
    /// How the gateway shapes its limiters.
    pub policy: Policy,
    /// What the gateway's limiters give back when a permit is settled.
    pub gateway_accounting: ratekeeper::Accounting,
    /// Gateway replicas, each with its own pool over all keys; clients are dealt round-robin.
    pub replicas: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// The most one network leg takes (each way, uniform from 0).
    pub delay: Duration,
    /// Generation latency range (uniform).
    pub latency: (Duration, Duration),
    /// Prompt tokens range (uniform).
    pub prompt: (u64, u64),
    /// Every request's `max_tokens`; the output is uniform in `[max_tokens / 2, max_tokens]`.
    pub max_tokens: u64,
    /// `Some(i)`: key `i`'s real limits are 2/3 of its configuration and it sends no
    /// rate-limit headers, only `retry-after-ms` on a 429.
    pub low_key: Option<usize>,
    /// Print a progress line every this many windows.
    pub progress_every: Option<u32>,
    /// What progress lines start with.
    pub label: String,
    /// Clients start uniformly within this long of the run's start.
    pub start_spread: Duration,
    /// The cooldown range after a 429 where the gateway keeps it itself (an emulated shape);
    /// scaled with time in a scaled run.
    pub cooldowns: (Duration, Duration),
}

impl Config {
    /// What the provider really enforces on key `i`.
    pub fn truth(&self, i: usize) -> Truth {
        let k = &self.keys[i];
        match self.low_key {
            Some(low) if low == i => Truth {
                requests: k.requests * 2 / 3,
                tokens: k.tokens * 2 / 3,
                headers: false,
            },
            _ => Truth {
                requests: k.requests,
                tokens: k.tokens,
                headers: true,
            },
        }
    }

    /// The sending time.
    pub fn duration(&self) -> Duration {
        self.window * self.periods
    }
}

/// One key's outcome.
#[derive(Clone, Debug)]
pub struct KeyReport {
    /// The key.
    pub spec: KeySpec,
    /// What the provider accepted and refused.
    pub served: Served,
    /// Requests accepted ÷ (real limit × windows).
    pub request_util: f64,
    /// Tokens charged ÷ (real limit × windows).
    pub token_util: f64,
    /// The limits the first replica's limiter holds at the end.
    pub gateway_limits: (u64, u64),
    /// When the last 429 came, from the start.
    pub last_rejected: Option<Duration>,
}

impl KeyReport {
    /// The binding budget (the more used) and its utilization.
    pub fn binding(&self) -> (&'static str, f64) {
        if self.request_util >= self.token_util {
            ("requests", self.request_util)
        } else {
            ("tokens", self.token_util)
        }
    }
}

/// A run's outcome.
#[derive(Clone, Debug)]
pub struct Report {
    /// Per key.
    pub keys: Vec<KeyReport>,
    /// Median admission wait.
    pub wait_p50: Duration,
    /// 99th percentile admission wait.
    pub wait_p99: Duration,
    /// Calls the gateway's limiters failed (a shared backend unavailable), and the first.
    pub errors: (usize, Option<String>),
}

impl Report {
    /// All 429s.
    pub fn rejected(&self) -> u64 {
        self.keys.iter().map(|k| k.served.rejected).sum()
    }

    /// The key with the lowest binding-budget utilization.
    pub fn lowest(&self) -> &KeyReport {
        self.keys
            .iter()
            .min_by(|a, b| a.binding().1.total_cmp(&b.binding().1))
            .expect("at least one key")
    }

    /// The highest utilization of any budget (above 1: more than limit × duration).
    pub fn highest(&self) -> f64 {
        self.keys
            .iter()
            .map(|k| k.request_util.max(k.token_util))
            .fold(0.0, f64::max)
    }
}

struct Shared<L, C: Clock> {
    cfg: Config,
    clock: Arc<C>,
    replicas: Vec<Gateway<L, C>>,
    provider: Provider,
    end_ns: u64,
    waits: Mutex<Vec<u64>>,
    errors: Mutex<Vec<String>>,
}

/// Runs `cfg` with limiters made by `make` (every replica calls it once per key: limiters of
/// one key made for two replicas share their budgets only if the backend shares them) and
/// pools on `clock` (a `TokioClock`, following tokio's clock, paused or not).
/// `native_accounting` says whether the limiters honour `cfg.gateway_accounting` themselves.
pub async fn run<L, C, M, F>(cfg: Config, clock: Arc<C>, native_accounting: bool, make: M) -> Report
where
    L: RateLimiter + 'static,
    C: Clock + 'static,
    M: Fn(&LimiterSpec) -> F,
    F: Future<Output = L>,
{
    let start = clock.now();
    let end_ns = start + cfg.duration().as_nanos() as u64;
    let truths: Vec<Truth> = (0..cfg.keys.len()).map(|i| cfg.truth(i)).collect();
    let provider = Provider::new(
        &truths,
        cfg.window,
        cfg.enforcement,
        cfg.accounting,
        cfg.duration(),
    );
    let configured: Vec<KeyConfig> = cfg
        .keys
        .iter()
        .map(|k| {
            let (requests, tokens) = k.guess.unwrap_or((k.requests, k.tokens));
            KeyConfig { requests, tokens }
        })
        .collect();
    let specs = gateway::specs(&configured, cfg.window, cfg.policy, cfg.gateway_accounting);
    let mut replicas = Vec::new();
    for _ in 0..cfg.replicas.max(1) {
        let gateway = Gateway::new(
            cfg.policy,
            cfg.gateway_accounting,
            native_accounting,
            clock.clone(),
        )
        .with_cooldowns(cfg.cooldowns.0, cfg.cooldowns.1);
        for spec in &specs {
            gateway.add(spec.key, make(spec).await);
        }
        replicas.push(gateway);
    }
    let shared = Arc::new(Shared {
        provider,
        replicas,
        end_ns,
        waits: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
        clock,
        cfg,
    });
    let clients: Vec<_> = (0..shared.cfg.clients)
        .map(|c| tokio::spawn(client(shared.clone(), c)))
        .collect();
    let progress = shared
        .cfg
        .progress_every
        .map(|every| tokio::spawn(progress(shared.clone(), every)));
    for c in clients {
        c.await.expect("client task");
    }
    if let Some(p) = progress {
        p.abort();
    }
    report(&shared).await
}

async fn client<L: RateLimiter + 'static, C: Clock + 'static>(s: Arc<Shared<L, C>>, id: usize) {
    let cfg = &s.cfg;
    let gw = &s.replicas[id % s.replicas.len()];
    let mut rng = Rng((id as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xA5A5);
    let delay = cfg.delay.as_nanos() as u64;
    let (lat_lo, lat_hi) = (
        cfg.latency.0.as_nanos() as u64,
        cfg.latency.1.as_nanos() as u64,
    );
    // Clients start a little apart, as real traffic does.
    sleep_ns(rng.range(0, cfg.start_spread.as_nanos() as u64)).await;
    while s.clock.now() < s.end_ns {
        let req = Request {
            prompt: rng.range(cfg.prompt.0, cfg.prompt.1),
            max_tokens: cfg.max_tokens,
            output: rng.range(cfg.max_tokens / 2, cfg.max_tokens),
        };
        let estimate = req.prompt + req.max_tokens;
        let actual = req.prompt + req.output;
        let asked = s.clock.now();
        let permit = match gw.pool.acquire(estimate).await {
            Ok(p) => p,
            Err(e) => {
                // Only a shared backend fails (unavailable, timed out): nothing was admitted.
                s.errors.lock().unwrap().push(e.to_string());
                sleep_ns(cfg.window.as_nanos() as u64 / 1_000).await;
                continue;
            }
        };
        let now = s.clock.now();
        if now > s.end_ns {
            // Admitted after the run: given back unsent.
            gw.settle(permit, estimate, 0).await;
            break;
        }
        s.waits.lock().unwrap().push(now - asked);
        let key = *permit.key();
        sleep_ns(rng.range(0, delay)).await;
        let response = s.provider.call(key, &req);
        let down = rng.range(0, delay);
        sleep_ns(down).await;
        gw.learn(key, response.status, &response.headers).await;
        let Some(ticket) = response.ticket else {
            // The provider charged nothing: give everything back and ask again.
            gw.settle(permit, estimate, 0).await;
            continue;
        };
        // The provider completes the response a down-delay before its end reaches us.
        sleep_ns(rng.range(lat_lo, lat_hi).saturating_sub(down)).await;
        s.provider.complete(key, ticket, &req);
        sleep_ns(down).await;
        gw.settle(permit, estimate, actual).await;
    }
}

async fn sleep_ns(ns: u64) {
    tokio::time::sleep(Duration::from_nanos(ns)).await;
}

async fn progress<L: RateLimiter, C: Clock>(s: Arc<Shared<L, C>>, every: u32) {
    let mut period = 0;
    loop {
        tokio::time::sleep(s.cfg.window * every).await;
        period += every;
        let (mut ok, mut rejected) = (0, 0);
        for i in 0..s.cfg.keys.len() {
            let served = s.provider.served(i);
            ok += served.requests;
            rejected += served.rejected;
        }
        let low = match s.cfg.low_key {
            Some(i) => format!(
                "; {} at {:.3} of its configuration",
                s.cfg.keys[i].name,
                s.replicas[0].pool.adapt_scale(&i).unwrap_or(1.0),
            ),
            None => String::new(),
        };
        println!(
            "    {} window {period:>3}/{}: {ok} requests served, {rejected} 429s{low}",
            s.cfg.label, s.cfg.periods
        );
    }
}

fn percentile(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    Duration::from_nanos(sorted[((sorted.len() - 1) as f64 * p).round() as usize])
}

async fn report<L: RateLimiter + 'static, C: Clock + 'static>(s: &Shared<L, C>) -> Report {
    let windows = s.cfg.periods as f64;
    let mut keys = Vec::new();
    for (i, spec) in s.cfg.keys.iter().enumerate() {
        let truth = s.cfg.truth(i);
        let served = s.provider.served(i);
        keys.push(KeyReport {
            spec: *spec,
            served,
            request_util: served.requests as f64 / (truth.requests as f64 * windows),
            token_util: served.tokens as f64 / (truth.tokens as f64 * windows),
            gateway_limits: s.replicas[0].limits(i).await,
            last_rejected: served.last_rejected.map(Duration::from_nanos),
        });
    }
    let mut waits = s.waits.lock().unwrap().clone();
    waits.sort_unstable();
    Report {
        keys,
        wait_p50: percentile(&waits, 0.50),
        wait_p99: percentile(&waits, 0.99),
        errors: {
            let e = s.errors.lock().unwrap();
            (e.len(), e.first().cloned())
        },
    }
}

/// splitmix64: a tiny deterministic generator, so runs are reproducible.
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
