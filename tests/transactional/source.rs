//! The producer's database in the transactional tests: the outbox, its half-message table and
//! the producer's marker table live in it, on any of the three engines.

use ferry::{
    api::DatabaseEngine,
    transactional::producer::{self, Outcome},
};
use sqlx::{MySqlPool, PgPool, SqlitePool};
use uuid::Uuid;

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/ferry_test";
pub const MYSQL: &str = "mysql://root@127.0.0.1:3306/ferry_test";

pub enum Source {
    Postgres(PgPool),
    Mysql(MySqlPool),
    Sqlite {
        pool: SqlitePool,
        /// Where the file lives; removed with it.
        _folder: tempfile::TempDir,
    },
}

/// Runs `$body` with `$pool` bound to the source's pool, whichever engine it is.
macro_rules! on_pool {
    ($source:expr, $pool:ident => $body:expr) => {
        match $source {
            Source::Postgres($pool) => $body,
            Source::Mysql($pool) => $body,
            Source::Sqlite { pool: $pool, .. } => $body,
        }
    };
}

/// A producer transaction left open, holding its marker.
pub enum OpenTransaction {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Mysql(sqlx::Transaction<'static, sqlx::MySql>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

impl OpenTransaction {
    pub async fn commit(self) {
        match self {
            Self::Postgres(tx) => tx.commit().await,
            Self::Mysql(tx) => tx.commit().await,
            Self::Sqlite(tx) => tx.commit().await,
        }
        .expect("the local commit");
    }
}

impl Source {
    /// Connects to the shared server (or a new SQLite file); returns the URL the relay uses.
    pub async fn open(engine: DatabaseEngine) -> (Self, String) {
        match engine {
            DatabaseEngine::Postgres => (
                Self::Postgres(PgPool::connect(POSTGRES).await.expect("PostgreSQL")),
                POSTGRES.to_owned(),
            ),
            DatabaseEngine::Mysql => (
                Self::Mysql(MySqlPool::connect(MYSQL).await.expect("MariaDB")),
                MYSQL.to_owned(),
            ),
            DatabaseEngine::Sqlite => {
                let folder = tempfile::tempdir().expect("a temporary directory");
                let url = format!("sqlite://{}", folder.path().join("orders.db").display());
                let pool = ferry::outbox::sqlite::open_pool(&url)
                    .await
                    .expect("SQLite");
                (
                    Self::Sqlite {
                        pool,
                        _folder: folder,
                    },
                    url,
                )
            }
        }
    }

    /// A PostgreSQL server the test started itself.
    pub async fn postgres_at(url: &str) -> Self {
        Self::Postgres(PgPool::connect(url).await.expect("the private PostgreSQL"))
    }

    pub fn engine(&self) -> DatabaseEngine {
        match self {
            Self::Postgres(_) => DatabaseEngine::Postgres,
            Self::Mysql(_) => DatabaseEngine::Mysql,
            Self::Sqlite { .. } => DatabaseEngine::Sqlite,
        }
    }

    /// The placeholder for a message id compared with an `id` column.
    fn id_param(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "$1::uuid",
            _ => "?",
        }
    }

    pub async fn execute(&self, sql: String) {
        on_pool!(self, pool => sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(pool).await.map(drop))
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
    }

    pub async fn create_markers(&self, markers: &str) {
        for statement in producer::marker_ddl(self.engine(), markers) {
            self.execute(statement).await;
        }
    }

    /// The producer's local transaction with its marker, left open.
    pub async fn begin_marked(&self, markers: &str, id: Uuid) -> OpenTransaction {
        match self {
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await.expect("begin");
                producer::mark_committed(&mut *tx, markers, id)
                    .await
                    .expect("the marker");
                OpenTransaction::Postgres(tx)
            }
            Self::Mysql(pool) => {
                let mut tx = pool.begin().await.expect("begin");
                producer::mark_committed(&mut *tx, markers, id)
                    .await
                    .expect("the marker");
                OpenTransaction::Mysql(tx)
            }
            Self::Sqlite { pool, .. } => {
                let mut tx = pool.begin().await.expect("begin");
                producer::mark_committed(&mut *tx, markers, id)
                    .await
                    .expect("the marker");
                OpenTransaction::Sqlite(tx)
            }
        }
    }

    /// Whether a producer transaction that runs after the check-back answered can still
    /// insert its marker (it must not); the transaction is rolled back either way.
    pub async fn late_marker_refused(&self, markers: &str, id: Uuid) -> bool {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.expect("begin");
            let late = producer::mark_committed(&mut *tx, markers, id).await;
            tx.rollback().await.expect("rollback");
            late.is_err()
        })
    }

    /// The check-back answer, as the producer's endpoint gives it.
    pub async fn check_back(&self, markers: &str, id: Uuid) -> Result<Outcome, sqlx::Error> {
        on_pool!(self, pool => producer::check_back(pool, markers, id).await)
    }

    /// The producer's check-back endpoint, as Ferry's helper builds it.
    pub fn check_back_router(&self, markers: &str) -> axum::Router {
        match self {
            Self::Postgres(pool) => producer::check_back_router(pool.clone(), markers),
            Self::Mysql(pool) => producer::check_back_router(pool.clone(), markers),
            Self::Sqlite { pool, .. } => producer::check_back_router(pool.clone(), markers),
        }
    }

    /// A half message's state, who decided it, and its checks.
    pub async fn half_state(&self, outbox: &str, id: Uuid) -> (String, Option<String>, i32) {
        let sql = format!(
            "SELECT state, decided_by, checks FROM {outbox}_half WHERE id = {}",
            self.id_param()
        );
        on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id.to_string()).fetch_one(pool).await)
            .expect("the half message")
    }

    /// Rows of `table`, or only those with `id` when given.
    pub async fn count(&self, table: &str, id: Option<Uuid>) -> i64 {
        let filter = id.map_or(String::new(), |_| {
            format!(" WHERE id = {}", self.id_param())
        });
        let sql = format!("SELECT count(*) FROM {table}{filter}");
        let id = id.map(|id| id.to_string());
        on_pool!(self, pool => {
            let query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
            match &id {
                Some(id) => query.bind(id.clone()),
                None => query,
            }
            .fetch_one(pool)
            .await
        })
        .expect("count")
    }

    pub async fn drop_tables(&self, tables: &[String]) {
        let cascade = match self {
            Self::Postgres(_) => " CASCADE",
            _ => "",
        };
        for table in tables {
            let sql = format!("DROP TABLE IF EXISTS {table}{cascade}");
            let _ = on_pool!(self, pool => sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await.map(drop));
        }
    }
}
