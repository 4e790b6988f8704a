//! The refund machinery behind pending waiters, judged at release instants: a refund may
//! slide the slots placed after its grant only as far as no caller is released earlier than
//! its slot allows (the pending cohorts' slack), two refunds together no further than one
//! (slack spent before the CAS), and a slot an earlier refund slid is judged where it now ends
//! (the `slid` total). Each model logs what every caller was released at and kept, and checks
//! every window of those instants against `burst + rate × window` (`loom_tests::assert_within`).
//!
//! One budget, tokens: 8 per 64 ticks (one per 8 ticks), at readings that only move forward.
#![cfg(ratekeeper_loom)]

use loom::thread;
use loom_tests::{assert_within, budgets, Bound, TICK};
use ratekeeper::{Burst, Limit};

/// Tokens per period.
const LIMIT: u64 = 8;

/// A refund of a grant racing a waiter's claim placed behind it. Burst 8. Main takes all 8
/// tokens at 0 (grant G, slot [0, 8) units). At once: W claims 4 tokens at 0 (due at 32 ticks,
/// slot [8, 12), slack 4 units), and R settles G for nothing. If R sees W's slot in the state
/// it must see W's pending record too (W writes it before its CAS), and slide W by at most
/// its slack: then the tail stays at 8 units and a claim of 8 made afterwards is due at 64
/// ticks. Had R slid the tail back by all 8, that claim would be due at 32 ticks, beside W:
/// 12 tokens at one instant against a burst of 8.
#[test]
fn a_refund_racing_a_claim_behind_it_slides_it_no_further_than_its_slack() {
    loom::model(|| {
        let (l, _clock) = budgets([Limit::tokens(LIMIT)]);
        let g = l.try_acquire_at(0, 8).unwrap();
        let lw = l.clone();
        let waiter = thread::spawn(move || {
            let r = lw.reserve_at(0, 4, u64::MAX).unwrap();
            // Released at its deadline: not cancelled.
            (r.ready_at_ns(), r.into_permit().tokens())
        });
        let lr = l.clone();
        let refund = thread::spawn(move || lr.settle_at(0, g, 0).unwrap());
        let w = waiter.join().unwrap();
        refund.join().unwrap();
        let c = l.reserve_at(0, 8, u64::MAX).unwrap();
        let releases = [(0, 0), w, (c.ready_at_ns(), 8)];
        assert_within(
            &releases,
            Bound {
                limit: LIMIT,
                burst: 8,
            },
        );
        drop(c.into_permit());
    });
}

/// Two refunds behind one pending waiter. Burst 8. Main takes G1 and G2, 4 tokens each, at 0
/// (slots [0, 4) and [4, 8) units), then claims W for 6 tokens (due at 48 ticks, slot [8, 14),
/// slack 2 units). Two threads settle G1 and G2 for nothing at once. Each alone may slide W
/// by 2; together they may not slide it by 4, so each spends the slack before its CAS: a
/// second refund that sees the first one's slide sees the slack it spent. The tail ends at 12
/// units at the earliest, and a claim of 8 made afterwards is due no earlier than 96 ticks;
/// slid twice, it would be due at 80 ticks: 14 tokens in [48, 80] ticks against
/// `8 + 8 × 32/64 = 12`.
#[test]
fn two_refunds_behind_one_pending_waiter_slide_it_one_slack_in_all() {
    loom::model(|| {
        let (l, _clock) = budgets([Limit::tokens(LIMIT)]);
        let g1 = l.try_acquire_at(0, 4).unwrap();
        let g2 = l.try_acquire_at(0, 4).unwrap();
        let w = l.reserve_at(0, 6, u64::MAX).unwrap();
        assert_eq!(w.ready_at_ns(), 48 * TICK);
        let l1 = l.clone();
        let r1 = thread::spawn(move || l1.settle_at(0, g1, 0).unwrap());
        let l2 = l.clone();
        let r2 = thread::spawn(move || l2.settle_at(0, g2, 0).unwrap());
        r1.join().unwrap();
        r2.join().unwrap();
        let c = l.reserve_at(0, 8, u64::MAX).unwrap();
        let releases = [(0, 0), (0, 0), (w.ready_at_ns(), 6), (c.ready_at_ns(), 8)];
        assert_within(
            &releases,
            Bound {
                limit: LIMIT,
                burst: 8,
            },
        );
        drop((w.into_permit(), c.into_permit()));
    });
}

/// A refund of a grant whose slot an earlier refund slid. Burst 16. Main takes G1, 4 tokens at
/// 0 (slot [0, 4) units). At once: A takes G2, 4 tokens at 0, and B settles G1 for nothing.
/// If A's slot was placed behind G1 ([4, 8)) before B's refund, B slides it to [0, 4) and adds
/// 4 to the bucket's slide total; A records the total it read before its CAS, so its own
/// refund later knows its slot moved. Then, at 16 ticks (2 units): C takes 8 (released there),
/// G2 is settled for nothing, and D takes what is left. G2's slot now ends at 4 units, half
/// expired: only 2 units may come back, and C + D fit the burst of 16 at that instant.
/// Judged at its recorded end (8 units), G2 would give back all 4: D would get 10, and 18
/// tokens would be released at 16 ticks.
#[test]
fn a_slot_slid_by_an_earlier_refund_is_judged_where_it_now_ends() {
    loom::model(|| {
        let (l, clock) = budgets([Limit::tokens(LIMIT).burst(Burst::Units(16))]);
        let g1 = l.try_acquire_at(0, 4).unwrap();
        let la = l.clone();
        let a = thread::spawn(move || la.try_acquire_at(0, 4).unwrap());
        let lb = l.clone();
        let b = thread::spawn(move || lb.settle_at(0, g1, 0).unwrap());
        let g2 = a.join().unwrap();
        b.join().unwrap();
        let t = 16 * TICK;
        clock.set(t);
        let c = l.try_acquire_at(t, 8).expect("8 of 16 are free at 2 units");
        l.settle_at(t, g2, 0).unwrap();
        let mut releases = vec![(0, 0), (0, 0), (t, c.tokens())];
        while let Ok(d) = l.try_acquire_at(t, 1) {
            releases.push((t, d.tokens()));
        }
        assert_within(
            &releases,
            Bound {
                limit: LIMIT,
                burst: 16,
            },
        );
    });
}
