//! Token charges and settles racing `try_acquire`: every unit is counted once.
#![cfg(ratekeeper_loom)]

use loom::thread;
use loom_tests::{limiter, used};
use ratekeeper::Budget;

/// Tokens: burst 10. T1 acquires 4 and settles for 1 (a refund of 3); T2 charges 6 outside
/// any permit; T3 acquires 3. At a fixed time refunds are exact, so the bucket must end
/// holding exactly `6 + 1·a1 + 3·a3`: a lost update (a store instead of a compare-exchange
/// in a charge, an admission or a refund) breaks the sum. And T1 can be refused only if more
/// than 6 tokens were in use when it decided, which needs T3's admission: both refused is not
/// explained by any order of the three.
#[test]
fn charges_settles_and_admissions_add_up() {
    loom::model(|| {
        let (l, _clock) = limiter(3, 10);
        let l1 = l.clone();
        let t1 = thread::spawn(move || match l1.try_acquire_at(0, 4) {
            Ok(p) => {
                l1.settle_at(0, p, 1).unwrap();
                1
            }
            Err(_) => 0,
        });
        let l2 = l.clone();
        let t2 = thread::spawn(move || l2.charge_at(0, 0, 6));
        let l3 = l.clone();
        let t3 = thread::spawn(move || l3.try_acquire_at(0, 3).is_ok() as u64);
        let a1 = t1.join().unwrap();
        let _ready = t2.join().unwrap();
        let a3 = t3.join().unwrap();
        assert!(
            a1 + a3 > 0,
            "both refused: no order of the three explains it"
        );
        let u = l.usage_at(0);
        assert_eq!(
            used(&u, Budget::Tokens),
            6 + a1 + 3 * a3,
            "a token update was lost"
        );
        assert_eq!(used(&u, Budget::Requests), a1 + a3);
    });
}
