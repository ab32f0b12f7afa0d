//! The outbox stores against the real databases: what a claim takes, what it leaves to other
//! claims, and how finishing or abandoning it changes the table. These are the properties the
//! relay's ordering and at-least-once promises rest on.

mod claims;
mod producer;

use ferry::{api::DatabaseEngine, outbox};

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/ferry_test";
pub const MYSQL: &str = "mysql://root@127.0.0.1:3306/ferry_test";

/// A fresh, uniquely named outbox table, migrated.
pub struct Table {
    pub engine: DatabaseEngine,
    pub url: String,
    pub name: String,
    _dir: Option<tempfile::TempDir>,
}

impl Table {
    pub async fn new(engine: DatabaseEngine) -> Self {
        let name = format!("outbox_{}", uuid::Uuid::new_v4().simple());
        let (url, dir) = match engine {
            DatabaseEngine::Postgres => (POSTGRES.to_owned(), None),
            DatabaseEngine::Mysql => (MYSQL.to_owned(), None),
            DatabaseEngine::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                (
                    format!("sqlite://{}/outbox.db", dir.path().display()),
                    Some(dir),
                )
            }
        };
        outbox::migrate::migrate(engine, &url, &name)
            .await
            .expect("migrate");
        // Migrating twice must be harmless.
        outbox::migrate::migrate(engine, &url, &name)
            .await
            .expect("migrate again");
        Self {
            engine,
            url,
            name,
            _dir: dir,
        }
    }

    pub async fn store(&self) -> Box<dyn outbox::OutboxStore> {
        let config = ferry::config::DatabaseConfig {
            engine: self.engine,
            url: ferry::config::SecretSource::Value(self.url.clone()),
            table: self.name.clone(),
        };
        outbox::open(&config).await.expect("open store")
    }
}
