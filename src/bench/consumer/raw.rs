//! The ceiling for the consumer: the broker client alone, reading a consumer group's messages
//! and settling each with the acknowledgement the consumer gives, at the same prefetch, with
//! no sink and no idempotency store.
//!
//! - RabbitMQ: `basic.consume` on the group's quorum queue with `basic.qos` = prefetch, one
//!   `basic.ack` per delivery.
//! - NATS: the group's durable pull consumer (explicit acks), pulled in batches of the
//!   consumer's size; each message is acknowledged with an ack the server confirms (the
//!   consumer's `ack` waits for that confirmation too), up to prefetch of them in flight.
//! - Redis: `XREADGROUP COUNT <prefetch>` as a member of the group, then one `XACK` for the ids
//!   read; repeat.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream::FuturesUnordered};
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use redis::{
    AsyncConnectionConfig,
    streams::{StreamReadOptions, StreamReadReply},
};

use super::{super::BenchError, setup::Group};
use crate::{broker::nats::subscriber::durable_name, config::TopicTarget};

/// How long the raw client may receive nothing while messages are still expected.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `XREADGROUP` blocks when the stream has nothing new.
const REDIS_BLOCK: Duration = Duration::from_millis(100);
/// The most messages one JetStream pull asks for, as the consumer's subscriber caps it.
const MAX_PULL_BATCH: usize = 500;

/// Reads and acknowledges `messages` messages of `group` at `url`; returns the time from
/// starting to connect until the last acknowledgement was done.
pub async fn drain(group: &Group, url: &str, messages: u64) -> Result<Duration, BenchError> {
    let prefetch = group.subscription.prefetch.max(1);
    let started = Instant::now();
    match &group.topic.target {
        TopicTarget::Rabbitmq(_) => rabbitmq(url, &group.queue(), prefetch, messages).await?,
        TopicTarget::Nats(target) => {
            nats(
                url,
                &target.stream,
                &group.subscription.group,
                prefetch,
                messages,
            )
            .await?
        }
        TopicTarget::Redis(target) => {
            redis_streams(
                url,
                &target.stream,
                &group.subscription.group,
                prefetch,
                messages,
            )
            .await?
        }
        TopicTarget::Sql(_) => {
            return Err(BenchError::Check("SQL queues are not benchmarked".into()));
        }
    }
    Ok(started.elapsed())
}

fn stalled(acked: u64, messages: u64) -> BenchError {
    BenchError::Check(format!(
        "the raw client acknowledged {acked} of {messages} messages and received nothing more \
         for {}s",
        STALL_TIMEOUT.as_secs()
    ))
}

async fn rabbitmq(url: &str, queue: &str, prefetch: u32, messages: u64) -> Result<(), BenchError> {
    let connection = Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name("ferry-bench-raw".into()),
    )
    .await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(
            u16::try_from(prefetch).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "ferry-bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut acked = 0;
    while acked < messages {
        let delivery = tokio::time::timeout(STALL_TIMEOUT, consumer.next())
            .await
            .map_err(|_| stalled(acked, messages))?
            .ok_or_else(|| BenchError::Check("RabbitMQ ended the raw consumer".into()))??;
        delivery.ack(BasicAckOptions::default()).await?;
        acked += 1;
    }
    // `basic.ack` has no reply; the reply to closing the channel comes after the server has
    // processed every frame sent before it on the channel, the acks included.
    channel.close(200, "drained".into()).await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

async fn nats(
    url: &str,
    stream: &str,
    group: &str,
    prefetch: u32,
    messages: u64,
) -> Result<(), BenchError> {
    let client = async_nats::connect(url).await.map_err(BenchError::nats)?;
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream
        .get_stream(stream)
        .await
        .map_err(BenchError::nats)?;
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(&durable_name(group))
        .await
        .map_err(BenchError::nats)?;
    let in_flight_limit = prefetch as usize;
    let mut pulled = consumer
        .stream()
        .max_messages_per_batch(in_flight_limit.min(MAX_PULL_BATCH))
        .messages()
        .await
        .map_err(BenchError::nats)?;
    let mut acks = FuturesUnordered::new();
    let (mut received, mut acked) = (0, 0);
    while acked < messages {
        tokio::select! {
            Some(done) = acks.next(), if !acks.is_empty() => {
                let done: Result<(), async_nats::Error> = done;
                done.map_err(BenchError::nats)?;
                acked += 1;
            }
            next = tokio::time::timeout(STALL_TIMEOUT, pulled.next()),
                if received < messages && acks.len() < in_flight_limit =>
            {
                let message = next
                    .map_err(|_| stalled(acked, messages))?
                    .ok_or_else(|| BenchError::Check("JetStream ended the raw pull".into()))?
                    .map_err(BenchError::nats)?;
                received += 1;
                acks.push(async move { message.double_ack().await });
            }
        }
    }
    Ok(())
}

async fn redis_streams(
    url: &str,
    stream: &str,
    group: &str,
    prefetch: u32,
    messages: u64,
) -> Result<(), BenchError> {
    let client = redis::Client::open(url)?;
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(REDIS_BLOCK + Duration::from_secs(10)));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let options = StreamReadOptions::default()
        .group(group, "ferry-bench-raw")
        .count(prefetch as usize)
        .block(REDIS_BLOCK.as_millis() as usize);
    let mut acked = 0;
    let mut last_progress = Instant::now();
    while acked < messages {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg(&options)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(&mut connection)
            .await?;
        let ids: Vec<String> = reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
            .map(|entry| entry.id)
            .collect();
        if ids.is_empty() {
            if last_progress.elapsed() > STALL_TIMEOUT {
                return Err(stalled(acked, messages));
            }
            continue;
        }
        let count: u64 = redis::cmd("XACK")
            .arg(stream)
            .arg(group)
            .arg(&ids)
            .query_async(&mut connection)
            .await?;
        acked += count;
        last_progress = Instant::now();
    }
    Ok(())
}
