//! The SQL queue: Ferry's embedded default broker, a queue table in PostgreSQL or SQLite.
//!
//! The engine is the URL's scheme (`postgres://` or `postgresql://`, `sqlite:`). One table can
//! hold several topics' queues; each row is one message of one queue:
//!
//! - `seq`: the queue order, an auto-increment primary key (`BIGINT` identity in PostgreSQL,
//!   `INTEGER PRIMARY KEY AUTOINCREMENT` in SQLite);
//! - `queue`: the queue (topic) name; `id`: the message id (`ce-id`); `message_key`: the
//!   ordering key; `routing_key`: the rendered routing key, NULL when empty (all `TEXT`);
//! - `headers`: `TEXT`, the headers as JSON (below); `body`: `BYTEA` / `BLOB`;
//! - `enqueued_at`: when the row was inserted (`TIMESTAMPTZ` in PostgreSQL, RFC 3339 UTC text
//!   with milliseconds in SQLite);
//!
//! with `UNIQUE (queue, id)` and an index on `(queue, seq)` for readers that follow a queue.
//!
//! `headers` is a JSON array of `[name, value]` pairs in the envelope's order, for example
//! `[["ce-specversion","1.0"],["ce-id","..."],["content-type","application/json"]]`. An
//! array rather than an object because JSON objects are unordered (PostgreSQL's `jsonb` and
//! many JSON libraries reorder keys) and the header order is part of the message.
//!
//! A batch is inserted in one transaction, in batch order, so `seq` follows the batch order;
//! the commit is the confirmation. A re-published message (same queue and id) is skipped by
//! `ON CONFLICT (queue, id) DO NOTHING`: the queue never holds a message twice, for as long as
//! the row is kept. In PostgreSQL `seq` values are taken at insert time, so with several
//! writers a reader can see a higher `seq` committed before a lower one: readers must not skip
//! past uncommitted gaps.
//!
//! SQLite runs in WAL mode with `synchronous = FULL` (a confirmed message survives a power
//! loss) and a busy timeout, so a writer waits for another one instead of failing at once.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    AssertSqlSafe, Database, Encode, PgPool, QueryBuilder, SqlitePool, Type,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{BrokerError, Outcome, Publisher};
use crate::{config::SqlTarget, message::Envelope};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SQLite waits for another writer's lock before failing a statement.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// One publisher writes one batch at a time; the second connection serves `connect`'s checks
/// while a batch is in flight elsewhere (a shared pool in the consumer side).
const MAX_CONNECTIONS: u32 = 2;
/// Bind parameters per inserted row.
const PARAMETERS_PER_ROW: usize = 6;

/// Where the queue table lives, from the URL's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Sqlite,
}

impl Engine {
    /// The engine of a connection URL, or the scheme that is not supported.
    pub fn of_url(url: &str) -> Result<Self, String> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "sqlite" => Ok(Self::Sqlite),
            _ => Err(scheme.to_owned()),
        }
    }

    /// Rows per INSERT statement: under the bind-parameter limits (65535 in PostgreSQL, 999 in
    /// SQLite before 3.32), with room to spare.
    fn rows_per_insert(self) -> usize {
        match self {
            Self::Postgres => 60_000 / PARAMETERS_PER_ROW,
            Self::Sqlite => 990 / PARAMETERS_PER_ROW,
        }
    }
}

/// A queue table name: `table` or `schema.table`, each part `[A-Za-z_][A-Za-z0-9_]{0,62}`,
/// the same rule the BrokerTopic's schema enforces. Written into SQL unquoted, so it folds to
/// lower case in PostgreSQL exactly as in a hand-written `CREATE TABLE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName {
    schema: Option<String>,
    name: String,
}

impl TableName {
    pub fn parse(text: &str) -> Result<Self, String> {
        let valid = |part: &str| {
            let mut chars = part.chars();
            part.len() <= 63
                && chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let (schema, name) = match text.split_once('.') {
            Some((schema, name)) => (Some(schema), name),
            None => (None, text),
        };
        if !valid(name) || schema.is_some_and(|schema| !valid(schema)) {
            return Err(format!(
                "{text:?} is not a table name (table or schema.table, letters, digits, _)"
            ));
        }
        Ok(Self {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    fn qualified(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// The statements that create the queue table and its index when missing, in order. Each is
/// idempotent (`IF NOT EXISTS`), so running them again is harmless.
pub fn queue_schema(engine: Engine, table: &TableName) -> Vec<String> {
    let qualified = table.qualified();
    let index = format!("{}_queue_seq_idx", table.name);
    // SQLite: AUTOINCREMENT so that a `seq` is never reused after rows are deleted (readers
    // keep their position as a `seq`), and the schema goes on the index, not on its table.
    let (seq, body, enqueued_at, index, indexed) = match engine {
        Engine::Postgres => (
            "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
            "BYTEA",
            "TIMESTAMPTZ NOT NULL DEFAULT now()",
            index,
            qualified.clone(),
        ),
        Engine::Sqlite => (
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            "BLOB",
            "TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            table
                .schema
                .as_ref()
                .map_or(index.clone(), |schema| format!("{schema}.{index}")),
            table.name.clone(),
        ),
    };
    let mut statements = Vec::with_capacity(3);
    if let (Engine::Postgres, Some(schema)) = (engine, &table.schema) {
        statements.push(format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
    }
    statements.push(format!(
        "CREATE TABLE IF NOT EXISTS {qualified} (seq {seq}, queue TEXT NOT NULL, id TEXT NOT NULL, \
         message_key TEXT NOT NULL, routing_key TEXT, headers TEXT NOT NULL, body {body} NOT NULL, \
         enqueued_at {enqueued_at}, UNIQUE (queue, id))"
    ));
    statements.push(format!(
        "CREATE INDEX IF NOT EXISTS {index} ON {indexed} (queue, seq)"
    ));
    statements
}

/// The `headers` column of a message: a JSON array of `[name, value]` pairs, in order.
pub fn encode_headers(headers: &[(String, String)]) -> Result<String, serde_json::Error> {
    serde_json::to_string(headers)
}

/// Reads the `headers` column back, in the order it was written.
pub fn decode_headers(text: &str) -> Result<Vec<(String, String)>, serde_json::Error> {
    serde_json::from_str(text)
}

/// Runs the same code on either pool: the sqlx types differ, the statements do not.
macro_rules! with_pool {
    ($pool:expr, $name:ident => $body:expr) => {
        match $pool {
            QueuePool::Postgres($name) => $body,
            QueuePool::Sqlite($name) => $body,
        }
    };
}

/// A pool on the queue's database.
#[derive(Clone, Debug)]
pub enum QueuePool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl QueuePool {
    /// Opens a pool. `create` lets SQLite create a missing database file (PostgreSQL databases
    /// are never created).
    pub async fn open(engine: Engine, url: &str, create: bool) -> Result<Self, sqlx::Error> {
        match engine {
            Engine::Postgres => {
                let options = PgConnectOptions::from_str(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(options)
                    .await?;
                Ok(Self::Postgres(pool))
            }
            Engine::Sqlite => {
                let mut options = SqliteConnectOptions::from_str(url)?
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(BUSY_TIMEOUT);
                if create {
                    options = options.create_if_missing(true);
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(options)
                    .await?;
                Ok(Self::Sqlite(pool))
            }
        }
    }

    fn engine(&self) -> Engine {
        match self {
            Self::Postgres(_) => Engine::Postgres,
            Self::Sqlite(_) => Engine::Sqlite,
        }
    }

    /// Runs the schema statements in one transaction. In PostgreSQL a transaction-scoped
    /// advisory lock keeps two relays that start together from racing on `CREATE TABLE IF
    /// NOT EXISTS` (which can fail with a duplicate-key error when run concurrently).
    async fn provision(&self, table: &TableName) -> Result<(), sqlx::Error> {
        let statements = queue_schema(self.engine(), table);
        let lock = format!("ferry queue schema {}", table.qualified());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if self.engine() == Engine::Postgres {
                let query = sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))").bind(lock);
                query.execute(&mut *tx).await?;
            }
            for statement in statements {
                sqlx::query(AssertSqlSafe(statement)).execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }

    /// Selects every column from no row: fails when the table or a column is missing.
    async fn check(&self, table: &TableName) -> Result<(), sqlx::Error> {
        let columns = "seq, queue, id, message_key, routing_key, headers, body, enqueued_at";
        let probe = format!("SELECT {columns} FROM {} WHERE 1 = 0", table.qualified());
        with_pool!(self, pool => sqlx::query(AssertSqlSafe(probe)).execute(pool).await.map(drop))
    }

    async fn insert(
        &self,
        table: &TableName,
        queue: &str,
        rows: &[Row<'_>],
    ) -> Result<(), sqlx::Error> {
        let per_insert = self.engine().rows_per_insert();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for chunk in rows.chunks(per_insert) {
                insert_statement(table, queue, chunk).build().execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }

    async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }
}

/// One message as it is inserted.
struct Row<'a> {
    message: &'a Envelope,
    headers: String,
}

/// `INSERT ... VALUES (...), ... ON CONFLICT (queue, id) DO NOTHING`, rows in order.
fn insert_statement<DB>(table: &TableName, queue: &str, rows: &[Row<'_>]) -> QueryBuilder<DB>
where
    DB: Database,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
    for<'t> &'t [u8]: Encode<'t, DB> + Type<DB>,
{
    let mut statement = QueryBuilder::new(format!(
        "INSERT INTO {} (queue, id, message_key, routing_key, headers, body) ",
        table.qualified()
    ));
    statement.push_values(rows, |mut values, row| {
        let routing_key = Some(row.message.routing_key.as_str()).filter(|key| !key.is_empty());
        values
            .push_bind(queue)
            .push_bind(row.message.id.as_str())
            .push_bind(row.message.key.as_str())
            .push_bind(routing_key)
            .push_bind(row.headers.as_str())
            .push_bind(&row.message.body[..]);
    });
    statement.push(" ON CONFLICT (queue, id) DO NOTHING");
    statement
}

/// Publishes to one queue of a queue table.
pub struct SqlPublisher {
    topic: String,
    queue: String,
    table: TableName,
    pool: QueuePool,
}

impl SqlPublisher {
    /// Opens a pool and creates the queue table when missing (`provision`), or checks that it
    /// exists with every column.
    pub async fn connect(
        topic: &str,
        url: &str,
        target: &SqlTarget,
        provision: bool,
    ) -> Result<Self, BrokerError> {
        let engine = Engine::of_url(url).map_err(|scheme| BrokerError::Connection {
            topic: topic.to_owned(),
            message: format!("URL scheme {scheme:?} is not a SQL queue engine (postgres://, postgresql:// or sqlite:)"),
        })?;
        let table = TableName::parse(&target.table).map_err(|message| BrokerError::Topology {
            topic: topic.to_owned(),
            message,
        })?;
        let pool = QueuePool::open(engine, url, provision)
            .await
            .map_err(|error| classify(topic, engine, error, Fallback::Connection))?;
        if provision {
            pool.provision(&table)
                .await
                .map_err(|error| classify(topic, engine, error, Fallback::Topology))?;
        }
        pool.check(&table)
            .await
            .map_err(|error| classify(topic, engine, error, Fallback::Topology))?;
        tracing::debug!(topic, table = %table.qualified(), queue = %target.queue, ?engine, provision, "sql queue ready");
        Ok(Self {
            topic: topic.to_owned(),
            queue: target.queue.clone(),
            table,
            pool,
        })
    }
}

#[async_trait]
impl Publisher for SqlPublisher {
    async fn publish(&self, batch: &[Envelope]) -> Result<Vec<Outcome>, BrokerError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let rows = batch
            .iter()
            .map(|message| {
                Ok(Row {
                    message,
                    headers: encode_headers(&message.headers)?,
                })
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(|error| BrokerError::Publish {
                topic: self.topic.clone(),
                message: error.to_string(),
            })?;
        self.pool
            .insert(&self.table, &self.queue, &rows)
            .await
            .map_err(|error| classify(&self.topic, self.pool.engine(), error, Fallback::Publish))?;
        Ok(vec![Outcome::Confirmed; batch.len()])
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// What a database error that is not about the connection means where it happened.
#[derive(Clone, Copy)]
enum Fallback {
    Connection,
    Topology,
    Publish,
}

/// Maps a sqlx error onto the relay's categories: anything about reaching the database is the
/// connection's; other database errors mean what the step that got them says.
fn classify(topic: &str, engine: Engine, error: sqlx::Error, fallback: Fallback) -> BrokerError {
    let connection_level = match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Configuration(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database
            .code()
            .is_some_and(|code| connection_code(engine, &code)),
        _ => false,
    };
    let (topic, message) = (topic.to_owned(), error.to_string());
    match (connection_level, fallback) {
        (true, _) | (false, Fallback::Connection) => BrokerError::Connection { topic, message },
        (false, Fallback::Topology) => BrokerError::Topology { topic, message },
        (false, Fallback::Publish) => BrokerError::Publish { topic, message },
    }
}

/// Database error codes that are about the connection or the server, not the statement.
fn connection_code(engine: Engine, code: &str) -> bool {
    match engine {
        // Class 08: connection exception; 28: authorization; 3D000: no such database;
        // 53300: too many connections; 57P0x: the server is shutting down or starting.
        Engine::Postgres => {
            code.starts_with("08")
                || code.starts_with("28")
                || matches!(code, "3D000" | "53300" | "57P01" | "57P02" | "57P03")
        }
        // Primary result codes (the low byte of extended ones): IOERR, CANTOPEN, NOTADB.
        Engine::Sqlite => code
            .parse::<i32>()
            .is_ok_and(|code| matches!(code & 0xff, 10 | 14 | 26)),
    }
}

pub mod subscriber;
