//! One message's way through the consumer: filter, idempotency claim, the sink, then
//! acknowledge, retry or dead-letter, and settle it with the broker exactly once.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{Shared, idempotency::Claim, metrics::Settled, sink::Failure};
use crate::{
    api::Ordering,
    broker::{
        BrokerError,
        subscriber::{Delivery, Subscriber},
    },
    dlq::DeadLetter,
    message::glob_matches,
};

/// How long a message waits when another delivery of the same id holds the claim.
pub(crate) const BUSY_WAIT: Duration = Duration::from_secs(5);

/// What one attempt came to.
pub(crate) enum Attempt {
    Settled(Settled),
    /// Try again after at least this long (the failure and the wait it asks for).
    Failed(Failure),
    /// Another delivery of this id is in progress.
    Busy,
    /// The idempotency store could not answer; nothing was sent.
    StoreDown(String),
    /// Stopping before the sink was called: the message stays the broker's, unsettled.
    Stopped,
}

/// Delivers one message and settles it with the broker, unless stopped before the sink was
/// called. `Err` means the broker could not be told (the message is still the broker's and
/// comes back).
pub(crate) async fn deliver(
    shared: &Shared,
    subscriber: &Arc<dyn Subscriber>,
    delivery: Delivery,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let work = deliver_held(shared, subscriber.as_ref(), &delivery, shutdown);
    with_keep_alive(subscriber.as_ref(), &delivery, shared.ack_timeout, work).await
}

async fn deliver_held(
    shared: &Shared,
    subscriber: &dyn Subscriber,
    delivery: &Delivery,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let max_attempts = u32::try_from(shared.config.retry.max_attempts.max(1)).unwrap_or(1);
    // Per-key ordering retries in place, holding the key: later messages of the key must not
    // overtake this one, which a re-queued copy at the broker would let them do. Attempts the
    // broker counted (redeliveries) carry over; the waits between in-place attempts do not
    // survive a restart, and the broker then redelivers the message at once.
    let in_place = shared.config.ordering == Ordering::PerKey;
    let mut attempt = delivery.attempt.max(1);
    loop {
        let (wait, failure) = match attempt_once(shared, delivery, shutdown).await {
            Attempt::Settled(settled) => {
                let started = Instant::now();
                subscriber.ack(delivery).await?;
                shared.metrics.observe_settle("ack", started.elapsed());
                shared.metrics.record(settled);
                return Ok(());
            }
            // Left to the broker like the messages received and not started.
            Attempt::Stopped => return Ok(()),
            Attempt::Busy => (BUSY_WAIT, None),
            Attempt::StoreDown(message) => {
                shared.health.set_database(false);
                shared
                    .health
                    .record_error("idempotency", format!("{}: {message}", delivery.id));
                (
                    shared
                        .backoff
                        .delay_for(attempt)
                        .max(Duration::from_millis(200)),
                    None,
                )
            }
            Attempt::Failed(failure) => {
                shared.metrics.record_failure(failure.category());
                if !failure.retryable(&shared.config.retry.retry_on) || attempt >= max_attempts {
                    if dead_letter(shared, subscriber, delivery, attempt, &failure).await? {
                        return Ok(());
                    }
                    // No dead-letter queue, or it failed: keep retrying at the longest wait.
                    (shared.backoff.max(), Some(failure))
                } else {
                    (retry_wait(shared, attempt, &failure), Some(failure))
                }
            }
        };
        if let Some(failure) = &failure {
            tracing::debug!(id = %delivery.id, attempt, %failure, ?wait, "delivery failed");
        }
        if !in_place || shutdown.is_cancelled() {
            let started = Instant::now();
            subscriber.retry(delivery, wait).await?;
            shared.metrics.observe_settle("retry", started.elapsed());
            shared.metrics.record(Settled::Retried);
            return Ok(());
        }
        shared.metrics.record(Settled::Retried);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => {
                // Stopping: the broker keeps the rest of the wait.
                subscriber.retry(delivery, wait).await?;
                return Ok(());
            }
        }
        attempt += 1;
    }
}

/// The backoff for the next attempt, or what `Retry-After` asked for when longer (up to the
/// policy's cap).
pub(crate) fn retry_wait(shared: &Shared, attempt: u32, failure: &Failure) -> Duration {
    let computed = shared.backoff.delay_for(attempt);
    match failure.retry_after() {
        Some(asked) if shared.config.retry.honor_retry_after => {
            computed.max(asked.min(shared.backoff.max()))
        }
        _ => computed,
    }
}

/// One attempt: the filter, the claim (outside a delivery slot), then the sink and its record
/// inside one (see `slots`).
pub(crate) async fn attempt_once(
    shared: &Shared,
    delivery: &Delivery,
    stop: &CancellationToken,
) -> Attempt {
    let event_types = &shared.config.event_types;
    if !event_types.is_empty()
        && !event_types
            .iter()
            .any(|pattern| glob_matches(pattern, &delivery.event_type))
    {
        return Attempt::Settled(Settled::Filtered);
    }
    let Some(ahead) = shared.slots.claim(stop).await else {
        return Attempt::Stopped;
    };
    if let Some(store) = &shared.idempotency {
        match store.claim(&delivery.id).await {
            Ok(Claim::Owned) => shared.health.set_database(true),
            Ok(Claim::Done) => return Attempt::Settled(Settled::Deduplicated),
            Ok(Claim::Busy) => return Attempt::Busy,
            Err(error) => return Attempt::StoreDown(error.to_string()),
        }
    }
    let Some(_slot) = shared.slots.sink(stop).await else {
        release(shared, &delivery.id).await;
        return Attempt::Stopped;
    };
    drop(ahead);
    shared.metrics.in_flight.inc();
    let started = std::time::Instant::now();
    let sent = shared.sink.send(delivery).await;
    shared.metrics.observe_sink(started.elapsed());
    shared.metrics.in_flight.dec();
    match sent {
        Ok(_) => {
            if let Some(store) = &shared.idempotency {
                record_done(shared, store, &delivery.id).await;
            }
            Attempt::Settled(Settled::Delivered)
        }
        Err(failure) => {
            release(shared, &delivery.id).await;
            Attempt::Failed(failure)
        }
    }
}

/// Gives up this delivery's claim, so a retry or a copy can take it.
async fn release(shared: &Shared, id: &str) {
    if let Some(store) = &shared.idempotency
        && let Err(error) = store.release(id).await
    {
        // The claim expires with its lease; until then a copy waits.
        tracing::warn!(%id, %error, "cannot release an idempotency claim");
    }
}

/// Records a delivered id, trying a few times: the sink has done its work, so the message is
/// acknowledged either way, and a record that could not be written only leaves a later copy
/// to the service's own check on `Idempotency-Key`.
async fn record_done(shared: &Shared, store: &super::idempotency::BatchedStore, id: &str) {
    for wait_ms in [0, 50, 250, 1000] {
        if wait_ms > 0 {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        }
        match store.complete(id).await {
            Ok(()) => return,
            Err(error) => {
                shared
                    .health
                    .record_error(error.category(), error.to_string());
            }
        }
    }
    tracing::error!(%id, "delivered, but the idempotency record could not be written");
}

/// Stores the message in the dead-letter queue and acknowledges it. `false` when there is no
/// dead-letter queue or it could not take the message: the caller keeps retrying.
async fn dead_letter(
    shared: &Shared,
    subscriber: &dyn Subscriber,
    delivery: &Delivery,
    attempts: u32,
    failure: &Failure,
) -> Result<bool, BrokerError> {
    let Some(store) = &shared.dead_letters else {
        return Ok(false);
    };
    let letter = letter_of(shared, delivery, attempts, failure);
    match store.put(&letter).await {
        Ok(()) => {
            shared.metrics.dead_letter_depth.recount();
            subscriber.ack(delivery).await?;
            shared.metrics.record(Settled::DeadLettered);
            tracing::warn!(id = %delivery.id, attempts, error = %failure, "dead-lettered");
            Ok(true)
        }
        Err(error) => {
            shared.health.record_error("dead_letter", error.to_string());
            tracing::error!(id = %delivery.id, %error, "cannot store a dead letter; retrying the message");
            Ok(false)
        }
    }
}

/// The dead letter of a message that failed for good.
pub(crate) fn letter_of(
    shared: &Shared,
    delivery: &Delivery,
    attempts: u32,
    failure: &Failure,
) -> DeadLetter {
    let now = Utc::now();
    DeadLetter {
        origin: shared.config.consumer.origin(),
        message_id: delivery.id.clone(),
        event_type: delivery.event_type.clone(),
        message_key: delivery.key.clone(),
        headers: delivery.headers.clone(),
        body: delivery.body.clone(),
        attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
        // The first failure's time is not carried through the broker; the store keeps the
        // earliest it has seen for this message.
        first_failed_at: now,
        last_failed_at: now,
        last_error: failure.to_string(),
        error_category: failure.category().to_owned(),
        http_status: failure.http_status().map(i32::from),
        fingerprint: String::new(),
    }
    .finish()
}

/// Runs `work` while extending the broker's hold on the message every third of
/// `ack_timeout`, so a slow sink or an in-place retry does not hand it to another replica.
async fn with_keep_alive<T>(
    subscriber: &dyn Subscriber,
    delivery: &Delivery,
    ack_timeout: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    let period = (ack_timeout / 3).max(Duration::from_millis(100));
    // The first tick a period from now: an interval's immediate first tick still goes through
    // the timer wheel, which costs about a millisecond per message.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tokio::pin!(work);
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = ticker.tick() => {
                if let Err(error) = subscriber.extend(delivery).await {
                    tracing::debug!(%error, id = %delivery.id, "cannot extend a message's hold");
                }
            }
        }
    }
}
