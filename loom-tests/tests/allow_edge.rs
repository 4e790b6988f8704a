//! Concurrent `allow` at the capacity edge: exactly the refilled units are admitted.
#![cfg(ratekeeper_loom)]

use loom::thread;
use loom_tests::{limiter, used, TICK};
use ratekeeper::Budget;

/// 2 requests per 64 ticks (one unit per 32 ticks), drained at 0. At 32 ticks exactly one unit has
/// refilled, so three racing `allow_at(32 * TICK)` admit exactly one: a lost CAS that admitted
/// anyway (a store instead of a compare-exchange) would admit two or three.
#[test]
fn three_allows_share_one_refilled_unit() {
    loom::model(|| {
        let (l, _clock) = limiter(2, 0);
        assert!(l.allow_at(0) && l.allow_at(0) && !l.allow_at(0));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let l = l.clone();
                thread::spawn(move || l.allow_at(32 * TICK))
            })
            .collect();
        let admitted = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&a| a)
            .count();
        assert_eq!(admitted, 1, "one unit refilled by 32 ticks");
        // Nothing else is left at 32 ticks, and the next unit arrives at 64 ticks, as if serial.
        assert_eq!(used(&l.usage_at(32 * TICK), Budget::Requests), 2);
        assert!(!l.allow_at(32 * TICK));
        assert!(l.allow_at(64 * TICK));
        assert!(!l.allow_at(64 * TICK));
    });
}
