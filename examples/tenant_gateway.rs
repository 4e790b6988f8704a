//! A gateway in front of an LLM service that limits each tenant (by API key) to its own RPM
//! and TPM: axum, the `RateLimitLayer`, 429s with `Retry-After` and the rate-limit fields,
//! and the limiter's metrics exposed at `/metrics` in Prometheus' text format.
//!
//! `cargo run --example tenant_gateway --features tower,metrics` serves on an ephemeral port
//! of 127.0.0.1, sends itself a few requests as two tenants over real HTTP, prints what came
//! back and the metrics, and exits (nonzero if a limit did not hold). With `--serve ADDR` it
//! keeps serving on ADDR (e.g. `127.0.0.1:8080`) instead.
//!
//! Tenants: `free-*` keys get 5 requests and 2,000 tokens per minute; `pro-*` keys, set as
//! overrides, 50 and 100,000. A request's estimate is its `x-max-tokens` header (what it may
//! use at most); the fake model answers with the usage it reports, and the middleware
//! settles the estimate down to it.

use axum::{routing::get, routing::post, Extension, Router};
use http::HeaderName;
use ratekeeper::middleware::{header_key, ActualCost, RateLimitLayer};
use ratekeeper::{Cost, KeyedLimiter, Limit};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A minimal `metrics` recorder that keeps every series in memory and renders them in
/// Prometheus' text format (a real deployment installs `metrics-exporter-prometheus` or
/// another exporter instead; the limiter only talks to the `metrics` facade).
#[derive(Default)]
pub struct TextRecorder {
    series: Mutex<BTreeMap<String, Arc<Series>>>,
}

#[derive(Default)]
pub struct Series(AtomicU64);

impl metrics::CounterFn for Series {
    fn increment(&self, v: u64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    fn absolute(&self, v: u64) {
        self.0.fetch_max(v, Ordering::Relaxed);
    }
}

impl metrics::GaugeFn for Series {
    fn increment(&self, v: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::Relaxed)) + v);
    }
    fn decrement(&self, v: f64) {
        self.increment(-v);
    }
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
}

impl TextRecorder {
    fn series(&self, kind: &str, key: &metrics::Key) -> Arc<Series> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}=\"{}\"", l.key(), l.value()))
            .collect();
        let name = format!("{kind} {}{{{}}}", key.name(), labels.join(","));
        let mut m = self.series.lock().unwrap();
        m.entry(name).or_default().clone()
    }

    /// Every series, one `name{labels} value` line each.
    pub fn render(&self) -> String {
        let m = self.series.lock().unwrap();
        let mut out = String::new();
        for (name, s) in m.iter() {
            let (kind, name) = name.split_once(' ').unwrap();
            let v = s.0.load(Ordering::Relaxed);
            let v = if kind == "gauge" {
                f64::from_bits(v).to_string()
            } else {
                v.to_string()
            };
            out.push_str(&format!("{name} {v}\n"));
        }
        out
    }
}

impl metrics::Recorder for TextRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.series("counter", key))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.series("gauge", key))
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// The process's recorder, installed once.
pub fn recorder() -> &'static TextRecorder {
    static R: OnceLock<&'static TextRecorder> = OnceLock::new();
    R.get_or_init(|| {
        let r: &'static TextRecorder = Box::leak(Box::default());
        let _ = metrics::set_global_recorder(r);
        r
    })
}

/// The tenants' limiter: free tenants by default, `pro-*` keys as overrides.
pub fn tenants(pro: &[&str]) -> Arc<KeyedLimiter<String>> {
    let t = KeyedLimiter::<String>::builder(5, 2_000)
        .name("free")
        .build()
        .expect("valid limits");
    for key in pro {
        t.set_override(
            key.to_string(),
            &[Limit::requests(50), Limit::tokens(100_000)],
        )
        .expect("the class has these budgets");
    }
    Arc::new(t)
}

/// The estimate of a request: its `x-max-tokens` header (1,000 when absent or unreadable).
fn estimate(p: &http::request::Parts) -> Cost {
    let max = p
        .headers
        .get("x-max-tokens")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    Cost::from(max.unwrap_or(1_000u64))
}

/// The gateway: `/v1/chat/completions` behind the per-tenant limits, `/metrics` beside them.
pub fn app(tenants: Arc<KeyedLimiter<String>>) -> Router {
    recorder();
    let limited = Router::new()
        .route(
            "/v1/chat/completions",
            // The fake model uses a third of what the request allowed it.
            post(|headers: http::HeaderMap| async move {
                let max: u64 = headers
                    .get("x-max-tokens")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(1_000);
                let used = max / 3;
                (
                    Extension(ActualCost(Cost::from(used))),
                    format!("{{\"usage\":{{\"total_tokens\":{used}}}}}"),
                )
            }),
        )
        .layer(
            RateLimitLayer::new(tenants, header_key(HeaderName::from_static("x-api-key")))
                .cost(estimate)
                .x_ratelimit(true),
        );
    Router::new()
        .route("/metrics", get(|| async { recorder().render() }))
        .merge(limited)
}

#[allow(dead_code)] // the integration test includes this file for `app` alone
#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let app = app(tenants(&["pro-acme"]));
    if let Some(addr) = args
        .iter()
        .position(|a| a == "--serve")
        .and_then(|i| args.get(i + 1))
    {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        println!(
            "tenant gateway on http://{}",
            listener.local_addr().unwrap()
        );
        axum::serve(listener, app).await.expect("serve");
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    use http_body_util::{BodyExt, Full};
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let mut free_ok = 0;
    let mut pro_ok = 0;
    for i in 0..8 {
        for key in ["free-bob", "pro-acme"] {
            let req = http::Request::post(format!("{base}/v1/chat/completions"))
                .header("x-api-key", key)
                .header("x-max-tokens", "300")
                .body(Full::default())
                .unwrap();
            let resp = client.request(req).await.expect("request");
            let status = resp.status();
            let h = resp.headers().clone();
            let _ = resp.into_body().collect().await;
            let show = |n: &str| {
                h.get(n)
                    .map_or("-".into(), |v| v.to_str().unwrap_or("?").to_string())
            };
            println!(
                "{i} {key:<9} {status} remaining requests {} tokens {} retry-after {}",
                show("x-ratelimit-remaining-requests"),
                show("x-ratelimit-remaining-tokens"),
                show("retry-after")
            );
            if status.is_success() {
                if key == "free-bob" {
                    free_ok += 1
                } else {
                    pro_ok += 1
                }
            }
        }
    }
    let metrics = client
        .request(
            http::Request::get(format!("{base}/metrics"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .expect("metrics");
    let text = metrics
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    println!("--- /metrics\n{}", String::from_utf8_lossy(&text));
    if free_ok != 5 || pro_ok != 8 {
        eprintln!("free tenant admitted {free_ok} of 8 (limit 5), pro {pro_ok} of 8 (limit 50)");
        std::process::exit(1);
    }
    println!("free tenant: 5 of 8 admitted (5 RPM); pro tenant: 8 of 8 (50 RPM)");
}
