//! Brokers: one module per broker behind the `Publisher` trait. What is shared (batching,
//! retries, ordering, dead-lettering) lives in the relay, above the trait, not in each broker.

use async_trait::async_trait;

use crate::{
    config::{SecretError, TopicConfig, TopicTarget},
    message::Envelope,
};

/// What the broker said about one message of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Persisted and confirmed by the broker (publisher confirm, JetStream ack, XADD reply,
    /// committed insert).
    Confirmed,
    /// Refused for good: retrying cannot help (RabbitMQ returned it as unroutable, the message
    /// is over the broker's size limit). The relay dead-letters it with this reason.
    Rejected(String),
}

/// A failure that affects the whole batch; the relay retries the batch after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The connection URL could not be read.
    #[error("topic {topic}: cannot read the connection URL: {source}")]
    Secret { topic: String, source: SecretError },
    /// Connecting failed or the connection was lost.
    #[error("topic {topic}: connection failed: {message}")]
    Connection { topic: String, message: String },
    /// The topology is missing or conflicts (e.g. `provision: false` and no such exchange, or a
    /// stream that exists with other settings).
    #[error("topic {topic}: topology: {message}")]
    Topology { topic: String, message: String },
    /// The broker answered something unexpected, or did not confirm in time.
    #[error("topic {topic}: {message}")]
    Publish { topic: String, message: String },
    /// Receiving or settling a message failed (a consumer-side protocol error or timeout).
    #[error("topic {topic}: {message}")]
    Receive { topic: String, message: String },
    /// The broker refused a message of the batch as larger than its limit, which it had not
    /// announced (RabbitMQ's `max_message_size`). The relay keeps the limit for this topic, so
    /// the next attempt dead-letters the message instead of sending it again.
    #[error(
        "topic {topic}: the broker refused a message over its size limit of {limit} bytes: {message}"
    )]
    TooLarge {
        topic: String,
        limit: usize,
        message: String,
    },
}

impl BrokerError {
    /// A stable, low-cardinality name for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Secret { .. } => "secret",
            Self::Connection { .. } => "connection",
            Self::Topology { .. } => "topology",
            Self::Publish { .. } => "publish",
            Self::Receive { .. } => "receive",
            Self::TooLarge { .. } => "too_large",
        }
    }
}

/// Publishes batches to one topic with the broker's strongest confirmation.
///
/// `publish` sends the messages in order and returns only when the broker has answered for every
/// one of them: one `Outcome` per message, in the same order. Messages of one key sent in one
/// call must reach the broker in that order. An `Err` means the outcome of some messages is
/// unknown; the caller treats the whole batch as not published, and calls `connect` again
/// before the next attempt.
#[async_trait]
pub trait Publisher: Send + Sync {
    async fn publish(&self, batch: &[Envelope]) -> Result<Vec<Outcome>, BrokerError>;

    /// The largest message the broker accepts, when it says so (NATS `max_payload`).
    fn max_message_bytes(&self) -> Option<usize> {
        None
    }

    /// Whether the client believes its connection is up. Clients that reconnect by themselves
    /// (NATS) would otherwise hide an outage until a publish times out; this lets readiness
    /// turn false within seconds.
    fn connected(&self) -> bool {
        true
    }

    /// Closes connections cleanly (after the last confirm).
    async fn close(&self) {}
}

/// Connects to the topic's broker and declares its topology (or, with `provision: false`,
/// checks that it exists).
pub async fn connect(topic: &TopicConfig) -> Result<Box<dyn Publisher>, BrokerError> {
    let url = topic.url.read().map_err(|source| BrokerError::Secret {
        topic: topic.name.clone(),
        source,
    })?;
    match &topic.target {
        TopicTarget::Rabbitmq(target) => Ok(Box::new(
            rabbitmq::RabbitMqPublisher::connect(&topic.name, &url, target, topic.provision)
                .await?,
        )),
        TopicTarget::Nats(target) => Ok(Box::new(
            nats::NatsPublisher::connect(&topic.name, &url, target, topic.provision).await?,
        )),
        TopicTarget::Redis(target) => Ok(Box::new(
            redis::RedisPublisher::connect(&topic.name, &url, target, topic.provision).await?,
        )),
        TopicTarget::Sql(target) => Ok(Box::new(
            sql::SqlPublisher::connect(&topic.name, &url, target, topic.provision).await?,
        )),
    }
}

pub mod nats;
pub mod rabbitmq;
pub mod redis;
pub mod sql;
pub mod subscriber;
