//! Builds a pipeline for a test: a unique outbox (and business) table, the relay config, the
//! producer that commits orders with their events, and the check of what arrived.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use ferry::{
    api::{
        DatabaseEngine, Duration as ApiDuration, Ordering,
        broker_topic::{ExchangeType, NatsStorage},
        outbox_source::CleanupMode,
        retry_policy::{Jitter, RetryPolicySpec},
    },
    config::{
        CaptureConfig, CleanupConfig, DatabaseConfig, DeadLetterConfig, HttpConfig, NatsTarget,
        RabbitMqTarget, RedisTarget, RelayConfig, RouteConfig, SecretSource, SourceIdentity,
        SqlTarget, TopicConfig, TopicTarget,
    },
    outbox::producer::{NewEvent, enqueue},
    relay,
};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use crate::support::unique_name;

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/ferry_test";
pub const MYSQL: &str = "mysql://root@127.0.0.1:3306/ferry_test";
pub const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const NATS: &str = "nats://127.0.0.1:4222";
pub const REDIS: &str = "redis://127.0.0.1:6379";

/// The source database of one test: its engine, URL and a unique outbox table.
pub struct Source {
    pub engine: DatabaseEngine,
    pub url: String,
    pub table: String,
    pub orders: String,
    _dir: Option<tempfile::TempDir>,
}

impl Source {
    pub async fn new(engine: DatabaseEngine) -> Self {
        Self::at(engine, None).await
    }

    /// A source on the server at `url` (a private instance) instead of the shared one.
    pub async fn at(engine: DatabaseEngine, url: Option<String>) -> Self {
        let suffix = unique_name("t").replace('-', "_");
        let (url, dir) = match engine {
            DatabaseEngine::Postgres => (url.unwrap_or_else(|| POSTGRES.to_owned()), None),
            DatabaseEngine::Mysql => (MYSQL.to_owned(), None),
            DatabaseEngine::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                (
                    format!("sqlite://{}/shop.db", dir.path().display()),
                    Some(dir),
                )
            }
        };
        let source = Self {
            engine,
            url,
            table: format!("outbox_{suffix}"),
            orders: format!("orders_{suffix}"),
            _dir: dir,
        };
        ferry::outbox::migrate::migrate(engine, &source.url, &source.table)
            .await
            .expect("migrate outbox");
        source.execute(&format!("CREATE TABLE {} (id VARCHAR(64) PRIMARY KEY, customer VARCHAR(64) NOT NULL, n INTEGER NOT NULL)", source.orders)).await;
        source
    }

    pub fn database(&self) -> DatabaseConfig {
        DatabaseConfig {
            engine: self.engine,
            url: SecretSource::Value(self.url.clone()),
            table: self.table.clone(),
        }
    }

    pub async fn execute(&self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self.engine {
            DatabaseEngine::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::raw_sql(sql).execute(&mut c).await.expect("execute");
            }
            DatabaseEngine::Mysql => {
                let mut c = sqlx::MySqlConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::raw_sql(sql).execute(&mut c).await.expect("execute");
            }
            DatabaseEngine::Sqlite => {
                let pool = ferry::outbox::sqlite::open_pool(&self.url)
                    .await
                    .expect("pool");
                sqlx::raw_sql(sql).execute(&pool).await.expect("execute");
            }
        }
    }

    /// Commits `count` orders, each in its own transaction with its outbox event, keys
    /// round-robin over `keys` customers. Returns (message id, key) in commit order.
    pub async fn commit_orders(
        &self,
        first: usize,
        count: usize,
        keys: usize,
    ) -> Vec<(String, String)> {
        let mut committed = Vec::with_capacity(count);
        macro_rules! each_order {
            ($pool:expr, $insert:expr) => {
                for n in first..first + count {
                    let key = format!("customer-{}", n % keys);
                    let event = NewEvent::json("Order", &key, "order.created", &serde_json::json!({"order": n, "customer": key})).expect("json")
                        .with_header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
                    let mut tx = $pool.begin().await.expect("begin");
                    sqlx::query(sqlx::AssertSqlSafe(format!($insert, self.orders))).bind(format!("order-{n}")).bind(&key).bind(n as i32).execute(&mut *tx).await.expect("business insert");
                    enqueue(&mut *tx, &self.table, &event).await.expect("enqueue");
                    tx.commit().await.expect("commit");
                    committed.push((event.id.to_string(), key));
                }
            };
        }
        match self.engine {
            DatabaseEngine::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url).await.expect("pool");
                each_order!(pool, "INSERT INTO {} (id, customer, n) VALUES ($1, $2, $3)");
            }
            DatabaseEngine::Mysql => {
                let pool = sqlx::MySqlPool::connect(&self.url).await.expect("pool");
                each_order!(pool, "INSERT INTO {} (id, customer, n) VALUES (?, ?, ?)");
            }
            DatabaseEngine::Sqlite => {
                let pool = ferry::outbox::sqlite::open_pool(&self.url)
                    .await
                    .expect("pool");
                each_order!(pool, "INSERT INTO {} (id, customer, n) VALUES (?, ?, ?)");
            }
        }
        committed
    }
}

/// A retry policy fast enough for tests.
pub fn quick_retries() -> RetryPolicySpec {
    RetryPolicySpec {
        initial_backoff: ApiDuration::from_millis(50),
        multiplier: 2.0,
        max_backoff: ApiDuration::from_millis(500),
        jitter: Jitter::Full,
        ..RetryPolicySpec::default()
    }
}

pub fn rabbitmq_topic(exchange: &str) -> TopicConfig {
    TopicConfig {
        name: exchange.to_owned(),
        url: SecretSource::Value(RABBITMQ.to_owned()),
        provision: true,
        target: TopicTarget::Rabbitmq(RabbitMqTarget {
            exchange: exchange.to_owned(),
            exchange_type: ExchangeType::Topic,
            routing_key: "{aggregateType}.{eventType}".to_owned(),
        }),
    }
}

pub fn nats_topic(url: &str, stream: &str) -> TopicConfig {
    TopicConfig {
        name: stream.to_owned(),
        url: SecretSource::Value(url.to_owned()),
        provision: true,
        target: TopicTarget::Nats(NatsTarget {
            stream: stream.to_owned(),
            subjects: vec![format!("{stream}.>")],
            subject: format!("{stream}.{{aggregateType}}.{{eventType}}"),
            replicas: 1,
            duplicate_window: ApiDuration::from_secs(120),
            max_age: None,
            storage: NatsStorage::File,
        }),
    }
}

pub fn redis_topic(url: &str, stream: &str) -> TopicConfig {
    TopicConfig {
        name: stream.to_owned(),
        url: SecretSource::Value(url.to_owned()),
        provision: true,
        target: TopicTarget::Redis(RedisTarget {
            stream: stream.to_owned(),
            max_length: None,
        }),
    }
}

pub fn sql_topic(url: &str, table: &str, queue: &str) -> TopicConfig {
    TopicConfig {
        name: queue.to_owned(),
        url: SecretSource::Value(url.to_owned()),
        provision: true,
        target: TopicTarget::Sql(SqlTarget {
            table: table.to_owned(),
            queue: queue.to_owned(),
        }),
    }
}

/// A relay config with one catch-all route to `topic`.
pub fn relay_config(source: &Source, topic: TopicConfig) -> RelayConfig {
    let route = RouteConfig {
        name: "all".into(),
        aggregate_type: None,
        event_type: None,
        topic: topic.name.clone(),
        routing_key: None,
    };
    RelayConfig {
        source: SourceIdentity {
            namespace: "test".into(),
            name: source.table.clone(),
        },
        database: source.database(),
        capture: CaptureConfig {
            poll_interval: ApiDuration::from_millis(100),
            batch_size: 100,
            max_message_bytes: 1024 * 1024,
            notify: source.engine == DatabaseEngine::Postgres,
            workers: 2,
        },
        ordering: Ordering::PerKey,
        cleanup: CleanupConfig {
            mode: CleanupMode::Delete,
            retention: ApiDuration::from_secs(0),
            purge_batch_size: 1000,
        },
        routes: vec![route],
        topics: BTreeMap::from([(topic.name.clone(), topic)]),
        retry: quick_retries(),
        dead_letter: None::<DeadLetterConfig>,
        http: HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        },
        transactional: None,
    }
}

/// A relay running in this process.
pub struct InProcessRelay {
    pub address: SocketAddr,
    stop: CancellationToken,
    running: Option<relay::RunningRelay>,
}

impl InProcessRelay {
    pub async fn start(config: RelayConfig) -> Self {
        let stop = CancellationToken::new();
        let running = relay::start(config, stop.clone())
            .await
            .expect("relay starts");
        Self {
            address: running.address,
            stop,
            running: Some(running),
        }
    }

    pub async fn status(&self) -> serde_json::Value {
        http_get_json(self.address, "/status").await
    }

    /// Asks the relay to stop and waits until it has (its in-flight batch finished).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(30), running.wait())
                .await
                .expect("relay stops within 30s")
                .expect("the relay stops cleanly");
        }
    }
}

impl Drop for InProcessRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// GETs a JSON document from a workload's endpoint (a tiny HTTP/1.0 client: no extra crate).
pub async fn http_get_json(address: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http_get(address, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON body")
}

pub async fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    crate::support::try_http_get(address, path)
        .await
        .unwrap_or_else(|| panic!("GET {path} from {address}: no answer"))
}
