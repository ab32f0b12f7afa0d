//! Types shared by several kinds: references, connections, databases, workloads, lag thresholds.

use k8s_openapi::api::core::v1::ResourceRequirements;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;

/// Names that reference another object in the same namespace follow the DNS subdomain rule.
pub const OBJECT_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";
/// A SQL table name, optionally qualified by a schema: `ferry_outbox` or `app.ferry_outbox`.
pub const TABLE_NAME_PATTERN: &str =
    r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$";
/// A key inside a Secret's `data`.
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

/// A reference to another Ferry object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// Name of the referenced object, in the same namespace as the referring one.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
}

impl ObjectRef {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

/// One key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key within the Secret whose value is the connection URL.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub key: String,
}

fn default_secret_key() -> String {
    "url".to_owned()
}

/// How to reach a database or broker. Credentials are never written inline: the whole
/// connection URL (for example `postgres://user:pass@host/db` or `amqp://user:pass@host/vhost`)
/// is read from a Secret key, so it can be rotated and kept out of Git.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Connection {
    /// The Secret key that holds the connection URL.
    pub secret_ref: SecretKeyRef,
}

/// The SQL engines Ferry reads from and writes to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseEngine {
    /// PostgreSQL 12 or later.
    Postgres,
    /// MySQL 8 or MariaDB 10.6 or later.
    Mysql,
    /// SQLite 3.35 or later (a file on a volume; standalone mode and demos).
    Sqlite,
}

impl DatabaseEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Sqlite => "sqlite",
        }
    }

    /// The URL schemes a connection string for this engine may use.
    pub fn url_schemes(self) -> &'static [&'static str] {
        match self {
            Self::Postgres => &["postgres", "postgresql"],
            Self::Mysql => &["mysql", "mariadb"],
            Self::Sqlite => &["sqlite"],
        }
    }
}

/// A table in a database: where outbox rows, dead letters or idempotency records live.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseTable {
    /// The database engine.
    pub engine: DatabaseEngine,
    /// Where the connection URL comes from.
    pub connection: Connection,
    /// The table name, optionally schema-qualified (`schema.table`). Each kind documents its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TABLE_NAME_PATTERN))]
    pub table: Option<String>,
}

/// Delivery order.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Ordering {
    /// Messages with the same key (the aggregate id) are handled in commit order; different keys
    /// proceed independently.
    PerKey,
    /// No ordering promise; the highest throughput.
    None,
}

/// How a workload runs: the Deployment the operator builds for it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Number of pods. Several replicas share the work safely; `0` stops the workload (prefer
    /// `suspend`, which also says so in the status).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 64))]
    pub replicas: i32,
    /// The container image, when it should differ from the operator's default `ferry` image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// CPU and memory requests and limits for the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_replicas() -> i32 {
    1
}

impl WorkloadSpec {
    pub fn with_defaults() -> Self {
        Self {
            replicas: default_replicas(),
            image: None,
            resources: None,
        }
    }
}

/// When a pipeline counts as falling behind. Crossing either threshold sets the `Lagging`
/// condition (and `Ready` stays true: lag is a warning, not an outage).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LagThresholds {
    /// Messages waiting (outbox rows not yet published, or messages not yet acknowledged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_messages: Option<i64>,
    /// Age of the oldest waiting message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
}
