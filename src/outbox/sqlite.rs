//! The outbox on SQLite: one relay, one worker (SQLite has one writer at a time and no row
//! locks), reading pending rows without holding the write lock while publishing.

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::{
    QueryBuilder, Row, Sqlite, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
};

use super::{
    Claim, Completion, OutboxStore, PendingStats, StoreError, parse_time, schema::TableName,
    trusted,
};
use crate::{
    api::{Ordering, outbox_source::CleanupMode},
    message::OutboxEvent,
};

const COLUMNS: &str =
    "seq, id, aggregate_type, aggregate_id, event_type, payload, headers, created_at";
const PENDING: &str = "published_at IS NULL AND failed_at IS NULL";

pub struct SqliteOutbox {
    pool: SqlitePool,
    table: TableName,
}

/// Opens a SQLite database the way Ferry uses it everywhere: WAL (readers never block the
/// writer), a busy timeout instead of immediate `SQLITE_BUSY` errors, created if missing.
pub async fn open_pool(url: &str) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(10));
    SqlitePoolOptions::new()
        .acquire_timeout(super::ACQUIRE_TIMEOUT)
        .max_connections(4)
        .connect_with(options)
        .await
}

/// SQLite's time text, as the schema's default writes it.
pub fn sqlite_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl SqliteOutbox {
    pub async fn connect(url: &str, table: &str) -> Result<Self, StoreError> {
        Ok(Self {
            pool: open_pool(url).await?,
            table: TableName::new(table),
        })
    }
}

fn event_of(row: &sqlx::sqlite::SqliteRow) -> Result<OutboxEvent, sqlx::Error> {
    let created: String = row.try_get("created_at")?;
    let (created_at, defect) = match parse_time(&created) {
        Ok(time) => (time, None),
        Err(problem) => (DateTime::<Utc>::UNIX_EPOCH, Some(problem)),
    };
    Ok(OutboxEvent {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get::<String, _>("payload")?.into_bytes(),
        headers: row.try_get("headers")?,
        created_at,
        defect,
    })
}

#[async_trait]
impl OutboxStore for SqliteOutbox {
    async fn claim(&self, limit: u32, _ordering: Ordering) -> Result<Box<dyn Claim>, StoreError> {
        // One worker reads in `seq` order, which is commit order in SQLite: both orderings hold.
        let q = &self.table.qualified;
        let rows = sqlx::query(trusted(format!(
            "SELECT {COLUMNS} FROM {q} WHERE {PENDING} ORDER BY seq LIMIT ?"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let events = rows.iter().map(event_of).collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(SqliteClaim {
            pool: self.pool.clone(),
            events,
            table: q.clone(),
        }))
    }

    async fn pending(&self) -> Result<PendingStats, StoreError> {
        let q = &self.table.qualified;
        let row = sqlx::query(trusted(format!(
            "SELECT COALESCE(SUM(failed_at IS NULL), 0) AS pending_rows,
                    MIN(CASE WHEN failed_at IS NULL THEN created_at END) AS oldest,
                    COALESCE(SUM(failed_at IS NOT NULL), 0) AS failed
             FROM {q} WHERE published_at IS NULL"
        )))
        .fetch_one(&self.pool)
        .await?;
        let oldest: Option<String> = row.try_get("oldest")?;
        Ok(PendingStats {
            rows: row.try_get("pending_rows")?,
            oldest: oldest.and_then(|text| parse_time(&text).ok()),
            failed: row.try_get("failed")?,
        })
    }

    async fn purge_published(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, StoreError> {
        let q = &self.table.qualified;
        let deleted = sqlx::query(trusted(format!(
            "DELETE FROM {q} WHERE seq IN (SELECT seq FROM {q} WHERE published_at IS NOT NULL AND published_at < ? ORDER BY seq LIMIT ?)"
        )))
        .bind(sqlite_time(before))
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    fn supports_concurrent_claims(&self) -> bool {
        false
    }
}

struct SqliteClaim {
    pool: SqlitePool,
    events: Vec<OutboxEvent>,
    table: String,
}

#[async_trait]
impl Claim for SqliteClaim {
    fn events(&self) -> &[OutboxEvent] {
        &self.events
    }

    async fn finish(
        self: Box<Self>,
        completion: &Completion,
        cleanup: CleanupMode,
    ) -> Result<(), StoreError> {
        let q = &self.table;
        let now = sqlite_time(Utc::now());
        let mut tx = self.pool.begin().await?;
        let mut done = completion.published.clone();
        if completion.dead_lettered {
            done.extend(completion.failed.iter().map(|(seq, _)| *seq));
        } else {
            for (seq, reason) in &completion.failed {
                sqlx::query(trusted(format!(
                    "UPDATE {q} SET failed_at = ?, failure = ? WHERE seq = ?"
                )))
                .bind(&now)
                .bind(reason)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
            }
        }
        for chunk in done.chunks(500) {
            let mut query = match cleanup {
                CleanupMode::Delete => {
                    QueryBuilder::<Sqlite>::new(format!("DELETE FROM {q} WHERE seq IN ("))
                }
                CleanupMode::Mark => {
                    let mut query =
                        QueryBuilder::<Sqlite>::new(format!("UPDATE {q} SET published_at = "));
                    query.push_bind(now.clone()).push(" WHERE seq IN (");
                    query
                }
            };
            let mut seqs = query.separated(", ");
            for seq in chunk {
                seqs.push_bind(*seq);
            }
            query.push(")");
            query.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn abandon(self: Box<Self>) {}
}
