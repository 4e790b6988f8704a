//! The simulated provider: per key, a request budget and a token budget enforced the ways real
//! providers document, answering 200 or 429 with OpenAI-style rate-limit headers.
//!
//! It is the independent check of the gateway, so it shares nothing with what it checks: no
//! ratekeeper type, clock or algorithm. Time is its own reading of `tokio::time::Instant`
//! (the same instant the gateway's clock follows, so paused time moves both), and each model
//! is plain integer arithmetic on that reading:
//!
//! - **token bucket**: a level of at most `limit`, refilled continuously at `limit` per window,
//!   full at the start;
//! - **sliding window**: a log of arrivals; a request is refused if the window `(t - W, t]`
//!   would hold more than `limit`;
//! - **fixed windows**: `[offset + kW, offset + (k+1)W)`, a counter reset at each boundary (the
//!   stretch before `offset` is a window of its own);
//! - **short interval**: a bucket of `limit * s / W` (at least one unit), refilled at `limit`
//!   per window ("60 RPM may be enforced as 1 per second").
//!
//! A bucket's level is kept in units × `W` nanoseconds, so one unit costs `W` and the refill is
//! `limit` per nanosecond: exact, no rounding anywhere.
//!
//! Tokens are charged as providers document it ([`Accounting`]): OpenAI counts prompt +
//! `max_tokens` when a request arrives and keeps it; Anthropic estimates output tokens from
//! `max_tokens` at arrival and adjusts to the actual count when the response completes
//! ([`Provider::complete`]: a bucket gets the difference back, a window's log entry shrinks,
//! a fixed window's count too if it is still the current one). A third mode charges the actual
//! tokens at arrival, as if the provider knew them then: no real provider can, but it is the
//! most favourable accounting a refunding provider could offer.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How the provider enforces a limit of `limit` per window `W`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// A continuous token bucket of capacity `limit`, full at the start.
    TokenBucket,
    /// At most `limit` in any window `(t - W, t]`.
    SlidingWindow,
    /// At most `limit` in each fixed window `[offset + kW, offset + (k+1)W)`.
    FixedWindow {
        /// Where the windows start, from the provider's start.
        offset: Duration,
    },
    /// A bucket of capacity `max(limit * interval / W, 1)`, refilled at `limit` per `W`.
    ShortInterval {
        /// The short interval `s`.
        interval: Duration,
    },
}

impl Enforcement {
    /// A short name for tables.
    pub fn name(&self, window: Duration) -> String {
        match *self {
            Enforcement::TokenBucket => "token bucket, capacity = limit".into(),
            Enforcement::SlidingWindow => format!("sliding window {}", secs(window)),
            Enforcement::FixedWindow { offset } if offset.is_zero() => {
                format!("fixed windows {}, aligned", secs(window))
            }
            Enforcement::FixedWindow { offset } => {
                format!("fixed windows {}, offset {}", secs(window), secs(offset))
            }
            Enforcement::ShortInterval { interval } => {
                format!("short interval: bucket of limit*{}/W", secs(interval))
            }
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// What the provider charges a request's token budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accounting {
    /// The tokens the request really uses, charged when it arrives (as if the provider knew
    /// them then: the most favourable accounting a refunding provider can offer).
    ActualAtArrival,
    /// Prompt + `max_tokens`, charged when it arrives and never refunded (OpenAI documents
    /// that `max_tokens` counts towards the limit).
    MaxTokensAtArrival,
    /// Prompt + `max_tokens` charged when it arrives, adjusted to prompt + actual output when
    /// the response completes (Anthropic documents its OTPM this way).
    EstimateAdjusted,
}

/// One key's real limits and what its responses reveal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truth {
    /// Requests per window.
    pub requests: u64,
    /// Tokens per window.
    pub tokens: u64,
    /// Whether responses carry `x-ratelimit-*` headers (`false`: a 429 carries only
    /// `retry-after-ms`, a 200 nothing).
    pub headers: bool,
}

/// One call as the provider sees it.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// Prompt tokens.
    pub prompt: u64,
    /// The request's `max_tokens`.
    pub max_tokens: u64,
    /// Output tokens it will really generate (`<= max_tokens`).
    pub output: u64,
}

/// A response: status and rate-limit headers.
#[derive(Clone, Debug)]
pub struct Response {
    /// 200, or 429 when a budget was short.
    pub status: u16,
    /// Header names and values.
    pub headers: Vec<(&'static str, String)>,
    /// For a 200: what to hand back to [`Provider::complete`] when the response completes.
    pub ticket: Option<Ticket>,
}

/// An accepted request, as the provider remembers it until it completes.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    arrived: u64,
    charged: u64,
}

/// What the provider accepted and refused on one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Requests accepted that arrived within the measured span.
    pub requests: u64,
    /// Tokens charged for them (in the provider's accounting).
    pub tokens: u64,
    /// 429s answered, at any time.
    pub rejected: u64,
    /// When the last 429 was answered (provider reading, ns).
    pub last_rejected: Option<u64>,
}

/// One budget's enforcement state.
#[derive(Debug)]
enum Meter {
    /// Level and capacity in units × `window_ns`; refilled by `limit` per ns.
    Bucket { level: u128, cap: u128, at: u64 },
    /// Arrivals `(ns, units)` still in the window, and their sum.
    Log { log: VecDeque<(u64, u64)>, sum: u64 },
    /// The current window's index and count.
    Fixed { offset: u64, index: u64, count: u64 },
}

/// A budget: its limit per window and how it is enforced.
#[derive(Debug)]
struct Budget {
    limit: u64,
    window: u64,
    meter: Meter,
}

impl Budget {
    fn new(limit: u64, window: Duration, how: Enforcement) -> Self {
        let window = window.as_nanos() as u64;
        let full = limit as u128 * window as u128;
        let meter = match how {
            Enforcement::TokenBucket => Meter::Bucket {
                level: full,
                cap: full,
                at: 0,
            },
            Enforcement::ShortInterval { interval } => {
                // limit * s / W units, in units × W: limit * s. At least one unit.
                let cap = (limit as u128 * interval.as_nanos()).max(window as u128);
                Meter::Bucket {
                    level: cap,
                    cap,
                    at: 0,
                }
            }
            Enforcement::SlidingWindow => Meter::Log {
                log: VecDeque::new(),
                sum: 0,
            },
            Enforcement::FixedWindow { offset } => Meter::Fixed {
                offset: offset.as_nanos() as u64 % window,
                index: 0,
                count: 0,
            },
        };
        Budget {
            limit,
            window,
            meter,
        }
    }

    /// Brings the state to reading `now` (refill, expiry, window change).
    fn advance(&mut self, now: u64) {
        let (limit, window) = (self.limit, self.window);
        match &mut self.meter {
            Meter::Bucket { level, cap, at } => {
                let dt = now.saturating_sub(*at) as u128;
                *level = (*level + dt * limit as u128).min(*cap);
                *at = (*at).max(now);
            }
            Meter::Log { log, sum } => {
                // (now - W, now]: an arrival at t is in it iff t + W > now.
                while let Some(&(t, n)) = log.front() {
                    if t + window > now {
                        break;
                    }
                    log.pop_front();
                    *sum -= n;
                }
            }
            Meter::Fixed {
                offset,
                index,
                count,
            } => {
                let i = fixed_index(now, *offset, window);
                if i != *index {
                    *index = i;
                    *count = 0;
                }
            }
        }
    }

    /// Nanoseconds from `now` until `n` units fit (0: they fit now; `None`: never).
    fn wait(&self, now: u64, n: u64) -> Option<u64> {
        let (limit, window) = (self.limit, self.window);
        if n > self.capacity() {
            return None;
        }
        match &self.meter {
            Meter::Bucket { level, .. } => {
                let need = n as u128 * window as u128;
                Some(need.saturating_sub(*level).div_ceil(limit as u128) as u64)
            }
            Meter::Log { log, sum } => {
                if sum + n <= limit {
                    return Some(0);
                }
                // Wait for the oldest arrivals to leave until n fits.
                let mut left = *sum;
                for &(t, m) in log {
                    left -= m;
                    if left + n <= limit {
                        return Some(t + window - now);
                    }
                }
                unreachable!("n <= limit fits once the log is empty")
            }
            Meter::Fixed {
                offset,
                index,
                count,
            } => {
                if count + n <= limit {
                    return Some(0);
                }
                Some(fixed_start(index + 1, *offset, window) - now)
            }
        }
    }

    /// The most units one request can ever take.
    fn capacity(&self) -> u64 {
        match &self.meter {
            Meter::Bucket { cap, .. } => (cap / self.window as u128) as u64,
            _ => self.limit,
        }
    }

    fn take(&mut self, now: u64, n: u64) {
        let window = self.window;
        match &mut self.meter {
            Meter::Bucket { level, .. } => *level -= n as u128 * window as u128,
            Meter::Log { log, sum } => {
                log.push_back((now, n));
                *sum += n;
            }
            Meter::Fixed { count, .. } => *count += n,
        }
    }

    /// Takes back `n` of the units charged at `arrived` (an adjustment at completion, read
    /// at `now`): a bucket gets them back (up to its capacity), a log entry shrinks if it is
    /// still in the window, a fixed window's count shrinks if it is still the current one.
    fn give(&mut self, now: u64, arrived: u64, charged: u64, n: u64) {
        self.advance(now);
        let window = self.window;
        match &mut self.meter {
            Meter::Bucket { level, cap, .. } => {
                *level = (*level + n as u128 * window as u128).min(*cap);
            }
            Meter::Log { log, sum } => {
                // Entries of one instant and size are interchangeable: shrink any one.
                if let Some(e) = log.iter_mut().find(|e| e.0 == arrived && e.1 == charged) {
                    e.1 -= n;
                    *sum -= n;
                }
            }
            Meter::Fixed {
                offset,
                index,
                count,
            } => {
                if fixed_index(arrived, *offset, window) == *index {
                    *count = count.saturating_sub(n);
                }
            }
        }
    }

    /// What a `remaining` header says: units that fit now.
    fn remaining(&self) -> u64 {
        match &self.meter {
            Meter::Bucket { level, .. } => (level / self.window as u128) as u64,
            Meter::Log { sum, .. } => self.limit - sum,
            Meter::Fixed { count, .. } => self.limit - count,
        }
    }

    /// What a `reset` header says: nanoseconds until the budget is back to its initial state.
    fn reset(&self, now: u64) -> u64 {
        match &self.meter {
            Meter::Bucket { level, cap, .. } => (cap - level).div_ceil(self.limit as u128) as u64,
            Meter::Log { log, .. } => log.back().map_or(0, |&(t, _)| t + self.window - now),
            Meter::Fixed {
                offset,
                index,
                count,
            } => match count {
                0 => 0,
                _ => fixed_start(index + 1, *offset, self.window) - now,
            },
        }
    }
}

/// The fixed window holding reading `t`: 0 before `offset` (when `offset > 0`), then 1, 2, ...
fn fixed_index(t: u64, offset: u64, window: u64) -> u64 {
    if offset == 0 {
        t / window
    } else if t < offset {
        0
    } else {
        1 + (t - offset) / window
    }
}

/// The reading at which fixed window `i` starts.
fn fixed_start(i: u64, offset: u64, window: u64) -> u64 {
    if offset == 0 {
        i * window
    } else {
        offset + (i - 1) * window
    }
}

/// One key: what it enforces, and (for the short-interval model) the documented full-window
/// bucket its headers describe.
#[derive(Debug)]
struct Key {
    truth: Truth,
    requests: Budget,
    tokens: Budget,
    documented: Option<(Budget, Budget)>,
    served: Served,
}

/// The simulated provider.
#[derive(Debug)]
pub struct Provider {
    keys: Vec<Mutex<Key>>,
    accounting: Accounting,
    start: Instant,
    measure_until: u64,
}

impl Provider {
    /// A provider starting now, enforcing `how` over `window` for each key's `truth`, counting
    /// what arrives within `measure` from now.
    pub fn new(
        truths: &[Truth],
        window: Duration,
        how: Enforcement,
        accounting: Accounting,
        measure: Duration,
    ) -> Self {
        let keys = truths
            .iter()
            .map(|&truth| {
                // A provider enforcing a short interval still documents (and reports in its
                // headers) the full-window limit: that is what makes it a trap.
                let documented = matches!(how, Enforcement::ShortInterval { .. }).then(|| {
                    (
                        Budget::new(truth.requests, window, Enforcement::TokenBucket),
                        Budget::new(truth.tokens, window, Enforcement::TokenBucket),
                    )
                });
                Mutex::new(Key {
                    truth,
                    requests: Budget::new(truth.requests, window, how),
                    tokens: Budget::new(truth.tokens, window, how),
                    documented,
                    served: Served::default(),
                })
            })
            .collect();
        Provider {
            keys,
            accounting,
            start: Instant::now(),
            measure_until: measure.as_nanos() as u64,
        }
    }

    /// The provider's own reading: nanoseconds since it started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The tokens the provider charges for `req`.
    pub fn charge(&self, req: &Request) -> u64 {
        match self.accounting {
            Accounting::ActualAtArrival => req.prompt + req.output,
            Accounting::MaxTokensAtArrival | Accounting::EstimateAdjusted => {
                req.prompt + req.max_tokens
            }
        }
    }

    /// The response to the request behind `ticket` completes now: under
    /// [`Accounting::EstimateAdjusted`] its charge comes down to what it used.
    pub fn complete(&self, key: usize, ticket: Ticket, req: &Request) {
        if self.accounting != Accounting::EstimateAdjusted {
            return;
        }
        let n = ticket.charged - (req.prompt + req.output);
        if n == 0 {
            return;
        }
        let now = self.now();
        let mut k = self.keys[key].lock().unwrap();
        let k = &mut *k;
        k.tokens.give(now, ticket.arrived, ticket.charged, n);
        if let Some((_, t)) = &mut k.documented {
            t.give(now, ticket.arrived, ticket.charged, n);
        }
        if ticket.arrived <= self.measure_until {
            k.served.tokens -= n;
        }
    }

    /// Serves `req` on key `key`, now.
    pub fn call(&self, key: usize, req: &Request) -> Response {
        let now = self.now();
        let tokens = self.charge(req);
        let mut k = self.keys[key].lock().unwrap();
        let k = &mut *k;
        k.requests.advance(now);
        k.tokens.advance(now);
        if let Some((r, t)) = &mut k.documented {
            r.advance(now);
            t.advance(now);
        }
        let wait = match (k.requests.wait(now, 1), k.tokens.wait(now, tokens)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        let status = match wait {
            Some(0) => {
                k.requests.take(now, 1);
                k.tokens.take(now, tokens);
                if let Some((r, t)) = &mut k.documented {
                    r.take(now, 1);
                    t.take(now, tokens);
                }
                if now <= self.measure_until {
                    k.served.requests += 1;
                    k.served.tokens += tokens;
                }
                200
            }
            Some(_) => {
                k.served.rejected += 1;
                k.served.last_rejected = Some(now);
                429
            }
            None => 413, // larger than the key can ever take: a configuration error
        };
        let mut headers = Vec::new();
        if k.truth.headers {
            let (r, t) = match &k.documented {
                Some((r, t)) => (r, t),
                None => (&k.requests, &k.tokens),
            };
            headers.push(("x-ratelimit-limit-requests", k.truth.requests.to_string()));
            headers.push(("x-ratelimit-limit-tokens", k.truth.tokens.to_string()));
            headers.push(("x-ratelimit-remaining-requests", r.remaining().to_string()));
            headers.push(("x-ratelimit-remaining-tokens", t.remaining().to_string()));
            headers.push(("x-ratelimit-reset-requests", go_ms(r.reset(now))));
            headers.push(("x-ratelimit-reset-tokens", go_ms(t.reset(now))));
        }
        if let (429, Some(w)) = (status, wait) {
            headers.push(("retry-after-ms", w.div_ceil(1_000_000).to_string()));
        }
        let ticket = (status == 200).then_some(Ticket {
            arrived: now,
            charged: tokens,
        });
        Response {
            status,
            headers,
            ticket,
        }
    }

    /// What key `key` accepted and refused so far.
    pub fn served(&self, key: usize) -> Served {
        self.keys[key].lock().unwrap().served
    }
}

/// A duration as Go prints it, in whole milliseconds rounded up (`"1500ms"`).
fn go_ms(ns: u64) -> String {
    format!("{}ms", ns.div_ceil(1_000_000))
}
