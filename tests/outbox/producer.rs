//! The producer helper writes rows the relay can read, in the caller's transaction.

use ferry::{
    api::{DatabaseEngine, Ordering},
    outbox::producer::{NewEvent, enqueue},
};
use sqlx::Connection;

use super::Table;

fn event(key: &str, n: usize) -> NewEvent {
    NewEvent::json("Order", key, "order.created", &serde_json::json!({"n": n}))
        .expect("json")
        .with_header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_no_outbox_row_and_a_committed_one_does() {
    for engine in [
        DatabaseEngine::Postgres,
        DatabaseEngine::Mysql,
        DatabaseEngine::Sqlite,
    ] {
        let table = Table::new(engine).await;
        match engine {
            DatabaseEngine::Postgres => {
                let mut connection = sqlx::PgConnection::connect(&table.url)
                    .await
                    .expect("connect");
                let mut tx = connection.begin().await.expect("begin");
                enqueue(&mut *tx, &table.name, &event("a", 1))
                    .await
                    .expect("enqueue");
                tx.rollback().await.expect("rollback");
                let mut tx = connection.begin().await.expect("begin");
                enqueue(&mut *tx, &table.name, &event("a", 2))
                    .await
                    .expect("enqueue");
                tx.commit().await.expect("commit");
            }
            DatabaseEngine::Mysql => {
                let mut connection = sqlx::MySqlConnection::connect(&table.url)
                    .await
                    .expect("connect");
                let mut tx = connection.begin().await.expect("begin");
                enqueue(&mut *tx, &table.name, &event("a", 1))
                    .await
                    .expect("enqueue");
                tx.rollback().await.expect("rollback");
                let mut tx = connection.begin().await.expect("begin");
                enqueue(&mut *tx, &table.name, &event("a", 2))
                    .await
                    .expect("enqueue");
                tx.commit().await.expect("commit");
            }
            DatabaseEngine::Sqlite => {
                let pool = ferry::outbox::sqlite::open_pool(&table.url)
                    .await
                    .expect("pool");
                let mut tx = pool.begin().await.expect("begin");
                enqueue(&mut *tx, &table.name, &event("a", 1))
                    .await
                    .expect("enqueue");
                tx.rollback().await.expect("rollback");
                let mut tx = pool.begin().await.expect("begin");
                enqueue(&mut *tx, &table.name, &event("a", 2))
                    .await
                    .expect("enqueue");
                tx.commit().await.expect("commit");
            }
        }
        let store = table.store().await;
        let claim = store.claim(10, Ordering::PerKey).await.expect("claim");
        let events = claim.events();
        assert_eq!(events.len(), 1, "{engine:?}");
        let payload: serde_json::Value =
            serde_json::from_slice(&events[0].payload).expect("payload is JSON");
        assert_eq!(payload["n"], 2, "{engine:?}");
        let headers: serde_json::Value =
            serde_json::from_str(events[0].headers.as_deref().expect("headers"))
                .expect("headers JSON");
        assert_eq!(
            headers["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "{engine:?}"
        );
        uuid::Uuid::parse_str(&events[0].id).expect("id is a UUID");
        claim.abandon().await;
    }
}

#[tokio::test]
async fn postgres_gives_a_later_writer_of_the_same_key_a_later_seq_even_if_it_inserted_first() {
    // Writer 1 inserts for key k and stays open; writer 2's insert for k must wait for writer 1's
    // commit, so its seq (assigned after the lock) is larger: seq order is commit order per key.
    let table = Table::new(DatabaseEngine::Postgres).await;
    let mut first = sqlx::PgConnection::connect(&table.url)
        .await
        .expect("connect");
    let mut first_tx = first.begin().await.expect("begin");
    enqueue(&mut *first_tx, &table.name, &event("k", 1))
        .await
        .expect("first insert");

    let (url, name) = (table.url.clone(), table.name.clone());
    let second = tokio::spawn(async move {
        let mut connection = sqlx::PgConnection::connect(&url).await.expect("connect");
        let mut tx = connection.begin().await.expect("begin");
        enqueue(&mut *tx, &name, &event("k", 2))
            .await
            .expect("second insert");
        tx.commit().await.expect("commit");
    });
    // While writer 1 is open, writer 2 cannot finish: its insert waits on the key lock.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second writer of the same key must wait for the first"
    );
    // Another key is not held up.
    let mut other = sqlx::PgConnection::connect(&table.url)
        .await
        .expect("connect");
    let mut other_tx = other.begin().await.expect("begin");
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        enqueue(&mut *other_tx, &table.name, &event("other", 1)),
    )
    .await
    .expect("another key is not blocked")
    .expect("insert");
    other_tx.commit().await.expect("commit");

    first_tx.commit().await.expect("commit first");
    second.await.expect("second writer finished");

    let store = table.store().await;
    let claim = store.claim(10, Ordering::PerKey).await.expect("claim");
    let numbers: Vec<i64> = claim
        .events()
        .iter()
        .filter(|e| e.aggregate_id == "k")
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&e.payload).expect("json")["n"]
                .as_i64()
                .expect("n")
        })
        .collect();
    assert_eq!(numbers, [1, 2]);
    claim.abandon().await;
}
