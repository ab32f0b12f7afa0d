//! The dead-letter table's database on any of the three engines: statements written once with
//! engine-neutral placeholders, run on the pool or in a write transaction, rows read by name.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::{
    MySql, MySqlPool, PgPool, Postgres, Row as _, Sqlite, SqlitePool, Transaction,
    mysql::MySqlRow,
    postgres::PgRow,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow},
};

use crate::{
    api::DatabaseEngine,
    outbox::{sqlite::sqlite_time, trusted},
};

/// A value bound to a placeholder.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    OptInt32(Option<i32>),
    Bytes(Vec<u8>),
    Time(DateTime<Utc>),
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<i64> for Value {
    fn from(number: i64) -> Self {
        Self::Int(number)
    }
}

impl From<DateTime<Utc>> for Value {
    fn from(time: DateTime<Utc>) -> Self {
        Self::Time(time)
    }
}

/// SQL text with its bound values; `bind` writes the engine's placeholder.
#[derive(Clone, Debug)]
pub(crate) struct Sql {
    engine: DatabaseEngine,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    pub fn new(engine: DatabaseEngine) -> Self {
        Self {
            engine,
            text: String::new(),
            values: Vec::new(),
        }
    }

    pub fn engine(&self) -> DatabaseEngine {
        self.engine
    }

    /// Appends SQL text: only constants and validated table names, never a user's value.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    pub fn bind(&mut self, value: impl Into<Value>) -> &mut Self {
        self.values.push(value.into());
        match self.engine {
            DatabaseEngine::Postgres => {
                let position = self.values.len();
                self.text.push_str(&format!("${position}"));
            }
            DatabaseEngine::Mysql | DatabaseEngine::Sqlite => self.text.push('?'),
        }
        self
    }

    /// `(v1, v2, ...)`, for `IN`.
    pub fn bind_list<V: Into<Value>>(&mut self, values: impl IntoIterator<Item = V>) -> &mut Self {
        self.push("(");
        for (position, value) in values.into_iter().enumerate() {
            if position > 0 {
                self.push(", ");
            }
            self.bind(value);
        }
        self.push(")")
    }

    /// Locks the rows a `SELECT` reads until the transaction ends. SQLite needs nothing: a
    /// write transaction there holds the whole database.
    pub fn for_update(&mut self) -> &mut Self {
        match self.engine {
            DatabaseEngine::Sqlite => self,
            _ => self.push(" FOR UPDATE"),
        }
    }

    /// As `for_update`, passing over rows another transaction holds (several consumers taking
    /// work at once).
    pub fn for_update_skip_locked(&mut self) -> &mut Self {
        match self.engine {
            DatabaseEngine::Sqlite => self,
            _ => self.push(" FOR UPDATE SKIP LOCKED"),
        }
    }
}

/// Binds every value; `$time` converts times for the engine (SQLite keeps RFC 3339 text).
macro_rules! bind_values {
    ($query:expr, $values:expr, $time:expr) => {{
        let mut query = $query;
        for value in $values {
            query = match value {
                Value::Text(text) => query.bind(text.as_str()),
                Value::OptText(text) => query.bind(text.as_deref()),
                Value::Int(number) => query.bind(*number),
                Value::OptInt32(number) => query.bind(*number),
                Value::Bytes(bytes) => query.bind(bytes.as_slice()),
                Value::Time(time) => query.bind($time(*time)),
            };
        }
        query
    }};
}

fn same(time: DateTime<Utc>) -> DateTime<Utc> {
    time
}

enum Pool {
    Postgres(PgPool),
    Mysql(MySqlPool),
    Sqlite(SqlitePool),
}

/// A pool on one of the engines.
pub(crate) struct Db {
    pool: Pool,
}

impl Db {
    /// Connects; a missing SQLite file is created only when `create` is set, so a mistyped
    /// path on the command line is an error rather than a new empty database.
    pub async fn connect(
        engine: DatabaseEngine,
        url: &str,
        create: bool,
    ) -> Result<Self, sqlx::Error> {
        let pool = match engine {
            DatabaseEngine::Postgres => Pool::Postgres(PgPool::connect(url).await?),
            DatabaseEngine::Mysql => Pool::Mysql(MySqlPool::connect(url).await?),
            DatabaseEngine::Sqlite if create => {
                Pool::Sqlite(crate::outbox::sqlite::open_pool(url).await?)
            }
            DatabaseEngine::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(false)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(std::time::Duration::from_secs(10));
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .connect_with(options)
                        .await?,
                )
            }
        };
        Ok(Self { pool })
    }

    pub fn engine(&self) -> DatabaseEngine {
        match self.pool {
            Pool::Postgres(_) => DatabaseEngine::Postgres,
            Pool::Mysql(_) => DatabaseEngine::Mysql,
            Pool::Sqlite(_) => DatabaseEngine::Sqlite,
        }
    }

    pub fn sql(&self) -> Sql {
        Sql::new(self.engine())
    }

    /// Runs a statement without bound values (DDL).
    pub async fn execute_raw(&self, statement: String) -> Result<(), sqlx::Error> {
        let statement = trusted(statement);
        match &self.pool {
            Pool::Postgres(pool) => sqlx::raw_sql(statement).execute(pool).await.map(drop),
            Pool::Mysql(pool) => sqlx::raw_sql(statement).execute(pool).await.map(drop),
            Pool::Sqlite(pool) => sqlx::raw_sql(statement).execute(pool).await.map(drop),
        }
    }

    pub async fn fetch_all(&self, sql: &Sql) -> Result<Vec<Row>, sqlx::Error> {
        let text = trusted(sql.text.clone());
        Ok(match &self.pool {
            Pool::Postgres(pool) => bind_values!(sqlx::query(text), &sql.values, same)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect(),
            Pool::Mysql(pool) => bind_values!(sqlx::query(text), &sql.values, same)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(Row::Mysql)
                .collect(),
            Pool::Sqlite(pool) => bind_values!(sqlx::query(text), &sql.values, sqlite_time)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
        })
    }

    /// A transaction that will write, reading committed data (every change locks the rows it
    /// reads explicitly). On MySQL that avoids the gap locks of its default isolation, with
    /// which consumers taking letters side by side deadlock. On SQLite it takes the write lock
    /// at once: a deferred transaction that reads first and writes later fails with
    /// `SQLITE_BUSY` when another writer came in between, where waiting up front just waits.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match &self.pool {
            Pool::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Pool::Mysql(pool) => Tx::Mysql(
                pool.begin_with(
                    "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION",
                )
                .await?,
            ),
            Pool::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        })
    }
}

/// An open write transaction; dropped without `commit`, it rolls back.
pub(crate) enum Tx {
    Postgres(Transaction<'static, Postgres>),
    Mysql(Transaction<'static, MySql>),
    Sqlite(Transaction<'static, Sqlite>),
}

impl Tx {
    pub fn engine(&self) -> DatabaseEngine {
        match self {
            Self::Postgres(_) => DatabaseEngine::Postgres,
            Self::Mysql(_) => DatabaseEngine::Mysql,
            Self::Sqlite(_) => DatabaseEngine::Sqlite,
        }
    }

    pub fn sql(&self) -> Sql {
        Sql::new(self.engine())
    }

    /// Runs a statement and returns how many rows it changed.
    pub async fn execute(&mut self, sql: &Sql) -> Result<u64, sqlx::Error> {
        let text = trusted(sql.text.clone());
        Ok(match self {
            Self::Postgres(tx) => bind_values!(sqlx::query(text), &sql.values, same)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            Self::Mysql(tx) => bind_values!(sqlx::query(text), &sql.values, same)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            Self::Sqlite(tx) => bind_values!(sqlx::query(text), &sql.values, sqlite_time)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    pub async fn fetch_all(&mut self, sql: &Sql) -> Result<Vec<Row>, sqlx::Error> {
        let text = trusted(sql.text.clone());
        Ok(match self {
            Self::Postgres(tx) => bind_values!(sqlx::query(text), &sql.values, same)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect(),
            Self::Mysql(tx) => bind_values!(sqlx::query(text), &sql.values, same)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(Row::Mysql)
                .collect(),
            Self::Sqlite(tx) => bind_values!(sqlx::query(text), &sql.values, sqlite_time)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
        })
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(tx) => tx.commit().await,
            Self::Mysql(tx) => tx.commit().await,
            Self::Sqlite(tx) => tx.commit().await,
        }
    }
}

/// A result row from any engine, read by column name.
pub(crate) enum Row {
    Postgres(PgRow),
    Mysql(MySqlRow),
    Sqlite(SqliteRow),
}

/// Reads a column the same way from each engine's row.
macro_rules! get {
    ($row:expr, $column:expr, $type:ty) => {
        match $row {
            Row::Postgres(row) => row.try_get::<$type, _>($column),
            Row::Mysql(row) => row.try_get::<$type, _>($column),
            Row::Sqlite(row) => row.try_get::<$type, _>($column),
        }
    };
}

impl Row {
    pub fn text(&self, column: &str) -> Result<String, sqlx::Error> {
        get!(self, column, String)
    }

    pub fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        get!(self, column, Option<String>)
    }

    pub fn bytes(&self, column: &str) -> Result<Vec<u8>, sqlx::Error> {
        get!(self, column, Vec<u8>)
    }

    /// An integer column of any width (`INTEGER` is 32 bits on PostgreSQL and MySQL, counts
    /// and `BIGINT` are 64).
    pub fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        match self {
            Self::Postgres(row) => row
                .try_get::<Option<i64>, _>(column)
                .or_else(|_| Ok(row.try_get::<Option<i32>, _>(column)?.map(i64::from))),
            Self::Mysql(row) => row
                .try_get::<Option<i64>, _>(column)
                .or_else(|_| Ok(row.try_get::<Option<i32>, _>(column)?.map(i64::from))),
            Self::Sqlite(row) => row.try_get::<Option<i64>, _>(column),
        }
    }

    pub fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
        self.opt_int(column)?.ok_or_else(|| null_column(column))
    }

    pub fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        match self {
            Self::Postgres(row) => row.try_get(column),
            Self::Mysql(row) => row.try_get(column),
            Self::Sqlite(row) => row
                .try_get::<Option<String>, _>(column)?
                .map(|text| sqlite_text_time(column, &text))
                .transpose(),
        }
    }

    pub fn time(&self, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        self.opt_time(column)?.ok_or_else(|| null_column(column))
    }
}

/// SQLite's times are RFC 3339 text as Ferry writes them, or SQLite's own `YYYY-MM-DD HH:MM:SS`.
fn sqlite_text_time(column: &str, text: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                .map(|naive| naive.and_utc())
        })
        .map_err(|error| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: format!("{text:?} is not a time: {error}").into(),
        })
}

fn null_column(column: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: "unexpected NULL".into(),
    }
}
