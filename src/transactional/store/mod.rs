//! Half messages in the source database: a table beside the outbox (`<outbox>_half`) where a
//! prepared message waits, invisible to publishing, until it is committed (copied into the
//! outbox in the same transaction that records the decision) or rolled back (kept, marked).
//! One module per engine behind [`HalfStore`].

pub mod mysql;
pub mod postgres;
pub mod sqlite;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{DecidedBy, Decision, HalfError, HalfMessage, NewHalfMessage};
use crate::{api::DatabaseEngine, outbox::schema::TableName};

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
    pub fn parse(text: &str) -> Result<Self, HalfError> {
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

/// What the half-message table holds that needs attention, for `/status` and `/metrics`.
/// (Decided messages are counted as they are decided, by the relay's counters: counting a
/// week of them in the table would cost a scan.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HalfStats {
    /// Waiting for the producer's decision or a check-back.
    pub prepared: i64,
    /// When the oldest waiting message was prepared.
    pub oldest_prepared_at: Option<DateTime<Utc>>,
    /// Never decided: in the dead-letter queue, and kept here.
    pub dead_lettered: i64,
}

/// How a decision call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decided {
    pub state: State,
    /// An earlier call had already decided it the same way; this one changed nothing.
    pub repeated: bool,
}

/// One engine's half-message table.
#[async_trait]
pub trait HalfStore: Send + Sync {
    /// Creates the table and its index when missing.
    async fn migrate(&self) -> Result<(), HalfError>;

    /// Stores a prepared message durably; the first check-back is due after `first_check`.
    async fn prepare(
        &self,
        message: &NewHalfMessage,
        first_check: Duration,
    ) -> Result<Uuid, HalfError>;

    /// Commits or rolls back `id`. The row is locked first, so concurrent calls for one id take
    /// turns: the first decides, the others find the decision (see [`judge`]). Committing copies
    /// the message into the outbox in the same transaction, so it is published exactly like a
    /// row the service wrote itself, and never twice (the outbox's unique id refuses a copy).
    async fn decide(
        &self,
        id: Uuid,
        decision: Decision,
        by: DecidedBy,
    ) -> Result<Decided, HalfError>;

    /// Takes up to `limit` prepared messages whose check is due, and pushes their next check
    /// `lease` away, so that another relay replica does not check them at the same time.
    async fn due(&self, limit: u32, lease: Duration) -> Result<Vec<HalfMessage>, HalfError>;

    /// Records a check-back that got no answer; the next one is due after `interval`. Returns
    /// the checks so far (0 when the message was decided meanwhile).
    async fn check_failed(
        &self,
        id: Uuid,
        error: &str,
        interval: Duration,
    ) -> Result<i32, HalfError>;

    /// Marks `id` dead-lettered with the reason, once it is in the dead-letter queue (or, with
    /// none, as the only record of it). A message decided meanwhile keeps its decision.
    async fn give_up(&self, id: Uuid, reason: &str) -> Result<bool, HalfError>;

    /// Deletes up to `batch` committed or rolled-back messages decided before `before`; how
    /// many. Dead-lettered ones stay: without a dead-letter queue they are the only record.
    async fn purge_decided(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, HalfError>;

    /// How `id` stands, and how many check-backs it has had.
    async fn state(&self, id: Uuid) -> Result<(State, i32), HalfError>;

    /// Prepared and dead-lettered messages, and the oldest prepared one.
    async fn stats(&self) -> Result<HalfStats, HalfError>;
}

/// Opens the half-message table of `outbox` in the database at `url`.
pub async fn open(
    engine: DatabaseEngine,
    url: &str,
    outbox: &str,
) -> Result<Arc<dyn HalfStore>, HalfError> {
    Ok(match engine {
        DatabaseEngine::Postgres => Arc::new(postgres::PgHalfStore::connect(url, outbox).await?),
        DatabaseEngine::Mysql => Arc::new(mysql::MySqlHalfStore::connect(url, outbox).await?),
        DatabaseEngine::Sqlite => Arc::new(sqlite::SqliteHalfStore::connect(url, outbox).await?),
    })
}

/// What a decision does to a message found in `state` (its row locked): `Ok(Some(state))` when
/// it is already decided that way (a repeated call), `Ok(None)` when it is prepared and the
/// decision goes ahead, a conflict when the other decision was taken.
pub(crate) fn judge(id: Uuid, state: &str, decision: Decision) -> Result<Option<State>, HalfError> {
    let state = State::parse(state)?;
    if state == decision.state() {
        Ok(Some(state))
    } else if state == State::Prepared {
        Ok(None)
    } else {
        Err(HalfError::Conflict {
            id,
            state,
            wanted: decision,
        })
    }
}

/// The statement that makes a committed message an outbox row: the same columns in every
/// engine, the message's id as the outbox row's id; `id` is the engine's placeholder.
pub(crate) fn copy_into_outbox_sql(outbox: &str, half: &str, id: &str) -> String {
    format!(
        "INSERT INTO {outbox} (id, aggregate_type, aggregate_id, event_type, payload, headers)
         SELECT id, aggregate_type, aggregate_id, event_type, payload, headers FROM {half} WHERE id = {id}"
    )
}

/// Serialized headers, or `None` when there are none.
pub(crate) fn headers_json(message: &NewHalfMessage) -> Result<Option<String>, HalfError> {
    (!message.headers.is_empty())
        .then(|| serde_json::to_string(&message.headers))
        .transpose()
        .map_err(|error| HalfError::Corrupt(error.to_string()))
}

/// A stored id, which the MySQL and SQLite tables keep as text.
pub(crate) fn parse_id(text: &str) -> Result<Uuid, HalfError> {
    Uuid::parse_str(text).map_err(|error| HalfError::Corrupt(format!("id {text:?}: {error}")))
}

/// Counts for [`HalfStore::stats`], in SQL every engine reads the same way: the waiting
/// messages through the check-back's index (partial where the engine has them; they are few, so
/// no index of their own is written on every prepare), the dead-lettered through theirs, so
/// that none scans the decided messages.
pub(crate) fn stats_sql(half: &str) -> String {
    format!(
        "SELECT (SELECT count(*) FROM {half} WHERE state = 'prepared') AS prepared,
                (SELECT min(prepared_at) FROM {half} WHERE state = 'prepared') AS oldest,
                (SELECT count(*) FROM {half} WHERE state = 'dead_lettered') AS dead_lettered"
    )
}

/// `<outbox>_half`, in the outbox's schema.
pub fn half_table(outbox: &str) -> String {
    TableName::new(outbox).sibling("_half")
}

/// The half-message table's DDL per engine; each statement is idempotent.
pub fn half_ddl(engine: DatabaseEngine, outbox: &str) -> Vec<String> {
    match engine {
        DatabaseEngine::Postgres => postgres::ddl(outbox),
        DatabaseEngine::Mysql => mysql::ddl(outbox),
        DatabaseEngine::Sqlite => sqlite::ddl(outbox),
    }
}

/// The states a row may hold, for the engines' CHECK constraints.
const STATES: &str = "'prepared', 'committed', 'rolled_back', 'dead_lettered'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_repeats_goes_ahead_or_conflicts_by_the_state_found() {
        let id = Uuid::now_v7();
        assert_eq!(
            judge(id, "committed", Decision::Commit).unwrap(),
            Some(State::Committed)
        );
        assert_eq!(judge(id, "prepared", Decision::Rollback).unwrap(), None);
        assert!(matches!(
            judge(id, "rolled_back", Decision::Commit),
            Err(HalfError::Conflict {
                state: State::RolledBack,
                ..
            })
        ));
        assert!(matches!(
            judge(id, "dead_lettered", Decision::Rollback),
            Err(HalfError::Conflict { .. })
        ));
        assert!(matches!(
            judge(id, "lost", Decision::Commit),
            Err(HalfError::Corrupt(_))
        ));
    }
}
