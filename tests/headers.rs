//! Header parsing and learning against real-looking provider responses (feature `http`, on by
//! default; the target is skipped without it).

mod headers_support;

use headers_support::{limits, remaining};
use http::{HeaderMap, HeaderName, HeaderValue};
use ratekeeper::headers::{apply, parse, Applied, Ceilings, Figures, ProviderBudget, Skipped};
use ratekeeper::Budget;
use ratekeeper::{Limit, ManualClock, TokenBucketLimiter};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    m
}

/// 2024-05-01T12:00:00Z.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_714_564_800)
}

/// Starts at 0, an instant every rate divides exactly: readings right after a restart from
/// idle are then exact (elsewhere they may be one quantum, <= 64 ns of refill, stricter).
fn limiter(rpm: u64, tpm: u64) -> TokenBucketLimiter<Arc<ManualClock>> {
    let clock = Arc::new(ManualClock::new(0));
    TokenBucketLimiter::builder(rpm, tpm)
        .clock(clock)
        .build()
        .unwrap()
}

#[test]
fn openai_response_headers() {
    let h = map(&[
        ("x-ratelimit-limit-requests", "5000"),
        ("x-ratelimit-limit-tokens", "800000"),
        ("x-ratelimit-remaining-requests", "4999"),
        ("x-ratelimit-remaining-tokens", "799420"),
        ("x-ratelimit-reset-requests", "12ms"),
        ("x-ratelimit-reset-tokens", "2m59.56s"),
    ]);
    let p = parse(&h, now());
    assert_eq!(
        p.requests,
        Figures {
            limit: Some(5000),
            remaining: Some(4999),
            reset: Some(Duration::from_millis(12)),
        }
    );
    assert_eq!(
        p.tokens,
        Figures {
            limit: Some(800_000),
            remaining: Some(799_420),
            reset: Some(Duration::from_millis(179_560)),
        }
    );
    assert!(p.ignored.is_empty(), "{:?}", p.ignored);
}

#[test]
fn anthropic_response_headers() {
    let h = map(&[
        ("anthropic-ratelimit-requests-limit", "50"),
        ("anthropic-ratelimit-requests-remaining", "49"),
        ("anthropic-ratelimit-requests-reset", "2024-05-01T12:00:01Z"),
        ("anthropic-ratelimit-tokens-limit", "40000"),
        ("anthropic-ratelimit-tokens-remaining", "39000"),
        ("anthropic-ratelimit-tokens-reset", "2024-05-01T12:00:30.5Z"),
        ("anthropic-ratelimit-input-tokens-limit", "40000"),
        ("anthropic-ratelimit-input-tokens-remaining", "39000"),
        ("anthropic-ratelimit-output-tokens-limit", "8000"),
        ("anthropic-ratelimit-output-tokens-remaining", "8000"),
    ]);
    let p = parse(&h, now());
    assert_eq!(
        p.requests,
        Figures {
            limit: Some(50),
            remaining: Some(49),
            reset: Some(Duration::from_secs(1)),
        }
    );
    assert_eq!(p.tokens.limit, Some(40_000));
    // Rounded to the nearest thousand: read as its upper bound.
    assert_eq!(p.tokens.remaining, Some(39_499));
    assert_eq!(p.tokens.reset, Some(Duration::from_millis(30_500)));
    assert_eq!(p.input_tokens.remaining, Some(39_499));
    // The upper bound of the rounding never reads above the limit.
    assert_eq!(p.output_tokens.remaining, Some(8_000));
    assert!(p.ignored.is_empty(), "{:?}", p.ignored);
}

#[tokio::test]
async fn anthropic_budgets_a_two_budget_limiter_does_not_have_are_skipped() {
    let h = map(&[
        ("anthropic-ratelimit-tokens-limit", "40000"),
        ("anthropic-ratelimit-input-tokens-limit", "30000"),
        ("anthropic-ratelimit-output-tokens-limit", "8000"),
    ]);
    let l = limiter(50, 40_000);
    let r = apply(&l, parse(&h, now()), &Ceilings::new()).await.unwrap();
    // The combined token figure feeds the token budget; the other two are reported.
    assert!(r.applied.is_empty(), "{:?}", r.applied);
    let skipped: Vec<_> = r.skipped.iter().map(|s| s.budget).collect();
    assert_eq!(
        skipped,
        [ProviderBudget::InputTokens, ProviderBudget::OutputTokens]
    );
}

/// An Anthropic-style budget set (requests, input and output tokens) learns each figure into
/// the budget of its kind, and a lower remaining is charged budget by budget.
#[tokio::test]
async fn anthropic_figures_fill_an_input_and_output_budget_set() {
    let l = TokenBucketLimiter::with_limits([
        Limit::requests(50),
        Limit::input_tokens(40_000),
        Limit::output_tokens(8_000),
    ])
    .clock(Arc::new(ManualClock::new(0)))
    .build()
    .unwrap();
    let h = map(&[
        ("anthropic-ratelimit-requests-limit", "50"),
        ("anthropic-ratelimit-input-tokens-limit", "30000"),
        ("anthropic-ratelimit-output-tokens-limit", "16000"),
        ("anthropic-ratelimit-output-tokens-remaining", "12000"),
    ]);
    let ceilings = Ceilings::new()
        .with(Budget::InputTokens, 100_000)
        .with(Budget::OutputTokens, 100_000);
    let r = apply(&l, parse(&h, now()), &ceilings).await.unwrap();
    assert_eq!(
        l.limits(),
        vec![
            Limit::requests(50),
            Limit::input_tokens(30_000),
            Limit::output_tokens(16_000)
        ]
    );
    // 16,000 output tokens are free by our count; the provider says 12,499 at most.
    assert!(r.applied.contains(&Applied::Charged {
        budget: Budget::OutputTokens,
        units: 16_000 - 12_499
    }));
    let u = l.usage();
    assert_eq!(u.get(Budget::OutputTokens).unwrap().remaining, 12_499);
    assert_eq!(u.get(Budget::InputTokens).unwrap().remaining, 30_000);
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
}

#[test]
fn anthropic_input_tokens_used_when_no_combined_budget() {
    let h = map(&[
        ("anthropic-ratelimit-input-tokens-limit", "20000"),
        ("anthropic-ratelimit-input-tokens-remaining", "0"),
    ]);
    let p = parse(&h, now());
    assert_eq!(p.input_tokens.limit, Some(20_000));
    assert_eq!(p.input_tokens.remaining, Some(499));
    assert!(p.tokens.is_empty());
}

#[tokio::test]
async fn anthropic_input_tokens_feed_the_token_budget_when_no_combined_one() {
    let h = map(&[
        ("anthropic-ratelimit-input-tokens-limit", "20000"),
        ("anthropic-ratelimit-input-tokens-remaining", "0"),
    ]);
    let l = limiter(50, 20_000);
    let r = apply(&l, parse(&h, now()), &Ceilings::new()).await.unwrap();
    assert_eq!(
        r.applied,
        vec![Applied::Charged {
            budget: Budget::Tokens,
            units: 20_000 - 499
        }]
    );
    assert_eq!(remaining(&l).1, 499);
}

#[test]
fn azure_remaining_only_and_sentinels() {
    let p = parse(
        &map(&[
            ("x-ratelimit-remaining-requests", "-1"),
            ("x-ratelimit-remaining-tokens", "0"),
        ]),
        now(),
    );
    assert_eq!(p.requests.remaining, None);
    assert_eq!(p.tokens.remaining, None);
    assert_eq!(p.ignored.len(), 2, "{:?}", p.ignored);
    let p = parse(&map(&[("x-ratelimit-remaining-tokens", "1200")]), now());
    assert_eq!(p.tokens.remaining, Some(1200));
    assert!(p.ignored.is_empty());
    // A 0 with a reset still ahead is a real exhaustion, not the sentinel.
    let p = parse(
        &map(&[
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "20s"),
        ]),
        now(),
    );
    assert_eq!(p.tokens.remaining, Some(0));
    assert!(p.ignored.is_empty());
}

#[test]
fn malformed_values_are_reported_not_used() {
    let h = map(&[
        ("x-ratelimit-limit-requests", "0"),
        ("x-ratelimit-limit-tokens", "lots"),
        ("x-ratelimit-remaining-requests", "-5"),
        ("x-ratelimit-remaining-tokens", "99999999999999999999999"),
        ("x-ratelimit-reset-requests", "soon"),
        ("anthropic-ratelimit-tokens-reset", "tomorrow"),
        ("retry-after", "Sunday"),
    ]);
    let p = parse(&h, now());
    assert_eq!(
        p,
        ratekeeper::headers::ProviderLimits {
            ignored: p.ignored.clone(),
            ..Default::default()
        }
    );
    assert_eq!(p.ignored.len(), 7, "{:?}", p.ignored);
}

#[test]
fn retry_hints_in_precedence_order() {
    // Both sent and agreeing within a second: the precise one.
    let p = parse(
        &map(&[("retry-after-ms", "1500.5"), ("retry-after", "2")]),
        now(),
    );
    assert_eq!(p.retry_after, Some(Duration::from_micros(1_500_500)));
    assert_eq!(p.ignored.len(), 1);
    let p = parse(&map(&[("retry-after", "7")]), now());
    assert_eq!(p.retry_after, Some(Duration::from_secs(7)));
    let p = parse(
        &map(&[("retry-after", "Wed, 01 May 2024 12:00:20 GMT")]),
        now(),
    );
    assert_eq!(p.retry_after, Some(Duration::from_secs(20)));
    // A date in the past means "now" (a 429's cooldown then takes the policy's minimum).
    let p = parse(
        &map(&[("retry-after", "Wed, 01 May 2024 11:00:00 GMT")]),
        now(),
    );
    assert_eq!(p.retry_after, Some(Duration::ZERO));
}

#[tokio::test]
async fn limits_learned_only_when_they_differ() {
    let l = limiter(10, 1_000);
    let within = Ceilings::new()
        .with(Budget::Requests, 100)
        .with(Budget::Tokens, 100_000);
    let h = map(&[
        ("x-ratelimit-limit-requests", "60"),
        ("x-ratelimit-limit-tokens", "90000"),
    ]);
    let r = apply(&l, parse(&h, now()), &within).await.unwrap();
    assert_eq!(
        r.applied,
        vec![
            Applied::Limit {
                budget: Budget::Requests,
                limit: 60
            },
            Applied::Limit {
                budget: Budget::Tokens,
                limit: 90_000
            }
        ]
    );
    assert!(r.clamped.is_empty());
    assert_eq!(limits(&l), (60, 90_000));
    // Same limits again: no set_limit (it would void refunds of permits in flight).
    let r = apply(&l, parse(&h, now()), &within).await.unwrap();
    assert!(r.applied.is_empty());
    // One budget only: the other is kept.
    let r = apply(
        &l,
        parse(&map(&[("x-ratelimit-limit-tokens", "50000")]), now()),
        &within,
    )
    .await
    .unwrap();
    assert_eq!(
        r.applied,
        vec![Applied::Limit {
            budget: Budget::Tokens,
            limit: 50_000
        }]
    );
    assert_eq!(limits(&l), (60, 50_000));
}

#[tokio::test]
async fn without_a_ceiling_learning_only_lowers_limits() {
    let l = limiter(10, 1_000);
    let h = map(&[
        ("x-ratelimit-limit-requests", "5"),
        ("x-ratelimit-limit-tokens", "2000"),
    ]);
    let r = apply(&l, parse(&h, now()), &Ceilings::new()).await.unwrap();
    assert_eq!(
        r.applied,
        vec![Applied::Limit {
            budget: Budget::Requests,
            limit: 5
        }]
    );
    assert_eq!(limits(&l), (5, 1_000));
}

#[tokio::test]
async fn lower_remaining_is_charged_higher_is_not() {
    let l = limiter(100, 10_000);
    let h = map(&[
        ("x-ratelimit-remaining-requests", "40"),
        ("x-ratelimit-remaining-tokens", "2500"),
    ]);
    let r = apply(&l, parse(&h, now()), &Ceilings::new()).await.unwrap();
    assert_eq!(
        r.applied,
        vec![
            Applied::Charged {
                budget: Budget::Requests,
                units: 60
            },
            Applied::Charged {
                budget: Budget::Tokens,
                units: 7_500
            }
        ]
    );
    assert_eq!(remaining(&l), (40, 2_500));
    // The provider reporting more than we have grants nothing.
    let h = map(&[
        ("x-ratelimit-remaining-requests", "100"),
        ("x-ratelimit-remaining-tokens", "10000"),
    ]);
    let r = apply(&l, parse(&h, now()), &Ceilings::new()).await.unwrap();
    assert!(r.applied.is_empty());
    assert_eq!(r.skipped.len(), 2);
    assert_eq!(remaining(&l), (40, 2_500));
}

#[tokio::test]
async fn remaining_on_an_unlimited_budget_is_skipped() {
    let l = limiter(0, 0);
    let r = apply(
        &l,
        parse(&map(&[("x-ratelimit-remaining-tokens", "5")]), now()),
        &Ceilings::new(),
    )
    .await
    .unwrap();
    assert!(r.applied.is_empty());
    assert_eq!(
        r.skipped,
        vec![Skipped {
            budget: ProviderBudget::Tokens,
            reason: "remaining ignored: our budget is unlimited (learn its limit first)"
        }]
    );
    assert_eq!(remaining(&l).1, u64::MAX);
}
