//! The pull loop of one member: keeps pulling from the durable consumer while the member holds
//! fewer than its prefetch, and turns each JetStream message into a `Delivery`.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use async_nats::{
    Subject,
    jetstream::{
        self,
        consumer::pull::{MessagesErrorKind, Stream as Messages},
    },
};
use chrono::DateTime;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::broker::subscriber::Delivery;

/// How long the loop pauses after an error it recovers from (a missed heartbeat, a pull request
/// that could not be sent while reconnecting), so that a lasting outage does not spin.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(250);

/// What `NatsSubscriber` needs to settle a delivery: where the server takes its acks, and the
/// member's prefetch slot, given back once the message is settled (or the delivery dropped).
pub(super) struct Settlement {
    pub(super) reply: Subject,
    pub(super) stream_sequence: u64,
    pub(super) slot: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Settlement {
    pub(super) fn release_slot(&self) {
        if let Ok(mut slot) = self.slot.lock() {
            slot.take();
        }
    }
}

/// Why the loop stopped for good: `receive` reports it from then on.
#[derive(Clone, Debug)]
pub(super) enum Ended {
    /// The consumer is gone or can no longer be pulled from as it is.
    Topology(String),
    /// The message stream closed.
    Connection(String),
}

/// Pulls until `shutdown`, the receiver closes, or an error the pull cannot recover from (which
/// it leaves in `ended`). A slot of `prefetch` is taken before each message is taken from the
/// pull, so that a member whose caller holds its full prefetch stops pulling.
pub(super) async fn run(
    topic: String,
    mut messages: Messages,
    prefetch: Arc<Semaphore>,
    deliveries: mpsc::Sender<Delivery>,
    ended: Arc<OnceLock<Ended>>,
    shutdown: CancellationToken,
) {
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => return,
            slot = prefetch.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            next = messages.next() => next,
        };
        let error = match next {
            Some(Ok(message)) => {
                match delivery(message, slot) {
                    Ok(delivery) => {
                        if deliveries.send(delivery).await.is_err() {
                            return;
                        }
                    }
                    // Only a JetStream message carries the reply subject its acks go to; the
                    // pull subscription receives nothing else, so this is not expected.
                    Err(reason) => {
                        tracing::error!(%topic, %reason, "a pulled message cannot be settled; it is left to ack_wait")
                    }
                }
                continue;
            }
            Some(Err(error)) => error,
            None => {
                let _ = ended.set(Ended::Connection("the pull subscription closed".into()));
                return;
            }
        };
        match error.kind() {
            // The pull re-issues its requests by itself after these.
            MessagesErrorKind::MissingHeartbeat | MessagesErrorKind::Pull => {
                tracing::debug!(%topic, %error, "pulling from JetStream paused");
            }
            MessagesErrorKind::Other => {
                tracing::warn!(%topic, %error, "pulling from JetStream");
            }
            MessagesErrorKind::ConsumerDeleted
            | MessagesErrorKind::PushBasedConsumer
            | MessagesErrorKind::NoResponders
            | MessagesErrorKind::RequestLimitExceeded => {
                let _ = ended.set(Ended::Topology(format!(
                    "pulling from the durable consumer stopped: {error}"
                )));
                return;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PAUSE_AFTER_ERROR) => {}
        }
    }
}

/// A JetStream message as a `Delivery`: attempt and publish time from the reply subject's
/// metadata, headers without the server's `Nats-*` ones.
fn delivery(message: jetstream::Message, slot: OwnedSemaphorePermit) -> Result<Delivery, String> {
    let (attempt, stream_sequence, published_nanos) = {
        let info = message.info().map_err(|error| error.to_string())?;
        (
            info.delivered,
            info.stream_sequence,
            info.published.unix_timestamp_nanos(),
        )
    };
    let jetstream::Message { message, .. } = message;
    let reply = message
        .reply
        .ok_or_else(|| "the message has no reply subject".to_owned())?;
    let headers = message
        .headers
        .as_ref()
        .map(delivery_headers)
        .unwrap_or_default();
    let settlement = Settlement {
        reply,
        stream_sequence,
        slot: Mutex::new(Some(slot)),
    };
    let mut delivery =
        Delivery::from_headers(headers, Vec::from(message.payload), Box::new(settlement));
    delivery.attempt = u32::try_from(attempt.max(1)).unwrap_or(u32::MAX);
    delivery.redelivered = attempt > 1;
    delivery.published_at = i64::try_from(published_nanos)
        .ok()
        .map(DateTime::from_timestamp_nanos);
    Ok(delivery)
}

/// The message's headers without `Nats-*` ones (`Nats-Msg-Id` and any the server adds). The
/// client keeps headers in a hash map, so the order they had on the wire is lost: they come
/// sorted by name (ASCII case-insensitive), which puts `ce-*`, then `content-type`, then the
/// carried-through headers together; several values of one name keep their order.
fn delivery_headers(headers: &async_nats::HeaderMap) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| {
            let name: &str = name.as_ref();
            !name
                .get(..5)
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case("nats-"))
        })
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| (name.to_string(), value.as_str().to_owned()))
        })
        .collect();
    out.sort_by_cached_key(|(name, _)| name.to_ascii_lowercase());
    out
}

#[cfg(test)]
mod tests {
    use async_nats::{HeaderMap, HeaderValue};

    use super::*;

    #[test]
    fn nats_headers_are_dropped_and_the_rest_sorted_with_repeated_values_in_order() {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", "acme");
        headers.insert("ce-type", "order.created");
        headers.insert("Nats-Msg-Id", "1");
        headers.insert("nats-expected-stream", "S");
        headers.insert("content-type", "application/json");
        headers.append("x-multi", "first");
        headers.append("x-multi", HeaderValue::from("second"));
        headers.insert("ce-id", "1");
        assert_eq!(
            delivery_headers(&headers),
            [
                ("ce-id", "1"),
                ("ce-type", "order.created"),
                ("content-type", "application/json"),
                ("x-multi", "first"),
                ("x-multi", "second"),
                ("x-tenant", "acme"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
    }
}
