//! Raw consumers of a destination for the latency benchmark: each notes the instant a message
//! reaches it, by `ce-id`, and keeps reading until stopped. Each is subscribed before
//! `start` returns, so nothing published afterwards can be missed.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use redis::{
    AsyncConnectionConfig,
    streams::{StreamReadOptions, StreamReadReply},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BenchError, BrokerArg, destination::Destination};

/// How long one `XREAD BLOCK` waits, so the loop notices `stop` soon.
const REDIS_BLOCK: Duration = Duration::from_millis(100);
/// Deliveries the RabbitMQ consumer may hold unacknowledged.
const PREFETCH: u16 = 1_000;

/// Receive instants by message id; a second delivery of an id only counts as a duplicate.
#[derive(Debug, Default)]
pub struct Arrivals {
    pub first: HashMap<String, Instant>,
    pub duplicates: u64,
}

impl Arrivals {
    fn record(&mut self, id: String, at: Instant) {
        match self.first.entry(id) {
            Entry::Occupied(_) => self.duplicates += 1,
            Entry::Vacant(slot) => {
                slot.insert(at);
            }
        }
    }
}

pub type SharedArrivals = Arc<Mutex<Arrivals>>;

/// Notes an arrival; a poisoned lock (a panicked reader) only loses the note.
fn note(arrivals: &SharedArrivals, id: Option<String>, at: Instant) {
    if let (Some(id), Ok(mut arrivals)) = (id, arrivals.lock()) {
        arrivals.record(id, at);
    }
}

/// Subscribes to `destination` and reads in a task until `stop`.
pub async fn start(
    destination: &Destination,
    arrivals: SharedArrivals,
    stop: CancellationToken,
) -> Result<JoinHandle<Result<(), BenchError>>, BenchError> {
    Ok(match destination.broker {
        BrokerArg::Rabbitmq => {
            let queue = destination.queue.clone().unwrap_or_default();
            let connection = Connection::connect(
                destination.url(),
                ConnectionProperties::default().with_connection_name("ferry-bench-reader".into()),
            )
            .await?;
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(PREFETCH, BasicQosOptions::default())
                .await?;
            let mut consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "ferry-bench".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            tokio::spawn(async move {
                loop {
                    let delivery = tokio::select! {
                        next = consumer.next() => next,
                        _ = stop.cancelled() => break,
                    };
                    let Some(delivery) = delivery else { break };
                    let delivery = delivery?;
                    let at = Instant::now();
                    let id =
                        delivery.properties.headers().as_ref().and_then(|headers| {
                            match headers.inner().get("ce-id") {
                                Some(AMQPValue::LongString(id)) => Some(id.to_string()),
                                _ => None,
                            }
                        });
                    note(&arrivals, id, at);
                    delivery.ack(BasicAckOptions::default()).await?;
                }
                let _ = connection.close(200, "done".into()).await;
                Ok(())
            })
        }
        BrokerArg::Nats => {
            let client = async_nats::connect(destination.url())
                .await
                .map_err(BenchError::nats)?;
            let jetstream = async_nats::jetstream::new(client);
            let stream = jetstream
                .get_stream(&destination.name)
                .await
                .map_err(BenchError::nats)?;
            let consumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::Config {
                    ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                    inactive_threshold: Duration::from_secs(30),
                    ..Default::default()
                })
                .await
                .map_err(BenchError::nats)?;
            let mut messages = consumer.messages().await.map_err(BenchError::nats)?;
            tokio::spawn(async move {
                loop {
                    let message = tokio::select! {
                        next = messages.next() => next,
                        _ = stop.cancelled() => break,
                    };
                    let Some(message) = message else { break };
                    let message = message.map_err(BenchError::nats)?;
                    let at = Instant::now();
                    let id = message
                        .headers
                        .as_ref()
                        .and_then(|headers| headers.get("ce-id"))
                        .map(|id| id.as_str().to_owned());
                    note(&arrivals, id, at);
                    message.ack().await.map_err(BenchError::nats)?;
                }
                Ok(())
            })
        }
        BrokerArg::Redis => {
            let client = redis::Client::open(destination.url())?;
            let config = AsyncConnectionConfig::new()
                .set_response_timeout(Some(REDIS_BLOCK + Duration::from_secs(5)));
            let mut connection = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let key = destination.name.clone();
            tokio::spawn(async move {
                // The stream is new, so reading from its start misses nothing and reads
                // nothing older than this run.
                let mut last = "0-0".to_owned();
                let options = StreamReadOptions::default()
                    .block(REDIS_BLOCK.as_millis() as usize)
                    .count(1_000);
                while !stop.is_cancelled() {
                    let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                        .arg(&options)
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(&last)
                        .query_async(&mut connection)
                        .await?;
                    let at = Instant::now();
                    for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                        let id = entry
                            .map
                            .get("ce-id")
                            .and_then(|value| redis::from_redis_value_ref::<String>(value).ok());
                        note(&arrivals, id, at);
                        last = entry.id;
                    }
                }
                Ok(())
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_delivery_of_an_id_counts_as_a_duplicate_and_keeps_the_first_instant() {
        let mut arrivals = Arrivals::default();
        let first = Instant::now();
        arrivals.record("a".into(), first);
        arrivals.record("a".into(), first + Duration::from_millis(5));
        arrivals.record("b".into(), first);
        assert_eq!(arrivals.first.len(), 2);
        assert_eq!(arrivals.first["a"], first);
        assert_eq!(arrivals.duplicates, 1);
    }
}
