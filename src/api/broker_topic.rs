//! `BrokerTopic`: a named destination on a broker, and the topology Ferry may declare for it.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    common::{Connection, TABLE_NAME_PATTERN},
    duration::Duration,
    status::CommonStatus,
};

/// The default routing key (RabbitMQ) and subject suffix (NATS) template.
pub const DEFAULT_KEY_TEMPLATE: &str = "{aggregateType}.{eventType}";
/// The default `sql` queue table.
pub const DEFAULT_QUEUE_TABLE: &str = "ferry_queue";

/// A destination on a broker: a RabbitMQ exchange, a NATS JetStream stream and subject, a Redis
/// stream, or a queue in a SQL table. Sources publish to it and consumers read from it.
// Each `printcolumn(...)` repeats `name`/`type_` keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "BrokerTopic",
    plural = "brokertopics",
    shortname = "bt",
    category = "ferry",
    namespaced,
    status = "BrokerTopicStatus",
    derive = "PartialEq",
    doc = "A destination on a broker (RabbitMQ exchange, JetStream stream, Redis stream or SQL queue) that sources publish to and consumers read from.",
    printcolumn(name = "Broker", type_ = "string", json_path = ".spec.broker"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Provision",
        type_ = "boolean",
        json_path = ".spec.provision",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.broker == 'rabbitmq' || !has(self.rabbitmq)").message("rabbitmq settings are only allowed when broker is rabbitmq").field_path(".rabbitmq"))]
#[x_kube(validation = Rule::new("self.broker == 'nats' || !has(self.nats)").message("nats settings are only allowed when broker is nats").field_path(".nats"))]
#[x_kube(validation = Rule::new("self.broker == 'redis' || !has(self.redis)").message("redis settings are only allowed when broker is redis").field_path(".redis"))]
#[x_kube(validation = Rule::new("self.broker == 'sql' || !has(self.sql)").message("sql settings are only allowed when broker is sql").field_path(".sql"))]
pub struct BrokerTopicSpec {
    /// The broker kind.
    pub broker: BrokerKind,
    /// Where the broker's connection URL comes from (`amqp://`, `nats://`, `redis://`, or a
    /// `postgres://` / `sqlite:` URL for `sql`).
    pub connection: Connection,
    /// Declare the topology (exchange, stream, queue table) when missing. Turn it off when the
    /// broker's topology is managed elsewhere; Ferry then only checks that it exists.
    #[serde(default = "default_true")]
    pub provision: bool,
    /// RabbitMQ settings (only with `broker: rabbitmq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<RabbitMqTopic>,
    /// NATS JetStream settings (only with `broker: nats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsTopic>,
    /// Redis Streams settings (only with `broker: redis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisTopic>,
    /// SQL queue settings (only with `broker: sql`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<SqlTopic>,
}

fn default_true() -> bool {
    true
}

/// The brokers Ferry publishes to and consumes from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// RabbitMQ (AMQP 0-9-1): a durable exchange, persistent messages, publisher confirms.
    Rabbitmq,
    /// NATS JetStream: a stream, acknowledged publishes, de-duplication by message id.
    Nats,
    /// Redis Streams: XADD, consumer groups.
    Redis,
    /// A queue table in PostgreSQL or SQLite: the embedded default for standalone use.
    Sql,
}

impl BrokerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rabbitmq => "rabbitmq",
            Self::Nats => "nats",
            Self::Redis => "redis",
            Self::Sql => "sql",
        }
    }
}

/// A RabbitMQ exchange.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RabbitMqTopic {
    /// The exchange name. Defaults to the BrokerTopic's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub exchange: Option<String>,
    /// The exchange type.
    #[serde(default = "default_exchange_type")]
    pub exchange_type: ExchangeType,
    /// The routing key template. Placeholders: `{aggregateType}`, `{aggregateId}`, `{eventType}`.
    #[serde(default = "default_key_template")]
    #[schemars(length(min = 1, max = 255))]
    pub routing_key: String,
}

fn default_exchange_type() -> ExchangeType {
    ExchangeType::Topic
}

fn default_key_template() -> String {
    DEFAULT_KEY_TEMPLATE.to_owned()
}

/// RabbitMQ exchange types.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    Direct,
    Fanout,
    Topic,
    Headers,
}

/// A NATS JetStream stream and the subject messages are published on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("duration(self.duplicateWindow) > duration('0s')").message("duplicateWindow must be greater than zero: it is what removes re-published messages").field_path(".duplicateWindow"))]
pub struct NatsTopic {
    /// The stream name. Defaults to the BrokerTopic's name, upper-cased, with `-` and `.` as `_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^.*>\s]+$"))]
    pub stream: Option<String>,
    /// The stream's subjects. Defaults to `["<subject prefix>.>"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 255), regex(pattern = r"^[^\s]+$"))
    )]
    pub subjects: Vec<String>,
    /// The publish subject template. Defaults to `<BrokerTopic name>.{aggregateType}.{eventType}`.
    /// Placeholders: `{aggregateType}`, `{aggregateId}`, `{eventType}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub subject: Option<String>,
    /// Stream replicas (on a clustered NATS).
    #[serde(default = "default_nats_replicas")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,
    /// How long JetStream remembers message ids to drop duplicates: a relay that re-publishes
    /// after a crash within this window does not create a second copy.
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window: Duration,
    /// How long the stream keeps messages. Absent: kept until the stream's limits remove them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Where the stream stores messages.
    #[serde(default = "default_storage")]
    pub storage: NatsStorage,
}

fn default_nats_replicas() -> i32 {
    1
}

fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}

fn default_storage() -> NatsStorage {
    NatsStorage::File
}

/// JetStream storage types.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NatsStorage {
    File,
    Memory,
}

/// A Redis stream.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisTopic {
    /// The stream key. Defaults to the BrokerTopic's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub stream: Option<String>,
    /// Trim the stream to about this many entries on each add (`XADD MAXLEN ~`). Absent: never trimmed.
    /// Trimming removes entries whether or not every consumer group has read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_length: Option<i64>,
}

/// A queue stored in a SQL table.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SqlTopic {
    /// The queue table. Several topics may share one table; `queue` tells them apart.
    #[serde(default = "default_queue_table")]
    #[schemars(regex(pattern = TABLE_NAME_PATTERN))]
    pub table: String,
    /// The queue name within the table. Defaults to the BrokerTopic's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub queue: Option<String>,
}

fn default_queue_table() -> String {
    DEFAULT_QUEUE_TABLE.to_owned()
}

/// Whether the topic is usable.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BrokerTopicStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
}
