//! Clocks: where `now` comes from when a call does not pass it explicitly.
//!
//! A clock is a monotonic source of nanoseconds. The limiter reads it once per admission, so
//! its cost is much of the cost of an admission: std's `Instant::now` costs about 25 ns on the
//! reference machine, a time-stamp-counter read about 10 ns. [`MonotonicClock`] (the default)
//! reads the TSC through `quanta`, calibrated against the OS monotonic clock.
//!
//! A coarse kernel clock (about 5 ns) was the first choice and was dropped: it lags the true
//! time by a *varying* amount (up to a tick, more when the timekeeping CPU is descheduled), and
//! a bucket restarted from idle on a lagging reading admits that lag's worth of refill beyond
//! `burst + rate * window` in true time. Every configuration needs a precise clock.

use crate::sync::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic source of time in nanoseconds.
///
/// Readings from different threads must be consistent with the order in which they were taken:
/// a reading taken after another (in happens-before order) is not smaller. Refunds rely on it.
/// A clock that goes backwards makes admissions more conservative (nothing refills twice);
/// refunds taken on it may be as generous as the backwards step.
pub trait Clock: Send + Sync {
    /// The current reading, in nanoseconds on this clock's timeline.
    fn now(&self) -> u64;

    /// The [`Instant`] at which this clock will read `ns`, for the async waiter's timer.
    fn instant_at(&self, ns: u64) -> Instant;

    /// How far a reading may lie before one already taken on another thread: 0 for a clock
    /// that is one shared word. Refunds push their reading this far ahead (giving back a
    /// little less) so that they never rely on order the clock does not guarantee.
    #[inline]
    fn skew_ns(&self) -> u64 {
        0
    }

    /// The scale of a raw counter this clock's readings are made from, if it has one:
    /// `Some(scale)` promises that [`ticks`](Self::ticks) read at the same moment as
    /// [`now`](Self::now) gives `scale.ns(ticks) == now`. Constant for the clock's life.
    ///
    /// A limiter on such a clock decides its plain (non-`_at`) calls on the counter itself,
    /// with each rate converted to quanta per tick once per limit change, and so skips one
    /// conversion per call. Default: `None`.
    #[inline]
    fn tick_scale(&self) -> Option<TickScale> {
        None
    }

    /// The raw counter [`tick_scale`](Self::tick_scale) describes. Default: [`now`](Self::now).
    #[inline]
    fn ticks(&self) -> u64 {
        self.now()
    }
}

/// Nanoseconds per tick of a clock's raw counter, in 64.64 fixed point: a reading of `t`
/// ticks is `t * whole + (t * frac) >> 64` nanoseconds, rounded down ([`TickScale::ns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickScale {
    whole: u64,
    frac: u64,
}

impl TickScale {
    /// One nanosecond per tick.
    pub const NANOS: TickScale = TickScale { whole: 1, frac: 0 };

    /// `whole + frac / 2^64` nanoseconds per tick; `None` for zero (a counter that measures
    /// no time).
    pub const fn new(whole: u64, frac: u64) -> Option<TickScale> {
        if whole == 0 && frac == 0 {
            None
        } else {
            Some(TickScale { whole, frac })
        }
    }

    /// Nanoseconds per tick as a 64.64 fixed-point number.
    pub const fn per_tick(self) -> u128 {
        (self.whole as u128) << 64 | self.frac as u128
    }

    /// `ticks` in nanoseconds, rounded down, saturating at `u64::MAX`.
    #[inline]
    pub fn ns(self, ticks: u64) -> u64 {
        let frac = ((ticks as u128 * self.frac as u128) >> 64) as u64;
        ticks.saturating_mul(self.whole).saturating_add(frac)
    }
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

/// The process-wide timeline of [`MonotonicClock`]: a calibrated TSC (or the OS monotonic
/// clock where the TSC is not reliable), the counter's value when it reads zero, and its scale.
struct Epoch {
    clock: quanta::Clock,
    raw: u64,
    scale: TickScale,
}

static EPOCH: std::sync::OnceLock<Epoch> = std::sync::OnceLock::new();

/// The system's monotonic clock, read through the CPU's time-stamp counter where that is
/// invariant and synchronised (`quanta` checks), else through the OS monotonic clock.
///
/// All instances share one timeline, starting near zero when the first one is made, so
/// limiters, pools and waiters built separately agree on what time it is.
#[derive(Clone, Copy)]
pub struct MonotonicClock {
    epoch: &'static Epoch,
}

impl std::fmt::Debug for MonotonicClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonotonicClock")
            .field("now", &self.now())
            .finish()
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl MonotonicClock {
    /// A handle on the process-wide clock (calibrated on first use, about 10 ms, once).
    pub fn new() -> Self {
        let epoch = EPOCH.get_or_init(|| {
            let clock = quanta::Clock::new();
            let raw = clock.raw();
            // quanta's calibration, read back as nanoseconds for 2^40 ticks: 40 fractional
            // bits of the scale (the counter ticks at least once per 2^24 ns). Readings are
            // this scale applied to the counter, so that a limiter can fold it into its rates.
            let per_2_40 = clock.delta_as_nanos(0, 1 << 40).max(1);
            let scale = TickScale::new(per_2_40 >> 40, per_2_40 << 24).unwrap_or(TickScale::NANOS);
            Epoch { clock, raw, scale }
        });
        MonotonicClock { epoch }
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> u64 {
        self.epoch.scale.ns(self.ticks())
    }

    #[inline]
    fn tick_scale(&self) -> Option<TickScale> {
        Some(self.epoch.scale)
    }

    /// The counter since the epoch. A counter read a little behind the epoch (another core)
    /// reads 0: in the past, which is conservative.
    #[inline]
    fn ticks(&self) -> u64 {
        let e = self.epoch;
        e.clock.raw().saturating_sub(e.raw)
    }

    /// 1 µs: a time-stamp-counter read is not ordered after the loads before it (`rdtsc`
    /// may execute early), and cores' counters differ by a little.
    #[inline]
    fn skew_ns(&self) -> u64 {
        1_000
    }

    fn instant_at(&self, ns: u64) -> Instant {
        // Anchored at a fresh pair of readings rather than the epoch, so that the counter's
        // calibration drift against std's clock does not accumulate into the deadline.
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
    fn instant_at(&self, ns: u64) -> Instant {
        (**self).instant_at(ns)
    }
    #[inline]
    fn skew_ns(&self) -> u64 {
        (**self).skew_ns()
    }
    #[inline]
    fn tick_scale(&self) -> Option<TickScale> {
        (**self).tick_scale()
    }
    #[inline]
    fn ticks(&self) -> u64 {
        (**self).ticks()
    }
}

pub use tokio_clock::TokioClock;

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

#[cfg(all(test, not(ratekeeper_loom)))]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_is_shared_monotonic_and_tracks_real_time() {
        let a = MonotonicClock::new();
        let b = MonotonicClock::new();
        let (x, y, z) = (a.now(), b.now(), a.now());
        assert!(x <= y && y <= z, "one timeline: {x} {y} {z}");
        // Across threads too.
        let before = a.now();
        let other = std::thread::spawn(move || b.now()).join().unwrap();
        assert!(other >= before);
        // It measures nanoseconds: within 20% of std over a 20 ms interval.
        let (t0, s0) = (a.now(), Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (dt, ds) = (a.now() - t0, s0.elapsed().as_nanos() as f64);
        assert!(
            (dt as f64) > ds * 0.8 && (dt as f64) < ds * 1.2,
            "{dt} vs {ds}"
        );
        // instant_at maps its timeline onto std's.
        let at = a.instant_at(a.now() + 5_000_000);
        let d = at.saturating_duration_since(Instant::now());
        assert!(
            d <= Duration::from_millis(5) && d >= Duration::from_millis(3),
            "{d:?}"
        );
    }

    #[test]
    fn the_monotonic_clock_reads_its_counter_through_its_scale() {
        let c = MonotonicClock::new();
        let scale = c.tick_scale().expect("a counter");
        // Readings taken in order agree in order, whichever form they take.
        let (a, t, b) = (c.now(), c.ticks(), c.now());
        assert!(
            a <= scale.ns(t) && scale.ns(t) <= b,
            "{a} {} {b}",
            scale.ns(t)
        );
        // The scale is what the counter is read as, and it saturates.
        assert_eq!(TickScale::NANOS.ns(12_345), 12_345);
        let half = TickScale::new(0, 1 << 63).unwrap();
        assert_eq!((half.ns(7), half.ns(u64::MAX)), (3, u64::MAX / 2));
        assert_eq!(TickScale::new(3, 0).unwrap().ns(u64::MAX), u64::MAX);
        assert_eq!(TickScale::new(0, 0), None);
        // Clocks without a counter say so, and an Arc forwards what its clock says.
        assert_eq!(ManualClock::new(5).tick_scale(), None);
        assert_eq!(std::sync::Arc::new(c).tick_scale(), Some(scale));
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
        assert!(m.instant_at(0) <= Instant::now());
    }

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
