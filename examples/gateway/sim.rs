//! The gateway simulation, shared by `examples/gateway` and `tests/gateway.rs`.
//!
//! - **Provider**: per key, two *exact* GCRA buckets (integer arithmetic in ns × limit, no
//!   ratekeeper code), full at start, burst = one full period. It charges a request's *actual*
//!   tokens when the request arrives, answers 429 (with `retry-after-ms`) when either bucket is
//!   short, and sends OpenAI-style `x-ratelimit-*` headers on every response.
//! - **Gateway**: a `KeyPool` of `TokenBucketLimiter`s, one per key, on the *same clock* as the
//!   provider. Each limiter's burst is the provider's minus a jitter margin (`Burst::Window`
//!   of period − margin): a request reaches the provider a moment after the limiter admitted
//!   it, and that moment varies with scheduling; the margin absorbs the variation, so the
//!   gateway never runs ahead of the provider. One key starts from a conservative guess and
//!   learns its real limits only from the headers.
//! - **Clients**: each loops: estimate (prompt + max_tokens), `pool.acquire(estimate)`, call
//!   the provider, learn from the headers, wait the generation latency, `settle` with the
//!   actual tokens (always <= the estimate, as `max_tokens` guarantees).

#![allow(dead_code)] // each includer uses a different part

use http::{HeaderMap, HeaderValue};
use ratekeeper::{Burst, Clock, KeyPool, TokenBucketLimiter};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One provider key's true limits.
#[derive(Clone, Copy, Debug)]
pub struct KeySpec {
    /// The key's name.
    pub name: &'static str,
    /// Requests per period.
    pub rpm: u64,
    /// Tokens per period.
    pub tpm: u64,
    /// `Some((rpm, tpm))`: the gateway starts from this guess and learns the rest.
    pub guess: Option<(u64, u64)>,
}

/// The simulation's parameters.
#[derive(Clone, Debug)]
pub struct Config {
    /// The keys.
    pub keys: Vec<KeySpec>,
    /// The limits' period (a provider "minute", scaled).
    pub period: Duration,
    /// How much less than the provider's burst the gateway allows itself.
    pub jitter_margin: Duration,
    /// Concurrent clients.
    pub clients: usize,
    /// How long clients send.
    pub run_for: Duration,
    /// Generation latency range (uniform).
    pub latency: (Duration, Duration),
    /// Print a progress line this often (`None`: silent).
    pub progress_every: Option<Duration>,
}

/// An exact GCRA bucket: TAT kept in ns × limit, so one unit costs `period_ns` exactly.
#[derive(Debug)]
struct ExactBucket {
    limit: u128,
    period_ns: u128,
    tat: u128,
}

impl ExactBucket {
    fn new(limit: u64, period: Duration) -> Self {
        ExactBucket {
            limit: limit as u128,
            period_ns: period.as_nanos(),
            tat: 0,
        }
    }

    fn scaled(&self, now: u64) -> (u128, u128) {
        let now_s = now as u128 * self.limit;
        (now_s, self.tat.max(now_s))
    }

    /// The wait (ns) before `n` units fit, 0 if they fit now.
    fn shortfall(&self, now: u64, n: u64) -> u64 {
        let (now_s, base) = self.scaled(now);
        let new = base + n as u128 * self.period_ns;
        let cap = self.limit * self.period_ns; // burst = a full period
        let over = (new - now_s).saturating_sub(cap);
        u64::try_from(over.div_ceil(self.limit)).unwrap_or(u64::MAX)
    }

    fn take(&mut self, now: u64, n: u64) {
        let (_, base) = self.scaled(now);
        self.tat = base + n as u128 * self.period_ns;
    }

    fn remaining(&self, now: u64) -> u64 {
        let (now_s, base) = self.scaled(now);
        let used = base - now_s;
        ((self.limit * self.period_ns - used.min(self.limit * self.period_ns)) / self.period_ns)
            as u64
    }

    fn reset_ns(&self, now: u64) -> u64 {
        let (now_s, base) = self.scaled(now);
        ((base - now_s) / self.limit) as u64
    }
}

/// What the provider saw for one key.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProviderStats {
    /// Requests accepted before the end of the run.
    pub requests: u64,
    /// Actual tokens accepted before the end of the run.
    pub tokens: u64,
    /// 429s answered.
    pub rejected: u64,
}

#[derive(Debug)]
struct ProviderKey {
    spec: KeySpec,
    requests: ExactBucket,
    tokens: ExactBucket,
    stats: ProviderStats,
}

/// The simulated provider: independent exact buckets per key.
#[derive(Debug)]
pub struct Provider {
    keys: Vec<Mutex<ProviderKey>>,
    end_ns: u64,
}

fn go_duration(ns: u64) -> String {
    format!("{}ms", ns.div_ceil(1_000_000))
}

impl Provider {
    fn new(cfg: &Config, end_ns: u64) -> Self {
        let keys = cfg
            .keys
            .iter()
            .map(|&spec| {
                Mutex::new(ProviderKey {
                    spec,
                    requests: ExactBucket::new(spec.rpm, cfg.period),
                    tokens: ExactBucket::new(spec.tpm, cfg.period),
                    stats: ProviderStats::default(),
                })
            })
            .collect();
        Provider { keys, end_ns }
    }

    /// Serves one request of `actual` tokens on key `i` at clock reading `now`.
    fn call(&self, i: usize, now: u64, actual: u64) -> (u16, HeaderMap) {
        let mut k = self.keys[i].lock().unwrap();
        let wait = k
            .requests
            .shortfall(now, 1)
            .max(k.tokens.shortfall(now, actual));
        let status = if wait == 0 {
            k.requests.take(now, 1);
            k.tokens.take(now, actual);
            if now <= self.end_ns {
                k.stats.requests += 1;
                k.stats.tokens += actual;
            }
            200
        } else {
            k.stats.rejected += 1;
            429
        };
        let mut h = HeaderMap::new();
        let mut put = |name: &'static str, v: String| {
            h.insert(name, HeaderValue::from_str(&v).unwrap());
        };
        put("x-ratelimit-limit-requests", k.spec.rpm.to_string());
        put("x-ratelimit-limit-tokens", k.spec.tpm.to_string());
        put(
            "x-ratelimit-remaining-requests",
            k.requests.remaining(now).to_string(),
        );
        put(
            "x-ratelimit-remaining-tokens",
            k.tokens.remaining(now).to_string(),
        );
        put(
            "x-ratelimit-reset-requests",
            go_duration(k.requests.reset_ns(now)),
        );
        put(
            "x-ratelimit-reset-tokens",
            go_duration(k.tokens.reset_ns(now)),
        );
        if status == 429 {
            put("retry-after-ms", format!("{:.3}", wait as f64 / 1e6));
        }
        (status, h)
    }

    fn stats(&self, i: usize) -> ProviderStats {
        self.keys[i].lock().unwrap().stats
    }
}

/// splitmix64: a tiny deterministic generator, so runs are comparable.
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

/// One key's results.
#[derive(Clone, Debug)]
pub struct KeyReport {
    /// The key's true limits.
    pub spec: KeySpec,
    /// What the provider accepted.
    pub provider: ProviderStats,
    /// Requests utilization: accepted / (burst + rate × elapsed), the most an exact bucket allows.
    pub request_util: f64,
    /// Tokens utilization, likewise.
    pub token_util: f64,
    /// Limits the gateway's limiter holds at the end (learned for the guessed key).
    pub gateway_limits: (u64, u64),
    /// Median and 99th percentile wait for admission.
    pub wait_p50: Duration,
    /// 99th percentile wait.
    pub wait_p99: Duration,
}

impl KeyReport {
    /// The budget that binds (the higher utilization) and its utilization.
    pub fn binding(&self) -> (&'static str, f64) {
        if self.request_util >= self.token_util {
            ("requests", self.request_util)
        } else {
            ("tokens", self.token_util)
        }
    }
}

/// Everything a run produced.
#[derive(Clone, Debug)]
pub struct Report {
    /// Per key.
    pub keys: Vec<KeyReport>,
    /// Sending time, measured on the shared clock.
    pub elapsed: Duration,
    /// Requests the clients got admitted after the run ended (given back, not sent).
    pub late: u64,
}

impl Report {
    /// Total provider 429s.
    pub fn rejected(&self) -> u64 {
        self.keys.iter().map(|k| k.provider.rejected).sum()
    }

    /// The lowest binding-budget utilization over the keys.
    pub fn min_binding_util(&self) -> f64 {
        self.keys
            .iter()
            .map(|k| k.binding().1)
            .fold(f64::INFINITY, f64::min)
    }
}

type Limiter<C> = TokenBucketLimiter<Arc<C>>;

struct Shared<C: Clock> {
    cfg: Config,
    clock: Arc<C>,
    pool: KeyPool<usize, Limiter<C>, Arc<C>>,
    provider: Provider,
    end_ns: u64,
    waits: Vec<Mutex<Vec<u64>>>,
    late: Mutex<u64>,
}

fn build_limiter<C: Clock>(cfg: &Config, clock: &Arc<C>, spec: &KeySpec) -> Limiter<C> {
    let (rpm, tpm) = spec.guess.unwrap_or((spec.rpm, spec.tpm));
    // Burst policy (kept across set_limit): the provider's full period minus the margin.
    let window = Burst::Window(cfg.period.saturating_sub(cfg.jitter_margin));
    TokenBucketLimiter::builder(rpm, tpm)
        .period(cfg.period)
        .request_burst(window)
        .token_burst(window)
        .clock(clock.clone())
        .build()
        .expect("valid limits")
}

/// Runs the simulation on `clock` (a `MonotonicClock` live, a `TokioClock` under paused time).
pub async fn run<C: Clock + 'static>(cfg: Config, clock: Arc<C>) -> Report {
    let start_ns = clock.now();
    let end_ns = start_ns + cfg.run_for.as_nanos() as u64;
    let pool = KeyPool::with_clock(clock.clone());
    for (i, spec) in cfg.keys.iter().enumerate() {
        pool.add(i, Arc::new(build_limiter(&cfg, &clock, spec)));
    }
    let shared = Arc::new(Shared {
        provider: Provider::new(&cfg, end_ns),
        waits: cfg.keys.iter().map(|_| Mutex::new(Vec::new())).collect(),
        late: Mutex::new(0),
        cfg,
        clock,
        pool,
        end_ns,
    });
    let clients: Vec<_> = (0..shared.cfg.clients)
        .map(|c| tokio::spawn(client(shared.clone(), c as u64)))
        .collect();
    let progress = shared
        .cfg
        .progress_every
        .map(|every| tokio::spawn(progress(shared.clone(), every, start_ns)));
    for c in clients {
        c.await.expect("client task");
    }
    if let Some(p) = progress {
        p.abort();
    }
    report(&shared, start_ns).await
}

async fn client<C: Clock + 'static>(s: Arc<Shared<C>>, seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xA5A5);
    let (lat_lo, lat_hi) = (
        s.cfg.latency.0.as_nanos() as u64,
        s.cfg.latency.1.as_nanos() as u64,
    );
    // Start clients a little apart, as real traffic does.
    tokio::time::sleep(Duration::from_micros(rng.range(0, 20_000))).await;
    while s.clock.now() < s.end_ns {
        let prompt = rng.range(50, 150);
        let max_tokens = 200;
        let estimate = prompt + max_tokens;
        let actual = prompt + rng.range(max_tokens / 2, max_tokens);
        let asked = s.clock.now();
        let permit = s
            .pool
            .acquire(estimate)
            .await
            .expect("every request fits a key");
        let now = s.clock.now();
        if now > s.end_ns {
            *s.late.lock().unwrap() += 1;
            let _ = s.pool.settle(permit, 0).await;
            break;
        }
        let key = *permit.key();
        let (status, headers) = s.provider.call(key, now, actual);
        if let Some(Err(e)) = s.pool.learn(&key, status, &headers).await {
            eprintln!("learning failed on key {key}: {e}");
        }
        if status == 429 {
            // The provider charged nothing; give the estimate back and try again.
            let _ = s.pool.settle(permit, 0).await;
            continue;
        }
        s.waits[key].lock().unwrap().push(now.saturating_sub(asked));
        tokio::time::sleep(Duration::from_nanos(rng.range(lat_lo, lat_hi))).await;
        let _ = s.pool.settle(permit, actual).await;
    }
}

async fn progress<C: Clock + 'static>(s: Arc<Shared<C>>, every: Duration, start_ns: u64) {
    let mut last = vec![0u64; s.cfg.keys.len()];
    loop {
        tokio::time::sleep(every).await;
        let secs = s.clock.now().saturating_sub(start_ns) as f64 / 1e9;
        let mut line = format!("t={secs:5.1}s");
        for (i, spec) in s.cfg.keys.iter().enumerate() {
            let st = s.provider.stats(i);
            let per_period =
                (st.requests - last[i]) as f64 * s.cfg.period.as_secs_f64() / every.as_secs_f64();
            last[i] = st.requests;
            line += &format!(
                " | {} {:4.0} req/period 429s={}",
                spec.name, per_period, st.rejected
            );
        }
        println!("{line}");
    }
}

fn percentile(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    Duration::from_nanos(sorted[idx])
}

async fn report<C: Clock + 'static>(s: &Shared<C>, start_ns: u64) -> Report {
    let elapsed = Duration::from_nanos(s.end_ns - start_ns);
    let periods = elapsed.as_secs_f64() / s.cfg.period.as_secs_f64();
    let mut keys = Vec::new();
    for (i, spec) in s.cfg.keys.iter().enumerate() {
        let st = s.provider.stats(i);
        // The most an exact bucket (full at start) lets through: one burst + rate × elapsed.
        let most = |limit: u64| limit as f64 * (1.0 + periods);
        let mut waits = s.waits[i].lock().unwrap().clone();
        waits.sort_unstable();
        let usage = s.pool.limiter(&i).expect("key stays").usage();
        keys.push(KeyReport {
            spec: *spec,
            provider: st,
            request_util: st.requests as f64 / most(spec.rpm),
            token_util: st.tokens as f64 / most(spec.tpm),
            gateway_limits: (
                usage.requests().map_or(0, |b| b.limit),
                usage.tokens().map_or(0, |b| b.limit),
            ),
            wait_p50: percentile(&waits, 0.50),
            wait_p99: percentile(&waits, 0.99),
        });
    }
    Report {
        keys,
        elapsed,
        late: *s.late.lock().unwrap(),
    }
}

/// The table printed at the end.
pub fn table(r: &Report, period: Duration) -> String {
    let periods = r.elapsed.as_secs_f64() / period.as_secs_f64();
    let mut out = format!(
        "{:<8} {:>16} {:>7} {:>18} {:>7} {:>9} {:>6} {:>9} {:>9}\n",
        "key",
        "requests/period",
        "util",
        "tokens/period",
        "util",
        "binding",
        "429s",
        "p50 wait",
        "p99 wait"
    );
    for k in &r.keys {
        let (binding, _) = k.binding();
        let learned = if k.spec.guess.is_some() { "*" } else { "" };
        out += &format!(
            "{:<8} {:>7.0} / {:<6} {:>6.2}% {:>8.0} / {:<7} {:>6.2}% {:>9} {:>6} {:>7.1}ms {:>7.1}ms\n",
            format!("{}{learned}", k.spec.name),
            k.provider.requests as f64 / periods,
            k.spec.rpm,
            k.request_util * 100.0,
            k.provider.tokens as f64 / periods,
            k.spec.tpm,
            k.token_util * 100.0,
            binding,
            k.provider.rejected,
            k.wait_p50.as_secs_f64() * 1e3,
            k.wait_p99.as_secs_f64() * 1e3,
        );
    }
    out
}
