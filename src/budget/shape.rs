//! The provider-safe shape: the burst and refill rate of a bucket that no provider refuses,
//! whichever of the documented ways it enforces a limit of `L` per window `W`.
//!
//! # Why it is safe
//!
//! A limiter keeps its promise at release instants: over any span `T`, a bucket of burst `B`
//! refilled at `r` releases at most `B + r·T`. A request reaches the provider its up-delay
//! later; up-delays differ by at most the jitter `J`, so what arrives within a span `T` was
//! released within `T + J`: at most `B + r·(T + J)`. With `ρ = L/W`:
//!
//! - **sliding window** `W` (and so **fixed windows** at any offset, which constrain a subset of
//!   the same spans): `B + r·(W + J) <= L`, i.e. `r <= (L - B) / (W + J)`;
//! - **token bucket** of capacity `L` refilled at `ρ`: `B + r·(T + J) <= L + ρ·T` for every `T`,
//!   i.e. `r <= ρ` and `B + r·J <= L`, which the sliding bound implies;
//! - **short interval** `s` (a bucket of `c = max(L·s/W, 1)` refilled at `ρ`: "60 RPM may be
//!   enforced as one per second"): `r <= ρ` and `B + r·J <= c`, i.e. `r <= (c - B) / J`.
//!
//! With a burst of one unit a second argument holds for every model at once: releases `1/r`
//! apart arrive at least `1/r - J` apart, and at `r = L / (W + L·J)` that is `W / L`, the pace at
//! which every model above takes one unit. Where `B = 1` the shape takes the larger of the
//! two.
//!
//! The burst is `B = max(n, floor(L·(s - J) / W), 1)`, with `n` the largest single request
//! (one for a request budget), and below `L`: the largest burst that, at a rate near `ρ`, still
//! leaves the short-interval bucket the `ρ·J` the jitter needs. The rate is the smallest of the
//! bounds, rounded down.
//!
//! One exception. When the largest request exceeds that burst (`n > L·(s - J)/W`), it
//! leaves the short-interval bucket less than the `ρ·J` the jitter needs, and its bound
//! `(c - n)/J` would cost rate, all of it as `n` nears `c`: a provider enforcing that interval
//! refuses such a request whenever another arrives close to it, whatever a gateway does. The
//! shape then keeps the windowed models' bounds only. For tokens this is the common case with
//! large requests (8,192 tokens against 200,000 per minute: `L·(s - J)/W` = 3,000), and
//! short-interval enforcement is documented for requests ("60 RPM may be enforced as one per
//! second"); a request budget, whose requests are one unit, is always protected.
//!
//! # What it leaves unused
//!
//! Over a long run every model sees `r·W` per window, `(1 - B/L)·W/(W + J)` of the limit. With
//! `B = L·(s - J)/W` that is `1 - s/(W + J)`: 98.3% for a minute, `s` = 1 s and `J` = 100 ms.
//! `J/(W + J)` is what not knowing each request's delay costs under a strict sliding window
//! (any gateway pays it); `B/L` buys the burst.

use std::time::Duration;

/// The parameters of [`Burst::Provider`](super::Burst::Provider): the short interval a
/// provider may enforce over, the spread of the network's delay between an admission and the
/// request's arrival at the provider, and the largest single request. The module docs of
/// [`Burst`](super::Burst) say when to use it.
///
/// ```
/// use ratekeeper::ProviderShape;
/// use std::time::Duration;
///
/// let minute = Duration::from_secs(60);
/// let shape = ProviderShape::new().largest(350); // prompt + max_tokens, at most
/// // A 40,000 TPM key: bursts of 600 tokens, 39,334 tokens a minute in the long run.
/// assert_eq!(shape.burst(40_000, minute), 600);
/// assert_eq!(shape.sustained(40_000, minute), 39_334);
/// // A 120 RPM key: one request at a time, 118 a minute.
/// assert_eq!(ProviderShape::new().burst(120, minute), 1);
/// assert_eq!(ProviderShape::new().sustained(120, minute), 118);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProviderShape {
    interval: Duration,
    jitter: Duration,
    largest: u64,
}

impl Default for ProviderShape {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A rate as a fraction: `units` per `per_ns` nanoseconds (both positive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ratio {
    pub units: u64,
    pub per_ns: u64,
}

impl Ratio {
    /// The fraction `num / den`, rounded down to one of `u64` terms (never up: a rate is
    /// never overstated). `None` for a zero numerator; a positive rate too small for `u64`
    /// terms becomes one unit per `u64::MAX` ns (584 years: closed, in practice).
    fn of(num: u128, den: u128) -> Option<Ratio> {
        if num == 0 || den == 0 {
            return None;
        }
        let g = gcd(num, den);
        let (mut num, mut den) = (num / g, den / g);
        let bits = 128 - num.max(den).leading_zeros();
        if bits > 64 {
            // num / 2^k rounded down over den / 2^k rounded up; one more bit if the rounded
            // denominator reaches 2^64.
            let mut k = bits - 64;
            if den.div_ceil(1 << k) > u64::MAX as u128 {
                k += 1;
            }
            num >>= k;
            den = den.div_ceil(1 << k);
            if num == 0 {
                return Some(Ratio {
                    units: 1,
                    per_ns: u64::MAX,
                });
            }
        }
        Some(Ratio {
            units: num as u64,
            per_ns: den as u64,
        })
    }

    /// Whether `self <= other` (exact: `u64` terms multiply within `u128`).
    fn le(self, other: Ratio) -> bool {
        self.units as u128 * other.per_ns as u128 <= other.units as u128 * self.per_ns as u128
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Nanoseconds of a duration, saturating at `u64::MAX` (so products of two fit `u128`).
fn ns(d: Duration) -> u128 {
    d.as_nanos().min(u64::MAX as u128)
}

impl ProviderShape {
    /// A one-second short interval, 100 ms of jitter, and single requests of one unit: what
    /// fits a request budget as it is, and a token budget once its
    /// [`largest`](Self::largest) request is given.
    pub const DEFAULT: ProviderShape = ProviderShape {
        interval: Duration::from_secs(1),
        jitter: Duration::from_millis(100),
        largest: 1,
    };

    /// The defaults, [`DEFAULT`](Self::DEFAULT).
    pub const fn new() -> ProviderShape {
        Self::DEFAULT
    }

    /// The short interval the provider may enforce over (default one second): the bucket of
    /// `limit × interval / window` it may really be. `Duration::ZERO`: the provider is known
    /// to enforce over the whole window only.
    pub const fn interval(mut self, interval: Duration) -> ProviderShape {
        self.interval = interval;
        self
    }

    /// How much the delay between an admission and the request's arrival at the provider
    /// varies (default 100 ms): network, TLS, queues in the client. Too small a figure lets
    /// requests bunch up at the provider; each 100 ms costs about 0.17% of a per-minute limit.
    pub const fn jitter(mut self, jitter: Duration) -> ProviderShape {
        self.jitter = jitter;
        self
    }

    /// The most units one request takes (default 1; `0` is read as 1): for a token budget,
    /// the largest prompt + `max_tokens` you send. The burst is never below it (below the
    /// limit, though), so that such a request can be admitted at all; a larger burst lowers
    /// the rate.
    pub const fn largest(mut self, units: u64) -> ProviderShape {
        self.largest = if units == 0 { 1 } else { units };
        self
    }

    /// The short interval.
    pub const fn interval_len(&self) -> Duration {
        self.interval
    }

    /// The jitter.
    pub const fn jitter_len(&self) -> Duration {
        self.jitter
    }

    /// The largest single request, in units.
    pub const fn largest_units(&self) -> u64 {
        self.largest
    }

    /// The burst for `limit` per `window`, in units (`0` for a limit of 0, unlimited).
    pub fn burst(&self, limit: u64, window: Duration) -> u64 {
        self.shape(limit, ns(window) as u64).map_or(0, |(b, _)| b)
    }

    /// Units admitted per `window` in the long run, for `limit` per `window`: the shape's
    /// rate times the window, rounded down (`0` for a limit of 0, unlimited).
    pub fn sustained(&self, limit: u64, window: Duration) -> u64 {
        self.shape(limit, ns(window) as u64).map_or(0, |(_, r)| {
            (r.units as u128 * ns(window) / r.per_ns as u128).min(u64::MAX as u128) as u64
        })
    }

    /// The burst and the rate for `limit` per `window_ns`; `None` when either is zero.
    pub(crate) fn shape(&self, limit: u64, window_ns: u64) -> Option<(u64, Ratio)> {
        if limit == 0 || window_ns == 0 {
            return None;
        }
        let (l, w) = (limit as u128, window_ns as u128);
        let (s, j) = (ns(self.interval), ns(self.jitter));
        let short_burst = (l * s.saturating_sub(j) / w).min(u64::MAX as u128) as u64;
        // Below the limit, so that the sliding bound leaves a positive rate.
        let b = short_burst.max(self.largest).max(1).min(limit - 1).max(1);
        let bw = b as u128 * w;
        let nominal = Ratio::of(l, w)?;
        let mut rate = nominal;
        let mut bound = |r: Option<Ratio>| {
            let r = r.unwrap_or(Ratio {
                units: 0,
                per_ns: 1,
            });
            if r.le(rate) {
                rate = r;
            }
        };
        // Sliding window (zero for a limit of one: the spacing bound below covers it).
        bound(Ratio::of(l - b as u128, w + j));
        // Short interval: a bucket of c = max(L·s/W, 1) units, i.e. max(L·s, W) in units × W.
        if s > 0 {
            let c = (l * s).max(w);
            if j == 0 {
                // Nothing arrives closer than released: r <= ρ (nominal) suffices.
            } else if b == 1 {
                // Zero when the bucket holds exactly one unit: the spacing bound takes over.
                bound(Ratio::of(c.saturating_sub(bw), w * j));
            } else if b <= short_burst {
                // Never below ρ here (c - B >= ρ·J); kept for the rounding of B.
                bound(Ratio::of(c - bw, w * j));
            }
            // Otherwise the largest request leaves the short-interval bucket less than the
            // ρ·J the jitter needs: the bound would cost rate, all of it as the request nears
            // the bucket, and a provider enforcing that interval refuses such requests
            // whenever two arrive close, whatever a gateway does. The windowed models stay
            // protected.
        }
        if b == 1 {
            // One unit at a time: releases 1/r apart arrive W/L apart, whatever the model.
            if let Some(spacing) = Ratio::of(l, w + l * j) {
                if rate.le(spacing) {
                    rate = spacing;
                }
            }
        }
        // Every bound is positive here (B < L or B = 1), but a zero rate would read as
        // unlimited downstream: never hand one out.
        (rate.units > 0).then_some((b, rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000_000_000;

    fn shape() -> ProviderShape {
        ProviderShape::new()
    }

    #[test]
    fn the_sliding_bound_binds_for_ordinary_keys() {
        // 40,000 TPM: B = 40,000 × 0.9 / 60 = 600, r = 39,400 per 60.1 s.
        let (b, r) = shape().largest(350).shape(40_000, MINUTE).unwrap();
        assert_eq!(b, 600);
        assert_eq!(r, Ratio::of(39_400, 60_100_000_000).unwrap());
        // 120 RPM: B = 1, (120 - 1) per 60.1 s beats the spacing bound 120 per 72 s.
        let (b, r) = shape().shape(120, MINUTE).unwrap();
        assert_eq!(b, 1);
        assert_eq!(r, Ratio::of(119, 60_100_000_000).unwrap());
    }

    #[test]
    fn a_burst_is_raised_to_the_largest_request_but_stays_below_the_limit() {
        assert_eq!(
            shape().largest(350).burst(20_000, Duration::from_secs(60)),
            350
        );
        assert_eq!(
            shape().largest(5_000).burst(1_000, Duration::from_secs(60)),
            999
        );
        assert_eq!(shape().largest(0).largest_units(), 1);
        // A limit of one: a burst of one, one request per W + J (the spacing bound).
        let (b, r) = shape().shape(1, MINUTE).unwrap();
        assert_eq!(
            (b, r),
            (1, Ratio::of(1, MINUTE as u128 + 100_000_000).unwrap())
        );
    }

    #[test]
    fn small_limits_take_the_spacing_bound() {
        // 30 per minute: the short-interval bucket holds one request, and the continuous
        // bound is negative; spacing gives 30 per 63 s.
        let (b, r) = shape().shape(30, MINUTE).unwrap();
        assert_eq!(b, 1);
        assert_eq!(r, Ratio::of(30, 63_000_000_000).unwrap());
    }

    #[test]
    fn a_largest_request_above_the_short_burst_keeps_the_windowed_bounds_only() {
        // 21,000 per minute: L·(s - J)/W = 315 tokens. A largest request of 315 keeps the
        // short bound (which does not bind): (21,000 - 315) per 60.1 s.
        let (b, r) = shape().largest(315).shape(21_000, MINUTE).unwrap();
        assert_eq!(b, 315);
        assert_eq!(r, Ratio::of(20_685, 60_100_000_000).unwrap());
        // 340 would leave (350 - 340)/0.1 s = 100 per second of a 350 per second limit: the
        // short bound is dropped, the sliding bound stands.
        let (b, r) = shape().largest(340).shape(21_000, MINUTE).unwrap();
        assert_eq!(b, 340);
        assert_eq!(r, Ratio::of(20_660, 60_100_000_000).unwrap());
    }

    #[test]
    fn no_interval_or_no_jitter() {
        // No short interval: the sliding bound only; the burst is the largest request.
        let s = shape().interval(Duration::ZERO).largest(350);
        let (b, r) = s.shape(40_000, MINUTE).unwrap();
        assert_eq!(b, 350);
        assert_eq!(r, Ratio::of(39_650, 60_100_000_000).unwrap());
        // No jitter: B = L·s/W and (L - B) per W.
        let (b, r) = shape().jitter(Duration::ZERO).shape(6_000, MINUTE).unwrap();
        assert_eq!(b, 100);
        assert_eq!(r, Ratio::of(5_900, MINUTE as u128).unwrap());
    }

    #[test]
    fn extreme_inputs_neither_panic_nor_open() {
        for limit in [1, 2, 3, 1_000, u64::MAX / 2, u64::MAX] {
            for window in [1, 1_000, MINUTE, u64::MAX] {
                for (s, j) in [
                    (Duration::ZERO, Duration::ZERO),
                    (Duration::MAX, Duration::MAX),
                    (Duration::from_secs(1), Duration::MAX),
                    (Duration::MAX, Duration::ZERO),
                ] {
                    let shape = shape().interval(s).jitter(j).largest(u64::MAX);
                    let (b, r) = shape.shape(limit, window).unwrap();
                    assert!(b >= 1 && (b < limit || limit == 1), "{limit} {window} {b}");
                    assert!(r.units > 0 && r.per_ns > 0);
                    // Never faster than the nominal rate.
                    assert!(r.le(Ratio::of(limit as u128, window as u128).unwrap()));
                }
            }
        }
        assert_eq!(shape().shape(0, MINUTE), None);
        assert_eq!(shape().shape(10, 0), None);
    }

    #[test]
    fn ratios_round_down() {
        let r = Ratio::of(u128::MAX, 3).unwrap();
        assert!(r.le(Ratio::of(u128::MAX / 3 + 1, 1).unwrap()));
        let r = Ratio::of(3, u128::MAX).unwrap();
        assert_eq!(r.units, 1);
        let r = Ratio::of((1u128 << 100) + 1, 1u128 << 101).unwrap();
        assert!(r.units as u128 * 2 <= r.per_ns as u128);
    }
}
