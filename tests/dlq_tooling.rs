//! `ferry dlq` against real dead-letter tables on PostgreSQL, MariaDB and SQLite: filters,
//! grouping, discard, the replay request -> take -> replayed / failed-again cycle with its
//! history, leases that run out, and purge that never deletes a waiting letter.

mod support;

use std::{panic::AssertUnwindSafe, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use futures::FutureExt;
use sqlx::{Connection as _, Executor as _};

use ferry::{
    api::DatabaseEngine,
    config::{DatabaseConfig, SecretSource},
    dlq::{
        DeadLetter, DeadLetterStore,
        discard::{Purged, discard, purge},
        error::DlqError,
        history::{Action, history_table},
        query::{self, Selection},
        record::{Status, StoredLetter},
        replay::{self, ReplayProgress},
        table::TableStore,
    },
};
use support::{TempDir, unique_name};

/// The command line, on SQLite: the commands share the library paths tested here.
#[path = "dlq_tooling/command.rs"]
mod command;

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/ferry_test";
const MYSQL_SERVER: &str = "mysql://root@127.0.0.1:3306";
const MYSQL: &str = "mysql://root@127.0.0.1:3306/ferry_test";
const INVENTORY: &str = "consumer/shop/inventory";
const BILLING: &str = "consumer/shop/billing";

/// A fresh dead-letter table on one engine, dropped when the test is done.
struct Fixture {
    store: TableStore,
    engine: DatabaseEngine,
    url: String,
    table: String,
    _dir: Option<TempDir>,
}

impl Fixture {
    async fn new(engine: DatabaseEngine) -> Self {
        let (url, dir) = match engine {
            DatabaseEngine::Postgres => (POSTGRES.to_owned(), None),
            DatabaseEngine::Mysql => {
                // The shared server may not have the test database yet.
                let mut server = sqlx::MySqlConnection::connect(MYSQL_SERVER)
                    .await
                    .expect("MariaDB on 127.0.0.1:3306");
                server
                    .execute("CREATE DATABASE IF NOT EXISTS ferry_test")
                    .await
                    .expect("create the test database");
                (MYSQL.to_owned(), None)
            }
            DatabaseEngine::Sqlite => {
                let dir = TempDir::new("dlq").expect("temp dir");
                let url = format!("sqlite:{}", dir.path().join("dlq.db").display());
                (url, Some(dir))
            }
        };
        let table = unique_name("dlq");
        let store = TableStore::connect(&DatabaseConfig {
            engine,
            url: SecretSource::Value(url.clone()),
            table: table.clone(),
        })
        .await
        .expect("dead-letter table");
        Self {
            store,
            engine,
            url,
            table,
            _dir: dir,
        }
    }

    /// Another connection to the same table, holding replayed letters for `lease`.
    async fn store_with_lease(&self, lease: Duration) -> TableStore {
        TableStore::connect_existing(self.engine, &self.url, &self.table)
            .await
            .expect("second connection")
            .with_replay_lease(lease)
    }

    async fn drop_tables(&self) {
        let statements = [
            format!("DROP TABLE IF EXISTS {}", self.table),
            format!("DROP TABLE IF EXISTS {}", history_table(&self.table)),
        ];
        for statement in statements {
            let sql = sqlx::AssertSqlSafe(statement);
            match self.engine {
                DatabaseEngine::Postgres => {
                    let mut db = sqlx::PgConnection::connect(&self.url).await.expect("pg");
                    sqlx::raw_sql(sql).execute(&mut db).await.expect("drop");
                }
                DatabaseEngine::Mysql => {
                    let mut db = sqlx::MySqlConnection::connect(&self.url)
                        .await
                        .expect("mysql");
                    sqlx::raw_sql(sql).execute(&mut db).await.expect("drop");
                }
                // The temporary directory goes with the database file.
                DatabaseEngine::Sqlite => {}
            }
        }
    }

    async fn put(&self, letter: &DeadLetter) -> i64 {
        self.store.put(letter).await.expect("put");
        let found = query::find(&self.store, &letter.message_id, Some(&letter.origin))
            .await
            .expect("the letter just stored");
        found[0].seq
    }

    async fn get(&self, seq: i64) -> StoredLetter {
        let mut found = query::find(&self.store, &seq.to_string(), None)
            .await
            .expect("letter");
        found.retain(|letter| letter.seq == seq);
        found.remove(0)
    }

    async fn actions(&self, seq: i64) -> Vec<(Action, String)> {
        query::history(&self.store, seq)
            .await
            .expect("history")
            .into_iter()
            .map(|entry| (entry.action, entry.actor))
            .collect()
    }

    async fn seqs(&self, selection: &Selection) -> Vec<i64> {
        query::list(&self.store, selection)
            .await
            .expect("list")
            .iter()
            .map(|letter| letter.seq)
            .collect()
    }
}

/// Runs `test` against a fresh table on `engine`, dropping the table whether it passes or not.
async fn on(engine: DatabaseEngine, test: impl AsyncFnOnce(&Fixture)) {
    let fixture = Fixture::new(engine).await;
    let outcome = AssertUnwindSafe(test(&fixture)).catch_unwind().await;
    fixture.drop_tables().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One test per engine, named after the behaviour: `<behaviour>::postgres` and so on.
macro_rules! on_every_engine {
    ($($behaviour:ident),* $(,)?) => {$(
        mod $behaviour {
            use ferry::api::DatabaseEngine;

            #[tokio::test]
            async fn postgres() {
                super::on(DatabaseEngine::Postgres, super::$behaviour).await;
            }

            #[tokio::test]
            async fn mariadb() {
                super::on(DatabaseEngine::Mysql, super::$behaviour).await;
            }

            #[tokio::test]
            async fn sqlite() {
                super::on(DatabaseEngine::Sqlite, super::$behaviour).await;
            }
        }
    )*};
}

on_every_engine!(
    filters_select_by_origin_type_fingerprint_time_status_and_id,
    stats_group_letters_that_failed_the_same_way,
    put_records_lineage_and_brings_a_resolved_letter_back_to_waiting,
    discard_requires_a_selection_and_records_who_and_why,
    replay_request_take_and_mark_replayed_settle_with_counts_and_history,
    a_replay_that_fails_again_waits_again_keeping_its_replay_count,
    an_expired_lease_makes_letters_takeable_again,
    consumers_of_one_origin_side_by_side_take_different_letters,
    replay_refuses_letters_of_an_outbox_relay_and_names_them,
    purge_deletes_only_old_resolved_letters_never_waiting_ones,
);

fn base_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-01-10T12:00:00Z")
        .map(|time| time.with_timezone(&Utc))
        .expect("fixed time")
}

fn letter(origin: &str, id: &str, event_type: &str, error: &str, minutes: i64) -> DeadLetter {
    let failed_at = base_time() + TimeDelta::minutes(minutes);
    DeadLetter {
        origin: origin.into(),
        message_id: id.into(),
        event_type: event_type.into(),
        message_key: format!("key-{id}"),
        headers: vec![
            ("ce-id".into(), id.into()),
            ("ce-type".into(), event_type.into()),
            ("x-tenant".into(), "acme ✓".into()),
        ],
        body: format!(r#"{{"order":"{id}","note":"ünïcödé"}}"#).into_bytes(),
        attempts: 5,
        first_failed_at: failed_at - TimeDelta::minutes(1),
        last_failed_at: failed_at,
        last_error: error.into(),
        error_category: if error.starts_with("HTTP") {
            "http_status".into()
        } else {
            "timeout".into()
        },
        http_status: error
            .strip_prefix("HTTP ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok()),
        fingerprint: String::new(),
    }
    .finish()
}

fn select(edit: impl FnOnce(&mut Selection)) -> Selection {
    let mut selection = Selection::waiting();
    edit(&mut selection);
    selection
}

/// Eight letters over two consumers, spread over 70 minutes, by seq: a1 a2 a3 b1 b2 c1 c2 d1.
async fn fill(f: &Fixture) -> Vec<i64> {
    let letters = [
        letter(
            INVENTORY,
            "a1",
            "order.created",
            "HTTP 500: order \"o-1\" failed",
            0,
        ),
        letter(
            INVENTORY,
            "a2",
            "order.created",
            "HTTP 500: order \"o-2\" failed",
            10,
        ),
        letter(
            INVENTORY,
            "a3",
            "order.cancelled",
            "timed out after 30s",
            20,
        ),
        letter(
            BILLING,
            "b1",
            "order.created",
            "HTTP 422: bad \"total\"",
            30,
        ),
        letter(BILLING, "b2", "invoice.sent", "HTTP 422: bad \"iban\"", 40),
        letter(BILLING, "c1", "order_shipped", "HTTP 409: conflict", 50),
        letter(BILLING, "c2", "orderXshipped", "HTTP 409: conflict", 60),
        letter(BILLING, "d1", "Order.created", "HTTP 409: conflict", 70),
    ];
    let mut seqs = Vec::new();
    for letter in &letters {
        seqs.push(f.put(letter).await);
    }
    seqs
}

async fn filters_select_by_origin_type_fingerprint_time_status_and_id(f: &Fixture) {
    let s = fill(f).await;
    let (a1, a2, a3, b1, b2, c1, c2, d1) = (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);
    assert_eq!(f.seqs(&Selection::waiting()).await, s);
    assert_eq!(
        f.seqs(&select(|s| s.origin = Some(BILLING.into()))).await,
        [b1, b2, c1, c2, d1]
    );
    assert_eq!(
        f.seqs(&select(|s| s.origin = Some("consumer/shop/inv*".into())))
            .await,
        [a1, a2, a3]
    );
    // Globs match case-sensitively on every engine, and `_` is not a wildcard.
    assert_eq!(
        f.seqs(&select(|s| s.event_type = Some("order.*".into())))
            .await,
        [a1, a2, a3, b1]
    );
    assert_eq!(
        f.seqs(&select(|s| s.event_type = Some("order_*".into())))
            .await,
        [c1]
    );
    assert_eq!(
        f.seqs(&select(|s| s.event_type = Some("*.created".into())))
            .await,
        [a1, a2, b1, d1]
    );
    assert_eq!(
        f.seqs(&select(|s| s.event_type = Some("order.created".into())))
            .await,
        [a1, a2, b1]
    );
    let fingerprint = f.get(a1).await.letter.fingerprint;
    assert_eq!(
        f.seqs(&select(|s| s.fingerprint = Some(fingerprint))).await,
        [a1, a2],
        "letters failing the same way share a fingerprint"
    );
    assert_eq!(
        f.seqs(&select(|s| {
            s.since = Some(base_time() + TimeDelta::minutes(10));
            s.until = Some(base_time() + TimeDelta::minutes(30));
        }))
        .await,
        [a2, a3],
        "since is inclusive, until exclusive"
    );
    assert_eq!(
        f.seqs(&select(|s| s.message_ids = vec!["b2".into(), "a1".into()]))
            .await,
        [a1, b2]
    );
    assert_eq!(f.seqs(&select(|s| s.seqs = vec![c2, a3])).await, [a3, c2]);
    let first_two = select(|s| s.limit = Some(2));
    assert_eq!(f.seqs(&first_two).await, [a1, a2]);
    assert_eq!(query::count(&f.store, &first_two).await.expect("count"), 8);

    let discarded = discard(&f.store, &select(|s| s.seqs = vec![b2]), "alice", None)
        .await
        .expect("discard");
    assert_eq!(discarded, 1);
    assert!(!f.seqs(&Selection::waiting()).await.contains(&b2));
    assert_eq!(
        f.seqs(&select(|s| s.statuses = vec![Status::Discarded]))
            .await,
        [b2]
    );
    assert_eq!(f.seqs(&select(|s| s.statuses = Vec::new())).await, s);

    let unknown = query::find(&f.store, "no-such-id", None).await;
    assert!(
        matches!(&unknown, Err(DlqError::NotFound(id, _)) if id == "no-such-id"),
        "{unknown:?}"
    );
}

async fn stats_group_letters_that_failed_the_same_way(f: &Fixture) {
    let s = fill(f).await;
    let groups = query::stats(&f.store, &Selection::waiting())
        .await
        .expect("stats");
    assert_eq!(
        groups.iter().map(|group| group.letters).sum::<i64>(),
        8,
        "{groups:#?}"
    );
    // c1, c2 and d1 differ in event type, so only a1 and a2 share a group.
    assert_eq!(groups.len(), 7, "{groups:#?}");
    let top = &groups[0];
    assert_eq!(
        (top.letters, top.origin.as_str(), top.event_type.as_str()),
        (2, INVENTORY, "order.created")
    );
    assert_eq!(top.error_category, "http_status");
    assert_eq!(top.first_failed_at, base_time() - TimeDelta::minutes(1));
    assert_eq!(top.last_failed_at, base_time() + TimeDelta::minutes(10));
    assert_eq!(top.example_seq, s[1]);
    assert!(top.example_error.starts_with("HTTP 500: order"), "{top:?}");

    let billing = query::stats(&f.store, &select(|s| s.origin = Some(BILLING.into())))
        .await
        .expect("stats");
    assert_eq!(billing.len(), 5);
    assert!(billing.iter().all(|group| group.origin == BILLING));
    let few = query::stats(&f.store, &select(|s| s.limit = Some(2)))
        .await
        .expect("stats");
    assert_eq!(few.len(), 2, "the limit bounds the number of groups");
}

async fn put_records_lineage_and_brings_a_resolved_letter_back_to_waiting(f: &Fixture) {
    let first = letter(INVENTORY, "m1", "order.created", "HTTP 500: boom", 0);
    let seq = f.put(&first).await;
    assert_eq!(
        f.actions(seq).await,
        [(Action::DeadLettered, INVENTORY.into())]
    );

    // Stored again while waiting (a retry after a crash): updated, nothing new in the history.
    let mut again = letter(INVENTORY, "m1", "order.created", "HTTP 500: boom", 5);
    again.attempts = 7;
    assert_eq!(
        f.put(&again).await,
        seq,
        "one letter per origin and message id"
    );
    let stored = f.get(seq).await;
    assert_eq!(
        (stored.letter.attempts, stored.letter.last_failed_at),
        (7, again.last_failed_at)
    );
    assert_eq!(stored.letter.first_failed_at, first.first_failed_at);
    assert_eq!(stored.letter.headers, first.headers);
    assert_eq!(stored.letter.body, first.body);
    assert_eq!(f.actions(seq).await.len(), 1);

    discard(
        &f.store,
        &select(|s| s.seqs = vec![seq]),
        "alice",
        Some("known bug"),
    )
    .await
    .expect("discard");
    let later = letter(INVENTORY, "m1", "order.created", "HTTP 503: down", 60);
    f.put(&later).await;
    let stored = f.get(seq).await;
    assert_eq!(stored.status, Status::Waiting);
    assert_eq!(
        (stored.resolved_at, stored.resolved_by, stored.note),
        (None, None, None)
    );
    assert_eq!(stored.letter.last_error, "HTTP 503: down");
    let history = query::history(&f.store, seq).await.expect("history");
    let actions: Vec<Action> = history.iter().map(|entry| entry.action).collect();
    assert_eq!(
        actions,
        [
            Action::DeadLettered,
            Action::Discarded,
            Action::DeadLettered
        ]
    );
    assert_eq!(
        history[2].note.as_deref(),
        Some("again, after it was discarded: HTTP 503: down")
    );
}

async fn discard_requires_a_selection_and_records_who_and_why(f: &Fixture) {
    let s = fill(f).await;
    let refused = discard(&f.store, &Selection::waiting(), "alice", None).await;
    assert!(
        matches!(refused, Err(DlqError::NoSelection { action: "discard" })),
        "{refused:?}"
    );
    assert_eq!(
        f.seqs(&Selection::waiting()).await.len(),
        8,
        "nothing changed"
    );

    let billing = select(|s| s.origin = Some(BILLING.into()));
    let count = discard(
        &f.store,
        &billing,
        "alice",
        Some("billing bug #12, fixed by hand"),
    )
    .await
    .expect("discard");
    assert_eq!(count, 5);
    let b1 = f.get(s[3]).await;
    assert_eq!(b1.status, Status::Discarded);
    assert_eq!(b1.resolved_by.as_deref(), Some("alice"));
    assert_eq!(b1.note.as_deref(), Some("billing bug #12, fixed by hand"));
    assert!(b1.resolved_at.is_some());
    let history = query::history(&f.store, s[3]).await.expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(
        (
            history[1].action,
            history[1].actor.as_str(),
            history[1].note.as_deref()
        ),
        (
            Action::Discarded,
            "alice",
            Some("billing bug #12, fixed by hand")
        )
    );

    let again = discard(&f.store, &billing, "alice", None)
        .await
        .expect("again");
    assert_eq!(
        again, 0,
        "already discarded letters are not discarded twice"
    );
    let everything = Selection {
        all: true,
        ..Selection::waiting()
    };
    assert_eq!(
        discard(&f.store, &everything, "bob", None)
            .await
            .expect("all"),
        3
    );
    assert!(f.seqs(&Selection::waiting()).await.is_empty());
    let rows = query::count(&f.store, &select(|s| s.statuses = Vec::new()))
        .await
        .expect("count");
    assert_eq!(rows, 8, "discarding deletes nothing");
}

async fn replay_request_take_and_mark_replayed_settle_with_counts_and_history(f: &Fixture) {
    let s = fill(f).await;
    let (a1, a2, a3) = (s[0], s[1], s[2]);
    let inventory = select(|s| s.origin = Some(INVENTORY.into()));
    let request = replay::request(&f.store, &inventory, "bob", Some("service fixed"))
        .await
        .expect("request");
    assert_eq!(request.letters, 3);
    let requested = f.get(a1).await;
    assert_eq!(requested.status, Status::ReplayRequested);
    assert_eq!(requested.requested_by.as_deref(), Some("bob"));
    assert_eq!(
        requested.replay_request.as_deref(),
        Some(request.id.as_str())
    );

    let other = f
        .store
        .take_replay_requests(BILLING, 10)
        .await
        .expect("take");
    assert!(other.is_empty(), "another origin's consumer takes nothing");

    let consumer = async {
        let first = f
            .store
            .take_replay_requests(INVENTORY, 2)
            .await
            .expect("take");
        let rest = f
            .store
            .take_replay_requests(INVENTORY, 10)
            .await
            .expect("take");
        let firsts: Vec<i64> = first.iter().map(|letter| letter.seq).collect();
        let rests: Vec<i64> = rest.iter().map(|letter| letter.seq).collect();
        assert_eq!(
            (firsts, rests),
            (vec![a1, a2], vec![a3]),
            "oldest first, each once"
        );
        assert!(
            first
                .iter()
                .all(|letter| letter.status == Status::Replaying)
        );
        assert_eq!(first[0].letter.body, f.get(a1).await.letter.body);
        assert!(
            f.store
                .take_replay_requests(INVENTORY, 10)
                .await
                .expect("take")
                .is_empty()
        );
        for seq in [a1, a2, a3] {
            assert!(f.store.mark_replayed(seq).await.expect("mark"));
        }
        assert!(
            !f.store.mark_replayed(a1).await.expect("mark again"),
            "a letter is marked replayed once"
        );
    };
    let watched = async {
        replay::watch(
            &f.store,
            &request.id,
            Duration::from_millis(50),
            Some(Duration::from_secs(20)),
            |_| {},
        )
        .await
        .expect("watch")
    };
    let ((), progress) = tokio::join!(consumer, watched);
    assert_eq!(
        progress,
        ReplayProgress {
            replayed: 3,
            ..ReplayProgress::default()
        }
    );
    assert!(progress.all_replayed());
    let replayed = f.get(a1).await;
    assert_eq!(replayed.status, Status::Replayed);
    assert_eq!(replayed.replay_count, 1);
    assert_eq!(replayed.resolved_by.as_deref(), Some("bob"));
    assert_eq!(replayed.lease_until, None);
    assert_eq!(
        f.actions(a1).await,
        [
            (Action::DeadLettered, INVENTORY.to_owned()),
            (Action::ReplayRequested, "bob".to_owned()),
            (Action::Replaying, INVENTORY.to_owned()),
            (Action::Replayed, INVENTORY.to_owned()),
        ]
    );
    assert_eq!(
        f.seqs(&Selection::waiting()).await.len(),
        5,
        "the other letters still wait"
    );
}

async fn a_replay_that_fails_again_waits_again_keeping_its_replay_count(f: &Fixture) {
    let original = letter(INVENTORY, "x1", "order.created", "HTTP 500: boom", 0);
    let seq = f.put(&original).await;
    let only = select(|s| s.seqs = vec![seq]);
    // A first replay succeeds...
    replay::request(&f.store, &only, "bob", None)
        .await
        .expect("request");
    f.store
        .take_replay_requests(INVENTORY, 10)
        .await
        .expect("take");
    f.store.mark_replayed(seq).await.expect("mark");
    // ...the message fails later on, and a second replay fails again.
    let later = letter(INVENTORY, "x1", "order.created", "HTTP 500: boom", 30);
    f.put(&later).await;
    let request = replay::request(&f.store, &only, "carol", None)
        .await
        .expect("request");
    let taken = f
        .store
        .take_replay_requests(INVENTORY, 10)
        .await
        .expect("take");
    assert_eq!(taken.len(), 1);
    let mut failure = letter(
        INVENTORY,
        "x1",
        "order.created",
        "HTTP 502: bad gateway",
        60,
    );
    failure.attempts = 1;
    f.store.put(&failure).await.expect("put");

    let stored = f.get(seq).await;
    assert_eq!(stored.status, Status::Waiting);
    assert_eq!(stored.replay_count, 1, "put keeps the replay count");
    assert_eq!(stored.letter.last_error, "HTTP 502: bad gateway");
    assert_eq!(
        stored.requested_by.as_deref(),
        Some("carol"),
        "lineage kept"
    );
    assert_eq!(stored.lease_until, None);
    assert_eq!(
        replay::progress(&f.store, &request.id)
            .await
            .expect("progress"),
        ReplayProgress {
            failed_again: 1,
            ..ReplayProgress::default()
        }
    );
    let failed = replay::failed_again(&f.store, &request.id, 10)
        .await
        .expect("failed");
    assert_eq!(failed.iter().map(|l| l.seq).collect::<Vec<_>>(), [seq]);
    let history = query::history(&f.store, seq).await.expect("history");
    let actions: Vec<Action> = history.iter().map(|entry| entry.action).collect();
    assert_eq!(
        actions,
        [
            Action::DeadLettered,
            Action::ReplayRequested,
            Action::Replaying,
            Action::Replayed,
            Action::DeadLettered,
            Action::ReplayRequested,
            Action::Replaying,
            Action::FailedAgain,
        ]
    );
    assert_eq!(history[7].note.as_deref(), Some("HTTP 502: bad gateway"));
    assert!(
        !f.store.mark_replayed(seq).await.expect("mark"),
        "a letter that failed again is not marked replayed"
    );
}

async fn an_expired_lease_makes_letters_takeable_again(f: &Fixture) {
    let seq = f
        .put(&letter(INVENTORY, "l1", "order.created", "HTTP 500", 0))
        .await;
    replay::request(&f.store, &select(|s| s.seqs = vec![seq]), "bob", None)
        .await
        .expect("request");
    let crashing = f.store_with_lease(Duration::from_secs(3)).await;
    let taken = crashing
        .take_replay_requests(INVENTORY, 10)
        .await
        .expect("take");
    assert_eq!(taken.len(), 1);
    let lease_until = taken[0].lease_until.expect("a lease");
    let held = f
        .store
        .take_replay_requests(INVENTORY, 10)
        .await
        .expect("take");
    if Utc::now() < lease_until {
        assert!(held.is_empty(), "a held letter is not taken twice");
    }
    // The first consumer "crashed": once its lease runs out another one takes the letter.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let retaken = loop {
        let taken = f
            .store
            .take_replay_requests(INVENTORY, 10)
            .await
            .expect("take");
        if !taken.is_empty() {
            break taken;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never takeable again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(retaken[0].seq, seq);
    assert!(Utc::now() >= lease_until);
    assert!(f.store.mark_replayed(seq).await.expect("mark"));
    assert!(
        !crashing.mark_replayed(seq).await.expect("late mark"),
        "the late first consumer cannot mark it again"
    );
    let history = query::history(&f.store, seq).await.expect("history");
    let replaying: Vec<_> = history
        .iter()
        .filter(|entry| entry.action == Action::Replaying)
        .collect();
    assert_eq!(replaying.len(), 2);
    assert!(
        replaying[1]
            .note
            .as_deref()
            .is_some_and(|note| note.starts_with("the previous lease ran out")),
        "{replaying:?}"
    );
    assert_eq!(f.get(seq).await.replay_count, 1);
}

async fn consumers_of_one_origin_side_by_side_take_different_letters(f: &Fixture) {
    let mut seqs = Vec::new();
    for number in 0..12 {
        let id = format!("s{number}");
        seqs.push(
            f.put(&letter(INVENTORY, &id, "order.created", "HTTP 500", number))
                .await,
        );
    }
    let request = replay::request(
        &f.store,
        &select(|s| s.origin = Some(INVENTORY.into())),
        "bob",
        None,
    )
    .await
    .expect("request");
    assert_eq!(request.letters, 12);
    let (second, third) = (
        f.store_with_lease(Duration::from_secs(600)).await,
        f.store_with_lease(Duration::from_secs(600)).await,
    );
    // Side by side, each takes different letters; a taker may find every letter held by
    // another for a moment (MySQL locks all the rows it sorts) and takes them on a later round.
    let mut taken = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while taken.len() < seqs.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "taken so far: {taken:?}"
        );
        let (a, b, c) = tokio::join!(
            f.store.take_replay_requests(INVENTORY, 5),
            second.take_replay_requests(INVENTORY, 5),
            third.take_replay_requests(INVENTORY, 5),
        );
        let before = taken.len();
        for letters in [a, b, c] {
            taken.extend(letters.expect("take").iter().map(|letter| letter.seq));
        }
        if taken.len() == before {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    taken.sort_unstable();
    assert_eq!(taken, seqs, "every letter taken once");
    assert_eq!(
        replay::progress(&f.store, &request.id)
            .await
            .expect("progress"),
        ReplayProgress {
            replaying: 12,
            ..ReplayProgress::default()
        }
    );
}

async fn replay_refuses_letters_of_an_outbox_relay_and_names_them(f: &Fixture) {
    let relay = f
        .put(&letter(
            "outboxsource/shop/orders",
            "r1",
            "order.created",
            "unroutable",
            0,
        ))
        .await;
    let consumer = f
        .put(&letter(INVENTORY, "k1", "order.created", "HTTP 500", 1))
        .await;
    let everything = Selection {
        all: true,
        ..Selection::waiting()
    };
    let refused = replay::request(&f.store, &everything, "bob", None).await;
    match &refused {
        Err(error @ DlqError::NotReplayable(origins)) => {
            assert_eq!(origins, &[("outboxsource/shop/orders".to_owned(), 1)]);
            let message = error.to_string();
            assert!(message.contains("outboxsource/shop/orders: 1"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    for seq in [relay, consumer] {
        assert_eq!(f.get(seq).await.status, Status::Waiting, "nothing changed");
        assert_eq!(f.actions(seq).await.len(), 1);
    }
    let unselected = replay::request(&f.store, &Selection::waiting(), "bob", None).await;
    assert!(matches!(
        unselected,
        Err(DlqError::NoSelection { action: "replay" })
    ));
    let narrowed = select(|s| s.origin = Some("consumer/*".into()));
    let request = replay::request(&f.store, &narrowed, "bob", None)
        .await
        .expect("consumer letters replay");
    assert_eq!(request.letters, 1);
}

async fn purge_deletes_only_old_resolved_letters_never_waiting_ones(f: &Fixture) {
    let waiting = f
        .put(&letter(INVENTORY, "p1", "order.created", "HTTP 500", 0))
        .await;
    let replayed = f
        .put(&letter(INVENTORY, "p2", "order.created", "HTTP 500", 1))
        .await;
    let discarded = f
        .put(&letter(INVENTORY, "p3", "order.created", "HTTP 500", 2))
        .await;
    replay::request(&f.store, &select(|s| s.seqs = vec![replayed]), "bob", None)
        .await
        .expect("request");
    f.store
        .take_replay_requests(INVENTORY, 10)
        .await
        .expect("take");
    f.store.mark_replayed(replayed).await.expect("mark");
    discard(&f.store, &select(|s| s.seqs = vec![discarded]), "bob", None)
        .await
        .expect("discard");

    let an_hour_ago = Utc::now() - TimeDelta::hours(1);
    let nothing = purge(&f.store, &Selection::default(), an_hour_ago, "ops")
        .await
        .expect("purge");
    assert_eq!(nothing, Purged::default(), "resolved just now: too young");

    let soon = Utc::now() + TimeDelta::minutes(1);
    let asking_for_waiting = select(|s| s.statuses = vec![Status::Waiting]);
    let refused = purge(&f.store, &asking_for_waiting, soon, "ops")
        .await
        .expect("purge");
    assert_eq!(
        refused,
        Purged::default(),
        "waiting letters are never purged"
    );

    let purged = purge(&f.store, &Selection::default(), soon, "ops")
        .await
        .expect("purge");
    assert_eq!(
        purged,
        Purged {
            replayed: 1,
            discarded: 1
        }
    );
    let left = f.seqs(&select(|s| s.statuses = Vec::new())).await;
    assert_eq!(left, [waiting]);
    let history = query::history(&f.store, discarded).await.expect("history");
    let last = history.last().expect("history stays");
    assert_eq!(
        (last.action, last.actor.as_str(), last.note.as_deref()),
        (Action::Purged, "ops", Some("it had been discarded"))
    );
}
