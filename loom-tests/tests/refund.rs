//! Refunds (settle surplus, reservation cancel) racing admissions: the bucket is never more
//! permissive than the history without the withdrawn units.
//!
//! Time here comes from the limiter's manual clock, moved forward by the admitting thread
//! before it admits, so clock readings are monotonic across threads (the refund rule's
//! premise); the refunding thread passes a stale `now` of 0 on purpose: the refund must take
//! the later clock reading itself.
#![cfg(ratekeeper_loom)]

use loom::thread;
use loom_tests::{limiter, TICK};

/// Requests: 4 per 64 ticks (one per 16 ticks), drained at 0; a reservation claims a fifth at 0
/// (debt, ready at 16 ticks) and is cancelled while another thread admits at 96 ticks. Without the
/// reservation, 96 ticks finds the bucket full again: exactly 4 admissions there, before or
/// after the cancel. A refund that trusted the stale `now` (or ignored how much of the claim
/// had already expired) would give one unit back on top of the reset and admit a fifth.
#[test]
fn cancelled_reservation_gives_back_no_more_than_it_holds() {
    loom::model(|| {
        let (l, clock) = limiter(4, 0);
        for _ in 0..4 {
            assert!(l.allow_at(0));
        }
        let lc = l.clone();
        let canceller = thread::spawn(move || {
            let r = lc.reserve_at(0, 0, u64::MAX).unwrap();
            r.cancel_at(0);
        });
        let la = l.clone();
        let admitter = thread::spawn(move || {
            clock.set(96 * TICK);
            (0..2).filter(|_| la.allow_at(96 * TICK)).count()
        });
        canceller.join().unwrap();
        let early = admitter.join().unwrap();
        let late = (0..4).filter(|_| l.allow_at(96 * TICK)).count();
        assert_eq!(early, 2, "the bucket is full again at 96 ticks");
        assert_eq!(early + late, 4, "more than a full bucket at 96 ticks");
    });
}

/// Tokens: 8 per 64 ticks (one per 8 ticks). A permit for 8 tokens taken at 0 is settled for 2
/// (a refund of 6, with a stale `now` of 0) while another thread admits at 32 ticks. Without the
/// withdrawn 6, the bucket is full again at 32 ticks: 8 tokens, no more, can be admitted there
/// in total. Too generous a refund (stale time, or the whole surplus after the admission
/// at 32 ticks) lets more through.
#[test]
fn settle_refund_racing_admissions_is_never_too_generous() {
    loom::model(|| {
        let (l, clock) = limiter(0, 8);
        let p = l.try_acquire_at(0, 8).unwrap();
        let ls = l.clone();
        let settler = thread::spawn(move || ls.settle_at(0, p, 2));
        let la = l.clone();
        let admitter = thread::spawn(move || {
            clock.set(32 * TICK);
            la.try_acquire_at(32 * TICK, 4).is_ok() as u64 * 4
        });
        settler.join().unwrap().unwrap();
        let early = admitter.join().unwrap();
        assert_eq!(
            early, 4,
            "4 tokens have refilled by 32 ticks whatever the settle does"
        );
        let late: u64 = (0..8)
            .filter(|_| l.try_acquire_at(32 * TICK, 1).is_ok())
            .count() as u64;
        assert!(
            early + late <= 8,
            "{early} + {late} tokens at 32 ticks: more than a full bucket"
        );
        // And nothing is lost: whichever order, the settle gives back what had not expired
        // by the reading it took, so the bucket holds exactly a full 8 at 32 ticks.
        assert_eq!(early + late, 8);
    });
}
