//! Half messages in the source database (PostgreSQL): a table beside the outbox where a prepared
//! message waits, invisible to publishing, until it is committed (copied into the outbox in the
//! same transaction that records the decision) or rolled back (kept, marked).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row, postgres::PgPoolOptions};
use uuid::Uuid;

use super::{DecidedBy, Decision, HalfError, HalfMessage, NewHalfMessage};
use crate::outbox::{schema::TableName, trusted};

/// How a half message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Prepared,
    Committed,
    RolledBack,
    /// The check-back never got an answer: the message went to the dead-letter queue (or, with
    /// none, stays here with the reason).
    DeadLettered,
}

impl State {
    fn parse(text: &str) -> Result<Self, HalfError> {
        Ok(match text {
            "prepared" => Self::Prepared,
            "committed" => Self::Committed,
            "rolled_back" => Self::RolledBack,
            "dead_lettered" => Self::DeadLettered,
            other => return Err(HalfError::Corrupt(format!("unknown state {other:?}"))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Committed => "committed",
            Self::RolledBack => "rolled_back",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// The half-message table of one outbox: `<outbox>_half`.
pub struct HalfStore {
    pool: PgPool,
    outbox: String,
    half: String,
}

impl HalfStore {
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

    /// Creates the table and its index when missing.
    pub async fn migrate(&self) -> Result<(), HalfError> {
        for statement in half_ddl(&self.outbox) {
            sqlx::query(trusted(statement)).execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Stores a prepared message; the first check-back is due after `first_check`.
    pub async fn prepare(
        &self,
        message: &NewHalfMessage,
        first_check: std::time::Duration,
    ) -> Result<Uuid, HalfError> {
        let id = Uuid::now_v7();
        let headers = (!message.headers.is_empty())
            .then(|| serde_json::to_string(&message.headers))
            .transpose()
            .map_err(|error| HalfError::Corrupt(error.to_string()))?;
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
        .bind(headers)
        .bind(first_check.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// Commits or rolls back `id`. The row is locked first, so concurrent calls for one id take
    /// turns: the first decides, the others find the decision. Committing copies the message
    /// into the outbox in the same transaction, so it is published exactly like a row the
    /// service wrote itself, and never twice (the outbox's unique id would refuse a second copy).
    pub async fn decide(
        &self,
        id: Uuid,
        decision: Decision,
        by: DecidedBy,
    ) -> Result<State, HalfError> {
        let mut tx = self.pool.begin().await?;
        let state: Option<String> = sqlx::query_scalar(trusted(format!(
            "SELECT state FROM {} WHERE id = $1 FOR UPDATE",
            self.half
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(state) = state else {
            return Err(HalfError::NotFound(id));
        };
        let state = State::parse(&state)?;
        let wanted = decision.state();
        if state == wanted {
            return Ok(state);
        }
        if state != State::Prepared {
            return Err(HalfError::Conflict {
                id,
                state,
                wanted: decision,
            });
        }
        if decision == Decision::Commit {
            sqlx::query(trusted(format!(
                "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, payload, headers)
                 SELECT id, aggregate_type, aggregate_id, event_type, payload, headers FROM {} WHERE id = $1",
                self.outbox, self.half
            )))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        self.record(&mut tx, id, wanted, by, None).await?;
        // A decision lost in a database crash leaves the message prepared, and the check-back
        // then asks the producer, whose marker answers the same: the decision need not wait for
        // the disk flush. (A prepare must: a producer told "prepared" builds on it.)
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(wanted)
    }

    async fn record(
        &self,
        tx: &mut sqlx::PgConnection,
        id: Uuid,
        state: State,
        by: DecidedBy,
        reason: Option<&str>,
    ) -> Result<(), HalfError> {
        sqlx::query(trusted(format!(
            "UPDATE {} SET state = $2, decided_at = now(), decided_by = $3,
                 last_check_error = coalesce($4, last_check_error)
             WHERE id = $1",
            self.half
        )))
        .bind(id)
        .bind(state.as_str())
        .bind(by.as_str())
        .bind(reason)
        .execute(tx)
        .await?;
        Ok(())
    }

    /// Takes up to `limit` prepared messages whose check is due, and pushes their next check
    /// `lease` away, so that another relay replica does not check them at the same time.
    pub async fn due(
        &self,
        limit: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<HalfMessage>, HalfError> {
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

    /// Records a check-back that got no answer; the next one is due after `interval`.
    pub async fn check_failed(
        &self,
        id: Uuid,
        error: &str,
        interval: std::time::Duration,
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

    /// Marks `id` dead-lettered with the reason, once it is in the dead-letter queue (or, with
    /// none, as the only record of it). A message decided meanwhile keeps its decision.
    pub async fn give_up(&self, id: Uuid, reason: &str) -> Result<bool, HalfError> {
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

    /// Deletes up to `batch` committed or rolled-back messages decided before `before`; how
    /// many. Dead-lettered ones stay: without a dead-letter queue they are the only record.
    pub async fn purge_decided(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, HalfError> {
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

    /// How `id` stands, and how many check-backs it has had.
    pub async fn state(&self, id: Uuid) -> Result<(State, i32), HalfError> {
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

    /// Prepared messages waiting for a decision, and the oldest one's preparation time.
    pub async fn pending(&self) -> Result<(i64, Option<DateTime<Utc>>), HalfError> {
        let row = sqlx::query(trusted(format!(
            "SELECT count(*) AS n, min(prepared_at) AS oldest FROM {} WHERE state = 'prepared'",
            self.half
        )))
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("n")?, row.try_get("oldest")?))
    }
}

fn half_message(row: &sqlx::postgres::PgRow) -> Result<HalfMessage, HalfError> {
    let headers: Option<String> = row.try_get("headers")?;
    Ok(HalfMessage {
        id: row.try_get("id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        headers,
        checks: row.try_get("checks")?,
        prepared_at: row.try_get("prepared_at")?,
    })
}

/// `<outbox>_half`, in the outbox's schema.
pub fn half_table(outbox: &str) -> String {
    TableName::new(outbox).sibling("_half")
}

/// The half-message table's DDL; each statement is idempotent.
pub fn half_ddl(outbox: &str) -> Vec<String> {
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
    state            TEXT NOT NULL DEFAULT 'prepared'
                     CHECK (state IN ('prepared', 'committed', 'rolled_back', 'dead_lettered')),
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
    ]
}
