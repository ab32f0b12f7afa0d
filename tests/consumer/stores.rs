//! The idempotency stores against the real databases and Redis, and the inbox helper for
//! receiving services.

use std::time::Duration;

use ferry::{
    api::{DatabaseEngine, Duration as ApiDuration},
    config::{DatabaseConfig, IdempotencyConfig, SecretSource},
    consumer::{
        idempotency::{self, Claim},
        inbox::{Inbox, inbox_ddl},
    },
};
use sqlx::Connection;

use crate::{
    harness::{POSTGRES, REDIS},
    support::{TempDir, unique_name},
};

const MYSQL: &str = "mysql://root@127.0.0.1:3306/ferry_test";

fn table_config(engine: DatabaseEngine, url: &str, table: &str) -> IdempotencyConfig {
    IdempotencyConfig::Database {
        database: DatabaseConfig {
            engine,
            url: SecretSource::Value(url.to_owned()),
            table: table.to_owned(),
        },
        window: ApiDuration::from_secs(3600),
    }
}

/// Claim, complete, release and lease expiry, as the consumer relies on them.
async fn check_store(config: IdempotencyConfig) {
    let consumer = unique_name("consumer/test");
    let lease = Duration::from_millis(800);
    let store = idempotency::open(&config, &consumer, lease)
        .await
        .expect("open the store");
    let other = idempotency::open(&config, &format!("{consumer}-other"), lease)
        .await
        .expect("open a second consumer's store");
    let ids = |names: &[&str]| {
        names
            .iter()
            .map(|name| (*name).to_owned())
            .collect::<Vec<_>>()
    };

    assert_eq!(
        store.claim(&ids(&["a", "b", "a"])).await.unwrap(),
        [Claim::Owned, Claim::Owned, Claim::Busy],
        "a repeated id in one batch is owned once"
    );
    assert_eq!(store.claim(&ids(&["a"])).await.unwrap(), [Claim::Busy]);
    assert_eq!(
        other.claim(&ids(&["a"])).await.unwrap(),
        [Claim::Owned],
        "consumers do not share records"
    );
    store.complete(&ids(&["a"])).await.unwrap();
    assert_eq!(store.claim(&ids(&["a"])).await.unwrap(), [Claim::Done]);
    store.release(&ids(&["b"])).await.unwrap();
    assert_eq!(
        store.claim(&ids(&["b"])).await.unwrap(),
        [Claim::Owned],
        "released"
    );
    store.release(&ids(&["a"])).await.unwrap();
    assert_eq!(
        store.claim(&ids(&["a"])).await.unwrap(),
        [Claim::Done],
        "a release never removes a delivered record"
    );
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    assert_eq!(
        store.claim(&ids(&["b"])).await.unwrap(),
        [Claim::Owned],
        "an expired claim can be taken again"
    );
}

#[tokio::test]
async fn postgres_idempotency_table() {
    let table = unique_name("processed");
    check_store(table_config(DatabaseEngine::Postgres, POSTGRES, &table)).await;
    drop_table(POSTGRES, &table).await;
}

#[tokio::test]
async fn mysql_idempotency_table() {
    let table = unique_name("processed");
    check_store(table_config(DatabaseEngine::Mysql, MYSQL, &table)).await;
    let mut connection = sqlx::MySqlConnection::connect(MYSQL).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&mut connection)
        .await
        .unwrap();
}

#[tokio::test]
async fn sqlite_idempotency_table() {
    let dir = TempDir::new("idempotency").unwrap();
    let url = format!("sqlite://{}/processed.db", dir.path().display());
    check_store(table_config(
        DatabaseEngine::Sqlite,
        &url,
        "ferry_processed",
    ))
    .await;
}

#[tokio::test]
async fn redis_idempotency_keys() {
    let prefix = format!("{}:", unique_name("ferry-test-processed"));
    check_store(IdempotencyConfig::Redis {
        url: SecretSource::Value(REDIS.to_owned()),
        key_prefix: prefix.clone(),
        window: ApiDuration::from_secs(3600),
    })
    .await;
    let client = redis::Client::open(REDIS).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
}

/// The inbox helper: the first record in a transaction applies, a repeat does not, and a
/// repeat racing an uncommitted first waits for it and then applies nothing.
#[tokio::test]
async fn inbox_records_each_message_once_per_transaction() {
    let table = unique_name("inbox");
    let mut setup = sqlx::PgConnection::connect(POSTGRES).await.unwrap();
    for statement in inbox_ddl(DatabaseEngine::Postgres, &table) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut setup)
            .await
            .unwrap();
    }
    let inbox = Inbox::new(&table, "inventory").unwrap();
    let mut first = sqlx::PgConnection::connect(POSTGRES).await.unwrap();
    let mut second = sqlx::PgConnection::connect(POSTGRES).await.unwrap();

    let mut tx = first.begin().await.unwrap();
    assert!(inbox.record(&mut *tx, "m-1").await.unwrap());
    // The second transaction blocks on the first's uncommitted row.
    let racing = {
        let inbox = inbox.clone();
        tokio::spawn(async move {
            let mut tx = second.begin().await.unwrap();
            let applied = inbox.record(&mut *tx, "m-1").await.unwrap();
            tx.commit().await.unwrap();
            applied
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !racing.is_finished(),
        "the repeat must wait for the first transaction"
    );
    tx.commit().await.unwrap();
    assert!(!racing.await.unwrap(), "the repeat applies nothing");

    let mut tx = first.begin().await.unwrap();
    assert!(inbox.record(&mut *tx, "m-2").await.unwrap());
    tx.rollback().await.unwrap();
    let mut tx = first.begin().await.unwrap();
    assert!(
        inbox.record(&mut *tx, "m-2").await.unwrap(),
        "a rolled-back record does not count"
    );
    tx.commit().await.unwrap();
    assert!(Inbox::new("bad name;", "x").is_err());
    drop_table(POSTGRES, &table).await;
}

async fn drop_table(url: &str, table: &str) {
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(&mut connection)
        .await
        .unwrap();
}
