//! Shared by the hostile-header tests: a limiter wrapper that counts every call learning makes
//! (the bound on learning's work is asserted on these counts, not on a clock), and a
//! single-poll executor (learning must complete without ever waiting). [`limits`] and
//! [`remaining`] are the only places these tests read a `Usage`.

// Each test crate that includes this module uses a part of it.
#![allow(dead_code)]

use ratekeeper::{Cost, Error, Limit, ManualClock, RateLimiter, TokenBucketLimiter, Usage};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

pub type Manual = TokenBucketLimiter<Arc<ManualClock>>;

/// Every `RateLimiter` call made through it, by method.
#[derive(Debug, Default)]
pub struct Calls {
    pub usage: AtomicU64,
    pub set_limit: AtomicU64,
    pub charge: AtomicU64,
    /// Units passed to `charge`, requests and tokens together (saturating).
    pub charged_units: AtomicU64,
    /// Any call that admits, waits or refunds: learning must make none.
    pub other: AtomicU64,
}

impl Calls {
    pub fn get(&self) -> (u64, u64, u64, u64) {
        (
            self.usage.load(Ordering::Relaxed),
            self.set_limit.load(Ordering::Relaxed),
            self.charge.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }

    pub fn reset(&self) {
        for c in [
            &self.usage,
            &self.set_limit,
            &self.charge,
            &self.charged_units,
            &self.other,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// A limiter that counts the calls made through it and forwards them.
pub struct Counting {
    pub inner: Manual,
    pub calls: Calls,
}

impl Counting {
    pub fn new(clock: &Arc<ManualClock>, rpm: u64, tpm: u64) -> Arc<Self> {
        let inner = TokenBucketLimiter::builder(rpm, tpm)
            .clock(clock.clone())
            .build()
            .unwrap();
        Arc::new(Counting {
            inner,
            calls: Calls::default(),
        })
    }

    fn other(&self) {
        self.calls.other.fetch_add(1, Ordering::Relaxed);
    }
}

impl RateLimiter for Counting {
    type Permit = ratekeeper::Permit;
    async fn allow(&self) -> bool {
        self.other();
        self.inner.allow()
    }
    async fn wait(&self) -> Result<(), Error> {
        self.other();
        RateLimiter::wait(&self.inner).await
    }
    async fn set_limit(&self, rpm: u64, tpm: u64) -> Result<(), Error> {
        self.calls.set_limit.fetch_add(1, Ordering::Relaxed);
        RateLimiter::set_limit(&self.inner, rpm, tpm).await
    }
    async fn set_limits(&self, limits: &[Limit]) -> Result<(), Error> {
        self.calls.set_limit.fetch_add(1, Ordering::Relaxed);
        RateLimiter::set_limits(&self.inner, limits).await
    }
    async fn usage(&self) -> Result<Usage, Error> {
        self.calls.usage.fetch_add(1, Ordering::Relaxed);
        Ok(self.inner.usage())
    }
    /// Counted with `usage`: both only read.
    async fn limits(&self) -> Result<Vec<Limit>, Error> {
        self.calls.usage.fetch_add(1, Ordering::Relaxed);
        Ok(self.inner.limits())
    }
    async fn peek(&self, cost: impl Into<Cost> + Send) -> bool {
        self.other();
        self.inner.peek(cost)
    }
    async fn consume_tokens(&self, cost: impl Into<Cost> + Send) -> Result<(), Error> {
        self.other();
        RateLimiter::consume_tokens(&self.inner, cost).await
    }
    async fn charge(&self, requests: u64, cost: impl Into<Cost> + Send) -> Result<(), Error> {
        let cost = cost.into();
        self.calls.charge.fetch_add(1, Ordering::Relaxed);
        let units = requests.saturating_add(cost.total());
        let _ = self
            .calls
            .charged_units
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_add(units))
            });
        RateLimiter::charge(&self.inner, requests, cost).await
    }
    async fn try_acquire(&self, cost: impl Into<Cost> + Send) -> Result<ratekeeper::Permit, Error> {
        self.other();
        self.inner.try_acquire(cost)
    }
    async fn acquire_within(
        &self,
        cost: impl Into<Cost> + Send,
        max_wait: std::time::Duration,
    ) -> Result<ratekeeper::Permit, Error> {
        self.other();
        RateLimiter::acquire_within(&self.inner, cost, max_wait).await
    }
    async fn settle(
        &self,
        permit: ratekeeper::Permit,
        actual: impl Into<Cost> + Send,
    ) -> Result<(), Error> {
        self.other();
        self.inner.settle(permit, actual)
    }
}

fn noop_waker() -> Waker {
    const VTABLE: RawWakerVTable = RawWakerVTable::new(|_| RAW, |_| {}, |_| {}, |_| {});
    const RAW: RawWaker = RawWaker::new(std::ptr::null(), &VTABLE);
    // SAFETY: every vtable function ignores the (null) data pointer.
    unsafe { Waker::from_raw(RAW) }
}

/// Polls `f` once and returns its output; panics if it was not ready: it would have waited
/// (on a timer, a lock, another task), which learning on an in-process limiter must never do.
pub fn ready<F: Future>(f: F) -> F::Output {
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the future was not ready at its first poll: it waits"),
    }
}

/// `(requests, tokens)` limits of `l` now (`0`: unlimited).
pub fn limits(l: &Manual) -> (u64, u64) {
    let u = l.usage();
    (
        u.requests().map_or(0, |b| b.limit),
        u.tokens().map_or(0, |b| b.limit),
    )
}

/// `(requests, tokens)` that `l` could admit now (`u64::MAX`: unlimited).
pub fn remaining(l: &Manual) -> (u64, u64) {
    let u = l.usage();
    (
        u.requests().map_or(u64::MAX, |b| b.remaining),
        u.tokens().map_or(u64::MAX, |b| b.remaining),
    )
}
