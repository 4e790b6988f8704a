//! A response header is input from a stranger: one named test per hostile response that used
//! to hang learning, lift a key far above its configuration, cool it down for centuries or for
//! nothing, or go unreported. Each doc comment records what the code before the bounds did
//! (measured on a debug build on the 2-vCPU development machine).

mod headers_support;

use headers_support::{limits, ready, remaining, Counting};
use http::{HeaderMap, HeaderValue};
use ratekeeper::headers::{Applied, Clamped, LearnPolicy, LearnReport};
use ratekeeper::{Budget, Clock, KeyPool, ManualClock, TokenBucketLimiter, TokioClock};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// 2024-05-01T12:00:00Z, the wall-clock time responses are read at.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_714_564_800)
}

fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(*k, HeaderValue::from_str(v).unwrap());
    }
    m
}

type Pool = KeyPool<&'static str, Counting, Arc<ManualClock>>;

/// One key `k` configured at `rpm`/`tpm`, on a clock standing at 1 s (so that "now + d" and
/// "not cooling" are told apart).
fn pool(rpm: u64, tpm: u64) -> (Arc<ManualClock>, Pool, Arc<Counting>) {
    pool_at(1_000_000_000, rpm, tpm)
}

/// [`pool`] on a clock standing at `start_ns`. At 0, an instant every rate divides, readings
/// after a limit change are exact; elsewhere they may be one quantum stricter.
fn pool_at(start_ns: u64, rpm: u64, tpm: u64) -> (Arc<ManualClock>, Pool, Arc<Counting>) {
    let clock = Arc::new(ManualClock::new(start_ns));
    let limiter = Counting::new(&clock, rpm, tpm);
    let pool = KeyPool::with_clock(clock.clone());
    pool.add("k", limiter.clone());
    (clock, pool, limiter)
}

/// Learns from one response; it must complete at its first poll (it never waits).
fn learn(pool: &Pool, status: u16, headers: &HeaderMap) -> LearnReport {
    ready(pool.learn_at(&"k", status, headers, now()))
        .expect("the key is in the pool")
        .expect("an in-process limiter does not fail")
}

/// The cooldown `k` is on, from the pool clock's reading now.
fn cooldown(clock: &Arc<ManualClock>, pool: &Pool) -> Option<Duration> {
    let until = pool.cooldown_until(&"k")?;
    Some(Duration::from_nanos(until - clock.now()))
}

/// Before: `limit: 10000000` with `remaining: 0` charged one `try_acquire(0)` per missing
/// request: 10^7 calls, 6.0 s in `learn` (0.8 s at 10^6); at `u64::MAX`, effectively forever.
/// Now one `charge` call, whatever the figure.
#[test]
fn catch_up_to_a_huge_limit_with_none_remaining_is_one_charge() {
    for limit in [10_000_000u64, u64::MAX] {
        let (_clock, pool, l) = pool(10, 1_000);
        // An explicit ceiling that lets the figure through: this test is about the catch-up.
        pool.set_learn_policy(
            &"k",
            LearnPolicy::new().max_limit(Budget::Requests, u64::MAX),
        );
        let h = map(&[
            ("x-ratelimit-limit-requests", &limit.to_string()),
            ("x-ratelimit-remaining-requests", "0"),
        ]);
        let started = Instant::now();
        let r = learn(&pool, 200, &h);
        let took = started.elapsed();
        let (usage, set_limit, charge, other) = l.calls.get();
        assert_eq!((set_limit, charge, other), (1, 1, 0), "limit {limit}");
        assert!(usage <= 3, "{usage} usage calls");
        assert!(r.applied.contains(&Applied::Limit {
            budget: Budget::Requests,
            limit
        }));
        // As empty as the provider says: the next request is refused.
        assert_eq!(remaining(&l.inner).0, 0, "limit {limit}");
        assert!(l.inner.try_acquire(0).is_err());
        eprintln!("limit {limit}: learn took {took:?}");
    }
}

/// Before: `limit: 99999999999` on both budgets of a key configured at 10 RPM / 1,000 TPM was
/// set as is: 1,000 of 1,000 `try_acquire(1000)` admitted at one instant. Now the limits are
/// clamped to 32 times the configuration (320 / 32,000) and the clamp is reported: 32 admitted.
#[test]
fn a_limit_far_above_the_configuration_is_clamped() {
    let (_clock, pool, l) = pool_at(0, 10, 1_000);
    let h = map(&[
        ("x-ratelimit-limit-requests", "99999999999"),
        ("x-ratelimit-limit-tokens", "99999999999"),
    ]);
    let r = learn(&pool, 200, &h);
    assert_eq!(
        r.clamped,
        vec![
            Clamped::Limit {
                budget: Budget::Requests,
                learned: 99_999_999_999,
                ceiling: 320
            },
            Clamped::Limit {
                budget: Budget::Tokens,
                learned: 99_999_999_999,
                ceiling: 32_000
            }
        ]
    );
    let admitted = (0..1_000)
        .filter(|_| l.inner.try_acquire(1_000).is_ok())
        .count();
    assert_eq!(admitted, 32);
    // Learning again from the same response does not ratchet the ceiling up: it derives from
    // the configured limits, captured once, not from the ones learned. The limits are those
    // in force already, so nothing is set (a set_limit would void refunds in flight).
    l.calls.reset();
    let r = learn(&pool, 200, &h);
    assert_eq!(r.clamped.len(), 2);
    assert!(r.applied.is_empty(), "{:?}", r.applied);
    assert_eq!(l.calls.get(), (1, 0, 0, 0)); // one usage call, nothing else
    assert_eq!(limits(&l.inner).0, 320);
}

/// An explicit `max_limit` replaces the factor, also below the configuration.
#[test]
fn an_explicit_max_limit_is_the_ceiling() {
    let (_clock, pool, l) = pool(10, 1_000);
    pool.set_learn_policy(
        &"k",
        LearnPolicy::new()
            .max_limit(Budget::Requests, 12)
            .max_limit(Budget::Tokens, 500),
    );
    let h = map(&[
        ("x-ratelimit-limit-requests", "99999999999"),
        ("x-ratelimit-limit-tokens", "99999999999"),
    ]);
    learn(&pool, 200, &h);
    assert_eq!(limits(&l.inner), (12, 500));
}

/// Keys sharing one limiter share its configured limits: learning on one key, then on the
/// other, does not compound two ceilings (were each key to read its base from the limiter,
/// the second would take the first one's learned limit as it: 32 x 32 x configured).
#[test]
fn keys_sharing_a_limiter_share_one_ceiling() {
    let clock = Arc::new(ManualClock::new(0));
    let shared = Counting::new(&clock, 10, 1_000);
    let pool: Pool = KeyPool::with_clock(clock.clone());
    pool.add("a", shared.clone());
    pool.add("b", shared.clone());
    let h = map(&[("x-ratelimit-limit-requests", "99999999999")]);
    for key in ["a", "b", "a"] {
        ready(pool.learn_at(&key, 200, &h, now())).unwrap().unwrap();
        assert_eq!(limits(&shared.inner).0, 320, "after {key}");
    }
    // Rotating a key (add the new one, drop the old) keeps the base too.
    pool.add("c", shared.clone());
    pool.remove(&"a");
    pool.remove(&"b");
    ready(pool.learn_at(&"c", 200, &h, now())).unwrap().unwrap();
    assert_eq!(limits(&shared.inner).0, 320);
}

fn assert_max_cooldown(hint: &[(&'static str, &str)], before: &str) {
    let (clock, pool, _l) = pool(10, 1_000);
    let r = learn(&pool, 429, &map(hint));
    let max = LearnPolicy::DEFAULT_MAX_COOLDOWN;
    assert_eq!(
        cooldown(&clock, &pool),
        Some(max),
        "{hint:?} (before: {before})"
    );
    assert_eq!(r.applied.last(), Some(&Applied::Cooldown(max)));
    assert!(
        matches!(r.clamped.last(), Some(Clamped::Cooldown { used, .. }) if *used == max),
        "{:?}",
        r.clamped
    );
}

/// Before: a cooldown of 1.8e10 s (the pool clock saturated); `pool.acquire` waited on it.
#[test]
fn retry_after_of_99999999999_seconds_cools_for_the_maximum() {
    assert_max_cooldown(&[("retry-after", "99999999999")], "1.8e10 s");
}

/// Before: a cooldown of 1.8e10 s.
#[test]
fn retry_after_ms_of_1e300_cools_for_the_maximum() {
    assert_max_cooldown(&[("retry-after-ms", "1e300")], "1.8e10 s");
}

/// Before: a cooldown of 1.8e10 s (the report said 251,687,735,999 s).
#[test]
fn retry_after_in_the_year_9999_cools_for_the_maximum() {
    assert_max_cooldown(
        &[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")],
        "1.8e10 s",
    );
}

/// Before: a cooldown of 1.8e10 s.
#[test]
fn reset_of_99999999999h_with_none_remaining_cools_for_the_maximum() {
    assert_max_cooldown(
        &[
            ("x-ratelimit-limit-requests", "10"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "99999999999h"),
        ],
        "1.8e10 s",
    );
}

/// Before: `pool.acquire` on a pool whose only key got `retry-after: 99999999999` slept on
/// that cooldown (1.8e10 s). Now it is served once the maximum cooldown is over.
#[tokio::test(start_paused = true)]
async fn acquire_after_a_huge_retry_hint_waits_at_most_the_maximum() {
    let clock = TokioClock::new();
    let pool = KeyPool::with_clock(clock);
    let l = TokenBucketLimiter::builder(10, 1_000)
        .clock(clock)
        .build()
        .unwrap();
    pool.add("k", Arc::new(l));
    let h = map(&[("retry-after", "99999999999")]);
    pool.learn(&"k", 429, &h).await.unwrap().unwrap();
    let start = tokio::time::Instant::now();
    let max = LearnPolicy::DEFAULT_MAX_COOLDOWN;
    let p = tokio::time::timeout(max + Duration::from_secs(1), pool.acquire(1))
        .await
        .expect("served within the maximum cooldown")
        .unwrap();
    assert_eq!(*p.key(), "k");
    assert_eq!(start.elapsed(), max);
}

/// Before: a 429 with `retry-after` dated in the past cooled the key for 0 ns: it was not
/// cooling at all and took the next request at once. Now the minimum, one second.
#[test]
fn a_429_whose_retry_date_is_past_cools_for_the_minimum() {
    let (clock, pool, _l) = pool(10, 1_000);
    let h = map(&[("retry-after", "Wed, 01 May 2024 11:00:00 GMT")]);
    let r = learn(&pool, 429, &h);
    let min = LearnPolicy::DEFAULT_MIN_COOLDOWN;
    assert_eq!(cooldown(&clock, &pool), Some(min));
    assert_eq!(
        r.clamped,
        vec![Clamped::Cooldown {
            hint: Duration::ZERO,
            used: min
        }]
    );
    // No hint at all: the minimum too (not reported as clamped: nothing was said).
    let (clock, pool, _l) = self::pool(10, 1_000);
    let r = learn(&pool, 429, &HeaderMap::new());
    assert_eq!(cooldown(&clock, &pool), Some(min));
    assert!(r.clamped.is_empty());
}

/// The cooldown range is the key's: a policy's own bounds apply.
#[test]
fn the_cooldown_range_is_configurable_per_key() {
    let (clock, pool, _l) = pool(10, 1_000);
    let (min, max) = (Duration::from_millis(200), Duration::from_secs(90));
    pool.set_learn_policy(&"k", LearnPolicy::new().cooldown(min, max));
    learn(&pool, 429, &map(&[("retry-after-ms", "150")]));
    assert_eq!(cooldown(&clock, &pool), Some(min));
    learn(&pool, 429, &map(&[("retry-after", "100000")]));
    assert_eq!(cooldown(&clock, &pool), Some(max));
    // A zero minimum is raised to the floor: a 429 never cools for nothing.
    let p = LearnPolicy::new().cooldown(Duration::ZERO, Duration::ZERO);
    assert_eq!(p.min_cooldown(), LearnPolicy::FLOOR_COOLDOWN);
    assert_eq!(p.max_cooldown(), LearnPolicy::FLOOR_COOLDOWN);
}

fn reasons(r: &LearnReport) -> Vec<(&str, &str, &str)> {
    r.limits
        .ignored
        .iter()
        .map(|i| (i.header.as_str(), i.value.as_str(), i.reason))
        .collect()
}

/// Before: two `x-ratelimit-limit-requests` values: the first (60) was used, the other
/// dropped silently. Now the lower (30) wins and the other is reported.
#[test]
fn duplicate_limit_headers_keep_the_lower_and_report_the_other() {
    let (_clock, pool, l) = pool(100, 10_000);
    let h = map(&[
        ("x-ratelimit-limit-requests", "60"),
        ("x-ratelimit-limit-requests", "30"),
        ("x-ratelimit-remaining-tokens", "5000"),
        ("x-ratelimit-remaining-tokens", "5000"),
    ]);
    let r = learn(&pool, 200, &h);
    assert_eq!(limits(&l.inner).0, 30);
    assert_eq!(
        reasons(&r),
        [
            (
                "x-ratelimit-limit-requests",
                "60",
                "duplicate header: the more conservative value was used"
            ),
            (
                "x-ratelimit-remaining-tokens",
                "5000",
                "duplicate header (same value)"
            ),
        ]
    );
}

/// Before: OpenAI's and Anthropic's names for one budget, disagreeing: OpenAI's was used,
/// Anthropic's dropped silently. Now the lower wins and the other is reported.
#[test]
fn two_providers_names_for_one_budget_keep_the_lower() {
    let (_clock, pool, l) = pool(100, 10_000);
    let h = map(&[
        ("x-ratelimit-limit-requests", "80"),
        ("anthropic-ratelimit-requests-limit", "50"),
    ]);
    let r = learn(&pool, 200, &h);
    assert_eq!(limits(&l.inner).0, 50);
    assert_eq!(reasons(&r).len(), 1, "{:?}", reasons(&r));
    assert_eq!(reasons(&r)[0].0, "x-ratelimit-limit-requests");
}

/// Before: a remaining above the limit in the same response went unreported. Now it is
/// reported and read as the limit (nothing used), under the lower limit.
#[test]
fn a_remaining_above_the_limit_is_reported() {
    let (_clock, pool, l) = pool(100, 10_000);
    let h = map(&[
        ("x-ratelimit-limit-requests", "20"),
        ("x-ratelimit-remaining-requests", "50"),
    ]);
    let r = learn(&pool, 200, &h);
    assert_eq!(r.limits.requests.remaining, Some(20));
    assert_eq!(
        reasons(&r),
        [(
            "x-ratelimit-remaining-requests",
            "50",
            "remaining above the limit in the same response: read as the limit"
        )]
    );
    assert_eq!(limits(&l.inner).0, 20);
}

/// Before: `retry-after-ms: 500` beside `retry-after: 30` cooled for 500 ms. Hints that far
/// apart contradict each other: now the longer wins and the shorter is reported.
#[test]
fn disagreeing_retry_hints_keep_the_longer() {
    let (clock, pool, _l) = pool(10, 1_000);
    let h = map(&[("retry-after-ms", "500"), ("retry-after", "30")]);
    let r = learn(&pool, 429, &h);
    assert_eq!(cooldown(&clock, &pool), Some(Duration::from_secs(30)));
    assert_eq!(
        reasons(&r),
        [(
            "retry-after-ms",
            "500",
            "contradicts the other retry hint: the longer wait was used"
        )]
    );
}

/// Before: a retry hint on a 200 was dropped silently. It earns no cooldown (only a 429
/// does) and is now reported.
#[test]
fn a_retry_hint_on_a_200_is_reported_and_earns_no_cooldown() {
    let (clock, pool, _l) = pool(10, 1_000);
    let r = learn(&pool, 200, &map(&[("retry-after", "30")]));
    assert_eq!(cooldown(&clock, &pool), None);
    assert_eq!(
        reasons(&r),
        [(
            "retry-after",
            "30",
            "retry hint on a response that is not a 429: no cooldown"
        )]
    );
}

/// A very long value is reported cut, so a hostile header cannot grow the report.
#[test]
fn ignored_values_are_cut() {
    let (_clock, pool, _l) = pool(10, 1_000);
    let long = "9".repeat(100_000);
    let r = learn(&pool, 200, &map(&[("x-ratelimit-limit-requests", &long)]));
    let i = &r.limits.ignored[0];
    assert_eq!(i.reason, "not a non-negative integer");
    assert_eq!(i.value.chars().count(), 65); // 64 and the ellipsis
}
