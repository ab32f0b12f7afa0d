//! The consumer's configuration (`ferry consumer --config FILE`).

use serde::{Deserialize, Serialize};

use super::{
    relay::{DatabaseConfig, DeadLetterConfig, HttpConfig},
    secret::SecretSource,
    topic::TopicConfig,
};
use crate::api::{Ordering, duration::Duration, retry_policy::RetryPolicySpec};

/// Everything `ferry consumer` needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsumerConfig {
    pub consumer: ConsumerIdentity,
    pub topic: TopicConfig,
    /// Event-type globs to deliver; empty delivers everything. The rest are acknowledged
    /// without a call to the sink.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
    pub sink: SinkConfig,
    /// Messages delivered at the same time by one replica.
    pub concurrency: u32,
    pub ordering: Ordering,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<IdempotencyConfig>,
    pub retry: RetryPolicySpec,
    /// Absent: a message that keeps failing is retried at `retry.maxBackoff` for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterConfig>,
    #[serde(default)]
    pub http: HttpConfig,
    /// How long a received message may stay unsettled before the broker hands it to another
    /// replica. Absent: twice the sink timeout plus 5 s, at least 30 s. Deliveries that take
    /// longer extend it as they go, so it only decides how soon a crashed replica's messages
    /// are taken over (RabbitMQ does that when the connection drops, whatever this says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout: Option<Duration>,
}

impl ConsumerConfig {
    /// Every secret the consumer reads (the topic's broker, the idempotency store, the
    /// dead-letter store), in that order; a source used twice is listed twice.
    pub fn secret_sources(&self) -> Vec<&SecretSource> {
        std::iter::once(&self.topic.url)
            .chain(self.idempotency.iter().map(IdempotencyConfig::url))
            .chain(self.dead_letter.iter().map(DeadLetterConfig::url))
            .collect()
    }
}

/// Which Consumer this is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsumerIdentity {
    pub namespace: String,
    pub name: String,
}

impl ConsumerIdentity {
    /// The broker-side consumer group every replica shares: `ferry.<namespace>.<name>`.
    pub fn group(&self) -> String {
        format!("ferry.{}.{}", self.namespace, self.name)
    }

    /// The origin recorded on dead letters and idempotency records: `consumer/<ns>/<name>`.
    pub fn origin(&self) -> String {
        format!("consumer/{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkConfig {
    pub url: String,
    /// How long one request may take (the Consumer's `sink.timeout`, else the policy's
    /// `attemptTimeout`).
    pub timeout: Duration,
}

/// Where delivered message ids are remembered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum IdempotencyConfig {
    /// A table with a unique key on (consumer, message id).
    Database {
        #[serde(flatten)]
        database: DatabaseConfig,
        window: Duration,
    },
    /// Redis keys `<prefix><consumer>:<message id>` with a TTL of `window`.
    Redis {
        url: SecretSource,
        key_prefix: String,
        window: Duration,
    },
}

impl IdempotencyConfig {
    /// Where the store's connection URL comes from.
    pub fn url(&self) -> &SecretSource {
        match self {
            Self::Database { database, .. } => &database.url,
            Self::Redis { url, .. } => url,
        }
    }

    pub fn window(&self) -> Duration {
        match self {
            Self::Database { window, .. } | Self::Redis { window, .. } => *window,
        }
    }
}
