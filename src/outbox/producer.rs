//! The producer helper: write an event into the outbox inside the caller's own transaction, so
//! the business change and the message commit together (one INSERT, no extra round trip).
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use ferry::outbox::producer::{NewEvent, enqueue};
//! let mut tx = pool.begin().await?;
//! sqlx::query("UPDATE orders SET status = 'placed' WHERE id = $1").bind(42).execute(&mut *tx).await?;
//! let event = NewEvent::json("Order", "42", "order.placed", &serde_json::json!({"total": 12.5}))?;
//! enqueue(&mut *tx, "ferry_outbox", &event).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;
use sqlx::{MySqlConnection, PgConnection, SqliteConnection};
use uuid::Uuid;

use super::trusted;

/// An event to write. `id` defaults to a new UUIDv7 (time-ordered, so the unique index stays
/// compact).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    /// A JSON document.
    pub payload: String,
    /// Carried through as message headers (`traceparent`, `tracestate`, your own).
    pub headers: BTreeMap<String, String>,
}

impl NewEvent {
    /// An event whose payload is `payload` serialized as JSON.
    pub fn json(
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
        payload: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            id: Uuid::now_v7(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            event_type: event_type.to_owned(),
            payload: serde_json::to_string(payload)?,
            headers: BTreeMap::new(),
        })
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name.to_owned(), value.to_owned());
        self
    }

    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    fn headers_json(&self) -> Option<String> {
        (!self.headers.is_empty()).then(|| {
            serde_json::Value::from(serde_json::Map::from_iter(
                self.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into())),
            ))
            .to_string()
        })
    }
}

/// A connection (or transaction, through `&mut *tx`) of an engine Ferry supports.
#[async_trait]
pub trait OutboxConnection: Send {
    async fn insert_event(&mut self, table: &str, event: &NewEvent) -> Result<(), sqlx::Error>;
}

/// Writes `event` into `table` through `connection`, normally the caller's open transaction.
/// Returns the message id.
pub async fn enqueue<C: OutboxConnection + ?Sized>(
    connection: &mut C,
    table: &str,
    event: &NewEvent,
) -> Result<Uuid, sqlx::Error> {
    connection.insert_event(table, event).await?;
    Ok(event.id)
}

#[async_trait]
impl OutboxConnection for PgConnection {
    async fn insert_event(&mut self, table: &str, event: &NewEvent) -> Result<(), sqlx::Error> {
        sqlx::query(trusted(format!(
            "INSERT INTO {table} (id, aggregate_type, aggregate_id, event_type, payload, headers) VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb)"
        )))
        .bind(event.id)
        .bind(&event.aggregate_type)
        .bind(&event.aggregate_id)
        .bind(&event.event_type)
        .bind(&event.payload)
        .bind(event.headers_json())
        .execute(self)
        .await?;
        Ok(())
    }
}

/// MySQL and SQLite take the same statement with `?` placeholders and the id as text.
macro_rules! question_mark_engine {
    ($connection:ty) => {
        #[async_trait]
        impl OutboxConnection for $connection {
            async fn insert_event(&mut self, table: &str, event: &NewEvent) -> Result<(), sqlx::Error> {
                sqlx::query(trusted(format!(
                    "INSERT INTO {table} (id, aggregate_type, aggregate_id, event_type, payload, headers) VALUES (?, ?, ?, ?, ?, ?)"
                )))
                .bind(event.id.to_string())
                .bind(&event.aggregate_type)
                .bind(&event.aggregate_id)
                .bind(&event.event_type)
                .bind(&event.payload)
                .bind(event.headers_json())
                .execute(self)
                .await?;
                Ok(())
            }
        }
    };
}

question_mark_engine!(MySqlConnection);
question_mark_engine!(SqliteConnection);
