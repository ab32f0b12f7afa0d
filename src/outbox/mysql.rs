//! The outbox on MySQL 8 / MariaDB 10.6+: claims with `FOR UPDATE SKIP LOCKED` in a
//! READ COMMITTED transaction (no gap locks that would block producers). No notifications:
//! the relay polls.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlPool, QueryBuilder, Row, Transaction, mysql::MySqlPoolOptions};

use super::{Claim, Completion, OutboxStore, PendingStats, StoreError, schema::TableName, trusted};
use crate::{
    api::{Ordering, outbox_source::CleanupMode},
    message::OutboxEvent,
};

const COLUMNS: &str =
    "seq, id, aggregate_type, aggregate_id, event_type, payload, headers, created_at";
const PENDING: &str = "published_at IS NULL AND failed_at IS NULL";

pub struct MySqlOutbox {
    pool: MySqlPool,
    table: TableName,
}

/// Opens a MySQL pool the way Ferry's claims need it: READ COMMITTED on every connection, so
/// that locking reads take no gap locks (which would block producers' inserts).
pub async fn open_pool(url: &str) -> Result<MySqlPool, sqlx::Error> {
    MySqlPoolOptions::new()
        .acquire_timeout(super::ACQUIRE_TIMEOUT)
        .max_connections(8)
        .after_connect(|connection, _| {
            Box::pin(async move {
                sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .execute(&mut *connection)
                    .await?;
                Ok(())
            })
        })
        .connect(url)
        .await
}

impl MySqlOutbox {
    pub async fn connect(url: &str, table: &str) -> Result<Self, StoreError> {
        Ok(Self {
            pool: open_pool(url).await?,
            table: TableName::new(table),
        })
    }
}

fn event_of(row: &sqlx::mysql::MySqlRow) -> Result<OutboxEvent, sqlx::Error> {
    Ok(OutboxEvent {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get::<String, _>("payload")?.into_bytes(),
        headers: row.try_get("headers")?,
        created_at: row.try_get("created_at")?,
        defect: None,
    })
}

#[async_trait]
impl OutboxStore for MySqlOutbox {
    async fn claim(&self, limit: u32, ordering: Ordering) -> Result<Box<dyn Claim>, StoreError> {
        let q = &self.table.qualified;
        let mut tx = self.pool.begin().await?;
        let rows = match ordering {
            Ordering::None => {
                sqlx::query(trusted(format!("SELECT {COLUMNS} FROM {q} WHERE {PENDING} ORDER BY seq LIMIT ? FOR UPDATE SKIP LOCKED")))
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?
            }
            Ordering::PerKey => {
                // MySQL cannot lock inside a derived table, so heads and rows are separate
                // statements of one transaction; see the PostgreSQL store for why heads are
                // enough. The heads are found without locking, then locked: a locking read with
                // SKIP LOCKED skips locked rows inside its NOT EXISTS too, so a key whose head
                // another claim holds would show its second row as a head, and two claims would
                // publish the same rows.
                let candidates: Vec<i64> = sqlx::query_scalar(trusted(format!(
                    "SELECT o.seq FROM {q} o
                     WHERE o.{PENDING}
                       AND NOT EXISTS (SELECT 1 FROM {q} e WHERE e.aggregate_id = o.aggregate_id AND e.seq < o.seq AND e.{PENDING})
                     ORDER BY o.seq LIMIT ?"
                )))
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                let heads: Vec<String> = if candidates.is_empty() {
                    Vec::new()
                } else {
                    // By primary key only: through a secondary index (or a scan of a small
                    // table) the lock also takes rows outside the list, and the other claims'
                    // SKIP LOCKED then passes over heads nobody holds.
                    let mut lock = QueryBuilder::<MySql>::new(format!(
                        "SELECT aggregate_id FROM {q} FORCE INDEX (PRIMARY) WHERE {PENDING} AND seq IN ("
                    ));
                    let mut seqs = lock.separated(", ");
                    for seq in &candidates {
                        seqs.push_bind(*seq);
                    }
                    lock.push(") ORDER BY seq FOR UPDATE SKIP LOCKED");
                    lock.build_query_scalar().fetch_all(&mut *tx).await?
                };
                if heads.is_empty() {
                    Vec::new()
                } else {
                    let mut query = QueryBuilder::<MySql>::new(format!("SELECT {COLUMNS} FROM {q} WHERE {PENDING} AND aggregate_id IN ("));
                    let mut keys = query.separated(", ");
                    for key in &heads {
                        keys.push_bind(key);
                    }
                    query.push(") ORDER BY seq LIMIT ").push_bind(limit);
                    query.build().fetch_all(&mut *tx).await?
                }
            }
        };
        let events = rows.iter().map(event_of).collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(MySqlClaim {
            tx,
            events,
            table: q.clone(),
        }))
    }

    async fn pending(&self) -> Result<PendingStats, StoreError> {
        let q = &self.table.qualified;
        let row = sqlx::query(trusted(format!(
            "SELECT CAST(COALESCE(SUM(failed_at IS NULL), 0) AS SIGNED) AS pending_rows,
                    MIN(CASE WHEN failed_at IS NULL THEN created_at END) AS oldest,
                    CAST(COALESCE(SUM(failed_at IS NOT NULL), 0) AS SIGNED) AS failed
             FROM {q} WHERE published_at IS NULL"
        )))
        .fetch_one(&self.pool)
        .await?;
        Ok(PendingStats {
            rows: row.try_get("pending_rows")?,
            oldest: row.try_get("oldest")?,
            failed: row.try_get("failed")?,
        })
    }

    async fn purge_published(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, StoreError> {
        let q = &self.table.qualified;
        let deleted = sqlx::query(trusted(format!(
            "DELETE FROM {q} WHERE published_at < ? ORDER BY published_at LIMIT ?"
        )))
        .bind(before)
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }
}

struct MySqlClaim {
    tx: Transaction<'static, MySql>,
    events: Vec<OutboxEvent>,
    table: String,
}

#[async_trait]
impl Claim for MySqlClaim {
    fn events(&self) -> &[OutboxEvent] {
        &self.events
    }

    async fn finish(
        mut self: Box<Self>,
        completion: &Completion,
        cleanup: CleanupMode,
    ) -> Result<(), StoreError> {
        let q = self.table.clone();
        let mut done = completion.published.clone();
        if completion.dead_lettered {
            done.extend(completion.failed.iter().map(|(seq, _)| *seq));
        } else {
            for (seq, reason) in &completion.failed {
                sqlx::query(trusted(format!(
                    "UPDATE {q} SET failed_at = CURRENT_TIMESTAMP(6), failure = ? WHERE seq = ?"
                )))
                .bind(reason)
                .bind(seq)
                .execute(&mut *self.tx)
                .await?;
            }
        }
        if !done.is_empty() {
            let mut query = match cleanup {
                CleanupMode::Delete => {
                    QueryBuilder::<MySql>::new(format!("DELETE FROM {q} WHERE seq IN ("))
                }
                CleanupMode::Mark => QueryBuilder::<MySql>::new(format!(
                    "UPDATE {q} SET published_at = CURRENT_TIMESTAMP(6) WHERE seq IN ("
                )),
            };
            let mut seqs = query.separated(", ");
            for seq in &done {
                seqs.push_bind(seq);
            }
            query.push(")");
            query.build().execute(&mut *self.tx).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }

    async fn abandon(self: Box<Self>) {
        if let Err(error) = self.tx.rollback().await {
            tracing::debug!(%error, "rollback of an abandoned claim failed");
        }
    }
}
