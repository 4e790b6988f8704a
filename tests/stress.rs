//! Stress test with an independent checker: threads hammer one limiter on the real clock with
//! a random mix of allow / try_acquire / settle (/ set_limit), log every admission with the
//! clock reading it was decided at, and a checker verifies afterwards that no window of any
//! length admitted more than `burst + rate × window`.
//!
//! Every operation passes one reading of the limiter's own `MonotonicClock` to the `*_at`
//! form, so the log holds the exact decision times. Readings taken on different threads reach
//! the limiter out of order; GCRA's bound holds for any order (a stale reading sees less
//! refill), and refunds take the later of that reading and a fresh one, as in production.
//!
//! Waiters (async tasks, in one phase) are logged at the instant they are released: their
//! deadline, read from the reservation or traced from the clock they sleep on. A waiter given
//! up before its deadline admits nothing.
//!
//! The bound is exact for GCRA (the limiter is never more permissive than exact GCRA): with
//! admissions sorted by time and `S` their prefix sums, every window `[t_i, t_j]` must satisfy
//! `S_j - S_(i-1) <= burst + rate·(t_j - t_i)`, checked in one pass in integer arithmetic.
//! Settled permits count what they settled for (`min(actual, estimate)`): the refund rule
//! promises nothing more permissive than the history without the withdrawn units; a charge
//! beyond the estimate only consumes, so it is not counted.
//!
//! Figures here come from 2 vCPUs that do not run two threads truly in parallel.

use ratekeeper::{Burst, Clock, Error, MonotonicClock, Permit, TokenBucketLimiter};
use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_millis(100);
const THREADS: usize = 4;

/// One admitted budget: (decision time ns, units).
type Log = Vec<(u64, u64)>;

/// A small, seedable generator (xorshift64*): the test needs no statistical quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The request burst of the phase with waiters.
const WAITING_REQUEST_BURST: u64 = 4;

/// Limits a phase may switch between: (rpm, tpm) per [`PERIOD`].
const LIMITS: [(u64, u64); 3] = [(2_000, 50_000), (500, 200_000), (4_000, 20_000)];

/// What one thread logged: requests admitted, tokens admitted (as settled), ops done.
struct ThreadLog {
    requests: Log,
    tokens: Log,
    ops: u64,
}

/// The limiter under test: on the real clock, as traced for the waiters.
type Limiter = TokenBucketLimiter<Traced>;

/// Settles `permit` at `now` for `actual` tokens (one touchpoint: its signature is about to
/// change).
fn settle(l: &Limiter, now: u64, permit: Permit, actual: u64) {
    l.settle_at(now, permit, actual)
        .expect("the limiter's own permit")
}

/// (requests, tokens) a call could take at `now` (one touchpoint: `Usage` is about to change).
fn remaining(l: &Limiter, now: u64) -> (u64, u64) {
    let u = l.usage_at(now);
    (
        u.requests().map_or(u64::MAX, |b| b.remaining),
        u.tokens().map_or(u64::MAX, |b| b.remaining),
    )
}

fn hammer(l: &Limiter, seed: u64, stop: &AtomicBool, set_limits: bool) -> ThreadLog {
    let mut rng = Rng(seed | 1);
    let mut log = ThreadLog {
        requests: Vec::new(),
        tokens: Vec::new(),
        ops: 0,
    };
    // Held permits with the index of their entry in `log.tokens`.
    let mut held: Vec<(Permit, usize)> = Vec::new();
    // A reading up to 4096 operations old (a few milliseconds here): what a caller holds
    // after reading the clock and then being descheduled, or waiting for a lock.
    let mut stale = l.clock().now();
    while !stop.load(Ordering::Relaxed) {
        log.ops += 1;
        let now = l.clock().now();
        if log.ops % 4096 == 0 {
            stale = now;
        }
        match rng.below(100) {
            0..=29 => {
                if l.allow_at(now) {
                    log.requests.push((now, 1));
                }
            }
            30..=69 => {
                let n = 1 + rng.below(60);
                if let Ok(p) = l.try_acquire_at(now, n) {
                    log.requests.push((now, 1));
                    log.tokens.push((now, n));
                    held.push((p, log.tokens.len() - 1));
                }
            }
            70..=93 if !held.is_empty() => {
                let k = rng.below(held.len() as u64) as usize;
                let (p, idx) = held.swap_remove(k);
                let actual = rng.below(2 * p.tokens() + 1);
                log.tokens[idx].1 = actual.min(p.tokens());
                settle(l, now, p, actual);
            }
            94..=95 if set_limits => {
                let (rpm, tpm) = LIMITS[rng.below(LIMITS.len() as u64) as usize];
                // Half the changes pass a stale reading: the limiter must not carry used
                // units over at it (that refilled the stretch since twice; see below).
                l.set_limit_at(if rng.below(2) == 0 { now } else { stale }, rpm, tpm)
                    .expect("both budgets exist");
            }
            _ => {
                // What could be taken never exceeds a bucket: the largest bursts in LIMITS.
                let (requests, tokens) = remaining(l, now);
                assert!(requests <= 4_000 && tokens <= 200_000 / 5);
            }
        }
    }
    log
}

/// The largest excess over `burst + limit/period × window` of any window, in units scaled by
/// the period (`<= 0` means the bound holds). `log` must be sorted by time.
fn worst_window(log: &[(u64, u64)], limit: u64, burst: u64, period_ns: u64) -> i128 {
    let (l, p) = (limit as i128, period_ns as i128);
    let mut prefix = 0i128; // S_(j) · P
    let mut min_start = i128::MAX; // min over i <= j of S_(i-1)·P - L·t_i
    let mut worst = i128::MIN;
    for &(t, n) in log {
        min_start = min_start.min(prefix - l * t as i128);
        prefix += n as i128 * p;
        worst = worst.max(prefix - l * t as i128 - min_start - burst as i128 * p);
    }
    worst
}

/// Runs one phase for `run`, then checks both budgets against (the most permissive of) the
/// limits the phase used. With `waiters`, that many async tasks wait beside the threads (see
/// [`wait_loop`]), and the checker runs over every release instant. Returns (ops, requests
/// admitted, tokens admitted).
fn phase(run: Duration, set_limits: bool, waiters: usize, seed: u64) -> (u64, usize, u64) {
    let (rpm, tpm) = LIMITS[0];
    // With waiters, a request burst of 4 (0.2 ms): a request released later than its slot,
    // or a slot handed out twice, has next to no slack to hide in.
    let request_burst = |limit: u64| match waiters {
        0 => limit,
        _ => WAITING_REQUEST_BURST,
    };
    let l = Arc::new(
        TokenBucketLimiter::builder(rpm, tpm)
            .period(PERIOD)
            .request_burst(match waiters {
                0 => Burst::Period,
                _ => Burst::Units(WAITING_REQUEST_BURST),
            })
            .token_burst(Burst::Window(Duration::from_millis(20)))
            .clock(Traced(MonotonicClock::new()))
            .build()
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..THREADS as u64)
        .map(|i| {
            let (l, stop) = (l.clone(), stop.clone());
            std::thread::spawn(move || {
                hammer(&l, seed ^ ((i + 1) * 0x9e37_79b9), &stop, set_limits)
            })
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..waiters as u64)
        .map(|i| {
            let (l, stop) = (l.clone(), stop.clone());
            runtime.spawn(wait_loop(l, seed ^ ((i + 1) * 0x7f4a_7c15), stop))
        })
        .collect();
    let start = Instant::now();
    while start.elapsed() < run {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let mut logs: Vec<ThreadLog> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let waited: Vec<ThreadLog> = runtime.block_on(async {
        let mut logs = Vec::new();
        for t in tasks {
            logs.push(t.await.unwrap());
        }
        logs
    });
    let released: usize = waited.iter().map(|g| g.requests.len()).sum();
    logs.extend(waited);
    let ops = logs.iter().map(|g| g.ops).sum();
    let mut requests: Log = logs
        .iter()
        .flat_map(|g| g.requests.iter().copied())
        .collect();
    let mut tokens: Log = logs.iter().flat_map(|g| g.tokens.iter().copied()).collect();
    requests.sort_unstable();
    tokens.sort_unstable();
    // The most permissive limits in force: all the phase used (only the first without
    // set_limit, where the bound is exact). Bursts: requests a full period (4 with waiters),
    // tokens 20 ms.
    let used: &[(u64, u64)] = if set_limits { &LIMITS } else { &LIMITS[..1] };
    let max_r = used.iter().map(|l| l.0).max().unwrap();
    let max_t = used.iter().map(|l| l.1).max().unwrap();
    let p = PERIOD.as_nanos() as u64;
    let r_excess = worst_window(&requests, max_r, request_burst(max_r), p);
    let t_excess = worst_window(&tokens, max_t, max_t / 5, p);
    let what = format!("set_limit: {set_limits}, waiters: {waiters}, {released} released");
    // Positive: over the bound by that many units.
    let (r_over, t_over) = (r_excess as f64 / p as f64, t_excess as f64 / p as f64);
    assert!(
        r_excess <= 0 && t_excess <= 0,
        "over the bound: requests by {r_over} units, tokens by {t_over} units ({what})"
    );
    eprintln!(
        "tightest window: requests {:.3} units, tokens {:.3} units below the bound ({what})",
        -(r_excess as f64) / p as f64,
        -(t_excess as f64) / p as f64
    );
    // The limiter was saturated, not idle: the check is not vacuous. (With waiters the
    // tokens bind: a waiter held up by tokens holds its request slot at its release instant,
    // which closes the small request burst to request-only callers until then.)
    let run_periods = run.as_nanos() as u64 / p;
    let token_sum: u64 = tokens.iter().map(|t| t.1).sum();
    assert!(
        requests.len() as u64 > rpm.min(LIMITS[1].0) * run_periods / 4
            || token_sum > LIMITS[0].1.min(LIMITS[2].1) * run_periods / 4,
        "{} requests, {token_sum} tokens ({what})",
        requests.len()
    );
    // And the waiters did wait: enough of them were released to matter.
    assert!(
        waiters == 0 || released as u64 > run_periods * 10,
        "only {released} waiters released"
    );
    (ops, requests.len(), tokens.iter().map(|t| t.1).sum())
}

// ---- Waiters: async callers on a multi-thread runtime, logged at their release instants. ----

tokio::task_local! {
    /// The deadline the current waiter went to sleep until, as its clock was asked for it.
    static DEADLINE: Cell<Option<u64>>;
}

/// `MonotonicClock`, noting in [`DEADLINE`] each deadline a waiter sleeps until: `acquire`,
/// `acquire_within` and `acquire_until` return a permit but not its deadline, and a waiter
/// is admitted at its deadline, not at the (later) moment its task runs again.
#[derive(Clone, Copy, Debug)]
struct Traced(MonotonicClock);

impl Clock for Traced {
    fn now(&self) -> u64 {
        self.0.now()
    }

    fn instant_at(&self, ns: u64) -> std::time::Instant {
        let _ = DEADLINE.try_with(|d| d.set(Some(ns)));
        self.0.instant_at(ns)
    }

    fn skew_ns(&self) -> u64 {
        self.0.skew_ns()
    }
}

/// Runs `wait` and returns its result with the deadline it slept until, if it slept. A
/// waiter that did not sleep was due somewhere between its claim and its return, which the
/// checker cannot place exactly; it is left out of the log, which only weakens the check
/// (immediate admissions are covered exactly by the threads and by `claim`).
async fn traced<T>(wait: impl Future<Output = T>) -> (T, Option<u64>) {
    DEADLINE
        .scope(Cell::new(None), async {
            let out = wait.await;
            (out, DEADLINE.with(Cell::get))
        })
        .await
}

/// A waiting caller until `stop`: in turn `claim` (deadline from the reservation),
/// `acquire`, `acquire_within` and `acquire_until` (deadline as traced), each often given up
/// before its deadline (a timeout, a cancel future, a claim dropped at once), for 1 to 2,000
/// tokens, so that the token budget holds some waiters up longer than their request would.
/// A released waiter logs its deadline and settles at once for a random actual count.
async fn wait_loop(l: Arc<Limiter>, seed: u64, stop: Arc<AtomicBool>) -> ThreadLog {
    let mut rng = Rng(seed | 1);
    let mut log = ThreadLog {
        requests: Vec::new(),
        tokens: Vec::new(),
        ops: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        log.ops += 1;
        let n = 1 + rng.below(2_000);
        // Up to 4 ms (the wait of a claim queued behind a few others) for the forms that
        // refuse a wait that long before reserving anything; up to 100 ms (a few times the
        // longest queue 16 waiters make) for the forms that reserve and then give up. A slot
        // given back with others waiting behind it is freed only as far as their slack allows,
        // so waiters that mostly give up before their deadlines run the queue ahead of time:
        // bounded waits are how a caller avoids that.
        let patience = Duration::from_micros(rng.below(4_000));
        let given_up_after = Duration::from_micros(rng.below(100_000));
        let released: Option<(Permit, u64)> = match rng.below(5) {
            0 => {
                let r = l.reserve(n).expect("within the token burst");
                let due = r.ready_at_ns();
                // Dropped at once (before its deadline, mostly), or given up after a while.
                match rng.below(4) {
                    0 => None,
                    _ => tokio::time::timeout(given_up_after, r.ready())
                        .await
                        .ok()
                        .map(|p| (p, due)),
                }
            }
            1 => match traced(tokio::time::timeout(given_up_after, l.acquire(n))).await {
                (Ok(Ok(p)), Some(due)) => Some((p, due)),
                _ => None,
            },
            2 => match traced(l.acquire_within(n, patience)).await {
                (Ok(p), Some(due)) => Some((p, due)),
                (Ok(_) | Err(Error::RateLimitExceeded(_)), _) => None,
                (Err(e), _) => panic!("acquire_within: {e}"),
            },
            3 => match traced(l.acquire_until(n, tokio::time::sleep(given_up_after))).await {
                (Ok(p), Some(due)) => Some((p, due)),
                (Ok(_) | Err(Error::Cancelled), _) => None,
                (Err(e), _) => panic!("acquire_until: {e}"),
            },
            _ => {
                // A bounded claim, cancelled explicitly before its deadline half the time.
                let now = l.clock().now();
                let by = now + patience.as_nanos() as u64;
                match l.reserve_at(now, n, by) {
                    Ok(r) if rng.below(2) == 0 => {
                        r.cancel();
                        None
                    }
                    Ok(r) => {
                        let due = r.ready_at_ns();
                        Some((r.ready().await, due))
                    }
                    Err(_) => None,
                }
            }
        };
        if let Some((p, due)) = released {
            let actual = rng.below(2 * p.tokens() + 1);
            log.requests.push((due, 1));
            log.tokens.push((due, actual.min(p.tokens())));
            settle(&l, l.clock().now(), p, actual);
        }
    }
    log
}

#[test]
fn no_window_admits_more_than_burst_plus_rate() {
    let (ops, r, t) = phase(Duration::from_millis(1200), false, 0, 0x5eed);
    eprintln!("fixed limits: {ops} ops, {r} requests, {t} tokens admitted");
}

/// With `set_limit` beside admissions (2% of operations, limits cycling among three sets),
/// checked against the most permissive of the three. This found a real bug: a change
/// carried used units over at its caller's reading, which could be older than admissions
/// already in the bucket (the caller waited for the lock, or was descheduled); the stretch
/// between was refilled a second time, at the new rate, and the request budget went over the
/// bound by 6 to 77 units in about 1 run of 20. Changes now read the clock after loading the
/// state they convert (`tests/limiter.rs::a_limit_change_with_a_stale_reading_*`). Half the
/// changes now pass a reading a few milliseconds old, which made the old code fail 7 runs in
/// 10, by up to several hundred units.
#[test]
fn no_window_admits_more_than_burst_plus_rate_with_set_limit() {
    let (ops, r, t) = phase(Duration::from_millis(1200), true, 0, 0xfeed);
    eprintln!("with set_limit: {ops} ops, {r} requests, {t} tokens admitted");
}

/// With waiters: 16 async tasks on a 2-worker tokio runtime (`claim`, `acquire`,
/// `acquire_within`, `acquire_until`, most given up before their deadlines) beside the
/// threads, checked over release instants: a waiter counts at its deadline, a given-up one
/// not at all.
#[test]
fn no_window_of_release_instants_exceeds_burst_plus_rate_with_waiters() {
    let (ops, r, t) = phase(Duration::from_millis(1200), false, 16, 0x3a17);
    eprintln!("with waiters: {ops} ops, {r} requests, {t} tokens admitted");
}

#[test]
#[ignore = "soak: ~30 s (25 phases); run with --ignored"]
fn soak_no_window_admits_more_than_burst_plus_rate() {
    for round in 0..25u64 {
        phase(
            Duration::from_millis(1200),
            round % 2 == 1,
            0,
            round.wrapping_mul(0x1234_5677),
        );
    }
}

/// The checker itself must catch an over-admission, or the test above proves nothing.
#[test]
fn checker_catches_an_over_admission() {
    let p = 1_000;
    // 10 per 1000 ns, burst 10: 10 at t=0 fits, an 11th anywhere before t=100 does not.
    let ok: Log = (0..10).map(|_| (0, 1)).chain([(100, 1)]).collect();
    assert!(worst_window(&ok, 10, 10, p) <= 0);
    let bad: Log = (0..10).map(|_| (0, 1)).chain([(99, 1)]).collect();
    assert!(worst_window(&bad, 10, 10, p) > 0);
    // A window in the middle of a long log.
    let mut long: Log = (0..100).map(|i| (i * 100, 1)).collect();
    long.insert(50, (5_000, 11));
    long.sort_unstable();
    assert!(worst_window(&long, 10, 10, p) > 0);
}
