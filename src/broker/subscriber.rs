//! The receiving side of a broker: one module per broker behind the `Subscriber` trait. What is
//! shared (the sink, idempotency, the retry decision, ordering, dead-lettering) lives in the
//! consumer, above the trait; a subscriber only receives, settles and measures.

use std::{any::Any, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::BrokerError;
use crate::{
    config::{TopicConfig, TopicTarget},
    message::{CE_PREFIX, PARTITION_KEY},
};

/// One message as the broker handed it over.
pub struct Delivery {
    /// `ce-id`: the message id, the idempotency key.
    pub id: String,
    /// The ordering key: `ce-partitionkey`, else `ce-subject`, else empty.
    pub key: String,
    /// `ce-type`, empty when absent.
    pub event_type: String,
    /// Every header of the message (`ce-*`, `content-type`, `traceparent`, user headers),
    /// without broker-internal ones (Ferry's own retry headers, `Nats-Msg-Id`). Values of one
    /// name keep their order; the order across names is the broker's (NATS and AMQP header
    /// tables do not keep the order they were written in, Redis and the `sql` queue do).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which delivery attempt this is for Ferry: 1 the first time, +1 after each `retry`. A
    /// redelivery the broker makes by itself (a consumer crashed holding the message) may also
    /// count, where the broker counts it (JetStream, Redis): it is an attempt that did not end.
    pub attempt: u32,
    /// The broker says it delivered this message before (to this consumer group).
    pub redelivered: bool,
    /// When the message entered the broker, where the broker tells it.
    pub published_at: Option<DateTime<Utc>>,
    /// What the subscriber needs to settle the message (delivery tag, JetStream message, stream
    /// entry id, queue row); each subscriber downcasts its own.
    pub token: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("event_type", &self.event_type)
            .field("attempt", &self.attempt)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// The first header with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Fills `id`, `key` and `event_type` from the CloudEvents headers.
    pub fn from_headers(
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        token: Box<dyn Any + Send + Sync>,
    ) -> Self {
        let find = |name: &str| {
            headers
                .iter()
                .find(|(header, _)| header.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.clone())
        };
        let id = find("ce-id").unwrap_or_default();
        let key = find(&format!("{CE_PREFIX}{PARTITION_KEY}"))
            .or_else(|| find("ce-subject"))
            .unwrap_or_default();
        let event_type = find("ce-type").unwrap_or_default();
        Self {
            id,
            key,
            event_type,
            headers,
            body,
            attempt: 1,
            redelivered: false,
            published_at: None,
            token,
        }
    }
}

/// How far behind this consumer group is, as the broker tells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerLag {
    /// Messages not yet acknowledged by the group: waiting plus in flight (and waiting for a
    /// retry, where the broker keeps those apart).
    pub messages: u64,
    /// Age of the oldest of them, where the broker tells it.
    pub oldest_age: Option<Duration>,
}

/// Who reads and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionConfig {
    /// The durable name of the consumer group, unique per Consumer: `ferry.<namespace>.<name>`.
    /// Every replica of one Consumer uses the same group and shares its messages; different
    /// Consumers of one topic each get every message. Each broker maps it to its own names
    /// (RabbitMQ queue `<group>` bound to the exchange, JetStream durable consumer with `.`
    /// replaced, Redis consumer group, a group name in the queue table).
    pub group: String,
    /// This replica's name within the group (Redis consumer name, diagnostics).
    pub member: String,
    /// The most messages handed out and not yet settled (prefetch, `max_ack_pending`).
    pub prefetch: u32,
    /// How long a received message may stay unsettled before the broker may give it to another
    /// member (JetStream `ack_wait`, Redis pending idle time before `XAUTOCLAIM`, the SQL
    /// queue's lease). RabbitMQ has none: it redelivers when the connection closes.
    pub ack_timeout: Duration,
    /// Declare what is missing (queue and binding, durable consumer, group, state table), or
    /// only check that it exists.
    pub provision: bool,
    /// Only one member of the group receives at a time; the others stand by and take over when
    /// it goes away, so the group keeps the broker's order across replicas. RabbitMQ declares
    /// the queue as a single-active-consumer queue (fixed when the queue is created). Brokers
    /// without such a mode ignore it; per-key ordering across replicas then needs one replica.
    pub single_active: bool,
}

/// Receives one topic's messages for one consumer group, and settles each of them.
///
/// Every received message is settled exactly once by the caller: `ack` (done: delivered,
/// deduplicated, filtered out or safely dead-lettered) or `retry` (deliver again after the
/// delay). Until then the broker keeps it; if the process dies, the broker gives it to this
/// group again (after `ack_timeout`, or when the connection drops). Retry state lives in the
/// broker, never only in memory, so a restart keeps each message's attempt count and due time.
///
/// Messages with the same key come out of `receive` in the order the broker holds them.
#[async_trait]
pub trait Subscriber: Send + Sync {
    /// Waits up to `wait` for messages and returns those available, at most `max` (an empty
    /// vector when none came, so the caller can check for shutdown).
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError>;

    /// Removes the message from this group for good.
    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError>;

    /// Delivers the message to this group again after `delay`, as attempt `delivery.attempt
    /// + 1`, durably: the new copy or the schedule is confirmed by the broker before the
    /// current delivery is settled, so a crash in between at worst delivers it twice.
    async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), BrokerError>;

    /// Tells the broker the message is still being worked on, so that `ack_timeout` does not
    /// hand it to another member (JetStream in-progress ack, a Redis claim that resets idle
    /// time, a longer lease). The caller calls it for messages it holds longer than a third
    /// of `ack_timeout`.
    async fn extend(&self, _delivery: &Delivery) -> Result<(), BrokerError> {
        Ok(())
    }

    /// How far behind the group is.
    async fn lag(&self) -> Result<BrokerLag, BrokerError>;

    /// Whether the client believes its connection is up.
    fn connected(&self) -> bool {
        true
    }

    /// Stops receiving and closes connections; unsettled messages go back to the broker.
    async fn close(&self) {}
}

/// Connects to the topic's broker as `subscription.group`, declaring what is missing when
/// `subscription.provision` is on.
pub async fn subscribe(
    topic: &TopicConfig,
    subscription: &SubscriptionConfig,
) -> Result<Box<dyn Subscriber>, BrokerError> {
    let url = topic.url.read().map_err(|source| BrokerError::Secret {
        topic: topic.name.clone(),
        source,
    })?;
    match &topic.target {
        TopicTarget::Rabbitmq(target) => Ok(Box::new(
            super::rabbitmq::subscriber::RabbitMqSubscriber::connect(
                &topic.name,
                &url,
                target,
                subscription,
            )
            .await?,
        )),
        TopicTarget::Nats(target) => Ok(Box::new(
            super::nats::subscriber::NatsSubscriber::connect(
                &topic.name,
                &url,
                target,
                subscription,
            )
            .await?,
        )),
        TopicTarget::Redis(target) => Ok(Box::new(
            super::redis::subscriber::RedisSubscriber::connect(
                &topic.name,
                &url,
                target,
                subscription,
            )
            .await?,
        )),
        TopicTarget::Sql(target) => Ok(Box::new(
            super::sql::subscriber::SqlSubscriber::connect(&topic.name, &url, target, subscription)
                .await?,
        )),
    }
}
