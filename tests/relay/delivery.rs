//! Every committed row reaches the broker, in commit order per key: per broker, per engine, and
//! with two relays on one outbox.

use std::time::Duration;

use ferry::api::DatabaseEngine;

use crate::{
    arrivals::{Reader, check},
    harness::{
        InProcessRelay, NATS, POSTGRES, RABBITMQ, REDIS, Source, nats_topic, rabbitmq_topic,
        redis_topic, relay_config, sql_topic,
    },
    support::unique_name,
};

const ORDERS: usize = 300;
const KEYS: usize = 12;
const DEADLINE: Duration = Duration::from_secs(60);

/// Commits orders, runs one relay, and checks what `reader` sees.
async fn deliver(source: Source, topic: ferry::config::TopicConfig, reader: Reader) {
    // Half the orders before the relay starts (a backlog), half while it runs (NOTIFY or polling).
    let mut committed = source.commit_orders(0, ORDERS / 2, KEYS).await;
    let relay = InProcessRelay::start(relay_config(&source, topic)).await;
    committed.extend(source.commit_orders(ORDERS / 2, ORDERS / 2, KEYS).await);
    let arrived = reader.wait_for(ORDERS, DEADLINE).await;
    let result = check(&committed, &arrived);
    assert_eq!(
        result.missing, 0,
        "{:?} lost messages: {result:?}",
        source.engine
    );
    assert!(
        result.out_of_order_keys.is_empty(),
        "order per key broken: {result:?}"
    );
    assert_eq!(
        result.duplicates, 0,
        "no failure happened, so nothing may arrive twice: {result:?}"
    );
    let sample = &arrived[0];
    assert_eq!(sample.header("ce-type"), Some("order.created"));
    assert_eq!(sample.header("ce-specversion"), Some("1.0"));
    assert_eq!(sample.header("content-type"), Some("application/json"));
    assert_eq!(
        sample.header("traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert!(
        sample
            .header("ce-source")
            .is_some_and(|s| s.starts_with("/namespaces/test/outboxsources/"))
    );
    let body: serde_json::Value =
        serde_json::from_slice(&sample.body).expect("body is the JSON payload");
    assert!(body["order"].is_number());

    // Published rows are deleted, and the status says so.
    let status = wait_for_pending(&relay, 0).await;
    assert_eq!(
        status["publishedTotal"].as_u64(),
        Some(committed.len() as u64 - ORDERS as u64 / 2 + ORDERS as u64 / 2)
    );
    assert_eq!(status["databaseConnected"], true);
    assert_eq!(status["brokerConnected"], true);
    let (code, metrics) = crate::harness::http_get(relay.address, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "ferry_relay_published_total{topic=",
        "ferry_relay_publish_latency_seconds_bucket",
        "ferry_relay_batch_size_count",
        "ferry_relay_pending_rows 0",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    assert_eq!(
        crate::harness::http_get(relay.address, "/healthz").await.0,
        200
    );
    assert_eq!(
        crate::harness::http_get(relay.address, "/readyz").await.0,
        200
    );
    relay.stop().await;
}

/// Waits until the relay reports `rows` pending, returning its status.
pub async fn wait_for_pending(relay: &InProcessRelay, rows: i64) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let status = relay.status().await;
        if status["pendingRows"].as_i64() == Some(rows) || start.elapsed() > Duration::from_secs(20)
        {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn postgres_outbox_to_rabbitmq_delivers_every_row_in_key_order() {
    let exchange = unique_name("relay-rabbit");
    let reader = Reader::rabbitmq(RABBITMQ, &exchange).await;
    deliver(
        Source::new(DatabaseEngine::Postgres).await,
        rabbitmq_topic(&exchange),
        reader,
    )
    .await;
}

#[tokio::test]
async fn postgres_outbox_to_nats_jetstream_delivers_every_row_in_key_order() {
    let stream = unique_name("RELAY").replace('-', "_");
    let reader = Reader::Nats {
        url: NATS.into(),
        stream: stream.clone(),
    };
    deliver(
        Source::new(DatabaseEngine::Postgres).await,
        nats_topic(NATS, &stream),
        reader,
    )
    .await;
}

#[tokio::test]
async fn postgres_outbox_to_redis_streams_delivers_every_row_in_key_order() {
    let stream = unique_name("relay-redis");
    let reader = Reader::Redis {
        url: REDIS.into(),
        stream: stream.clone(),
    };
    deliver(
        Source::new(DatabaseEngine::Postgres).await,
        redis_topic(REDIS, &stream),
        reader,
    )
    .await;
}

#[tokio::test]
async fn postgres_outbox_to_sql_queue_delivers_every_row_in_key_order() {
    let table = format!("queue_{}", unique_name("q").replace('-', "_"));
    let reader = Reader::Sql {
        url: POSTGRES.into(),
        table: table.clone(),
        queue: "orders".into(),
    };
    deliver(
        Source::new(DatabaseEngine::Postgres).await,
        sql_topic(POSTGRES, &table, "orders"),
        reader,
    )
    .await;
}

#[tokio::test]
async fn mysql_outbox_delivers_every_row_in_key_order() {
    let stream = unique_name("relay-mysql");
    let reader = Reader::Redis {
        url: REDIS.into(),
        stream: stream.clone(),
    };
    deliver(
        Source::new(DatabaseEngine::Mysql).await,
        redis_topic(REDIS, &stream),
        reader,
    )
    .await;
}

#[tokio::test]
async fn sqlite_outbox_to_sqlite_queue_delivers_every_row_in_key_order() {
    let source = Source::new(DatabaseEngine::Sqlite).await;
    let reader = Reader::Sql {
        url: source.url.clone(),
        table: "ferry_queue".into(),
        queue: "orders".into(),
    };
    let topic = sql_topic(&source.url, "ferry_queue", "orders");
    deliver(source, topic, reader).await;
}

#[tokio::test]
async fn two_relays_on_one_outbox_publish_each_row_once_in_key_order() {
    let source = Source::new(DatabaseEngine::Postgres).await;
    let stream = unique_name("relay-pair");
    let reader = Reader::Redis {
        url: REDIS.into(),
        stream: stream.clone(),
    };
    let mut config = relay_config(&source, redis_topic(REDIS, &stream));
    config.capture.batch_size = 20;
    let first = InProcessRelay::start(config.clone()).await;
    let second = InProcessRelay::start(config).await;
    let committed = source.commit_orders(0, 600, 8).await;
    let arrived = reader.wait_for(600, DEADLINE).await;
    let result = check(&committed, &arrived);
    assert_eq!(
        result,
        crate::arrivals::Check {
            missing: 0,
            duplicates: 0,
            out_of_order_keys: vec![]
        }
    );
    let (one, two) = (first.status().await, second.status().await);
    let (one, two) = (
        one["publishedTotal"].as_u64().unwrap_or(0),
        two["publishedTotal"].as_u64().unwrap_or(0),
    );
    assert_eq!(one + two, 600, "each row published by exactly one relay");
    assert!(
        one > 0 && two > 0,
        "both relays should share the work: {one} + {two}"
    );
    first.stop().await;
    second.stop().await;
}
