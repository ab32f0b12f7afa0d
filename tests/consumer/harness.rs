//! Builds a consumer pipeline for a test: a fresh topic on one broker, messages published by
//! Ferry's own publisher, a consumer running in this process against a test sink, and the
//! dead-letter and idempotency tables it uses, all under unique names removed at the end.

use std::{net::SocketAddr, time::Duration};

use ferry::{
    api::{
        DatabaseEngine, Duration as ApiDuration, Ordering,
        broker_topic::{ExchangeType, NatsStorage},
        retry_policy::{Jitter, RetryOn, RetryPolicySpec},
    },
    broker::{self, Outcome},
    config::{
        ConsumerConfig, ConsumerIdentity, DatabaseConfig, DeadLetterConfig, HttpConfig,
        IdempotencyConfig, NatsTarget, RabbitMqTarget, RedisTarget, SecretSource, SinkConfig,
        SqlTarget, TopicConfig, TopicTarget,
    },
    consumer::{self, RunningConsumer},
    message::Envelope,
};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::support::unique_name;

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/ferry_test";
pub const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const NATS: &str = "nats://127.0.0.1:4222";
pub const REDIS: &str = "redis://127.0.0.1:6379";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broker {
    Rabbitmq,
    Nats,
    Redis,
    SqlPostgres,
}

/// One test's topic, consumer identity and tables.
pub struct Pipeline {
    pub topic: TopicConfig,
    pub name: String,
    pub dead_letter_table: String,
    pub idempotency_table: String,
}

impl Pipeline {
    /// A pipeline whose broker is the server at `url` (a private instance) instead of the
    /// shared one.
    pub fn at(broker: Broker, url: &str) -> Self {
        let mut pipeline = Self::new(broker);
        pipeline.topic.url = SecretSource::Value(url.to_owned());
        pipeline
    }

    pub fn new(broker: Broker) -> Self {
        let name = unique_name("c");
        let target = match broker {
            Broker::Rabbitmq => TopicTarget::Rabbitmq(RabbitMqTarget {
                exchange: format!("ferry-test-{name}"),
                exchange_type: ExchangeType::Topic,
                routing_key: "{aggregateType}.{eventType}".into(),
            }),
            Broker::Nats => TopicTarget::Nats(NatsTarget {
                stream: format!("FERRY_TEST_{}", name.to_uppercase()),
                subjects: vec![format!("{name}.>")],
                subject: format!("{name}.{{aggregateType}}.{{eventType}}"),
                replicas: 1,
                duplicate_window: ApiDuration::from_secs(120),
                max_age: None,
                storage: NatsStorage::File,
            }),
            Broker::Redis => TopicTarget::Redis(RedisTarget {
                stream: format!("ferry-test:{name}"),
                max_length: None,
            }),
            Broker::SqlPostgres => TopicTarget::Sql(SqlTarget {
                table: format!("queue_{name}"),
                queue: "orders".into(),
            }),
        };
        let url = match broker {
            Broker::Rabbitmq => RABBITMQ,
            Broker::Nats => NATS,
            Broker::Redis => REDIS,
            Broker::SqlPostgres => POSTGRES,
        };
        Self {
            topic: TopicConfig {
                name: format!("orders-{name}"),
                url: SecretSource::Value(url.to_owned()),
                provision: true,
                target,
            },
            dead_letter_table: format!("dlq_{name}"),
            idempotency_table: format!("processed_{name}"),
            name,
        }
    }

    /// A consumer config with a fast retry policy (`max_attempts`, 20 ms doubling to 200 ms,
    /// equal jitter), PostgreSQL idempotency and dead-letter tables.
    pub fn config(&self, sink_url: &str, max_attempts: i32, ordering: Ordering) -> ConsumerConfig {
        let database = |table: &str| DatabaseConfig {
            engine: DatabaseEngine::Postgres,
            url: SecretSource::Value(POSTGRES.to_owned()),
            table: table.to_owned(),
        };
        ConsumerConfig {
            consumer: ConsumerIdentity {
                namespace: "test".into(),
                name: self.name.clone(),
            },
            topic: self.topic.clone(),
            event_types: Vec::new(),
            sink: SinkConfig {
                url: sink_url.to_owned(),
                timeout: ApiDuration::from_secs(5),
            },
            concurrency: 8,
            ordering,
            idempotency: Some(IdempotencyConfig::Database {
                database: database(&self.idempotency_table),
                window: ApiDuration::from_secs(3600),
            }),
            retry: fast_policy(max_attempts),
            dead_letter: Some(DeadLetterConfig::Database(database(
                &self.dead_letter_table,
            ))),
            http: HttpConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            },
            ack_timeout: Some(ApiDuration::from_secs(3)),
        }
    }

    pub fn origin(&self) -> String {
        format!("consumer/test/{}", self.name)
    }

    /// Publishes with Ferry's publisher and checks that every message was confirmed.
    pub async fn publish(&self, envelopes: &[Envelope]) {
        let publisher = broker::connect(&self.topic)
            .await
            .expect("connect publisher");
        // NATS publishes on the routing key as subject, which must be inside this test's
        // stream (streams may not share subjects).
        let envelopes: Vec<Envelope> = envelopes
            .iter()
            .cloned()
            .map(|mut envelope| {
                if let TopicTarget::Nats(_) = self.topic.target {
                    envelope.routing_key = format!("{}.{}", self.name, envelope.routing_key);
                }
                envelope
            })
            .collect();
        for chunk in envelopes.chunks(200) {
            let outcomes = publisher.publish(chunk).await.expect("publish");
            assert!(
                outcomes
                    .iter()
                    .all(|outcome| *outcome == Outcome::Confirmed),
                "not every message was confirmed: {outcomes:?}"
            );
        }
        publisher.close().await;
    }

    /// Dead letters of this consumer: (message id, attempts, category, HTTP status).
    pub async fn dead_letters(&self) -> Vec<(String, i32, String, Option<i32>)> {
        let mut connection = PgConnection::connect(POSTGRES).await.expect("connect");
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(&self.dead_letter_table)
            .fetch_one(&mut connection)
            .await
            .expect("look up the table");
        if exists.is_none() {
            return Vec::new();
        }
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT message_id, attempts, error_category, http_status FROM {} WHERE origin = $1 ORDER BY message_id",
            self.dead_letter_table
        )))
        .bind(self.origin())
        .fetch_all(&mut connection)
        .await
        .expect("read dead letters")
    }

    /// Dead letters of this consumer: (message id, status, replay count).
    pub async fn dead_letter_statuses(&self) -> Vec<(String, String, i32)> {
        let mut connection = PgConnection::connect(POSTGRES).await.expect("connect");
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT message_id, status, replay_count FROM {} WHERE origin = $1 ORDER BY message_id",
            self.dead_letter_table
        )))
        .bind(self.origin())
        .fetch_all(&mut connection)
        .await
        .expect("read dead letters")
    }

    /// Removes the topic's broker objects and the tables.
    pub async fn cleanup(&self) {
        let group = format!("ferry.test.{}", self.name);
        match &self.topic.target {
            TopicTarget::Rabbitmq(target) => {
                if let Ok(connection) =
                    lapin::Connection::connect(RABBITMQ, lapin::ConnectionProperties::default())
                        .await
                    && let Ok(channel) = connection.create_channel().await
                {
                    let queues = std::iter::once(group.clone()).chain(
                        ferry::broker::rabbitmq::subscriber::retry_queue_names(&group),
                    );
                    for queue in queues {
                        let _ = channel
                            .queue_delete(queue.as_str().into(), Default::default())
                            .await;
                    }
                    let _ = channel
                        .exchange_delete(target.exchange.as_str().into(), Default::default())
                        .await;
                    let _ = connection.close(200, "done".into()).await;
                }
            }
            TopicTarget::Nats(target) => {
                if let Ok(client) = async_nats::connect(NATS).await {
                    let _ = async_nats::jetstream::new(client)
                        .delete_stream(&target.stream)
                        .await;
                }
            }
            TopicTarget::Redis(target) => {
                if let Ok(client) = redis::Client::open(REDIS)
                    && let Ok(mut connection) = client.get_multiplexed_async_connection().await
                {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{}*", target.stream))
                        .query_async(&mut connection)
                        .await
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<i64, _> = redis::cmd("DEL")
                            .arg(keys)
                            .query_async(&mut connection)
                            .await;
                    }
                }
            }
            TopicTarget::Sql(target) => drop_tables_like(&target.table).await,
        }
        drop_tables_like(&self.dead_letter_table).await;
        drop_tables_like(&self.idempotency_table).await;
    }
}

/// Drops the table and any table whose name starts with it (state and history tables).
async fn drop_tables_like(table: &str) {
    let Ok(mut connection) = PgConnection::connect(POSTGRES).await else {
        return;
    };
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE tablename LIKE $1 || '%'")
            .bind(table.to_lowercase())
            .fetch_all(&mut connection)
            .await
            .unwrap_or_default();
    for table in tables {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {table} CASCADE"
        )))
        .execute(&mut connection)
        .await;
    }
}

pub fn fast_policy(max_attempts: i32) -> RetryPolicySpec {
    RetryPolicySpec {
        max_attempts,
        initial_backoff: ApiDuration::from_millis(20),
        multiplier: 2.0,
        max_backoff: ApiDuration::from_millis(200),
        jitter: Jitter::Equal,
        attempt_timeout: ApiDuration::from_secs(5),
        retry_on: RetryOn::default(),
        honor_retry_after: true,
    }
}

/// A consumer running in this test process.
pub struct Running {
    pub address: SocketAddr,
    stop: CancellationToken,
    consumer: Option<RunningConsumer>,
}

impl Running {
    /// Starts the consumer and waits until it has subscribed (its queue or group exists).
    pub async fn start(config: ConsumerConfig) -> Self {
        let stop = CancellationToken::new();
        let consumer = consumer::start(config, stop.clone())
            .await
            .expect("start the consumer");
        let running = Self {
            address: consumer.address,
            stop,
            consumer: Some(consumer),
        };
        running
            .wait_status("the consumer to subscribe", |status| {
                status["brokerConnected"] == true && status["ready"] == true
            })
            .await;
        running
    }

    pub async fn status(&self) -> serde_json::Value {
        let response = reqwest::get(format!("http://{}/status", self.address))
            .await
            .expect("GET /status");
        let body = response.bytes().await.expect("status body");
        serde_json::from_slice(&body).expect("status JSON")
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.address))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn wait_status(&self, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status().await;
            if done(&status) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the consumer as SIGTERM would and waits for it.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(consumer) = self.consumer.take() {
            consumer.wait().await.expect("the consumer stops cleanly");
        }
    }
}
