//! `Observed` reports what a limiter admits, denies, waits for and gets back, and gauges of
//! what remains that leave unlimited budgets out.

use ratekeeper::observed::Observed;
use ratekeeper::{ManualClock, RateLimiter, TokenBucketLimiter};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Every series by `name{label=value,...}`: counters as counts, gauges as f64 bits,
/// histograms as the number of samples.
#[derive(Default)]
struct Recorder(Mutex<BTreeMap<String, Arc<Cell>>>);
#[derive(Default)]
struct Cell(AtomicU64);

impl metrics::CounterFn for Cell {
    fn increment(&self, v: u64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    fn absolute(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}
impl metrics::GaugeFn for Cell {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
}
impl metrics::HistogramFn for Cell {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Recorder {
    fn cell(&self, key: &metrics::Key) -> Arc<Cell> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.0.lock().unwrap().entry(name).or_default().clone()
    }
    fn get(&self, name: &str) -> Option<u64> {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map(|c| c.0.load(Ordering::Relaxed))
    }
}

impl metrics::Recorder for Recorder {
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
    fn register_counter(&self, k: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.cell(k))
    }
    fn register_gauge(&self, k: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.cell(k))
    }
    fn register_histogram(
        &self,
        k: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.cell(k))
    }
}

#[test]
fn an_observed_limiter_counts_units_and_gauges_only_limited_budgets() {
    let rec = Recorder::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&rec, || {
        rt.block_on(async {
            let clock = Arc::new(ManualClock::new(0));
            // 2 requests per minute, tokens unlimited.
            let l = Observed::new(
                TokenBucketLimiter::builder(2, 0)
                    .clock(clock)
                    .build()
                    .unwrap(),
                "openai",
            );
            let p = l.try_acquire(500).await.unwrap();
            l.settle(p, 200).await.unwrap();
            let _ = l.try_acquire(0).await.unwrap();
            assert!(l.try_acquire(10).await.is_err());
            assert!(!l.allow().await);
            let u = l.usage().await.unwrap();
            assert_eq!(u.requests().unwrap().remaining, 0);
        })
    });
    let c = |n: &str| rec.get(n).unwrap_or_else(|| panic!("{n} missing"));
    assert_eq!(
        c("ratekeeper_admitted_units_total{class=openai,budget=requests}"),
        2
    );
    assert_eq!(
        c("ratekeeper_admitted_units_total{class=openai,budget=tokens}"),
        500
    );
    assert_eq!(
        c("ratekeeper_refunded_units_total{class=openai,budget=tokens}"),
        300
    );
    assert_eq!(
        c("ratekeeper_denied_total{class=openai,budget=requests}"),
        2
    );
    let remaining = c("ratekeeper_remaining_units{class=openai,budget=requests,window=60s}");
    assert_eq!(f64::from_bits(remaining), 0.0);
    assert!(
        rec.get("ratekeeper_remaining_units{class=openai,budget=tokens,window=60s}")
            .is_none(),
        "an unlimited budget has no gauge"
    );
}

#[test]
fn waiting_is_counted_apart_and_timed() {
    let rec = Recorder::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&rec, || {
        rt.block_on(async {
            let l = Observed::new(
                TokenBucketLimiter::builder(1, 0)
                    .clock(ratekeeper::TokioClock::new())
                    .build()
                    .unwrap(),
                "slow",
            );
            let _ = l.try_acquire(0).await.unwrap();
            let start = tokio::time::Instant::now();
            let _ = l.acquire(7).await.unwrap();
            assert!(start.elapsed() >= std::time::Duration::from_secs(59));
        })
    });
    let c = |n: &str| rec.get(n).unwrap_or_else(|| panic!("{n} missing"));
    assert_eq!(
        c("ratekeeper_admitted_units_total{class=slow,budget=requests}"),
        1
    );
    assert_eq!(
        c("ratekeeper_waited_units_total{class=slow,budget=requests}"),
        1
    );
    assert_eq!(
        c("ratekeeper_waited_units_total{class=slow,budget=tokens}"),
        7
    );
    assert_eq!(
        c("ratekeeper_wait_seconds{class=slow}"),
        1,
        "one wait recorded"
    );
}
