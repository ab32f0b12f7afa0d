//! `Consumer`: a workload that delivers a topic's messages to a service, idempotently.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{
    common::{Connection, DatabaseTable, LagThresholds, ObjectRef, Ordering, WorkloadSpec},
    duration::Duration,
    status::{CommonStatus, LagStatus, LastErrorStatus},
};

/// The default idempotency table.
pub const DEFAULT_IDEMPOTENCY_TABLE: &str = "ferry_processed";

/// Reads a `BrokerTopic` and delivers each message to a service over HTTP (CloudEvents binary
/// mode, `Idempotency-Key` header), acknowledging only after the service accepted it, retrying
/// failures per a `RetryPolicy` and dead-lettering what keeps failing.
// Each `printcolumn(...)` repeats `name`/`type_` keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "Consumer",
    plural = "consumers",
    shortname = "fc",
    category = "ferry",
    namespaced,
    status = "ConsumerStatus",
    derive = "PartialEq",
    doc = "Delivers a topic's messages to a service over HTTP, idempotently, with retries and a dead-letter queue.",
    printcolumn(name = "Topic", type_ = "string", json_path = ".spec.topicRef.name"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.lag.messages",
        description = "Messages not yet acknowledged"
    ),
    printcolumn(
        name = "Oldest",
        type_ = "integer",
        json_path = ".status.lag.oldestAgeSeconds",
        description = "Age in seconds of the oldest unacknowledged message"
    ),
    printcolumn(
        name = "Delivered",
        type_ = "integer",
        json_path = ".status.deliveredTotal",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.lag) || !has(self.lag.maxAge) || duration(self.lag.maxAge) > duration('0s')").message("lag.maxAge must be greater than zero").field_path(".lag.maxAge"))]
pub struct ConsumerSpec {
    /// The `BrokerTopic` to read.
    pub topic_ref: ObjectRef,
    /// Which messages to deliver; the rest are acknowledged without a call to the sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<EventFilter>,
    /// The receiving service.
    pub sink: HttpSink,
    /// Messages delivered at the same time, per replica.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 1024))]
    pub concurrency: i32,
    /// `PerKey` delivers messages with the same key (aggregate id) one at a time, in order: a
    /// failing message holds back only later messages with its key. `None` (the default)
    /// delivers in any order.
    #[serde(default = "default_ordering")]
    pub ordering: Ordering,
    /// Where delivered message ids are recorded, so that a redelivered message is acknowledged
    /// without calling the sink again. Without it, duplicates are left to the service (it still
    /// receives the `Idempotency-Key` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<Idempotency>,
    /// Retry settings. Without it, the built-in defaults apply (5 attempts, 1s doubling to 5m,
    /// full jitter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy_ref: Option<ObjectRef>,
    /// Where messages go after the last attempt fails, or at once on a permanent failure.
    /// Without it, such a message is retried at `maxBackoff` until it succeeds: never dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue_ref: Option<ObjectRef>,
    /// The consumer Deployment: replicas, image and resources.
    #[serde(default = "WorkloadSpec::with_defaults")]
    pub workload: WorkloadSpec,
    /// When the consumer counts as lagging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagThresholds>,
    /// Stop consuming: the workload is scaled to zero and messages wait at the broker.
    #[serde(default)]
    pub suspend: bool,
}

fn default_concurrency() -> i32 {
    8
}

fn default_ordering() -> Ordering {
    Ordering::None
}

/// A filter on event types.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventFilter {
    /// Event types to deliver, as glob patterns (`order.*`). Empty delivers everything.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 255)))]
    pub event_types: Vec<String>,
}

/// An HTTP endpoint of the receiving service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.timeout) || duration(self.timeout) > duration('0s')").message("timeout must be greater than zero").field_path(".timeout"))]
pub struct HttpSink {
    /// The URL each message is POSTed to.
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^https?://[^\s/?#]+([/?#]\S*)?$")
    )]
    pub url: String,
    /// How long one request may take. Overrides the retry policy's `attemptTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Exactly one of `database` or `redis`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.database) != has(self.redis)").message("set exactly one of idempotency.database or idempotency.redis"))]
#[x_kube(validation = Rule::new("duration(self.window) >= duration('1m')").message("window must be at least 1m").field_path(".window"))]
pub struct Idempotency {
    /// A table (default `ferry_processed`) with a unique key on consumer and message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseTable>,
    /// Redis keys with a TTL of `window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisIdempotency>,
    /// How long a delivered id is remembered. A duplicate arriving later than this is delivered
    /// again (the service's own check on `Idempotency-Key` closes that gap).
    #[serde(default = "default_window")]
    pub window: Duration,
}

fn default_window() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// Redis as the idempotency store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisIdempotency {
    /// Where the `redis://` URL comes from.
    pub connection: Connection,
    /// Prefix of every key Ferry writes.
    #[serde(default = "default_key_prefix")]
    #[schemars(length(min = 1, max = 128))]
    pub key_prefix: String,
}

fn default_key_prefix() -> String {
    "ferry:processed:".to_owned()
}

/// What the consumer last reported.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Messages waiting at the broker for this consumer and the age of the oldest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagStatus>,
    /// Messages delivered since the consumer started counting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_total: Option<i64>,
    /// Messages handed back to the broker for a later attempt since the consumer started
    /// counting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_total: Option<i64>,
    /// Messages sent to the dead-letter queue since the consumer started counting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_lettered_total: Option<i64>,
    /// Consumer pods ready, out of the desired replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// The consumer's most recent failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastErrorStatus>,
}
