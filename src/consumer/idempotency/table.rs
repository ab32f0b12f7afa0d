//! The idempotency store as a database table (PostgreSQL, MySQL/MariaDB or SQLite): one row per
//! (consumer, message id), unique.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{TimeDelta, Utc};
use sqlx::{
    MySqlPool, PgPool, Row, SqlitePool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{Claim, IdempotencyError, IdempotencyStore, first_occurrences, spread};
use crate::{
    api::DatabaseEngine,
    config::DatabaseConfig,
    outbox::{schema::TableName, sqlite::sqlite_time, trusted},
};

/// Done records removed per purge statement, so a purge never holds long locks.
const PURGE_BATCH: i64 = 1_000;

/// Statements that create the table; each is idempotent.
///
/// The key leads with the message id: every statement looks ids up in batches, and with the
/// consumer first a table without planner statistics (a new one, or autovacuum off) was read as
/// "few rows per consumer" and scanned by consumer, every row of it per statement.
pub fn idempotency_ddl(engine: DatabaseEngine, table: &str) -> Vec<String> {
    let t = TableName::new(table);
    let (q, bare) = (&t.qualified, &t.bare);
    let time = match engine {
        DatabaseEngine::Postgres => "TIMESTAMPTZ NOT NULL",
        DatabaseEngine::Mysql => "TIMESTAMP(6) NOT NULL",
        DatabaseEngine::Sqlite => "TEXT NOT NULL",
    };
    let index = match engine {
        DatabaseEngine::Mysql => format!("CREATE INDEX {bare}_updated ON {q} (state, updated_at)"),
        _ => format!("CREATE INDEX IF NOT EXISTS {bare}_updated ON {q} (state, updated_at)"),
    };
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {q} (
    consumer    VARCHAR(255) NOT NULL,
    message_id  VARCHAR(255) NOT NULL,
    state       VARCHAR(8) NOT NULL,
    lease_until {time},
    updated_at  {time},
    PRIMARY KEY (message_id, consumer)
)"
        ),
        index,
    ]
}

enum Pool {
    Postgres(PgPool),
    Mysql(MySqlPool),
    Sqlite(SqlitePool),
}

/// One consumer's records in a table.
pub struct TableIdempotency {
    pool: Pool,
    table: String,
    consumer: String,
    lease: Duration,
    window: Duration,
}

impl TableIdempotency {
    pub async fn connect(
        config: &DatabaseConfig,
        consumer: &str,
        lease: Duration,
        window: Duration,
    ) -> Result<Self, IdempotencyError> {
        let url = config.url.read()?;
        let pool = match config.engine {
            DatabaseEngine::Postgres => {
                // A generic plan made while the table was small probes the key on `consumer`
                // alone and filters the ids: tens of milliseconds per statement once the table
                // holds 100k rows. A lost record after a database crash (asynchronous commit)
                // only lets a later copy through to the service's own Idempotency-Key check;
                // the message itself was acknowledged after the record was written.
                let options = PgConnectOptions::from_str(&url)?.options([
                    ("plan_cache_mode", "force_custom_plan"),
                    ("synchronous_commit", "off"),
                ]);
                Pool::Postgres(PgPoolOptions::new().connect_with(options).await?)
            }
            DatabaseEngine::Mysql => Pool::Mysql(MySqlPool::connect(&url).await?),
            DatabaseEngine::Sqlite => Pool::Sqlite(crate::outbox::sqlite::open_pool(&url).await?),
        };
        let store = Self {
            pool,
            table: config.table.clone(),
            consumer: consumer.to_owned(),
            lease,
            window,
        };
        store.migrate(config.engine).await?;
        Ok(store)
    }

    async fn migrate(&self, engine: DatabaseEngine) -> Result<(), IdempotencyError> {
        for statement in idempotency_ddl(engine, &self.table) {
            match &self.pool {
                Pool::Postgres(pool) => {
                    sqlx::raw_sql(trusted(statement)).execute(pool).await?;
                }
                Pool::Sqlite(pool) => {
                    sqlx::raw_sql(trusted(statement)).execute(pool).await?;
                }
                Pool::Mysql(pool) => match sqlx::raw_sql(trusted(statement)).execute(pool).await {
                    // MySQL has no CREATE INDEX IF NOT EXISTS: an existing index is fine.
                    Err(sqlx::Error::Database(error))
                        if error.message().contains("Duplicate key name") => {}
                    other => {
                        other?;
                    }
                },
            }
        }
        Ok(())
    }

    fn millis(duration: Duration) -> i64 {
        i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
    }

    async fn claim_postgres(
        &self,
        pool: &PgPool,
        ids: &[String],
    ) -> Result<Vec<Claim>, IdempotencyError> {
        let q = &self.table;
        // Sorted, so two batches that share ids lock their rows in the same order and cannot
        // deadlock. The outer query reads the table as it was before the upsert: for ids not
        // claimed now it tells `done` from another holder's `claimed`.
        let sql = format!(
            "WITH input AS (SELECT DISTINCT unnest($2::text[]) AS message_id ORDER BY 1),
             claimed AS (
                 INSERT INTO {q} AS cur (consumer, message_id, state, lease_until, updated_at)
                 SELECT $1, message_id, 'claimed', now() + $3 * interval '1 millisecond', now()
                 FROM input
                 ON CONFLICT (consumer, message_id) DO UPDATE
                 SET state = 'claimed', lease_until = EXCLUDED.lease_until, updated_at = now()
                 WHERE (cur.state = 'claimed' AND cur.lease_until < now())
                    OR (cur.state = 'done' AND cur.updated_at < now() - $4 * interval '1 millisecond')
                 RETURNING message_id)
             SELECT i.message_id, c.message_id IS NOT NULL AS owned, t.state
             FROM input i
             LEFT JOIN claimed c ON c.message_id = i.message_id
             LEFT JOIN {q} t ON t.consumer = $1 AND t.message_id = i.message_id"
        );
        let rows = sqlx::query(trusted(sql))
            .bind(&self.consumer)
            .bind(ids)
            .bind(Self::millis(self.lease))
            .bind(Self::millis(self.window))
            .fetch_all(pool)
            .await?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0)?;
            let owned: bool = row.try_get(1)?;
            let state: Option<String> = row.try_get(2)?;
            found.insert(id, claim_of(owned, state.as_deref()));
        }
        Ok(ids
            .iter()
            .map(|id| found.get(id).copied().unwrap_or(Claim::Busy))
            .collect())
    }

    async fn claim_sqlite(
        &self,
        pool: &SqlitePool,
        ids: &[String],
    ) -> Result<Vec<Claim>, IdempotencyError> {
        let q = &self.table;
        let now = Utc::now();
        let lease_until = sqlite_time(now + TimeDelta::milliseconds(Self::millis(self.lease)));
        let cutoff = sqlite_time(now - TimeDelta::milliseconds(Self::millis(self.window)));
        let now = sqlite_time(now);
        let upsert = format!(
            "INSERT INTO {q} (consumer, message_id, state, lease_until, updated_at)
             VALUES (?1, ?2, 'claimed', ?3, ?4)
             ON CONFLICT (consumer, message_id) DO UPDATE
             SET state = 'claimed', lease_until = excluded.lease_until, updated_at = excluded.updated_at
             WHERE (state = 'claimed' AND lease_until < ?4) OR (state = 'done' AND updated_at < ?5)
             RETURNING message_id"
        );
        let lookup = format!("SELECT state FROM {q} WHERE consumer = ?1 AND message_id = ?2");
        let mut transaction = pool.begin().await?;
        let mut claims = Vec::with_capacity(ids.len());
        for id in ids {
            let owned = sqlx::query(trusted(upsert.clone()))
                .bind(&self.consumer)
                .bind(id)
                .bind(&lease_until)
                .bind(&now)
                .bind(&cutoff)
                .fetch_optional(&mut *transaction)
                .await?
                .is_some();
            let state: Option<String> = if owned {
                None
            } else {
                sqlx::query_scalar(trusted(lookup.clone()))
                    .bind(&self.consumer)
                    .bind(id)
                    .fetch_optional(&mut *transaction)
                    .await?
            };
            claims.push(claim_of(owned, state.as_deref()));
        }
        transaction.commit().await?;
        Ok(claims)
    }

    async fn claim_mysql(
        &self,
        pool: &MySqlPool,
        ids: &[String],
    ) -> Result<Vec<Claim>, IdempotencyError> {
        let q = &self.table;
        let mut claims = Vec::with_capacity(ids.len());
        for id in ids {
            let mut transaction = pool.begin().await?;
            // MySQL's upsert cannot make its update conditional on the old row without
            // evaluating the condition once per column, so read the row under lock first.
            let current: Option<(String, bool)> = sqlx::query_as(trusted(format!(
                "SELECT state,
                        (state = 'claimed' AND lease_until < NOW(6))
                        OR (state = 'done' AND updated_at < NOW(6) - INTERVAL ? MICROSECOND)
                 FROM {q} WHERE consumer = ? AND message_id = ? FOR UPDATE"
            )))
            .bind(Self::millis(self.window).saturating_mul(1000))
            .bind(&self.consumer)
            .bind(id)
            .fetch_optional(&mut *transaction)
            .await?;
            let lease = Self::millis(self.lease).saturating_mul(1000);
            let claim = match current {
                None => {
                    let inserted = sqlx::query(trusted(format!(
                        "INSERT IGNORE INTO {q} (consumer, message_id, state, lease_until, updated_at)
                         VALUES (?, ?, 'claimed', NOW(6) + INTERVAL ? MICROSECOND, NOW(6))"
                    )))
                    .bind(&self.consumer)
                    .bind(id)
                    .bind(lease)
                    .execute(&mut *transaction)
                    .await?;
                    // Zero rows: another consumer replica inserted it a moment ago.
                    if inserted.rows_affected() == 1 {
                        Claim::Owned
                    } else {
                        Claim::Busy
                    }
                }
                Some((_, true)) => {
                    sqlx::query(trusted(format!(
                        "UPDATE {q} SET state = 'claimed',
                             lease_until = NOW(6) + INTERVAL ? MICROSECOND, updated_at = NOW(6)
                         WHERE consumer = ? AND message_id = ?"
                    )))
                    .bind(lease)
                    .bind(&self.consumer)
                    .bind(id)
                    .execute(&mut *transaction)
                    .await?;
                    Claim::Owned
                }
                Some((state, false)) => claim_of(false, Some(&state)),
            };
            transaction.commit().await?;
            claims.push(claim);
        }
        Ok(claims)
    }
}

fn claim_of(owned: bool, state: Option<&str>) -> Claim {
    match (owned, state) {
        (true, _) => Claim::Owned,
        (false, Some("done")) => Claim::Done,
        _ => Claim::Busy,
    }
}

#[async_trait]
impl IdempotencyStore for TableIdempotency {
    async fn claim(&self, ids: &[String]) -> Result<Vec<Claim>, IdempotencyError> {
        let (distinct, positions) = first_occurrences(ids);
        let answers = match &self.pool {
            Pool::Postgres(pool) => self.claim_postgres(pool, &distinct).await?,
            Pool::Sqlite(pool) => self.claim_sqlite(pool, &distinct).await?,
            Pool::Mysql(pool) => self.claim_mysql(pool, &distinct).await?,
        };
        Ok(spread(&answers, &positions))
    }

    async fn complete(&self, ids: &[String]) -> Result<(), IdempotencyError> {
        let q = &self.table;
        match &self.pool {
            Pool::Postgres(pool) => {
                sqlx::query(trusted(format!(
                    "UPDATE {q} SET state = 'done', updated_at = now()
                     WHERE consumer = $1 AND message_id = ANY($2)"
                )))
                .bind(&self.consumer)
                .bind(ids)
                .execute(pool)
                .await?;
            }
            Pool::Sqlite(pool) => {
                let now = sqlite_time(Utc::now());
                let mut transaction = pool.begin().await?;
                for id in ids {
                    sqlx::query(trusted(format!(
                        "UPDATE {q} SET state = 'done', updated_at = ?1
                         WHERE consumer = ?2 AND message_id = ?3"
                    )))
                    .bind(&now)
                    .bind(&self.consumer)
                    .bind(id)
                    .execute(&mut *transaction)
                    .await?;
                }
                transaction.commit().await?;
            }
            Pool::Mysql(pool) => {
                for id in ids {
                    sqlx::query(trusted(format!(
                        "UPDATE {q} SET state = 'done', updated_at = NOW(6)
                         WHERE consumer = ? AND message_id = ?"
                    )))
                    .bind(&self.consumer)
                    .bind(id)
                    .execute(pool)
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn release(&self, ids: &[String]) -> Result<(), IdempotencyError> {
        let q = &self.table;
        match &self.pool {
            Pool::Postgres(pool) => {
                sqlx::query(trusted(format!(
                    "DELETE FROM {q} WHERE consumer = $1 AND message_id = ANY($2) AND state = 'claimed'"
                )))
                .bind(&self.consumer)
                .bind(ids)
                .execute(pool)
                .await?;
            }
            Pool::Sqlite(pool) => {
                let mut transaction = pool.begin().await?;
                for id in ids {
                    sqlx::query(trusted(format!(
                        "DELETE FROM {q} WHERE consumer = ?1 AND message_id = ?2 AND state = 'claimed'"
                    )))
                    .bind(&self.consumer)
                    .bind(id)
                    .execute(&mut *transaction)
                    .await?;
                }
                transaction.commit().await?;
            }
            Pool::Mysql(pool) => {
                for id in ids {
                    sqlx::query(trusted(format!(
                        "DELETE FROM {q} WHERE consumer = ? AND message_id = ? AND state = 'claimed'"
                    )))
                    .bind(&self.consumer)
                    .bind(id)
                    .execute(pool)
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn purge(&self) -> Result<u64, IdempotencyError> {
        let q = &self.table;
        let window = Self::millis(self.window);
        let removed = match &self.pool {
            Pool::Postgres(pool) => sqlx::query(trusted(format!(
                "DELETE FROM {q} WHERE (consumer, message_id) IN (
                     SELECT consumer, message_id FROM {q}
                     WHERE state = 'done' AND updated_at < now() - $1 * interval '1 millisecond'
                     LIMIT $2)"
            )))
            .bind(window)
            .bind(PURGE_BATCH)
            .execute(pool)
            .await?
            .rows_affected(),
            Pool::Sqlite(pool) => sqlx::query(trusted(format!(
                "DELETE FROM {q} WHERE rowid IN (
                     SELECT rowid FROM {q} WHERE state = 'done' AND updated_at < ?1 LIMIT ?2)"
            )))
            .bind(sqlite_time(Utc::now() - TimeDelta::milliseconds(window)))
            .bind(PURGE_BATCH)
            .execute(pool)
            .await?
            .rows_affected(),
            Pool::Mysql(pool) => sqlx::query(trusted(format!(
                "DELETE FROM {q} WHERE state = 'done'
                 AND updated_at < NOW(6) - INTERVAL ? MICROSECOND LIMIT ?"
            )))
            .bind(window.saturating_mul(1000))
            .bind(PURGE_BATCH)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(removed)
    }
}
