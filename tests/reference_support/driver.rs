//! Drives the real limiter and the model with the same operations, checking each decision
//! against exact GCRA as it goes, and collects what callers were released at for the checks
//! in `bounds.rs`.

use super::bounds::{assert_window_bound, Release};
use super::exact::{Event, Kind, Model, Spec};
use ratekeeper::{BudgetUsage, Cost, Error, ManualClock, Permit, Reservation, TokenBucketLimiter};
use std::sync::Arc;
use std::time::Duration;

/// The largest TAT the limiter's state word holds (58 bits of quanta, documented in
/// `src/gcra.rs`): beyond it the real bucket saturates closed while the model counts on.
const MAX_UNITS: u64 = (1 << 58) - 1;

/// One random operation; times are absolute nanoseconds.
#[derive(Clone, Debug)]
pub enum Op {
    Allow,
    Acquire(Cost),
    /// Settle the permit at this index (mod the number held) for this cost.
    Settle(usize, Cost),
    /// Charge this many requests and this cost outside any permit.
    Charge(u64, Cost),
    /// `set_limit(rpm, tpm)`: the first request and the first total-tokens budget.
    SetLimit(u64, u64),
    /// `set_limits` with a new count for each budget given (`None`: left as it is).
    SetLimits(Vec<Option<u64>>),
    Usage,
    /// Claim one request of this cost, to conform within this many ns of the reading
    /// (`None`: whenever).
    Claim(Cost, Option<u64>),
    /// Cancel the waiter at this index (mod the number waiting): before or after its deadline.
    Cancel(usize),
    /// The waiter at this index is released at its deadline (it is not cancelled); its permit
    /// joins the held ones, to be settled like any other, before or after that deadline.
    Release(usize),
    /// A permit for this cost from a second limiter built alike (`true`: through a claim), to
    /// be settled on the first.
    ForeignAcquire(Cost, bool),
    /// Settle the foreign permit at this index on the limiter under test.
    SettleForeign(usize, Cost),
}

/// The limiter type under test: a manual clock, moved by the driver.
type Limiter = TokenBucketLimiter<Arc<ManualClock>>;

/// A limiter deciding `specs` with these counts, on `clock`.
fn build(specs: &[Spec], counts: &[u64], clock: &Arc<ManualClock>) -> Limiter {
    TokenBucketLimiter::with_limits(specs.iter().zip(counts).map(|(s, &c)| s.limit(c)))
        .clock(clock.clone())
        .build()
        .expect("valid configuration")
}

/// Each budget's usage report at `now` (`None`: unlimited, so not reported), matched by kind
/// and window.
fn usage(l: &Limiter, specs: &[Spec], now: u64) -> Vec<Option<BudgetUsage>> {
    let u = l.usage_at(now);
    specs
        .iter()
        .map(|s| {
            u.budgets()
                .find(|b| b.budget == s.kind && b.window == Duration::from_nanos(s.period))
                .copied()
        })
        .collect()
}

/// A waiter: its reservation, and per budget the index of its claim in the model's log and
/// of its release.
struct Waiter<'a> {
    reservation: Reservation<'a, Arc<ManualClock>>,
    log: Vec<usize>,
    released: Vec<usize>,
}

/// A permit held, with per budget the index of its take in the model's log and of its
/// release.
struct Held {
    permit: Permit,
    log: Vec<usize>,
    released: Vec<usize>,
}

/// What a run returned, for the release-instant check.
pub struct Run {
    pub released: Vec<Release>,
    /// Every budget's count under each limits version, in order: the initial counts, then one
    /// entry per change.
    pub history: Vec<Vec<u64>>,
}

/// The reading `op` is passed: its own, except that a decision (an allow, an acquire, a
/// claim) is never made at a reading older than the instant the last limit change took
/// effect. The crate judges such a reading by the new limits' state extrapolated back at the
/// new rate, which after a change to a slower rate sees room the old limits had not refilled
/// by then, and the window of release instants goes over
/// (`a_reading_older_than_a_limit_change_is_not_judged_by_the_new_rate`, ignored until the
/// core decides it). A caller that read the clock before a change and reaches the limiter
/// after it is released after it: deciding it at the change's instant is that caller.
fn decided_at(op: &Op, at: u64, changed_at: u64) -> u64 {
    match op {
        Op::Allow | Op::Acquire(_) | Op::Claim(..) => at.max(changed_at),
        _ => at,
    }
}

/// Runs `ops` (each at its own reading) on the real limiter and the model. `exact`: require
/// identical decisions and usage; otherwise, never more permissive. `leads[i]` (0 when
/// absent): how far op `i`'s reading runs ahead of the limiter's clock, which follows the
/// readings less their leads and never goes back.
pub fn check(specs: &[Spec], counts: &[u64], ops: &[(u64, Op)], leads: &[u64], exact: bool) -> Run {
    let clock = Arc::new(ManualClock::new(0));
    let real = build(specs, counts, &clock);
    // Permits from here, settled on `real`, must never refund it.
    let foreign = build(specs, counts, &clock);
    let mut model = Model {
        specs: specs.to_vec(),
        initial: counts.to_vec(),
        log: Vec::new(),
    };
    let mut history = vec![counts.to_vec()];
    let mut held: Vec<Held> = Vec::new();
    let mut waiting: Vec<Waiter> = Vec::new();
    let mut foreign_held: Vec<Permit> = Vec::new();
    let mut released: Vec<Release> = Vec::new();
    let mut clock_at = 0;
    // The latest reading any `*_at` call on `real` was given: a limit change takes effect no
    // earlier (documented on `set_limits_at`).
    let mut readings = 0;
    // When the last limit change took effect (see `decided_at`).
    let mut changed_at = 0;
    for (i, (at, op)) in ops.iter().enumerate() {
        let at = decided_at(op, *at, changed_at);
        // The limiter's own clock stays monotonic (refunds read it); the readings passed to
        // the `_at` forms may go backwards, or run ahead of it.
        clock_at = clock_at.max(at.saturating_sub(leads.get(i).copied().unwrap_or(0)));
        clock.set(clock_at);
        // Every call on `real` with a reading notes it; reports, releases (no call) and the
        // second limiter do not.
        let noted = match op {
            Op::Usage | Op::Release(_) | Op::ForeignAcquire(..) => false,
            Op::Settle(..) => !held.is_empty(),
            Op::Cancel(_) => !waiting.is_empty(),
            Op::SettleForeign(..) => !foreign_held.is_empty(),
            _ => true,
        };
        if noted {
            readings = readings.max(at);
        }
        let state = model.state();
        let version = history.len() - 1;
        let ctx = || format!("op {i} at {at} (clock {clock_at}): {op:?}; model {state:?}");
        let take = |budget, n, kind| Event::Take {
            budget,
            at,
            n,
            kind,
        };
        match op {
            Op::Allow => {
                let got = real.allow_at(at);
                // Request budgets only: the others are not consulted.
                let want = specs
                    .iter()
                    .zip(&state)
                    .all(|(s, e)| s.units(1, Cost::ZERO) == 0 || e.conforms(at, 1));
                assert!(
                    !got || want,
                    "allow more permissive than exact GCRA: {}",
                    ctx()
                );
                if exact {
                    assert_eq!(got, want, "allow: {}", ctx());
                }
                if got {
                    for (b, s) in specs.iter().enumerate() {
                        if s.units(1, Cost::ZERO) > 0 {
                            model.log.push(take(b, 1, Kind::Admission));
                            released.push(Release {
                                budget: b,
                                at,
                                n: 1,
                                version,
                            });
                        }
                    }
                }
            }
            &Op::Acquire(cost) => {
                let got = real.try_acquire_at(at, cost);
                let units: Vec<u64> = specs.iter().map(|s| s.units(1, cost)).collect();
                let want = state.iter().zip(&units).all(|(e, &n)| e.conforms(at, n));
                let capacity = state
                    .iter()
                    .zip(&units)
                    .any(|(e, &n)| e.limit != 0 && n > e.burst);
                match &got {
                    Ok(_) => assert!(want, "acquire more permissive: {}", ctx()),
                    // Beyond a budget's burst: never, so refused at once.
                    _ if capacity => assert!(
                        matches!(got, Err(Error::InsufficientCapacity { .. })),
                        "a wait can never cover {cost:?}: {}",
                        ctx()
                    ),
                    // Any refusal is safe; at exact rates it must also be the model's.
                    Err(Error::RateLimitExceeded(_)) | Err(Error::InsufficientCapacity { .. }) => {
                        assert!(!exact || !want, "acquire refused: {got:?}: {}", ctx())
                    }
                    Err(e) => panic!("unexpected {e:?}: {}", ctx()),
                }
                if let Ok(permit) = got {
                    let (mut log, mut rel) = (Vec::new(), Vec::new());
                    for (b, &n) in units.iter().enumerate() {
                        model.log.push(take(b, n, Kind::Admission));
                        released.push(Release {
                            budget: b,
                            at,
                            n,
                            version,
                        });
                        log.push(model.log.len() - 1);
                        rel.push(released.len() - 1);
                    }
                    held.push(Held {
                        permit,
                        log,
                        released: rel,
                    });
                }
            }
            &Op::Settle(k, actual) if !held.is_empty() => {
                let h = held.swap_remove(k % held.len());
                let estimate = h.permit.cost();
                real.settle_at(at, h.permit, actual)
                    .expect("the limiter's own permit");
                for (b, s) in specs.iter().enumerate() {
                    let (est, used) = (s.units(1, estimate), s.units(1, actual));
                    // A settled permit counts what it settled for; a charge beyond the
                    // estimate is consumption, not an admission.
                    released[h.released[b]].n = used.min(est);
                    if used > est {
                        model.log.push(take(b, used - est, Kind::Charge));
                    } else if let Event::Take { n, .. } = &mut model.log[h.log[b]] {
                        // The history without the withdrawn units.
                        *n = used;
                    }
                }
            }
            Op::Settle(..) => {}
            &Op::Charge(requests, cost) => {
                real.charge_at(at, requests, cost);
                for (b, s) in specs.iter().enumerate() {
                    model
                        .log
                        .push(take(b, s.units(requests, cost), Kind::Charge));
                }
            }
            Op::SetLimit(..) | Op::SetLimits(_) => {
                let current = history.last().unwrap().clone();
                let next: Vec<u64> = match op {
                    &Op::SetLimit(rpm, tpm) => {
                        real.set_limit_at(at, rpm, tpm).expect("both budgets exist");
                        // The first budget of each kind.
                        let first = |k| specs.iter().position(|s| s.kind == k);
                        let (r, t) = (
                            first(ratekeeper::Budget::Requests),
                            first(ratekeeper::Budget::Tokens),
                        );
                        (0..specs.len())
                            .map(|b| match b {
                                _ if Some(b) == r => rpm,
                                _ if Some(b) == t => tpm,
                                _ => current[b],
                            })
                            .collect()
                    }
                    Op::SetLimits(new) => {
                        let limits: Vec<_> = specs
                            .iter()
                            .zip(new)
                            .filter_map(|(s, c)| c.map(|c| s.limit(c)))
                            .collect();
                        real.set_limits_at(at, &limits)
                            .expect("every budget exists");
                        current
                            .iter()
                            .zip(new)
                            .map(|(&c, n)| n.unwrap_or(c))
                            .collect()
                    }
                    _ => unreachable!(),
                };
                // The limits already in force again change nothing (documented: a no-op).
                if next != current {
                    // A change takes effect no earlier than the clock and every reading seen
                    // (as a refund reads them): an older reading would refill again what
                    // admissions already made had used.
                    let at = at.max(clock_at).max(readings);
                    changed_at = changed_at.max(at);
                    model.log.push(Event::Limits {
                        at,
                        counts: next.clone(),
                    });
                    history.push(next);
                }
            }
            Op::Usage => {
                let got = usage(&real, specs, at);
                for (b, (g, e)) in got.iter().zip(&state).enumerate() {
                    let ctx = || format!("budget {b}: usage {g:?}: {}", ctx());
                    let Some(g) = g else {
                        assert_eq!(e.limit, 0, "a limited budget not reported: {}", ctx());
                        continue;
                    };
                    assert_eq!(g.limit, e.limit, "{}", ctx());
                    let want = e.remaining(at);
                    assert!(g.remaining <= want, "usage more permissive: {}", ctx());
                    if exact {
                        assert_eq!(g.remaining, want, "{}", ctx());
                        // The real TAT saturates at MAX_UNITS (and then denies everything);
                        // the model's does not, so used counts compare only below saturation.
                        if e.tat_p / (e.period as u128) < MAX_UNITS as u128 {
                            let used = (e.used_p(at) / e.period as u128) as u64;
                            assert_eq!(g.used, used, "{}", ctx());
                        }
                    }
                }
            }
            &Op::Claim(cost, within) => {
                let by = within.map_or(u64::MAX, |w| at.saturating_add(w));
                let units: Vec<u64> = specs.iter().map(|s| s.units(1, cost)).collect();
                match real.reserve_at(at, cost, by) {
                    Ok(reservation) => {
                        let due = reservation.ready_at_ns();
                        // Never due before exact GCRA would let every budget's claim conform.
                        let earliest = state
                            .iter()
                            .zip(&units)
                            .map(|(e, &n)| {
                                let mut e = *e;
                                e.take(at, n);
                                e.ready()
                            })
                            .fold(at as u128, u128::max);
                        assert!(
                            due as u128 >= earliest,
                            "claim due at {due}, before exact GCRA's {earliest}: {}",
                            ctx()
                        );
                        let (mut log, mut rel) = (Vec::new(), Vec::new());
                        for (b, &n) in units.iter().enumerate() {
                            model.log.push(take(b, n, Kind::Claim));
                            released.push(Release {
                                budget: b,
                                at: due,
                                n,
                                version,
                            });
                            log.push(model.log.len() - 1);
                            rel.push(released.len() - 1);
                        }
                        waiting.push(Waiter {
                            reservation,
                            log,
                            released: rel,
                        });
                    }
                    // Any refusal is safe; beyond a budget's burst it must say so at once.
                    Err(e) => {
                        let capacity = state
                            .iter()
                            .zip(&units)
                            .any(|(x, &n)| x.limit != 0 && n > x.burst);
                        assert!(
                            !capacity || matches!(e, Error::InsufficientCapacity { .. }),
                            "claim of {cost:?} beyond a burst: {e:?}: {}",
                            ctx()
                        );
                    }
                }
            }
            &Op::Cancel(k) if !waiting.is_empty() => {
                let w = waiting.swap_remove(k % waiting.len());
                w.reservation.cancel_at(at);
                // A cancelled claim admits nothing; the model forgets it (the history without
                // the withdrawn units).
                for (log, rel) in w.log.into_iter().zip(w.released) {
                    released[rel].n = 0;
                    if let Event::Take { n, .. } = &mut model.log[log] {
                        *n = 0;
                    }
                }
            }
            Op::Cancel(..) => {}
            &Op::Release(k) if !waiting.is_empty() => {
                let w = waiting.swap_remove(k % waiting.len());
                held.push(Held {
                    permit: w.reservation.into_permit(),
                    log: w.log,
                    released: w.released,
                });
            }
            Op::Release(..) => {}
            &Op::ForeignAcquire(cost, claimed) => {
                let permit = if claimed {
                    foreign
                        .reserve_at(at, cost, u64::MAX)
                        .ok()
                        .map(Reservation::into_permit)
                } else {
                    foreign.try_acquire_at(at, cost).ok()
                };
                foreign_held.extend(permit);
            }
            &Op::SettleForeign(k, actual) if !foreign_held.is_empty() => {
                let permit = foreign_held.swap_remove(k % foreign_held.len());
                // Not this limiter's permit: refused, nothing given back, nothing to count.
                assert_eq!(
                    real.settle_at(at, permit, actual),
                    Err(Error::ForeignPermit),
                    "a foreign permit is refused"
                );
            }
            Op::SettleForeign(..) => {}
        }
    }
    assert_window_bound(&model);
    Run { released, history }
}
