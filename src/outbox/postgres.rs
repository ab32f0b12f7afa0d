//! The outbox on PostgreSQL: claims with `FOR UPDATE SKIP LOCKED`, wake-ups with LISTEN/NOTIFY.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction, postgres::PgPoolOptions};

use super::{
    Claim, Completion, NotificationChannel, OutboxStore, PendingStats, StoreError,
    schema::TableName, trusted,
};
use crate::{
    api::{Ordering, outbox_source::CleanupMode},
    message::OutboxEvent,
};

pub struct PgOutbox {
    pool: PgPool,
    url: String,
    table: TableName,
    claim_per_key: String,
    claim_any: String,
}

const COLUMNS: &str = "r.seq, r.id::text AS id, r.aggregate_type, r.aggregate_id, r.event_type, r.payload::text AS payload, r.headers::text AS headers, r.created_at";
/// How many batches of pending rows a per-key claim looks at to find heads.
const CLAIM_WINDOW_BATCHES: i64 = 4;
const PENDING: &str = "published_at IS NULL AND failed_at IS NULL";

impl PgOutbox {
    pub async fn connect(url: &str, table: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            // JIT compiling the claim costs more than running it.
            .after_connect(|connection, _| {
                Box::pin(async move {
                    sqlx::query("SET jit = off")
                        .execute(&mut *connection)
                        .await?;
                    Ok(())
                })
            })
            .acquire_timeout(super::ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        Ok(Self::with_pool(pool, url, table))
    }

    pub fn with_pool(pool: PgPool, url: &str, table: &str) -> Self {
        let table = TableName::new(table);
        let q = &table.qualified;
        // Read the oldest pending rows (a window of a few batches, without locks); within it
        // the first row of each key is that key's oldest pending row, its "head". Lock heads
        // with SKIP LOCKED: a key whose head another claim holds is skipped, and a key's later
        // rows are never heads while an earlier one is pending, so no two claims ever hold rows
        // of one key. Then take the window's rows of the locked keys. The window keeps the cost
        // proportional to the batch, not to the backlog.
        // Rows are fetched again by their `ctid` from the window (a TID scan) rather than by
        // `seq` through an index: a third less work per claim. The ctids are safe to reuse
        // within the statement: its snapshot keeps every tuple of the window from being
        // vacuumed, and a row changed since the snapshot fails the lock's recheck of the ctid,
        // so its key is skipped, as if another claim held it.
        let claim_per_key = format!(
            "WITH pending AS MATERIALIZED (
                SELECT ctid AS tid, seq, aggregate_id FROM {q} WHERE {PENDING} ORDER BY seq LIMIT $2),
             heads AS (
                SELECT o.aggregate_id FROM {q} o
                WHERE o.ctid = ANY(ARRAY(
                    SELECT p.tid FROM pending p
                    JOIN (SELECT min(seq) AS seq FROM pending GROUP BY aggregate_id) h ON h.seq = p.seq))
                  AND o.{PENDING}
                ORDER BY o.seq LIMIT $1
                FOR UPDATE OF o SKIP LOCKED)
             SELECT {COLUMNS} FROM {q} r
             WHERE r.ctid = ANY(ARRAY(
                SELECT p.tid FROM pending p WHERE p.aggregate_id IN (SELECT aggregate_id FROM heads)
                ORDER BY p.seq LIMIT $1))
             ORDER BY r.seq"
        );
        let claim_any = format!(
            "SELECT {COLUMNS} FROM {q} r WHERE r.{PENDING} ORDER BY r.seq LIMIT $1 FOR UPDATE SKIP LOCKED"
        );
        Self {
            pool,
            url: url.to_owned(),
            table,
            claim_per_key,
            claim_any,
        }
    }
}

fn event_of(row: &sqlx::postgres::PgRow) -> Result<OutboxEvent, sqlx::Error> {
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
impl OutboxStore for PgOutbox {
    async fn claim(&self, limit: u32, ordering: Ordering) -> Result<Box<dyn Claim>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let sql = match ordering {
            Ordering::PerKey => &self.claim_per_key,
            Ordering::None => &self.claim_any,
        };
        let mut query = sqlx::query(trusted(sql.as_str())).bind(i64::from(limit));
        if ordering == Ordering::PerKey {
            query = query.bind(i64::from(limit).saturating_mul(CLAIM_WINDOW_BATCHES));
        }
        let rows = query.fetch_all(&mut *tx).await?;
        let events = rows.iter().map(event_of).collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(PgClaim {
            tx,
            events,
            table: self.table.qualified.clone(),
        }))
    }

    async fn pending(&self) -> Result<PendingStats, StoreError> {
        let q = &self.table.qualified;
        let row = sqlx::query(trusted(format!(
            "SELECT count(*) FILTER (WHERE {PENDING}) AS rows,
                    min(created_at) FILTER (WHERE {PENDING}) AS oldest,
                    count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed
             FROM {q} WHERE published_at IS NULL"
        )))
        .fetch_one(&self.pool)
        .await?;
        Ok(PendingStats {
            rows: row.try_get("rows")?,
            oldest: row.try_get("oldest")?,
            failed: row.try_get("failed")?,
        })
    }

    async fn purge_published(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, StoreError> {
        let q = &self.table.qualified;
        let deleted = sqlx::query(trusted(format!(
            "DELETE FROM {q} WHERE seq IN (SELECT seq FROM {q} WHERE published_at < $1 ORDER BY published_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
        )))
        .bind(before)
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    fn notifications(&self) -> Option<NotificationChannel> {
        Some(NotificationChannel {
            url: self.url.clone(),
            channel: self.table.channel(),
        })
    }
}

struct PgClaim {
    tx: Transaction<'static, Postgres>,
    events: Vec<OutboxEvent>,
    table: String,
}

#[async_trait]
impl Claim for PgClaim {
    fn events(&self) -> &[OutboxEvent] {
        &self.events
    }

    async fn finish(
        mut self: Box<Self>,
        completion: &Completion,
        cleanup: CleanupMode,
    ) -> Result<(), StoreError> {
        let q = &self.table;
        let mut done: Vec<i64> = completion.published.clone();
        if completion.dead_lettered {
            done.extend(completion.failed.iter().map(|(seq, _)| *seq));
        } else if !completion.failed.is_empty() {
            let (seqs, reasons): (Vec<i64>, Vec<String>) =
                completion.failed.iter().cloned().unzip();
            sqlx::query(trusted(format!(
                "UPDATE {q} AS t SET failed_at = now(), failure = f.reason
                 FROM unnest($1::bigint[], $2::text[]) AS f(seq, reason) WHERE t.seq = f.seq"
            )))
            .bind(&seqs)
            .bind(&reasons)
            .execute(&mut *self.tx)
            .await?;
        }
        if !done.is_empty() {
            let sql = match cleanup {
                CleanupMode::Delete => format!("DELETE FROM {q} WHERE seq = ANY($1)"),
                CleanupMode::Mark => {
                    format!("UPDATE {q} SET published_at = now() WHERE seq = ANY($1)")
                }
            };
            sqlx::query(trusted(sql))
                .bind(&done)
                .execute(&mut *self.tx)
                .await?;
        }
        // Losing this commit in a database crash only means publishing the batch again (at
        // least once), so it need not wait for the disk flush.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        Ok(())
    }

    async fn abandon(self: Box<Self>) {
        if let Err(error) = self.tx.rollback().await {
            // The connection is gone: PostgreSQL has already released the locks.
            tracing::debug!(%error, "rollback of an abandoned claim failed");
        }
    }
}
