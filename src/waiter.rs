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
use crate::error::{Budget, Error};
use crate::limiter::{refusal_error, Permit, TokenBucketLimiter};
use std::time::Duration;

/// A claimed slot: one request and some tokens, taken from both buckets and conforming at
/// [`ready_at_ns`](Self::ready_at_ns). Go's `Reservation`, without the lock.
///
/// Turn it into a [`Permit`] once the clock reads `ready_at_ns` ([`TokenBucketLimiter::acquire`]
/// does this for you, sleeping once). Dropping it, or [`cancel`](Self::cancel), gives the
/// slot back under the safe refund rule.
#[must_use = "dropping a reservation gives its slot back"]
#[derive(Debug)]
pub struct Reservation<'a, C: Clock> {
    limiter: &'a TokenBucketLimiter<C>,
    permit: Option<Permit>,
    ready_ns: u64,
}

impl<C: Clock> Reservation<'_, C> {
    /// The clock reading at which the slot conforms (the waiter's deadline).
    pub fn ready_at_ns(&self) -> u64 {
        self.ready_ns
    }

    /// How long from clock reading `now` until the slot conforms.
    pub fn delay_from(&self, now: u64) -> Duration {
        Duration::from_nanos(self.ready_ns.saturating_sub(now))
    }

    /// The permit, for a caller that has waited until [`ready_at_ns`](Self::ready_at_ns).
    /// Using it earlier sends the request before its slot: the limits are then only as good
    /// as the caller's patience.
    pub fn into_permit(mut self) -> Permit {
        self.permit
            .take()
            .expect("a reservation yields its permit once")
    }

    /// Gives the slot back now (the same as dropping the reservation).
    pub fn cancel(self) {}

    /// Gives the slot back at clock reading `now` (the later of `now` and the limiter's clock
    /// is used, as for every refund).
    pub fn cancel_at(mut self, now: u64) {
        if let Some(p) = self.permit.take() {
            self.limiter.give_back(p.request, p.token, p.tokens, now);
        }
    }
}

impl<C: Clock> Drop for Reservation<'_, C> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            let now = self.limiter.clock.now();
            self.limiter.give_back(p.request, p.token, p.tokens, now);
        }
    }
}

impl<C: Clock> TokenBucketLimiter<C> {
    /// Claims one request and `tokens` tokens now, whether or not they are there yet.
    /// Fails only when `tokens` exceeds what the token bucket can ever hold (its burst) ([`Error::InsufficientCapacity`]).
    pub fn claim(&self, tokens: u64) -> Result<Reservation<'_, C>, Error> {
        self.claim_at(self.clock.now(), tokens, u64::MAX)
    }

    /// Claims at clock reading `now`, only if the claim conforms by reading `by` (`u64::MAX`:
    /// whenever). A claim that would conform later is refused with
    /// [`Error::RateLimitExceeded`] and nothing is claimed.
    pub fn claim_at(&self, now: u64, tokens: u64, by: u64) -> Result<Reservation<'_, C>, Error> {
        // Reject the impossible before claiming anything.
        let capacity = self.tokens.view().capacity();
        if tokens > capacity {
            return Err(Error::InsufficientCapacity {
                budget: Budget::Tokens,
                requested: tokens,
                capacity,
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
                    self.requests.refund(r.grant, 1, || self.fresh_time(now));
                    return Err(refusal_error(Budget::Tokens, e, now, tokens));
                }
            };
            if r.grant.version != t.grant.version {
                // Straddles a limit change: give back, claim again under one version.
                self.give_back(r.grant, t.grant, tokens, now);
                self.await_limit_change();
                continue;
            }
            return Ok(Reservation {
                limiter: self,
                permit: Some(Permit {
                    tokens,
                    request: r.grant,
                    token: t.grant,
                }),
                ready_ns: r.ready_ns.max(t.ready_ns),
            });
        }
    }
}

#[cfg(not(loom))]
mod wait {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;

    /// Sleeps until `clock` reads `ns`; returns at once, without yielding, if it already does.
    async fn sleep_until<C: Clock>(clock: &C, ns: u64) {
        // Normally one sleep. The loop guards against a clock that runs a little slower than
        // tokio's timer (a calibrated TSC drifts by parts per million): never admit early.
        while clock.now() < ns {
            let at = tokio::time::Instant::from_std(clock.instant_at(ns));
            tokio::time::sleep_until(at).await;
        }
    }

    impl<C: Clock> Reservation<'_, C> {
        /// Sleeps once, until the slot conforms, and returns the permit.
        pub async fn ready(self) -> Permit {
            sleep_until(&self.limiter.clock, self.ready_ns).await;
            self.into_permit()
        }
    }

    impl<C: Clock> TokenBucketLimiter<C> {
        /// Waits until one request and `tokens` tokens are granted together, in claim order.
        ///
        /// Claims the slot at once and sleeps exactly once, until the computed deadline.
        /// Dropping the future gives the slot back. More tokens than the token burst fails at
        /// once with [`Error::InsufficientCapacity`].
        pub async fn acquire(&self, tokens: u64) -> Result<Permit, Error> {
            Ok(self.claim(tokens)?.ready().await)
        }

        /// [`acquire`](Self::acquire), but only if the wait would end within `max_wait`.
        ///
        /// When the computed deadline lies further out, returns [`Error::RateLimitExceeded`]
        /// at once, without sleeping and without claiming anything (like Go's `WaitN` with a
        /// context deadline).
        pub async fn acquire_within(
            &self,
            tokens: u64,
            max_wait: Duration,
        ) -> Result<Permit, Error> {
            let now = self.clock.now();
            let wait = u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX);
            let r = self.claim_at(now, tokens, now.saturating_add(wait))?;
            Ok(r.ready().await)
        }

        /// [`acquire`](Self::acquire) that ends early with [`Error::Cancelled`] when `cancel`
        /// completes first (a client that hung up, a shutdown signal); the slot is given back.
        pub async fn acquire_until<F: Future>(
            &self,
            tokens: u64,
            cancel: F,
        ) -> Result<Permit, Error> {
            let mut admitted = pin!(self.claim(tokens)?.ready());
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
        /// into debt, waits until the debt is paid off. The usage counts from the start:
        /// dropping the future stops the wait, not the charge (the tokens were spent).
        pub async fn consume_tokens(&self, tokens: u64) -> Result<(), Error> {
            let ready = self.charge_tokens_at(self.clock.now(), tokens);
            sleep_until(&self.clock, ready).await;
            Ok(())
        }
    }
}
