//! The keyed limiter's sweep racing admissions on the key it drops: a dropped key never
//! comes back more permissive than it left.
//!
//! Under loom the keyed limiter's map is a loom mutex around a `HashMap` of `Arc`s whose
//! reads release the lock before using the entry, so an admission may hold a tenant the
//! sweep removes meanwhile: the orphan the tenant's gate exists for. The models count what
//! is admitted at fixed readings and compare it with what one bucket allows.
#![cfg(ratekeeper_loom)]

use loom::thread;
use loom_tests::{PERIOD_NS, TICK};
use ratekeeper::{KeyedLimiter, ManualClock};
use std::sync::Arc;

type Keyed = KeyedLimiter<u8, Arc<ManualClock>>;

/// One request per 64 ticks, burst 1, tokens unlimited; the clock reads `at`.
fn keyed(at: u64) -> (loom::sync::Arc<Keyed>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(at));
    let k = KeyedLimiter::<u8, _>::builder(1, 0)
        .period_ns(PERIOD_NS)
        .clock(clock.clone())
        .build()
        .expect("valid model configuration");
    (loom::sync::Arc::new(k), clock)
}

/// The key was drained at 0 and its unit is back at 64 ticks, where a sweep runs beside an
/// admission. Exactly one request fits at 64 ticks, whether the admission lands on the old
/// tenant (which the sweep then keeps) or on the new one: an admission lost in a dropped
/// tenant would let a second one through. (Removing the gate check fails this model.)
#[test]
fn an_admission_racing_the_sweep_is_never_lost() {
    loom::model(|| {
        let (k, clock) = keyed(0);
        assert!(k.try_acquire_at(0, &1, 0).is_ok());
        clock.set(64 * TICK);
        let sweeper = {
            let k = k.clone();
            thread::spawn(move || k.evict_idle())
        };
        let admitted = k.try_acquire_at(64 * TICK, &1, 0).is_ok();
        sweeper.join().unwrap();
        assert!(admitted, "the unit refilled by 64 ticks");
        assert!(
            k.try_acquire_at(64 * TICK, &1, 0).is_err(),
            "a second request at 64 ticks: the first was lost"
        );
        assert!(k.try_acquire_at(128 * TICK, &1, 0).is_ok());
    });
}

/// Two admissions at 64 ticks race a sweep at 64 ticks: one of them, never both.
#[test]
fn two_admissions_and_a_sweep_share_one_unit() {
    loom::model(|| {
        let (k, clock) = keyed(0);
        assert!(k.try_acquire_at(0, &1, 0).is_ok());
        clock.set(64 * TICK);
        let other = {
            let k = k.clone();
            thread::spawn(move || k.try_acquire_at(64 * TICK, &1, 0).is_ok())
        };
        let sweeper = {
            let k = k.clone();
            thread::spawn(move || k.evict_idle())
        };
        let mine = k.try_acquire_at(64 * TICK, &1, 0).is_ok();
        let theirs = other.join().unwrap();
        sweeper.join().unwrap();
        assert_eq!(mine as u8 + theirs as u8, 1, "one unit at 64 ticks");
    });
}

/// A sweep at 64 ticks drops the key; an admission whose reading (32 ticks) predates the
/// sweep arrives after it. Half a unit had refilled at 32 ticks: the key that comes back
/// must refuse, as the dropped one would have. (A new tenant full from the beginning of time,
/// rather than from the sweep's reading, fails this model.)
#[test]
fn a_reading_older_than_the_sweep_finds_no_more_than_before() {
    loom::model(|| {
        let (k, clock) = keyed(0);
        assert!(k.try_acquire_at(0, &1, 0).is_ok());
        clock.set(64 * TICK);
        let sweeper = {
            let k = k.clone();
            thread::spawn(move || k.evict_idle())
        };
        let late = k.try_acquire_at(32 * TICK, &1, 0).is_ok();
        let dropped = sweeper.join().unwrap();
        assert!(!late, "half a unit at 32 ticks (dropped: {dropped})");
    });
}

/// Idle for a whole period, the key is dropped; settling a permit of the dropped tenant
/// afterwards (a long request) gives nothing back beyond the new tenant's state.
#[test]
fn a_permit_of_a_dropped_tenant_settles_harmlessly() {
    loom::model(|| {
        let (k, clock) = keyed(0);
        let p = k.try_acquire_at(0, &1, 0).expect("full at 0");
        clock.set(64 * TICK);
        let sweeper = {
            let k = k.clone();
            thread::spawn(move || k.evict_idle())
        };
        let now = k.try_acquire_at(64 * TICK, &1, 0).is_ok();
        sweeper.join().unwrap();
        k.settle_at(64 * TICK, &1, p, 0).unwrap();
        assert!(now);
        assert!(k.try_acquire_at(64 * TICK, &1, 0).is_err());
    });
}
