//! The waiting path, checked where callers meet the guarantee: at the instants they are
//! released.
//!
//! A caller is admitted at the instant it is released: `allow_at(now)` and
//! `try_acquire_at(now, ..)` at the reading `now`; a waiter (`claim_at` + `Reservation`) at its
//! deadline `ready_at_ns()`, unless it is cancelled first; `acquire_until` that returns `Ok`
//! at its deadline. A cancelled claim admits nothing. A settled permit counts what it settled
//! for (`min(actual, estimate)`): a charge beyond the estimate is consumption, not an
//! admission. The promise: no window `[a, b]` of release instants holds more than
//! `burst + limit × (b − a) / period` units.
//!
//! Each test below is one way the waiting path broke that promise, reproduced on a manual
//! clock; the window checker at the bottom shares no code with the crate.

use ratekeeper::{Burst, Error, ManualClock, Permit, Reservation, TokenBucketLimiter};
use std::sync::Arc;
use std::time::Duration;

/// One second in nanoseconds.
const S: u64 = 1_000_000_000;
/// One minute in nanoseconds: the period of every limiter here.
const MINUTE: u64 = 60 * S;

type Limiter = TokenBucketLimiter<Arc<ManualClock>>;

// ---- The crate's API, one helper per touchpoint (the core's API is about to change). ----

/// `rpm` requests and `tpm` tokens per minute (0: unlimited), with these bursts, on a manual
/// clock reading `start`.
fn limiter(rpm: u64, tpm: u64, requests: Burst, tokens: Burst, start: u64) -> Limiter {
    TokenBucketLimiter::builder(rpm, tpm)
        .request_burst(requests)
        .token_burst(tokens)
        .clock(Arc::new(ManualClock::new(start)))
        .build()
        .expect("valid configuration")
}

/// A claim at `now` for `tokens`, whenever it conforms.
fn claim(l: &Limiter, now: u64, tokens: u64) -> Reservation<'_, Arc<ManualClock>> {
    l.reserve_at(now, tokens, u64::MAX)
        .expect("an unbounded claim within the burst is granted")
}

/// An immediate admission at `now`, if the limiter grants one.
fn acquire(l: &Limiter, now: u64, tokens: u64) -> Option<Permit> {
    l.try_acquire_at(now, tokens).ok()
}

/// Settles `permit` on `l` at `now` for `actual` tokens.
fn settle(l: &Limiter, now: u64, permit: Permit, actual: u64) -> Result<(), Error> {
    l.settle_at(now, permit, actual)
}

/// Tokens in use at `now`.
fn tokens_used(l: &Limiter, now: u64) -> u64 {
    l.usage_at(now).tokens().map_or(0, |b| b.used)
}

// ---- The reproductions. ----

/// Requests 60/min with a burst of one: X, A, B, C claimed at 0 are due at 0, 1, 2 and 3 s.
/// A is cancelled at 0.5 s, then D claims. D may not share an instant with C: that puts two
/// requests at one instant with a burst of one (three in [2 s, 3 s], bound 2).
#[test]
fn a_cancelled_waiter_does_not_double_book_the_queue() {
    let l = limiter(60, 0, Burst::Units(1), Burst::Period, 0);
    let x = claim(&l, 0, 0);
    let a = claim(&l, 0, 0);
    let b = claim(&l, 0, 0);
    let c = claim(&l, 0, 0);
    // Due one second apart (a rate that is not binary-exact rounds each a few ns late).
    for (i, r) in [&x, &a, &b, &c].into_iter().enumerate() {
        let (due, at) = (r.ready_at_ns(), i as u64 * S);
        assert!((at..at + 1_000).contains(&due), "claim {i} due at {due} ns");
    }
    l.clock().set(S / 2);
    a.cancel_at(S / 2);
    let d = claim(&l, S / 2, 0);
    let released = [&x, &b, &c, &d].map(|r| (r.ready_at_ns(), 1));
    assert!(
        d.ready_at_ns() > c.ready_at_ns(),
        "D is due at {} ns, no later than C ({} ns), claimed before it",
        d.ready_at_ns(),
        c.ready_at_ns()
    );
    assert_within(&released, Bound::new(60, 1), "requests");
}

/// The same at scale: 100 claims at 0 (due every second), every other one cancelled at 1 s,
/// then 50 new claims at 1 s. The survivors and the newcomers together must still fit every
/// window.
#[test]
fn cancelling_half_a_queue_keeps_every_window_within_the_bound() {
    let l = limiter(60, 0, Burst::Units(1), Burst::Period, 0);
    let queue: Vec<_> = (0..100).map(|_| claim(&l, 0, 0)).collect();
    l.clock().set(S);
    let mut waiting = Vec::new();
    for (i, r) in queue.into_iter().enumerate() {
        if i % 2 == 1 {
            r.cancel_at(S);
        } else {
            waiting.push(r);
        }
    }
    waiting.extend((0..50).map(|_| claim(&l, S, 0)));
    let released: Vec<_> = waiting.iter().map(|r| (r.ready_at_ns(), 1)).collect();
    assert_within(&released, Bound::new(60, 1), "requests");
}

/// Requests 60/min with a one-second burst, tokens 6,000/min with a burst of 200: twenty
/// claims of 200 tokens at 0 are held up by their tokens (one every 2 s) while another caller
/// calls `allow_at` every 10 ms for a minute. A waiter's request counts when it is released,
/// so the allows must leave room for it then.
#[test]
fn a_waiter_held_up_by_tokens_takes_its_request_slot_when_released() {
    let l = limiter(
        60,
        6_000,
        Burst::Window(Duration::from_secs(1)),
        Burst::Units(200),
        0,
    );
    let waiters: Vec<_> = (0..20).map(|_| claim(&l, 0, 200)).collect();
    let mut requests: Vec<(u64, u64)> = waiters.iter().map(|r| (r.ready_at_ns(), 1)).collect();
    let tokens: Vec<(u64, u64)> = waiters.iter().map(|r| (r.ready_at_ns(), 200)).collect();
    for now in (0..=MINUTE).step_by(10_000_000) {
        l.clock().set(now);
        if l.allow_at(now) {
            requests.push((now, 1));
        }
    }
    let permits: Vec<Permit> = waiters.into_iter().map(Reservation::into_permit).collect();
    assert_within(&tokens, Bound::new(6_000, 200), "tokens");
    assert_within(&requests, Bound::new(60, 1), "requests");
    drop(permits);
}

/// Two limiters built alike (tokens 10,000/min, burst 10,000). A permit from `a` settled on
/// `b` must not refund `b`: after `b` has admitted its whole burst at `t`, it may admit
/// nothing more at `t`.
#[test]
fn a_permit_settled_on_another_limiter_refunds_nothing() {
    let t = S;
    let a = limiter(0, 10_000, Burst::Period, Burst::Period, t);
    let b = limiter(0, 10_000, Burst::Period, Burst::Period, t);
    let pa = acquire(&a, t, 10_000).expect("a is full");
    let mut released = vec![(t, acquire(&b, t, 10_000).expect("b is full").tokens())];
    let before = tokens_used(&b, t);
    assert_eq!(settle(&b, t, pa, 0), Err(Error::ForeignPermit));
    let after = tokens_used(&b, t);
    for n in [10_000, 1_000, 100, 10, 1] {
        while let Some(p) = acquire(&b, t, n) {
            released.push((t, p.tokens()));
        }
    }
    assert_within(&released, Bound::new(10_000, 10_000), "b's tokens");
    assert_eq!(after, before, "a foreign permit changed b's usage");
}

/// Tokens 6,000/min with the clock at 1 s: `y` takes the whole burst at 1 s, another call
/// the whole burst at a reading 100 s ahead of the clock; `y` is then settled for nothing at
/// 1 s. A refund at a reading older than one the limiter already admitted at must not
/// reopen the bucket at that later reading.
#[test]
fn a_reading_ahead_of_the_clock_buys_no_refund() {
    let l = limiter(0, 6_000, Burst::Period, Burst::Period, S);
    let y = acquire(&l, S, 6_000).expect("full at 1 s");
    // `y` is settled for nothing below: it counts nothing.
    let mut released = vec![(S, 0)];
    let ahead = acquire(&l, 100 * S, 6_000).expect("full again at 100 s");
    released.push((100 * S, ahead.tokens()));
    settle(&l, S, y, 0).unwrap();
    let later = 100 * S + 1_000;
    if let Some(p) = acquire(&l, later, 6_000) {
        released.push((later, p.tokens()));
    }
    assert_within(&released, Bound::new(6_000, 6_000), "tokens");
}

/// `acquire_until` with a cancel future that is already complete ends with `Cancelled`
/// (its doc: "ends early with `Error::Cancelled` when `cancel` completes first") and spends
/// nothing.
#[tokio::test]
async fn an_already_complete_cancel_wins_and_spends_nothing() {
    let l = limiter(60, 1_000, Burst::Period, Burst::Period, 0);
    let before = tokens_used(&l, 0);
    let got = l.acquire_until(1, std::future::ready(())).await;
    let spent = tokens_used(&l, 0) - before;
    assert_eq!(
        (got.err(), spent),
        (Some(Error::Cancelled), 0),
        "the cancel was complete first: (outcome, tokens spent)"
    );
}

// ---- The independent window checker: exact integers, no crate code. ----

/// `burst + limit × window / MINUTE` units in any window.
#[derive(Clone, Copy, Debug)]
struct Bound {
    limit: u64,
    burst: u64,
}

impl Bound {
    fn new(limit: u64, burst: u64) -> Bound {
        Bound { limit, burst }
    }
}

/// The window of release instants that goes furthest over the bound.
#[derive(Debug, PartialEq, Eq)]
struct Excess {
    from: u64,
    to: u64,
    units: u64,
    /// The bound for `[from, to]`, rounded down to whole units.
    bound: u64,
}

/// The worst window `[a, b]` (a and b release instants) holding more than
/// `burst + limit × (b − a) / MINUTE` units, if any: the largest excess, the shortest such
/// window among equals. Scaled by the period the comparison is
/// exact: `units × P > burst × P + limit × (b − a)`.
fn worst_window(releases: &[(u64, u64)], bound: Bound) -> Option<Excess> {
    let mut by_instant: Vec<(u64, u128)> = Vec::new();
    let mut sorted = releases.to_vec();
    sorted.sort_unstable();
    for (t, n) in sorted {
        match by_instant.last_mut() {
            Some((last, sum)) if *last == t => *sum += n as u128,
            _ => by_instant.push((t, n as u128)),
        }
    }
    let p = MINUTE as u128;
    // The largest excess wins; among equal excesses, the shortest window.
    let mut worst: Option<(u128, Excess)> = None;
    for (i, &(a, _)) in by_instant.iter().enumerate() {
        let mut units = 0u128;
        for &(b, n) in &by_instant[i..] {
            units += n;
            let allowed = bound.burst as u128 * p + bound.limit as u128 * (b - a) as u128;
            let over = units * p > allowed
                && worst.as_ref().map_or(true, |(x, w)| {
                    let x2 = units * p - allowed;
                    x2 > *x || (x2 == *x && b - a < w.to - w.from)
                });
            if over {
                let excess = Excess {
                    from: a,
                    to: b,
                    units: units as u64,
                    bound: (allowed / p) as u64,
                };
                worst = Some((units * p - allowed, excess));
            }
        }
    }
    worst.map(|w| w.1)
}

/// Fails with the worst window when any window of `releases` exceeds `bound`.
fn assert_within(releases: &[(u64, u64)], bound: Bound, what: &str) {
    if let Some(e) = worst_window(releases, bound) {
        panic!(
            "{what}: {} released in [{} ns, {} ns] ({:.6} s), bound {}",
            e.units,
            e.from,
            e.to,
            (e.to - e.from) as f64 / S as f64,
            e.bound
        );
    }
}

/// The checker must catch what it is meant to catch, or the tests above prove nothing.
#[test]
fn the_checker_finds_the_worst_window_and_accepts_an_exact_schedule() {
    let one_per_second = Bound::new(60, 1);
    // One per second from 0, and a burst of one: exactly the bound.
    let exact: Vec<_> = (0..10).map(|i| (i * S, 1)).collect();
    assert_eq!(worst_window(&exact, one_per_second), None);
    // A second release at 3 s: two at one instant.
    let mut twice = exact.clone();
    twice.push((3 * S, 1));
    let e = worst_window(&twice, one_per_second).expect("two at 3 s");
    assert_eq!((e.units, e.bound), (2, 1));
    assert_eq!((e.from, e.to), (3 * S, 3 * S));
    // One nanosecond early is already over (exact arithmetic, no rounding in its favour).
    let mut early = exact;
    early[5].0 -= 1;
    let e = worst_window(&early, one_per_second).expect("one ns early");
    assert_eq!((e.units, e.bound, e.to - e.from), (2, 1, S - 1));
    // Releases given out of order are sorted first.
    assert_eq!(
        worst_window(&[(2 * S, 1), (0, 1), (S, 1)], one_per_second),
        None
    );
}
