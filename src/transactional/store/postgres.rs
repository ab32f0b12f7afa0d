//! The half-message table on PostgreSQL: leases for the check-back with `FOR UPDATE SKIP
//! LOCKED`, decisions that need not wait for the disk flush.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row, postgres::PgPoolOptions};
use uuid::Uuid;

use super::{
    Decided, DecidedBy, Decision, HalfError, HalfMessage, HalfStats, HalfStore, NewHalfMessage,
    STATES, State, copy_into_outbox_sql, half_table, headers_json, judge, stats_sql,
};
use crate::outbox::{schema::TableName, trusted};

/// The half-message table of one PostgreSQL outbox.
pub struct PgHalfStore {
    pool: PgPool,
    outbox: String,
    half: String,
}

impl PgHalfStore {
    pub async fn connect(url: &str, outbox: &str) -> Result<Self, HalfError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(crate::outbox::ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        Ok(Self::with_pool(pool, outbox))
    }

    pub fn with_pool(pool: PgPool, outbox: &str) -> Self {
        Self {
            pool,
            outbox: outbox.to_owned(),
            half: half_table(outbox),
        }
    }
}

#[async_trait]
impl HalfStore for PgHalfStore {
    async fn migrate(&self) -> Result<(), HalfError> {
        for statement in ddl(&self.outbox) {
            sqlx::query(trusted(statement)).execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn prepare(
        &self,
        message: &NewHalfMessage,
        first_check: Duration,
    ) -> Result<Uuid, HalfError> {
        let id = Uuid::now_v7();
        sqlx::query(trusted(format!(
            "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, payload, headers, next_check_at)
             VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, now() + make_interval(secs => $7))",
            self.half
        )))
        .bind(id)
        .bind(&message.aggregate_type)
        .bind(&message.aggregate_id)
        .bind(&message.event_type)
        .bind(message.payload.get())
        .bind(headers_json(message)?)
        .bind(first_check.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    async fn decide(
        &self,
        id: Uuid,
        decision: Decision,
        by: DecidedBy,
    ) -> Result<Decided, HalfError> {
        let mut tx = self.pool.begin().await?;
        let state: Option<String> = sqlx::query_scalar(trusted(format!(
            "SELECT state FROM {} WHERE id = $1 FOR UPDATE",
            self.half
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let state = state.ok_or(HalfError::NotFound(id))?;
        if let Some(decided) = judge(id, &state, decision)? {
            return Ok(Decided {
                state: decided,
                repeated: true,
            });
        }
        if decision == Decision::Commit {
            sqlx::query(trusted(copy_into_outbox_sql(
                &self.outbox,
                &self.half,
                "$1",
            )))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(trusted(format!(
            "UPDATE {} SET state = $2, decided_at = now(), decided_by = $3 WHERE id = $1",
            self.half
        )))
        .bind(id)
        .bind(decision.state().as_str())
        .bind(by.as_str())
        .execute(&mut *tx)
        .await?;
        // A decision lost in a database crash leaves the message prepared, and the check-back
        // then asks the producer, whose marker answers the same: the decision need not wait for
        // the disk flush. (A prepare must: a producer told "prepared" builds on it.)
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Decided {
            state: decision.state(),
            repeated: false,
        })
    }

    async fn due(&self, limit: u32, lease: Duration) -> Result<Vec<HalfMessage>, HalfError> {
        let rows = sqlx::query(trusted(format!(
            "UPDATE {half} h SET next_check_at = now() + make_interval(secs => $2)
             WHERE h.id IN (SELECT id FROM {half} WHERE state = 'prepared' AND next_check_at <= now()
                            ORDER BY next_check_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING h.id, h.aggregate_type, h.aggregate_id, h.event_type, h.payload::text AS payload,
                       h.headers::text AS headers, h.checks, h.prepared_at",
            half = self.half
        )))
        .bind(i64::from(limit))
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(half_message).collect()
    }

    async fn check_failed(
        &self,
        id: Uuid,
        error: &str,
        interval: Duration,
    ) -> Result<i32, HalfError> {
        let checks: Option<i32> = sqlx::query_scalar(trusted(format!(
            "UPDATE {} SET checks = checks + 1, last_check_error = $2,
                 next_check_at = now() + make_interval(secs => $3)
             WHERE id = $1 AND state = 'prepared' RETURNING checks",
            self.half
        )))
        .bind(id)
        .bind(error)
        .bind(interval.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        Ok(checks.unwrap_or_default())
    }

    async fn give_up(&self, id: Uuid, reason: &str) -> Result<bool, HalfError> {
        let done = sqlx::query(trusted(format!(
            "UPDATE {} SET state = 'dead_lettered', decided_at = now(), decided_by = $2,
                 last_check_error = $3
             WHERE id = $1 AND state = 'prepared'",
            self.half
        )))
        .bind(id)
        .bind(DecidedBy::MaxChecks.as_str())
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn purge_decided(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, HalfError> {
        let deleted = sqlx::query(trusted(format!(
            "DELETE FROM {half} WHERE id IN (
                 SELECT id FROM {half} WHERE state IN ('committed', 'rolled_back') AND decided_at < $1
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            half = self.half
        )))
        .bind(before)
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    async fn state(&self, id: Uuid) -> Result<(State, i32), HalfError> {
        let row = sqlx::query(trusted(format!(
            "SELECT state, checks FROM {} WHERE id = $1",
            self.half
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(HalfError::NotFound(id))?;
        Ok((State::parse(row.try_get("state")?)?, row.try_get("checks")?))
    }

    async fn stats(&self) -> Result<HalfStats, HalfError> {
        let row = sqlx::query(trusted(stats_sql(&self.half)))
            .fetch_one(&self.pool)
            .await?;
        Ok(HalfStats {
            prepared: row.try_get("prepared")?,
            oldest_prepared_at: row.try_get("oldest")?,
            dead_lettered: row.try_get("dead_lettered")?,
        })
    }
}

fn half_message(row: &sqlx::postgres::PgRow) -> Result<HalfMessage, HalfError> {
    Ok(HalfMessage {
        id: row.try_get("id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        headers: row.try_get("headers")?,
        checks: row.try_get("checks")?,
        prepared_at: row.try_get("prepared_at")?,
    })
}

/// The table, with partial indexes for the check-back (and the waiting count), the purge and
/// the dead-lettered count.
pub fn ddl(outbox: &str) -> Vec<String> {
    let half = half_table(outbox);
    let bare = TableName::new(&half).bare;
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {half} (
    id               UUID PRIMARY KEY,
    aggregate_type   TEXT NOT NULL,
    aggregate_id     TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    payload          JSONB NOT NULL,
    headers          JSONB,
    state            TEXT NOT NULL DEFAULT 'prepared' CHECK (state IN ({STATES})),
    prepared_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_at       TIMESTAMPTZ,
    decided_by       TEXT,
    checks           INT NOT NULL DEFAULT 0,
    next_check_at    TIMESTAMPTZ NOT NULL,
    last_check_error TEXT
)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {bare}_due ON {half} (next_check_at) WHERE state = 'prepared'"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {bare}_decided ON {half} (decided_at) WHERE state IN ('committed', 'rolled_back')"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {bare}_dead ON {half} (prepared_at) WHERE state = 'dead_lettered'"
        ),
    ]
}
