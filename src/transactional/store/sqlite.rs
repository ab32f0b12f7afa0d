//! The half-message table on SQLite: one writer at a time, so a decision starts with
//! `BEGIN IMMEDIATE` (the write lock first, instead of a read lock that could not be upgraded
//! while another writer waits), and times are RFC 3339 text, compared as text, like the outbox's.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use super::{
    Decided, DecidedBy, Decision, HalfError, HalfMessage, HalfStats, HalfStore, NewHalfMessage,
    STATES, State, copy_into_outbox_sql, half_table, headers_json, judge, parse_id, stats_sql,
};
use crate::outbox::{
    parse_time,
    schema::TableName,
    sqlite::{open_pool, sqlite_time},
    trusted,
};

/// The half-message table of one SQLite outbox.
pub struct SqliteHalfStore {
    pool: SqlitePool,
    outbox: String,
    half: String,
}

impl SqliteHalfStore {
    pub async fn connect(url: &str, outbox: &str) -> Result<Self, HalfError> {
        Ok(Self {
            pool: open_pool(url).await?,
            outbox: outbox.to_owned(),
            half: half_table(outbox),
        })
    }
}

/// The time `after` from now, as the table stores it.
fn from_now(after: Duration) -> String {
    let after = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
    sqlite_time(
        Utc::now()
            .checked_add_signed(after)
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}

fn time(text: &str) -> Result<DateTime<Utc>, HalfError> {
    parse_time(text).map_err(HalfError::Corrupt)
}

#[async_trait]
impl HalfStore for SqliteHalfStore {
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
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            self.half
        )))
        .bind(id.to_string())
        .bind(&message.aggregate_type)
        .bind(&message.aggregate_id)
        .bind(&message.event_type)
        .bind(message.payload.get())
        .bind(headers_json(message)?)
        .bind(from_now(first_check))
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
        let key = id.to_string();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let state: Option<String> = sqlx::query_scalar(trusted(format!(
            "SELECT state FROM {} WHERE id = ?",
            self.half
        )))
        .bind(&key)
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
            sqlx::query(trusted(copy_into_outbox_sql(&self.outbox, &self.half, "?")))
                .bind(&key)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(trusted(format!(
            "UPDATE {} SET state = ?, decided_at = ?, decided_by = ? WHERE id = ?",
            self.half
        )))
        .bind(decision.state().as_str())
        .bind(sqlite_time(Utc::now()))
        .bind(by.as_str())
        .bind(&key)
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
            "UPDATE {half} SET next_check_at = ?
             WHERE id IN (SELECT id FROM {half} WHERE state = 'prepared' AND next_check_at <= ?
                          ORDER BY next_check_at LIMIT ?)
             RETURNING id, aggregate_type, aggregate_id, event_type, payload, headers, checks, prepared_at",
            half = self.half
        )))
        .bind(from_now(lease))
        .bind(sqlite_time(Utc::now()))
        .bind(limit)
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
            "UPDATE {} SET checks = checks + 1, last_check_error = ?, next_check_at = ?
             WHERE id = ? AND state = 'prepared' RETURNING checks",
            self.half
        )))
        .bind(error)
        .bind(from_now(interval))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(checks.unwrap_or_default())
    }

    async fn give_up(&self, id: Uuid, reason: &str) -> Result<bool, HalfError> {
        let done = sqlx::query(trusted(format!(
            "UPDATE {} SET state = 'dead_lettered', decided_at = ?, decided_by = ?, last_check_error = ?
             WHERE id = ? AND state = 'prepared'",
            self.half
        )))
        .bind(sqlite_time(Utc::now()))
        .bind(DecidedBy::MaxChecks.as_str())
        .bind(reason)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn purge_decided(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, HalfError> {
        let deleted = sqlx::query(trusted(format!(
            "DELETE FROM {half} WHERE id IN (
                 SELECT id FROM {half} WHERE state IN ('committed', 'rolled_back') AND decided_at < ?
                 LIMIT ?)",
            half = self.half
        )))
        .bind(sqlite_time(before))
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    async fn state(&self, id: Uuid) -> Result<(State, i32), HalfError> {
        let row = sqlx::query(trusted(format!(
            "SELECT state, checks FROM {} WHERE id = ?",
            self.half
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(HalfError::NotFound(id))?;
        Ok((State::parse(row.try_get("state")?)?, row.try_get("checks")?))
    }

    async fn stats(&self) -> Result<HalfStats, HalfError> {
        let row = sqlx::query(trusted(stats_sql(&self.half)))
            .fetch_one(&self.pool)
            .await?;
        let oldest: Option<String> = row.try_get("oldest")?;
        Ok(HalfStats {
            prepared: row.try_get("prepared")?,
            oldest_prepared_at: oldest.as_deref().map(time).transpose()?,
            dead_lettered: row.try_get("dead_lettered")?,
        })
    }
}

fn half_message(row: &sqlx::sqlite::SqliteRow) -> Result<HalfMessage, HalfError> {
    Ok(HalfMessage {
        id: parse_id(row.try_get("id")?)?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        headers: row.try_get("headers")?,
        checks: row.try_get("checks")?,
        prepared_at: time(row.try_get("prepared_at")?)?,
    })
}

/// The table, with partial indexes for the check-back, the counts and the purge.
pub fn ddl(outbox: &str) -> Vec<String> {
    let half = half_table(outbox);
    let bare = TableName::new(&half).bare;
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {half} (
    id               TEXT PRIMARY KEY,
    aggregate_type   TEXT NOT NULL,
    aggregate_id     TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    payload          TEXT NOT NULL,
    headers          TEXT,
    state            TEXT NOT NULL DEFAULT 'prepared' CHECK (state IN ({STATES})),
    prepared_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    decided_at       TEXT,
    decided_by       TEXT,
    checks           INTEGER NOT NULL DEFAULT 0,
    next_check_at    TEXT NOT NULL,
    last_check_error TEXT
)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {bare}_due ON {bare} (next_check_at) WHERE state = 'prepared'"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {bare}_decided ON {bare} (decided_at) WHERE state IN ('committed', 'rolled_back')"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {bare}_dead ON {bare} (prepared_at) WHERE state = 'dead_lettered'"
        ),
    ]
}
