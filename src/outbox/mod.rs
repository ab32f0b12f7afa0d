//! The outbox table: its schema per engine, the relay's claims on it, and the producer helper.
//!
//! A claim takes a batch of pending rows so that no other relay (replica or worker) can take
//! the same rows, or any row of the same key while ordering is per key, until the claim is
//! finished (published rows deleted or marked, unpublishable rows marked failed) or abandoned
//! (everything stays pending and is claimed again).

pub mod migrate;
pub mod mysql;
pub mod postgres;
pub mod producer;
pub mod schema;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{
    api::{DatabaseEngine, Ordering, outbox_source::CleanupMode},
    config::{DatabaseConfig, SecretError},
    message::OutboxEvent,
};

/// How long a claim waits for a database connection. sqlx's default (30 s) would hide an
/// outage from readiness for that long; a short wait turns it into a retried error.
pub(crate) const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A database problem; the relay backs off and retries, nothing is lost.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read the database URL: {0}")]
    Secret(#[from] SecretError),
    #[error("{0}")]
    Database(#[from] sqlx::Error),
}

/// Pending work, for `/status` and the lag conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingStats {
    /// Rows not yet published (and not failed).
    pub rows: i64,
    pub oldest: Option<DateTime<Utc>>,
    /// Rows marked failed: unpublishable, kept because no dead-letter queue is configured.
    pub failed: i64,
}

/// How a claimed batch ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// Rows the broker confirmed: deleted or marked published.
    pub published: Vec<i64>,
    /// Rows that can never be published, with the reason: marked failed when no dead-letter
    /// queue took them, deleted or marked published when one did.
    pub failed: Vec<(i64, String)>,
    /// Whether the failed rows are now in a dead-letter queue.
    pub dead_lettered: bool,
}

/// An open claim on a batch of rows.
#[async_trait]
pub trait Claim: Send {
    /// The claimed rows, in publish order (by `seq`).
    fn events(&self) -> &[OutboxEvent];
    /// Removes or marks the rows per `cleanup` and releases the claim.
    async fn finish(
        self: Box<Self>,
        completion: &Completion,
        cleanup: CleanupMode,
    ) -> Result<(), StoreError>;
    /// Releases the claim; every row stays pending.
    async fn abandon(self: Box<Self>);
}

/// One engine's outbox table.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Claims up to `limit` pending rows. With `Ordering::PerKey` the batch holds, per key,
    /// only the oldest pending rows, and no other claim can hold rows of the same keys.
    async fn claim(&self, limit: u32, ordering: Ordering) -> Result<Box<dyn Claim>, StoreError>;
    async fn pending(&self) -> Result<PendingStats, StoreError>;
    /// Deletes up to `batch` rows published before `before`; returns how many.
    async fn purge_published(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, StoreError>;
    /// Waits for a commit notification; `None` when the engine has none (poll instead).
    fn notifications(&self) -> Option<NotificationChannel> {
        None
    }
    /// Whether claims from several workers of one process are safe (row locks exist).
    fn supports_concurrent_claims(&self) -> bool {
        true
    }
}

/// A PostgreSQL LISTEN channel the relay can wait on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationChannel {
    pub url: String,
    pub channel: String,
}

/// Opens the outbox store a relay config points at.
pub async fn open(config: &DatabaseConfig) -> Result<Box<dyn OutboxStore>, StoreError> {
    let url = config.url.read()?;
    Ok(match config.engine {
        DatabaseEngine::Postgres => {
            Box::new(postgres::PgOutbox::connect(&url, &config.table).await?)
        }
        DatabaseEngine::Mysql => Box::new(mysql::MySqlOutbox::connect(&url, &config.table).await?),
        DatabaseEngine::Sqlite => {
            Box::new(sqlite::SqliteOutbox::connect(&url, &config.table).await?)
        }
    })
}

/// Parses the RFC 3339 text SQLite stores times as (also accepting SQLite's own
/// `YYYY-MM-DD HH:MM:SS`).
pub(crate) fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                .map(|naive| naive.and_utc())
        })
        .map_err(|error| format!("created_at {text:?} is not a time: {error}"))
}

/// Marks SQL built with `format!` as safe: the only values spliced in are table names, which
/// the API restricts to `[A-Za-z_][A-Za-z0-9_]*` (optionally `schema.table`), and constants.
/// Every other value is a bind parameter.
pub(crate) fn trusted<T>(sql: T) -> sqlx::AssertSqlSafe<T> {
    sqlx::AssertSqlSafe(sql)
}
