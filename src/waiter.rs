//! The async waiter: claim a slot with one CAS per bucket, compute the deadline, sleep once.
//!
//! A waiter moves each bucket's TAT forward by its units even when that lies in the future:
//! the claimed slot. The claim conforms at a reading the GCRA math computes exactly, so the
//! waiter sleeps on one tokio timer until then and is admitted without looking again. Claims
//! are ordered by their CAS, so waiters are admitted in claim order, each at its own deadline:
//! no polling loop, no thundering herd when the bucket refills.
//!
//! # Cancellation
//!
//! A waiter dropped before it is admitted gives its slot back under the refund rule of
//! [`gcra::refund`](crate::gcra): the bucket ends up no more permissive than if the claim had
//! never been made. Waiters that claimed after it keep their deadlines (they are never
//! delayed by a cancellation); the freed slot goes to the next claimer.
//!
//! # `set_limit` while waiting
//!
//! A claim's units are carried into the new limits as used, like any other units, and the
//! waiter keeps the deadline it computed under the limits it claimed under: it is admitted
//! exactly when those limits entitled it to be, never earlier. A claim dropped after a limit
//! change gives nothing back (its units were already carried over; keeping them is the
//! conservative choice).

use crate::clock::Clock;
use crate::error::Budget;
use crate::error::Error;
use crate::limiter::{refusal_error, Permit, TokenBucketLimiter};
use std::future::Future;
use std::pin::pin;
use std::task::Poll;

/// A claimed but not yet admitted permit; dropping it gives the claim back.
struct Pending<'a, C: Clock> {
    limiter: &'a TokenBucketLimiter<C>,
    permit: Option<Permit>,
    ready_ns: u64,
}

impl<C: Clock> Pending<'_, C> {
    async fn admitted(mut self) -> Permit {
        sleep_until(&self.limiter.clock, self.ready_ns).await;
        self.permit
            .take()
            .expect("a pending permit is admitted once")
    }
}

impl<C: Clock> Drop for Pending<'_, C> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            let now = self.limiter.clock.now();
            self.limiter.give_back(p.request, p.token, p.tokens, now);
        }
    }
}

/// Sleeps until `clock` reads `ns`; returns at once, without yielding, if it already does.
async fn sleep_until<C: Clock>(clock: &C, ns: u64) {
    if clock.now() >= ns {
        return;
    }
    let at = tokio::time::Instant::from_std(clock.instant_at(ns));
    tokio::time::sleep_until(at).await;
}

impl<C: Clock> TokenBucketLimiter<C> {
    /// Claims one request and `tokens` tokens at `now`, conforming by reading `by`.
    fn claim_at(&self, now: u64, tokens: u64, by: u64) -> Result<Pending<'_, C>, Error> {
        // Reject the impossible before claiming anything.
        let burst = self.tokens.view().limits;
        if burst.rate.is_some() && tokens > burst.burst {
            return Err(Error::InsufficientCapacity {
                budget: Budget::Tokens,
                requested: tokens,
                capacity: burst.burst,
            });
        }
        loop {
            let r = self
                .requests
                .claim(now, 1, by)
                .map_err(|e| refusal_error(Budget::Requests, e, now, 1))?;
            let t = match self.tokens.claim(now, tokens, by) {
                Ok(t) => t,
                Err(e) => {
                    self.requests.refund(r.grant, 1, || self.refund_time(now));
                    return Err(refusal_error(Budget::Tokens, e, now, tokens));
                }
            };
            let permit = Permit {
                tokens,
                request: r.grant,
                token: t.grant,
            };
            if r.grant.version != t.grant.version {
                // Straddles a limit change: give back, claim again under one version.
                self.give_back(permit.request, permit.token, tokens, now);
                continue;
            }
            return Ok(Pending {
                limiter: self,
                permit: Some(permit),
                ready_ns: r.ready_ns.max(t.ready_ns),
            });
        }
    }

    /// Waits until one request and `tokens` tokens are granted together, in claim order.
    ///
    /// Claims the slot at once and sleeps exactly once, until the computed deadline. Dropping
    /// the future gives the slot back. More tokens than the token burst fails at once with
    /// [`Error::InsufficientCapacity`].
    pub async fn acquire(&self, tokens: u64) -> Result<Permit, Error> {
        let pending = self.claim_at(self.clock.now(), tokens, u64::MAX)?;
        Ok(pending.admitted().await)
    }

    /// [`acquire`](Self::acquire), but only if the wait would end within `max_wait`.
    ///
    /// When the computed deadline lies further out, returns [`Error::RateLimitExceeded`] at
    /// once, without sleeping and without claiming anything (like Go's `WaitN` with a context
    /// deadline).
    pub async fn acquire_within(
        &self,
        tokens: u64,
        max_wait: std::time::Duration,
    ) -> Result<Permit, Error> {
        let now = self.clock.now();
        let wait = u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX);
        let pending = self.claim_at(now, tokens, now.saturating_add(wait))?;
        Ok(pending.admitted().await)
    }

    /// [`acquire`](Self::acquire) that ends early with [`Error::Cancelled`] when `cancel`
    /// completes first (a client that hung up, a shutdown signal); the slot is given back.
    pub async fn acquire_until<F: Future>(&self, tokens: u64, cancel: F) -> Result<Permit, Error> {
        let pending = self.claim_at(self.clock.now(), tokens, u64::MAX)?;
        let mut admitted = pin!(pending.admitted());
        let mut cancel = pin!(cancel);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(p) = admitted.as_mut().poll(cx) {
                return Poll::Ready(Ok(p));
            }
            if cancel.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Error::Cancelled));
            }
            Poll::Pending
        })
        .await
    }

    /// Waits until one request (no tokens) is granted.
    pub async fn wait(&self) -> Result<(), Error> {
        self.acquire(0).await.map(drop)
    }

    /// Records `tokens` actually used (outside a permit) and, if that runs the token budget
    /// into debt, waits until the debt is paid off. The usage counts from the start: dropping
    /// the future stops the wait, not the charge (the tokens were spent).
    pub async fn consume_tokens(&self, tokens: u64) -> Result<(), Error> {
        let ready = self.charge_tokens_at(self.clock.now(), tokens);
        sleep_until(&self.clock, ready).await;
        Ok(())
    }
}
