//! The tower layer in front of a real axum server on 127.0.0.1, driven by a real HTTP client
//! (hyper-util's): per-key admission, 429 with `Retry-After` and the rate-limit fields,
//! settling from the response, and what passes unlimited.

use axum::{routing::get, Extension, Router};
use bytes::Bytes;
use http::{HeaderName, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use ratekeeper::middleware::{header_key, ActualCost, RateLimitLayer};
use ratekeeper::{Cost, KeyedLimiter, ManualClock};
use std::sync::Arc;

type Http = Client<HttpConnector, Empty<Bytes>>;

/// Serves `app` on an ephemeral port of 127.0.0.1; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn send(c: &Http, url: &str, key: Option<&str>, max_tokens: u64) -> http::Response<Bytes> {
    let mut req = Request::get(url).header("x-max-tokens", max_tokens.to_string());
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let resp = c.request(req.body(Empty::new()).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

/// Per API key: 2 requests and 1,000 tokens per minute, on a clock that stands still. The
/// handler reports 100 tokens used, whatever the estimate.
async fn server() -> String {
    let clock = Arc::new(ManualClock::new(0));
    let tenants = Arc::new(
        KeyedLimiter::<String, _>::builder(2, 1_000)
            .clock(clock)
            .build()
            .unwrap(),
    );
    let layer = RateLimitLayer::new(tenants, header_key(HeaderName::from_static("x-api-key")))
        .cost(|p: &http::request::Parts| {
            let n = p
                .headers
                .get("x-max-tokens")
                .and_then(|v| v.to_str().ok()?.parse().ok());
            Cost::from(n.unwrap_or(0u64))
        })
        .x_ratelimit(true);
    let app = Router::new()
        .route(
            "/v1/chat",
            get(|| async { (Extension(ActualCost(Cost::from(100))), "ok") }),
        )
        .layer(layer);
    serve(app).await
}

fn client() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_is_limited_and_denials_say_when_to_retry() {
    let base = server().await;
    let url = format!("{base}/v1/chat");
    let c = client();

    let ok = send(&c, &url, Some("alice"), 600).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.body(), "ok");
    // Settled at 100 of the 600 estimated: 900 tokens remain, one request.
    assert_eq!(ok.headers()["x-ratelimit-remaining-tokens"], "900");
    assert_eq!(ok.headers()["x-ratelimit-remaining-requests"], "1");
    assert_eq!(
        ok.headers()["ratelimit-policy"],
        "\"requests\";q=2;w=60, \"tokens\";q=1000;w=60"
    );
    assert_eq!(
        ok.headers()["ratelimit"],
        "\"requests\";r=1;t=30, \"tokens\";r=900;t=6"
    );

    // The estimate, not the actual use, decides admission: 950 > 900 left.
    let big = send(&c, &url, Some("alice"), 950).await;
    assert_eq!(big.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        big.headers()["retry-after"],
        "4",
        "50 tokens refill in 3 s, rounded up... plus"
    );
    assert_eq!(
        send(&c, &url, Some("alice"), 10).await.status(),
        StatusCode::OK
    );
    let denied = send(&c, &url, Some("alice"), 10).await;
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.headers()["retry-after"],
        "31",
        "30 s and a hair, rounded up"
    );
    assert_eq!(denied.headers()["x-ratelimit-remaining-requests"], "0");
    assert!(denied.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"requests\";r=0;t=60"));

    // Another key has its own budgets; a cost beyond any burst is never admitted (413).
    assert_eq!(
        send(&c, &url, Some("bob"), 10).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&c, &url, Some("bob"), 5_000).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // No key: not limited by this layer (put an auth layer in front where that matters).
    for _ in 0..5 {
        assert_eq!(send(&c, &url, None, 10).await.status(), StatusCode::OK);
    }
}
