//! A waiter's cancel racing a later claim and an admission, judged at release instants: a
//! caller counts at the instant it is released (a waiter at its deadline, an admission at its
//! reading), a cancelled claim counts nothing, and no window of release instants may hold more
//! than `burst + rate × window`.
#![cfg(ratekeeper_loom)]

use loom::thread;
use loom_tests::{assert_within, limiter, Bound, TICK};

/// Tokens: 8 per 64 ticks (one per 8 ticks), burst 8; requests unlimited.
const LIMIT: u64 = 8;

/// Main takes the whole burst at 0 (released at 0). Then, at once: a waiter claims the next 8
/// tokens (due at 64 ticks) and cancels the claim before its deadline; a later claim for 8
/// tokens is placed, before or after the cancel; an admission asks for 8 tokens at 128 ticks,
/// moving the clock there first. Had the cancelled claim never been made, the later claim and
/// the admission would share the bucket from 64 ticks on: 8 tokens at 64 and 8 more at 128,
/// never 16 at one instant. A refund that gives back units a later claim was placed behind
/// lets that claim keep its deadline while the admission takes the units again.
#[test]
fn a_cancel_racing_a_later_claim_and_an_admission_keeps_every_window() {
    loom::model(|| {
        let (l, clock) = limiter(0, LIMIT);
        let first = l.try_acquire_at(0, 8).expect("full at 0");
        let lc = l.clone();
        let canceller = thread::spawn(move || {
            let r = lc.reserve_at(0, 8, u64::MAX).expect("unbounded claim");
            r.cancel_at(0);
        });
        let lw = l.clone();
        let waiter = thread::spawn(move || {
            let r = lw.reserve_at(0, 8, u64::MAX).expect("unbounded claim");
            // Released at its deadline: not cancelled.
            (r.ready_at_ns(), r.into_permit().tokens())
        });
        let la = l.clone();
        let admitter = thread::spawn(move || {
            clock.set(128 * TICK);
            let p = la.try_acquire_at(128 * TICK, 8).ok();
            (128 * TICK, p.map_or(0, |p| p.tokens()))
        });
        canceller.join().unwrap();
        let releases = [
            (0, first.tokens()),
            waiter.join().unwrap(),
            admitter.join().unwrap(),
        ];
        assert_within(
            &releases,
            Bound {
                limit: LIMIT,
                burst: LIMIT,
            },
        );
    });
}
