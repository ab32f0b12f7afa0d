//! One fresh place on a broker for a run to publish to: a topic exchange with a durable queue
//! bound to `#` (RabbitMQ), a file-backed JetStream stream (NATS), or a stream key (Redis);
//! how many messages it holds, and its removal.

use lapin::{
    Connection, ConnectionProperties, ExchangeKind,
    options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::FieldTable,
};

use super::{BenchError, BrokerArg};
use crate::{
    api::{
        Duration as ApiDuration,
        broker_topic::{ExchangeType, NatsStorage},
    },
    broker::{self, nats, rabbitmq, redis as redis_broker},
    config::{NatsTarget, RabbitMqTarget, RedisTarget, SecretSource, TopicConfig, TopicTarget},
    message::Envelope,
};

/// A destination on one broker. Names are made from a run's suffix and a tag of fixed length,
/// so the raw and relay destinations of one run give messages of the same size.
pub struct Destination {
    pub broker: BrokerArg,
    url: String,
    /// The exchange, stream or key name.
    pub name: String,
    /// RabbitMQ: the durable queue bound to every routing key of the exchange.
    pub queue: Option<String>,
    target: TopicTarget,
}

impl Destination {
    pub fn new(broker: BrokerArg, url: &str, suffix: &str, tag: &str) -> Self {
        let (name, queue, target) = match broker {
            BrokerArg::Rabbitmq => {
                let exchange = format!("ferry-bench-{suffix}-{tag}");
                let target = TopicTarget::Rabbitmq(RabbitMqTarget {
                    exchange: exchange.clone(),
                    exchange_type: ExchangeType::Topic,
                    routing_key: "{aggregateType}.{eventType}".into(),
                });
                (exchange.clone(), Some(format!("{exchange}-all")), target)
            }
            BrokerArg::Nats => {
                let stream = format!("FERRY_BENCH_{suffix}_{}", tag.to_ascii_uppercase());
                let prefix = format!("ferry_bench_{suffix}_{tag}");
                let target = TopicTarget::Nats(NatsTarget {
                    stream: stream.clone(),
                    subjects: vec![format!("{prefix}.>")],
                    subject: format!("{prefix}.{{aggregateType}}.{{eventType}}"),
                    replicas: 1,
                    duplicate_window: ApiDuration::from_secs(120),
                    max_age: None,
                    storage: NatsStorage::File,
                });
                (stream, None, target)
            }
            BrokerArg::Redis => {
                let key = format!("ferry-bench:{suffix}:{tag}");
                let target = TopicTarget::Redis(RedisTarget {
                    stream: key.clone(),
                    max_length: None,
                });
                (key, None, target)
            }
        };
        Self {
            broker,
            url: url.to_owned(),
            name,
            queue,
            target,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The topic as a relay config names it, with the URL read from `url`.
    pub fn topic(&self, url: SecretSource) -> TopicConfig {
        TopicConfig {
            name: self.name.clone(),
            url,
            provision: true,
            target: self.target.clone(),
        }
    }

    /// Declares what must exist before the first publish: the exchange and its bound queue
    /// (so that mandatory publishes are routed and the queue depth counts them), or the
    /// stream with the settings the relay would give it. Redis needs nothing.
    pub async fn prepare(&self) -> Result<(), BenchError> {
        match self.broker {
            BrokerArg::Rabbitmq => {
                let (connection, channel) = self.amqp().await?;
                let exchange = self.name.as_str();
                let queue = self.queue_name();
                channel
                    .exchange_declare(
                        exchange.into(),
                        ExchangeKind::Topic,
                        ExchangeDeclareOptions {
                            durable: true,
                            ..ExchangeDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                channel
                    .queue_declare(
                        queue.into(),
                        QueueDeclareOptions::durable(),
                        FieldTable::default(),
                    )
                    .await?;
                channel
                    .queue_bind(
                        queue.into(),
                        exchange.into(),
                        "#".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                let _ = connection.close(200, "prepared".into()).await;
            }
            BrokerArg::Nats => {
                // The publisher's own connect creates the stream exactly as the relay would.
                let publisher =
                    broker::connect(&self.topic(SecretSource::Value(self.url.clone()))).await?;
                publisher.close().await;
            }
            BrokerArg::Redis => {}
        }
        Ok(())
    }

    /// The raw client's publish of `messages`, with the broker's confirmations.
    pub async fn publish_raw(&self, messages: &[Envelope]) -> Result<(), BenchError> {
        match &self.target {
            TopicTarget::Rabbitmq(target) => {
                rabbitmq::publish_raw(&self.url, target, messages).await?
            }
            TopicTarget::Nats(target) => nats::publish_raw(&self.url, target, messages).await?,
            TopicTarget::Redis(target) => {
                redis_broker::publish_raw(&self.url, target, messages).await?
            }
            TopicTarget::Sql(_) => {
                return Err(BenchError::Check("SQL queues are not benchmarked".into()));
            }
        }
        Ok(())
    }

    /// Messages the destination holds: queue depth, stream message count or XLEN.
    pub async fn count(&self) -> Result<u64, BenchError> {
        match self.broker {
            BrokerArg::Rabbitmq => {
                let (connection, channel) = self.amqp().await?;
                let queue = channel
                    .queue_declare(
                        self.queue_name().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                let _ = connection.close(200, "counted".into()).await;
                Ok(u64::from(queue.message_count()))
            }
            BrokerArg::Nats => {
                let client = async_nats::connect(&self.url)
                    .await
                    .map_err(BenchError::nats)?;
                let jetstream = async_nats::jetstream::new(client);
                let mut stream = jetstream
                    .get_stream(&self.name)
                    .await
                    .map_err(BenchError::nats)?;
                let info = stream.info().await.map_err(BenchError::nats)?;
                Ok(info.state.messages)
            }
            BrokerArg::Redis => {
                let mut connection = self.redis().await?;
                let length: u64 = redis::cmd("XLEN")
                    .arg(&self.name)
                    .query_async(&mut connection)
                    .await?;
                Ok(length)
            }
        }
    }

    /// Deletes the queue and exchange, the stream, or the key. Missing ones are not an error.
    pub async fn remove(&self) -> Result<(), BenchError> {
        match self.broker {
            BrokerArg::Rabbitmq => {
                let (connection, channel) = self.amqp().await?;
                channel
                    .queue_delete(self.queue_name().into(), QueueDeleteOptions::default())
                    .await?;
                channel
                    .exchange_delete(self.name.as_str().into(), ExchangeDeleteOptions::default())
                    .await?;
                let _ = connection.close(200, "removed".into()).await;
            }
            BrokerArg::Nats => {
                let client = async_nats::connect(&self.url)
                    .await
                    .map_err(BenchError::nats)?;
                let jetstream = async_nats::jetstream::new(client);
                if let Err(error) = jetstream.delete_stream(&self.name).await {
                    // A stream that was never created (the run failed early) is fine.
                    if !error.to_string().contains("not found") {
                        return Err(BenchError::nats(error));
                    }
                }
            }
            BrokerArg::Redis => {
                let mut connection = self.redis().await?;
                let _: i64 = redis::cmd("DEL")
                    .arg(&self.name)
                    .query_async(&mut connection)
                    .await?;
            }
        }
        Ok(())
    }

    fn queue_name(&self) -> &str {
        self.queue.as_deref().unwrap_or(&self.name)
    }

    async fn amqp(&self) -> Result<(Connection, lapin::Channel), BenchError> {
        let connection = Connection::connect(
            &self.url,
            ConnectionProperties::default().with_connection_name("ferry-bench".into()),
        )
        .await?;
        let channel = connection.create_channel().await?;
        Ok((connection, channel))
    }

    async fn redis(&self) -> Result<redis::aio::MultiplexedConnection, BenchError> {
        let client = redis::Client::open(self.url.as_str())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }
}

/// Removes what a run made: its tables in PostgreSQL and its destinations. Failures are
/// logged, not raised, so that every step gets its turn.
pub async fn clean_up(
    database_url: &str,
    outbox: &str,
    orders: Option<&str>,
    destinations: &[&Destination],
) {
    if let Err(error) = super::setup::drop_tables(database_url, outbox, orders).await {
        tracing::warn!(%error, table = outbox, "cannot drop the benchmark tables");
    }
    for destination in destinations {
        if let Err(error) = destination.remove().await {
            tracing::warn!(%error, destination = %destination.name, "cannot remove a benchmark destination");
        }
    }
}
