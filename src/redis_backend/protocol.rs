//! The script's protocol as Rust types: one request struct per op, each with the reply it
//! decodes. The wire format (argument order, reply layout, encoding) is written once, at the
//! top of `gcra.lua`; these types follow it.
//!
//! A limiter decides `n` buckets, one per budget (1 to [`MAX_BUDGETS`]; the script takes up to
//! 8), in the order it was built with: bucket `k` here is script bucket `k + 1`. Per-bucket
//! values sit in arrays of [`MAX_BUDGETS`] of which the first `n` count, so that a permit
//! holds its grant inline.
//!
//! A reply is input from a stranger like any stored value: decoding checks its length, its
//! signs and its bucket numbers, and a reply that does not fit is an error, never a guess.

use crate::budget::MAX_BUDGETS;
use crate::error::Error;

/// The largest integer the script accepts (2^53 - 1, exact in a double). Larger unit counts
/// are sent as this: they exceed every burst (refused) and saturate every debt (closed) alike.
pub(crate) const ARG_MAX: u64 = (1 << 53) - 1;

/// The script's operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Admit now, check only, or claim a slot for a later release.
    Take,
    /// Record units used outside a permit (debt allowed).
    Charge,
    /// Give back units of an earlier grant (or all of it) and charge what it used beyond.
    Settle,
    /// Read every bucket.
    Usage,
    /// Store new limits, carrying the units in use.
    SetLimits,
}

impl Op {
    /// The name the script dispatches on.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Take => "take",
            Op::Charge => "charge",
            Op::Settle => "settle",
            Op::Usage => "usage",
            Op::SetLimits => "set",
        }
    }
}

/// One bucket's limits as the script takes them (`limit == 0`: unlimited, with burst 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BucketLimits {
    /// Units per window.
    pub limit: u64,
    /// The window, in µs.
    pub window_us: u64,
    /// The most units one call can take.
    pub burst: u64,
}

/// Every bucket's limits, in bucket order: the first `len()` of an inline array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    n: usize,
    buckets: [BucketLimits; MAX_BUDGETS],
}

impl Limits {
    /// The limits of these buckets; at most [`MAX_BUDGETS`] are kept (the caller checks).
    pub(crate) fn new(buckets: impl IntoIterator<Item = BucketLimits>) -> Limits {
        let none = BucketLimits {
            limit: 0,
            window_us: 1,
            burst: 0,
        };
        let mut out = Limits {
            n: 0,
            buckets: [none; MAX_BUDGETS],
        };
        for b in buckets.into_iter().take(MAX_BUDGETS) {
            out.buckets[out.n] = b;
            out.n += 1;
        }
        out
    }

    /// The buckets, in order.
    pub(crate) fn as_slice(&self) -> &[BucketLimits] {
        &self.buckets[..self.n]
    }
}

/// The units an op asks of each bucket, and which buckets it consults at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ask {
    /// Units per bucket.
    pub units: [u64; MAX_BUDGETS],
    /// Bit `k` set: bucket `k` takes part (a bucket asked for 0 units still checks it is not
    /// in debt, and a waiter still places its slot there).
    pub consult: u8,
}

impl Ask {
    /// `units` of the first `n` buckets, consulting every one of them (`all`) or only those
    /// asked for something.
    pub(crate) fn new(n: usize, units: [u64; MAX_BUDGETS], all: bool) -> Ask {
        let mut consult = 0;
        for (k, &u) in units.iter().enumerate().take(n) {
            if all || u > 0 {
                consult |= 1 << k;
            }
        }
        Ask { units, consult }
    }

    fn args(&self, n: usize, out: &mut Vec<u64>) {
        out.push(self.consult.into());
        out.extend(self.units[..n].iter().map(|&u| u.min(ARG_MAX)));
    }
}

/// What a request sends and what its reply decodes to, for a limiter of `n` buckets.
pub(crate) trait Request {
    /// The operation.
    const OP: Op;
    /// The decoded reply.
    type Reply;
    /// The op's own arguments, after the common ones.
    fn args(&self, n: usize, out: &mut Vec<u64>);
    /// The reply after its common head, or `None` when it does not fit.
    fn decode(status: i64, head: &Head, n: usize, rest: &mut Fields<'_>) -> Option<Self::Reply>;
}

/// What a grant took from one bucket, in ticks in use at the grant time: its slot
/// `[start, end)` (the start is the tail the take found, so a gap before the release instant
/// belongs to the slot) and the bucket's slide total then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Slot {
    pub start: u64,
    pub end: u64,
    pub slid: u64,
}

/// What Redis granted: enough to give it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Redis time of the grant, µs since the ratekeeper epoch.
    pub at_us: u64,
    /// The state's generation: a refund into another one gives nothing.
    pub generation: u64,
    /// The instant the caller is released at (`at_us` unless it waits).
    pub release_us: u64,
    /// The slot taken in each bucket.
    pub slots: [Slot; MAX_BUDGETS],
}

/// Take `ask` now (`max_wait_us == 0`), or for release within `max_wait_us`; `dry` only
/// checks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Take {
    pub ask: Ask,
    pub max_wait_us: u64,
    pub dry: bool,
}

/// The outcome of a [`Take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TakeReply {
    /// Granted (for a dry run: would be).
    Granted(Grant),
    /// Not within the wait allowed: `bucket` (an index) is short until `ready_us`.
    Denied { bucket: usize, ready_us: u64 },
    /// More than `bucket` can ever hold at once (its burst).
    Never { bucket: usize, burst: u64 },
}

impl Request for Take {
    const OP: Op = Op::Take;
    type Reply = TakeReply;

    fn args(&self, n: usize, out: &mut Vec<u64>) {
        out.push(self.dry.into());
        out.push(self.ask.consult.into());
        out.push(self.max_wait_us.min(ARG_MAX));
        out.extend(self.ask.units[..n].iter().map(|&u| u.min(ARG_MAX)));
    }

    fn decode(status: i64, head: &Head, n: usize, rest: &mut Fields<'_>) -> Option<TakeReply> {
        match status {
            1 => {
                let generation = rest.u64()?;
                let release_us = rest.u64()?;
                let mut slots = [Slot::default(); MAX_BUDGETS];
                for s in &mut slots[..n] {
                    *s = Slot {
                        start: rest.u64()?,
                        end: rest.u64()?,
                        slid: rest.u64()?,
                    };
                }
                Some(TakeReply::Granted(Grant {
                    at_us: head.now_us,
                    generation,
                    release_us,
                    slots,
                }))
            }
            0 => Some(TakeReply::Denied {
                bucket: rest.bucket(n)?,
                ready_us: rest.u64()?,
            }),
            -1 => Some(TakeReply::Never {
                bucket: rest.bucket(n)?,
                burst: rest.u64()?,
            }),
            _ => None,
        }
    }
}

/// Record `ask` used outside a permit, debt allowed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Charge {
    pub ask: Ask,
}

/// The instant every consulted bucket is out of debt again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChargeReply {
    pub ready_us: u64,
}

impl Request for Charge {
    const OP: Op = Op::Charge;
    type Reply = ChargeReply;

    fn args(&self, n: usize, out: &mut Vec<u64>) {
        self.ask.args(n, out);
    }

    fn decode(status: i64, _: &Head, _: usize, rest: &mut Fields<'_>) -> Option<ChargeReply> {
        (status == 1).then_some(())?;
        Some(ChargeReply {
            ready_us: rest.u64()?,
        })
    }
}

/// What a settle gives back of a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Give {
    /// These units per bucket (a settle's surplus).
    Units([u64; MAX_BUDGETS]),
    /// Every slot whole, gaps included (a cancelled claim).
    All,
}

/// Give back `give` of `grant` under the refund rule, then charge `charge` per bucket (what
/// was used beyond the grant, debt allowed): one call settles every budget.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settle {
    pub grant: Grant,
    pub give: Give,
    pub charge: [u64; MAX_BUDGETS],
}

impl Request for Settle {
    const OP: Op = Op::Settle;
    /// Whether anything could be given back (not after a limit change or a repair).
    type Reply = bool;

    fn args(&self, n: usize, out: &mut Vec<u64>) {
        out.push(self.grant.generation);
        out.push(self.grant.at_us);
        let (whole, give) = match self.give {
            Give::Units(units) => (0, units),
            Give::All => (1, [0; MAX_BUDGETS]),
        };
        out.push(whole);
        let per_bucket = self.grant.slots.iter().zip(give).zip(self.charge).take(n);
        for ((slot, give), charge) in per_bucket {
            out.extend([slot.start, slot.end, slot.slid]);
            out.extend([give.min(ARG_MAX), charge.min(ARG_MAX)]);
        }
    }

    fn decode(status: i64, _: &Head, _: usize, _: &mut Fields<'_>) -> Option<bool> {
        match status {
            1 => Some(true),
            0 => Some(false),
            _ => None,
        }
    }
}

/// Read every bucket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadUsage;

/// One bucket as read: whole units in use (rounded up) and the limits in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BucketReading {
    pub used: u64,
    pub limits: BucketLimits,
}

impl Request for ReadUsage {
    const OP: Op = Op::Usage;
    /// The first `n` are the buckets read.
    type Reply = [BucketReading; MAX_BUDGETS];

    fn args(&self, _: usize, _: &mut Vec<u64>) {}

    fn decode(status: i64, _: &Head, n: usize, rest: &mut Fields<'_>) -> Option<Self::Reply> {
        (status == 1).then_some(())?;
        let mut out = [BucketReading {
            used: 0,
            limits: BucketLimits {
                limit: 0,
                window_us: 0,
                burst: 0,
            },
        }; MAX_BUDGETS];
        for b in &mut out[..n] {
            b.used = rest.u64()?;
            b.limits = BucketLimits {
                limit: rest.u64()?,
                window_us: rest.u64()?,
                burst: rest.u64()?,
            };
        }
        Some(out)
    }
}

/// Store new limits for every replica, carrying the units in use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SetLimits(pub Limits);

impl Request for SetLimits {
    const OP: Op = Op::SetLimits;
    type Reply = ();

    fn args(&self, _: usize, out: &mut Vec<u64>) {
        push_limits(&self.0, out);
    }

    fn decode(status: i64, _: &Head, _: usize, _: &mut Fields<'_>) -> Option<()> {
        (status == 1).then_some(())
    }
}

/// Limits as the script takes them: per bucket `limit, window, burst`.
pub(crate) fn push_limits(limits: &Limits, out: &mut Vec<u64>) {
    for b in limits.as_slice() {
        out.extend([b.limit, b.window_us, b.burst]);
    }
}

/// What the script found and fixed on the way (the reply's `events`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Events(u64);

impl Events {
    /// The state hash was corrupt and was replaced by the closed state.
    pub(crate) fn state_repaired(self) -> bool {
        self.0 & 1 != 0
    }

    /// The stored limits were corrupt and were rewritten from this limiter's.
    pub(crate) fn limits_repaired(self) -> bool {
        self.0 & 2 != 0
    }

    /// No limits were stored; this limiter's were.
    pub(crate) fn limits_stored(self) -> bool {
        self.0 & 4 != 0
    }
}

/// Every reply's head: the Redis time the script decided at, and what it repaired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub now_us: u64,
    pub events: Events,
}

/// A reply's integers, read in order.
pub(crate) struct Fields<'a>(std::slice::Iter<'a, i64>);

impl Fields<'_> {
    /// The next integer, if present and not negative.
    fn u64(&mut self) -> Option<u64> {
        self.0.next().and_then(|&v| u64::try_from(v).ok())
    }

    /// The next integer as the index of one of `n` buckets (the script counts from 1).
    fn bucket(&mut self, n: usize) -> Option<usize> {
        let k = usize::try_from(self.u64()?).ok()?;
        (1..=n).contains(&k).then(|| k - 1)
    }
}

/// Decodes a reply to `R` from a limiter of `n` buckets: its head, then its own fields, and
/// nothing more.
pub(crate) fn decode<R: Request>(reply: &[i64], n: usize) -> Result<(Head, R::Reply), Error> {
    let parse = || {
        let mut f = Fields(reply.iter());
        let status = *f.0.next()?;
        let now_us = f.u64()?;
        let head = Head {
            now_us,
            events: Events(f.u64()?),
        };
        let body = R::decode(status, &head, n, &mut f)?;
        f.0.next().is_none().then_some((head, body))
    };
    parse().ok_or_else(|| {
        Error::Unavailable(format!(
            "redis: malformed reply to {}: {reply:?}",
            R::OP.name()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `v` in the first buckets, zeros after.
    fn per<const K: usize>(v: [u64; K]) -> [u64; MAX_BUDGETS] {
        let mut out = [0; MAX_BUDGETS];
        out[..K].copy_from_slice(&v);
        out
    }

    fn slot(start: u64, end: u64, slid: u64) -> Slot {
        Slot { start, end, slid }
    }

    #[test]
    fn asks_consult_every_bucket_or_those_asked() {
        assert_eq!(Ask::new(3, per([1, 0, 5]), true).consult, 0b111);
        assert_eq!(Ask::new(3, per([1, 0, 5]), false).consult, 0b101);
        assert_eq!(Ask::new(2, per([0, 0]), false).consult, 0);
    }

    #[test]
    fn arguments_follow_the_script_header() {
        let mut out = Vec::new();
        Take {
            ask: Ask::new(3, per([1, u64::MAX, 7]), true),
            max_wait_us: u64::MAX,
            dry: true,
        }
        .args(3, &mut out);
        // dry, mask, max wait, units per bucket; oversized numbers saturate at 2^53 - 1.
        assert_eq!(out, [1, 0b111, ARG_MAX, 1, ARG_MAX, 7]);
        out.clear();
        Charge {
            ask: Ask::new(2, per([0, 7]), false),
        }
        .args(2, &mut out);
        assert_eq!(out, [0b10, 0, 7]);
        out.clear();
        let mut slots = [Slot::default(); MAX_BUDGETS];
        slots[..3].copy_from_slice(&[slot(90, 100, 7), slot(150, 200, 0), slot(5, 5, 1)]);
        let grant = Grant {
            at_us: 5,
            generation: 9,
            release_us: 6,
            slots,
        };
        Settle {
            grant,
            give: Give::Units(per([0, 3, 0])),
            charge: per([2, 0, u64::MAX]),
        }
        .args(3, &mut out);
        // generation, grant time, whole; per bucket start, end, slid, give, charge.
        let expected = [
            9, 5, 0, 90, 100, 7, 0, 2, 150, 200, 0, 3, 0, 5, 5, 1, 0, ARG_MAX,
        ];
        assert_eq!(out, expected);
        out.clear();
        Settle {
            grant,
            give: Give::All,
            charge: per([]),
        }
        .args(2, &mut out);
        assert_eq!(out, [9, 5, 1, 90, 100, 7, 0, 0, 150, 200, 0, 0, 0]);
        out.clear();
        SetLimits(Limits::new([BucketLimits {
            limit: 10,
            window_us: 60,
            burst: 2,
        }]))
        .args(1, &mut out);
        assert_eq!(out, [10, 60, 2]);
    }

    #[test]
    fn replies_decode_to_their_types() {
        let reply = [1, 1_000, 0, 7, 1_500, 50, 60, 3, 90, 90, 0, 4, 6, 1];
        let (head, r) = decode::<Take>(&reply, 3).unwrap();
        assert_eq!(head.now_us, 1_000);
        let mut slots = [Slot::default(); MAX_BUDGETS];
        slots[..3].copy_from_slice(&[slot(50, 60, 3), slot(90, 90, 0), slot(4, 6, 1)]);
        assert_eq!(
            r,
            TakeReply::Granted(Grant {
                at_us: 1_000,
                generation: 7,
                release_us: 1_500,
                slots,
            })
        );
        assert_eq!(
            decode::<Take>(&[0, 1_000, 5, 3, 1_250], 3).unwrap(),
            (
                Head {
                    now_us: 1_000,
                    events: Events(5)
                },
                TakeReply::Denied {
                    bucket: 2,
                    ready_us: 1_250
                }
            )
        );
        let (head, _) = decode::<Take>(&[-1, 1, 0, 1, 10], 1).unwrap();
        assert!(!head.events.state_repaired());
        let (head, r) = decode::<ReadUsage>(&[1, 9, 3, 4, 10, 60, 10, 0, 0, 60, 0], 2).unwrap();
        assert!(head.events.state_repaired() && head.events.limits_repaired());
        assert!(!head.events.limits_stored());
        assert_eq!(r[0].used, 4);
        assert_eq!(r[1].limits.limit, 0);
        assert!(!decode::<Settle>(&[0, 9, 0], 2).unwrap().1, "forfeited");
    }

    #[test]
    fn replies_that_do_not_fit_are_errors() {
        let bad: &[&[i64]] = &[
            &[],
            &[1],
            &[1, 1_000, 0, 7, 1_500, 0, 60, 0, 0, 90], // a field short
            &[1, 1_000, 0, 7, 1_500, 0, 60, 0, 0, 90, 0, 1], // one too many
            &[1, 1_000, 0, 7, 1_500, 0, -60, 0, 0, 90, 0], // negative
            &[0, 1_000, 0, 3, 1_250],                  // no bucket 3 of 2
            &[0, 1_000, 0, 0, 1_250],                  // buckets count from 1
            &[2, 1_000, 0],                            // no such status
            &[1, -5, 0, 7, 1_500, 0, 60, 0, 0, 90, 0], // negative time
        ];
        for r in bad {
            assert!(
                matches!(decode::<Take>(r, 2), Err(Error::Unavailable(_))),
                "{r:?}"
            );
        }
        // The same reply read for three buckets is a field short.
        assert!(decode::<Take>(&[1, 1_000, 0, 7, 1_500, 0, 60, 0, 0, 90, 0], 3).is_err());
        assert!(decode::<Settle>(&[1, 5, 0, 0], 2).is_err());
        assert!(decode::<SetLimits>(&[0, 5, 0], 2).is_err());
    }
}
