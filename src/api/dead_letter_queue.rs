//! `DeadLetterQueue`: where messages that cannot be delivered are kept for a person to handle.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{
    common::{DatabaseTable, ObjectRef},
    duration::Duration,
    status::CommonStatus,
};

/// The default dead-letter table.
pub const DEFAULT_DEAD_LETTER_TABLE: &str = "ferry_dead_letters";

/// Where messages that keep failing (or can never be published) are kept, with the reason,
/// until a person inspects them and replays or discards them with `ferry dlq`.
// Each `printcolumn(...)` repeats `name`/`type_` keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "DeadLetterQueue",
    plural = "deadletterqueues",
    shortname = "dlq",
    category = "ferry",
    namespaced,
    status = "DeadLetterQueueStatus",
    derive = "PartialEq",
    doc = "Where messages that keep failing are kept, with the reason, until a person replays or discards them.",
    printcolumn(
        name = "Depth",
        type_ = "integer",
        json_path = ".status.depth",
        description = "Dead letters waiting for a decision"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Alerting",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Alerting\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("duration(self.retention) >= duration('1h')").message("retention must be at least 1h").field_path(".retention"))]
pub struct DeadLetterQueueSpec {
    /// Where dead letters are stored: a database table, or a broker topic.
    pub store: DeadLetterStore,
    /// How long a dead letter is kept after it was replayed or discarded (the record of that
    /// decision). Dead letters still waiting for a decision are never removed by retention.
    #[serde(default = "default_retention")]
    pub retention: Duration,
    /// Raise the `Alerting` condition when more dead letters than this wait for a decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<DeadLetterAlert>,
}

fn default_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

/// Exactly one of `database` or `topicRef`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.database) != has(self.topicRef)").message("set exactly one of store.database or store.topicRef"))]
pub struct DeadLetterStore {
    /// A table (default `ferry_dead_letters`) in a PostgreSQL, MySQL or SQLite database. The
    /// `ferry dlq` commands (list, show, stats, replay, discard) work on this store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseTable>,
    /// A `BrokerTopic` that dead letters are published to, for teams that process them with
    /// their own tooling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_ref: Option<ObjectRef>,
}

/// Alerting on depth.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetterAlert {
    /// Dead letters waiting for a decision above which `Alerting` becomes true.
    #[schemars(range(min = 0))]
    pub depth_threshold: i64,
}

/// How many dead letters wait.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterQueueStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Dead letters waiting for a decision (not yet replayed or discarded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<i64>,
    /// Age in seconds of the oldest waiting dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_seconds: Option<i64>,
}
