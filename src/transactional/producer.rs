//! What a Rust producer uses to send transactional messages through the relay's API, and the
//! marker row that makes the check-back's answer definite.
//!
//! The producer's local transaction inserts a marker keyed by the half message's id (state
//! `committed`). The check-back handler tries to insert a `rolled_back` marker for the same id:
//! if the transaction committed, the insert conflicts and the answer is `committed`; if it is
//! still running, the insert waits for the transaction's lock on that key and then answers for
//! its outcome; if it never ran or rolled back, the `rolled_back` marker goes in and stays, so a
//! late commit of that transaction fails on the marker instead of publishing behind the answer.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use ferry::transactional::producer::{HalfMessages, mark_committed};
//! let relay = HalfMessages::new("http://orders-relay:8081", "token")?;
//! let id = relay.prepare("Order", "42", "order.placed", &serde_json::json!({"total": 12.5})).await?;
//! let mut tx = pool.begin().await?;
//! sqlx::query("UPDATE orders SET status = 'placed' WHERE id = 42").execute(&mut *tx).await?;
//! mark_committed(&mut *tx, "ferry_tx_markers", id).await?;
//! tx.commit().await?;
//! relay.commit(id).await?; // if this call is lost, the check-back finds the marker
//! # Ok(()) }
//! ```

use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{api::DatabaseEngine, outbox::trusted};

/// The engines a producer's marker table can live in, with their SQL. The marker id is bound
/// as text everywhere (PostgreSQL casts it to its `UUID` column).
pub trait MarkerEngine: sqlx::Database {
    /// Inserts a marker with a given state; fails on an existing one.
    fn insert(table: &str) -> String;
    /// Inserts a `rolled_back` marker unless one exists, waiting for an uncommitted one.
    fn insert_rolled_back_unless_marked(table: &str) -> String;
    fn select_state(table: &str) -> String;
}

impl MarkerEngine for sqlx::Postgres {
    fn insert(table: &str) -> String {
        format!("INSERT INTO {table} (id, state) VALUES ($1::uuid, $2)")
    }
    fn insert_rolled_back_unless_marked(table: &str) -> String {
        format!(
            "INSERT INTO {table} (id, state) VALUES ($1::uuid, 'rolled_back') ON CONFLICT (id) DO NOTHING"
        )
    }
    fn select_state(table: &str) -> String {
        format!("SELECT state FROM {table} WHERE id = $1::uuid")
    }
}

impl MarkerEngine for sqlx::MySql {
    fn insert(table: &str) -> String {
        format!("INSERT INTO {table} (id, state) VALUES (?, ?)")
    }
    // InnoDB makes an insert that meets an uncommitted duplicate key wait for that transaction
    // (a shared lock on the record); `ON DUPLICATE KEY UPDATE id = id` then changes nothing.
    // (`INSERT IGNORE` would also swallow unrelated errors.)
    fn insert_rolled_back_unless_marked(table: &str) -> String {
        format!(
            "INSERT INTO {table} (id, state) VALUES (?, 'rolled_back') ON DUPLICATE KEY UPDATE id = id"
        )
    }
    fn select_state(table: &str) -> String {
        format!("SELECT state FROM {table} WHERE id = ?")
    }
}

impl MarkerEngine for sqlx::Sqlite {
    fn insert(table: &str) -> String {
        format!("INSERT INTO {table} (id, state) VALUES (?, ?)")
    }
    // SQLite has one writer: the insert waits (busy timeout) for an open write transaction.
    fn insert_rolled_back_unless_marked(table: &str) -> String {
        format!(
            "INSERT INTO {table} (id, state) VALUES (?, 'rolled_back') ON CONFLICT (id) DO NOTHING"
        )
    }
    fn select_state(table: &str) -> String {
        format!("SELECT state FROM {table} WHERE id = ?")
    }
}

/// The marker table's DDL; each statement is idempotent.
pub fn marker_ddl(engine: DatabaseEngine, table: &str) -> Vec<String> {
    let (id, time) = match engine {
        DatabaseEngine::Postgres => ("UUID", "TIMESTAMPTZ NOT NULL DEFAULT now()"),
        DatabaseEngine::Mysql => (
            "CHAR(36)",
            "TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
        ),
        DatabaseEngine::Sqlite => (
            "TEXT",
            "TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
        ),
    };
    vec![format!(
        "CREATE TABLE IF NOT EXISTS {table} (
    id         {id} NOT NULL PRIMARY KEY,
    state      VARCHAR(16) NOT NULL CHECK (state IN ('committed', 'rolled_back')),
    created_at {time}
)"
    )]
}

/// Inserts the `committed` marker for `id` inside the producer's own transaction (pass the
/// transaction: `&mut *tx`). Fails (a unique violation) when the check-back already answered
/// `rolled_back` for it: the transaction must then not commit, which keeps the business change
/// and the message together.
pub async fn mark_committed<'c, DB, E>(
    executor: E,
    table: &str,
    id: Uuid,
) -> Result<(), sqlx::Error>
where
    DB: MarkerEngine,
    E: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> &'t str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    sqlx::query::<DB>(trusted(DB::insert(table)))
        .bind(id.to_string())
        .bind("committed")
        .execute(executor)
        .await?;
    Ok(())
}

/// The definite answer for a check-back of `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Committed,
    RolledBack,
}

impl Outcome {
    /// The body the relay expects from a check-back endpoint.
    pub fn answer(self) -> Value {
        json!({ "status": self })
    }
}

/// Answers a check-back: waits for a transaction still holding `id`'s marker, and records
/// `rolled_back` when there is none, so the answer can never change afterwards.
pub async fn check_back<DB>(
    pool: &sqlx::Pool<DB>,
    table: &str,
    id: Uuid,
) -> Result<Outcome, sqlx::Error>
where
    DB: MarkerEngine,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'r> String: sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let mut connection = pool.acquire().await?;
    sqlx::query::<DB>(trusted(DB::insert_rolled_back_unless_marked(table)))
        .bind(id.to_string())
        .execute(&mut *connection)
        .await?;
    let row = sqlx::query::<DB>(trusted(DB::select_state(table)))
        .bind(id.to_string())
        .fetch_one(&mut *connection)
        .await?;
    let state: String = sqlx::Row::try_get(&row, 0)?;
    Ok(if state == "committed" {
        Outcome::Committed
    } else {
        Outcome::RolledBack
    })
}

/// A call to the relay's API that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the relay's transactional API cannot be reached: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("the relay answered HTTP {status}: {message}")]
    Refused { status: u16, message: String },
}

/// A client of the relay's transactional-message API.
#[derive(Clone)]
pub struct HalfMessages {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl HalfMessages {
    pub fn new(base_url: &str, token: &str) -> Result<Self, ApiError> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()?,
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    /// Prepares a message; it is not published until committed.
    pub async fn prepare(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
        payload: &impl Serialize,
    ) -> Result<Uuid, ApiError> {
        // Serialized straight into the request: going through a `Value` would parse a payload
        // given as raw JSON only to write it out again.
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Prepare<'a, P: Serialize> {
            aggregate_type: &'a str,
            aggregate_id: &'a str,
            event_type: &'a str,
            payload: &'a P,
        }
        let body = Prepare {
            aggregate_type,
            aggregate_id,
            event_type,
            payload,
        };
        let answer = self.call("/v1/half-messages", Some(&body)).await?;
        answer["id"]
            .as_str()
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| ApiError::Refused {
                status: 200,
                message: format!("no id in the answer {answer}"),
            })
    }

    /// Commits `id`: it is published like an outbox row. Repeating it is harmless.
    pub async fn commit(&self, id: Uuid) -> Result<(), ApiError> {
        self.call(&format!("/v1/half-messages/{id}/commit"), None::<&()>)
            .await
            .map(drop)
    }

    /// Rolls `id` back: it is never published. Repeating it is harmless.
    pub async fn rollback(&self, id: Uuid) -> Result<(), ApiError> {
        self.call(&format!("/v1/half-messages/{id}/rollback"), None::<&()>)
            .await
            .map(drop)
    }

    async fn call(&self, path: &str, body: Option<&impl Serialize>) -> Result<Value, ApiError> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|value| value["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(ApiError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}
