//! Dead letters in a database table (PostgreSQL, MySQL/MariaDB or SQLite): what `ferry dlq`
//! lists, groups, replays and discards.
//!
//! A row is never deleted by Ferry while its `status` is `waiting`: only a person's `replay` or
//! `discard` changes it (recorded with `resolved_at` and `resolved_by`), and retention removes
//! resolved rows only.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use super::{
    DeadLetter, DeadLetterError, DeadLetterStore,
    db::{Db, Sql, Value},
    history::{self, Action, Change},
    record::Status,
};
use crate::{api::DatabaseEngine, config::DatabaseConfig, outbox::schema::TableName};

/// Statements that create the dead-letter table and its history table; each is idempotent.
pub fn dead_letter_ddl(engine: DatabaseEngine, table: &str) -> Vec<String> {
    let t = TableName::new(table);
    let (q, bare) = (&t.qualified, &t.bare);
    let (seq, time, blob, text, options) = match engine {
        DatabaseEngine::Postgres => (
            "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
            "TIMESTAMPTZ",
            "BYTEA",
            "TEXT",
            "",
        ),
        DatabaseEngine::Mysql => (
            "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
            "TIMESTAMP(6) NULL",
            "LONGBLOB",
            "LONGTEXT",
            // Errors and headers are any Unicode; the server's default charset may not be.
            " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        ),
        DatabaseEngine::Sqlite => (
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            "TEXT",
            "BLOB",
            "TEXT",
            "",
        ),
    };
    let mut statements = vec![format!(
        "CREATE TABLE IF NOT EXISTS {q} (
    seq             {seq},
    origin          VARCHAR(255) NOT NULL,
    message_id      VARCHAR(255) NOT NULL,
    event_type      VARCHAR(255) NOT NULL,
    message_key     VARCHAR(255) NOT NULL,
    headers         {text} NOT NULL,
    body            {blob} NOT NULL,
    attempts        INTEGER NOT NULL,
    first_failed_at {time},
    last_failed_at  {time},
    last_error      {text} NOT NULL,
    error_category  VARCHAR(64) NOT NULL,
    http_status     INTEGER,
    fingerprint     VARCHAR(32) NOT NULL,
    status          VARCHAR(16) NOT NULL DEFAULT 'waiting',
    replay_count    INTEGER NOT NULL DEFAULT 0,
    requested_at    {time},
    requested_by    VARCHAR(255),
    replay_request  VARCHAR(64),
    lease_until     {time},
    resolved_at     {time},
    resolved_by     VARCHAR(255),
    note            {text},
    UNIQUE (origin, message_id)
){options}"
    )];
    let index = |name: &str, columns: &str| match engine {
        DatabaseEngine::Mysql => format!("CREATE INDEX {bare}_{name} ON {q} ({columns})"),
        _ => format!("CREATE INDEX IF NOT EXISTS {bare}_{name} ON {q} ({columns})"),
    };
    statements.push(index("status", "status, last_failed_at"));
    statements.push(index("fingerprint", "fingerprint, status"));
    // What a consumer looks for when it takes replay requests.
    statements.push(index("origin", "origin, status"));
    // What `ferry dlq replay` watches while it waits.
    statements.push(index("request", "replay_request"));
    statements.extend(history::history_ddl(engine, table));
    statements
}

/// How long a consumer holds the dead letters it took for replay before another may take them:
/// long enough for a delivery with its retries, short enough that a crashed consumer's letters
/// do not wait long.
pub const DEFAULT_REPLAY_LEASE: Duration = Duration::from_secs(15 * 60);

/// The most of an error a history line keeps.
const NOTE_ERROR_CHARS: usize = 200;

pub struct TableStore {
    db: Db,
    table: String,
    replay_lease: Duration,
}

impl TableStore {
    /// Connects and creates the tables when they are missing (what workloads do).
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, DeadLetterError> {
        let url = config.url.read()?;
        let store = Self {
            db: Db::connect(config.engine, &url, true).await?,
            table: config.table.clone(),
            replay_lease: DEFAULT_REPLAY_LEASE,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to tables that must already exist (what `ferry dlq` does: pointed at the wrong
    /// database, it says so instead of creating an empty table there). `table` must be a valid
    /// table name (`crate::api::common::TABLE_NAME_PATTERN`): it is written into SQL.
    pub async fn connect_existing(
        engine: DatabaseEngine,
        url: &str,
        table: &str,
    ) -> Result<Self, DeadLetterError> {
        Ok(Self {
            db: Db::connect(engine, url, false).await?,
            table: table.to_owned(),
            replay_lease: DEFAULT_REPLAY_LEASE,
        })
    }

    /// Sets how long a consumer holds the letters it takes for replay.
    pub fn with_replay_lease(mut self, lease: Duration) -> Self {
        self.replay_lease = lease;
        self
    }

    pub fn engine(&self) -> DatabaseEngine {
        self.db.engine()
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    pub(crate) fn replay_lease(&self) -> Duration {
        self.replay_lease
    }

    /// Whether the dead-letter table and its history table are there.
    pub async fn tables_exist(&self) -> Result<bool, DeadLetterError> {
        for table in [self.table.clone(), history::history_table(&self.table)] {
            let mut probe = self.db.sql();
            probe
                .push("SELECT 1 FROM ")
                .push(&table)
                .push(" WHERE 1 = 0");
            match self.db.fetch_all(&probe).await {
                Ok(_) => {}
                Err(sqlx::Error::Database(_)) => return Ok(false),
                Err(other) => return Err(other.into()),
            }
        }
        Ok(true)
    }

    /// Creates the tables when they are missing.
    pub async fn migrate(&self) -> Result<(), DeadLetterError> {
        for statement in dead_letter_ddl(self.db.engine(), &self.table) {
            match self.db.execute_raw(statement).await {
                // MySQL has no CREATE INDEX IF NOT EXISTS: an existing index is fine.
                Err(sqlx::Error::Database(error))
                    if self.db.engine() == DatabaseEngine::Mysql
                        && error.message().contains("Duplicate key name") => {}
                other => other?,
            }
        }
        Ok(())
    }

    fn upsert(&self, letter: &DeadLetter) -> Sql {
        let mut sql = self.db.sql();
        sql.push("INSERT INTO ")
            .push(&self.table)
            .push(" (")
            .push(COLUMNS)
            .push(") VALUES (");
        let values: [Value; 13] = [
            letter.origin.as_str().into(),
            letter.message_id.as_str().into(),
            letter.event_type.as_str().into(),
            letter.message_key.as_str().into(),
            serde_json::to_string(&letter.headers)
                .unwrap_or_else(|_| "[]".to_owned())
                .into(),
            Value::Bytes(letter.body.clone()),
            Value::OptInt32(Some(letter.attempts)),
            letter.first_failed_at.into(),
            letter.last_failed_at.into(),
            letter.last_error.as_str().into(),
            letter.error_category.as_str().into(),
            Value::OptInt32(letter.http_status),
            letter.fingerprint.as_str().into(),
        ];
        for (position, value) in values.into_iter().enumerate() {
            if position > 0 {
                sql.push(", ");
            }
            sql.bind(value);
        }
        let (conflict, new_value): (&str, fn(&str) -> String) = match self.db.engine() {
            DatabaseEngine::Mysql => (") ON DUPLICATE KEY UPDATE ", |c| format!("VALUES({c})")),
            _ => (") ON CONFLICT (origin, message_id) DO UPDATE SET ", |c| {
                format!("excluded.{c}")
            }),
        };
        let assignments = UPDATED
            .iter()
            .map(|c| format!("{c} = {}", new_value(c)))
            .collect::<Vec<_>>()
            .join(", ");
        // Back to waiting for a decision; the replay count and the request that led here stay,
        // they are the letter's lineage.
        sql.push(conflict).push(&assignments).push(
            ", status = 'waiting', lease_until = NULL, resolved_at = NULL, resolved_by = NULL, note = NULL",
        );
        sql
    }
}

const COLUMNS: &str = "origin, message_id, event_type, message_key, headers, body, attempts, first_failed_at, last_failed_at, last_error, error_category, http_status, fingerprint";
/// What a repeated failure of the same message updates; it waits for a decision again.
const UPDATED: [&str; 6] = [
    "attempts",
    "last_failed_at",
    "last_error",
    "error_category",
    "http_status",
    "fingerprint",
];

/// The first line of an error, bounded, for a history note.
fn excerpt(error: &str) -> String {
    let line = error.lines().next().unwrap_or_default();
    if line.chars().count() > NOTE_ERROR_CHARS {
        line.chars().take(NOTE_ERROR_CHARS).collect::<String>() + "…"
    } else {
        line.to_owned()
    }
}

#[async_trait]
impl DeadLetterStore for TableStore {
    async fn put(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let mut tx = self.db.begin().await?;
        let mut find = self.db.sql();
        find.push("SELECT seq, status FROM ")
            .push(&self.table)
            .push(" WHERE origin = ")
            .bind(letter.origin.as_str())
            .push(" AND message_id = ")
            .bind(letter.message_id.as_str());
        let mut before_find = find.clone();
        before_find.for_update();
        let before = match tx.fetch_all(&before_find).await?.first() {
            Some(row) => Some((row.int("seq")?, row.text("status")?.parse::<Status>().ok())),
            None => None,
        };
        tx.execute(&self.upsert(letter)).await?;
        let seq = match before {
            Some((seq, _)) => seq,
            None => match tx.fetch_all(&find).await?.first() {
                Some(row) => row.int("seq")?,
                None => return Err(sqlx::Error::RowNotFound.into()),
            },
        };
        let error = excerpt(&letter.last_error);
        let line = match before.map(|(_, status)| status) {
            None => Some((Action::DeadLettered, error)),
            // Stored again before anyone looked (a retry after a crash): nothing new to tell.
            Some(Some(Status::Waiting)) => None,
            Some(Some(Status::Replaying)) => Some((Action::FailedAgain, error)),
            Some(Some(status)) => Some((
                Action::DeadLettered,
                format!("again, after it was {status}: {error}"),
            )),
            Some(None) => Some((Action::DeadLettered, error)),
        };
        if let Some((action, note)) = line {
            let change = Change {
                action,
                at: Utc::now(),
                actor: &letter.origin,
                note: Some(&note),
            };
            history::record(&mut tx, &self.table, &[seq], change).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
