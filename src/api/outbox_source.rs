//! `OutboxSource`: an outbox table in a service's database, and the relay that publishes it.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    common::{
        Connection, DatabaseEngine, LagThresholds, ObjectRef, Ordering, TABLE_NAME_PATTERN,
        WorkloadSpec,
    },
    duration::Duration,
    status::{CommonStatus, LagStatus, LastErrorStatus},
};

/// The default outbox table name.
pub const DEFAULT_OUTBOX_TABLE: &str = "ferry_outbox";

/// An outbox table that a service writes events into, in the same local transaction as its
/// business data, and the relay workload that publishes every committed row to a broker.
// Each `printcolumn(...)` repeats `name`/`type_` keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "OutboxSource",
    plural = "outboxsources",
    shortname = "obs",
    category = "ferry",
    namespaced,
    status = "OutboxSourceStatus",
    derive = "PartialEq",
    doc = "An outbox table written by a service in its own transactions, and the relay that publishes every committed row to a broker.",
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.database.engine"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.lag.messages",
        description = "Outbox rows not yet published"
    ),
    printcolumn(
        name = "Oldest",
        type_ = "integer",
        json_path = ".status.lag.oldestAgeSeconds",
        description = "Age in seconds of the oldest unpublished row"
    ),
    printcolumn(
        name = "Published",
        type_ = "integer",
        json_path = ".status.publishedTotal",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.capture) || !has(self.capture.notify) || !self.capture.notify || self.database.engine == 'postgres'").message("capture.notify needs a postgres database: other engines have no notifications").field_path(".capture.notify"))]
#[x_kube(validation = Rule::new("self.database.engine != 'sqlite' || !has(self.relay) || self.relay.replicas <= 1").message("a sqlite outbox has one writer at a time: relay.replicas must be 0 or 1").field_path(".relay.replicas"))]
#[x_kube(validation = Rule::new("!has(self.lag) || !has(self.lag.maxAge) || duration(self.lag.maxAge) > duration('0s')").message("lag.maxAge must be greater than zero").field_path(".lag.maxAge"))]
pub struct OutboxSourceSpec {
    /// The database that holds the outbox table.
    pub database: OutboxDatabase,
    /// How the relay finds new rows.
    #[serde(default)]
    pub capture: Capture,
    /// Publish order. `PerKey` (the default) publishes rows with the same aggregate id in commit
    /// order, with one relay replica or several; `None` allows parallel publishing of any rows.
    #[serde(default = "default_ordering")]
    pub ordering: Ordering,
    /// What happens to a row once the broker has confirmed it.
    #[serde(default)]
    pub cleanup: Cleanup,
    /// Where rows go: the first route whose `match` fits a row picks its topic. A row that no
    /// route matches goes to the dead-letter queue with the reason.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub routes: Vec<Route>,
    /// Retry settings for publishing (backoff between attempts while the broker is unreachable
    /// or refuses a message). Without it, the relay retries with its built-in defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy_ref: Option<ObjectRef>,
    /// Where rows that can never be published go (no matching route, payload not JSON, message
    /// too large). Without it such rows stay in the outbox, marked failed, and the relay reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue_ref: Option<ObjectRef>,
    /// The relay Deployment: replicas, image and resources.
    #[serde(default = "WorkloadSpec::with_defaults")]
    pub relay: WorkloadSpec,
    /// When the source counts as lagging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagThresholds>,
    /// Stop publishing: the relay is scaled to zero and rows wait in the outbox.
    #[serde(default)]
    pub suspend: bool,
    /// Transactional ("half") messages, for services that cannot write the outbox table: the
    /// relay serves an API to prepare a message, then commit or roll it back, and checks back
    /// with the producer when neither comes. Off unless `enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactional_messages: Option<TransactionalMessages>,
}

/// See `OutboxSource.spec.transactionalMessages`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("duration(self.checkBack.firstCheckDelay) > duration('0s') && duration(self.checkBack.interval) > duration('0s') && duration(self.checkBack.timeout) > duration('0s')").message("checkBack.firstCheckDelay, interval and timeout must be greater than zero").field_path(".checkBack"))]
pub struct TransactionalMessages {
    /// Serve the API and run the check-back.
    #[serde(default)]
    pub enabled: bool,
    /// The API's port on the relay pods (apart from the status endpoints' 8080).
    #[serde(default = "default_transactional_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The Secret key holding the bearer token every API call must carry.
    pub token_secret_ref: crate::api::SecretKeyRef,
    /// Where undecided messages are checked back.
    pub check_back: CheckBack,
    /// How long committed and rolled-back half messages are kept as a record before they are
    /// purged. Dead-lettered ones are kept.
    #[serde(default = "default_decided_retention")]
    pub retention: Duration,
}

fn default_decided_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_transactional_port() -> i32 {
    8081
}

/// How the relay asks a producer about a message it neither committed nor rolled back.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckBack {
    /// The producer's endpoint: the relay POSTs `{"id": ...}` and expects
    /// `{"status": "committed"}` or `{"status": "rolled_back"}`.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// How long after preparing a message is first checked back.
    #[serde(default = "default_first_check_delay")]
    pub first_check_delay: Duration,
    /// Time between checks that got no answer.
    #[serde(default = "default_check_interval")]
    pub interval: Duration,
    /// Checks without an answer before the message goes to the dead-letter queue.
    #[serde(default = "default_max_checks")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_checks: i32,
    /// How long one check may take.
    #[serde(default = "default_check_timeout")]
    pub timeout: Duration,
}

fn default_first_check_delay() -> Duration {
    Duration::from_secs(10)
}

fn default_check_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_max_checks() -> i32 {
    15
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_ordering() -> Ordering {
    Ordering::PerKey
}

/// The outbox table's database.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboxDatabase {
    /// The database engine.
    pub engine: DatabaseEngine,
    /// Where the connection URL comes from.
    pub connection: Connection,
    /// The outbox table, optionally schema-qualified.
    #[serde(default = "default_outbox_table")]
    #[schemars(regex(pattern = TABLE_NAME_PATTERN))]
    pub table: String,
}

fn default_outbox_table() -> String {
    DEFAULT_OUTBOX_TABLE.to_owned()
}

/// How the relay notices new rows.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("duration(self.pollInterval) >= duration('10ms') && duration(self.pollInterval) <= duration('1h')").message("pollInterval must be between 10ms and 1h").field_path(".pollInterval"))]
pub struct Capture {
    /// How often the relay looks for new rows when nothing wakes it. With `notify` this is
    /// the fallback: a lost notification delays a row by at most one interval.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Duration,
    /// Most rows claimed and published in one batch.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch_size: i32,
    /// The largest message the relay publishes, headers included. A row whose message would be
    /// larger is dead-lettered with the reason instead of blocking the rows behind it. The broker
    /// may set a lower limit (NATS announces its `max_payload`); the lower one applies.
    #[serde(default = "default_max_message_bytes")]
    #[schemars(range(min = 1024, max = 67108864))]
    pub max_message_bytes: i32,
    /// Wake the relay with PostgreSQL LISTEN/NOTIFY as soon as a row commits. Defaults to on
    /// for PostgreSQL; other engines have no notifications, so setting it there is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<bool>,
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_batch_size() -> i32 {
    500
}

fn default_max_message_bytes() -> i32 {
    1024 * 1024
}

impl Default for Capture {
    fn default() -> Self {
        Self {
            poll_interval: default_poll_interval(),
            batch_size: default_batch_size(),
            max_message_bytes: default_max_message_bytes(),
            notify: None,
        }
    }
}

/// What happens to a published row.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.mode == 'Mark' || !has(self.retention)").message("retention applies only when mode is Mark").field_path(".retention"))]
pub struct Cleanup {
    /// `Delete` removes a row as soon as the broker confirms it. `Mark` records when it was
    /// published and purges it after `retention`, so recent history stays queryable.
    #[serde(default = "default_cleanup_mode")]
    pub mode: CleanupMode,
    /// With `Mark`: how long published rows are kept. Defaults to 168h (7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Duration>,
    /// Rows deleted per purge statement, so a purge never holds long locks.
    #[serde(default = "default_purge_batch_size")]
    #[schemars(range(min = 1, max = 100000))]
    pub purge_batch_size: i32,
}

fn default_cleanup_mode() -> CleanupMode {
    CleanupMode::Delete
}

fn default_purge_batch_size() -> i32 {
    1000
}

impl Default for Cleanup {
    fn default() -> Self {
        Self {
            mode: default_cleanup_mode(),
            retention: None,
            purge_batch_size: default_purge_batch_size(),
        }
    }
}

/// See `Cleanup.mode`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanupMode {
    /// Delete each row once the broker confirms it.
    Delete,
    /// Mark each row published and purge it after the retention.
    Mark,
}

/// One routing rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// A name for the route, unique in the source; it labels metrics and status.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Which rows take this route. An empty match takes every row (a catch-all, best last).
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// The `BrokerTopic` the rows are published to.
    pub topic_ref: ObjectRef,
    /// Overrides the topic's routing key (RabbitMQ) or subject (NATS) template for this route.
    /// Placeholders: `{aggregateType}`, `{aggregateId}`, `{eventType}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub routing_key: Option<String>,
}

/// Conditions on a row's aggregate type and event type. Both are glob patterns where `*`
/// matches any run of characters (`order.*`); an absent field matches anything.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// The aggregate type, e.g. `Order`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub aggregate_type: Option<String>,
    /// The event type, e.g. `order.created` or `order.*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub event_type: Option<String>,
}

/// What the relay last reported.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutboxSourceStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Rows waiting to be published and the age of the oldest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagStatus>,
    /// Rows published since the relay started counting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_total: Option<i64>,
    /// Rows sent to the dead-letter queue since the relay started counting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_lettered_total: Option<i64>,
    /// Rows that can never be published and stay in the outbox marked failed (only without a
    /// dead-letter queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_rows: Option<i64>,
    /// Relay pods ready, out of the desired replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// The relay's most recent failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastErrorStatus>,
    /// Transactional messages waiting for a decision, when `transactionalMessages` is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_messages: Option<HalfMessagesStatus>,
}

/// Half messages in the source database, as the relay last counted them (every 5 s).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct HalfMessagesStatus {
    /// Prepared and neither committed nor rolled back yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<i64>,
    /// Age in seconds of the oldest waiting one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_waiting_age_seconds: Option<i64>,
    /// Never decided (the check-backs ran out): in the dead-letter queue, and kept in the table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_lettered_kept: Option<i64>,
}
