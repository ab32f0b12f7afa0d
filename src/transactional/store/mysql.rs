//! The half-message table on MySQL 8 / MariaDB 10.6+: READ COMMITTED like the outbox (no gap
//! locks to block producers), leases taken with `FOR UPDATE SKIP LOCKED` and then moved in a
//! second statement of the same transaction (MySQL cannot update the table it selects from).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};
use uuid::Uuid;

use super::{
    Decided, DecidedBy, Decision, HalfError, HalfMessage, HalfStats, HalfStore, NewHalfMessage,
    STATES, State, copy_into_outbox_sql, half_table, headers_json, judge, parse_id, stats_sql,
};
use crate::outbox::{mysql::open_pool, schema::TableName, trusted};

/// The half-message table of one MySQL outbox.
pub struct MySqlHalfStore {
    pool: MySqlPool,
    outbox: String,
    half: String,
}

impl MySqlHalfStore {
    pub async fn connect(url: &str, outbox: &str) -> Result<Self, HalfError> {
        Ok(Self {
            pool: open_pool(url).await?,
            outbox: outbox.to_owned(),
            half: half_table(outbox),
        })
    }
}

/// Microseconds, the unit of MySQL's `INTERVAL ... MICROSECOND`.
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

#[async_trait]
impl HalfStore for MySqlHalfStore {
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
             VALUES (?, ?, ?, ?, ?, ?, CURRENT_TIMESTAMP(6) + INTERVAL ? MICROSECOND)",
            self.half
        )))
        .bind(id.to_string())
        .bind(&message.aggregate_type)
        .bind(&message.aggregate_id)
        .bind(&message.event_type)
        .bind(message.payload.get())
        .bind(headers_json(message)?)
        .bind(micros(first_check))
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
        let mut tx = self.pool.begin().await?;
        // A locking read sees the latest committed state even under READ COMMITTED, so a call
        // that waited here for a concurrent one finds its decision.
        let state: Option<String> = sqlx::query_scalar(trusted(format!(
            "SELECT state FROM {} WHERE id = ? FOR UPDATE",
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
            "UPDATE {} SET state = ?, decided_at = CURRENT_TIMESTAMP(6), decided_by = ? WHERE id = ?",
            self.half
        )))
        .bind(decision.state().as_str())
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
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(trusted(format!(
            "SELECT id, aggregate_type, aggregate_id, event_type, payload, headers, checks, prepared_at
             FROM {} WHERE state = 'prepared' AND next_check_at <= CURRENT_TIMESTAMP(6)
             ORDER BY next_check_at LIMIT ? FOR UPDATE SKIP LOCKED",
            self.half
        )))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let messages = rows
            .iter()
            .map(half_message)
            .collect::<Result<Vec<_>, _>>()?;
        if !messages.is_empty() {
            let mut lease_query = QueryBuilder::<MySql>::new(format!(
                "UPDATE {} SET next_check_at = CURRENT_TIMESTAMP(6) + INTERVAL ",
                self.half
            ));
            lease_query
                .push_bind(micros(lease))
                .push(" MICROSECOND WHERE id IN (");
            let mut ids = lease_query.separated(", ");
            for message in &messages {
                ids.push_bind(message.id.to_string());
            }
            lease_query.push(")");
            lease_query.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(messages)
    }

    async fn check_failed(
        &self,
        id: Uuid,
        error: &str,
        interval: Duration,
    ) -> Result<i32, HalfError> {
        let key = id.to_string();
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(trusted(format!(
            "UPDATE {} SET checks = checks + 1, last_check_error = ?,
                 next_check_at = CURRENT_TIMESTAMP(6) + INTERVAL ? MICROSECOND
             WHERE id = ? AND state = 'prepared'",
            self.half
        )))
        .bind(error)
        .bind(micros(interval))
        .bind(&key)
        .execute(&mut *tx)
        .await?;
        let checks = if updated.rows_affected() == 1 {
            sqlx::query_scalar(trusted(format!(
                "SELECT checks FROM {} WHERE id = ?",
                self.half
            )))
            .bind(&key)
            .fetch_one(&mut *tx)
            .await?
        } else {
            0
        };
        tx.commit().await?;
        Ok(checks)
    }

    async fn give_up(&self, id: Uuid, reason: &str) -> Result<bool, HalfError> {
        let done = sqlx::query(trusted(format!(
            "UPDATE {} SET state = 'dead_lettered', decided_at = CURRENT_TIMESTAMP(6), decided_by = ?,
                 last_check_error = ?
             WHERE id = ? AND state = 'prepared'",
            self.half
        )))
        .bind(DecidedBy::MaxChecks.as_str())
        .bind(reason)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn purge_decided(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, HalfError> {
        // Each state through its own index range (`IN` would scan more than it deletes), the
        // second one only with what is left of the batch.
        let mut deleted = 0;
        for state in [State::Committed, State::RolledBack] {
            let left = u64::from(batch) - deleted;
            if left == 0 {
                break;
            }
            deleted += sqlx::query(trusted(format!(
                "DELETE FROM {} WHERE state = ? AND decided_at < ? ORDER BY decided_at LIMIT ?",
                self.half
            )))
            .bind(state.as_str())
            .bind(before)
            .bind(left)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(deleted)
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
        Ok(HalfStats {
            prepared: row.try_get("prepared")?,
            oldest_prepared_at: row.try_get("oldest")?,
            dead_lettered: row.try_get("dead_lettered")?,
        })
    }
}

fn half_message(row: &sqlx::mysql::MySqlRow) -> Result<HalfMessage, HalfError> {
    Ok(HalfMessage {
        id: parse_id(row.try_get("id")?)?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        headers: row.try_get("headers")?,
        checks: row.try_get("checks")?,
        prepared_at: row.try_get("prepared_at")?,
    })
}

/// The table, with the indexes the check-back, the counts and the purge read (the waiting
/// messages are few: their count and oldest time come through the check-back's index). Its columns
/// match the outbox's (`CHAR(36)` ids, `LONGTEXT` payloads), which the commit copies into.
pub fn ddl(outbox: &str) -> Vec<String> {
    let half = half_table(outbox);
    let bare = TableName::new(&half).bare;
    vec![format!(
        "CREATE TABLE IF NOT EXISTS {half} (
    id               CHAR(36) NOT NULL PRIMARY KEY,
    aggregate_type   VARCHAR(255) NOT NULL,
    aggregate_id     VARCHAR(255) NOT NULL,
    event_type       VARCHAR(255) NOT NULL,
    payload          LONGTEXT NOT NULL,
    headers          TEXT NULL,
    state            VARCHAR(16) NOT NULL DEFAULT 'prepared' CHECK (state IN ({STATES})),
    prepared_at      TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    decided_at       TIMESTAMP(6) NULL DEFAULT NULL,
    decided_by       VARCHAR(32) NULL,
    checks           INT NOT NULL DEFAULT 0,
    next_check_at    TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    last_check_error TEXT NULL,
    KEY {bare}_due (state, next_check_at),
    KEY {bare}_decided (state, decided_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    )]
}
