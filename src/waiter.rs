//! The async waiter: reserve a slot with one CAS per budget, compute the deadline, sleep once.
//!
//! A waiter moves each budget's TAT forward even when that lies in the future: the reserved
//! slot. Every budget's slot is placed for the same instant, the deadline (see `take.rs`), so
//! the waiter sleeps on one tokio timer until then and is admitted without looking again.
//! Reservations are ordered by their CAS, so waiters are admitted in reservation order, each at
//! its own deadline: no polling loop, no thundering herd when a bucket refills.
//!
//! # When a waiter is admitted
//!
//! At its deadline ([`Reservation::ready_at_ns`]): that is the instant every guarantee counts
//! it at, however late its timer fires. A reservation cancelled (dropped) before it is turned
//! into a permit is not an admission, and gives its slot back.
//!
//! # Cancellation, and what it costs
//!
//! A slot given back is refunded under the refund rule (`gcra::refund`): the bucket ends up no
//! more permissive than if the reservation had never been made, every other caller keeping its
//! own release instant. Waiters reserved after it keep their deadlines (they are never delayed
//! by a cancellation). So what a cancelled slot frees goes to later callers only as far as the
//! waiters behind it leave room: each may be moved up by its *slack* (the room its budget's
//! burst leaves beside it) and no further. A slot cancelled at the tail of the queue comes back
//! whole; one cancelled with a queue behind it partly or not at all.
//!
//! A caller with limited patience should therefore say so up front:
//! [`acquire_within`](TokenBucketLimiter::acquire_within) (or [`reserve_at`] with a `by`)
//! refuses a wait that would be longer, reserving nothing, whereas a reservation dropped after
//! a timeout may leave a slot nobody can use. Under a workload where most waiters give up
//! before their deadlines, those slots run the queue ahead of the clock.
//!
//! [`reserve_at`]: TokenBucketLimiter::reserve_at
//!
//! # A waiter held up by one budget
//!
//! Every budget's slot is placed at the release instant, so a waiter held up by its tokens
//! takes its request slot at its deadline, not now: a request-only caller in between sees the
//! request budget spent up to that instant (`max(tat, rho) + n` restarts the request bucket's
//! single TAT there). That is the price of one word per bucket, and it only ever errs on the
//! side of admitting less.
//!
//! # Limit changes while waiting
//!
//! A reservation's units are carried into the new limits as used, like any other units, and
//! the waiter keeps the deadline it computed under the limits it reserved under: it is admitted
//! exactly when those limits entitled it to be, never earlier. A reservation dropped after a
//! limit change gives nothing back (its units were already carried over; keeping them is the
//! conservative choice).

use crate::budget::Cost;
use crate::clock::Clock;
use crate::error::Error;
use crate::limiter::{Permit, TokenBucketLimiter};
use crate::take::Ask;
use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// A reserved slot: one request and its cost, taken from every budget and conforming at
/// [`ready_at_ns`](Self::ready_at_ns). `x/time/rate`'s `Reservation`, without the lock.
///
/// Turn it into a [`Permit`] once the clock reads `ready_at_ns` ([`TokenBucketLimiter::acquire`]
/// does this for you, sleeping once). Dropping it, or [`cancel`](Self::cancel), gives the slot
/// back under the safe refund rule.
#[must_use = "dropping a reservation gives its slot back"]
#[derive(Debug)]
pub struct Reservation<'a, C: Clock> {
    limiter: &'a TokenBucketLimiter<C>,
    permit: Option<Permit>,
    ready_ns: u64,
}

impl<C: Clock> Reservation<'_, C> {
    /// The clock reading at which the slot conforms: the waiter's deadline, and the instant it
    /// counts as admitted at.
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

    /// Gives the slot back at clock reading `now` (the latest of `now`, the limiter's clock
    /// and every `*_at` reading is used, as for every refund).
    pub fn cancel_at(mut self, now: u64) {
        self.limiter.note_reading(now);
        if let Some(p) = self.permit.take() {
            self.limiter.give_back(&p, now);
        }
    }
}

impl<C: Clock> Drop for Reservation<'_, C> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            let now = self.limiter.clock.now();
            self.limiter.give_back(&p, now);
        }
    }
}

impl<C: Clock> TokenBucketLimiter<C> {
    /// Reserves one request of `cost` on every budget now, whether or not it fits yet: the
    /// slot conforms at the reservation's deadline. Fails only when the cost exceeds what a
    /// budget can ever hold (its burst) ([`Error::InsufficientCapacity`]).
    ///
    /// This is the waiting form of [`try_acquire`](Self::try_acquire); to ask whether a call
    /// would fit without taking anything, [`peek`](Self::peek).
    pub fn reserve(&self, cost: impl Into<Cost>) -> Result<Reservation<'_, C>, Error> {
        self.reserve_now(self.now(), cost.into(), u64::MAX)
    }

    /// Reserves at clock reading `now`, only if the slot conforms by reading `by` (`u64::MAX`:
    /// whenever). A slot that would conform later is refused with
    /// [`Error::RateLimitExceeded`] and nothing is reserved.
    pub fn reserve_at(
        &self,
        now: u64,
        cost: impl Into<Cost>,
        by: u64,
    ) -> Result<Reservation<'_, C>, Error> {
        self.note_reading(now);
        self.reserve_now(now, cost.into(), by)
    }

    fn reserve_now(&self, now: u64, cost: Cost, by: u64) -> Result<Reservation<'_, C>, Error> {
        let taken = self.take(now, Ask::request(cost), by)?;
        Ok(Reservation {
            limiter: self,
            permit: Some(Permit {
                limiter: self.id(),
                version: taken.version,
                cost,
                grants: taken.grants,
            }),
            ready_ns: taken.rho,
        })
    }
}

/// Sleeps until `clock` reads `ns`; returns at once, without yielding, if it already does.
async fn sleep_until<C: Clock>(clock: &C, ns: u64) {
    // Normally one sleep. The loop guards against a clock that runs a little slower than
    // tokio's timer (a calibrated TSC drifts by parts per million): never release early.
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
    /// Waits until one request of `cost` is granted on every budget together, in reservation
    /// order.
    ///
    /// Reserves the slot at once and sleeps exactly once, until the computed deadline.
    /// Dropping the future gives the slot back. More than a budget's burst fails at once with
    /// [`Error::InsufficientCapacity`].
    pub async fn acquire(&self, cost: impl Into<Cost>) -> Result<Permit, Error> {
        Ok(self.reserve(cost)?.ready().await)
    }

    /// [`acquire`](Self::acquire), but only if the wait would end within `max_wait`.
    ///
    /// When the computed deadline lies further out, returns [`Error::RateLimitExceeded`] at
    /// once, without sleeping and without reserving anything (like Go's `WaitN` with a
    /// context deadline).
    pub async fn acquire_within(
        &self,
        cost: impl Into<Cost>,
        max_wait: Duration,
    ) -> Result<Permit, Error> {
        let now = self.now();
        let wait = u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX);
        let r = self.reserve_now(now, cost.into(), now.saturating_add(wait))?;
        Ok(r.ready().await)
    }

    /// [`acquire`](Self::acquire) that ends with [`Error::Cancelled`] when `cancel` completes
    /// first (a client that hung up, a shutdown signal); the slot is given back. A `cancel`
    /// that is already complete wins, even over a slot that is free now.
    pub async fn acquire_until<F: Future>(
        &self,
        cost: impl Into<Cost>,
        cancel: F,
    ) -> Result<Permit, Error> {
        let mut admitted = pin!(self.reserve(cost)?.ready());
        let mut cancel = pin!(cancel);
        std::future::poll_fn(|cx| {
            // The cancel first: a caller that has already given up must not be admitted.
            if cancel.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Error::Cancelled));
            }
            admitted.as_mut().poll(cx).map(Ok)
        })
        .await
    }

    /// Waits until one request (no tokens) is granted.
    pub async fn wait(&self) -> Result<(), Error> {
        self.acquire(Cost::ZERO).await.map(drop)
    }

    /// Records `cost` actually used (outside a permit) and, if that runs a budget into debt,
    /// waits until the debt is paid off. The usage counts from the start: dropping the future
    /// stops the wait, not the charge (the tokens were spent).
    pub async fn consume_tokens(&self, cost: impl Into<Cost>) -> Result<(), Error> {
        let now = self.now();
        let ready = self.charge_now(now, 0, cost.into());
        sleep_until(&self.clock, ready).await;
        Ok(())
    }
}
