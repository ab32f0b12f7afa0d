//! One worker's loop: claim a batch, route and encode it, publish it with confirms, dead-letter
//! what can never be published, then finish the claim. Any failure leaves the batch pending.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use chrono::Utc;
use futures::future::join_all;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Shared, router::Destination};
use crate::{
    broker::{BrokerError, Outcome},
    dlq::DeadLetter,
    message::{Envelope, OutboxEvent, Unpublishable, envelope},
    outbox::{Claim, Completion},
    retry::Backoff,
};

/// How a batch ended.
enum Batch {
    /// A full batch: more rows are probably waiting.
    Full,
    /// Fewer rows than the batch size, or none.
    CaughtUp,
    /// Something failed; the rows stay pending. Wait before the next try.
    Failed,
}

pub async fn run(shared: Arc<Shared>, mut wake: watch::Receiver<u64>, stop: CancellationToken) {
    let mut backoff = Backoff::new(&shared.config.retry);
    let poll = shared.config.capture.poll_interval.as_std();
    while !stop.is_cancelled() {
        wake.borrow_and_update();
        match process(&shared).await {
            Batch::Full => backoff.reset(),
            Batch::CaughtUp => {
                backoff.reset();
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = stop.cancelled() => {}
                }
            }
            Batch::Failed => {
                let delay = backoff.next_delay();
                tracing::debug!(
                    delay_ms = delay.as_millis() as u64,
                    retry = backoff.attempts(),
                    "backing off"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => {}
                }
            }
        }
    }
}

/// A row that cannot be published and why; `envelope` is set when the broker refused it.
struct Refused {
    index: usize,
    reason: String,
    category: &'static str,
    envelope: Option<Envelope>,
}

async fn process(shared: &Shared) -> Batch {
    let batch_size = shared.config.capture.batch_size;
    let claim = match shared.store.claim(batch_size, shared.config.ordering).await {
        Ok(claim) => claim,
        Err(error) => {
            // The reason first: whoever sees readiness turn false finds it in `/status`.
            shared.health.record_error("database", error.to_string());
            shared.health.set_database(false);
            shared
                .metrics
                .failed_batches
                .get_or_create(&super::metrics::ReasonLabels {
                    reason: "database".into(),
                })
                .inc();
            tracing::warn!(%error, "claiming rows failed");
            return Batch::Failed;
        }
    };
    shared.health.set_database(true);
    let count = claim.events().len();
    if count == 0 {
        claim.abandon().await;
        return Batch::CaughtUp;
    }
    shared.metrics.batch_size.observe(count as f64);

    let (groups, mut refused) = encode(shared, claim.events()).await;
    let started = Instant::now();
    let results = join_all(groups.iter().map(|(topic, group)| async move {
        let publisher = shared.publishers.get(topic).await?;
        publisher.publish(&group.envelopes).await
    }))
    .await;

    let mut completion = Completion::default();
    for ((topic, group), result) in groups.iter().zip(results) {
        let outcomes = match result {
            Ok(outcomes) if outcomes.len() == group.envelopes.len() => outcomes,
            Ok(outcomes) => {
                return give_up(
                    shared,
                    claim,
                    "broker",
                    format!(
                        "topic {topic}: broker answered {} outcomes for {} messages",
                        outcomes.len(),
                        group.envelopes.len()
                    ),
                )
                .await;
            }
            Err(error) => {
                shared.publishers.reset(topic).await;
                if let BrokerError::TooLarge { limit, .. } = &error {
                    // The broker is up. On the next try the oversized messages are measured
                    // against the learned limit and dead-lettered instead of sent again.
                    shared.publishers.learn_limit(topic, *limit);
                    tracing::warn!(topic, limit, "the broker revealed a message size limit");
                } else {
                    shared.health.set_broker(false);
                }
                return give_up(shared, claim, error.category(), error.to_string()).await;
            }
        };
        let mut confirmed = 0;
        for ((index, envelope), outcome) in group.rows.iter().zip(&group.envelopes).zip(outcomes) {
            match outcome {
                Outcome::Confirmed => {
                    completion.published.push(claim.events()[*index].seq);
                    confirmed += 1;
                }
                Outcome::Rejected(reason) => refused.push(Refused {
                    index: *index,
                    reason,
                    category: "rejected_by_broker",
                    envelope: Some(envelope.clone()),
                }),
            }
        }
        shared.metrics.record_published(topic, confirmed);
    }
    shared.health.set_broker(true);
    if !groups.is_empty() {
        shared
            .metrics
            .publish_latency
            .observe(started.elapsed().as_secs_f64());
    }

    refused.sort_by_key(|refusal| refusal.index);
    if !refused.is_empty() {
        match dead_letter(shared, claim.events(), &refused).await {
            Ok(stored) => completion.dead_lettered = stored,
            Err(message) => return give_up(shared, claim, "dead_letter", message).await,
        }
        completion.failed = refused
            .iter()
            .map(|r| (claim.events()[r.index].seq, r.reason.clone()))
            .collect();
    }

    match claim.finish(&completion, shared.config.cleanup.mode).await {
        Ok(()) => {
            for refusal in &refused {
                shared.metrics.record_dead_letter(refusal.category);
            }
            if completion.dead_lettered {
                shared.metrics.dead_letter_depth.recount();
            }
            if count >= batch_size as usize {
                Batch::Full
            } else {
                Batch::CaughtUp
            }
        }
        Err(error) => {
            // Confirmed messages will be published again: at least once, never lost.
            shared.health.set_database(false);
            shared.health.record_error("database", error.to_string());
            tracing::warn!(%error, rows = count, "finishing a published batch failed; it will be published again");
            Batch::Failed
        }
    }
}

async fn give_up(shared: &Shared, claim: Box<dyn Claim>, category: &str, message: String) -> Batch {
    tracing::warn!(category, error = %message, rows = claim.events().len(), "batch left pending");
    shared.health.record_error(category, message);
    shared
        .metrics
        .failed_batches
        .get_or_create(&super::metrics::ReasonLabels {
            reason: category.to_owned(),
        })
        .inc();
    claim.abandon().await;
    Batch::Failed
}

/// One topic's messages of a batch: `rows[i]` is the index in the batch of `envelopes[i]`.
#[derive(Default)]
struct Group {
    rows: Vec<usize>,
    envelopes: Vec<Envelope>,
}

type Groups = BTreeMap<String, Group>;

/// Routes and encodes every row, in order, grouped by topic; the rows that cannot be published
/// are set aside with the reason.
async fn encode(shared: &Shared, events: &[OutboxEvent]) -> (Groups, Vec<Refused>) {
    let mut groups: Groups = BTreeMap::new();
    let mut refused = Vec::new();
    let source = shared.config.source.cloud_event_source();
    let configured_limit = shared.config.capture.max_message_bytes as usize;
    // Each topic's limit is looked up once per batch: the lookup locks the publisher's slot.
    let mut limits: BTreeMap<String, usize> = BTreeMap::new();
    for (index, event) in events.iter().enumerate() {
        let encoded = match shared.router.route(event) {
            None => Err(Unpublishable::Unroutable {
                aggregate_type: event.aggregate_type.clone(),
                event_type: event.event_type.clone(),
            }),
            Some(Destination {
                topic, routing_key, ..
            }) => envelope(event, &source, routing_key).map(|envelope| (topic, envelope)),
        };
        let checked = match encoded {
            Ok((topic, envelope)) => {
                let limit = match limits.get(&topic) {
                    Some(limit) => *limit,
                    None => {
                        let limit = shared
                            .publishers
                            .limit(&topic)
                            .await
                            .map_or(configured_limit, |broker| broker.min(configured_limit));
                        limits.insert(topic.clone(), limit);
                        limit
                    }
                };
                if envelope.size() > limit {
                    Err(Unpublishable::TooLarge {
                        size: envelope.size(),
                        limit,
                    })
                } else {
                    Ok((topic, envelope))
                }
            }
            Err(problem) => Err(problem),
        };
        match checked {
            Ok((topic, envelope)) => {
                let group = groups.entry(topic).or_default();
                group.rows.push(index);
                group.envelopes.push(envelope);
            }
            Err(problem) => refused.push(Refused {
                index,
                reason: problem.to_string(),
                category: problem.category(),
                envelope: None,
            }),
        }
    }
    (groups, refused)
}

/// Stores the refused rows in the dead-letter queue. `Ok(false)` when there is none: the rows
/// are then marked failed in the outbox instead.
async fn dead_letter(
    shared: &Shared,
    events: &[OutboxEvent],
    refused: &[Refused],
) -> Result<bool, String> {
    let Some(store) = &shared.dead_letters else {
        for refusal in refused {
            let event = &events[refusal.index];
            tracing::warn!(seq = event.seq, id = %event.id, reason = %refusal.reason, "row cannot be published; marked failed (no dead-letter queue)");
        }
        return Ok(false);
    };
    let now = Utc::now();
    for refusal in refused {
        let event = &events[refusal.index];
        let (headers, body) = match &refusal.envelope {
            Some(envelope) => (envelope.headers.clone(), envelope.body.to_vec()),
            None => (raw_headers(event), event.payload.clone()),
        };
        let letter = DeadLetter {
            origin: shared.config.source.origin(),
            message_id: event.id.clone(),
            event_type: event.event_type.clone(),
            message_key: event.aggregate_id.clone(),
            headers,
            body,
            attempts: 1,
            first_failed_at: now,
            last_failed_at: now,
            last_error: refusal.reason.clone(),
            error_category: refusal.category.to_owned(),
            http_status: None,
            fingerprint: String::new(),
        }
        .finish();
        store
            .put(&letter)
            .await
            .map_err(|error| error.to_string())?;
        tracing::warn!(seq = event.seq, id = %event.id, reason = %refusal.reason, "row dead-lettered");
    }
    Ok(true)
}

/// What the row said, for a dead letter of a row that never became a message.
fn raw_headers(event: &OutboxEvent) -> Vec<(String, String)> {
    let mut headers = vec![
        ("outbox-seq".to_owned(), event.seq.to_string()),
        ("aggregate-type".to_owned(), event.aggregate_type.clone()),
        ("aggregate-id".to_owned(), event.aggregate_id.clone()),
        ("event-type".to_owned(), event.event_type.clone()),
        ("created-at".to_owned(), event.created_at.to_rfc3339()),
    ];
    if let Some(raw) = &event.headers {
        headers.push(("outbox-headers".to_owned(), raw.clone()));
    }
    headers
}
