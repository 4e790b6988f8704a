//! `try_acquire` where the request bucket has room and the token bucket does not: the loser's
//! request slot must be given back exactly once (the rollback path).
#![cfg(ratekeeper_loom)]

use loom::thread;
use loom_tests::{limiter, remaining, used};
use ratekeeper::Budget;

/// Requests: burst 2. Tokens: burst 10. Two `try_acquire(6)` can both pass the token decision
/// (6 <= 10) and both take a request slot; only one token commit can succeed, so the other
/// rolls its request back. A third thread's `allow` races the rollback. Whatever the order,
/// exactly one acquire succeeds and the request bucket ends holding exactly the admitted
/// requests: a leaked slot shows as one more, a double refund as one fewer.
#[test]
fn losing_token_commit_returns_its_request_slot_once() {
    loom::model(|| {
        let (l, _clock) = limiter(2, 10);
        let acquirers: Vec<_> = (0..2)
            .map(|_| {
                let l = l.clone();
                thread::spawn(move || l.try_acquire_at(0, 6).is_ok())
            })
            .collect();
        let l3 = l.clone();
        let allower = thread::spawn(move || l3.allow_at(0));
        let acquired = acquirers
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&a| a)
            .count() as u64;
        let allowed = allower.join().unwrap() as u64;
        assert_eq!(
            acquired, 1,
            "6 + 6 tokens never fit a burst of 10, 6 always does"
        );
        let u = l.usage_at(0);
        // The allow may be refused while the doomed request briefly holds a slot (conservative),
        // but what is left must be exactly what was admitted.
        assert_eq!(
            used(&u, Budget::Requests),
            acquired + allowed,
            "request slot leaked or refunded twice"
        );
        assert_eq!(used(&u, Budget::Tokens), 6 * acquired);
        assert_eq!(remaining(&u, Budget::Requests), 2 - acquired - allowed);
    });
}
