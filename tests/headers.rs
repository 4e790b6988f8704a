//! Header parsing and learning against real-looking provider responses (feature `http`,
//! enabled for tests by the crate's dev-dependency on itself).

mod common;
use common::{limit, remaining};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use ratekeeper::headers::{apply, parse, Applied};
use ratekeeper::Budget;
use ratekeeper::{ManualClock, TokenBucketLimiter};
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
    assert_eq!(p.requests_limit, Some(5000));
    assert_eq!(p.tokens_limit, Some(800_000));
    assert_eq!(p.requests_remaining, Some(4999));
    assert_eq!(p.tokens_remaining, Some(799_420));
    assert_eq!(p.requests_reset, Some(Duration::from_millis(12)));
    assert_eq!(p.tokens_reset, Some(Duration::from_millis(179_560)));
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
    assert_eq!(p.requests_limit, Some(50));
    assert_eq!(p.requests_remaining, Some(49));
    assert_eq!(p.requests_reset, Some(Duration::from_secs(1)));
    assert_eq!(p.tokens_limit, Some(40_000));
    // Rounded to the nearest thousand: read as its upper bound.
    assert_eq!(p.tokens_remaining, Some(39_499));
    assert_eq!(p.tokens_reset, Some(Duration::from_millis(30_500)));
    let reasons: Vec<_> = p.ignored.iter().map(|i| i.header.as_str()).collect();
    assert!(
        reasons.contains(&"anthropic-ratelimit-input-tokens-*"),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"anthropic-ratelimit-output-tokens-limit"),
        "{reasons:?}"
    );
}

#[test]
fn anthropic_input_tokens_used_when_no_combined_budget() {
    let h = map(&[
        ("anthropic-ratelimit-input-tokens-limit", "20000"),
        ("anthropic-ratelimit-input-tokens-remaining", "0"),
    ]);
    let p = parse(&h, now());
    assert_eq!(p.tokens_limit, Some(20_000));
    assert_eq!(p.tokens_remaining, Some(499));
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
    assert_eq!(p.requests_remaining, None);
    assert_eq!(p.tokens_remaining, None);
    assert_eq!(p.ignored.len(), 2, "{:?}", p.ignored);
    let p = parse(&map(&[("x-ratelimit-remaining-tokens", "1200")]), now());
    assert_eq!(p.tokens_remaining, Some(1200));
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
    let p = parse(
        &map(&[("retry-after-ms", "1500.5"), ("retry-after", "9")]),
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
    // A date in the past means "now".
    let p = parse(
        &map(&[("retry-after", "Wed, 01 May 2024 11:00:00 GMT")]),
        now(),
    );
    assert_eq!(p.retry_after, Some(Duration::ZERO));
}

#[tokio::test]
async fn limits_learned_only_when_they_differ() {
    let l = limiter(10, 1_000);
    let h = map(&[
        ("x-ratelimit-limit-requests", "60"),
        ("x-ratelimit-limit-tokens", "90000"),
    ]);
    let r = apply(&l, parse(&h, now())).await.unwrap();
    assert_eq!(
        r.applied,
        vec![Applied::Limits {
            requests: 60,
            tokens: 90_000
        }]
    );
    assert_eq!(
        (
            limit(&l.usage(), Budget::Requests),
            limit(&l.usage(), Budget::Tokens)
        ),
        (60, 90_000)
    );
    // Same limits again: no set_limit (it would void refunds of permits in flight).
    let r = apply(&l, parse(&h, now())).await.unwrap();
    assert!(r.applied.is_empty());
    // One budget only: the other is kept.
    let r = apply(
        &l,
        parse(&map(&[("x-ratelimit-limit-tokens", "50000")]), now()),
    )
    .await
    .unwrap();
    assert_eq!(
        r.applied,
        vec![Applied::Limits {
            requests: 60,
            tokens: 50_000
        }]
    );
}

#[tokio::test]
async fn lower_remaining_is_charged_higher_is_not() {
    let l = limiter(100, 10_000);
    let h = map(&[
        ("x-ratelimit-remaining-requests", "40"),
        ("x-ratelimit-remaining-tokens", "2500"),
    ]);
    let r = apply(&l, parse(&h, now())).await.unwrap();
    assert_eq!(
        r.applied,
        vec![Applied::ChargedTokens(7_500), Applied::ChargedRequests(60)]
    );
    let u = l.usage();
    assert_eq!(
        (
            remaining(&u, Budget::Requests),
            remaining(&u, Budget::Tokens)
        ),
        (40, 2_500)
    );
    // The provider reporting more than we have grants nothing.
    let h = map(&[
        ("x-ratelimit-remaining-requests", "100"),
        ("x-ratelimit-remaining-tokens", "10000"),
    ]);
    let r = apply(&l, parse(&h, now())).await.unwrap();
    assert!(r.applied.is_empty());
    assert_eq!(r.skipped.len(), 2);
    let u = l.usage();
    assert_eq!(
        (
            remaining(&u, Budget::Requests),
            remaining(&u, Budget::Tokens)
        ),
        (40, 2_500)
    );
}

#[tokio::test]
async fn remaining_on_an_unlimited_budget_is_skipped() {
    let l = limiter(0, 0);
    let r = apply(
        &l,
        parse(&map(&[("x-ratelimit-remaining-tokens", "5")]), now()),
    )
    .await
    .unwrap();
    assert!(r.applied.is_empty());
    assert_eq!(remaining(&l.usage(), Budget::Tokens), u64::MAX);
}

proptest! {
    /// Arbitrary values under every known name never panic, and never loosen a limiter.
    #[test]
    fn arbitrary_header_values_never_panic(values in proptest::collection::vec(any::<Vec<u8>>(), 20)) {
        const NAMES: [&str; 20] = [
            "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
            "anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-limit",
            "anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset",
            "anthropic-ratelimit-input-tokens-limit", "anthropic-ratelimit-input-tokens-remaining",
            "anthropic-ratelimit-input-tokens-reset", "anthropic-ratelimit-output-tokens-limit",
            "retry-after-ms", "retry-after", "x-ratelimit-reset-tokens", "retry-after",
        ];
        let mut m = HeaderMap::new();
        for (name, v) in NAMES.iter().zip(values) {
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                m.insert(*name, v);
            }
        }
        let p = parse(&m, now());
        let l = limiter(50, 5_000);
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let before = l.usage();
        let r = rt.block_on(apply(&l, p)).unwrap();
        let after = l.usage();
        // Remaining never grows beyond what the (possibly new) limits and our own use allow.
        if r.applied.iter().all(|a| !matches!(a, Applied::Limits { .. })) {
            prop_assert!(remaining(&after, Budget::Requests) <= remaining(&before, Budget::Requests));
            prop_assert!(remaining(&after, Budget::Tokens) <= remaining(&before, Budget::Tokens));
        }
    }

    /// Go-duration, RFC 3339 and HTTP-date parsers take any string without panicking.
    #[test]
    fn time_parsers_never_panic(s in ".{0,40}") {
        let _ = ratekeeper::headers::go_duration(&s);
        let _ = ratekeeper::headers::rfc3339(&s);
        let _ = ratekeeper::headers::imf_fixdate(&s);
    }
}
