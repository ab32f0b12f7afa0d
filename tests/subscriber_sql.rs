//! The SQL queue subscriber, on the shared PostgreSQL (database `ferry_test`, a schema of the
//! test's own, dropped afterwards) and on SQLite (a file in a temp dir of the test's own):
//! messages published with Ferry's `SqlPublisher`, read back by consumer groups.

mod support;

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use ferry::{
    broker::{
        BrokerError, Publisher,
        sql::{Engine, SqlPublisher, encode_headers, subscriber::SqlSubscriber},
        subscriber::{Delivery, Subscriber, SubscriptionConfig, subscribe},
    },
    config::{SecretSource, SqlTarget, TopicConfig, TopicTarget},
    message::Envelope,
};
use sqlx::{AssertSqlSafe, Connection, PgConnection, SqliteConnection};
use support::{TempDir, sample_envelopes, unique_name};

const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/ferry_test";
const QUEUE: &str = "orders";
/// How long a test waits for something that should happen within a second or two.
const PATIENCE: Duration = Duration::from_secs(20);
/// A lease long enough that it never expires during a test that does not mean it to.
const LONG_LEASE: Duration = Duration::from_secs(60);

/// A queue table of the test's own, removed when the test ends (even when it fails).
struct Fixture {
    engine: Engine,
    url: String,
    table: String,
    _schema: Option<Schema>,
    _dir: Option<TempDir>,
}

/// A PostgreSQL schema dropped with everything in it (the queue and state tables).
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        // Drop cannot await, and may run inside the test's runtime: a thread with a runtime of
        // its own does the cleanup. Best effort.
        let statement = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0);
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut connection = PgConnection::connect(POSTGRES_URL).await?;
                sqlx::query(AssertSqlSafe(statement))
                    .execute(&mut connection)
                    .await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        });
        let _ = cleanup.join();
    }
}

impl Fixture {
    fn postgres() -> Self {
        let schema = unique_name("ferry_s");
        Self {
            engine: Engine::Postgres,
            url: POSTGRES_URL.to_owned(),
            table: format!("{schema}.queue"),
            _schema: Some(Schema(schema)),
            _dir: None,
        }
    }

    fn sqlite() -> Self {
        let dir = TempDir::new("sqlite_sub").expect("temp dir");
        Self {
            engine: Engine::Sqlite,
            url: format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("queue.db").display()
            ),
            table: "ferry_queue".to_owned(),
            _schema: None,
            _dir: Some(dir),
        }
    }

    fn target(&self) -> SqlTarget {
        SqlTarget {
            table: self.table.clone(),
            queue: QUEUE.to_owned(),
        }
    }

    async fn publish(&self, messages: &[Envelope]) {
        let publisher = SqlPublisher::connect(QUEUE, &self.url, &self.target(), true)
            .await
            .expect("publisher connects");
        publisher.publish(messages).await.expect("published");
        publisher.close().await;
    }

    async fn try_subscribe(
        &self,
        group: &str,
        member: &str,
        ack_timeout: Duration,
        provision: bool,
    ) -> Result<SqlSubscriber, BrokerError> {
        let subscription = SubscriptionConfig {
            group: group.to_owned(),
            member: member.to_owned(),
            prefetch: 100,
            ack_timeout,
            provision,
            single_active: false,
        };
        SqlSubscriber::connect(QUEUE, &self.url, &self.target(), &subscription).await
    }

    async fn subscribe(&self, group: &str, member: &str, ack_timeout: Duration) -> SqlSubscriber {
        self.try_subscribe(group, member, ack_timeout, true)
            .await
            .expect("subscriber connects")
    }

    /// One number from the database, on a connection of its own (`$1` is `name`).
    async fn number(&self, sql: String, name: &str) -> i64 {
        match self.engine {
            Engine::Postgres => {
                let mut connection = PgConnection::connect(&self.url).await.expect("connects");
                let query = sqlx::query_scalar(AssertSqlSafe(sql)).bind(name);
                query.fetch_one(&mut connection).await.expect("select")
            }
            Engine::Sqlite => {
                let mut connection = SqliteConnection::connect(&self.url)
                    .await
                    .expect("connects");
                let query = sqlx::query_scalar(AssertSqlSafe(sql)).bind(name);
                query.fetch_one(&mut connection).await.expect("select")
            }
        }
    }

    /// The group's `done_through` and how many delivery rows it keeps.
    async fn group_state(&self, group: &str) -> (i64, i64) {
        let done_through = format!(
            "SELECT done_through FROM {}_groups WHERE group_name = $1",
            self.table
        );
        let rows = format!(
            "SELECT count(*) FROM {}_deliveries WHERE group_name = $1",
            self.table
        );
        (
            self.number(done_through, group).await,
            self.number(rows, group).await,
        )
    }

    /// Inserts a row the way a foreign writer might, bypassing Ferry's publisher.
    async fn insert_raw(&self, id: &str, key: &str, headers: &str, body: &[u8]) {
        let sql = format!(
            "INSERT INTO {} (queue, id, message_key, headers, body) VALUES ($1, $2, $3, $4, $5)",
            self.table
        );
        // The same statement for two database types.
        macro_rules! insert {
            ($connection:expr) => {
                sqlx::query(AssertSqlSafe(sql))
                    .bind(QUEUE)
                    .bind(id)
                    .bind(key)
                    .bind(headers)
                    .bind(body)
                    .execute($connection)
                    .await
                    .expect("insert")
            };
        }
        match self.engine {
            Engine::Postgres => {
                let mut connection = PgConnection::connect(&self.url).await.expect("connects");
                insert!(&mut connection);
            }
            Engine::Sqlite => {
                let mut connection = SqliteConnection::connect(&self.url)
                    .await
                    .expect("connects");
                insert!(&mut connection);
            }
        }
    }

    async fn highest_seq(&self) -> i64 {
        let sql = format!("SELECT max(seq) FROM {} WHERE queue = $1", self.table);
        self.number(sql, QUEUE).await
    }
}

/// Receives until `count` messages came, `max` at a time; fails after `PATIENCE`.
async fn receive_count(subscriber: &dyn Subscriber, count: usize, max: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + PATIENCE;
    let mut received = Vec::new();
    while received.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} messages arrived",
            received.len()
        );
        let batch = subscriber
            .receive(max.min(count - received.len()), Duration::from_millis(500))
            .await
            .expect("receive");
        received.extend(batch);
    }
    received
}

/// Twenty receives of up to 3 messages, holding all of them.
async fn receive_turns(subscriber: &dyn Subscriber) -> Vec<Delivery> {
    let mut received = Vec::new();
    for _ in 0..20 {
        let batch = subscriber
            .receive(3, Duration::from_millis(100))
            .await
            .expect("receive");
        received.extend(batch);
    }
    received
}

async fn ack_all(subscriber: &dyn Subscriber, deliveries: &[Delivery]) {
    for delivery in deliveries {
        subscriber.ack(delivery).await.expect("ack");
    }
}

fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|delivery| delivery.id.clone())
        .collect()
}

fn message_ids(messages: &[Envelope]) -> Vec<String> {
    messages.iter().map(|message| message.id.clone()).collect()
}

async fn every_message_is_delivered_once_and_acking_all_leaves_no_lag(fixture: Fixture) {
    let messages = sample_envelopes(50, 5);
    fixture.publish(&messages).await;
    let subscriber = fixture.subscribe("ferry.test.all", "m1", LONG_LEASE).await;
    let received = receive_count(&subscriber, 50, 16).await;
    assert_eq!(ids(&received), message_ids(&messages), "publish order");
    for (delivery, message) in received.iter().zip(&messages) {
        assert_eq!(delivery.headers, message.headers, "headers in order");
        assert_eq!(delivery.body, message.body.to_vec());
        assert_eq!(delivery.key, message.key, "ordering key");
        assert_eq!(delivery.event_type, "order.created");
        assert_eq!((delivery.attempt, delivery.redelivered), (1, false));
        let published_at = delivery.published_at.expect("enqueued_at");
        assert!((chrono::Utc::now() - published_at).num_seconds().abs() < 60);
    }
    ack_all(&subscriber, &received).await;
    let more = subscriber
        .receive(10, Duration::from_millis(300))
        .await
        .expect("receive");
    assert!(more.is_empty(), "delivered again: {:?}", ids(&more));
    let lag = subscriber.lag().await.expect("lag");
    assert_eq!((lag.messages, lag.oldest_age), (0, None));
    subscriber.close().await;
}

async fn messages_of_one_key_come_out_in_publish_order(fixture: Fixture) {
    let messages = sample_envelopes(90, 3);
    // Published in batches while the subscriber reads, acking as it goes.
    fixture.publish(&messages[..10]).await;
    let publishing = async {
        for batch in messages[10..].chunks(20) {
            fixture.publish(batch).await;
        }
    };
    let subscriber = fixture
        .subscribe("ferry.test.order", "m1", LONG_LEASE)
        .await;
    let reading = async {
        let deadline = Instant::now() + PATIENCE;
        let mut received = Vec::new();
        while received.len() < messages.len() && Instant::now() < deadline {
            let batch = subscriber
                .receive(7, Duration::from_millis(200))
                .await
                .expect("receive");
            ack_all(&subscriber, &batch).await;
            received.extend(batch);
        }
        received
    };
    let ((), received) = tokio::join!(publishing, reading);
    let by_key = |pairs: Vec<(String, String)>| {
        let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, id) in pairs {
            keys.entry(key).or_default().push(id);
        }
        keys
    };
    let expected = by_key(
        messages
            .iter()
            .map(|message| (message.key.clone(), message.id.clone()))
            .collect(),
    );
    let actual = by_key(
        received
            .iter()
            .map(|delivery| (delivery.key.clone(), delivery.id.clone()))
            .collect(),
    );
    assert_eq!(expected.len(), 3);
    assert_eq!(actual, expected, "each key's messages, once, in order");
    subscriber.close().await;
}

async fn two_groups_each_get_every_message(fixture: Fixture) {
    let messages = sample_envelopes(20, 4);
    fixture.publish(&messages).await;
    for group in ["ferry.test.billing", "ferry.test.shipping"] {
        // Through the broker-independent entry point, as the consumer connects.
        let topic = TopicConfig {
            name: QUEUE.to_owned(),
            url: SecretSource::Value(fixture.url.clone()),
            provision: true,
            target: TopicTarget::Sql(fixture.target()),
        };
        let subscription = SubscriptionConfig {
            group: group.to_owned(),
            member: "m1".to_owned(),
            prefetch: 100,
            ack_timeout: LONG_LEASE,
            provision: true,
            single_active: false,
        };
        let subscriber = subscribe(&topic, &subscription).await.expect("subscribes");
        let received = receive_count(subscriber.as_ref(), 20, 20).await;
        assert_eq!(ids(&received), message_ids(&messages), "{group}");
        ack_all(subscriber.as_ref(), &received).await;
        subscriber.close().await;
    }
}

async fn two_members_of_a_group_share_its_messages_without_overlap(fixture: Fixture) {
    let messages = sample_envelopes(60, 6);
    fixture.publish(&messages).await;
    let first = fixture
        .subscribe("ferry.test.shared", "m1", LONG_LEASE)
        .await;
    let second = fixture
        .subscribe("ferry.test.shared", "m2", LONG_LEASE)
        .await;
    // Taking turns first: the second member gets the next messages while the first holds its.
    let mut by_first = first
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    let mut by_second = second
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(ids(&by_first), message_ids(&messages[..10]));
    assert_eq!(ids(&by_second), message_ids(&messages[10..20]));
    // Then both at once, holding every message until all have come.
    let (more_first, more_second) = tokio::join!(receive_turns(&first), receive_turns(&second));
    by_first.extend(more_first);
    by_second.extend(more_second);
    let (first_ids, second_ids): (HashSet<String>, HashSet<String>) = (
        ids(&by_first).into_iter().collect(),
        ids(&by_second).into_iter().collect(),
    );
    assert!(
        first_ids.is_disjoint(&second_ids),
        "held by both: {:?}",
        first_ids.intersection(&second_ids).collect::<Vec<_>>()
    );
    let all: HashSet<String> = first_ids.union(&second_ids).cloned().collect();
    assert_eq!(all, message_ids(&messages).into_iter().collect());
    assert_eq!(by_first.len() + by_second.len(), 60, "each message once");
    ack_all(&first, &by_first).await;
    ack_all(&second, &by_second).await;
    first.close().await;
    second.close().await;
}

async fn a_crashed_members_lease_is_taken_over_after_ack_timeout_as_attempt_2(fixture: Fixture) {
    let messages = sample_envelopes(1, 1);
    fixture.publish(&messages).await;
    let ack_timeout = Duration::from_secs(1);
    let crashing = fixture
        .subscribe("ferry.test.lease", "m1", ack_timeout)
        .await;
    let started = Instant::now();
    let taken = receive_count(&crashing, 1, 1).await;
    // Dropped without `close`: its lease stays until it expires.
    drop(crashing);
    let survivor = fixture
        .subscribe("ferry.test.lease", "m2", ack_timeout)
        .await;
    let received = receive_count(&survivor, 1, 1).await;
    assert!(
        started.elapsed() >= ack_timeout,
        "taken over after {:?}, before the lease expired",
        started.elapsed()
    );
    assert_eq!(received[0].id, taken[0].id);
    assert_eq!((received[0].attempt, received[0].redelivered), (2, true));
    ack_all(&survivor, &received).await;
    assert_eq!(survivor.lag().await.expect("lag").messages, 0);
    survivor.close().await;
}

async fn close_gives_unsettled_leases_back_at_once(fixture: Fixture) {
    let messages = sample_envelopes(3, 1);
    fixture.publish(&messages).await;
    let leaving = fixture
        .subscribe("ferry.test.close", "m1", LONG_LEASE)
        .await;
    let held = receive_count(&leaving, 3, 3).await;
    leaving.ack(&held[0]).await.expect("ack");
    leaving.close().await;
    let staying = fixture
        .subscribe("ferry.test.close", "m2", LONG_LEASE)
        .await;
    let received = receive_count(&staying, 2, 2).await;
    assert_eq!(
        ids(&received),
        ids(&held[1..]),
        "well before the lease ends"
    );
    assert!(received.iter().all(|delivery| delivery.attempt == 2));
    ack_all(&staying, &received).await;
    staying.close().await;
}

async fn retry_waits_its_delay_counts_attempts_and_survives_a_restart(fixture: Fixture) {
    let messages = sample_envelopes(1, 1);
    fixture.publish(&messages).await;
    let group = "ferry.test.retry";
    let subscriber = fixture.subscribe(group, "m1", LONG_LEASE).await;
    let first = receive_count(&subscriber, 1, 1).await;
    assert_eq!(first[0].attempt, 1);
    let delay = Duration::from_secs(1);
    let retried_at = Instant::now();
    subscriber.retry(&first[0], delay).await.expect("retry");
    // A restart: the schedule is in the database, not in this process.
    subscriber.close().await;
    let subscriber = fixture.subscribe(group, "m1", LONG_LEASE).await;
    let second = receive_count(&subscriber, 1, 1).await;
    let waited = retried_at.elapsed();
    assert!(
        waited >= delay && waited < delay + Duration::from_secs(3),
        "waited {waited:?}"
    );
    assert_eq!(second[0].id, first[0].id);
    assert_eq!((second[0].attempt, second[0].redelivered), (2, true));
    let delay = Duration::from_millis(400);
    let retried_at = Instant::now();
    subscriber.retry(&second[0], delay).await.expect("retry");
    let third = receive_count(&subscriber, 1, 1).await;
    let waited = retried_at.elapsed();
    assert!(
        waited >= delay && waited < delay + Duration::from_secs(3),
        "waited {waited:?}"
    );
    assert_eq!(third[0].attempt, 3);
    ack_all(&subscriber, &third).await;
    subscriber.close().await;
}

async fn a_short_retry_delay_is_not_held_behind_a_long_one(fixture: Fixture) {
    let messages = sample_envelopes(2, 1);
    fixture.publish(&messages).await;
    let subscriber = fixture
        .subscribe("ferry.test.delays", "m1", LONG_LEASE)
        .await;
    let received = receive_count(&subscriber, 2, 2).await;
    subscriber
        .retry(&received[0], Duration::from_secs(3600))
        .await
        .expect("retry");
    let retried_at = Instant::now();
    subscriber
        .retry(&received[1], Duration::from_millis(300))
        .await
        .expect("retry");
    let again = receive_count(&subscriber, 1, 2).await;
    assert_eq!(again[0].id, received[1].id);
    assert!(retried_at.elapsed() < Duration::from_secs(5));
    let none = subscriber
        .receive(2, Duration::from_millis(300))
        .await
        .expect("receive");
    assert!(none.is_empty(), "the hour-long retry came early");
    subscriber.ack(&again[0]).await.expect("ack");
    subscriber.close().await;
}

async fn lag_counts_waiting_leased_and_retrying_messages_until_acked(fixture: Fixture) {
    let messages = sample_envelopes(5, 5);
    fixture.publish(&messages).await;
    let subscriber = fixture.subscribe("ferry.test.lag", "m1", LONG_LEASE).await;
    let lag = subscriber.lag().await.expect("lag");
    assert_eq!(lag.messages, 5);
    assert!(
        lag.oldest_age
            .is_some_and(|age| age < Duration::from_secs(60))
    );
    let received = receive_count(&subscriber, 3, 3).await;
    assert_eq!(subscriber.lag().await.expect("lag").messages, 5, "3 leased");
    subscriber.ack(&received[0]).await.expect("ack");
    subscriber
        .retry(&received[1], Duration::from_secs(3600))
        .await
        .expect("retry");
    assert_eq!(
        subscriber.lag().await.expect("lag").messages,
        4,
        "one done, one waiting for a retry, one leased, two waiting"
    );
    ack_all(&subscriber, &received[2..]).await;
    let rest = receive_count(&subscriber, 2, 5).await;
    ack_all(&subscriber, &rest).await;
    let lag = subscriber.lag().await.expect("lag");
    assert_eq!(lag.messages, 1, "the retry is still owed");
    assert!(lag.oldest_age.is_some());
    subscriber.close().await;
}

async fn done_messages_are_folded_into_the_group_position(fixture: Fixture) {
    let messages = sample_envelopes(30, 3);
    fixture.publish(&messages).await;
    let group = "ferry.test.compact";
    let subscriber = fixture.subscribe(group, "m1", LONG_LEASE).await;
    let received = receive_count(&subscriber, 30, 30).await;
    // The first message stays open: nothing above it can be folded yet.
    ack_all(&subscriber, &received[1..]).await;
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        subscriber
            .receive(10, Duration::from_millis(200))
            .await
            .expect("receive");
    }
    assert_eq!(
        fixture.group_state(group).await,
        (0, 30),
        "an open message keeps every row above it"
    );
    subscriber.ack(&received[0]).await.expect("ack");
    let highest = fixture.highest_seq().await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let more = subscriber
            .receive(10, Duration::from_millis(200))
            .await
            .expect("receive");
        assert!(more.is_empty(), "delivered again: {:?}", ids(&more));
        let state = fixture.group_state(group).await;
        if state == (highest, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "state not folded: {state:?}, highest seq {highest}"
        );
    }
    subscriber.close().await;
}

async fn a_row_with_unreadable_headers_is_delivered_under_its_id_column(fixture: Fixture) {
    let subscriber = fixture
        .subscribe("ferry.test.garbled", "m1", LONG_LEASE)
        .await;
    fixture
        .insert_raw("garbled-1", "order-9", "{not json", b"{}")
        .await;
    let received = receive_count(&subscriber, 1, 1).await;
    assert_eq!(
        (received[0].id.as_str(), received[0].key.as_str()),
        ("garbled-1", "order-9")
    );
    assert!(received[0].headers.is_empty());
    assert_eq!(received[0].body, b"{}");
    ack_all(&subscriber, &received).await;
    subscriber.close().await;
}

async fn without_provision_missing_group_state_is_a_topology_error(fixture: Fixture) {
    // The queue table exists (the relay made it); the state tables do not.
    fixture.publish(&sample_envelopes(1, 1)).await;
    let group = "ferry.test.provision";
    let result = fixture.try_subscribe(group, "m1", LONG_LEASE, false).await;
    assert!(
        matches!(result, Err(BrokerError::Topology { .. })),
        "got {:?}",
        result.err()
    );
    fixture
        .subscribe(group, "m1", LONG_LEASE)
        .await
        .close()
        .await;
    let checked = fixture
        .try_subscribe(group, "m1", LONG_LEASE, false)
        .await
        .expect("the provisioned state passes the check");
    let received = receive_count(&checked, 1, 1).await;
    ack_all(&checked, &received).await;
    checked.close().await;
}

/// Runs each scenario on both engines, as one test per engine.
macro_rules! on_both_engines {
    ($($scenario:ident => $postgres:ident, $sqlite:ident;)*) => {$(
        #[tokio::test]
        async fn $postgres() {
            $scenario(Fixture::postgres()).await;
        }

        #[tokio::test]
        async fn $sqlite() {
            $scenario(Fixture::sqlite()).await;
        }
    )*};
}

on_both_engines! {
    every_message_is_delivered_once_and_acking_all_leaves_no_lag =>
        postgres_every_message_is_delivered_once_and_acking_all_leaves_no_lag,
        sqlite_every_message_is_delivered_once_and_acking_all_leaves_no_lag;
    messages_of_one_key_come_out_in_publish_order =>
        postgres_messages_of_one_key_come_out_in_publish_order,
        sqlite_messages_of_one_key_come_out_in_publish_order;
    two_groups_each_get_every_message =>
        postgres_two_groups_each_get_every_message,
        sqlite_two_groups_each_get_every_message;
    two_members_of_a_group_share_its_messages_without_overlap =>
        postgres_two_members_of_a_group_share_its_messages_without_overlap,
        sqlite_two_members_of_a_group_share_its_messages_without_overlap;
    a_crashed_members_lease_is_taken_over_after_ack_timeout_as_attempt_2 =>
        postgres_a_crashed_members_lease_is_taken_over_after_ack_timeout_as_attempt_2,
        sqlite_a_crashed_members_lease_is_taken_over_after_ack_timeout_as_attempt_2;
    close_gives_unsettled_leases_back_at_once =>
        postgres_close_gives_unsettled_leases_back_at_once,
        sqlite_close_gives_unsettled_leases_back_at_once;
    retry_waits_its_delay_counts_attempts_and_survives_a_restart =>
        postgres_retry_waits_its_delay_counts_attempts_and_survives_a_restart,
        sqlite_retry_waits_its_delay_counts_attempts_and_survives_a_restart;
    a_short_retry_delay_is_not_held_behind_a_long_one =>
        postgres_a_short_retry_delay_is_not_held_behind_a_long_one,
        sqlite_a_short_retry_delay_is_not_held_behind_a_long_one;
    lag_counts_waiting_leased_and_retrying_messages_until_acked =>
        postgres_lag_counts_waiting_leased_and_retrying_messages_until_acked,
        sqlite_lag_counts_waiting_leased_and_retrying_messages_until_acked;
    done_messages_are_folded_into_the_group_position =>
        postgres_done_messages_are_folded_into_the_group_position,
        sqlite_done_messages_are_folded_into_the_group_position;
    a_row_with_unreadable_headers_is_delivered_under_its_id_column =>
        postgres_a_row_with_unreadable_headers_is_delivered_under_its_id_column,
        sqlite_a_row_with_unreadable_headers_is_delivered_under_its_id_column;
    without_provision_missing_group_state_is_a_topology_error =>
        postgres_without_provision_missing_group_state_is_a_topology_error,
        sqlite_without_provision_missing_group_state_is_a_topology_error;
}

/// A writer that took a lower `seq` and commits after a higher one was delivered: its message
/// is still delivered, and the group's position does not pass it while it is open.
#[tokio::test]
async fn postgres_a_row_committed_after_a_higher_seq_is_still_delivered() {
    let fixture = Fixture::postgres();
    let messages = sample_envelopes(2, 1);
    // Connected first: provisioning takes a table lock that waits for the open insert below.
    let publisher = SqlPublisher::connect(QUEUE, &fixture.url, &fixture.target(), true)
        .await
        .expect("publisher connects");
    let group = "ferry.test.gap";
    let subscriber = fixture.subscribe(group, "m1", LONG_LEASE).await;

    let mut slow_writer = PgConnection::connect(POSTGRES_URL).await.expect("connects");
    let mut slow = slow_writer.begin().await.expect("begin");
    let insert = format!(
        "INSERT INTO {} (queue, id, message_key, headers, body) VALUES ($1, $2, $3, $4, $5) \
         RETURNING seq",
        fixture.table
    );
    let lower: i64 = sqlx::query_scalar(AssertSqlSafe(insert))
        .bind(QUEUE)
        .bind(&messages[0].id)
        .bind(&messages[0].key)
        .bind(encode_headers(&messages[0].headers).expect("headers"))
        .bind(&messages[0].body[..])
        .fetch_one(&mut *slow)
        .await
        .expect("insert");
    publisher.publish(&messages[1..]).await.expect("published");
    let higher = fixture.highest_seq().await;
    assert!(higher > lower);

    let received = receive_count(&subscriber, 1, 10).await;
    assert_eq!(received[0].id, messages[1].id);
    subscriber.ack(&received[0]).await.expect("ack");
    // Several compactions run while the lower row is uncommitted.
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        let more = subscriber
            .receive(10, Duration::from_millis(200))
            .await
            .expect("receive");
        assert!(more.is_empty(), "delivered again: {:?}", ids(&more));
    }
    let (done_through, _) = fixture.group_state(group).await;
    assert!(
        done_through < lower,
        "position {done_through} passed the uncommitted seq {lower}"
    );

    slow.commit().await.expect("commit");
    let late = receive_count(&subscriber, 1, 10).await;
    assert_eq!(late[0].id, messages[0].id);
    assert_eq!(late[0].attempt, 1);
    subscriber.ack(&late[0]).await.expect("ack");
    let deadline = Instant::now() + PATIENCE;
    while fixture.group_state(group).await != (higher, 0) {
        assert!(
            Instant::now() < deadline,
            "state never folded past {higher}"
        );
        subscriber
            .receive(10, Duration::from_millis(200))
            .await
            .expect("receive");
    }
    subscriber.close().await;
}

#[tokio::test]
async fn an_unknown_url_scheme_is_a_connection_error() {
    let subscription = SubscriptionConfig {
        group: "ferry.test.scheme".into(),
        member: "m1".into(),
        prefetch: 10,
        ack_timeout: LONG_LEASE,
        provision: true,
        single_active: false,
    };
    let target = SqlTarget {
        table: "ferry_queue".into(),
        queue: QUEUE.into(),
    };
    let result = SqlSubscriber::connect(
        QUEUE,
        "mysql://root@127.0.0.1:3306/x",
        &target,
        &subscription,
    )
    .await;
    match result {
        Err(BrokerError::Connection { message, .. }) => assert!(message.contains("mysql")),
        other => panic!("expected a connection error, got {:?}", other.err()),
    }
}
