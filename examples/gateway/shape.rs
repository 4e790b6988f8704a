//! The provider-safe shape, in the simulator's own arithmetic: the burst `B` and rate `r` of a
//! GCRA that no enforcement model in `provider.rs` refuses, given the network's jitter. The
//! library's `Burst::Provider` is checked against it (`tests/gateway.rs`), and a backend whose
//! buckets refill at limit / window (the Redis backend today) is given the shape through it:
//! `Burst::Units(B)` and the rate as a limit per `W + J`.
//!
//! # Why it is safe
//!
//! GCRA(B, r) admits at most `B + r·T` units in any span `T`. A request reaches the provider
//! its up-delay after the gateway admitted it; up-delays differ by at most the jitter `J`, so
//! what arrives in a span `T` was admitted within `T + J`: at most `B + r·(T + J)`. For a limit
//! `L` per window `W`, with `ρ = L/W`:
//!
//! - **sliding window** `W` (and so **fixed windows** at any offset, which constrain a subset
//!   of the same spans): `B + r·(W + J) <= L`, i.e. `r <= (L - B) / (W + J)`;
//! - **token bucket** of capacity `L`: `B + r·(T + J) <= L + ρ·T` for all `T`, i.e.
//!   `r <= ρ` and `B + r·J <= L` (implied by the sliding bound);
//! - **short interval** `s`, a bucket of `c = max(L·s/W, 1)` refilled at `ρ`: `r <= ρ` and
//!   `B + r·J <= c`, i.e. `r <= (c - B) / J`. For a request budget with `B = 1` a second,
//!   sharper argument also holds: admissions `1/r` apart arrive at least `1/r - J` apart, and
//!   a bucket of capacity >= 1 refilled at `ρ` takes one request every `1/ρ`, so
//!   `r <= ρ / (1 + ρ·J)`, i.e. `L` per `W + L·J`, is safe too (either bound suffices; the
//!   larger is used).
//!
//! The burst is `B = max(n, floor(L·(s - J) / W))`, with `n` the largest single request
//! (1 for requests): the largest burst that, with a rate near `ρ`, still leaves the
//! short-interval bucket the `ρ·J` the jitter needs. Then `r` is the smallest of the bounds;
//! for every key of the example it is the sliding bound, `L - B` per `W + J`, exactly.
//!
//! # What it leaves unused
//!
//! Over a long run every model lets the gateway use `r·W / L` of the limit:
//! `(1 - B/L) · W / (W + J)`. With `B = L·(s - J)/W` that is `1 - s / (W + J)`: 98.3% for
//! `W = 60 s`, `s = 1 s`, `J = 100 ms`. The `J / (W + J)` part is the price of not knowing
//! each request's delay: a strict sliding window forces it on any gateway. The `B / L` part
//! buys a burst; `B = n` would leave only the jitter's share unused, but pace every request
//! at `r` even when the key has been idle.

use std::time::Duration;

/// The parameters of the shape: the limit's window, the provider's short interval, the
/// network's jitter and the largest single request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// The window the limit is counted over (`W`: a minute for RPM/TPM).
    pub window: Duration,
    /// The short interval a provider may enforce over (`s`).
    pub interval: Duration,
    /// The spread of the network's up-delay (`J`).
    pub jitter: Duration,
    /// The largest token estimate one request may carry (`n` for a token budget).
    pub largest: u64,
}

/// A rate: `units` per `per_ns` nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Units...
    pub units: u128,
    /// ...per this many nanoseconds.
    pub per_ns: u128,
}

impl Rate {
    fn min(self, other: Rate) -> Rate {
        // a/b <= c/d  iff  a·d <= c·b (all positive, far below u128's range here).
        if self.units * other.per_ns <= other.units * self.per_ns {
            self
        } else {
            other
        }
    }

    /// Whole units per `period`, rounded down.
    pub fn per(self, period: Duration) -> u64 {
        (self.units * period.as_nanos() / self.per_ns) as u64
    }
}

impl Shape {
    fn ns(&self) -> (u128, u128, u128) {
        (
            self.window.as_nanos(),
            self.interval.as_nanos(),
            self.jitter.as_nanos(),
        )
    }

    /// The period to express the shape's rates over without rounding when the sliding bound
    /// binds: `W + J`.
    pub fn period(&self) -> Duration {
        self.window + self.jitter
    }

    /// The burst for `limit` per window when single requests take up to `largest` units.
    pub fn burst(&self, limit: u64, largest: u64) -> u64 {
        let (w, s, j) = self.ns();
        let short = (limit as u128 * s.saturating_sub(j) / w) as u64;
        short.max(largest).max(1)
    }

    /// The safe rate for `limit` per window with burst `burst`; `None` when no positive rate
    /// is safe (a burst as large as the limit, or a short-interval bucket smaller than it).
    pub fn rate(&self, limit: u64, burst: u64) -> Option<Rate> {
        let (w, s, j) = self.ns();
        let (l, b) = (limit as u128, burst as u128);
        let sliding = Rate {
            units: l.checked_sub(b).filter(|&u| u > 0)?,
            per_ns: w + j,
        };
        let nominal = Rate {
            units: l,
            per_ns: w,
        };
        // The short-interval bucket holds c = max(L·s/W, 1) units: in units × W ns,
        // max(L·s, W). Continuous bound: (c - B)/J = (L·s - B·W) per W·J.
        let c = (l * s).max(w);
        let short = if j == 0 {
            (c >= b * w).then_some(nominal)?
        } else {
            let continuous = c.checked_sub(b * w).filter(|&u| u > 0).map(|units| Rate {
                units,
                per_ns: w * j,
            });
            let spacing = (b == 1).then_some(Rate {
                units: l,
                per_ns: w + l * j,
            });
            match (continuous, spacing) {
                (Some(a), Some(b)) => {
                    if a.min(b) == a {
                        b
                    } else {
                        a
                    }
                }
                (a, b) => a.or(b)?,
            }
        };
        Some(sliding.min(short).min(nominal))
    }

    /// The limit to give a limiter whose period is [`period`](Self::period), for `limit` per
    /// window with burst `burst` (`None`: no positive rate is safe).
    pub fn limit(&self, limit: u64, burst: u64) -> Option<u64> {
        self.rate(limit, burst)
            .map(|r| r.per(self.period()))
            .filter(|&n| n > 0)
    }
}
