//! Three budgets decided together under contention: requests, input tokens and output tokens.
//! Every admission takes from all three or from none, and none is decided half under old and
//! half under new limits.
#![cfg(ratekeeper_loom)]

use loom::thread;
use loom_tests::{budgets, limit, used, PERIOD_NS};
use ratekeeper::{Budget, Cost, Limit};
use std::time::Duration;

/// Requests 4, input 8, output 4 (bursts of a full period), all at reading 0, so nothing
/// refills and refunds are exact. Two threads at once:
///
/// - T1 acquires (2 in, 3 out) and settles for (2 in, 1 out): a refund of 2 output tokens;
/// - T2 acquires (3 in, 2 out): it fits requests and input beside T1, and output only once
///   T1 has settled (3 + 2 > 4, 1 + 2 <= 4).
///
/// Budgets commit in order (requests, input, output), so the loser of the output race has
/// already committed two budgets and rolls both back, racing the winner's refund. Whatever
/// the order, every budget must end holding exactly what the admitted threads kept: a take
/// that kept some budgets and not others (a rollback missed or doubled) breaks that. And
/// someone always gets in: output is the last budget committed, so a thread refused there
/// was refused by units the other has already been admitted with.
#[test]
fn every_admission_takes_from_all_three_budgets_or_none() {
    loom::model(|| {
        let (l, _clock) = budgets([
            Limit::requests(4),
            Limit::input_tokens(8),
            Limit::output_tokens(4),
        ]);
        let l1 = l.clone();
        let t1 = thread::spawn(move || {
            let p = l1.try_acquire_at(0, Cost::new(2, 3)).ok()?;
            l1.settle_at(0, p, Cost::new(2, 1)).unwrap();
            Some(Cost::new(2, 1))
        });
        let l2 = l.clone();
        let t2 =
            thread::spawn(move || l2.try_acquire_at(0, Cost::new(3, 2)).ok().map(|p| p.cost()));
        let kept = [t1.join().unwrap(), t2.join().unwrap()];
        let admitted = kept.iter().flatten().count() as u64;
        let u = l.usage_at(0);
        let got = (
            used(&u, Budget::Requests),
            used(&u, Budget::InputTokens),
            used(&u, Budget::OutputTokens),
        );
        let want = (
            admitted,
            kept.iter().flatten().map(|c| c.input).sum(),
            kept.iter().flatten().map(|c| c.output).sum(),
        );
        assert_eq!(
            got, want,
            "usage is not what the admitted threads kept: {kept:?}"
        );
        assert!(admitted >= 1, "nobody admitted: {kept:?}");
    });
}

/// The limits every model below switches between, per [`PERIOD_NS`]: old requests 4, input 8,
/// output 8; new requests 4, input 16, output 4.
fn old_limits() -> [Limit; 3] {
    [
        Limit::requests(4),
        Limit::input_tokens(8),
        Limit::output_tokens(8),
    ]
}

/// See [`old_limits`]: the change touches input and output; requests keep their count, but
/// move to the new version with the rest.
fn new_limits() -> [Limit; 2] {
    let per = Duration::from_nanos(PERIOD_NS);
    [
        Limit::input_tokens(16).per(per),
        Limit::output_tokens(4).per(per),
    ]
}

/// (requests, input, output) in use at reading 0.
fn usage3(l: &loom_tests::Limiter) -> (u64, u64, u64) {
    let u = l.usage_at(0);
    (
        used(&u, Budget::Requests),
        used(&u, Budget::InputTokens),
        used(&u, Budget::OutputTokens),
    )
}

/// One `set_limits` switches input and output while an admission runs (see [`old_limits`]).
/// Main first takes (6 in, 3 out). Then T1 asks for (3 in, 3 out): under the old limits input
/// refuses it (9 > 8), under the new ones output does (3 used, carried over; 6 > 4), so it
/// must be refused in every order. Admitting it needs new input with old output: a decision
/// that mixed two versions of the limits.
#[test]
fn no_admission_mixes_old_and_new_limits_of_three_budgets() {
    loom::model(|| {
        let (l, _clock) = budgets(old_limits());
        let _first = l.try_acquire_at(0, Cost::new(6, 3)).unwrap();
        let l1 = l.clone();
        let t1 = thread::spawn(move || l1.try_acquire_at(0, Cost::new(3, 3)).is_ok());
        let ls = l.clone();
        let setter = thread::spawn(move || ls.set_limits_at(0, &new_limits()).unwrap());
        let ok = t1.join().unwrap();
        setter.join().unwrap();
        assert!(!ok, "admitted under new input and old output limits");
        let u = l.usage_at(0);
        assert_eq!(
            (
                limit(&u, Budget::InputTokens),
                limit(&u, Budget::OutputTokens)
            ),
            (16, 4)
        );
        assert_eq!(usage3(&l), (1, 6, 3), "main's units carried over exactly");
    });
}

/// A refund racing the same change: main takes (6 in, 3 out) under the old limits; T1 settles
/// it for (6 in, 0 out) while the setter switches. The refund lands wholly under the old
/// version (3 output tokens back, then carried over as 0) or not at all (the units were
/// carried into the new limits as used, and a permit of the old version gives nothing back):
/// never half, and never measured in the old version's quanta against the new version's
/// state (output quanta are twice as fine after the change, so such a refund would give back
/// 1.5 units). Then an admission of (3 in, 3 out) fits the new limits only if the refund
/// landed.
#[test]
fn a_refund_racing_a_limit_change_lands_before_it_or_not_at_all() {
    loom::model(|| {
        let (l, _clock) = budgets(old_limits());
        let first = l.try_acquire_at(0, Cost::new(6, 3)).unwrap();
        let l1 = l.clone();
        let t1 = thread::spawn(move || l1.settle_at(0, first, Cost::new(6, 0)).unwrap());
        let ls = l.clone();
        let setter = thread::spawn(move || ls.set_limits_at(0, &new_limits()).unwrap());
        t1.join().unwrap();
        setter.join().unwrap();
        let before = usage3(&l);
        assert!(
            before == (1, 6, 0) || before == (1, 6, 3),
            "a refund half applied, or across versions: {before:?}"
        );
        let admitted = l.try_acquire_at(0, Cost::new(3, 3)).is_ok();
        assert_eq!(admitted, before.2 == 0, "usage {before:?}");
        let after = usage3(&l);
        assert!(after.2 <= 4, "over the new output burst: {after:?}");
    });
}
