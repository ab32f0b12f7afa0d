//! Replays from the dead-letter table: `ferry dlq replay` records a request, and the running
//! consumer whose dead letters they are takes them, delivers each through its normal path
//! (filter, idempotency, sink, retries in place per the policy), and records the outcome.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    Shared,
    deliver::{Attempt, BUSY_WAIT, attempt_once, letter_of, retry_wait},
    metrics::Settled,
};
use crate::{
    broker::subscriber::Delivery,
    dlq::{DeadLetterStore, record::StoredLetter, table::TableStore},
    retry::sleep_or_stop,
};

/// How often the table is asked for new requests.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Takes replay requests for this consumer until `shutdown`, up to `concurrency` at a time.
pub(crate) async fn serve_requests(
    shared: Arc<Shared>,
    replays: Arc<TableStore>,
    shutdown: CancellationToken,
) {
    let origin = shared.config.consumer.origin();
    let limit = shared.config.concurrency.max(1);
    loop {
        match replays.take_replay_requests(&origin, limit).await {
            Ok(letters) if !letters.is_empty() => {
                tracing::info!(count = letters.len(), "replaying dead letters");
                let mut running = JoinSet::new();
                for stored in letters {
                    let (shared, replays, shutdown) =
                        (shared.clone(), replays.clone(), shutdown.clone());
                    running
                        .spawn(async move { replay(&shared, &replays, stored, &shutdown).await });
                }
                while running.join_next().await.is_some() {}
                continue;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "cannot read replay requests");
            }
        }
        if !sleep_or_stop(POLL_INTERVAL, &shutdown).await {
            return;
        }
    }
}

/// Delivers one dead letter. Delivered: marked replayed. Failed for good: stored again, which
/// puts it back to waiting with the new error and keeps its replay history. Stopped midway:
/// left `replaying`, and taken again when its lease runs out.
async fn replay(
    shared: &Shared,
    replays: &TableStore,
    stored: StoredLetter,
    shutdown: &CancellationToken,
) {
    let delivery = Delivery::from_headers(
        stored.letter.headers.clone(),
        stored.letter.body.clone(),
        Box::new(()),
    );
    let max_attempts = u32::try_from(shared.config.retry.max_attempts.max(1)).unwrap_or(1);
    let mut attempt = 1;
    loop {
        let wait = match attempt_once(shared, &delivery, shutdown).await {
            Attempt::Settled(settled) => {
                if settled == Settled::Delivered {
                    shared.metrics.record(Settled::Delivered);
                }
                match replays.mark_replayed(stored.seq).await {
                    Ok(true) => tracing::info!(id = %delivery.id, "replayed"),
                    Ok(false) => {
                        tracing::warn!(id = %delivery.id, "replayed, but the letter was no longer taken by this consumer")
                    }
                    Err(error) => {
                        tracing::warn!(id = %delivery.id, %error, "replayed, but cannot record it; it will be replayed again after its lease")
                    }
                }
                return;
            }
            // Taken again after its lease.
            Attempt::Stopped => return,
            Attempt::Busy => BUSY_WAIT,
            Attempt::StoreDown(_) => shared.backoff.delay_for(attempt),
            Attempt::Failed(failure) => {
                shared.metrics.record_failure(failure.category());
                if !failure.retryable(&shared.config.retry.retry_on) || attempt >= max_attempts {
                    let mut letter = letter_of(shared, &delivery, attempt, &failure);
                    letter.attempts = letter.attempts.saturating_add(stored.letter.attempts);
                    if let Err(error) = replays.put(&letter).await {
                        tracing::warn!(id = %delivery.id, %error, "the replay failed and cannot be recorded; it will be replayed again after its lease");
                    }
                    tracing::warn!(id = %delivery.id, %failure, "the replay failed");
                    return;
                }
                retry_wait(shared, attempt, &failure)
            }
        };
        if !sleep_or_stop(wait, shutdown).await {
            return;
        }
        attempt += 1;
    }
}
