//! The demo's own tables (orders, stock, the inventory service's inbox and stock movements) in
//! SQLite or PostgreSQL, the two transactions the demo's services run, and the counts its
//! report is made of.

use sqlx::{PgPool, SqlitePool};
use uuid::Uuid;

use super::quickstart::{self, Database};
use crate::{
    api::DatabaseEngine,
    consumer::inbox::{Inbox, inbox_ddl},
    outbox::{
        self,
        producer::{NewEvent, enqueue},
    },
};

pub const ORDERS: &str = "demo_orders";
pub const STOCK: &str = "demo_stock";
pub const MOVEMENTS: &str = "demo_stock_movements";
pub const INBOX: &str = "demo_inbox";
pub const DUPLICATES: &str = "demo_duplicates";

/// The stock each SKU starts with: enough that no reservation is ever refused for lack of it.
pub const INITIAL_STOCK: i64 = 1_000_000;

/// One order the producer commits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub order_id: String,
    pub sku: String,
    pub quantity: i32,
}

/// A connection pool of either engine.
#[derive(Clone)]
pub enum DemoDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same code on whichever pool it is (the statements are written to suit both).
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            DemoDb::Sqlite($pool) => $body,
            DemoDb::Postgres($pool) => $body,
        }
    };
}

/// What the inventory service did with a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserved {
    Applied,
    /// The message id was already in the inbox: nothing changed.
    Repeat,
}

impl DemoDb {
    pub async fn connect(database: Database, url: &str) -> Result<Self, sqlx::Error> {
        Ok(match database {
            Database::Sqlite => Self::Sqlite(outbox::sqlite::open_pool(url).await?),
            Database::Postgres => Self::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .connect(url)
                    .await?,
            ),
        })
    }

    fn engine(&self) -> DatabaseEngine {
        match self {
            Self::Sqlite(_) => DatabaseEngine::Sqlite,
            Self::Postgres(_) => DatabaseEngine::Postgres,
        }
    }

    /// Drops every table an earlier demo left in this database, then creates the demo's
    /// tables and the outbox. Only tables named by the demo are touched.
    pub async fn reset(&self, url: &str) -> Result<(), sqlx::Error> {
        let dead_letter_history = format!("{}_history", quickstart::DEAD_LETTER_TABLE);
        let tables = [
            ORDERS,
            STOCK,
            MOVEMENTS,
            INBOX,
            DUPLICATES,
            quickstart::OUTBOX_TABLE,
            quickstart::QUEUE_TABLE,
            quickstart::PROCESSED_TABLE,
            quickstart::DEAD_LETTER_TABLE,
            &dead_letter_history,
        ];
        for table in tables {
            let drop = outbox::trusted(format!("DROP TABLE IF EXISTS {table}"));
            on_pool!(self, pool => {
                sqlx::query(drop).execute(pool).await?;
            });
        }
        let mut statements = vec![
            format!(
                "CREATE TABLE {ORDERS} (order_id VARCHAR(64) PRIMARY KEY, sku VARCHAR(64) NOT NULL, \
                 quantity INTEGER NOT NULL, event_id VARCHAR(64) NOT NULL, poison INTEGER NOT NULL)"
            ),
            format!(
                "CREATE TABLE {STOCK} (sku VARCHAR(64) PRIMARY KEY, on_hand BIGINT NOT NULL, \
                 initial BIGINT NOT NULL)"
            ),
            // No unique key on purpose: a second effect of one message would show as a second row.
            format!(
                "CREATE TABLE {MOVEMENTS} (message_id VARCHAR(64) NOT NULL, order_id VARCHAR(64) NOT NULL, \
                 sku VARCHAR(64) NOT NULL, quantity INTEGER NOT NULL)"
            ),
            format!("CREATE TABLE {DUPLICATES} (message_id VARCHAR(64) NOT NULL)"),
        ];
        statements.extend(inbox_ddl(self.engine(), INBOX));
        for statement in statements {
            on_pool!(self, pool => {
                sqlx::query(outbox::trusted(statement.clone())).execute(pool).await?;
            });
        }
        outbox::migrate::migrate(self.engine(), url, quickstart::OUTBOX_TABLE).await
    }

    /// Stocks every SKU the producer orders.
    pub async fn stock(&self, skus: &[&str]) -> Result<(), sqlx::Error> {
        for sku in skus {
            let insert = outbox::trusted(format!(
                "INSERT INTO {STOCK} (sku, on_hand, initial) VALUES ($1, $2, $2)"
            ));
            on_pool!(self, pool => {
                sqlx::query(insert).bind(*sku).bind(INITIAL_STOCK).execute(pool).await?;
            });
        }
        Ok(())
    }

    /// The orders service: the order row and its event in one local transaction.
    pub async fn place_order(&self, order: &Order, poison: bool) -> Result<Uuid, sqlx::Error> {
        let event = NewEvent::json("Order", &order.order_id, "order.created", order)
            .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
        let insert = format!(
            "INSERT INTO {ORDERS} (order_id, sku, quantity, event_id, poison) VALUES ($1, $2, $3, $4, $5)"
        );
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(outbox::trusted(insert))
                .bind(&order.order_id)
                .bind(&order.sku)
                .bind(order.quantity)
                .bind(event.id.to_string())
                .bind(i32::from(poison))
                .execute(&mut *tx)
                .await?;
            enqueue(&mut *tx, quickstart::OUTBOX_TABLE, &event).await?;
            tx.commit().await?;
        });
        Ok(event.id)
    }

    /// The inventory service: the inbox row, the stock movement and the new stock level in one
    /// local transaction, so a repeat of the message changes nothing.
    pub async fn reserve(&self, message_id: &str, order: &Order) -> Result<Reserved, sqlx::Error> {
        let inbox = Inbox::new(INBOX, quickstart::CONSUMER).map_err(sqlx::Error::Protocol)?;
        let movement = format!(
            "INSERT INTO {MOVEMENTS} (message_id, order_id, sku, quantity) VALUES ($1, $2, $3, $4)"
        );
        let stock = format!("UPDATE {STOCK} SET on_hand = on_hand - $1 WHERE sku = $2");
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if !inbox.record(&mut *tx, message_id).await? {
                tx.commit().await?;
                return Ok(Reserved::Repeat);
            }
            sqlx::query(outbox::trusted(movement))
                .bind(message_id)
                .bind(&order.order_id)
                .bind(&order.sku)
                .bind(order.quantity)
                .execute(&mut *tx)
                .await?;
            sqlx::query(outbox::trusted(stock))
                .bind(i64::from(order.quantity))
                .bind(&order.sku)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(Reserved::Applied)
    }

    /// Notes a repeat the inventory service's inbox turned away.
    pub async fn record_repeat(&self, message_id: &str) -> Result<(), sqlx::Error> {
        let insert = outbox::trusted(format!("INSERT INTO {DUPLICATES} (message_id) VALUES ($1)"));
        on_pool!(self, pool => {
            sqlx::query(insert).bind(message_id).execute(pool).await?;
        });
        Ok(())
    }

    /// One number from the database.
    pub async fn count(&self, query: &str) -> Result<i64, sqlx::Error> {
        let query = outbox::trusted(query.to_owned());
        Ok(on_pool!(self, pool => sqlx::query_scalar::<_, i64>(query).fetch_one(pool).await?))
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await);
    }
}
