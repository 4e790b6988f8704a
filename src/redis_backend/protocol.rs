//! The script's protocol as Rust types: one request struct per op, each with the reply it
//! decodes. The wire format (argument order, reply layout, encoding) is written once, at the
//! top of `gcra.lua`; these types follow it.
//!
//! A reply is input from a stranger like any stored value: decoding checks its length, its
//! signs and its bucket numbers, and a reply that does not fit is an error, never a guess.

use crate::error::Error;

/// The buckets this side decides: requests (script bucket 1) and tokens (bucket 2). The script
/// takes any count from 1 to 8.
pub(crate) const BUCKETS: usize = 2;
/// Index of the request bucket.
pub(crate) const REQUESTS: usize = 0;
/// Index of the token bucket.
pub(crate) const TOKENS: usize = 1;

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

/// Every bucket's limits, in bucket order.
pub(crate) type Limits = [BucketLimits; BUCKETS];

/// The units an op asks of each bucket, and which buckets it consults at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ask {
    /// Units per bucket.
    pub units: [u64; BUCKETS],
    /// Bit `k` set: bucket `k` takes part (a bucket asked for 0 units still checks it is not
    /// in debt, and a waiter still places its slot there).
    pub consult: u8,
}

impl Ask {
    const ALL: u8 = (1 << BUCKETS) - 1;

    /// One request costing `tokens`: every bucket.
    pub(crate) fn request(tokens: u64) -> Ask {
        Ask {
            units: [1, tokens],
            consult: Self::ALL,
        }
    }

    /// One request and nothing else: the request bucket only (`allow`).
    pub(crate) fn request_only() -> Ask {
        Ask {
            units: [1, 0],
            consult: 1 << REQUESTS,
        }
    }

    /// Tokens alone: the token bucket only.
    pub(crate) fn tokens_only(tokens: u64) -> Ask {
        Ask {
            units: [0, tokens],
            consult: 1 << TOKENS,
        }
    }

    /// Requests and tokens used outside a permit: every bucket.
    pub(crate) fn usage(requests: u64, tokens: u64) -> Ask {
        Ask {
            units: [requests, tokens],
            consult: Self::ALL,
        }
    }

    fn args(&self, out: &mut Vec<u64>) {
        out.push(self.consult.into());
        out.extend(self.units.iter().map(|&n| n.min(ARG_MAX)));
    }
}

/// What a request sends and what its reply decodes to.
pub(crate) trait Request {
    /// The operation.
    const OP: Op;
    /// The decoded reply.
    type Reply;
    /// The op's own arguments, after the common ones.
    fn args(&self, out: &mut Vec<u64>);
    /// The reply after its common head, or `None` when it does not fit.
    fn decode(status: i64, head: &Head, rest: &mut Fields<'_>) -> Option<Self::Reply>;
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
    pub slots: [Slot; BUCKETS],
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

    fn args(&self, out: &mut Vec<u64>) {
        out.push(self.dry.into());
        out.push(self.ask.consult.into());
        out.push(self.max_wait_us.min(ARG_MAX));
        out.extend(self.ask.units.iter().map(|&n| n.min(ARG_MAX)));
    }

    fn decode(status: i64, head: &Head, rest: &mut Fields<'_>) -> Option<TakeReply> {
        match status {
            1 => {
                let generation = rest.u64()?;
                let release_us = rest.u64()?;
                let mut slots = [Slot::default(); BUCKETS];
                for s in &mut slots {
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
                bucket: rest.bucket()?,
                ready_us: rest.u64()?,
            }),
            -1 => Some(TakeReply::Never {
                bucket: rest.bucket()?,
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

    fn args(&self, out: &mut Vec<u64>) {
        self.ask.args(out);
    }

    fn decode(status: i64, _: &Head, rest: &mut Fields<'_>) -> Option<ChargeReply> {
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
    Units([u64; BUCKETS]),
    /// Every slot whole, gaps included (a cancelled claim).
    All,
}

/// Give back `give` of `grant` under the refund rule, then charge `charge` per bucket (what
/// was used beyond the grant, debt allowed): one call settles every budget.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settle {
    pub grant: Grant,
    pub give: Give,
    pub charge: [u64; BUCKETS],
}

impl Request for Settle {
    const OP: Op = Op::Settle;
    /// Whether anything could be given back (not after a limit change or a repair).
    type Reply = bool;

    fn args(&self, out: &mut Vec<u64>) {
        out.push(self.grant.generation);
        out.push(self.grant.at_us);
        let (whole, give) = match self.give {
            Give::Units(units) => (0, units),
            Give::All => (1, [0; BUCKETS]),
        };
        out.push(whole);
        for ((slot, give), charge) in self.grant.slots.iter().zip(give).zip(self.charge) {
            out.extend([slot.start, slot.end, slot.slid]);
            out.extend([give.min(ARG_MAX), charge.min(ARG_MAX)]);
        }
    }

    fn decode(status: i64, _: &Head, _: &mut Fields<'_>) -> Option<bool> {
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
    type Reply = [BucketReading; BUCKETS];

    fn args(&self, _: &mut Vec<u64>) {}

    fn decode(status: i64, _: &Head, rest: &mut Fields<'_>) -> Option<Self::Reply> {
        (status == 1).then_some(())?;
        let mut out = [BucketReading {
            used: 0,
            limits: BucketLimits {
                limit: 0,
                window_us: 0,
                burst: 0,
            },
        }; BUCKETS];
        for b in &mut out {
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

    fn args(&self, out: &mut Vec<u64>) {
        push_limits(&self.0, out);
    }

    fn decode(status: i64, _: &Head, _: &mut Fields<'_>) -> Option<()> {
        (status == 1).then_some(())
    }
}

/// Limits as the script takes them: per bucket `limit, window, burst`.
pub(crate) fn push_limits(limits: &Limits, out: &mut Vec<u64>) {
    for b in limits {
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

    /// The next integer as a bucket index (the script counts buckets from 1).
    fn bucket(&mut self) -> Option<usize> {
        let k = usize::try_from(self.u64()?).ok()?;
        (1..=BUCKETS).contains(&k).then(|| k - 1)
    }
}

/// Decodes a reply to `R`: its head, then its own fields, and nothing more.
pub(crate) fn decode<R: Request>(reply: &[i64]) -> Result<(Head, R::Reply), Error> {
    let parse = || {
        let mut f = Fields(reply.iter());
        let status = *f.0.next()?;
        let now_us = f.u64()?;
        let head = Head {
            now_us,
            events: Events(f.u64()?),
        };
        let body = R::decode(status, &head, &mut f)?;
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

    #[test]
    fn take_arguments_follow_the_script_header() {
        let mut out = Vec::new();
        Take {
            ask: Ask::request(u64::MAX),
            max_wait_us: u64::MAX,
            dry: true,
        }
        .args(&mut out);
        // dry, mask, max wait, units per bucket; oversized numbers saturate at 2^53 - 1.
        assert_eq!(out, [1, 0b11, ARG_MAX, 1, ARG_MAX]);
        out.clear();
        Charge {
            ask: Ask::tokens_only(7),
        }
        .args(&mut out);
        assert_eq!(out, [0b10, 0, 7]);
        out.clear();
        let slot = |start, end, slid| Slot { start, end, slid };
        let grant = Grant {
            at_us: 5,
            generation: 9,
            release_us: 6,
            slots: [slot(90, 100, 7), slot(150, 200, 0)],
        };
        Settle {
            grant,
            give: Give::Units([0, 3]),
            charge: [2, u64::MAX],
        }
        .args(&mut out);
        // generation, grant time, whole; per bucket start, end, slid, give, charge.
        assert_eq!(out, [9, 5, 0, 90, 100, 7, 0, 2, 150, 200, 0, 3, ARG_MAX]);
        out.clear();
        Settle {
            grant,
            give: Give::All,
            charge: [0, 0],
        }
        .args(&mut out);
        assert_eq!(out, [9, 5, 1, 90, 100, 7, 0, 0, 150, 200, 0, 0, 0]);
    }

    #[test]
    fn replies_decode_to_their_types() {
        let (head, r) = decode::<Take>(&[1, 1_000, 0, 7, 1_500, 50, 60, 3, 90, 90, 0]).unwrap();
        assert_eq!(head.now_us, 1_000);
        assert_eq!(
            r,
            TakeReply::Granted(Grant {
                at_us: 1_000,
                generation: 7,
                release_us: 1_500,
                slots: [
                    Slot {
                        start: 50,
                        end: 60,
                        slid: 3
                    },
                    Slot {
                        start: 90,
                        end: 90,
                        slid: 0
                    }
                ],
            })
        );
        assert_eq!(
            decode::<Take>(&[0, 1_000, 5, 2, 1_250]).unwrap(),
            (
                Head {
                    now_us: 1_000,
                    events: Events(5)
                },
                TakeReply::Denied {
                    bucket: TOKENS,
                    ready_us: 1_250
                }
            )
        );
        let (head, _) = decode::<Take>(&[-1, 1, 0, 1, 10]).unwrap();
        assert!(!head.events.state_repaired());
        let (head, r) = decode::<ReadUsage>(&[1, 9, 3, 4, 10, 60, 10, 0, 0, 60, 0]).unwrap();
        assert!(head.events.state_repaired() && head.events.limits_repaired());
        assert!(!head.events.limits_stored());
        assert_eq!(r[REQUESTS].used, 4);
        assert_eq!(r[TOKENS].limits.limit, 0);
        assert!(!decode::<Settle>(&[0, 9, 0]).unwrap().1, "forfeited");
    }

    #[test]
    fn replies_that_do_not_fit_are_errors() {
        let bad: &[&[i64]] = &[
            &[],
            &[1],
            &[1, 1_000, 0, 7, 1_500, 0, 60, 0, 0, 90], // a field short
            &[1, 1_000, 0, 7, 1_500, 0, 60, 0, 0, 90, 0, 1], // one too many
            &[1, 1_000, 0, 7, 1_500, 0, -60, 0, 0, 90, 0], // negative
            &[0, 1_000, 0, 3, 1_250],                  // no bucket 3
            &[0, 1_000, 0, 0, 1_250],                  // buckets count from 1
            &[2, 1_000, 0],                            // no such status
            &[1, -5, 0, 7, 1_500, 0, 60, 0, 0, 90, 0], // negative time
        ];
        for r in bad {
            assert!(
                matches!(decode::<Take>(r), Err(Error::Unavailable(_))),
                "{r:?}"
            );
        }
        assert!(decode::<Settle>(&[1, 5, 0, 0]).is_err());
        assert!(decode::<SetLimits>(&[0, 5, 0]).is_err());
    }
}
