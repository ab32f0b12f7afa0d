//! Status fields shared by every kind: observed generation, standard conditions and lag.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types Ferry writes. Every kind has `Ready`; the others appear where they apply.
pub mod condition_type {
    /// The object is valid, its references resolve and (for workloads) its pods serve.
    pub const READY: &str = "Ready";
    /// Every object the spec references exists and is usable, and the spec is valid.
    pub const REFERENCES_RESOLVED: &str = "ReferencesResolved";
    /// The workload's Deployment has its pods available.
    pub const WORKLOAD_AVAILABLE: &str = "WorkloadAvailable";
    /// Waiting messages or their age crossed the `lag` thresholds.
    pub const LAGGING: &str = "Lagging";
    /// `suspend: true` is set and the workload is scaled to zero.
    pub const SUSPENDED: &str = "Suspended";
    /// A dead-letter queue holds more than its alert threshold.
    pub const ALERTING: &str = "Alerting";
    /// The dead-letter queue a workload writes to holds more than its alert threshold (or, for
    /// a relay without one, rows wait in the outbox marked failed).
    pub const DEAD_LETTERS: &str = "DeadLetters";
}

/// The part of a status every Ferry kind shares.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommonStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions: `Ready`, and where they apply `ReferencesResolved`,
    /// `WorkloadAvailable`, `Lagging`, `DeadLetters`, `Suspended` or `Alerting`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// How far behind a pipeline is, as last reported by its workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LagStatus {
    /// Messages waiting: outbox rows not yet published, or messages the consumer has not yet
    /// acknowledged at the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<i64>,
    /// Age in seconds of the oldest waiting message, where it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_seconds: Option<i64>,
}

/// The most recent failure a workload reported in its `/status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastErrorStatus {
    /// What failed, as the workload said it (never a secret).
    pub message: String,
    /// A stable, low-cardinality name for the kind of failure (for example `broker`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub category: String,
    /// When the workload saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}
