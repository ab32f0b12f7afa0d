//! The relay's configuration.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use super::{secret::SecretSource, topic::TopicConfig};
use crate::api::{
    DatabaseEngine, Ordering, duration::Duration, outbox_source::CleanupMode,
    retry_policy::RetryPolicySpec,
};

/// Everything `ferry relay` needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelayConfig {
    pub source: SourceIdentity,
    pub database: DatabaseConfig,
    pub capture: CaptureConfig,
    pub ordering: Ordering,
    pub cleanup: CleanupConfig,
    /// In order: the first match wins.
    pub routes: Vec<RouteConfig>,
    /// The topics routes name, by BrokerTopic name.
    pub topics: BTreeMap<String, TopicConfig>,
    /// Backoff for publishing while a broker or the database is unreachable.
    pub retry: RetryPolicySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterConfig>,
    #[serde(default)]
    pub http: HttpConfig,
    /// The transactional-message API and check-back, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactional: Option<TransactionalConfig>,
}

impl RelayConfig {
    /// Every secret the relay reads (the outbox database, each topic's broker, the dead-letter
    /// store, the transactional API's token), in that order; a source used twice is listed twice.
    pub fn secret_sources(&self) -> Vec<&SecretSource> {
        std::iter::once(&self.database.url)
            .chain(self.topics.values().map(|topic| &topic.url))
            .chain(self.dead_letter.iter().map(DeadLetterConfig::url))
            .chain(self.transactional.iter().map(|api| &api.token))
            .collect()
    }
}

/// Which OutboxSource this is; `ce-source` is `/namespaces/<namespace>/outboxsources/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceIdentity {
    pub namespace: String,
    pub name: String,
}

impl SourceIdentity {
    /// Who gave up on a row, in its dead letters: `outboxsource/<namespace>/<name>`.
    pub fn origin(&self) -> String {
        format!("outboxsource/{}/{}", self.namespace, self.name)
    }

    pub fn cloud_event_source(&self) -> String {
        format!("/namespaces/{}/outboxsources/{}", self.namespace, self.name)
    }
}

/// A database and a table in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseConfig {
    pub engine: DatabaseEngine,
    pub url: SecretSource,
    pub table: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureConfig {
    pub poll_interval: Duration,
    pub batch_size: u32,
    pub max_message_bytes: u32,
    /// LISTEN/NOTIFY wake-ups (PostgreSQL only).
    pub notify: bool,
    /// Batches in flight at once in one relay process. Each holds its own claim, so they are as
    /// safe as separate replicas; more than one overlaps database work with broker confirms.
    #[serde(default = "default_workers")]
    pub workers: u32,
}

fn default_workers() -> u32 {
    2
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CleanupConfig {
    pub mode: CleanupMode,
    /// With `Mark`: how long published rows are kept.
    pub retention: Duration,
    pub purge_batch_size: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The name of the topic in `topics`.
    pub topic: String,
    /// Overrides the topic's routing-key or subject template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
}

/// Where unpublishable rows go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum DeadLetterConfig {
    /// A dead-letter table.
    Database(DatabaseConfig),
    /// A broker topic.
    Topic(TopicConfig),
}

impl DeadLetterConfig {
    /// Where the dead-letter store's connection URL comes from.
    pub fn url(&self) -> &SecretSource {
        match self {
            Self::Database(database) => &database.url,
            Self::Topic(topic) => &topic.url,
        }
    }
}

/// The status, health and metrics endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
        }
    }
}

/// The relay's settings for transactional messages, from the OutboxSource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransactionalConfig {
    /// Where the API listens (its own port, apart from the status endpoints).
    pub listen: std::net::SocketAddr,
    /// The bearer token every API call must carry.
    pub token: SecretSource,
    /// Where undecided messages are checked back.
    pub check_back_url: String,
    pub first_check_delay: Duration,
    pub check_interval: Duration,
    pub max_checks: u32,
    /// How long one check-back call may take.
    pub check_timeout: Duration,
    /// The largest prepare request accepted, in bytes.
    pub max_request_bytes: u32,
    /// How long decided (committed, rolled back) half messages are kept.
    pub retention: Duration,
}
