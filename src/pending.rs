//! The pending-waiters record: what a refund must know about waiters not yet released.
//!
//! A refund may move a bucket's TAT back only as far as every claim placed after the grant can
//! slide without being released earlier than it is (see [`gcra::refund`](crate::gcra::refund)).
//! A waiter `j` released at a future instant `rho_j` can slide by at most its *slack*: the
//! start of its slot minus `rho_j`, less whatever earlier refunds already slid it. So each
//! bucket keeps, beside its state, a bound on the waiters that may still be pending: for each
//! of two *cohorts* of waiters, the latest release instant among them (`until`, rounded up)
//! and the smallest slack left to any of them (rounded down), one word per cohort:
//!
//! ```text
//!  63                                   20 19            0
//! +---------------------------------------+---------------+
//! | until: release instant / 2^16 ns, up  | slack, down   |
//! +---------------------------------------+---------------+
//! ```
//!
//! `until` counts 65.5 µs steps (44 bits span 2^60 ns, beyond which a cohort is pending for
//! ever); the slack is a 20-bit float (within 2^-14 of the true value). A cohort whose `until`
//! is at or before a reading holds no pending waiter: it is *stale*.
//!
//! # Why two cohorts
//!
//! One record for all waiters would never forget: under a standing queue some waiter is always
//! pending, so the smallest slack ever recorded (spent by every refund since) would block
//! refunds for ever, long after the waiters it belonged to were released. With two cohorts a
//! waiter joins the cohort with the later `until`, unless the other one is stale, in which case
//! it starts that one afresh. A cohort therefore takes waiters for about one queue's length and
//! is forgotten about one queue's length later: a refund is held to the slack of the waiters
//! actually pending, less what refunds slid them in that time, not since the queue began.
//!
//! # Protocol (each step's ordering is what the refund relies on)
//!
//! - A claim that will release its caller after its reading `now` calls [`Pending::note`]
//!   *before* its CAS on the state (and again before each retry): a refund that sees the claim
//!   in the state sees it here too (the state CAS releases, the refund's state load acquires).
//! - A claim starts a stale cohort afresh only when its `until` is at or before the claim's
//!   reading: every waiter it describes is released by then. A refund that sees the fresh
//!   cohort also sees a reading at least that late: it reads the clock (and the limiter's
//!   highest `*_at` reading) only after loading the cohorts.
//! - A refund that slides the waiters behind its grant back by `r` [`Pending::spend`]s `r` of
//!   every pending cohort's slack *before* its CAS on the state: a second refund must not
//!   slide them by a second whole slack.
//! - A limit change sets every slack to 0, keeping `until`: the waiters' slots were rescaled
//!   and their slack is not known in the new units, so nothing slides past them until released.

use crate::sync::{AtomicU64, Ordering::*};

const SLACK_BITS: u32 = 20;
const SLACK_MASK: u64 = (1 << SLACK_BITS) - 1;
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

#[inline]
fn until(word: u64) -> u64 {
    word >> SLACK_BITS
}

/// Whether a cohort may still hold a waiter pending at `ns`.
#[inline]
fn pending_at(word: u64, ns: u64) -> bool {
    let u = until(word);
    u == FOREVER || u << UNTIL_SHIFT > ns
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
fn slack(word: u64) -> u64 {
    decode_slack(word & SLACK_MASK)
}

/// One bucket's pending-waiters record: two cohorts.
pub(crate) struct Pending([AtomicU64; 2]);

impl Pending {
    pub(crate) fn new() -> Self {
        Pending([AtomicU64::new(0), AtomicU64::new(0)])
    }

    /// Records a claim released at `rho_ns` (later than its reading `now_ns`) whose slot
    /// starts `slack` quanta after `rho_ns`.
    pub(crate) fn note(&self, now_ns: u64, rho_ns: u64, slack: u64) {
        let fresh = (until_of(rho_ns) << SLACK_BITS) | encode_slack(slack);
        loop {
            let words = [self.0[0].load(Acquire), self.0[1].load(Acquire)];
            // A stale cohort is started afresh; otherwise join the one that runs later.
            let (i, next) = match words.map(|w| pending_at(w, now_ns)) {
                [false, _] => (0, fresh),
                [_, false] => (1, fresh),
                _ => {
                    let i = (until(words[1]) > until(words[0])) as usize;
                    let w = words[i];
                    // The smaller code is the smaller slack: codes order as values do.
                    let u = until(w).max(until(fresh));
                    (
                        i,
                        (u << SLACK_BITS) | (w & SLACK_MASK).min(fresh & SLACK_MASK),
                    )
                }
            };
            if next == words[i]
                || self.0[i]
                    .compare_exchange_weak(words[i], next, AcqRel, Acquire)
                    .is_ok()
            {
                return;
            }
        }
    }

    /// The smallest slack left to any waiter that may still be pending at `u_ns`, or `None`.
    /// Load the state first, call this, and only then take `u_ns` (see the module docs): the
    /// cohorts are read here, before the reading they are judged at.
    #[inline]
    pub(crate) fn load(&self) -> [u64; 2] {
        [self.0[0].load(Acquire), self.0[1].load(Acquire)]
    }

    /// Records that a refund at reading `u_ns` slid the waiters behind its grant back by `r`
    /// quanta: the slack of every cohort still pending shrinks by as much. Called before the
    /// refund's CAS on the state, so that a later refund that sees this one's effect also sees
    /// the smaller slack (two refunds of up to the whole slack each would otherwise slide the
    /// waiters back twice as far).
    pub(crate) fn spend(&self, u_ns: u64, r: u64) {
        for cohort in &self.0 {
            let mut old = cohort.load(Acquire);
            while pending_at(old, u_ns) {
                let left = encode_slack(slack(old).saturating_sub(r));
                let next = (old & !SLACK_MASK) | left;
                if next == old {
                    break;
                }
                match cohort.compare_exchange_weak(old, next, AcqRel, Acquire) {
                    Ok(_) => break,
                    Err(cur) => old = cur,
                }
            }
        }
    }

    /// Sets every recorded slack to 0, keeping the release bounds (a limit change).
    pub(crate) fn freeze(&self) {
        for cohort in &self.0 {
            cohort.fetch_and(!SLACK_MASK, AcqRel);
        }
    }
}

/// The slack bound two cohorts give a refund at reading `u_ns`: `None` when no waiter they
/// describe can still be pending.
#[inline]
pub(crate) fn slack_at(words: [u64; 2], u_ns: u64) -> Option<u64> {
    words
        .into_iter()
        .filter(|&w| pending_at(w, u_ns))
        .map(slack)
        .min()
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
                assert!(
                    encode_slack(q / 2) <= encode_slack(q),
                    "codes order as values"
                );
            }
        }
    }

    #[test]
    fn cohorts_describe_pending_waiters_until_their_release() {
        let p = Pending::new();
        assert_eq!(slack_at(p.load(), 0), None, "nothing pending at start");
        p.note(0, 1_000_000, 40);
        p.note(0, 3_000_000, 25);
        assert_eq!(slack_at(p.load(), 2_000_000), Some(25), "the smaller slack");
        // Released at 3 ms (rounded up to 65.5 µs): pending at 3 ms, not after the rounding.
        assert_eq!(slack_at(p.load(), 3_000_000), Some(25));
        assert_eq!(slack_at(p.load(), 3_100_000), None);
        // A refund spends slack of every pending cohort.
        p.spend(2_000_000, 10);
        assert_eq!(slack_at(p.load(), 2_000_000), Some(15));
        p.spend(2_000_000, u64::MAX);
        assert_eq!(slack_at(p.load(), 2_000_000), Some(0));
    }

    #[test]
    fn a_spent_cohort_is_forgotten_once_its_waiters_are_released() {
        let p = Pending::new();
        // A waiter released at 1 ms, its whole slack spent by a refund.
        p.note(0, 1_000_000, 500);
        p.spend(0, 500);
        // A waiter at 0.5 ms, released at 2 ms, starts the other (stale, empty) cohort.
        p.note(500_000, 2_000_000, 300);
        assert_eq!(
            slack_at(p.load(), 900_000),
            Some(0),
            "the spent waiter still pends"
        );
        assert_eq!(
            slack_at(p.load(), 1_100_000),
            Some(300),
            "and is gone once released"
        );
        // At 1.1 ms the first cohort is stale: a new waiter starts it afresh.
        p.note(1_100_000, 2_500_000, 700);
        assert_eq!(slack_at(p.load(), 1_900_000), Some(300));
        assert_eq!(slack_at(p.load(), 2_100_000), Some(700));
        // While both pend, a waiter joins the one released later.
        p.note(1_200_000, 2_200_000, 600);
        assert_eq!(slack_at(p.load(), 2_100_000), Some(600));
        assert_eq!(slack_at(p.load(), 1_900_000), Some(300));
    }

    #[test]
    fn a_standing_queue_forgets_old_spending() {
        // Waiters every 0.1 ms, each released 1 ms after its claim, each with slack 1,000;
        // a refund of 10 every 0.1 ms. A single record would reach slack 0 after 100 refunds
        // and stay there; the cohorts keep the spending to about two queue lengths.
        let p = Pending::new();
        let mut lowest_late = u64::MAX;
        for k in 0..1_000u64 {
            let now = k * 100_000;
            p.note(now, now + 1_000_000, 1_000);
            p.spend(now, 10);
            if k > 100 {
                lowest_late = lowest_late.min(slack_at(p.load(), now).unwrap());
            }
        }
        assert!(lowest_late >= 1_000 - 10 * 25, "{lowest_late}");
        p.freeze();
        assert_eq!(
            slack_at(p.load(), 99_000_000),
            Some(0),
            "frozen by a limit change"
        );
    }

    #[test]
    fn extreme_instants_saturate_closed() {
        let p = Pending::new();
        p.note(0, u64::MAX, 7);
        assert_eq!(
            slack_at(p.load(), u64::MAX),
            Some(7),
            "beyond range is for ever"
        );
        // Later claims never forget it, and a claim released before any reading is no bound.
        p.note(u64::MAX, 5, 3);
        assert_eq!(slack_at(p.load(), u64::MAX), Some(7));
        p.note(u64::MAX, u64::MAX, u64::MAX);
        assert_eq!(slack_at(p.load(), u64::MAX), Some(7));
    }
}
