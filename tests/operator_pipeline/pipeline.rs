//! One test's pipeline as a user would write it: the Secrets, OutboxSource, BrokerTopic,
//! RetryPolicy, DeadLetterQueue and Consumer manifests in a namespace of its own, over an
//! outbox table, an exchange and dead-letter and idempotency tables no other test uses; the
//! producer that commits outbox rows; and the removal of all of it when dropped.

use ferry::{api::DatabaseEngine, outbox::producer::NewEvent};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::support::unique_name;

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/ferry_test";
/// The password in the database URL the manifests' Secret holds (the shared server trusts
/// local connections, so any password works): no status, event, child object, log line or
/// output may show it.
pub const SECRET_PASSWORD: &str = "Pipe-pw-7e3b";
pub const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The resources' names (fixed: the namespace makes them unique).
pub const SOURCE: &str = "orders";
pub const CONSUMER: &str = "inventory";
/// `lag.maxMessages` of the Consumer.
pub const MAX_LAG: i64 = 5;

pub struct Pipeline {
    pub namespace: String,
    pub outbox_table: String,
    pub dead_letter_table: String,
    pub idempotency_table: String,
    pub exchange: String,
}

impl Pipeline {
    /// Unique names, and the outbox table created as `ferry outbox migrate` would.
    pub async fn new() -> Self {
        let suffix = unique_name("k");
        let pipeline = Self {
            namespace: format!("kubelet-{}", suffix.replace('_', "-")),
            outbox_table: format!("outbox_{suffix}"),
            dead_letter_table: format!("dlq_{suffix}"),
            idempotency_table: format!("processed_{suffix}"),
            exchange: format!("ferry-kubelet-{suffix}"),
        };
        ferry::outbox::migrate::migrate(DatabaseEngine::Postgres, POSTGRES, &pipeline.outbox_table)
            .await
            .expect("migrate the outbox table");
        pipeline
    }

    fn meta(&self, name: &str) -> Value {
        json!({"name": name, "namespace": self.namespace})
    }

    /// Every object of the pipeline, Consumer delivering to `sink_url`.
    pub fn manifests(&self, sink_url: &str) -> Vec<Value> {
        let secret = |name: &str, url: &str| {
            json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": self.meta(name),
                "type": "Opaque", "stringData": {"url": url},
            })
        };
        let database = |table: &str| json!({"engine": "postgres", "connection": {"secretRef": {"name": "db"}}, "table": table});
        vec![
            secret(
                "db",
                &POSTGRES.replace("postgres@", &format!("postgres:{SECRET_PASSWORD}@")),
            ),
            secret("rabbitmq", RABBITMQ),
            json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "BrokerTopic",
                "metadata": self.meta("orders"),
                "spec": {
                    "broker": "rabbitmq",
                    "connection": {"secretRef": {"name": "rabbitmq"}},
                    "provision": true,
                    "rabbitmq": {
                        "exchange": self.exchange,
                        "exchangeType": "topic",
                        "routingKey": "{aggregateType}.{eventType}",
                    },
                },
            }),
            json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "RetryPolicy",
                "metadata": self.meta("quick"),
                "spec": {
                    "maxAttempts": 1000,
                    "initialBackoff": "50ms",
                    "multiplier": 2,
                    "maxBackoff": "500ms",
                    "jitter": "Equal",
                    "attemptTimeout": "5s",
                },
            }),
            json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "DeadLetterQueue",
                "metadata": self.meta("dead-letters"),
                "spec": {
                    "store": {"database": database(&self.dead_letter_table)},
                    "retention": "720h",
                    "alert": {"depthThreshold": 0},
                },
            }),
            json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "OutboxSource",
                "metadata": self.meta(SOURCE),
                "spec": {
                    "database": database(&self.outbox_table),
                    "capture": {"pollInterval": "500ms", "notify": true},
                    "routes": [{
                        "name": "order-events",
                        "match": {"aggregateType": "Order"},
                        "topicRef": {"name": "orders"},
                    }],
                    "retryPolicyRef": {"name": "quick"},
                },
            }),
            json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "Consumer",
                "metadata": self.meta(CONSUMER),
                "spec": {
                    "topicRef": {"name": "orders"},
                    "sink": {"url": sink_url, "timeout": "5s"},
                    "concurrency": 8,
                    "idempotency": {
                        "database": database(&self.idempotency_table),
                        "window": "168h",
                    },
                    "retryPolicyRef": {"name": "quick"},
                    "deadLetterQueueRef": {"name": "dead-letters"},
                    "lag": {"maxMessages": MAX_LAG},
                },
            }),
        ]
    }

    /// Commits `count` order events, each in a transaction of its own; returns their ids (the
    /// CloudEvents `id` the sink sees), in commit order.
    pub async fn commit(&self, count: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(count);
        for n in 0..count {
            let key = format!("order-{}", n % 3);
            let event = NewEvent::json("Order", &key, "order.created", &json!({"n": n}))
                .expect("a JSON event");
            ids.push(self.commit_event(&event).await);
        }
        ids
    }

    /// Commits one event with SQL, as the service owning the outbox would.
    pub async fn commit_event(&self, event: &NewEvent) -> String {
        let mut connection = PgConnection::connect(POSTGRES)
            .await
            .expect("connect to PostgreSQL");
        let mut transaction = connection.begin().await.expect("begin");
        ferry::outbox::producer::enqueue(&mut *transaction, &self.outbox_table, event)
            .await
            .expect("insert the outbox row");
        transaction.commit().await.expect("commit");
        event.id.to_string()
    }
}

/// Cleans up even after a failed assertion: on a thread of its own with a runtime of its own,
/// since a drop cannot await (and the test's runtime may be shutting down).
impl Drop for Pipeline {
    fn drop(&mut self) {
        let leftovers = Leftovers {
            namespace: self.namespace.clone(),
            tables: [
                self.outbox_table.clone(),
                self.dead_letter_table.clone(),
                self.idempotency_table.clone(),
            ],
            exchange: self.exchange.clone(),
        };
        let cleanup = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(leftovers.remove());
            }
        });
        let _ = cleanup.join();
    }
}

/// What a pipeline leaves on the shared servers.
struct Leftovers {
    namespace: String,
    tables: [String; 3],
    exchange: String,
}

impl Leftovers {
    /// Drops the tables (and any table named after them) and the exchange and queues, best
    /// effort.
    async fn remove(self) {
        if let Ok(mut connection) = PgConnection::connect(POSTGRES).await {
            for prefix in &self.tables {
                let found: Vec<String> = sqlx::query_scalar(
                    "SELECT tablename::text FROM pg_tables WHERE tablename LIKE $1 || '%'",
                )
                .bind(prefix.to_lowercase())
                .fetch_all(&mut connection)
                .await
                .unwrap_or_default();
                for table in found {
                    let drop = format!("DROP TABLE IF EXISTS {table} CASCADE");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                        .execute(&mut connection)
                        .await;
                }
            }
        }
        let Ok(connection) =
            lapin::Connection::connect(RABBITMQ, lapin::ConnectionProperties::default()).await
        else {
            return;
        };
        if let Ok(channel) = connection.create_channel().await {
            let group = format!("ferry.{}.{CONSUMER}", self.namespace);
            let queues = std::iter::once(group.clone()).chain(
                ferry::broker::rabbitmq::subscriber::retry_queue_names(&group),
            );
            for queue in queues {
                let _ = channel
                    .queue_delete(queue.as_str().into(), Default::default())
                    .await;
            }
            let _ = channel
                .exchange_delete(self.exchange.as_str().into(), Default::default())
                .await;
        }
        let _ = connection.close(200, "done".into()).await;
    }
}
