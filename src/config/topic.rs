//! A broker topic with every default filled in.

use serde::{Deserialize, Serialize};

use super::secret::SecretSource;
use crate::api::{
    BrokerKind,
    broker_topic::{ExchangeType, NatsStorage},
    duration::Duration,
};

/// Where and how messages of one topic are published and read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicConfig {
    /// The BrokerTopic's name.
    pub name: String,
    /// The broker's connection URL.
    pub url: SecretSource,
    /// Declare missing topology (true) or only check that it exists (false).
    pub provision: bool,
    pub target: TopicTarget,
}

impl TopicConfig {
    pub fn broker(&self) -> BrokerKind {
        match self.target {
            TopicTarget::Rabbitmq(_) => BrokerKind::Rabbitmq,
            TopicTarget::Nats(_) => BrokerKind::Nats,
            TopicTarget::Redis(_) => BrokerKind::Redis,
            TopicTarget::Sql(_) => BrokerKind::Sql,
        }
    }
}

/// Per-broker settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum TopicTarget {
    Rabbitmq(RabbitMqTarget),
    Nats(NatsTarget),
    Redis(RedisTarget),
    Sql(SqlTarget),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RabbitMqTarget {
    pub exchange: String,
    pub exchange_type: ExchangeType,
    pub routing_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsTarget {
    pub stream: String,
    pub subjects: Vec<String>,
    /// The publish subject template.
    pub subject: String,
    pub replicas: i32,
    pub duplicate_window: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    pub storage: NatsStorage,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisTarget {
    pub stream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SqlTarget {
    /// The engine (PostgreSQL or SQLite) is the URL's scheme.
    pub table: String,
    pub queue: String,
}
