//! Applies the outbox schema (`ferry outbox migrate`): idempotent, recorded in
//! `ferry_schema_versions`.

use sqlx::{Connection, MySqlConnection, PgConnection};

use super::{
    schema::{OUTBOX_SCHEMA_VERSION, outbox_ddl, version_table_ddl},
    trusted,
};
use crate::api::DatabaseEngine;

/// Creates (or completes) the outbox table `table` and its helpers.
pub async fn migrate(engine: DatabaseEngine, url: &str, table: &str) -> Result<(), sqlx::Error> {
    let mut statements = outbox_ddl(engine, table);
    statements.push(version_table_ddl(engine));
    match engine {
        DatabaseEngine::Postgres => {
            let mut connection = PgConnection::connect(url).await?;
            // Concurrent `CREATE ... IF NOT EXISTS` can still collide in PostgreSQL's catalog,
            // so migrations (say, of two relays starting together) take turns.
            let mut tx = connection.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('ferry_migrate'))")
                .execute(&mut *tx)
                .await?;
            for statement in statements {
                sqlx::raw_sql(trusted(statement)).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            sqlx::query(
                "INSERT INTO ferry_schema_versions (table_name, kind, version) VALUES ($1, 'outbox', $2)
                 ON CONFLICT (table_name) DO UPDATE SET version = excluded.version, applied_at = now()",
            )
            .bind(table)
            .bind(OUTBOX_SCHEMA_VERSION)
            .execute(&mut connection)
            .await?;
        }
        DatabaseEngine::Mysql => {
            let mut connection = MySqlConnection::connect(url).await?;
            // MySQL's DDL is not transactional; a named lock makes concurrent migrations take turns.
            sqlx::query("SELECT GET_LOCK('ferry_migrate', 60)")
                .execute(&mut connection)
                .await?;
            for statement in statements {
                sqlx::raw_sql(trusted(statement))
                    .execute(&mut connection)
                    .await?;
            }
            sqlx::query("SELECT RELEASE_LOCK('ferry_migrate')")
                .execute(&mut connection)
                .await?;
            sqlx::query(
                "INSERT INTO ferry_schema_versions (table_name, kind, version) VALUES (?, 'outbox', ?)
                 ON DUPLICATE KEY UPDATE version = VALUES(version), applied_at = CURRENT_TIMESTAMP(6)",
            )
            .bind(table)
            .bind(OUTBOX_SCHEMA_VERSION)
            .execute(&mut connection)
            .await?;
        }
        DatabaseEngine::Sqlite => {
            let pool = super::sqlite::open_pool(url).await?;
            let mut connection = pool.acquire().await?;
            for statement in statements {
                sqlx::raw_sql(trusted(statement))
                    .execute(&mut *connection)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO ferry_schema_versions (table_name, kind, version) VALUES (?, 'outbox', ?)
                 ON CONFLICT (table_name) DO UPDATE SET version = excluded.version",
            )
            .bind(table)
            .bind(OUTBOX_SCHEMA_VERSION)
            .execute(&mut *connection)
            .await?;
            drop(connection);
            pool.close().await;
        }
    }
    Ok(())
}
