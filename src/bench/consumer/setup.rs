//! What a consumer benchmark creates and hands its consumer: the messages (as the relay would
//! publish them), one consumer group per phase on its own destination, the consumer config,
//! the idempotency store's names, and the removal of all of it.

use std::net::SocketAddr;

use chrono::Utc;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::super::{
    BenchError, BrokerArg, ConsumerBenchArgs, DedupArg, OrderingArg,
    destination::Destination,
    setup::{self, AGGREGATE_TYPE, DATABASE_ENV, EVENT_TYPE, RelayShape},
};
use crate::{
    api::{DatabaseEngine, Duration as ApiDuration, Ordering, retry_policy::RetryPolicySpec},
    broker::{
        self, Outcome,
        rabbitmq::subscriber::retry_queue_names,
        subscriber::{self, BrokerLag, SubscriptionConfig},
    },
    config::{
        ConsumerConfig, ConsumerIdentity, DatabaseConfig, HttpConfig, IdempotencyConfig,
        SecretSource, SinkConfig,
    },
    consumer,
    message::{Envelope, OutboxEvent, envelope},
    outbox::trusted,
    relay::Router,
};

/// The child consumer reads the Redis idempotency store's URL from here.
pub const REDIS_ENV: &str = "FERRY_BENCH_REDIS_URL";
/// Messages per call to the publisher, as the relay's default batch.
const PUBLISH_CHUNK: usize = 500;
/// Keys per `SCAN` step and `UNLINK` when removing the Redis idempotency records.
const SCAN_COUNT: usize = 1_000;

/// The names one run uses.
pub struct Names {
    /// Suffix of every name, from `setup::unique_suffix`.
    pub suffix: String,
    /// The PostgreSQL idempotency table.
    pub table: String,
    /// The Redis idempotency key prefix (the store appends `<origin>:<id>`).
    pub key_prefix: String,
}

impl Names {
    pub fn new(suffix: String) -> Self {
        Self {
            table: format!("bench_processed_{suffix}"),
            key_prefix: format!("ferry-bench:{suffix}:processed:"),
            suffix,
        }
    }

    /// A consumer identity for phase `tag`: Kubernetes-style, so the group names every broker
    /// derives from it are valid (`ferry.bench.<tag>-<pid>-<millis>`).
    pub fn identity(&self, tag: &str) -> ConsumerIdentity {
        ConsumerIdentity {
            namespace: "bench".into(),
            name: format!("{tag}-{}", self.suffix.replace('_', "-")),
        }
    }
}

/// The `n`th message's outbox row, with the payload and headers of `ferry bench relay`'s rows.
pub fn events(messages: u64, keys: u64, payload_bytes: usize) -> Vec<OutboxEvent> {
    let headers = setup::headers_json();
    let now = Utc::now();
    (0..messages)
        .map(|n| {
            let key = setup::key_of(n, keys);
            OutboxEvent {
                seq: i64::try_from(n + 1).unwrap_or(i64::MAX),
                id: Uuid::now_v7().to_string(),
                aggregate_type: AGGREGATE_TYPE.into(),
                payload: setup::payload(n, &key, payload_bytes).into_bytes(),
                aggregate_id: key,
                event_type: EVENT_TYPE.into(),
                headers: Some(headers.clone()),
                created_at: now,
                defect: None,
            }
        })
        .collect()
}

/// Publishes `events` to `destination` with Ferry's publisher, encoded as the relay encodes
/// them (its router, for the routing key or subject, and `message::envelope`), and checks that
/// the broker confirmed every one. Returns the mean message size (headers and body).
pub async fn publish(
    destination: &Destination,
    events: &[OutboxEvent],
    suffix: &str,
) -> Result<usize, BenchError> {
    let topic = destination.topic(SecretSource::Value(destination.url().to_owned()));
    let relay_config = setup::relay_config(
        &format!("bench_outbox_{suffix}"),
        topic.clone(),
        &RelayShape {
            batch_size: PUBLISH_CHUNK as u32,
            workers: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        },
    );
    let router = Router::new(&relay_config);
    let source = relay_config.source.cloud_event_source();
    let publisher = broker::connect(&topic).await?;
    let mut bytes = 0;
    for chunk in events.chunks(PUBLISH_CHUNK) {
        let envelopes = chunk
            .iter()
            .map(|event| {
                let routing_key = router
                    .route(event)
                    .map(|route| route.routing_key)
                    .unwrap_or_default();
                envelope(event, &source, routing_key).map_err(BenchError::from)
            })
            .collect::<Result<Vec<Envelope>, _>>()?;
        bytes += envelopes.iter().map(Envelope::size).sum::<usize>();
        let outcomes = publisher.publish(&envelopes).await?;
        if let Some(refused) = outcomes.iter().find_map(|outcome| match outcome {
            Outcome::Confirmed => None,
            Outcome::Rejected(reason) => Some(reason),
        }) {
            publisher.close().await;
            return Err(BenchError::Check(format!(
                "{} refused a message: {refused}",
                destination.name
            )));
        }
    }
    publisher.close().await;
    Ok(bytes / events.len().max(1))
}

/// The benchmark consumer's config: `topic` from `destination` (URL from `BROKER_ENV`), the
/// sink, `--concurrency`, `--ordering`, the chosen idempotency store (URL from the environment)
/// with the Consumer's default window, the default retry policy, no dead-letter queue (the
/// sink never fails), endpoints on `listen`.
pub fn consumer_config(
    args: &ConsumerBenchArgs,
    names: &Names,
    identity: ConsumerIdentity,
    destination: &Destination,
    sink_url: &str,
    listen: SocketAddr,
) -> ConsumerConfig {
    let retry = RetryPolicySpec::default();
    let window = ApiDuration::from_secs(7 * 24 * 3600);
    let idempotency = match args.dedup {
        DedupArg::Postgres => IdempotencyConfig::Database {
            database: DatabaseConfig {
                engine: DatabaseEngine::Postgres,
                url: SecretSource::Env(DATABASE_ENV.into()),
                table: names.table.clone(),
            },
            window,
        },
        DedupArg::Redis => IdempotencyConfig::Redis {
            url: SecretSource::Env(REDIS_ENV.into()),
            key_prefix: names.key_prefix.clone(),
            window,
        },
    };
    ConsumerConfig {
        consumer: identity,
        topic: destination.topic(SecretSource::Env(setup::BROKER_ENV.into())),
        event_types: Vec::new(),
        sink: SinkConfig {
            url: sink_url.to_owned(),
            timeout: retry.attempt_timeout,
        },
        concurrency: args.concurrency,
        ordering: match args.ordering {
            OrderingArg::None => Ordering::None,
            OrderingArg::PerKey => Ordering::PerKey,
        },
        idempotency: Some(idempotency),
        retry,
        dead_letter: None,
        http: HttpConfig { listen },
        ack_timeout: None,
    }
}

/// The consumer group of `config` as the consumer itself subscribes (same prefetch and ack
/// timeout), on `destination` with its URL given directly.
pub fn group_of(config: &ConsumerConfig, destination: &Destination) -> Group {
    let mut topic = config.topic.clone();
    topic.url = SecretSource::Value(destination.url().to_owned());
    Group {
        topic,
        subscription: consumer::subscription(config, "ferry-bench"),
    }
}

/// A consumer group on one destination.
pub struct Group {
    pub topic: crate::config::TopicConfig,
    pub subscription: SubscriptionConfig,
}

impl Group {
    /// Subscribes once with `provision` on, so that the group's queue and binding, durable
    /// consumer or Redis group exist (declared by Ferry's own subscriber, exactly as the
    /// consumer will find them) before anything is published, then lets go.
    pub async fn prepare(&self) -> Result<(), BenchError> {
        let subscriber = subscriber::subscribe(&self.topic, &self.subscription).await?;
        subscriber.close().await;
        Ok(())
    }

    /// What the broker says the group has not acknowledged yet.
    pub async fn lag(&self) -> Result<BrokerLag, BenchError> {
        let subscriber = subscriber::subscribe(&self.topic, &self.subscription).await?;
        let lag = subscriber.lag().await;
        subscriber.close().await;
        Ok(lag?)
    }

    /// The RabbitMQ queue of the group: `Destination::remove` deletes it with the exchange.
    pub fn queue(&self) -> String {
        self.subscription.group.clone()
    }
}

/// Removes what a group leaves beyond its destination: RabbitMQ delay queues, the Redis retry
/// schedule and attempt counts (JetStream consumers go with their stream). Failures are logged.
pub async fn remove_group_leftovers(broker: BrokerArg, url: &str, stream: &str, group: &str) {
    let removed: Result<(), BenchError> = async {
        match broker {
            BrokerArg::Rabbitmq => {
                let connection =
                    lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
                let channel = connection.create_channel().await?;
                for queue in retry_queue_names(group) {
                    channel
                        .queue_delete(queue.as_str().into(), Default::default())
                        .await?;
                }
                let _ = connection.close(200, "removed".into()).await;
            }
            BrokerArg::Redis => {
                let client = redis::Client::open(url)?;
                let mut connection = client.get_multiplexed_async_connection().await?;
                let _: i64 = redis::cmd("DEL")
                    .arg(format!("{stream}:ferry:{group}:retry"))
                    .arg(format!("{stream}:ferry:{group}:attempts"))
                    .query_async(&mut connection)
                    .await?;
            }
            BrokerArg::Nats => {}
        }
        Ok(())
    }
    .await;
    if let Err(error) = removed {
        tracing::warn!(%error, group, "cannot remove what a benchmark consumer group left");
    }
}

/// Done records in the idempotency store, to check that every delivery was recorded.
pub async fn dedup_records(args: &ConsumerBenchArgs, names: &Names) -> Result<u64, BenchError> {
    match args.dedup {
        DedupArg::Postgres => {
            let mut connection = PgConnection::connect(&args.database_url).await?;
            let done: i64 = sqlx::query_scalar(trusted(format!(
                "SELECT count(*) FROM {} WHERE state = 'done'",
                names.table
            )))
            .fetch_one(&mut connection)
            .await?;
            Ok(u64::try_from(done).unwrap_or(0))
        }
        DedupArg::Redis => {
            let keys =
                redis_keys(&args.redis_url, &names.key_prefix, |_, _| async { Ok(()) }).await?;
            Ok(keys)
        }
    }
}

/// Removes the idempotency table or keys. Failures are logged.
pub async fn remove_dedup(args: &ConsumerBenchArgs, names: &Names) {
    let removed: Result<(), BenchError> = async {
        match args.dedup {
            DedupArg::Postgres => {
                let mut connection = PgConnection::connect(&args.database_url).await?;
                sqlx::raw_sql(trusted(format!("DROP TABLE IF EXISTS {}", names.table)))
                    .execute(&mut connection)
                    .await?;
            }
            DedupArg::Redis => {
                redis_keys(
                    &args.redis_url,
                    &names.key_prefix,
                    |mut connection, keys| async move {
                        let _: i64 = redis::cmd("UNLINK")
                            .arg(keys)
                            .query_async(&mut connection)
                            .await?;
                        Ok(())
                    },
                )
                .await?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(error) = removed {
        tracing::warn!(%error, "cannot remove the benchmark's idempotency records");
    }
}

/// Walks the keys under `prefix` with `SCAN`, handing each step's keys to `each`; returns how
/// many there were.
async fn redis_keys<F, Fut>(url: &str, prefix: &str, each: F) -> Result<u64, BenchError>
where
    F: Fn(redis::aio::MultiplexedConnection, Vec<String>) -> Fut,
    Fut: Future<Output = Result<(), redis::RedisError>>,
{
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{}*", escape_glob(prefix));
    let mut cursor: u64 = 0;
    let mut found = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(&mut connection)
            .await?;
        found += keys.len() as u64;
        if !keys.is_empty() {
            each(connection.clone(), keys).await?;
        }
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

/// `prefix` as a literal in a Redis glob pattern.
fn escape_glob(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_in_a_key_prefix_match_only_themselves() {
        assert_eq!(escape_glob("ferry-bench:1_2:p:"), "ferry-bench:1_2:p:");
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn events_interleave_keys_and_carry_json_payloads_of_the_asked_size() {
        let events = events(4, 2, 256);
        let keys: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
        assert_eq!(
            keys,
            ["customer-0", "customer-1", "customer-0", "customer-1"]
        );
        assert!(events.iter().all(|e| e.payload.len() == 256));
        let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn group_names_are_valid_for_every_broker() {
        let names = Names::new("123_456".into());
        assert_eq!(names.table, "bench_processed_123_456");
        let identity = names.identity("con");
        assert_eq!(identity.group(), "ferry.bench.con-123-456");
        assert!(!identity.group().contains('_'));
    }
}
