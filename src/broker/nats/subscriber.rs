//! Receives a NATS topic for one consumer group from a durable JetStream pull consumer, and
//! settles each message with an ack the server confirms.
//!
//! Retry state is the consumer's own: a `retry` is a NAK with a delay, which the server keeps
//! with the message's delivered count, so attempts and due times survive a member's restart.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use async_nats::{
    Client, RequestErrorKind,
    connection::State,
    jetstream::{AckKind, stream::Stream},
};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::stream::ensure_stream;
use crate::{
    broker::{
        BrokerError,
        subscriber::{BrokerLag, Delivery, Subscriber, SubscriptionConfig},
    },
    config::NatsTarget,
};

mod durable;
mod pump;

pub use durable::durable_name;
use pump::{Ended, Settlement};

/// One member of a consumer group on a JetStream stream.
pub struct NatsSubscriber {
    topic: String,
    /// The durable consumer's name (see `durable_name`).
    consumer: String,
    client: Client,
    stream: Stream,
    deliveries: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    ended: Arc<OnceLock<Ended>>,
    shutdown: CancellationToken,
    pump: Mutex<Option<JoinHandle<()>>>,
}

impl NatsSubscriber {
    /// Connects, makes sure the topic's stream and the group's durable consumer exist (see
    /// `durable::ensure` for what is created, updated or refused), and starts pulling.
    pub async fn connect(
        topic: &str,
        url: &str,
        target: &NatsTarget,
        subscription: &SubscriptionConfig,
    ) -> Result<Self, BrokerError> {
        let name = format!(
            "ferry-consumer/{}/{}",
            subscription.group, subscription.member
        );
        let (client, jetstream) = super::open(topic, url, &name).await?;
        ensure_stream(topic, &jetstream, target, subscription.provision).await?;
        let stream = jetstream
            .get_stream(&target.stream)
            .await
            .map_err(|error| BrokerError::Connection {
                topic: topic.to_owned(),
                message: format!("opening stream {}: {error}", target.stream),
            })?;
        let consumer = durable::ensure(topic, &stream, subscription).await?;
        let limits = &consumer.cached_info().config;
        let batch = durable::pull_batch(subscription.prefetch, limits.max_batch);
        let (expires, heartbeat) = durable::pull_timing(limits.max_expires);
        let consumer_name = consumer.cached_info().name.clone();
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .expires(expires)
            .heartbeat(heartbeat)
            .messages()
            .await
            .map_err(|error| BrokerError::Connection {
                topic: topic.to_owned(),
                message: format!("pulling from consumer {consumer_name}: {error}"),
            })?;

        let prefetch = usize::try_from(subscription.prefetch.max(1)).unwrap_or(usize::MAX);
        let (sender, receiver) = mpsc::channel(prefetch.min(Semaphore::MAX_PERMITS));
        let ended = Arc::new(OnceLock::new());
        let shutdown = CancellationToken::new();
        let pump = tokio::spawn(pump::run(
            topic.to_owned(),
            messages,
            Arc::new(Semaphore::new(prefetch.min(Semaphore::MAX_PERMITS))),
            sender,
            ended.clone(),
            shutdown.clone(),
        ));
        tracing::debug!(
            topic,
            stream = %target.stream,
            consumer = %consumer_name,
            member = %subscription.member,
            batch,
            "subscribed to NATS JetStream"
        );
        Ok(Self {
            topic: topic.to_owned(),
            consumer: consumer_name,
            client,
            stream,
            deliveries: tokio::sync::Mutex::new(receiver),
            ended,
            shutdown,
            pump: Mutex::new(Some(pump)),
        })
    }

    /// Sends one acknowledgement and waits for the server to confirm it: a confirmed ack or NAK
    /// is recorded in the consumer's state, which is what makes `ack` and `retry` durable.
    async fn settle(&self, delivery: &Delivery, kind: AckKind) -> Result<(), BrokerError> {
        let settlement = settlement(&self.topic, delivery)?;
        let what = match kind {
            AckKind::Ack => "ack",
            AckKind::Nak(_) => "nak",
            AckKind::Progress => "progress",
            AckKind::Next | AckKind::Term => "acknowledgement",
        };
        self.client
            .request(settlement.reply.clone(), Bytes::from(kind))
            .await
            .map_err(|error| match error.kind() {
                RequestErrorKind::NoResponders => BrokerError::Topology {
                    topic: self.topic.clone(),
                    message: format!(
                        "no consumer took the {what} of stream message {}: consumer {} is gone",
                        settlement.stream_sequence, self.consumer
                    ),
                },
                RequestErrorKind::TimedOut => BrokerError::Receive {
                    topic: self.topic.clone(),
                    message: format!(
                        "the server did not confirm the {what} of stream message {} in time",
                        settlement.stream_sequence
                    ),
                },
                _ => BrokerError::Connection {
                    topic: self.topic.clone(),
                    message: format!(
                        "{what} of stream message {}: {error}",
                        settlement.stream_sequence
                    ),
                },
            })?;
        Ok(())
    }

    /// The age of the first message the group has not acknowledged: the stream's first message
    /// after the consumer's ack floor. `None` when the server cannot say (it was removed).
    async fn oldest_age(&self, after_ack_floor: u64) -> Option<Duration> {
        let message = self
            .stream
            .get_first_raw_message_by_subject(">", after_ack_floor)
            .await
            .map_err(|error| {
                tracing::debug!(topic = %self.topic, %error, "reading the oldest unacknowledged message");
            })
            .ok()?;
        let nanos = i64::try_from(message.time.unix_timestamp_nanos()).ok()?;
        let age = Utc::now() - DateTime::from_timestamp_nanos(nanos);
        Some(age.to_std().unwrap_or_default())
    }
}

fn settlement<'a>(topic: &str, delivery: &'a Delivery) -> Result<&'a Settlement, BrokerError> {
    delivery
        .token
        .downcast_ref::<Settlement>()
        .ok_or_else(|| BrokerError::Receive {
            topic: topic.to_owned(),
            message: format!(
                "delivery {} was not received from NATS and cannot be settled here",
                delivery.id
            ),
        })
}

#[async_trait]
impl Subscriber for NatsSubscriber {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        let mut received = Vec::new();
        if max == 0 {
            return Ok(received);
        }
        let mut deliveries = self.deliveries.lock().await;
        match tokio::time::timeout(wait, deliveries.recv()).await {
            Err(_) => return Ok(received),
            Ok(Some(first)) => received.push(first),
            Ok(None) => {
                return Err(match self.ended.get() {
                    Some(Ended::Topology(message)) => BrokerError::Topology {
                        topic: self.topic.clone(),
                        message: message.clone(),
                    },
                    Some(Ended::Connection(message)) => BrokerError::Connection {
                        topic: self.topic.clone(),
                        message: message.clone(),
                    },
                    None => BrokerError::Connection {
                        topic: self.topic.clone(),
                        message: "the subscriber is closed".into(),
                    },
                });
            }
        }
        while received.len() < max {
            match deliveries.try_recv() {
                Ok(delivery) => received.push(delivery),
                Err(_) => break,
            }
        }
        Ok(received)
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        self.settle(delivery, AckKind::Ack).await?;
        settlement(&self.topic, delivery)?.release_slot();
        Ok(())
    }

    async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), BrokerError> {
        let delay = (!delay.is_zero()).then_some(delay);
        self.settle(delivery, AckKind::Nak(delay)).await?;
        settlement(&self.topic, delivery)?.release_slot();
        Ok(())
    }

    async fn extend(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        self.settle(delivery, AckKind::Progress).await
    }

    /// `num_pending` (not yet delivered to the group) plus `num_ack_pending` (delivered, not
    /// acknowledged; a message NAKed with a delay stays in it until it is acknowledged).
    async fn lag(&self) -> Result<BrokerLag, BrokerError> {
        let info = self
            .stream
            .consumer_info(&self.consumer)
            .await
            .map_err(|error| BrokerError::Connection {
                topic: self.topic.clone(),
                message: format!("consumer {} info: {error}", self.consumer),
            })?;
        let in_flight = u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX);
        let messages = info.num_pending.saturating_add(in_flight);
        let oldest_age = if messages == 0 {
            None
        } else {
            self.oldest_age(info.ack_floor.stream_sequence.saturating_add(1))
                .await
        };
        Ok(BrokerLag {
            messages,
            oldest_age,
        })
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Stops pulling, hands the messages pulled but not yet received back with a NAK so that
    /// another member gets them at once, and closes the connection. Messages already received
    /// and not settled, and any a pull request still brings, return after `ack_timeout`.
    async fn close(&self) {
        self.shutdown.cancel();
        let pump = self.pump.lock().ok().and_then(|mut pump| pump.take());
        if let Some(pump) = pump {
            let _ = pump.await;
        }
        let mut deliveries = self.deliveries.lock().await;
        deliveries.close();
        while let Ok(delivery) = deliveries.try_recv() {
            if let Ok(settlement) = settlement(&self.topic, &delivery) {
                let nak = Bytes::from(AckKind::Nak(None));
                if let Err(error) = self.client.publish(settlement.reply.clone(), nak).await {
                    tracing::debug!(topic = %self.topic, %error, "handing back a pulled message");
                }
            }
        }
        if let Err(error) = self.client.drain().await {
            tracing::debug!(topic = %self.topic, %error, "closing the NATS connection failed");
        }
    }
}

impl Drop for NatsSubscriber {
    fn drop(&mut self) {
        // The pull loop ends by itself; what it pulled returns after `ack_timeout`.
        self.shutdown.cancel();
    }
}
