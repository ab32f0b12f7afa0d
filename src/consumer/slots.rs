//! The two limits on a delivery's way through the consumer: how many messages may hold an
//! idempotency claim while they wait for the sink, and how many may be at the sink.
//!
//! A delivery slot covers the sink call *and* the `done` record that follows it, so that a
//! consumer killed at any moment leaves at most `concurrency` messages that the sink accepted
//! without a record (the only ones a redelivery can repeat). The claim before and the broker
//! acknowledgement after run outside the slot: concurrent deliveries share those round trips
//! in batches instead of each holding a slot through three of them.
//!
//! Claims are limited to `concurrency` messages waiting for a slot, so a claim is never held
//! longer than one sink call plus its record before it is used: well within its lease.

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

pub(crate) struct Slots {
    claims: Semaphore,
    sink: Semaphore,
}

impl Slots {
    pub fn new(concurrency: u32) -> Self {
        let concurrency = concurrency.max(1) as usize;
        Self {
            claims: Semaphore::new(concurrency),
            sink: Semaphore::new(concurrency),
        }
    }

    /// Room to claim a message ahead of the sink; `None` on `stop`.
    pub async fn claim(&self, stop: &CancellationToken) -> Option<SemaphorePermit<'_>> {
        acquire(&self.claims, stop).await
    }

    /// A delivery slot; `None` on `stop`.
    pub async fn sink(&self, stop: &CancellationToken) -> Option<SemaphorePermit<'_>> {
        acquire(&self.sink, stop).await
    }
}

async fn acquire<'a>(
    semaphore: &'a Semaphore,
    stop: &CancellationToken,
) -> Option<SemaphorePermit<'a>> {
    tokio::select! {
        // Fair (first come, first served), so a claimed message waits for at most one round
        // of the slots ahead of it.
        permit = semaphore.acquire() => permit.ok(),
        () = stop.cancelled() => None,
    }
}
