//! A slot claimed in Redis for a later release: the waiting half of `acquire` and `wait`.

use super::{RedisLimiter, RedisPermit};
use crate::error::Error;
use std::time::Duration;

/// A slot claimed in Redis: one request and some tokens, placed in every bucket for one
/// release instant, [`ready_at_us`](Self::ready_at_us). Made by [`RedisLimiter::claim`].
///
/// [`wait`](Self::wait) sleeps until then and yields the permit (that is all
/// [`RedisLimiter::acquire`] does). Dropping the claim before, or
/// [`cancel`](Self::cancel), gives the slot back under the refund rule; a claim dropped
/// without a tokio runtime, or while Redis is unreachable, keeps its slot (under-admitting,
/// never over).
#[must_use = "dropping a claim gives its slot back"]
#[derive(Debug)]
pub struct RedisClaim {
    limiter: RedisLimiter,
    permit: Option<RedisPermit>,
    /// Redis time when the slot was claimed, µs since the ratekeeper epoch.
    claimed_us: u64,
    ready_us: u64,
}

impl RedisClaim {
    pub(super) fn new(
        limiter: RedisLimiter,
        permit: RedisPermit,
        claimed_us: u64,
        ready_us: u64,
    ) -> Self {
        RedisClaim {
            limiter,
            permit: Some(permit),
            claimed_us,
            ready_us,
        }
    }

    /// The release instant: Redis time (µs since 2025-01-01T00:00:00Z) at which the slot
    /// conforms in every bucket.
    pub fn ready_at_us(&self) -> u64 {
        self.ready_us
    }

    /// How long the caller waits: from the claim to its release instant, by Redis time.
    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.ready_us.saturating_sub(self.claimed_us))
    }

    /// Sleeps until the release instant and returns the permit. Dropping the future before
    /// then gives the slot back.
    pub async fn wait(self) -> RedisPermit {
        tokio::time::sleep(self.delay()).await;
        self.into_permit()
    }

    /// The permit, for a caller that waits until [`ready_at_us`](Self::ready_at_us) by
    /// itself (e.g. on a clock of its own). Using it earlier sends the request before its
    /// slot: the limits are then only as good as the caller's patience.
    pub fn into_permit(mut self) -> RedisPermit {
        self.permit.take().expect("a claim yields its permit once")
    }

    /// Gives the slot back now, waiting for Redis to confirm.
    pub async fn cancel(mut self) -> Result<(), Error> {
        match self.permit.take() {
            Some(p) => self.limiter.give_back(&p).await,
            None => Ok(()),
        }
    }
}

impl Drop for RedisClaim {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        // Drop cannot await: the refund runs in a task. Without a runtime the slot stays
        // claimed, which only under-admits.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let limiter = self.limiter.clone();
            handle.spawn(async move {
                let _ = limiter.give_back(&permit).await;
            });
        }
    }
}
