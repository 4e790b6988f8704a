//! examples/tenant_gateway.rs driven over real HTTP on 127.0.0.1: each tenant held to its own
//! RPM and TPM, 429s with `Retry-After` and the rate-limit fields, and the metrics at
//! `/metrics` counting what happened.

#[path = "../examples/tenant_gateway.rs"]
#[allow(dead_code)]
mod gateway;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn post(c: &Http, url: &str, key: &str, max_tokens: u64) -> (StatusCode, http::HeaderMap) {
    let req = http::Request::post(url)
        .header("x-api-key", key)
        .header("x-max-tokens", max_tokens.to_string())
        .body(Full::default())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let _ = body.collect().await.unwrap();
    (parts.status, parts.headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_held_to_their_own_rpm_and_tpm_over_http() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = gateway::app(gateway::tenants(&["pro-test"]));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let c: Http = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{base}/v1/chat/completions");

    // RPM: a free tenant gets 5 requests a minute, then 429s that say how long to wait.
    for _ in 0..5 {
        assert_eq!(post(&c, &url, "free-rpm", 10).await.0, StatusCode::OK);
    }
    let (status, h) = post(&c, &url, "free-rpm", 10).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=12).contains(&wait),
        "one request refills in 12 s: {wait}"
    );
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert!(h["ratelimit-policy"]
        .to_str()
        .unwrap()
        .contains("\"requests\";q=5;w=60"));

    // TPM: 2,000 tokens a minute on the estimate; settling returns two thirds of each.
    let (status, h) = post(&c, &url, "free-tpm", 1_500).await;
    assert_eq!(status, StatusCode::OK);
    let left: u64 = h["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1_497..=1_500).contains(&left),
        "1,500 estimated, 500 used: {left}"
    );
    assert_eq!(
        post(&c, &url, "free-tpm", 1_600).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(post(&c, &url, "free-tpm", 1_400).await.0, StatusCode::OK);

    // An override: the pro tenant is not held to the free limits.
    for _ in 0..10 {
        assert_eq!(post(&c, &url, "pro-test", 1_000).await.0, StatusCode::OK);
    }

    // The metrics saw it: denials per budget, admissions in units.
    let resp = c
        .request(
            http::Request::get(format!("{base}/metrics"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let value = |series: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing in:\n{text}"))
    };
    assert!(value("ratekeeper_denied_total{class=\"free\",budget=\"requests\"}") >= 1);
    assert!(value("ratekeeper_denied_total{class=\"free\",budget=\"tokens\"}") >= 1);
    assert!(value("ratekeeper_admitted_units_total{class=\"free\",budget=\"requests\"}") >= 17);
    assert!(value("ratekeeper_refunded_units_total{class=\"free\",budget=\"tokens\"}") >= 1_000);
}
