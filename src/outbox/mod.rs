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

/// Deletes in statements of at most `batch` rows until one deletes fewer, so that no statement
/// holds locks for long; `delete` runs one statement and says how many rows it deleted. A
/// failure ends this purge (logged, with `what`): the next one tries again.
pub(crate) async fn purge_in_batches<E, F, Fut>(batch: u32, what: &str, mut delete: F)
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, E>>,
{
    let mut purged = 0;
    loop {
        match delete().await {
            Ok(deleted) => {
                purged += deleted;
                if deleted < u64::from(batch) {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "purging {what} failed");
                break;
            }
        }
    }
    if purged > 0 {
        tracing::debug!(purged, "purged {what}");
    }
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::purge_in_batches;

    #[tokio::test]
    async fn a_purge_goes_on_while_statements_are_full_and_stops_at_a_short_one_or_an_error() {
        let answers = RefCell::new(vec![Ok(10), Ok(10), Ok(3), Ok(10)]);
        let calls = RefCell::new(0);
        purge_in_batches(10, "rows", || {
            *calls.borrow_mut() += 1;
            let answer: Result<u64, String> = answers.borrow_mut().remove(0);
            async move { answer }
        })
        .await;
        assert_eq!(*calls.borrow(), 3);

        let answers = RefCell::new(vec![Ok(10), Err("gone".to_owned()), Ok(10)]);
        *calls.borrow_mut() = 0;
        purge_in_batches(10, "rows", || {
            *calls.borrow_mut() += 1;
            let answer = answers.borrow_mut().remove(0);
            async move { answer }
        })
        .await;
        assert_eq!(*calls.borrow(), 2);
    }
}
