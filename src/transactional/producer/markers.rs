//! The marker table in the producer's database, on each engine: the `committed` marker its
//! local transaction writes, and the check-back answer read from it.

use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{api::DatabaseEngine, outbox::trusted};

/// The engines a producer's marker table can live in, and how their SQL differs. The marker id
/// is bound as text everywhere (PostgreSQL casts it to its `UUID` column).
pub trait MarkerEngine: sqlx::Database {
    /// The id's and the state's placeholders.
    const ID: &'static str;
    const STATE: &'static str;
    /// What makes an insert that meets an existing marker change nothing. On every engine the
    /// insert first waits for a transaction that holds an uncommitted marker of the same id:
    /// PostgreSQL and InnoDB on the key's lock, SQLite (one writer) on its busy timeout.
    const UNLESS_MARKED: &'static str;

    /// Inserts a marker with a given state; fails on an existing one.
    fn insert(table: &str) -> String {
        format!(
            "INSERT INTO {table} (id, state) VALUES ({}, {})",
            Self::ID,
            Self::STATE
        )
    }

    /// Inserts a `rolled_back` marker unless one exists.
    fn insert_rolled_back_unless_marked(table: &str) -> String {
        format!(
            "INSERT INTO {table} (id, state) VALUES ({}, 'rolled_back') {}",
            Self::ID,
            Self::UNLESS_MARKED
        )
    }

    fn select_state(table: &str) -> String {
        format!("SELECT state FROM {table} WHERE id = {}", Self::ID)
    }
}

impl MarkerEngine for sqlx::Postgres {
    const ID: &'static str = "$1::uuid";
    const STATE: &'static str = "$2";
    const UNLESS_MARKED: &'static str = "ON CONFLICT (id) DO NOTHING";
}

impl MarkerEngine for sqlx::MySql {
    const ID: &'static str = "?";
    const STATE: &'static str = "?";
    // `INSERT IGNORE` would also swallow unrelated errors.
    const UNLESS_MARKED: &'static str = "ON DUPLICATE KEY UPDATE id = id";
}

impl MarkerEngine for sqlx::Sqlite {
    const ID: &'static str = "?";
    const STATE: &'static str = "?";
    const UNLESS_MARKED: &'static str = "ON CONFLICT (id) DO NOTHING";
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

/// What the relay sends to a check-back endpoint (other fields are ignored).
#[derive(serde::Deserialize)]
struct CheckBackRequest {
    id: Uuid,
}

struct CheckBackState<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    table: String,
}

/// The producer's check-back endpoint, ready to serve: answers each `POST` at `/` from the
/// marker `table` (see [`check_back`]), `500` with the error while the database cannot answer
/// (the relay asks again at its interval). Nest it at the path of `checkBack.url`:
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> std::io::Result<()> {
/// let app = axum::Router::new().nest_service(
///     "/ferry/check-back",
///     ferry::transactional::producer::check_back_router(pool, "ferry_tx_markers"),
/// );
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
/// axum::serve(listener, app).await
/// # }
/// ```
pub fn check_back_router<DB>(pool: sqlx::Pool<DB>, table: &str) -> axum::Router
where
    DB: MarkerEngine,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'r> String: sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let state = std::sync::Arc::new(CheckBackState {
        pool,
        table: table.to_owned(),
    });
    axum::Router::new()
        .route("/", axum::routing::post(answer_check_back::<DB>))
        .with_state(state)
}

async fn answer_check_back<DB>(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<CheckBackState<DB>>>,
    axum::Json(request): axum::Json<CheckBackRequest>,
) -> axum::response::Response
where
    DB: MarkerEngine,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'r> String: sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use axum::response::IntoResponse;
    match check_back(&state.pool, &state.table, request.id).await {
        Ok(outcome) => axum::Json(outcome.answer()).into_response(),
        Err(error) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(
                json!({"error": format!("cannot read the marker of {}: {error}", request.id)}),
            ),
        )
            .into_response(),
    }
}
