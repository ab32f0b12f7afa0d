//! The inbox helper for receiving services: record a message id inside the service's own
//! transaction, so that its business effect and the dedup record commit together. A redelivered
//! message then finds its id and changes nothing twice, whatever happened between the
//! service's commit and the consumer's acknowledgement.
//!
//! ```no_run
//! # async fn handle(pool: sqlx::PgPool, message_id: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use ferry::consumer::inbox::{Inbox, InboxConnection};
//! let inbox = Inbox::new("inventory_inbox", "inventory")?;
//! let mut tx = pool.begin().await?;
//! if inbox.record(&mut *tx, message_id).await? {
//!     sqlx::query("UPDATE stock SET reserved = reserved + 1 WHERE sku = 'A1'")
//!         .execute(&mut *tx)
//!         .await?;
//! }
//! tx.commit().await?; // answer 2xx either way: a repeat is a success
//! # Ok(()) }
//! ```
//!
//! The table, in any language (`inbox_ddl` gives it per engine):
//!
//! ```sql
//! CREATE TABLE inventory_inbox (
//!     consumer    VARCHAR(255) NOT NULL,
//!     message_id  VARCHAR(255) NOT NULL,
//!     received_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
//!     PRIMARY KEY (consumer, message_id)
//! );
//! -- in the same transaction as the business change; zero rows inserted = a repeat:
//! INSERT INTO inventory_inbox (consumer, message_id) VALUES ('inventory', $1)
//!     ON CONFLICT DO NOTHING;             -- PostgreSQL, SQLite
//! INSERT IGNORE INTO inventory_inbox (consumer, message_id) VALUES ('inventory', ?); -- MySQL
//! ```
//!
//! A second delivery of the same id that runs while the first is still in its transaction waits
//! on the first's uncommitted row (the unique key), then inserts nothing once the first commits,
//! or inserts it once the first rolls back: exactly one of them applies the effect.

use async_trait::async_trait;
use sqlx::{MySqlConnection, PgConnection, SqliteConnection};

use crate::{api::DatabaseEngine, outbox::trusted, validate::check_table_name};

/// Statements that create an inbox table; each is idempotent.
pub fn inbox_ddl(engine: DatabaseEngine, table: &str) -> Vec<String> {
    let time = match engine {
        DatabaseEngine::Postgres => "TIMESTAMPTZ NOT NULL DEFAULT now()",
        DatabaseEngine::Mysql => "TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
        DatabaseEngine::Sqlite => "TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP",
    };
    vec![format!(
        "CREATE TABLE IF NOT EXISTS {table} (
    consumer    VARCHAR(255) NOT NULL,
    message_id  VARCHAR(255) NOT NULL,
    received_at {time},
    PRIMARY KEY (consumer, message_id)
)"
    )]
}

/// One service's inbox.
#[derive(Clone, Debug)]
pub struct Inbox {
    table: String,
    consumer: String,
}

impl Inbox {
    /// `table` must be a plain or schema-qualified SQL name; `consumer` tells apart the
    /// subscriptions that share one table.
    pub fn new(table: &str, consumer: &str) -> Result<Self, String> {
        if let Some(error) = check_table_name(table) {
            return Err(format!("inbox table: {error}"));
        }
        Ok(Self {
            table: table.to_owned(),
            consumer: consumer.to_owned(),
        })
    }

    /// Records `message_id` through `connection` (the caller's open transaction). `true` the
    /// first time: apply the effect. `false` for a repeat: apply nothing, answer success.
    pub async fn record<C: InboxConnection + ?Sized>(
        &self,
        connection: &mut C,
        message_id: &str,
    ) -> Result<bool, sqlx::Error> {
        connection.insert_id(self, message_id).await
    }
}

/// A connection (or transaction, through `&mut *tx`) of an engine Ferry supports.
#[async_trait]
pub trait InboxConnection: Send {
    async fn insert_id(&mut self, inbox: &Inbox, message_id: &str) -> Result<bool, sqlx::Error>;
}

/// One insert per engine: the statement is the only difference (placeholders, and MySQL's
/// `INSERT IGNORE` for `ON CONFLICT DO NOTHING`).
macro_rules! inbox_engine {
    ($connection:ty, $statement:literal) => {
        #[async_trait]
        impl InboxConnection for $connection {
            async fn insert_id(
                &mut self,
                inbox: &Inbox,
                message_id: &str,
            ) -> Result<bool, sqlx::Error> {
                let inserted = sqlx::query(trusted(format!($statement, inbox.table)))
                    .bind(&inbox.consumer)
                    .bind(message_id)
                    .execute(self)
                    .await?;
                Ok(inserted.rows_affected() == 1)
            }
        }
    };
}

inbox_engine!(
    PgConnection,
    "INSERT INTO {} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
);
inbox_engine!(
    SqliteConnection,
    "INSERT INTO {} (consumer, message_id) VALUES (?, ?) ON CONFLICT DO NOTHING"
);
inbox_engine!(
    MySqlConnection,
    "INSERT IGNORE INTO {} (consumer, message_id) VALUES (?, ?)"
);
