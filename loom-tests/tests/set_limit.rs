//! `set_limit` racing admissions: each admission is wholly under the old or the new limits.
#![cfg(ratekeeper_loom)]

use loom::thread;
use loom_tests::{limit, limiter, used, TICK};
use ratekeeper::Budget;

/// Old limits: 3 requests, 10 tokens. New: 1 request, 20 tokens. Two threads try to acquire
/// 6 tokens each while a third switches the limits. Under the old limits only one fits the
/// tokens (12 > 10); under the new, only one fits the requests; carried across the change,
/// either one's usage keeps the other out. So in every order of the three at most one is
/// admitted. Two admissions need a mix, an old request with new tokens: exactly what the
/// version check in `try_acquire` exists to prevent.
///
/// An admission that straddled the change is given back, and a refund across versions gives
/// nothing back by design (its units were carried as used), so a straddler may leave a
/// request and 6 tokens behind: usage may read high by whole straddles, never low.
///
/// This model found a livelock: while `set_limit` was halfway (requests at the new version,
/// tokens still at the old), an admission retried give-back-and-readmit at once, kept writing
/// the token bucket the setter was trying to switch, and the two could chase each other. The
/// straddle path now gives back and then waits, writing nothing, until the change has
/// finished (`await_limit_change`), so it can no longer obstruct the setter.
///
/// It used to be bounded to one preemption: the straddler then spun on the two generations,
/// and from two preemptions on loom aborted ("exceeded maximum number of branches") on the
/// two waiters spinning while the setter sat between its buckets. The straddler now waits on
/// the setter's lock, which loom models as blocking, and the model runs at the suite's bound
/// (about 4 minutes at 4 preemptions, 40 s at 3, on 2 vCPUs).
#[test]
fn admissions_never_mix_old_and_new_limits() {
    loom::model(|| {
        let (l, _clock) = limiter(3, 10);
        let acquirers: Vec<_> = (0..2)
            .map(|_| {
                let l = l.clone();
                thread::spawn(move || l.try_acquire_at(0, 6).is_ok() as u64)
            })
            .collect();
        let ls = l.clone();
        let setter = thread::spawn(move || ls.set_limit_at(0, 1, 20));
        let admitted: u64 = acquirers.into_iter().map(|h| h.join().unwrap()).sum();
        setter.join().unwrap().unwrap();
        assert!(
            admitted <= 1,
            "two admissions: one mixed old and new limits"
        );
        let u = l.usage_at(0);
        assert_eq!(
            (limit(&u, Budget::Requests), limit(&u, Budget::Tokens)),
            (1, 20)
        );
        let ok = used(&u, Budget::Tokens).is_multiple_of(6)
            && (6 * admitted..=12).contains(&used(&u, Budget::Tokens))
            && (admitted..=2).contains(&used(&u, Budget::Requests));
        assert!(ok, "{admitted} admitted, usage {u:?}");
    });
}

/// Single-bucket operations racing a limit change, at a time when the old and new units
/// differ (32 ticks): requests 4 -> 2 per 64 ticks (one per 16 ticks -> one per 32 ticks), tokens 16 -> 32
/// per 64 ticks. Before: 3 requests and 10 tokens in use. An `allow` fits the old burst (4) but
/// not the new (2); a charge of 5 fits either way. No refunds are involved, so the used
/// counts after the change must be exact: 15 tokens, 3 + (the allow) requests, and they
/// must refill at the new rates.
#[test]
fn limit_change_carries_used_units_exactly() {
    loom::model(|| {
        let (l, _clock) = limiter(4, 16);
        assert!((0..3).all(|_| l.allow_at(32 * TICK)));
        l.charge_at(32 * TICK, 0, 10);
        let ls = l.clone();
        let setter = thread::spawn(move || ls.set_limit_at(32 * TICK, 2, 32));
        let la = l.clone();
        let allower = thread::spawn(move || la.allow_at(32 * TICK) as u64);
        let lc = l.clone();
        let charger = thread::spawn(move || lc.charge_at(32 * TICK, 0, 5));
        setter.join().unwrap().unwrap();
        let a = allower.join().unwrap();
        charger.join().unwrap();
        let u = l.usage_at(32 * TICK);
        assert_eq!(
            (limit(&u, Budget::Requests), limit(&u, Budget::Tokens)),
            (2, 32)
        );
        assert_eq!(
            (used(&u, Budget::Requests), used(&u, Budget::Tokens)),
            (3 + a, 15),
            "usage not carried"
        );
        // New rates: one request per 32 ticks, one token per 2 ticks.
        let later = l.usage_at(64 * TICK);
        assert_eq!(
            (used(&later, Budget::Requests), used(&later, Budget::Tokens)),
            (2 + a, 0)
        );
        assert!(!l.allow_at((64 + 32 * a) * TICK));
    });
}

/// A change whose caller read the clock long ago (it waited for the lock, or was descheduled)
/// racing an admission made at a later reading. Requests go from 1 to 4 per 64 ticks (bursts
/// 1 and 4); the acquirer moves the clock to 32 ticks and takes one request there; the setter
/// passes a reading of 0. Carried over at 0, the admission's unit and the idle stretch before
/// it (1.5 units at the old rate) would refill by 32 ticks at the new rate, and 4 more would
/// fit at 32 ticks: 5 in one instant against a burst of 4. So the setter reads the clock
/// after each load of the state it converts (a reading from before the load, or one kept
/// across a failed CAS, both let this model fail), and in every order exactly 4 fit.
#[test]
fn limit_change_never_converts_at_a_reading_older_than_an_admission() {
    loom::model(|| {
        let (l, clock) = limiter(1, 0);
        let la = l.clone();
        let acquirer = thread::spawn(move || {
            clock.set(32 * TICK);
            la.allow_at(32 * TICK) as u64
        });
        let ls = l.clone();
        let setter = thread::spawn(move || ls.set_limit_at(0, 4, 0));
        let mut admitted = acquirer.join().unwrap();
        setter.join().unwrap().unwrap();
        assert_eq!(admitted, 1, "a full bucket refused");
        while l.allow_at(32 * TICK) {
            admitted += 1;
        }
        assert_eq!(admitted, 4, "one instant, burst 4");
    });
}
