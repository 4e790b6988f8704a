//! The GCRA arithmetic as plain functions of `(state, now, params)`: no atomics, no clock.
//! Private to the crate, as governor keeps its `gcra`: users see units, windows and bursts.
//!
//! # Units and quanta, not nanoseconds
//!
//! A bucket's state is its *theoretical arrival time* (TAT), but we do not measure it in
//! nanoseconds. One **unit** is the time the bucket takes to refill by one request (or one
//! token), and the TAT counts **quanta**: `2^frac` quanta to the unit, with `frac` chosen per
//! rate (see [`Rate::fit`]) so that one quantum is at most ~64 ns of refill and the 58-bit TAT
//! still spans centuries. Admitting `n` units moves the TAT by exactly `n << frac`, so no
//! rounding accumulates, whatever the rate. (Integer-nanosecond intervals would round
//! 60e9 / 59,999,999 ns = 1000.00002 ns up to 1001 ns and lose 0.1% of a high limit.)
//!
//! Only absurd limits (beyond ~10^11 per minute, or bursts beyond 2^58) get `frac < 0`, quanta
//! of several units: what is taken rounds up and what is given rounds down, so they stay
//! enforced, coarsely, instead of overflowing.
//!
//! Only the conversion from clock nanoseconds to quanta rounds: a reading lies in
//! `[lo, hi]` with `hi = lo + 1` unless it is exact ([`Rate::at`]).
//!
//! # The rule, on the safe side of every rounding
//!
//! The bucket holds `burst - max(tat - now, 0)` units. We *check* with `lo` (less refill seen)
//! and *restart* an idle bucket from `hi` (never earlier than the true time):
//!
//! ```text
//! conforms  iff  max(tat - lo, 0) + n <= burst
//! new tat    =   max(tat, hi) + n
//! ```
//!
//! By induction our TAT is never below the exact TAT of continuous GCRA (real-valued time and
//! rate) over the same admissions, and our check implies the exact check: the limiter is never
//! more permissive than exact GCRA, and less permissive by at most one quantum after a restart
//! from idle. A bucket that has never been used (`tat = 0`) is full.

/// Bits of the packed state word that hold the TAT; the rest hold the limit generation.
pub(crate) const TAT_BITS: u32 = 58;

/// The largest TAT the state word can hold. Every result saturates here, and a saturated
/// bucket denies everything: running out of range closes the gate, it never opens it.
pub const MAX_UNITS: u64 = (1 << TAT_BITS) - 1;

/// A refill rate of `mant / 2^(shift - frac)` quanta (`mant / 2^shift` units) per nanosecond.
///
/// `mant` is normalised to 64 significant bits (top bit set) wherever the rate allows, so the
/// relative error of the rate is below 2^-63 for every limit from one per century to
/// `u64::MAX` per nanosecond. `mant` is rounded down, so the rate is never overstated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    mant: u64,
    shift: u32,
    frac: i32,
}

/// A clock reading in quanta: the true value lies in `[lo, hi]`, `hi - lo <= 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Rounded down: what a check may count as refilled.
    pub lo: u64,
    /// Rounded up: the earliest a restarted TAT may lie.
    pub hi: u64,
}

impl Rate {
    /// `limit` units per `period_ns`, with whole-unit quanta (see [`Rate::fit`]); `None` when
    /// either is zero (no rate to speak of).
    pub fn new(limit: u64, period_ns: u64) -> Option<Rate> {
        if limit == 0 || period_ns == 0 {
            return None;
        }
        // Long division, one bit at a time, until the quotient has 64 significant bits.
        // This runs at construction and on `set_limit` only.
        let den = period_ns as u128;
        let mut q = limit as u128 / den;
        let mut r = limit as u128 % den;
        let mut shift = 0;
        while q < 1 << 63 && shift < 127 {
            r <<= 1;
            q <<= 1;
            if r >= den {
                r -= den;
                q |= 1;
            }
            shift += 1;
        }
        // q < 2^64 holds: limit / period < 2^64 at shift 0, and each step stops below 2^64.
        Some(Rate {
            mant: q as u64,
            shift,
            frac: 0,
        })
    }

    /// The same rate with as many quanta per unit as fit: at most 2^-5 quanta per ns (so
    /// 2^58 quanta last 2^63 ns, 292 years), a burst that fits the TAT in quanta, and, for
    /// absurdly fast rates, quanta of several units so the TAT still lasts 2^59 ns (18 years).
    pub fn fit(self, burst: u64) -> Rate {
        let shift = self.shift as i32;
        let by_rate = if shift >= 69 {
            shift - 69
        } else {
            (shift - 65).min(0)
        };
        let bits = (64 - burst.leading_zeros()) as i32;
        let by_burst = TAT_BITS as i32 - bits;
        // A quantum never exceeds the burst, or the bucket could hold nothing at all (for an
        // absurd rate with a tiny burst this shortens the TAT's range: it then saturates, and
        // a saturated bucket is closed).
        let floor = -(bits - 1).max(0);
        Rate {
            frac: by_rate.min(by_burst).max(floor).max(-63),
            ..self
        }
    }

    /// Quanta per unit, as a power of two (negative: units per quantum).
    #[cfg(test)]
    pub fn frac(self) -> i32 {
        self.frac
    }

    /// The shift from `now * mant` to quanta.
    #[inline]
    fn s(self) -> u32 {
        (self.shift as i32 - self.frac) as u32
    }

    /// The raw parts `(mant, conv)`, for storing a rate in atomics. `conv` packs what the
    /// conversions need, precomputed once per limit:
    ///
    /// ```text
    /// bits  0..8   k: the shift of the fast reading, s - 64, for s in 65..=127; 0 otherwise
    ///              (k < 64, so `conv & 63` is k)
    /// bits  8..16  s: the shift from `now * mant` to quanta (at most 190)
    /// bits 16..24  frac, as an i8 (-63..=58)
    /// ```
    ///
    /// With `k != 0` a reading is one 64×64 multiply and one 64-bit shift of its high half
    /// ([`admit_ns`]); `fit` gives every limit up to ~10^11 per minute such a shift.
    pub(crate) fn to_raw(self) -> (u64, u64) {
        let s = self.s();
        let k = if (65..128).contains(&s) { s - 64 } else { 0 };
        (
            self.mant,
            k as u64 | (s as u64) << 8 | (self.frac as i8 as u8 as u64) << 16,
        )
    }

    /// This rate in quanta per tick of a counter with `per_tick` nanoseconds per tick (64.64
    /// fixed point, see [`TickScale`](crate::clock::TickScale)), as the raw words
    /// `(m, k)` of [`admit_ticks`]: `m / 2^(64 + k)` quanta per tick, `m` rounded down. `None`
    /// when the shift falls outside `1..64` (then the caller converts ticks to nanoseconds).
    pub(crate) fn per_tick(self, per_tick: u128) -> Option<(u64, u64)> {
        // mant * per_tick: a 192-bit product in three limbs.
        let lo = self.mant as u128 * (per_tick as u64) as u128;
        let hi = self.mant as u128 * ((per_tick >> 64) as u64) as u128;
        let w0 = lo as u64;
        let (w1, carry) = ((lo >> 64) as u64).overflowing_add(hi as u64);
        let w2 = ((hi >> 64) as u64) + carry as u64;
        let bits = if w2 != 0 {
            192 - w2.leading_zeros()
        } else if w1 != 0 {
            128 - w1.leading_zeros()
        } else {
            64 - w0.leading_zeros()
        };
        if bits == 0 {
            return None;
        }
        // m: the top 64 bits of the product, rounded down; quanta per tick = product / 2^(64
        // + s) = m / 2^(128 + s - bits).
        let wide = (w2 as u128) << 64 | w1 as u128;
        let m = if bits > 128 {
            (wide >> (bits - 128)) as u64
        } else if bits > 64 {
            (((w1 as u128) << 64 | w0 as u128) >> (bits - 64)) as u64
        } else {
            w0 << (64 - bits)
        };
        let k = (64 + self.s() as i64) - bits as i64;
        (1..64).contains(&k).then_some((m, k as u64))
    }

    /// Rebuilds a rate from [`Rate::to_raw`]; `None` for the unlimited marker `mant == 0`.
    #[inline]
    pub(crate) fn from_raw(mant: u64, conv: u64) -> Option<Rate> {
        let s = (conv >> 8) as u8 as i32;
        let frac = frac_of(conv);
        (mant != 0).then_some(Rate {
            mant,
            shift: (s + frac) as u32,
            frac,
        })
    }

    /// `n` units in quanta, rounded up (what is *taken*), saturating at [`MAX_UNITS`].
    #[inline]
    pub fn quanta(self, n: u64) -> u64 {
        quanta_at(self.frac, n)
    }

    /// `n` units in quanta, rounded down (what is *given*: a capacity, a refund).
    #[inline]
    pub fn quanta_floor(self, n: u64) -> u64 {
        if self.frac >= 0 {
            self.quanta(n)
        } else {
            (n >> self.frac.unsigned_abs()).min(MAX_UNITS)
        }
    }

    /// Units in `q` quanta, rounded to the nearest whole unit (for reporting use).
    #[inline]
    pub fn nearest(self, q: u64) -> u64 {
        if self.frac > 0 {
            (q >> self.frac as u32) + ((q >> (self.frac as u32 - 1)) & 1)
        } else {
            self.whole(q)
        }
    }

    /// Whole units in `q` quanta, rounded down, saturating at `u64::MAX`.
    #[inline]
    pub fn whole(self, q: u64) -> u64 {
        if self.frac >= 0 {
            q >> self.frac as u32
        } else {
            let k = self.frac.unsigned_abs();
            if q > u64::MAX >> k {
                u64::MAX
            } else {
                q << k
            }
        }
    }

    /// The clock reading `now_ns` in quanta, both roundings, saturating at [`MAX_UNITS`].
    #[inline]
    pub fn at(self, now_ns: u64) -> Now {
        let p = now_ns as u128 * self.mant as u128;
        let s = self.s();
        if s >= 128 {
            return Now {
                lo: 0,
                hi: (p != 0) as u64,
            };
        }
        let lo = p >> s;
        if lo >= MAX_UNITS as u128 {
            return Now {
                lo: MAX_UNITS,
                hi: MAX_UNITS,
            };
        }
        let lo = lo as u64;
        // Exact iff the `s` bits shifted out are all zero.
        let exact = p.trailing_zeros() >= s;
        Now {
            lo,
            hi: lo + !exact as u64,
        }
    }

    /// [`ns_for`](Self::ns_for) in floating point, within a relative 2^-50 or so: for
    /// comparing waits without dividing.
    pub fn ns_estimate(self, q: u64) -> f64 {
        // 2^s, built from its exponent bits (s <= 190, far inside f64's range).
        let two_s = f64::from_bits((1023 + self.s() as u64) << 52);
        (q as f64 * two_s / self.mant as f64).min(u64::MAX as f64)
    }

    /// The earliest clock reading `t` with `at(t).lo >= q`, saturating at `u64::MAX`.
    ///
    /// Exact: `t = ceil(q * 2^s / mant)`, with the 191-bit numerator split in two limbs.
    pub fn ns_for(self, q: u64) -> u64 {
        if q == 0 {
            return 0;
        }
        let m = self.mant as u128;
        let s = self.s();
        let t = if s <= 64 {
            let num = (q as u128) << s;
            num.div_ceil(m)
        } else {
            // num = a * 2^64 with a = q << (s - 64), if that fits in 128 bits.
            if s - 64 > 64 + q.leading_zeros() {
                return u64::MAX; // num >= 2^192: the quotient is far beyond 2^64
            }
            let a = (q as u128) << (s - 64);
            if a / m > 0 {
                return u64::MAX; // the quotient is at least 2^64
            }
            let low = (a % m) << 64;
            low.div_ceil(m)
        };
        u64::try_from(t).unwrap_or(u64::MAX)
    }
}

/// [`Rate::quanta`] for a rate with `frac` (the hot path reads it from the raw `conv` word:
/// [`frac_of`]).
#[inline(always)]
pub fn quanta_at(frac: i32, n: u64) -> u64 {
    if frac >= 0 {
        let f = frac as u32;
        if n > MAX_UNITS >> f {
            MAX_UNITS
        } else {
            n << f
        }
    } else {
        let k = frac.unsigned_abs();
        ((n >> k) + (n & ((1 << k) - 1) != 0) as u64).min(MAX_UNITS)
    }
}

/// [`quanta_at`] for `1 <= n <= cap`, the capacity of a bucket with this `frac` (so the result
/// is at most its burst in quanta and nothing saturates).
#[inline(always)]
pub fn quanta_within(frac: i32, n: u64) -> u64 {
    if frac >= 0 {
        n << frac as u32
    } else {
        // ceil(n / 2^k), for n >= 1.
        ((n - 1) >> frac.unsigned_abs()) + 1
    }
}

/// The `frac` of a rate's raw `conv` word ([`Rate::to_raw`]).
#[inline(always)]
pub fn frac_of(conv: u64) -> i32 {
    (conv >> 16) as u8 as i8 as i32
}

/// Admits `n` quanta at `now` against a bucket of capacity `burst` quanta.
///
/// `Ok(new_tat)` when the bucket holds `n`; otherwise `Err(target)`: the reading (`lo`, in
/// quanta) at which the same call would succeed (`target > now.lo`). The caller rejects
/// `n > burst` first, since such a call can never succeed.
#[inline]
pub fn admit(tat: u64, now: Now, n: u64, burst: u64) -> Result<u64, u64> {
    let new_tat = claim(tat, now, n);
    // A saturated new_tat never conforms.
    if new_tat < MAX_UNITS && used(tat, now.lo).saturating_add(n) <= burst {
        Ok(new_tat)
    } else {
        Err(tat.saturating_add(n).saturating_sub(burst).max(now.lo + 1))
    }
}

/// [`admit`] for a clock reading in nanoseconds, on a rate's raw words ([`Rate::to_raw`]):
/// the hot path of an immediate admission. Requires `1 <= n <= burst` (the caller checks the
/// capacity). `Some(d)` exactly when `admit(tat, rate.at(now_ns), n, burst)` is `Ok(tat + d)`;
/// `None` when it refuses (the refusal's target is for the cold path to ask [`admit`]).
///
/// For `k != 0` the reading is `lo = (now * mant) >> s` with `s = 64 + k`: the high half of
/// one 64×64 product shifted by `k`, below 2^63, so `lo + 1 + n` cannot overflow. `hi`
/// (the restart point) is needed only when the bucket is idle (`tat <= lo`); while it is in use
/// `max(tat, hi) = tat`, since `tat > lo` means `tat >= lo + 1 >= hi`, and the TAT moves by `n`.
#[inline(always)]
pub fn admit_ns(tat: u64, now_ns: u64, n: u64, burst: u64, mant: u64, conv: u64) -> Option<u64> {
    let k = (conv & 63) as u32;
    if k == 0 {
        return admit_slow(tat, now_ns, n, burst, mant, conv);
    }
    let p = now_ns as u128 * mant as u128;
    let (high, low) = ((p >> 64) as u64, p as u64);
    let lo = high >> k;
    if tat > lo {
        let next = tat + n;
        (next - lo <= burst && next < MAX_UNITS).then_some(n)
    } else {
        // Idle: restart from `hi`, rounded up unless the reading is exact. Conforms, as
        // `n <= burst` and nothing is in use at `lo`.
        let exact = low == 0 && high & ((1 << k) - 1) == 0;
        let next = lo + !exact as u64 + n;
        (next < MAX_UNITS).then(|| next - tat)
    }
}

/// [`admit`] for a reading of `t` ticks of a counter, on a rate's per-tick words `(m, k)`
/// ([`Rate::per_tick`]). `Some(d)` exactly when `admit(tat, Now { lo: l - 1, hi: l + 2 }, n,
/// burst)` is `Ok(tat + d)`, where `l = (t * m) >> (64 + k)` (and `l - 1` saturates at 0).
/// Requires `1 <= n <= burst` and `1 <= k < 64`.
///
/// That bracket holds what the same moment reads in nanoseconds: with `x` the exact
/// nanoseconds of `t` ticks and `r < 1` quanta per nanosecond, the nanosecond path reads `lo =
/// floor(floor(x) r) >= floor(x r) - 1 >= l - 1` (`m` is rounded down, so `l <= floor(x r)`)
/// and restarts from `hi = ceil(floor(x) r) <= floor(x r) + 1 <= l + 2` (`m`'s rounding loses
/// less than one quantum: `l >= floor(x r) - 1`). So a decision on ticks sees no more refill
/// and restarts no earlier than the same decision on the clock's nanoseconds: never more
/// permissive, and at most two quanta stricter.
#[inline(always)]
pub fn admit_ticks(tat: u64, t: u64, n: u64, burst: u64, m: u64, k: u64) -> Option<u64> {
    let l = ((t as u128 * m as u128) >> 64) as u64 >> (k & 63);
    // Branch-free: an idle bucket's TAT often lies inside the three-quantum bracket, on
    // either side of `l + 2` by the chance of when the call comes, and a branch on it would
    // be mispredicted as often. (l < 2^63 as k >= 1, so no sum below overflows.)
    let lo = l.saturating_sub(1);
    let next = tat.max(l + 2) + n;
    let conforms = tat.saturating_sub(lo) + n <= burst;
    (conforms & (next < MAX_UNITS)).then(|| next - tat)
}

/// The reading (`lo`, in quanta) at which `n` quanta at `now_ns` would conform: the target
/// [`admit`] reports for a refusal, on a rate's raw words (with the fast reading where
/// [`admit_ns`] has one). Where they conform already it is one quantum ahead of the reading:
/// the wait of a decision on ticks (up to two quanta stricter than on their nanoseconds) that
/// the nanoseconds would not have refused.
pub fn target_ns(tat: u64, now_ns: u64, n: u64, burst: u64, mant: u64, conv: u64) -> u64 {
    let k = (conv & 63) as u32;
    let lo = if k != 0 {
        (((now_ns as u128 * mant as u128) >> 64) as u64 >> k).min(MAX_UNITS)
    } else {
        Rate::from_raw(mant, conv).map_or(0, |rate| rate.at(now_ns).lo)
    };
    tat.saturating_add(n).saturating_sub(burst).max(lo + 1)
}

/// [`admit_ns`] for the rates the fast reading does not cover (absurd rates with tiny bursts,
/// and rates below one quantum per 2^64 ns).
#[cold]
#[inline(never)]
fn admit_slow(tat: u64, now_ns: u64, n: u64, burst: u64, mant: u64, conv: u64) -> Option<u64> {
    let rate = Rate::from_raw(mant, conv)?;
    admit(tat, rate.at(now_ns), n, burst)
        .ok()
        .map(|next| next - tat)
}

/// Takes `n` quanta unconditionally: the TAT after a waiter's claim, or after a charge that may
/// run the bucket into debt. The claim conforms at reading `new_tat - burst` (see [`ready`]).
#[inline]
pub fn claim(tat: u64, now: Now, n: u64) -> u64 {
    tat.max(now.hi).saturating_add(n).min(MAX_UNITS)
}

/// The reading (`lo`, in quanta) at which a bucket with TAT `tat` is out of debt and
/// conforms to a claim that produced it.
#[inline]
pub fn ready(tat: u64, burst: u64) -> u64 {
    tat.saturating_sub(burst)
}

/// Quanta in use at reading `lo`: how far the TAT runs ahead. More than `burst` means debt.
#[inline]
pub fn used(tat: u64, lo: u64) -> u64 {
    tat.saturating_sub(lo)
}

/// Gives back up to `n` quanta that were taken with resulting TAT `granted_tat`.
///
/// The promise: the bucket ends up no more permissive than the history in which the withdrawn
/// units were never taken, every other caller keeping the instant it was *released* at. The
/// refund moves the TAT back by `r`; that is the history without the units only if every later
/// claim's slot could slide back by `r` without releasing anyone earlier than they are
/// released. Two things stop a slot from sliding:
///
/// - **A restart.** Had the units never been taken, a later admission at reading `t` would have
///   found the bucket fuller and restarted the TAT at `t`. Every admission reflected in the
///   state was released at a reading no later than `u_ref` (the atomic layer passes a reading
///   taken after loading the state, and never below a reading any caller passed), so only the
///   part of the grant after `u_ref` can come back: `r <= granted_tat - u_ref`.
/// - **A pending waiter.** A waiter `j` released at a future instant `rho_j` is, in that
///   history, an admission at `rho_j`: its slot can start no earlier than `rho_j`. Sliding it
///   back by more than `slack_j = slot start - rho_j` would let a new claim at the tail share
///   its release window. So when anything was placed after the grant (`tat > granted_tat`)
///   and a waiter is still pending, `r <= min_j slack_j` (`pending_slack`, kept by the atomic
///   layer; `None` when no waiter is pending).
///
/// Nothing else can stop a slot: claims are released no earlier than their slot conforms, and
/// a claim that restarted the TAT at its release instant has slack 0.
#[inline]
pub fn refund(tat: u64, granted_tat: u64, u_ref: u64, n: u64, pending_slack: Option<u64>) -> u64 {
    let mut r = n.min(granted_tat.saturating_sub(u_ref));
    if tat > granted_tat {
        if let Some(slack) = pending_slack {
            r = r.min(slack);
        }
    }
    tat.saturating_sub(r)
}

/// The TAT that keeps the same units in use at one instant under a new rate: the reading is
/// `old` under the old rate and `new` under the new one. Debt is carried over too, and the
/// quanta are converted rounding up, so nothing in use is lost. A saturated TAT stays
/// saturated.
#[inline]
pub fn rescale(tat: u64, old: Rate, u_old: Now, new: Rate, u_new: Now) -> u64 {
    if tat >= MAX_UNITS {
        // Saturated: a debt beyond the TAT's range. Its size is unknown, so it stays closed
        // rather than turning into a finite debt a faster rate would pay off early.
        return MAX_UNITS;
    }
    let q = used(tat, u_old.lo);
    let k = (new.frac - old.frac).unsigned_abs();
    let q = if new.frac >= old.frac {
        if k >= TAT_BITS || q > MAX_UNITS >> k {
            MAX_UNITS.min(q.saturating_mul(u64::MAX))
        } else {
            q << k
        }
    } else if k >= 64 {
        (q != 0) as u64
    } else {
        (q >> k) + (q & ((1 << k) - 1) != 0) as u64
    };
    u_new.hi.saturating_add(q).min(MAX_UNITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exact reading.
    fn x(u: u64) -> Now {
        Now { lo: u, hi: u }
    }

    const MIN: u64 = 60_000_000_000;
    const DAY: u64 = 86_400_000_000_000;

    #[test]
    fn rate_is_normalised_and_never_overstated() {
        for &(limit, period) in &[
            (1, DAY),
            (60, MIN),
            (59_999_999, MIN),
            (10_000_000_000, MIN),
            (u64::MAX, 1),
            (1, u64::MAX),
        ] {
            let r = Rate::new(limit, period).unwrap();
            assert!(r.mant >= 1 << 63 || r.shift == 0, "{limit}/{period}: {r:?}");
            // mant / 2^shift <= limit / period  <=>  mant * period <= limit * 2^shift
            let lhs = r.mant as f64 * period as f64;
            let rhs = limit as f64 * 2f64.powi(r.shift as i32);
            assert!(lhs <= rhs * (1.0 + 1e-15), "{limit}/{period} overstated");
            assert!(lhs >= rhs * (1.0 - 1e-15), "{limit}/{period} imprecise");
        }
        assert_eq!(Rate::new(0, MIN), None);
        assert_eq!(Rate::new(5, 0), None);
    }

    #[test]
    fn units_round_down_and_are_exact_at_period_boundaries() {
        // The stored rate is rounded down, so at an exact boundary a reading may be one unit
        // short (conservative), never over, and the shortfall does not grow with time.
        let r = Rate::new(59_999_999, MIN).unwrap();
        for k in [1u64, 1000, 1_000_000] {
            let exact = 59_999_999 * k;
            let got = r.at(k * MIN).lo;
            assert!(got <= exact && got + 1 >= exact, "{k}: {got} vs {exact}");
            assert_eq!(r.at(k * MIN + 1).lo, exact, "one ns later it is exact");
        }
        let day = Rate::new(1, DAY).unwrap();
        assert_eq!(day.at(DAY - 1).lo, 0);
        assert_eq!(day.at(DAY + 1).lo, 1);
        assert_eq!(day.ns_for(1), DAY + 1, "ns_for inverts units_at exactly");
        // A binary-exact rate is exact everywhere.
        let eighth = Rate::new(1, 8).unwrap();
        assert_eq!((eighth.at(7).lo, eighth.at(8).lo), (0, 1));
        assert_eq!(eighth.ns_for(3), 24);
        let fast = Rate::new(10_000_000_000, MIN).unwrap();
        assert_eq!(fast.at(6).lo, 0); // 0.99999.. units: rounded down
        assert_eq!(fast.at(7).lo, 1);
    }

    #[test]
    fn units_saturate_instead_of_wrapping() {
        let r = Rate::new(u64::MAX, 1).unwrap();
        assert_eq!(r.at(u64::MAX).lo, MAX_UNITS);
        assert_eq!(r.at(1).lo, MAX_UNITS);
    }

    #[test]
    fn ns_for_is_the_exact_inverse() {
        for &(limit, period) in &[
            (1, DAY),
            (60, MIN),
            (7, 3),
            (59_999_999, MIN),
            (10_000_000_000, MIN),
            (1, u64::MAX),
        ] {
            let r = Rate::new(limit, period).unwrap();
            for units in [1u64, 2, 3, 59_999_999, 1 << 40, MAX_UNITS] {
                let t = r.ns_for(units);
                if t == u64::MAX {
                    continue;
                }
                assert!(r.at(t).lo >= units, "{limit}/{period} u={units} t={t}");
                assert!(r.at(t - 1).lo < units, "{limit}/{period} u={units} t={t}");
            }
        }
    }

    #[test]
    fn admit_fills_burst_then_denies_with_target() {
        let burst = 3;
        let mut tat = 0;
        for _ in 0..3 {
            tat = admit(tat, x(10), 1, burst).unwrap();
        }
        assert_eq!(tat, 13);
        // Holds 0 now; one unit refills by u = 11.
        assert_eq!(admit(tat, x(10), 1, burst), Err(11));
        assert_eq!(admit(tat, x(11), 1, burst), Ok(14));
        // Asking for 2 at u = 12 needs the bucket at 14 + 2 - 3 = 13.
        assert_eq!(admit(14, x(12), 2, burst), Err(13));
    }

    #[test]
    fn admit_never_succeeds_at_saturation() {
        assert!(admit(MAX_UNITS - 1, x(MAX_UNITS - 1), 1, 10).is_err());
        assert!(admit(0, x(MAX_UNITS), 1, u64::MAX).is_err());
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let tat = admit(0, x(100), 5, 5).unwrap();
        // An earlier reading sees the bucket emptier, never fuller.
        assert!(admit(tat, x(50), 1, 5).is_err());
        assert_eq!(used(tat, 50), 55);
    }

    #[test]
    fn refund_is_exact_when_alone_and_zero_once_expired() {
        let before = 10;
        let granted = admit(before, x(10), 4, 10).unwrap();
        assert_eq!(refund(granted, granted, 10, 4, None), before);
        // Partly expired: only the part after u_ref comes back.
        assert_eq!(refund(granted, granted, 12, 4, None), 12);
        // Fully expired: nothing.
        assert_eq!(refund(granted, granted, 20, 4, None), granted);
        // A pending waiter before the grant does not limit it: nothing was placed after.
        assert_eq!(refund(granted, granted, 10, 4, Some(0)), before);
    }

    #[test]
    fn refund_behind_a_pending_waiter_gives_at_most_its_slack() {
        // Burst 1 (one quantum per unit here): X, A, B, C claimed at 0 with slots ending at
        // 1, 2, 3, 4, released at 0, 1, 2, 3. A is cancelled at 0.5 (u_ref 0): B and C are
        // pending with slack 0 (burst 1 - 1 unit), so nothing comes back: a new claim D
        // lands after C, not beside it.
        assert_eq!(refund(4, 2, 0, 1, Some(0)), 4);
        // Burst 3: the same pending claims leave slack 2, so up to 2 come back.
        assert_eq!(refund(10, 5, 0, 4, Some(2)), 8);
        // No waiter pending: only expiry limits.
        assert_eq!(refund(10, 5, 0, 4, None), 6);
    }

    #[test]
    fn rescale_keeps_used_and_debt() {
        let r = Rate::new(1, 1).unwrap(); // binary-exact: one unit per ns, frac 0
        assert_eq!(rescale(150, r, x(100), r, x(7)), 57);
        assert_eq!(rescale(50, r, x(100), r, x(7)), 7);
        assert_eq!(rescale(MAX_UNITS, r, x(0), r, x(5)), MAX_UNITS);
        // Across quanta sizes: 3 units in use stay 3 units, rounding up partial quanta.
        let fine = Rate::new(1, 1 << 20).unwrap().fit(1000);
        assert!(fine.frac() > 0);
        let f = fine.frac();
        assert_eq!(rescale(100 + 3, r, x(100), fine, x(0)), 3 << f);
        assert_eq!(rescale((3 << f) + 1, fine, x(0), r, x(9)), 9 + 4);
    }

    #[test]
    fn idle_restart_rounds_up_and_check_rounds_down() {
        // 1 unit per 3 us with fine quanta: a reading at 1 us lies between quanta.
        let r = Rate::new(1, 3000).unwrap().fit(2);
        let q = r.quanta(1);
        assert!(q > 1);
        let now = r.at(1000);
        assert_eq!(
            now.hi,
            now.lo + 1,
            "1/3 unit is not a whole number of quanta"
        );
        // A full bucket grants its whole burst at once...
        let tat = admit(0, now, 2 * q, 2 * q).unwrap();
        assert_eq!(tat, now.hi + 2 * q, "restart from the later rounding");
        // ...and nothing more until a whole unit has refilled after the true time (4 us),
        // late by at most two quanta (one per rounding).
        assert!(admit(tat, r.at(3999), q, 2 * q).is_err());
        assert!(admit(tat, r.at(4000 + 2 * r.ns_for(1)), q, 2 * q).is_ok());
    }

    #[test]
    fn readings_round_both_ways_consistently() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for &(limit, period) in &[(1, DAY), (60, MIN), (59_999_999, MIN), (7, 3), (1, 8)] {
            let r = Rate::new(limit, period).unwrap().fit(limit);
            for _ in 0..10_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                for t in [x, x >> 20, x >> 40, (x >> 40) / period * period] {
                    let p = t as u128 * r.mant as u128;
                    let lo = (p >> r.s()).min(MAX_UNITS as u128) as u64;
                    let rem = p & ((1u128 << r.s()) - 1);
                    let hi = if lo == MAX_UNITS {
                        lo
                    } else {
                        lo + (rem != 0) as u64
                    };
                    assert_eq!(r.at(t), Now { lo, hi }, "{limit}/{period} at {t}");
                }
            }
        }
    }

    #[test]
    fn the_fast_reading_decides_exactly_as_the_general_one() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let configs = [
            (1, DAY, 1),
            (60, MIN, 60),
            (59_999_999, MIN, 1_000),
            (10_000_000_000, MIN, 10_000_000_000),
            (1_000_000_000, 1_000_000_000, 1_000_000_000),
            (1_000_000_000_000, 1_000_000_000, 1_000),
            (7, 3, 7),
            (1, 8, 3),
            (1, u64::MAX, 5),
            (u64::MAX, 1, 1),
            (3, MIN, u64::MAX),
        ];
        for &(limit, period, burst) in &configs {
            let r = Rate::new(limit, period).unwrap().fit(burst);
            let bq = r.quanta_floor(burst);
            let (mant, conv) = r.to_raw();
            assert_eq!(Rate::from_raw(mant, conv), Some(r), "raw parts round-trip");
            for _ in 0..20_000 {
                let a = next();
                let now = match a % 4 {
                    0 => a >> (a % 64),
                    1 => (a >> 20) / period.max(1) * period, // period boundaries: exact readings
                    2 => a,
                    _ => a >> 40,
                };
                let at = r.at(now);
                let tat = match next() % 3 {
                    0 => at.lo.saturating_sub(next() % 4),
                    1 => at.lo.saturating_add(next() % (bq + 2)).min(MAX_UNITS),
                    _ => next() & MAX_UNITS,
                };
                let n = 1 + next() % bq.max(1);
                if n > bq {
                    continue;
                }
                let units = 1 + next() % r.whole(bq).min(burst);
                assert_eq!(quanta_within(r.frac(), units), r.quanta(units));
                assert_eq!(
                    admit_ns(tat, now, n, bq, mant, conv).map(|d| tat + d),
                    admit(tat, at, n, bq).ok(),
                    "{limit}/{period} burst {burst}: tat {tat} now {now} n {n}"
                );
                if let Err(target) = admit(tat, at, n, bq) {
                    assert_eq!(target_ns(tat, now, n, bq, mant, conv), target);
                    let (e, x) = (r.ns_estimate(target), r.ns_for(target) as f64);
                    assert!((e - x).abs() <= x * 1e-12 + 1.0, "{e} vs {x}");
                }
            }
        }
    }

    #[test]
    fn a_tick_reading_brackets_the_nanosecond_reading_of_the_same_moment() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // ns per tick: a 2.6 GHz and a 1 GHz counter, a slow one, and plain nanoseconds.
        let scales = [
            0x6276_2762_7627_6276u128, // ~0.3846 ns per tick
            1u128 << 64,
            (41u128 << 64) | 0x8000_0000_0000_0000,
            1 << 63,
        ];
        let configs = [
            (1, DAY, 1),
            (60, MIN, 60),
            (59_999_999, MIN, 1_000),
            (10_000_000_000, MIN, 10_000_000_000),
            (1_000_000_000, 1_000_000_000, 1_000),
            (1_000_000_000_000, 1_000_000_000, 1_000_000_000_000),
            (7, 3, 7),
            (3, MIN, 1 << 50),
        ];
        for &p in &scales {
            let scale = crate::clock::TickScale::new((p >> 64) as u64, p as u64).unwrap();
            for &(limit, period, burst) in &configs {
                let r = Rate::new(limit, period).unwrap().fit(burst);
                let Some((m, k)) = r.per_tick(p) else {
                    // Only absurd rates (a quantum or more per tick) or ticks of several
                    // nanoseconds beside sub-nanosecond quanta lack the tick path.
                    assert!(
                        p > 1 << 64 || limit > period,
                        "{limit}/{period} at {p:#x}: no tick path"
                    );
                    continue;
                };
                let bq = r.quanta_floor(burst);
                for _ in 0..20_000 {
                    let a = next();
                    let t = match a % 3 {
                        0 => a >> (a % 64),
                        1 => a >> 24,
                        _ => a,
                    };
                    let ns = scale.ns(t);
                    if ns == u64::MAX {
                        continue; // beyond 2^64 ns (584 years) of the counter: out of range
                    }
                    let at = r.at(ns);
                    let l = ((t as u128 * m as u128) >> 64) as u64 >> k;
                    if at.lo >= MAX_UNITS {
                        continue; // beyond the TAT's range: saturated either way
                    }
                    assert!(
                        l.saturating_sub(1) <= at.lo,
                        "{limit}/{period} t {t}: {l} vs {at:?}"
                    );
                    assert!(l + 2 >= at.hi, "{limit}/{period} t {t}: {l} vs {at:?}");
                    let tat = at.lo.saturating_add(next() % (bq + 3)).saturating_sub(2);
                    let n = 1 + next() % bq.max(1);
                    if n > bq {
                        continue;
                    }
                    let bracket = Now {
                        lo: l.saturating_sub(1),
                        hi: l + 2,
                    };
                    assert_eq!(
                        admit_ticks(tat, t, n, bq, m, k).map(|d| tat + d),
                        admit(tat, bracket, n, bq).ok(),
                        "{limit}/{period}: tat {tat} t {t} n {n}"
                    );
                    // Never more permissive than the nanosecond decision.
                    if admit_ticks(tat, t, n, bq, m, k).is_some() {
                        let by_ns = admit(tat, at, n, bq).expect("the ns path admits too");
                        assert!(tat + admit_ticks(tat, t, n, bq, m, k).unwrap() >= by_ns);
                    }
                }
            }
        }
    }

    #[test]
    fn fit_bounds_quanta_by_rate_and_burst() {
        let per_min = Rate::new(60, MIN).unwrap();
        let f = per_min.fit(60).frac();
        // A quantum is at most 64 ns of refill, and the TAT spans 2^63 ns.
        assert!(per_min.fit(60).ns_for(1) <= 64, "{f}");
        assert!(per_min.fit(60).at(1 << 63).lo < MAX_UNITS);
        assert!(
            per_min.fit(u64::MAX).frac() < 0,
            "a burst of 2^64 needs coarse quanta"
        );
        // Absurd rates get coarse quanta, rounded the safe way, and a TAT lasting 2^60 ns.
        let absurd = Rate::new(u64::MAX, MIN).unwrap().fit(u64::MAX);
        assert!(absurd.frac() < 0);
        assert!(absurd.at(1 << 59).lo < MAX_UNITS);
        let k = absurd.frac().unsigned_abs();
        assert_eq!(absurd.quanta(1), 1, "taking rounds up");
        assert_eq!(absurd.quanta_floor(1), 0, "giving rounds down");
        assert_eq!(absurd.quanta((1 << k) + 1), 2);
        assert_eq!(absurd.whole(3), 3 << k);
        assert!(
            absurd.ns_for(1) <= 8,
            "a quantum is still only nanoseconds of refill"
        );
        assert_eq!(Rate::new(10_000_000_000, MIN).unwrap().fit(10).frac(), 0);
    }
}
