//! The GCRA arithmetic as plain functions of `(state, now, params)`: no atomics, no clock.
//!
//! # Units, not nanoseconds
//!
//! A bucket's state is its *theoretical arrival time* (TAT), but we do not measure it in
//! nanoseconds. We measure it in **units**: one unit is the time the bucket takes to refill by
//! one request (or one token). In that time base the emission interval is exactly `1`, so
//! admitting `n` units moves the TAT by exactly `n` and no rounding accumulates, whatever the
//! rate. (Integer-nanosecond intervals would round 60e9 / 59,999,999 ns = 1000.00002 ns up to
//! 1001 ns and lose 0.1% of a high limit.)
//!
//! Only the conversion from clock nanoseconds to units rounds, and it rounds *down*
//! ([`Rate::units_at`]): a reading that is up to one unit late is conservative and does not
//! accumulate, because it is recomputed from the clock on every call.
//!
//! # The rule
//!
//! With `u = units_at(now)`, the bucket holds `burst - (max(tat, u) - u)` units. Admitting `n`
//! units is allowed iff it holds at least `n`, and sets `tat = max(tat, u) + n`. A bucket that
//! has never been used (`tat = 0`) is full.

/// Bits of the packed state word that hold the TAT; the rest hold the limit generation.
pub(crate) const TAT_BITS: u32 = 58;

/// The largest TAT the state word can hold. Every result saturates here, and a saturated
/// bucket denies everything: running out of range closes the gate, it never opens it.
///
/// At 10^10 units per minute this is 55 years of continuous operation.
pub const MAX_UNITS: u64 = (1 << TAT_BITS) - 1;

/// A refill rate of `mant / 2^shift` units per nanosecond.
///
/// `mant` is normalised to 64 significant bits (top bit set) wherever the rate allows, so the
/// relative error of the rate is below 2^-63 for every limit from one per century to
/// `u64::MAX` per nanosecond. `mant` is rounded down, so the rate is never overstated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    mant: u64,
    shift: u32,
}

impl Rate {
    /// `limit` units per `period_ns`; `None` when either is zero (no rate to speak of).
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
        })
    }

    /// The raw parts `(mant, shift)`, for storing a rate in atomics.
    pub(crate) fn to_raw(self) -> (u64, u32) {
        (self.mant, self.shift)
    }

    /// Rebuilds a rate from [`Rate::to_raw`]; `None` for the unlimited marker `mant == 0`.
    pub(crate) fn from_raw(mant: u64, shift: u32) -> Option<Rate> {
        (mant != 0).then_some(Rate { mant, shift })
    }

    /// The clock reading `now_ns` in units, rounded down, saturating at [`MAX_UNITS`].
    #[inline]
    pub fn units_at(self, now_ns: u64) -> u64 {
        let units = (now_ns as u128 * self.mant as u128) >> self.shift;
        if units > MAX_UNITS as u128 {
            MAX_UNITS
        } else {
            units as u64
        }
    }

    /// The earliest clock reading `t` with `units_at(t) >= units`, saturating at `u64::MAX`.
    ///
    /// Exact: `t = ceil(units * 2^shift / mant)`, with the 191-bit numerator split in two limbs.
    pub fn ns_for(self, units: u64) -> u64 {
        if units == 0 {
            return 0;
        }
        let m = self.mant as u128;
        let t = if self.shift <= 64 {
            let num = (units as u128) << self.shift;
            num.div_ceil(m)
        } else {
            // num = a * 2^64 with a = units << (shift - 64) < 2^127.
            let a = (units as u128) << (self.shift - 64);
            if a / m > 0 {
                return u64::MAX; // the quotient is at least 2^64
            }
            let low = (a % m) << 64;
            low.div_ceil(m)
        };
        u64::try_from(t).unwrap_or(u64::MAX)
    }
}

/// Admits `n` units at `u` (now, in units) against a bucket of capacity `burst`.
///
/// `Ok(new_tat)` when the bucket holds `n` units; otherwise `Err(target)`: the unit-time at
/// which the same call would succeed (`target > u`). The caller rejects `n > burst` first,
/// since such a call can never succeed.
#[inline]
pub fn admit(tat: u64, u: u64, n: u64, burst: u64) -> Result<u64, u64> {
    let new_tat = claim(tat, u, n);
    // Conforms iff max(tat, u) + n <= u + burst. A saturated new_tat never conforms.
    if new_tat < MAX_UNITS && new_tat <= u.saturating_add(burst) {
        Ok(new_tat)
    } else {
        Err(new_tat.saturating_sub(burst).max(u + 1))
    }
}

/// Takes `n` units unconditionally: the TAT after a waiter's claim, or after a charge that may
/// run the bucket into debt. The claim conforms at unit-time `new_tat - burst`.
#[inline]
pub fn claim(tat: u64, u: u64, n: u64) -> u64 {
    tat.max(u).saturating_add(n).min(MAX_UNITS)
}

/// Units in use at `u`: how far the TAT runs ahead of now. More than `burst` means debt.
#[inline]
pub fn used(tat: u64, u: u64) -> u64 {
    tat.saturating_sub(u)
}

/// Gives back up to `n` units that were admitted with resulting TAT `granted_tat`.
///
/// An exact undo is impossible once other admissions have followed: had the withdrawn units
/// never been admitted, a later admission at time `u_i > granted_tat - n` would have found the
/// bucket fuller and reset the TAT to `u_i`, wasting refill that the refund cannot recover.
/// Every such admission used a clock reading `u_i <= u_ref`, provided `u_ref` was read after
/// the state those admissions left (the atomic layer guarantees this). So refunding only the
/// part of the grant that still lies after `u_ref`,
///
/// ```text
/// r = min(n, granted_tat - u_ref)
/// ```
///
/// leaves the bucket exactly as permissive as the history without the withdrawn units when no
/// admission reset the TAT, and never more permissive when one did (then `u_ref >= u_i >
/// granted_tat`, so `r = 0`).
#[inline]
pub fn refund(tat: u64, granted_tat: u64, u_ref: u64, n: u64) -> u64 {
    let r = n.min(granted_tat.saturating_sub(u_ref));
    tat.saturating_sub(r)
}

/// The TAT that keeps the same number of used units at `now` under a new rate:
/// `u_new + (tat - u_old)`. Debt is carried over too.
#[inline]
pub fn rescale(tat: u64, u_old: u64, u_new: u64) -> u64 {
    u_new.saturating_add(used(tat, u_old)).min(MAX_UNITS)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let got = r.units_at(k * MIN);
            assert!(got <= exact && got + 1 >= exact, "{k}: {got} vs {exact}");
            assert_eq!(r.units_at(k * MIN + 1), exact, "one ns later it is exact");
        }
        let day = Rate::new(1, DAY).unwrap();
        assert_eq!(day.units_at(DAY - 1), 0);
        assert_eq!(day.units_at(DAY + 1), 1);
        assert_eq!(day.ns_for(1), DAY + 1, "ns_for inverts units_at exactly");
        // A binary-exact rate is exact everywhere.
        let eighth = Rate::new(1, 8).unwrap();
        assert_eq!((eighth.units_at(7), eighth.units_at(8)), (0, 1));
        assert_eq!(eighth.ns_for(3), 24);
        let fast = Rate::new(10_000_000_000, MIN).unwrap();
        assert_eq!(fast.units_at(6), 0); // 0.99999.. units: rounded down
        assert_eq!(fast.units_at(7), 1);
    }

    #[test]
    fn units_saturate_instead_of_wrapping() {
        let r = Rate::new(u64::MAX, 1).unwrap();
        assert_eq!(r.units_at(u64::MAX), MAX_UNITS);
        assert_eq!(r.units_at(1), MAX_UNITS);
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
                assert!(r.units_at(t) >= units, "{limit}/{period} u={units} t={t}");
                assert!(
                    r.units_at(t - 1) < units,
                    "{limit}/{period} u={units} t={t}"
                );
            }
        }
    }

    #[test]
    fn admit_fills_burst_then_denies_with_target() {
        let burst = 3;
        let mut tat = 0;
        for _ in 0..3 {
            tat = admit(tat, 10, 1, burst).unwrap();
        }
        assert_eq!(tat, 13);
        // Holds 0 now; one unit refills by u = 11.
        assert_eq!(admit(tat, 10, 1, burst), Err(11));
        assert_eq!(admit(tat, 11, 1, burst), Ok(14));
        // Asking for 2 at u = 12 needs the bucket at 14 + 2 - 3 = 13.
        assert_eq!(admit(14, 12, 2, burst), Err(13));
    }

    #[test]
    fn admit_never_succeeds_at_saturation() {
        assert!(admit(MAX_UNITS - 1, MAX_UNITS - 1, 1, 10).is_err());
        assert!(admit(0, MAX_UNITS, 1, u64::MAX).is_err());
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let tat = admit(0, 100, 5, 5).unwrap();
        // An earlier reading sees the bucket emptier, never fuller.
        assert!(admit(tat, 50, 1, 5).is_err());
        assert_eq!(used(tat, 50), 55);
    }

    #[test]
    fn refund_is_exact_when_alone_and_zero_once_expired() {
        let before = 10;
        let granted = admit(before, 10, 4, 10).unwrap();
        assert_eq!(refund(granted, granted, 10, 4), before);
        // Partly expired: only the part after u_ref comes back.
        assert_eq!(refund(granted, granted, 12, 4), 12);
        // Fully expired: nothing.
        assert_eq!(refund(granted, granted, 20, 4), granted);
    }

    #[test]
    fn rescale_keeps_used_and_debt() {
        assert_eq!(rescale(150, 100, 7), 57);
        assert_eq!(rescale(50, 100, 7), 7);
        assert_eq!(rescale(MAX_UNITS, 0, 5), MAX_UNITS);
    }
}
