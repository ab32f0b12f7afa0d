//! RabbitMQ consumer groups: one durable quorum queue per group bound to the topic's exchange,
//! manual acks, and retries through per-delay queues that hand the message back when it is due.
//!
//! # Topology
//!
//! The group's queue is named `subscription.group` and bound so that it receives every message
//! of the exchange: binding key `#` on a topic exchange, `""` on a fanout exchange, and
//! `x-match: all` with no other arguments on a headers exchange (no condition, so every
//! message matches). A direct exchange routes by exact key only; Ferry cannot choose the keys,
//! so with `provision` on that is a topology error and the user declares and binds the queue.
//! With `provision` off the queue is only checked (passive declare), whatever its type.
//!
//! The group's queue is a quorum queue: RabbitMQ's recommended durable queue type, replicated
//! in a cluster, and one that counts how often it handed a message out without an ack
//! (`x-delivery-count`), which is how a member that crashed while holding a message shows up in
//! `Delivery::attempt`. Its FIFO order is the order `receive` keeps per key. The members of a
//! group are competing consumers of that queue: each message goes to one of them, so with
//! several members two messages of one key can be in flight at two members at once (RabbitMQ
//! cannot give a key to one member short of a queue per partition). RabbitMQ
//! gives an unacked message back to the queue when the member's connection closes (RabbitMQ has
//! no per-message ack timeout, so `extend` has nothing to do; its `consumer_timeout`, 30
//! minutes by default, closes the channel of a consumer that holds a message longer).
//!
//! # Retries
//!
//! `retry` publishes a copy (same body and headers, persistent, `x-ferry-attempt` set to the
//! next attempt) through the default exchange to the group's delay queue for the delay rounded
//! down to a fixed grid (see `delay`), waits for the publisher confirm, and only then acks the
//! original: a crash in between delivers the message twice, never zero times. The delay
//! queue's TTL is fixed, so no message waits behind a longer delay; when it expires RabbitMQ
//! dead-letters it back to the group's queue. The attempt count and the due time live in the
//! copy and its queue, so they survive a restart of the consumer (and of RabbitMQ: the queues
//! are durable and the copies persistent). A delay under 10 ms sends the copy straight back to
//! the group's queue.
//!
//! Delay queues are classic queues because they must expire when unused (`x-expires`), and
//! only a classic queue's lease is renewed by declaring it again: on RabbitMQ 3.10 a quorum
//! queue expires that long after it was created, with whatever messages it holds. The price is
//! that dead-lettering out of a classic queue is at-most-once: if the group's queue cannot take
//! the message at the moment it expires (a cluster that lost the quorum of that queue), or the
//! node crashes at that instant, the retry is lost. Delay queues are always declared by the
//! subscriber, also with `provision` off: they are Ferry's bookkeeping, not the user's topology.
//!
//! # Lag
//!
//! What AMQP tells: the ready messages of the group's queue, plus the messages of its delay
//! queues, plus the messages RabbitMQ handed to this subscriber that it has not settled. Other
//! members' unacked messages are not visible (a quorum queue counts only ready ones). The age
//! of the oldest message is not available over AMQP, so `oldest_age` is `None`. Delay queues
//! that exist are found by probing every grid value at most once per `DISCOVERY_INTERVAL`; in
//! between, only those seen to exist are counted.

mod delay;
mod headers;
mod lag;
mod retry;
mod topology;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use futures::StreamExt;
use lapin::{
    Acker, BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::{FieldTable, ShortString},
};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{PUBLISH_TIMEOUT, lapin_error};
use crate::{
    broker::{
        BrokerError,
        subscriber::{BrokerLag, Delivery, Subscriber, SubscriptionConfig},
    },
    config::RabbitMqTarget,
};
use lag::DelayQueues;

pub use delay::queue_names as retry_queue_names;
pub use headers::ATTEMPT_HEADER;

/// Receives one topic's messages as one member of a consumer group.
pub struct RabbitMqSubscriber {
    topic: String,
    group: String,
    connection: Connection,
    /// The channel the consumer is on; deliveries are acked on it.
    channel: Channel,
    consumer_tag: ShortString,
    /// What the consumer received, in order, forwarded by `forwarder`.
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<Incoming>>,
    forwarder: JoinHandle<()>,
    /// Messages RabbitMQ handed to this subscriber and that are not acked yet (buffered or
    /// handed out).
    held: Arc<AtomicU64>,
    /// The broker cancelled the consumer (its queue was deleted).
    cancelled: Arc<AtomicBool>,
    /// Confirm-mode channels for retry copies, one publish in flight on each, so that a
    /// returned (unroutable) copy is known to be that publish's.
    retry_channels: Mutex<Vec<Channel>>,
    /// When this subscriber last declared each delay queue (renewing its `x-expires` lease).
    declared_at: Mutex<HashMap<Duration, Instant>>,
    /// The delay queues `lag` counts.
    delay_queues: Mutex<DelayQueues>,
}

/// What the consumer task forwards to `receive`.
enum Incoming {
    Message(Box<lapin::message::Delivery>),
    Failed(lapin::Error),
    /// The broker cancelled the consumer, e.g. because the queue was deleted.
    Cancelled,
}

/// What a `Delivery` carries for settling it.
struct Settlement {
    acker: Acker,
    /// The original's properties, for the copy a retry publishes.
    properties: BasicProperties,
}

impl RabbitMqSubscriber {
    /// Connects as a member of `subscription.group`, declaring the group's quorum queue and its
    /// binding (or, with `provision` off, checking that the queue exists), and starts consuming
    /// with a prefetch of `subscription.prefetch`.
    pub async fn connect(
        topic: &str,
        url: &str,
        target: &RabbitMqTarget,
        subscription: &SubscriptionConfig,
    ) -> Result<Self, BrokerError> {
        let topology = |message: String| BrokerError::Topology {
            topic: topic.to_owned(),
            message,
        };
        let group = &subscription.group;
        let queue = ShortString::try_new(group.as_str())
            .map_err(|e| topology(format!("queue name {group:?}: {e}")))?;
        if let Some(name) = retry_queue_names(group).find(|name| name.len() > 255) {
            return Err(topology(format!(
                "the delay queue name {name:?} is longer than the 255 bytes AMQP allows: \
                 use a shorter consumer group name"
            )));
        }
        let binding = topology::binding(target.exchange_type);
        if subscription.provision && binding.is_none() {
            return Err(topology(format!(
                "a queue cannot be bound to direct exchange {} so that it receives every \
                 message: declare queue {group} and bind it with the routing keys it should \
                 receive yourself, and set provision to false",
                target.exchange
            )));
        }

        let properties = ConnectionProperties::default()
            .with_connection_name(format!("ferry-consumer/{topic}/{}", subscription.member).into());
        let connection = Connection::connect(url, properties)
            .await
            .map_err(|e| lapin_error(topic, &e))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| lapin_error(topic, &e))?;
        match binding {
            Some(binding) if subscription.provision => {
                topology::provision(
                    topic,
                    &channel,
                    target,
                    &queue,
                    binding,
                    subscription.single_active,
                )
                .await?;
            }
            _ => topology::check(topic, &channel, &queue, &target.exchange).await?,
        }

        let prefetch = u16::try_from(subscription.prefetch)
            .unwrap_or(u16::MAX)
            .max(1);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| lapin_error(topic, &e))?;
        let consumer_tag = ShortString::try_new(format!("ferry/{}", subscription.member))
            .unwrap_or_else(|_| ShortString::from(""));
        let consumer = channel
            .basic_consume(
                queue,
                consumer_tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| lapin_error(topic, &e))?;
        // The server names the consumer when the tag was empty; cancelling needs that name.
        let consumer_tag = consumer.tag();

        let held = Arc::new(AtomicU64::new(0));
        let cancelled = Arc::new(AtomicBool::new(false));
        let (sender, receiver) = mpsc::unbounded_channel();
        let forwarder = tokio::spawn(forward(
            consumer,
            sender,
            Arc::clone(&held),
            Arc::clone(&cancelled),
        ));
        tracing::debug!(
            topic,
            group = %group,
            member = %subscription.member,
            prefetch,
            provision = subscription.provision,
            "consuming from RabbitMQ"
        );
        Ok(Self {
            topic: topic.to_owned(),
            group: group.clone(),
            connection,
            channel,
            consumer_tag,
            incoming: tokio::sync::Mutex::new(receiver),
            forwarder,
            held,
            cancelled,
            retry_channels: Mutex::new(Vec::new()),
            declared_at: Mutex::new(HashMap::new()),
            delay_queues: Mutex::new(DelayQueues::default()),
        })
    }

    fn delivery(&self, message: lapin::message::Delivery) -> Delivery {
        let lapin::message::Delivery {
            redelivered,
            properties,
            data,
            acker,
            ..
        } = message;
        let mut delivery = Delivery::from_headers(
            headers::delivery_headers(&properties),
            data,
            Box::new(Settlement {
                acker,
                properties: properties.clone(),
            }),
        );
        if delivery.id.is_empty()
            && let Some(message_id) = properties.message_id()
        {
            delivery.id = message_id.as_str().to_owned();
        }
        delivery.attempt = headers::attempt(&properties);
        delivery.redelivered = redelivered;
        delivery.published_at = headers::published_at(&properties);
        delivery
    }

    fn settlement<'a>(&self, delivery: &'a Delivery) -> Result<&'a Settlement, BrokerError> {
        delivery
            .token
            .downcast_ref::<Settlement>()
            .ok_or_else(|| self.failure("the delivery was not received from RabbitMQ".into()))
    }

    async fn ack_original(&self, settlement: &Settlement) -> Result<(), BrokerError> {
        match settlement.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => {
                self.held.fetch_sub(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(false) if settlement.acker.poisoned() => Err(self.channel_lost()),
            Ok(false) => Err(self.failure("the delivery was already settled".into())),
            Err(error) => Err(lapin_error(&self.topic, &error)),
        }
    }

    /// Publishes a copy of `delivery` to the delay queue for `delay` (rounded down to the grid)
    /// as attempt `attempt` due at `due`, waits for its confirm, then acks the original.
    async fn send_copy(
        &self,
        delivery: &Delivery,
        delay: Duration,
        attempt: u32,
        due: SystemTime,
    ) -> Result<(), BrokerError> {
        let settlement = self.settlement(delivery)?;
        if settlement.acker.poisoned() {
            return Err(self.channel_lost());
        }
        if !settlement.acker.usable() {
            return Err(self.failure("the delivery was already settled".into()));
        }
        let properties = headers::with_due(
            headers::retry_properties(&settlement.properties, attempt),
            due,
        );
        let channel = self.retry_channel().await?;
        let published = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            self.publish_copy(&channel, delay::quantise(delay), &delivery.body, properties),
        )
        .await
        .map_err(|_| {
            self.failure(format!(
                "no confirm for a retry copy within {}s",
                PUBLISH_TIMEOUT.as_secs()
            ))
        })?;
        // Only a channel whose publish was answered goes back: a late confirm or return would
        // be taken for the next copy's.
        published?;
        lock(&self.retry_channels).push(channel);
        self.ack_original(settlement).await
    }

    /// How much of its wait a retry copy still has, when a delay queue can hold it for (part
    /// of) that: grid delays round down, so a copy may come back early, and goes round again.
    fn still_waiting(&self, delivery: &Delivery) -> Option<Duration> {
        let due = headers::due(&self.settlement(delivery).ok()?.properties)?;
        let remaining = due.duration_since(SystemTime::now()).ok()?;
        delay::quantise(remaining).map(|_| remaining)
    }

    fn failure(&self, message: String) -> BrokerError {
        BrokerError::Receive {
            topic: self.topic.clone(),
            message,
        }
    }

    fn channel_lost(&self) -> BrokerError {
        BrokerError::Connection {
            topic: self.topic.clone(),
            message: "the channel closed before the delivery was settled; RabbitMQ will deliver \
                      it again"
                .into(),
        }
    }

    fn queue_gone(&self) -> BrokerError {
        BrokerError::Topology {
            topic: self.topic.clone(),
            message: format!("queue {} does not exist (it was deleted)", self.group),
        }
    }

    fn refused(&self) -> BrokerError {
        self.failure("the broker refused (nacked) a retry copy: it could not store it".into())
    }
}

#[async_trait]
impl Subscriber for RabbitMqSubscriber {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut incoming = self.incoming.lock().await;
        let Ok(first) = tokio::time::timeout(wait, incoming.recv()).await else {
            return Ok(Vec::new());
        };
        let mut received = Vec::new();
        let mut next = first;
        loop {
            match next {
                Some(Incoming::Message(message)) => received.push(self.delivery(*message)),
                // What came before the failure cannot be acked any more (its channel is gone)
                // and will be delivered again: it is not handed out.
                Some(Incoming::Failed(error)) => return Err(lapin_error(&self.topic, &error)),
                Some(Incoming::Cancelled) | None => {
                    return Err(BrokerError::Connection {
                        topic: self.topic.clone(),
                        message: format!(
                            "RabbitMQ cancelled the consumer of queue {} (was it deleted?)",
                            self.group
                        ),
                    });
                }
            }
            if received.len() >= max {
                break;
            }
            match incoming.try_recv() {
                Ok(more) => next = Some(more),
                Err(_) => break,
            }
        }
        drop(incoming);
        let mut due = Vec::with_capacity(received.len());
        for delivery in received {
            match self.still_waiting(&delivery) {
                Some(remaining) => {
                    let attempt = delivery.attempt;
                    let at = SystemTime::now() + remaining;
                    self.send_copy(&delivery, remaining, attempt, at).await?;
                }
                None => due.push(delivery),
            }
        }
        Ok(due)
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        self.ack_original(self.settlement(delivery)?).await
    }

    async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), BrokerError> {
        let due = SystemTime::now() + delay;
        self.send_copy(delivery, delay, delivery.attempt.saturating_add(1), due)
            .await
    }

    async fn lag(&self) -> Result<BrokerLag, BrokerError> {
        let ready = self
            .probe(&self.group)
            .await?
            .ok_or_else(|| self.queue_gone())?;
        let delayed = self.delayed().await?;
        Ok(BrokerLag {
            messages: ready + delayed + self.held.load(Ordering::Relaxed),
            oldest_age: None,
        })
    }

    fn connected(&self) -> bool {
        self.connection.status().connected()
            && self.channel.status().connected()
            && !self.cancelled.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        // Errors are only logged: the connection is being given up either way, and closing it
        // returns every unacked message to the queue.
        if let Err(error) = self
            .channel
            .basic_cancel(self.consumer_tag.clone(), BasicCancelOptions::default())
            .await
        {
            tracing::debug!(topic = %self.topic, %error, "cancelling the RabbitMQ consumer failed");
        }
        self.forwarder.abort();
        if let Err(error) = self.connection.close(200, "closing".into()).await {
            tracing::debug!(topic = %self.topic, %error, "closing the RabbitMQ connection failed");
        }
    }
}

impl Drop for RabbitMqSubscriber {
    fn drop(&mut self) {
        // The task owns the consumer; ending it lets the connection close with the last handle,
        // which gives the unacked messages back to the queue.
        self.forwarder.abort();
    }
}

/// Moves deliveries from lapin's consumer to `receive`, counting them as held, until the
/// consumer ends.
async fn forward(
    mut consumer: Consumer,
    sender: mpsc::UnboundedSender<Incoming>,
    held: Arc<AtomicU64>,
    cancelled: Arc<AtomicBool>,
) {
    loop {
        let incoming = match consumer.next().await {
            Some(Ok(message)) => {
                held.fetch_add(1, Ordering::Relaxed);
                Incoming::Message(Box::new(message))
            }
            Some(Err(error)) => Incoming::Failed(error),
            None => {
                cancelled.store(true, Ordering::Relaxed);
                Incoming::Cancelled
            }
        };
        let last = !matches!(incoming, Incoming::Message(_));
        if sender.send(incoming).is_err() || last {
            return;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
