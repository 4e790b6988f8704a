//! The pending-waiters word: what a refund must know about waiters not yet released.
//!
//! A refund may move a bucket's TAT back only as far as every claim placed after the grant can
//! slide without being released earlier than it is (see [`gcra::refund`](crate::gcra::refund)).
//! A waiter `j` released at a future instant `rho_j` can slide by at most its *slack*: the
//! start of its slot minus `rho_j`. So each bucket keeps, in one word beside its state, an
//! upper bound on the latest pending release instant and a lower bound on the smallest slack
//! among the waiters that may still be pending:
//!
//! ```text
//!  63                                   20 19            0
//! +---------------------------------------+---------------+
//! | until: release instant / 2^16 ns, up  | slack, down   |
//! +---------------------------------------+---------------+
//! ```
//!
//! Both halves round the safe way: `until` up (to 65.5 µs; 44 bits span 2^60 ns), the slack
//! down, as a 20-bit float (6-bit exponent, 14-bit mantissa: within 2^-14 of the true value).
//! A word whose `until` is at or before a reading describes no pending waiter.
//!
//! # Protocol (each step's ordering is what the refund relies on)
//!
//! - A claim that will release its caller after its reading `now` calls [`note`] *before* its
//!   CAS on the state (and again before each retry): a refund that sees the claim in the state
//!   sees it here too (the state CAS releases, the refund's state load acquires).
//! - [`note`] forgets the old contents when their `until` is at or before the claim's reading:
//!   every waiter they describe is released by then. A refund that sees the forgetting also
//!   sees a reading at least that late: it reads the clock (and the limiter's highest `*_at`
//!   reading) only after loading this word.
//! - A limit change keeps `until` and sets the slack to 0: the waiters' slots were rescaled and
//!   their slack is not known in the new units, so nothing slides past them until released.

use crate::sync::{AtomicU64, Ordering::*};

const SLACK_BITS: u32 = 20;
const MANT_BITS: u32 = 14;
/// Release instants are kept in units of 2^16 ns.
const UNTIL_SHIFT: u32 = 16;
/// The largest `until`: "pending for ever" (an instant beyond 2^60 ns, 36 years).
const FOREVER: u64 = (1 << (64 - SLACK_BITS)) - 1;

/// `ns` in until-units, rounded up, saturating at [`FOREVER`].
#[inline]
fn until_of(ns: u64) -> u64 {
    ns.div_ceil(1 << UNTIL_SHIFT).min(FOREVER)
}

/// Whether waiters released no later than `until` may still be pending at `ns`.
#[inline]
fn pending_at(until: u64, ns: u64) -> bool {
    until == FOREVER || until << UNTIL_SHIFT > ns
}

/// A slack in quanta as a 20-bit float, rounded down: below 2^14 exact (exponent 0);
/// otherwise exponent `e >= 1` and 14 mantissa bits below an implicit leading one, standing
/// for `(2^14 | mant) << (e - 1)`. Codes order as their values do.
fn encode_slack(q: u64) -> u64 {
    let bits = 64 - q.leading_zeros();
    if bits <= MANT_BITS {
        return q;
    }
    let exp = (bits - MANT_BITS) as u64; // 1..=50
    let mant = (q >> (exp - 1)) & ((1 << MANT_BITS) - 1);
    (exp << MANT_BITS) | mant
}

fn decode_slack(code: u64) -> u64 {
    let exp = code >> MANT_BITS;
    let mant = code & ((1 << MANT_BITS) - 1);
    match exp {
        0 => mant,
        // exp <= 50 for any encoded u64, so the value fits.
        e => ((1 << MANT_BITS) | mant) << (e - 1),
    }
}

#[inline]
fn pack(until: u64, slack_code: u64) -> u64 {
    (until << SLACK_BITS) | slack_code
}

/// One bucket's pending-waiters word.
pub(crate) struct Pending(AtomicU64);

impl Pending {
    pub(crate) fn new() -> Self {
        Pending(AtomicU64::new(0))
    }

    /// Records a claim released at `rho_ns` (later than its reading `now_ns`) whose slot
    /// starts `slack` quanta after `rho_ns`.
    pub(crate) fn note(&self, now_ns: u64, rho_ns: u64, slack: u64) {
        let until = until_of(rho_ns);
        let code = encode_slack(slack);
        let mut old = self.0.load(Acquire);
        loop {
            let (old_until, old_code) = (old >> SLACK_BITS, old & ((1 << SLACK_BITS) - 1));
            // Every waiter the old word describes is released by `now_ns`: start afresh.
            let stale = !pending_at(old_until, now_ns);
            let next = if stale {
                pack(until, code)
            } else {
                // The smaller code is the smaller slack: codes are monotonic in the value.
                pack(old_until.max(until), old_code.min(code))
            };
            if next == old {
                return;
            }
            match self.0.compare_exchange_weak(old, next, AcqRel, Acquire) {
                Ok(_) => return,
                Err(cur) => old = cur,
            }
        }
    }

    /// The smallest slack of the waiters that may still be pending at `u_ns`, if any. Load
    /// this after the state, and take `u_ns` after this (see the module docs).
    #[inline]
    pub(crate) fn load(&self) -> u64 {
        self.0.load(Acquire)
    }

    /// Sets every recorded slack to 0, keeping the release bound (a limit change).
    pub(crate) fn freeze(&self) {
        let mut old = self.0.load(Acquire);
        loop {
            let next = old & !((1 << SLACK_BITS) - 1);
            if next == old {
                return;
            }
            match self.0.compare_exchange_weak(old, next, AcqRel, Acquire) {
                Ok(_) => return,
                Err(cur) => old = cur,
            }
        }
    }
}

/// The slack bound a word gives for a refund at reading `u_ns`: `None` when no waiter it
/// describes can still be pending.
#[inline]
pub(crate) fn slack_at(word: u64, u_ns: u64) -> Option<u64> {
    pending_at(word >> SLACK_BITS, u_ns).then(|| decode_slack(word & ((1 << SLACK_BITS) - 1)))
}

#[cfg(all(test, not(ratekeeper_loom)))]
mod tests {
    use super::*;

    #[test]
    fn slack_rounds_down_within_2_pow_minus_14() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for q in [x, x >> 20, x >> 50, x & 0x3fff] {
                let back = decode_slack(encode_slack(q));
                assert!(back <= q, "{q}: {back}");
                assert!(
                    back as f64 >= q as f64 * (1.0 - 1.0 / 16384.0),
                    "{q}: {back}"
                );
                assert!(encode_slack(q) < 1 << SLACK_BITS);
            }
        }
        assert_eq!(decode_slack(encode_slack(u64::MAX)) >> 50, (u64::MAX >> 50));
    }

    #[test]
    fn a_word_describes_pending_waiters_until_their_release() {
        let p = Pending::new();
        assert_eq!(slack_at(p.load(), 0), None, "nothing pending at start");
        p.note(0, 1_000_000, 40);
        p.note(0, 3_000_000, 25);
        assert_eq!(slack_at(p.load(), 2_000_000), Some(25), "the smaller slack");
        // Released at 3 ms (rounded up to 65.5 µs): pending at 3 ms, not after the rounding.
        assert_eq!(slack_at(p.load(), 3_000_000), Some(25));
        assert_eq!(slack_at(p.load(), 3_100_000), None);
        // A claim after every recorded release starts afresh.
        p.note(3_100_000, 4_000_000, 70);
        assert_eq!(slack_at(p.load(), 3_500_000), Some(70));
        // A claim before it merges.
        p.note(3_200_000, 3_300_000, 90);
        assert_eq!(slack_at(p.load(), 3_250_000), Some(70));
        p.freeze();
        assert_eq!(
            slack_at(p.load(), 3_900_000),
            Some(0),
            "frozen by a limit change"
        );
        assert_eq!(slack_at(p.load(), 4_100_000), None);
    }

    #[test]
    fn extreme_instants_saturate_closed() {
        let p = Pending::new();
        p.note(0, u64::MAX, u64::MAX);
        assert!(
            slack_at(p.load(), u64::MAX).is_some(),
            "a release beyond range is for ever"
        );
        p.note(u64::MAX, 5, 3);
        assert_eq!(slack_at(p.load(), u64::MAX), Some(3), "and never forgotten");
    }
}
