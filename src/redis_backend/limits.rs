//! The limits a Redis limiter sends: each bucket's rate, window and burst, checked up front so
//! that the script's doubles stay exact.

use super::protocol::{BucketLimits, Limits};
use crate::budget::Burst;
use crate::error::Error;

/// A full bucket, in the script's ticks, stays below this so that its doubles are exact.
const EXACT_LIMIT: u128 = 1 << 52;

/// How a limiter turns `(rpm, tpm)` into the script's limits.
#[derive(Debug)]
pub(crate) struct Config {
    pub period_us: u64,
    pub request_burst: Burst,
    pub token_burst: Burst,
}

impl Config {
    /// Both buckets' limits for `rpm` requests and `tpm` tokens per period.
    pub(crate) fn limits(&self, rpm: u64, tpm: u64) -> Result<Limits, Error> {
        Ok([
            self.bucket(rpm, self.request_burst)?,
            self.bucket(tpm, self.token_burst)?,
        ])
    }

    /// One bucket (burst 0 when unlimited), after checking the script can be exact.
    fn bucket(&self, limit: u64, burst: Burst) -> Result<BucketLimits, Error> {
        let window_us = self.period_us;
        if limit == 0 {
            return Ok(BucketLimits {
                limit,
                window_us,
                burst: 0,
            });
        }
        // The same policy as in process (a window stays a window across set_limit).
        burst.check()?;
        let units = burst.units(limit, window_us.saturating_mul(1000));
        // The script counts a unit as P = window/gcd(limit, window) ticks; a full bucket must
        // stay below 2^52 ticks for its doubles to be exact.
        let p = (window_us / gcd(limit, window_us)) as u128;
        if units as u128 * p >= EXACT_LIMIT {
            return Err(Error::InvalidConfig(
                "limit and period too fine for the redis backend's exact arithmetic",
            ));
        }
        Ok(BucketLimits {
            limit,
            window_us,
            burst: units,
        })
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(period_us: u64) -> Config {
        Config {
            period_us,
            request_burst: Burst::Period,
            token_burst: Burst::Window(Duration::from_secs(6)),
        }
    }

    fn b(limit: u64, burst: u64) -> BucketLimits {
        BucketLimits {
            limit,
            window_us: 60_000_000,
            burst,
        }
    }

    #[test]
    fn bursts_follow_the_policy_and_unlimited_has_none() {
        let c = config(60_000_000);
        assert_eq!(
            c.limits(600, 100_000),
            Ok([b(600, 600), b(100_000, 10_000)])
        );
        assert_eq!(c.limits(0, 0), Ok([b(0, 0), b(0, 0)]));
    }

    #[test]
    fn limits_whose_full_bucket_reaches_2_pow_52_ticks_are_refused() {
        let c = config(60_000_000);
        // Coprime with the period: a unit is 6e7 ticks; 2^52 / 6e7 ≈ 75.06e6 units is the edge.
        assert!(c.bucket(75_100_003, Burst::Period).is_err());
        assert!(c.bucket(70_000_001, Burst::Period).is_ok());
        // Round limits reduce: 1.5e8 per minute is 5 per 2 µs, P = 2.
        assert_eq!(
            c.bucket(150_000_000, Burst::Period).map(|b| b.burst),
            Ok(150_000_000)
        );
        assert!(c.bucket(10, Burst::Units(0)).is_err());
    }
}
