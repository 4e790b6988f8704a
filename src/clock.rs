//! Clocks: where `now` comes from when a call does not pass it explicitly.
//!
//! A clock is a monotonic source of nanoseconds. The limiter reads it once per admission, so
//! its cost is most of the cost of an admission: std's `Instant::now` costs about 25 ns on the
//! reference machine, a coarse kernel clock about 5 ns. [`MonotonicClock`] (the default) gives
//! a limiter the coarse reading only where that cannot cost it throughput (see
//! [`Clock::now_within`]), and the precise one elsewhere.

use crate::sync::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic source of time in nanoseconds.
///
/// Readings from different threads must be consistent with the order in which they were taken:
/// a reading taken after another (in happens-before order) is not smaller. Refunds rely on it.
pub trait Clock: Send + Sync {
    /// The current reading, in nanoseconds on this clock's timeline.
    fn now(&self) -> u64;

    /// A reading that may lag the true time by up to `max_lag_ns`, where that is cheaper.
    ///
    /// A lagging reading is conservative: it sees less refill, never more. The limiter passes
    /// the time its smallest bucket takes to refill its whole burst: a clock that lags by less
    /// steps the refill in pieces the bucket can hold, so a saturated bucket loses no refill
    /// and long-run throughput stays exactly at the limit.
    #[inline]
    fn now_within(&self, max_lag_ns: u64) -> u64 {
        let _ = max_lag_ns;
        self.now()
    }

    /// The [`Instant`] at which this clock will read `ns`, for the async waiter's timer.
    fn instant_at(&self, ns: u64) -> Instant;
}

/// Converts a signed offset from a reference instant, saturating instead of panicking.
fn offset_instant(base: Instant, base_ns: u64, ns: u64) -> Instant {
    if ns >= base_ns {
        let d = Duration::from_nanos(ns - base_ns);
        base.checked_add(d)
            .unwrap_or_else(|| base + Duration::from_secs(86_400 * 365 * 30))
    } else {
        base.checked_sub(Duration::from_nanos(base_ns - ns))
            .unwrap_or(base)
    }
}

/// The system's monotonic clock: `CLOCK_MONOTONIC` for precise readings and, on Linux,
/// `CLOCK_MONOTONIC_COARSE` (the same timeline, updated once per kernel tick) where a limiter
/// tolerates the tick as lag. Elsewhere, `std::time::Instant`.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    /// Resolution of the coarse clock, in ns; `u64::MAX` where there is none.
    coarse_step: u64,
    #[cfg(not(unix))]
    base: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl MonotonicClock {
    /// Opens the clock, measuring the coarse clock's step once.
    pub fn new() -> Self {
        MonotonicClock {
            coarse_step: coarse_step(),
            #[cfg(not(unix))]
            base: Instant::now(),
        }
    }

    /// The step of the coarse clock in nanoseconds (`None` where there is no coarse clock).
    pub fn coarse_step(&self) -> Option<u64> {
        (self.coarse_step != u64::MAX).then_some(self.coarse_step)
    }

    /// A reading of the coarse clock (the precise one where there is none).
    #[inline]
    pub fn now_coarse(&self) -> u64 {
        #[cfg(target_os = "linux")]
        return read(libc::CLOCK_MONOTONIC_COARSE);
        #[cfg(not(target_os = "linux"))]
        self.now()
    }
}

#[cfg(unix)]
#[inline]
fn read(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes it and nothing else.
    // The monotonic clocks cannot fail on a supported kernel; on failure `ts` stays zero,
    // a reading in the past, which is conservative.
    unsafe { libc::clock_gettime(id, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

fn coarse_step() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: as in `read`.
        let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        let step = (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64);
        if rc == 0 && step > 0 {
            return step;
        }
    }
    u64::MAX
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> u64 {
        #[cfg(unix)]
        return read(libc::CLOCK_MONOTONIC);
        #[cfg(not(unix))]
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    #[inline]
    fn now_within(&self, max_lag_ns: u64) -> u64 {
        // The coarse clock lags by up to one step; allow for a late tick with a factor of two.
        if max_lag_ns / 2 >= self.coarse_step {
            self.now_coarse()
        } else {
            self.now()
        }
    }

    fn instant_at(&self, ns: u64) -> Instant {
        offset_instant(Instant::now(), self.now(), ns)
    }
}

/// A clock that moves only when told to: for tests and simulations.
///
/// It may be set backwards, to test that a clock going backwards refills nothing.
#[derive(Debug)]
pub struct ManualClock {
    ns: AtomicU64,
    base: Instant,
}

impl ManualClock {
    /// A clock reading `start_ns`.
    pub fn new(start_ns: u64) -> Self {
        ManualClock {
            ns: AtomicU64::new(start_ns),
            base: Instant::now(),
        }
    }

    /// Moves the clock forward by `d` (saturating).
    pub fn advance(&self, d: Duration) {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .ns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(d))
            });
    }

    /// Sets the reading, forwards or backwards.
    pub fn set(&self, ns: u64) {
        self.ns.store(ns, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> u64 {
        self.ns.load(Ordering::SeqCst)
    }

    fn instant_at(&self, ns: u64) -> Instant {
        offset_instant(self.base, 0, ns)
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    #[inline]
    fn now(&self) -> u64 {
        (**self).now()
    }
    #[inline]
    fn now_within(&self, max_lag_ns: u64) -> u64 {
        (**self).now_within(max_lag_ns)
    }
    fn instant_at(&self, ns: u64) -> Instant {
        (**self).instant_at(ns)
    }
}

#[cfg(not(loom))]
pub use tokio_clock::TokioClock;

#[cfg(not(loom))]
mod tokio_clock {
    use super::{offset_instant, Clock};
    use std::time::Instant;

    /// Tokio's clock: follows `tokio::time::Instant`, so tests with paused time
    /// (`#[tokio::test(start_paused = true)]`) control the limiter and its timers together.
    ///
    /// Reads zero at the moment it was created.
    #[derive(Clone, Copy, Debug)]
    pub struct TokioClock {
        base: tokio::time::Instant,
    }

    impl TokioClock {
        /// A clock starting at tokio's current instant.
        pub fn new() -> Self {
            TokioClock {
                base: tokio::time::Instant::now(),
            }
        }
    }

    impl Default for TokioClock {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Clock for TokioClock {
        #[inline]
        fn now(&self) -> u64 {
            u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
        }

        fn instant_at(&self, ns: u64) -> Instant {
            offset_instant(self.base.into_std(), 0, ns)
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_moves_forward_and_coarse_never_leads() {
        let c = MonotonicClock::new();
        let a = c.now();
        let coarse = c.now_coarse();
        let b = c.now();
        assert!(b >= a);
        assert!(coarse <= b, "coarse {coarse} ahead of precise {b}");
        if let Some(step) = c.coarse_step() {
            assert!(a.saturating_sub(coarse) <= 4 * step.max(1_000_000));
            // Asked for less lag than the step, it must read the precise clock.
            let before = c.now();
            let r = c.now_within(step);
            assert!(r >= before);
        }
    }

    #[test]
    fn manual_clock_moves_both_ways_and_saturates() {
        let c = ManualClock::new(10);
        c.advance(Duration::from_nanos(5));
        assert_eq!(c.now(), 15);
        c.set(3);
        assert_eq!(c.now(), 3);
        c.advance(Duration::MAX);
        assert_eq!(c.now(), u64::MAX);
    }

    #[test]
    fn instant_at_maps_offsets_without_panicking() {
        let c = ManualClock::new(0);
        let a = c.instant_at(1_000_000);
        assert_eq!(a - c.instant_at(0), Duration::from_millis(1));
        let _far = c.instant_at(u64::MAX);
        let m = MonotonicClock::new();
        let _past = m.instant_at(0);
    }

    #[cfg(not(loom))]
    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = TokioClock::new();
        assert_eq!(c.now(), 0);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(c.now(), 1_500_000_000);
        let at = tokio::time::Instant::from_std(c.instant_at(2_000_000_000));
        assert_eq!(at - tokio::time::Instant::now(), Duration::from_millis(500));
    }
}
