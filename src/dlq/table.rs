//! Dead letters in a database table (PostgreSQL, MySQL/MariaDB or SQLite): what `ferry dlq`
//! lists, groups, replays and discards.
//!
//! A row is never deleted by Ferry while its `status` is `waiting`: only a person's `replay` or
//! `discard` changes it (recorded with `resolved_at` and `resolved_by`), and retention removes
//! resolved rows only.

use async_trait::async_trait;
use sqlx::{MySqlPool, PgPool, SqlitePool};

use super::{DeadLetter, DeadLetterError, DeadLetterStore};
use crate::{
    api::DatabaseEngine,
    config::DatabaseConfig,
    outbox::{schema::TableName, sqlite::sqlite_time, trusted},
};

/// Statements that create the dead-letter table; each is idempotent.
pub fn dead_letter_ddl(engine: DatabaseEngine, table: &str) -> Vec<String> {
    let t = TableName::new(table);
    let (q, bare) = (&t.qualified, &t.bare);
    let (seq, time, blob, text) = match engine {
        DatabaseEngine::Postgres => (
            "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
            "TIMESTAMPTZ",
            "BYTEA",
            "TEXT",
        ),
        DatabaseEngine::Mysql => (
            "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
            "TIMESTAMP(6) NULL",
            "LONGBLOB",
            "LONGTEXT",
        ),
        DatabaseEngine::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT", "BLOB", "TEXT"),
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
    resolved_at     {time},
    resolved_by     VARCHAR(255),
    note            {text},
    UNIQUE (origin, message_id)
)"
    )];
    let index = |name: &str, columns: &str| match engine {
        DatabaseEngine::Mysql => format!("CREATE INDEX {bare}_{name} ON {q} ({columns})"),
        _ => format!("CREATE INDEX IF NOT EXISTS {bare}_{name} ON {q} ({columns})"),
    };
    statements.push(index("status", "status, last_failed_at"));
    statements.push(index("fingerprint", "fingerprint, status"));
    statements
}

enum Pool {
    Postgres(PgPool),
    Mysql(MySqlPool),
    Sqlite(SqlitePool),
}

pub struct TableStore {
    pool: Pool,
    table: String,
}

impl TableStore {
    /// Connects and creates the table when it is missing.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, DeadLetterError> {
        let url = config.url.read()?;
        let pool = match config.engine {
            DatabaseEngine::Postgres => Pool::Postgres(PgPool::connect(&url).await?),
            DatabaseEngine::Mysql => Pool::Mysql(MySqlPool::connect(&url).await?),
            DatabaseEngine::Sqlite => Pool::Sqlite(crate::outbox::sqlite::open_pool(&url).await?),
        };
        let store = Self {
            pool,
            table: config.table.clone(),
        };
        store.migrate(config.engine).await?;
        Ok(store)
    }

    async fn migrate(&self, engine: DatabaseEngine) -> Result<(), DeadLetterError> {
        for statement in dead_letter_ddl(engine, &self.table) {
            let result = match &self.pool {
                Pool::Postgres(pool) => sqlx::raw_sql(trusted(statement))
                    .execute(pool)
                    .await
                    .map(|_| ()),
                Pool::Sqlite(pool) => sqlx::raw_sql(trusted(statement))
                    .execute(pool)
                    .await
                    .map(|_| ()),
                Pool::Mysql(pool) => match sqlx::raw_sql(trusted(statement)).execute(pool).await {
                    // MySQL has no CREATE INDEX IF NOT EXISTS: an existing index is fine.
                    Err(sqlx::Error::Database(error))
                        if error.code().as_deref() == Some("42000")
                            && error.message().contains("Duplicate key name") =>
                    {
                        Ok(())
                    }
                    other => other.map(|_| ()),
                },
            };
            result?;
        }
        Ok(())
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

fn upsert_sql(engine: DatabaseEngine, table: &str) -> String {
    let assignments = |value: fn(&str) -> String| {
        UPDATED
            .iter()
            .map(|c| format!("{c} = {}", value(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match engine {
        DatabaseEngine::Postgres => format!(
            "INSERT INTO {table} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (origin, message_id) DO UPDATE SET {}, status = 'waiting'",
            assignments(|c| format!("excluded.{c}"))
        ),
        DatabaseEngine::Mysql => format!(
            "INSERT INTO {table} ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE {}, status = 'waiting'",
            assignments(|c| format!("VALUES({c})"))
        ),
        DatabaseEngine::Sqlite => format!(
            "INSERT INTO {table} ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (origin, message_id) DO UPDATE SET {}, status = 'waiting'",
            assignments(|c| format!("excluded.{c}"))
        ),
    }
}

/// Binds a letter's fields in `COLUMNS` order; `$time` converts times for the engine.
macro_rules! bind_letter {
    ($query:expr, $letter:expr, $time:expr) => {
        $query
            .bind(&$letter.origin)
            .bind(&$letter.message_id)
            .bind(&$letter.event_type)
            .bind(&$letter.message_key)
            .bind(serde_json::to_string(&$letter.headers).unwrap_or_else(|_| "[]".to_owned()))
            .bind(&$letter.body)
            .bind($letter.attempts)
            .bind($time($letter.first_failed_at))
            .bind($time($letter.last_failed_at))
            .bind(&$letter.last_error)
            .bind(&$letter.error_category)
            .bind($letter.http_status)
            .bind(&$letter.fingerprint)
    };
}

#[async_trait]
impl DeadLetterStore for TableStore {
    async fn put(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let same = |time| time;
        match &self.pool {
            Pool::Postgres(pool) => {
                let sql = upsert_sql(DatabaseEngine::Postgres, &self.table);
                bind_letter!(sqlx::query(trusted(sql)), letter, same)
                    .execute(pool)
                    .await?;
            }
            Pool::Mysql(pool) => {
                let sql = upsert_sql(DatabaseEngine::Mysql, &self.table);
                bind_letter!(sqlx::query(trusted(sql)), letter, same)
                    .execute(pool)
                    .await?;
            }
            Pool::Sqlite(pool) => {
                let sql = upsert_sql(DatabaseEngine::Sqlite, &self.table);
                bind_letter!(sqlx::query(trusted(sql)), letter, sqlite_time)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }
}
