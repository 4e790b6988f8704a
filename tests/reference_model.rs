//! A sequential reference model of the limiter's budgets, in exact integer arithmetic, driven
//! with the same random operations as the real limiter (`reference_support/`: the exact model,
//! the driver, the independent window checks).
//!
//! # The properties
//!
//! - General rates, periods, times (going backwards too), zero and huge limits, `u64::MAX`
//!   amounts: every real admission is one the model admits at that moment, and what `usage`
//!   reports as remaining never exceeds what the model holds.
//! - Binary-exact rates (`L/P = 2^-k` per ns) at times on the unit grid, no refunds: the real
//!   limiter decides exactly as the model does, and reports exactly its usage.
//! - The waiting path (claims, cancels before and after their deadlines, waiters released at
//!   their deadlines, settles of permits whose waiters are not due yet, permits settled on a
//!   second limiter built alike, readings that run ahead of the limiter's clock, limit
//!   changes with waiters pending): besides the above (a waiter is never due before exact
//!   GCRA would let its claim conform), every window of *release instants* fits the bound in
//!   every budget, across limit changes too (`reference_support/bounds.rs` states it). A
//!   caller is admitted when it is released: an immediate admission at its reading, a waiter
//!   at its deadline unless cancelled; a cancelled claim admits nothing, a settled permit
//!   counts what it settled for. That check takes the instants from what the calls returned,
//!   not from the model, whose log places a claim at its reading (where its units are taken).
//! - All of that with a budget set of three (requests + input + output tokens, total tokens +
//!   input + output, or requests + total tokens + requests over a second window), each budget
//!   with its own window, burst policy and limit changes, costs split into input and output.
//!
//! `PROPTEST_CASES` overrides every property's case count, for longer local runs.

mod reference_support;

use proptest::prelude::*;
use ratekeeper::{Budget, Burst, Cost, TokenBucketLimiter};
use reference_support::bounds::assert_release_bound;
use reference_support::driver::{check, Op};
use reference_support::exact::Spec;
use std::time::Duration;

/// The default budget pair: requests and total tokens, per one `period`.
fn pair(period: u64, bursts: (Burst, Burst)) -> Vec<Spec> {
    vec![
        Spec {
            kind: Budget::Requests,
            period,
            burst: bursts.0,
        },
        Spec {
            kind: Budget::Tokens,
            period,
            burst: bursts.1,
        },
    ]
}

/// Limits up to 64 units per ns of the budget's window (~3.8e12 per minute), past the 1e10 per
/// minute the crate promises to keep exact, and deep into coarse quanta of several units. Far
/// beyond (1e28 per minute with a burst of 1) the unit clock saturates within nanoseconds, so
/// a reading that goes back a few ns is no longer seen as earlier and `usage` reads more
/// permissive than exact GCRA with time reversed.
fn fine(limit: u64, period: u64) -> u64 {
    if limit == 0 {
        0
    } else {
        limit.min(period.saturating_mul(64))
    }
}

/// Times as a walk: mostly forward, sometimes backwards, sometimes a jump, scaled by `step`.
fn times(n: usize, step: u64) -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(
        prop_oneof![
            6 => (0u64..4).prop_map(|d| d as i64),
            2 => (1u64..4).prop_map(|d| -(d as i64)),
            1 => (0u64..200).prop_map(|d| d as i64),
        ],
        n,
    )
    .prop_map(move |deltas| {
        let mut t: u64 = 1 << 20;
        deltas
            .into_iter()
            .map(|d| {
                let s = (d.unsigned_abs()).saturating_mul(step);
                t = if d < 0 {
                    t.saturating_sub(s)
                } else {
                    t.saturating_add(s)
                };
                t
            })
            .collect()
    })
}

/// Two-budget operations. `amount`: tokens to acquire; `debt`: tokens to charge or settle for
/// (a debt beyond the TAT's range is capped, see `huge_debt_survives_a_limit_change`).
fn op(
    limit_s: BoxedStrategy<u64>,
    amount: BoxedStrategy<u64>,
    debt: BoxedStrategy<u64>,
    refunds: bool,
) -> impl Strategy<Value = Op> {
    let settle_amount = if refunds {
        debt.clone()
    } else {
        // Only settles at or above the estimate: charges, which are exact.
        debt.clone()
            .prop_map(|d| d.saturating_add(u32::MAX as u64))
            .boxed()
    };
    prop_oneof![
        4 => Just(Op::Allow),
        4 => amount.clone().prop_map(|n| Op::Acquire(n.into())),
        2 => (any::<usize>(), settle_amount).prop_map(|(k, a)| Op::Settle(k, a.into())),
        1 => debt.prop_map(|n| Op::Charge(0, n.into())),
        1 => (limit_s.clone(), limit_s).prop_map(|(r, t)| Op::SetLimit(r, t)),
        2 => Just(Op::Usage),
    ]
}

fn burst(limit_cap: u64) -> impl Strategy<Value = Burst> {
    prop_oneof![
        3 => Just(Burst::Period),
        1 => (1..=limit_cap.max(1)).prop_map(Burst::Units),
        1 => (1u64..1 << 22).prop_map(|w| Burst::Window(Duration::from_nanos(w))),
    ]
}

/// Binary-exact: period 2^20 ns, limits 2^j (one unit per 2^(20-j) ns) or 0. At most one
/// unit per 64 ns: faster rates count the TAT in quanta of several units (`Rate::fit`), which
/// is coarser by design and so not exact.
fn exact_limit() -> BoxedStrategy<u64> {
    prop_oneof![1 => Just(0u64), 6 => (0u32..=14).prop_map(|j| 1u64 << j)].boxed()
}

/// Charges and settled amounts: small, and up to 2^20. The TAT holds about 2^64 ns of refill
/// at the rate in force; a larger debt is capped and, after a change to a faster rate, drains
/// early (`huge_debt_survives_a_limit_change`). 48 charges of 2^20 stay below that cap even at
/// the slowest rate generated (1 per 120 s: ~1.5e8 units).
fn debts() -> BoxedStrategy<u64> {
    prop_oneof![8 => 0u64..2_000, 1 => 0u64..1 << 20].boxed()
}

fn general_limit() -> BoxedStrategy<u64> {
    prop_oneof![
        1 => Just(0u64),
        4 => 1u64..1_000,
        2 => 1u64..u64::MAX,
        1 => Just(u64::MAX),
    ]
    .boxed()
}

/// Periods: nanoseconds, up to two minutes, a minute exactly.
fn period() -> BoxedStrategy<u64> {
    prop_oneof![
        64u64..1_000,
        64u64..120_000_000_000,
        Just(60_000_000_000u64)
    ]
    .boxed()
}

/// `PROPTEST_CASES` when set (for longer local runs), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The waiting path's operations: immediate admissions, claims (some bounded by a wait of
/// `within × step`), cancels and releases of waiters, settles (of permits whose waiters may
/// not be due yet, too), permits from a second limiter settled on the first, charges, usage,
/// and limit changes (which find waiters pending, mostly). `cost`: what to acquire or claim;
/// `settled`: what to charge or settle for; `limits`: a limit change.
fn waiting_op(
    cost: BoxedStrategy<Cost>,
    settled: BoxedStrategy<Cost>,
    limits: BoxedStrategy<Op>,
) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Allow),
        3 => cost.clone().prop_map(Op::Acquire),
        5 => (cost.clone(), prop::option::weighted(0.25, 0u64..400))
            .prop_map(|(c, w)| Op::Claim(c, w)),
        2 => any::<usize>().prop_map(Op::Cancel),
        2 => any::<usize>().prop_map(Op::Release),
        2 => (any::<usize>(), settled.clone()).prop_map(|(k, c)| Op::Settle(k, c)),
        1 => (cost, any::<bool>()).prop_map(|(c, claimed)| Op::ForeignAcquire(c, claimed)),
        1 => (any::<usize>(), settled.clone()).prop_map(|(k, c)| Op::SettleForeign(k, c)),
        1 => (0u64..3, settled).prop_map(|(r, c)| Op::Charge(r, c)),
        1 => Just(Op::Usage),
        1 => limits,
    ]
}

/// What one acquire or claim asks for: mostly small, sometimes large, rarely anything.
fn amount() -> BoxedStrategy<u64> {
    prop_oneof![8 => 0u64..200, 2 => 0u64..2_000, 1 => any::<u64>()].boxed()
}

/// Readings that run ahead of the limiter's clock: most not, some by `200·step` or `400·step`.
fn leads(step: u64) -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(prop_oneof![6 => Just(0u64), 1 => 1u64..=2], 48)
        .prop_map(move |l| l.into_iter().map(|k| k * 200 * step).collect())
}

/// Pairs each op with its reading (`times` plus its lead); a bounded claim waits at most
/// `within × step`.
fn at_readings(ts: Vec<u64>, leads: &[u64], ops: Vec<Op>, step: u64) -> Vec<(u64, Op)> {
    ts.into_iter()
        .zip(leads)
        .zip(ops)
        .map(|((t, &lead), o)| match o {
            Op::Claim(c, w) => (t.saturating_add(lead), Op::Claim(c, w.map(|w| w * step))),
            o => (t.saturating_add(lead), o),
        })
        .collect()
}

/// A budget set of three, each budget with its own window and burst policy: requests, input
/// and output tokens (Anthropic's RPM, ITPM and OTPM); total, input and output tokens; or
/// requests, total tokens and requests over a second window (OpenAI's RPM, TPM and RPD: the
/// day is one of the windows drawn). Two budgets of one kind never share a window.
fn budget_set() -> impl Strategy<Value = Vec<Spec>> {
    let window = || {
        prop_oneof![
            3 => period(),
            1 => Just(86_400_000_000_000u64),
        ]
    };
    let kinds = prop_oneof![
        Just([Budget::Requests, Budget::InputTokens, Budget::OutputTokens]),
        Just([Budget::Tokens, Budget::InputTokens, Budget::OutputTokens]),
        Just([Budget::Requests, Budget::Tokens, Budget::Requests]),
    ];
    (
        kinds,
        (window(), window(), window()),
        (burst(1_000), burst(1_000), burst(1_000)),
    )
        .prop_map(|(kinds, (p0, p1, p2), (b0, b1, b2))| {
            let mut specs: Vec<Spec> = [(kinds[0], p0, b0), (kinds[1], p1, b1), (kinds[2], p2, b2)]
                .into_iter()
                .map(|(kind, period, burst)| Spec {
                    kind,
                    period,
                    burst,
                })
                .collect();
            if specs[2].kind == specs[0].kind && specs[2].period == specs[0].period {
                specs[2].period += 1;
            }
            specs
        })
}

proptest! {
    // XorShift: ChaCha, proptest's default, costs most of a case's time in a debug build.
    #![proptest_config(ProptestConfig {
        cases: cases(10_000),
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    /// The waiting path, judged where callers meet the guarantee: every window of release
    /// instants (a reading for an immediate admission, the deadline for a waiter that was
    /// not cancelled) holds no more than `burst + rate × window` in either budget, with the
    /// largest burst and rate in force from the first decision in the window to the last when
    /// limits change (`reference_support/bounds.rs`); and, as above, no admission and no
    /// deadline is more permissive than exact GCRA over the history without the withdrawn
    /// units. Readings go backwards, and some run ahead of the limiter's clock (by `200·step`
    /// or `400·step`).
    #[test]
    fn releases_never_exceed_burst_plus_rate(
        period in period(),
        limits in (general_limit(), general_limit()),
        bursts in (burst(1_000), burst(1_000)),
        ts in prop_oneof![1u64..100, 1u64..10_000_000_000]
            .prop_flat_map(|step| (Just(step), times(48, step), leads(step))),
        ops in prop::collection::vec(waiting_op(
            amount().prop_map(Cost::from).boxed(),
            debts().prop_map(Cost::from).boxed(),
            (general_limit(), general_limit()).prop_map(|(r, t)| Op::SetLimit(r, t)).boxed(),
        ), 48),
    ) {
        let (step, ts, leads) = ts;
        let specs = pair(period, bursts);
        let limits = [fine(limits.0, period), fine(limits.1, period)];
        let ops: Vec<_> = ops
            .into_iter()
            .map(|o| match o {
                Op::SetLimit(r, t) => Op::SetLimit(fine(r, period), fine(t, period)),
                o => o,
            })
            .collect();
        let ops = at_readings(ts, &leads, ops, step);
        let run = check(&specs, &limits, &ops, &leads, false);
        assert_release_bound(&specs, &run.history, &run.released);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(10_000),
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    /// The waiting path with a budget set of three, each budget with its own window, burst
    /// policy and limit changes, and costs of input and output tokens: every claim, admission
    /// and usage report stays within exact GCRA per budget, and every budget's windows of
    /// release instants fit the bound (`reference_support/bounds.rs`).
    #[test]
    fn three_budgets_release_within_every_bound(
        specs in budget_set(),
        limits in (general_limit(), general_limit(), general_limit()),
        ts in prop_oneof![1u64..100, 1u64..10_000_000_000]
            .prop_flat_map(|step| (Just(step), times(48, step), leads(step))),
        ops in prop::collection::vec(waiting_op(
            (amount(), amount()).prop_map(|(i, o)| Cost::new(i, o)).boxed(),
            (debts(), debts()).prop_map(|(i, o)| Cost::new(i, o)).boxed(),
            prop::collection::vec(prop::option::weighted(0.5, general_limit()), 3)
                .prop_map(Op::SetLimits)
                .boxed(),
        ), 48),
    ) {
        let (step, ts, leads) = ts;
        let limits: Vec<u64> = [limits.0, limits.1, limits.2]
            .into_iter()
            .zip(&specs)
            .map(|(l, s)| fine(l, s.period))
            .collect();
        let ops: Vec<_> = ops
            .into_iter()
            .map(|o| match o {
                Op::SetLimits(new) => Op::SetLimits(
                    new.into_iter()
                        .zip(&specs)
                        .map(|(c, s)| c.map(|c| fine(c, s.period)))
                        .collect(),
                ),
                o => o,
            })
            .collect();
        let ops = at_readings(ts, &leads, ops, step);
        let run = check(&specs, &limits, &ops, &leads, false);
        assert_release_bound(&specs, &run.history, &run.released);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// Exact rates on the unit grid: identical decisions and usage.
    #[test]
    fn identical_to_exact_gcra_at_binary_exact_rates(
        limits in (exact_limit(), exact_limit()),
        bursts in (burst(1 << 21), burst(1 << 21)),
        ops in (times(48, 1 << 20), prop::collection::vec(
            op(exact_limit(), prop_oneof![8 => 0u64..64, 1 => Just(u64::MAX)].boxed(), debts(), false), 48)),
    ) {
        let ops: Vec<_> = ops.0.into_iter().zip(ops.1).collect();
        check(&pair(1 << 20, bursts), &[limits.0, limits.1], &ops, &[], true);
    }

    /// Any rate, period and time: never more permissive than exact GCRA (with refunds, than
    /// the history without the withdrawn units), and, immediate admissions being released
    /// at their readings, every window of them within the bound across the limit changes.
    #[test]
    fn never_more_permissive_than_exact_gcra(
        period in period(),
        limits in (general_limit(), general_limit()),
        bursts in (burst(1_000), burst(1_000)),
        ts in prop_oneof![1u64..100, 1u64..10_000_000_000].prop_flat_map(|step| times(48, step)),
        ops in prop::collection::vec(
            op(general_limit(), prop_oneof![8 => 0u64..2_000, 1 => any::<u64>(), 1 => Just(u64::MAX)].boxed(), debts(), true), 48),
    ) {
        let specs = pair(period, bursts);
        let limits = [fine(limits.0, period), fine(limits.1, period)];
        let ops: Vec<_> = ts
            .into_iter()
            .zip(ops)
            .map(|(t, o)| match o {
                Op::SetLimit(r, q) => (t, Op::SetLimit(fine(r, period), fine(q, period))),
                o => (t, o),
            })
            .collect();
        let run = check(&specs, &limits, &ops, &[], false);
        assert_release_bound(&specs, &run.history, &run.released);
    }
}

/// Regression (found on the base commit, fixed on main by coarse quanta): the unit clock
/// `now·L/P` saturated at 2^58 for huge limits, and a saturated reading refused everything
/// forever: `TokenBucketLimiter::new(0, u64::MAX)` denied every request once the machine had
/// been up ~0.94 s, while `usage` reported the bucket full.
#[test]
fn huge_limit_keeps_admitting_after_the_unit_clock_saturates() {
    let l = TokenBucketLimiter::new(0, u64::MAX);
    let two_seconds = 2_000_000_000;
    let u = l.usage_at(two_seconds);
    assert!(u.tokens().unwrap().remaining >= 1);
    assert!(
        l.try_acquire_at(two_seconds, 1).is_ok(),
        "usage says {u:?} but a 1-token request is refused"
    );
    let l = TokenBucketLimiter::new(0, 1_000_000_000_000);
    assert!(l.try_acquire_at(250 * 86_400 * 1_000_000_000, 1).is_ok());
}

/// Regression (found by this suite, fixed in `Rate::fit`): a limit fast enough to get coarse
/// quanta (`Rate::fit`: at least 1 unit per 64 ns... in practice above ~1.5e10 per minute
/// quanta are several units) with a burst smaller than one quantum has no capacity at all:
/// `try_acquire(1)` fails with `InsufficientCapacity { requested: 1, capacity: 3 }`, a
/// contradiction, and the bucket admitted nothing ever. A quantum now never exceeds the burst.
#[test]
fn tiny_burst_at_a_fast_rate_still_admits() {
    let l = TokenBucketLimiter::builder(0, 60_000_000_000)
        .token_burst(Burst::Units(3))
        .build()
        .unwrap();
    let r = l.try_acquire_at(1 << 40, 1).map(|p| p.tokens());
    assert_eq!(r, Ok(1), "usage {:?}", l.usage_at(1 << 40));
}

/// Regression (found by this suite, fixed in `gcra::rescale`): a debt beyond the TAT's range is
/// silently capped, and a limit change carries the capped debt into the new rate. Charging
/// `u64::MAX` tokens at 129 per 9.1 s records 2^37 tokens (centuries at that rate: fine), but
/// after `set_limit` to 142,606,336 per 9.1 s the bucket admits again ~4.5 hours later, where
/// exact GCRA would wait ~37,000 years. A saturated TAT now stays saturated across the change.
#[test]
fn huge_debt_survives_a_limit_change() {
    let p = 9_126_805_505;
    let l = TokenBucketLimiter::builder(0, 129)
        .period(Duration::from_nanos(p))
        .build()
        .unwrap();
    let t0 = 1 << 20;
    l.charge_at(t0, 0, u64::MAX);
    l.set_limit_at(t0, 0, 142_606_336).unwrap();
    let day = 86_400_000_000_000;
    assert!(
        l.try_acquire_at(t0 + day, 1).is_err(),
        "{:?}",
        l.usage_at(t0 + day)
    );
}

/// Found by the release-instant properties once they changed limits: a decision at a
/// reading older than the instant a limit change took effect is judged on the state the
/// change carried over at that instant. Tokens go from 1,000 to 1 per second (a burst of 100
/// both); the change, at 100 ms, finds the 100 tokens taken at 0 refilled, and a stale reading
/// of 50 ms is granted what the bucket holds at 100 ms — counted at 50 ms, 199 tokens in
/// [0, 50 ms] against `100 + 1,000 × 0.05 = 150`. Such a decision is therefore *released at
/// the change's instant* (documented on `set_limit_at`): the carried-over state already
/// places everything at or after it, and reads an older instant as fuller, never emptier, so
/// the decision is exactly the one at the change's instant or stricter.
#[test]
fn a_reading_older_than_a_limit_change_is_decided_at_the_change() {
    let ms = 1_000_000u64;
    let clock = std::sync::Arc::new(ratekeeper::ManualClock::new(0));
    let l = TokenBucketLimiter::builder(0, 1_000)
        .period(Duration::from_secs(1))
        .token_burst(Burst::Units(100))
        .clock(clock.clone())
        .build()
        .unwrap();
    let first = l.try_acquire_at(0, 100).expect("a full bucket");
    clock.set(100 * ms);
    l.set_limit_at(100 * ms, 0, 1).unwrap();
    // A caller that read the clock at 50 ms takes what it can.
    let mut stale = 0;
    for n in [100, 10, 1] {
        while l.try_acquire_at(50 * ms, n).is_ok() {
            stale += n;
        }
    }
    // Released at 100 ms, after the first 100 had refilled under the old limits: a full
    // bucket's 100, no more (the bound over [0, 100 ms] with the larger limits is 200); the
    // last token may wait a quantum (the conversion restarts the TAT rounding up).
    assert!(
        (99..=100).contains(&stale),
        "{stale} tokens for a stale reading"
    );
    // And nothing more there: 1 per second refills one token by 1.1 s.
    assert!(l.try_acquire_at(100 * ms, 1).is_err());
    assert!(l.try_acquire_at(1_100 * ms + 1, 1).is_ok());
    let _ = first;
}
