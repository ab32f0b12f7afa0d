//! The append-only history of each dead letter (`<table>_history`): every change to a letter
//! writes a line here in the same transaction, so `ferry dlq show` can tell its whole story.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};

use super::db::{Db, Row, Tx, Value};
use crate::{api::DatabaseEngine, outbox::schema::TableName};

/// What happened to a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// It was stored: the first time, or again after it had been replayed or discarded.
    DeadLettered,
    ReplayRequested,
    /// Its consumer took it to re-deliver it.
    Replaying,
    Replayed,
    /// Its re-delivery failed; it waits again.
    FailedAgain,
    Discarded,
    /// Retention removed it (the history stays).
    Purged,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Self::DeadLettered,
        Self::ReplayRequested,
        Self::Replaying,
        Self::Replayed,
        Self::FailedAgain,
        Self::Discarded,
        Self::Purged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeadLettered => "dead_lettered",
            Self::ReplayRequested => "replay_requested",
            Self::Replaying => "replaying",
            Self::Replayed => "replayed",
            Self::FailedAgain => "failed_again",
            Self::Discarded => "discarded",
            Self::Purged => "purged",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|action| action.as_str() == text)
            .ok_or_else(|| format!("unknown history action {text:?}"))
    }
}

/// One line of a dead letter's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub letter_seq: i64,
    pub action: Action,
    pub at: DateTime<Utc>,
    /// A person (`$USER` or `--by`) or the workload (`consumer/<ns>/<name>`).
    pub actor: String,
    pub note: Option<String>,
}

/// The history table's name for a dead-letter table.
pub fn history_table(table: &str) -> String {
    TableName::new(table).sibling("_history")
}

/// Statements that create the history table; each is idempotent.
pub fn history_ddl(engine: DatabaseEngine, table: &str) -> Vec<String> {
    let history = TableName::new(&history_table(table));
    let (q, bare) = (&history.qualified, &history.bare);
    let (id, time, text, options) = match engine {
        DatabaseEngine::Postgres => (
            "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
            "TIMESTAMPTZ",
            "TEXT",
            "",
        ),
        DatabaseEngine::Mysql => (
            "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
            "TIMESTAMP(6) NULL",
            "LONGTEXT",
            " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        ),
        DatabaseEngine::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT", "TEXT", ""),
    };
    // No foreign key to the letter: the history outlives a purged letter.
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {q} (
    id          {id},
    letter_seq  BIGINT NOT NULL,
    action      VARCHAR(32) NOT NULL,
    happened_at {time},
    actor       VARCHAR(255) NOT NULL,
    note        {text}
){options}"
    );
    let index = match engine {
        DatabaseEngine::Mysql => format!("CREATE INDEX {bare}_letter ON {q} (letter_seq, id)"),
        _ => format!("CREATE INDEX IF NOT EXISTS {bare}_letter ON {q} (letter_seq, id)"),
    };
    vec![create, index]
}

/// Rows per multi-row `INSERT`: well under every engine's limit on bound values.
const INSERT_CHUNK: usize = 500;

/// One change, as the history records it for each letter it touched.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Change<'a> {
    pub action: Action,
    pub at: DateTime<Utc>,
    pub actor: &'a str,
    pub note: Option<&'a str>,
}

/// Writes one history line per letter inside `tx`.
pub(crate) async fn record(
    tx: &mut Tx,
    table: &str,
    seqs: &[i64],
    change: Change<'_>,
) -> Result<(), sqlx::Error> {
    let history = history_table(table);
    for chunk in seqs.chunks(INSERT_CHUNK) {
        let mut sql = tx.sql();
        sql.push("INSERT INTO ")
            .push(&history)
            .push(" (letter_seq, action, happened_at, actor, note) VALUES ");
        for (position, seq) in chunk.iter().enumerate() {
            if position > 0 {
                sql.push(", ");
            }
            sql.push("(")
                .bind(*seq)
                .push(", ")
                .bind(change.action.as_str())
                .push(", ")
                .bind(change.at)
                .push(", ")
                .bind(change.actor)
                .push(", ")
                .bind(Value::OptText(change.note.map(str::to_owned)))
                .push(")");
        }
        tx.execute(&sql).await?;
    }
    Ok(())
}

/// A letter's history, oldest first.
pub(crate) async fn read(db: &Db, table: &str, seq: i64) -> Result<Vec<HistoryEntry>, sqlx::Error> {
    let mut sql = db.sql();
    sql.push("SELECT letter_seq, action, happened_at, actor, note FROM ")
        .push(&history_table(table))
        .push(" WHERE letter_seq = ")
        .bind(seq)
        .push(" ORDER BY id");
    db.fetch_all(&sql).await?.iter().map(entry_of).collect()
}

fn entry_of(row: &Row) -> Result<HistoryEntry, sqlx::Error> {
    Ok(HistoryEntry {
        letter_seq: row.int("letter_seq")?,
        action: row.text("action")?.parse().map_err(|message: String| {
            sqlx::Error::ColumnDecode {
                index: "action".into(),
                source: message.into(),
            }
        })?,
        at: row.time("happened_at")?,
        actor: row.text("actor")?,
        note: row.opt_text("note")?,
    })
}
