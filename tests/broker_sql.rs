//! The SQL queue publisher, on the shared PostgreSQL (database `ferry_test`, a schema of the
//! test's own, dropped afterwards) and on SQLite (a file in a temp dir of the test's own).

mod support;

use ferry::{
    broker::{
        BrokerError, Outcome, Publisher,
        sql::{Engine, SqlPublisher, TableName, decode_headers, queue_schema},
    },
    config::SqlTarget,
    message::Envelope,
};
use sqlx::{AssertSqlSafe, Connection, PgConnection, SqliteConnection};
use support::{TempDir, sample_envelopes, unique_name};

const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/ferry_test";

/// A queue table of the test's own, removed when the test ends (even when it fails).
struct Fixture {
    engine: Engine,
    url: String,
    table: String,
    /// PostgreSQL: the schema to drop. SQLite: the directory holding the database file.
    _schema: Option<Schema>,
    _dir: Option<TempDir>,
}

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
        let schema = unique_name("ferry_t");
        Self {
            engine: Engine::Postgres,
            url: POSTGRES_URL.to_owned(),
            table: format!("{schema}.queue"),
            _schema: Some(Schema(schema)),
            _dir: None,
        }
    }

    fn sqlite() -> Self {
        let dir = TempDir::new("sqlite").expect("temp dir");
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

    fn target(&self, queue: &str) -> SqlTarget {
        SqlTarget {
            table: self.table.clone(),
            queue: queue.to_owned(),
        }
    }

    async fn publisher(&self, queue: &str, provision: bool) -> Result<SqlPublisher, BrokerError> {
        SqlPublisher::connect(queue, &self.url, &self.target(queue), provision).await
    }

    /// The rows of a queue in `seq` order, as envelopes.
    async fn rows(&self, queue: &str) -> Vec<Envelope> {
        type Row = (String, String, Option<String>, String, Vec<u8>);
        let sql = format!(
            "SELECT id, message_key, routing_key, headers, body FROM {} WHERE queue = $1 ORDER BY seq",
            self.table
        );
        let rows: Vec<Row> = match self.engine {
            Engine::Postgres => {
                let mut connection = PgConnection::connect(&self.url).await.expect("connects");
                let query = sqlx::query_as(AssertSqlSafe(sql)).bind(queue);
                query.fetch_all(&mut connection).await.expect("select")
            }
            Engine::Sqlite => {
                let mut connection = SqliteConnection::connect(&self.url)
                    .await
                    .expect("connects");
                let query = sqlx::query_as(AssertSqlSafe(sql)).bind(queue);
                query.fetch_all(&mut connection).await.expect("select")
            }
        };
        rows.into_iter()
            .map(|(id, key, routing_key, headers, body)| Envelope {
                id,
                key,
                routing_key: routing_key.unwrap_or_default(),
                headers: decode_headers(&headers).expect("headers column is a JSON array of pairs"),
                body: body.into(),
            })
            .collect()
    }
}

async fn a_batch_is_inserted_in_order_with_headers_and_body(fixture: Fixture) {
    let publisher = fixture.publisher("orders", true).await.expect("connects");
    // One batch larger than an INSERT's rows (SQLite: 165), then smaller ones.
    let messages = sample_envelopes(400, 10);
    let outcomes = publisher
        .publish(&messages[..200])
        .await
        .expect("published");
    assert_eq!(outcomes, vec![Outcome::Confirmed; 200]);
    for batch in messages[200..].chunks(50) {
        publisher.publish(batch).await.expect("published");
    }
    assert_eq!(
        fixture.rows("orders").await,
        messages,
        "rows in publish order, every field intact"
    );
}

async fn republishing_inserts_nothing_new(fixture: Fixture) {
    let publisher = fixture.publisher("orders", true).await.expect("connects");
    let messages = sample_envelopes(150, 5);
    publisher
        .publish(&messages[..100])
        .await
        .expect("published");
    // A relay that crashed before marking rows published sends them again, with new ones.
    let outcomes = publisher.publish(&messages).await.expect("published again");
    assert_eq!(
        outcomes,
        vec![Outcome::Confirmed; 150],
        "a duplicate is confirmed, not refused"
    );
    // A second publisher (provision runs again: idempotent) sends the same batch once more.
    let again = fixture
        .publisher("orders", true)
        .await
        .expect("connects again");
    again
        .publish(&messages)
        .await
        .expect("published a third time");
    assert_eq!(
        fixture.rows("orders").await,
        messages,
        "each message once, in first-publish order"
    );
}

async fn queues_sharing_a_table_keep_their_messages_apart(fixture: Fixture) {
    let messages = sample_envelopes(10, 2);
    for queue in ["orders", "audit"] {
        let publisher = fixture.publisher(queue, true).await.expect("connects");
        publisher.publish(&messages).await.expect("published");
    }
    assert_eq!(fixture.rows("orders").await, messages);
    assert_eq!(
        fixture.rows("audit").await,
        messages,
        "the same ids are distinct messages in another queue"
    );
}

async fn without_provision_a_missing_table_is_a_topology_error(fixture: Fixture) {
    let result = fixture.publisher("orders", false).await;
    assert!(
        matches!(result, Err(BrokerError::Topology { .. })),
        "got {:?}",
        result.err()
    );
    fixture
        .publisher("orders", true)
        .await
        .expect("provisioned");
    fixture
        .publisher("orders", false)
        .await
        .expect("the provisioned table passes the check");
}

#[tokio::test]
async fn postgres_queue_inserts_a_batch_in_order_with_headers_and_body() {
    a_batch_is_inserted_in_order_with_headers_and_body(Fixture::postgres()).await;
}

#[tokio::test]
async fn sqlite_queue_inserts_a_batch_in_order_with_headers_and_body() {
    a_batch_is_inserted_in_order_with_headers_and_body(Fixture::sqlite()).await;
}

#[tokio::test]
async fn postgres_queue_republishing_the_same_messages_inserts_nothing_new() {
    republishing_inserts_nothing_new(Fixture::postgres()).await;
}

#[tokio::test]
async fn sqlite_queue_republishing_the_same_messages_inserts_nothing_new() {
    republishing_inserts_nothing_new(Fixture::sqlite()).await;
}

#[tokio::test]
async fn postgres_queues_sharing_a_table_keep_their_messages_apart() {
    queues_sharing_a_table_keep_their_messages_apart(Fixture::postgres()).await;
}

#[tokio::test]
async fn sqlite_queues_sharing_a_table_keep_their_messages_apart() {
    queues_sharing_a_table_keep_their_messages_apart(Fixture::sqlite()).await;
}

#[tokio::test]
async fn postgres_without_provision_a_missing_table_is_a_topology_error() {
    without_provision_a_missing_table_is_a_topology_error(Fixture::postgres()).await;
}

#[tokio::test]
async fn sqlite_without_provision_a_missing_table_is_a_topology_error() {
    without_provision_a_missing_table_is_a_topology_error(Fixture::sqlite()).await;
}

#[tokio::test]
async fn an_unknown_url_scheme_is_a_connection_error_naming_the_scheme() {
    let target = SqlTarget {
        table: "ferry_queue".into(),
        queue: "orders".into(),
    };
    for (url, scheme) in [
        ("mysql://root@127.0.0.1:3306/test", "mysql"),
        ("redis://127.0.0.1:6379/", "redis"),
    ] {
        match SqlPublisher::connect("orders", url, &target, true).await {
            Err(BrokerError::Connection { message, .. }) => {
                assert!(message.contains(scheme), "{message}")
            }
            other => panic!("{url}: expected a connection error, got {:?}", other.err()),
        }
    }
}

#[test]
fn table_names_are_plain_or_schema_qualified_identifiers() {
    assert!(TableName::parse("ferry_queue").is_ok());
    assert!(TableName::parse("messaging.ferry_queue").is_ok());
    for bad in [
        "",
        "1queue",
        "a.b.c",
        "queue; DROP TABLE x",
        "\"quoted\"",
        "a.",
    ] {
        assert!(TableName::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn the_schema_creates_the_table_then_its_index_idempotently() {
    let table = TableName::parse("messaging.queue").expect("valid");
    let postgres = queue_schema(Engine::Postgres, &table);
    assert_eq!(postgres.len(), 3, "schema, table, index: {postgres:?}");
    assert!(postgres[0].starts_with("CREATE SCHEMA IF NOT EXISTS messaging"));
    assert!(postgres[1].contains("UNIQUE (queue, id)"));
    // SQLite qualifies the index, not the table it is on.
    let sqlite = queue_schema(Engine::Sqlite, &table);
    assert_eq!(
        sqlite.last().map(String::as_str),
        Some("CREATE INDEX IF NOT EXISTS messaging.queue_queue_seq_idx ON queue (queue, seq)")
    );
    assert!(
        postgres
            .iter()
            .chain(&sqlite)
            .all(|statement| statement.contains("IF NOT EXISTS"))
    );
}

#[tokio::test]
async fn postgres_down_is_a_connection_error_and_rows_survive_a_restart() {
    let mut postgres = support::servers::postgres::PrivatePostgres::launch()
        .await
        .expect("private postgres starts");
    let target = SqlTarget {
        table: "ferry_queue".into(),
        queue: "orders".into(),
    };
    let messages = sample_envelopes(20, 2);
    let publisher = SqlPublisher::connect("orders", &postgres.url(), &target, true)
        .await
        .expect("connects");
    publisher
        .publish(&messages[..10])
        .await
        .expect("published before the stop");

    postgres.stop().await.expect("postgres stops");
    let result = publisher.publish(&messages[10..]).await;
    assert!(
        matches!(result, Err(BrokerError::Connection { .. })),
        "got {result:?}"
    );

    // As the relay does after an error: connect again, then publish the batch again.
    postgres.start().await.expect("postgres restarts");
    let publisher = SqlPublisher::connect("orders", &postgres.url(), &target, false)
        .await
        .expect("reconnects");
    publisher
        .publish(&messages[10..])
        .await
        .expect("published after the restart");
    let mut connection = PgConnection::connect(&postgres.url())
        .await
        .expect("connects");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM ferry_queue")
        .fetch_one(&mut connection)
        .await
        .expect("count");
    assert_eq!(count, 20, "the rows committed before the stop were kept");
}

#[tokio::test]
async fn sqlite_queue_runs_in_wal_mode_and_stamps_rows_in_utc() {
    let fixture = Fixture::sqlite();
    let publisher = fixture.publisher("orders", true).await.expect("connects");
    publisher
        .publish(&sample_envelopes(1, 1))
        .await
        .expect("published");
    let mut connection = SqliteConnection::connect(&fixture.url)
        .await
        .expect("connects");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut connection)
        .await
        .expect("pragma");
    assert_eq!(mode, "wal", "WAL persists in the database file");
    let stamp: String = sqlx::query_scalar("SELECT enqueued_at FROM ferry_queue")
        .fetch_one(&mut connection)
        .await
        .expect("select");
    let stamp = chrono::DateTime::parse_from_rfc3339(&stamp).expect("enqueued_at is RFC 3339");
    assert!(
        (chrono::Utc::now() - stamp.to_utc()).num_seconds().abs() < 60,
        "enqueued_at {stamp} is now"
    );
}
