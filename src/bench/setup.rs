//! What a run creates in PostgreSQL and hands the relay: unique names, the outbox table
//! (pre-filled through the real schema and trigger), the orders table, and the relay config.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use sqlx::{Connection, PgConnection, PgPool, Row};
use uuid::Uuid;

use super::BenchError;
use crate::{
    api::{
        DatabaseEngine, Duration as ApiDuration, Ordering,
        outbox_source::CleanupMode,
        retry_policy::{Jitter, RetryPolicySpec},
    },
    config::{
        CaptureConfig, CleanupConfig, DatabaseConfig, HttpConfig, RelayConfig, RouteConfig,
        SecretSource, SourceIdentity, TopicConfig,
    },
    message::OutboxEvent,
    outbox::{migrate::migrate, schema::TableName, trusted},
};

/// The child relay reads the database URL from here, so no URL (and no password in it) is
/// written into the config file on disk.
pub const DATABASE_ENV: &str = "FERRY_BENCH_DATABASE_URL";
/// Likewise for the broker URL.
pub const BROKER_ENV: &str = "FERRY_BENCH_BROKER_URL";

/// Every outbox row of a benchmark has these, as a typical order service would write.
pub const AGGREGATE_TYPE: &str = "Order";
pub const EVENT_TYPE: &str = "order.created";
/// Carried through as a header, so messages have the headers a traced service sends.
pub const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Rows per INSERT (one transaction each) when pre-filling: large enough that the fill takes
/// seconds, small enough that the per-key advisory locks the trigger takes fit the lock table.
const FILL_CHUNK: u64 = 5_000;

/// A suffix no other run uses: the process id and the start time, valid in SQL identifiers,
/// exchange, queue, stream and key names.
pub fn unique_suffix() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    format!("{}_{millis}", std::process::id())
}

/// The ordering key of the `n`th row: keys round-robin, so every key's rows interleave.
pub fn key_of(n: u64, keys: u64) -> String {
    format!("customer-{}", n % keys.max(1))
}

/// An order as JSON text of about `bytes` bytes (never less than the fields need).
pub fn payload(n: u64, key: &str, bytes: usize) -> String {
    let bare = serde_json::json!({"order": n, "customer": key, "note": ""}).to_string();
    let pad = bytes.saturating_sub(bare.len());
    serde_json::json!({"order": n, "customer": key, "note": "x".repeat(pad)}).to_string()
}

/// The headers column of every row.
pub fn headers_json() -> String {
    serde_json::json!({ "traceparent": TRACEPARENT }).to_string()
}

/// Creates the outbox table with `ferry outbox migrate`'s statements.
pub async fn create_outbox(url: &str, table: &str) -> Result<(), BenchError> {
    migrate(DatabaseEngine::Postgres, url, table).await?;
    Ok(())
}

/// A small business table the latency producer writes next to each outbox row.
pub async fn create_orders(pool: &PgPool, table: &str) -> Result<(), BenchError> {
    sqlx::raw_sql(trusted(format!(
        "CREATE TABLE {table} (id TEXT PRIMARY KEY, customer TEXT NOT NULL, n BIGINT NOT NULL)"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// Inserts `messages` rows, `FILL_CHUNK` per statement and transaction, through the table's
/// trigger (so `seq` and the NOTIFY are what a producer gets), not through the relay.
pub async fn prefill(
    pool: &PgPool,
    table: &str,
    messages: u64,
    keys: u64,
    payload_bytes: usize,
) -> Result<(), BenchError> {
    let sql = format!(
        "INSERT INTO {table} (id, aggregate_type, aggregate_id, event_type, payload, headers)
         SELECT id, $2, key, $3, body::jsonb, $4::jsonb
         FROM unnest($1::uuid[], $5::text[], $6::text[]) AS r(id, key, body)"
    );
    let headers = headers_json();
    let mut first = 0;
    while first < messages {
        let last = (first + FILL_CHUNK).min(messages);
        let ids: Vec<Uuid> = (first..last).map(|_| Uuid::now_v7()).collect();
        let rows: Vec<(String, String)> = (first..last)
            .map(|n| {
                let key = key_of(n, keys);
                let body = payload(n, &key, payload_bytes);
                (key, body)
            })
            .collect();
        let (row_keys, bodies): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
        let mut tx = pool.begin().await?;
        sqlx::query(trusted(sql.as_str()))
            .bind(&ids)
            .bind(AGGREGATE_TYPE)
            .bind(EVENT_TYPE)
            .bind(&headers)
            .bind(&row_keys)
            .bind(&bodies)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        first = last;
    }
    Ok(())
}

/// Gathers planner statistics. Without them PostgreSQL guesses that almost no row matches
/// `published_at IS NULL AND failed_at IS NULL` and may plan the claim as a nested loop over
/// the whole table; a long-lived outbox has them from autovacuum.
pub async fn analyze(pool: &PgPool, table: &str) -> Result<(), BenchError> {
    sqlx::raw_sql(trusted(format!("ANALYZE {table}")))
        .execute(pool)
        .await?;
    Ok(())
}

/// The pending rows as the relay's claim reads them (same casts), in `seq` order: the raw
/// ceiling publishes exactly these.
pub async fn read_events(pool: &PgPool, table: &str) -> Result<Vec<OutboxEvent>, BenchError> {
    let rows = sqlx::query(trusted(format!(
        "SELECT seq, id::text AS id, aggregate_type, aggregate_id, event_type, payload::text AS payload,
                headers::text AS headers, created_at
         FROM {table} ORDER BY seq"
    )))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(OutboxEvent {
                seq: row.try_get("seq")?,
                id: row.try_get("id")?,
                aggregate_type: row.try_get("aggregate_type")?,
                aggregate_id: row.try_get("aggregate_id")?,
                event_type: row.try_get("event_type")?,
                payload: row.try_get::<String, _>("payload")?.into_bytes(),
                headers: row.try_get("headers")?,
                created_at: row.try_get("created_at")?,
                defect: None,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(BenchError::from)
}

/// Rows still in the outbox (published rows are deleted with `cleanup: Delete`).
pub async fn count_rows(pool: &PgPool, table: &str) -> Result<i64, BenchError> {
    Ok(
        sqlx::query_scalar(trusted(format!("SELECT count(*) FROM {table}")))
            .fetch_one(pool)
            .await?,
    )
}

/// Drops what `create_outbox` (and `create_orders`) made: tables, sequence, trigger functions
/// and the schema-version row.
pub async fn drop_tables(url: &str, outbox: &str, orders: Option<&str>) -> Result<(), BenchError> {
    let t = TableName::new(outbox);
    let mut connection = PgConnection::connect(url).await?;
    let mut statements = vec![
        format!("DROP TABLE IF EXISTS {}", t.qualified),
        format!("DROP SEQUENCE IF EXISTS {}", t.sibling("_seq")),
        format!("DROP FUNCTION IF EXISTS {}()", t.sibling("_before_insert")),
        format!("DROP FUNCTION IF EXISTS {}()", t.sibling("_notify")),
    ];
    if let Some(orders) = orders {
        statements.push(format!("DROP TABLE IF EXISTS {orders}"));
    }
    for statement in statements {
        sqlx::raw_sql(trusted(statement))
            .execute(&mut connection)
            .await?;
    }
    sqlx::query("DELETE FROM ferry_schema_versions WHERE table_name = $1")
        .bind(outbox)
        .execute(&mut connection)
        .await?;
    Ok(())
}

/// How the benchmark's relay runs.
pub struct RelayShape {
    pub batch_size: u32,
    pub workers: u32,
    pub listen: SocketAddr,
}

/// A relay config like the end-to-end tests use: one catch-all route, notify on, ordering per
/// key, published rows deleted; URLs read from `DATABASE_ENV` and `BROKER_ENV`.
pub fn relay_config(table: &str, topic: TopicConfig, shape: &RelayShape) -> RelayConfig {
    let route = RouteConfig {
        name: "all".into(),
        aggregate_type: None,
        event_type: None,
        topic: topic.name.clone(),
        routing_key: None,
    };
    RelayConfig {
        source: SourceIdentity {
            namespace: "bench".into(),
            name: table.replace('_', "-"),
        },
        database: DatabaseConfig {
            engine: DatabaseEngine::Postgres,
            url: SecretSource::Env(DATABASE_ENV.into()),
            table: table.to_owned(),
        },
        capture: CaptureConfig {
            poll_interval: ApiDuration::from_millis(100),
            batch_size: shape.batch_size,
            max_message_bytes: 1024 * 1024,
            notify: true,
            workers: shape.workers,
        },
        ordering: Ordering::PerKey,
        cleanup: CleanupConfig {
            mode: CleanupMode::Delete,
            retention: ApiDuration::from_secs(0),
            purge_batch_size: 1000,
        },
        routes: vec![route],
        topics: BTreeMap::from([(topic.name.clone(), topic)]),
        retry: RetryPolicySpec {
            initial_backoff: ApiDuration::from_millis(50),
            max_backoff: ApiDuration::from_secs(1),
            jitter: Jitter::Full,
            ..RetryPolicySpec::default()
        },
        dead_letter: None,
        http: HttpConfig {
            listen: shape.listen,
        },
        transactional: None,
    }
}

/// A loopback address that was free a moment ago, for the relay's endpoints.
pub fn free_loopback() -> Result<SocketAddr, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(BenchError::io("finding a free loopback port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_json_of_the_requested_size() {
        let text = payload(42, "customer-7", 256);
        assert_eq!(text.len(), 256);
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(value["order"], 42);
        assert_eq!(value["customer"], "customer-7");
    }

    #[test]
    fn a_payload_too_small_for_its_fields_keeps_them_all() {
        let text = payload(1, "customer-1", 8);
        assert!(text.len() > 8);
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
    }

    #[test]
    fn keys_go_round_robin() {
        assert_eq!(key_of(0, 3), "customer-0");
        assert_eq!(key_of(4, 3), "customer-1");
        assert_eq!(key_of(5, 0), "customer-0");
    }
}
