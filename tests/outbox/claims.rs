//! Claims: per-key exclusivity between concurrent claims, abandon, finish, failed rows.

use ferry::{
    api::{DatabaseEngine, Ordering, outbox_source::CleanupMode},
    outbox::{
        Completion, OutboxStore,
        producer::{NewEvent, enqueue},
    },
};

use super::Table;

/// Writes one row per (key, n) in its own transaction, in the given order.
async fn write(table: &Table, rows: &[(&str, i64)]) {
    macro_rules! each_row {
        ($pool:expr) => {
            for (key, n) in rows {
                let event = NewEvent::json("Order", key, "order.created", &serde_json::json!({"n": n})).expect("json");
                let mut tx = $pool.begin().await.expect("begin");
                enqueue(&mut *tx, &table.name, &event).await.expect("enqueue");
                tx.commit().await.expect("commit");
            }
        };
    }
    match table.engine {
        DatabaseEngine::Postgres => {
            each_row!(sqlx::PgPool::connect(&table.url).await.expect("pool"))
        }
        DatabaseEngine::Mysql => {
            each_row!(sqlx::MySqlPool::connect(&table.url).await.expect("pool"))
        }
        DatabaseEngine::Sqlite => each_row!(
            ferry::outbox::sqlite::open_pool(&table.url)
                .await
                .expect("pool")
        ),
    }
}

fn labels(claim: &dyn ferry::outbox::Claim) -> Vec<String> {
    claim
        .events()
        .iter()
        .map(|e| {
            format!(
                "{}{}",
                e.aggregate_id,
                serde_json::from_slice::<serde_json::Value>(&e.payload).expect("json")["n"]
            )
        })
        .collect()
}

async fn finish_all(store: &dyn OutboxStore, ordering: Ordering) {
    let claim = store.claim(100, ordering).await.expect("claim");
    let published = claim.events().iter().map(|e| e.seq).collect();
    claim
        .finish(
            &Completion {
                published,
                ..Completion::default()
            },
            CleanupMode::Delete,
        )
        .await
        .expect("finish");
}

#[tokio::test]
async fn two_concurrent_claims_never_hold_rows_of_the_same_key() {
    for engine in [DatabaseEngine::Postgres, DatabaseEngine::Mysql] {
        let table = Table::new(engine).await;
        write(
            &table,
            &[("a", 1), ("a", 2), ("b", 1), ("a", 3), ("c", 1), ("b", 2)],
        )
        .await;
        let store = table.store().await;
        let first = store.claim(2, Ordering::PerKey).await.expect("first claim");
        let second = store
            .claim(10, Ordering::PerKey)
            .await
            .expect("second claim");
        let (one, two) = (labels(first.as_ref()), labels(second.as_ref()));
        // The first claim takes the heads of a and b, then their oldest rows: a1, a2.
        assert_eq!(one, ["a1", "a2"], "{engine:?}");
        // The second may only take keys whose head the first does not hold: c (b's head b1 is
        // locked by the first claim's head scan).
        assert!(
            two.iter().all(|label| !label.starts_with('a')),
            "{engine:?}: {two:?}"
        );
        assert!(two.contains(&"c1".to_owned()), "{engine:?}: {two:?}");
        second.abandon().await;
        first.abandon().await;
    }
}

#[tokio::test]
async fn rows_of_a_key_follow_only_after_the_claim_holding_its_head_finishes() {
    for engine in [DatabaseEngine::Postgres, DatabaseEngine::Mysql] {
        let table = Table::new(engine).await;
        write(&table, &[("a", 1), ("a", 2), ("a", 3)]).await;
        let store = table.store().await;
        let first = store.claim(1, Ordering::PerKey).await.expect("claim");
        assert_eq!(labels(first.as_ref()), ["a1"], "{engine:?}");
        let blocked = store.claim(10, Ordering::PerKey).await.expect("claim");
        assert!(
            blocked.events().is_empty(),
            "{engine:?}: a2 must wait for a1: {:?}",
            labels(blocked.as_ref())
        );
        blocked.abandon().await;
        let published = vec![first.events()[0].seq];
        first
            .finish(
                &Completion {
                    published,
                    ..Completion::default()
                },
                CleanupMode::Delete,
            )
            .await
            .expect("finish");
        let next = store.claim(10, Ordering::PerKey).await.expect("claim");
        assert_eq!(labels(next.as_ref()), ["a2", "a3"], "{engine:?}");
        next.abandon().await;
    }
}

#[tokio::test]
async fn without_ordering_concurrent_claims_split_rows_of_one_key() {
    for engine in [DatabaseEngine::Postgres, DatabaseEngine::Mysql] {
        let table = Table::new(engine).await;
        write(&table, &[("a", 1), ("a", 2), ("a", 3), ("a", 4)]).await;
        let store = table.store().await;
        let first = store.claim(2, Ordering::None).await.expect("claim");
        let second = store.claim(10, Ordering::None).await.expect("claim");
        assert_eq!(labels(first.as_ref()), ["a1", "a2"], "{engine:?}");
        assert_eq!(labels(second.as_ref()), ["a3", "a4"], "{engine:?}");
        second.abandon().await;
        first.abandon().await;
    }
}

#[tokio::test]
async fn an_abandoned_claim_leaves_every_row_pending() {
    for engine in [
        DatabaseEngine::Postgres,
        DatabaseEngine::Mysql,
        DatabaseEngine::Sqlite,
    ] {
        let table = Table::new(engine).await;
        write(&table, &[("a", 1), ("b", 1)]).await;
        let store = table.store().await;
        let claim = store.claim(10, Ordering::PerKey).await.expect("claim");
        assert_eq!(claim.events().len(), 2);
        claim.abandon().await;
        assert_eq!(
            store.pending().await.expect("pending").rows,
            2,
            "{engine:?}"
        );
        let again = store.claim(10, Ordering::PerKey).await.expect("claim");
        assert_eq!(labels(again.as_ref()), ["a1", "b1"], "{engine:?}");
        again.abandon().await;
    }
}

#[tokio::test]
async fn marked_rows_stay_until_purged_and_deleted_rows_are_gone() {
    for engine in [
        DatabaseEngine::Postgres,
        DatabaseEngine::Mysql,
        DatabaseEngine::Sqlite,
    ] {
        let table = Table::new(engine).await;
        write(&table, &[("a", 1), ("a", 2)]).await;
        let store = table.store().await;
        let claim = store.claim(1, Ordering::PerKey).await.expect("claim");
        let published = vec![claim.events()[0].seq];
        claim
            .finish(
                &Completion {
                    published,
                    ..Completion::default()
                },
                CleanupMode::Mark,
            )
            .await
            .expect("finish");
        let stats = store.pending().await.expect("pending");
        assert_eq!(stats.rows, 1, "{engine:?}");
        // Nothing was published before a minute ago; everything was published before a minute from now.
        let purged_none = store
            .purge_published(chrono::Utc::now() - chrono::Duration::minutes(1), 100)
            .await
            .expect("purge");
        assert_eq!(purged_none, 0, "{engine:?}");
        let purged = store
            .purge_published(chrono::Utc::now() + chrono::Duration::minutes(1), 100)
            .await
            .expect("purge");
        assert_eq!(purged, 1, "{engine:?}");
        finish_all(store.as_ref(), Ordering::PerKey).await;
        assert_eq!(
            store.pending().await.expect("pending").rows,
            0,
            "{engine:?}"
        );
    }
}

#[tokio::test]
async fn a_failed_row_is_marked_with_its_reason_and_does_not_hold_back_its_key() {
    for engine in [
        DatabaseEngine::Postgres,
        DatabaseEngine::Mysql,
        DatabaseEngine::Sqlite,
    ] {
        let table = Table::new(engine).await;
        write(&table, &[("a", 1), ("a", 2)]).await;
        let store = table.store().await;
        let claim = store.claim(1, Ordering::PerKey).await.expect("claim");
        let failed = vec![(claim.events()[0].seq, "no route matches".to_owned())];
        claim
            .finish(
                &Completion {
                    failed,
                    ..Completion::default()
                },
                CleanupMode::Delete,
            )
            .await
            .expect("finish");
        let stats = store.pending().await.expect("pending");
        assert_eq!((stats.rows, stats.failed), (1, 1), "{engine:?}");
        let next = store.claim(10, Ordering::PerKey).await.expect("claim");
        assert_eq!(labels(next.as_ref()), ["a2"], "{engine:?}");
        next.abandon().await;
    }
}
