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
//! group are competing consumers of that queue: each message goes to one of them, and RabbitMQ
//! gives an unacked message back to the queue when the member's connection closes (RabbitMQ has
//! no per-message ack timeout; its `consumer_timeout`, 30 minutes by default, closes the channel
//! of a consumer that holds a message longer).
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
//! are durable and the copies persistent). A delay under 100 ms sends the copy straight back to
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

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use futures::StreamExt;
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    },
    protocol::AMQPSoftError,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{PUBLISH_TIMEOUT, declare_exchange, lapin_error, soft_error};
use crate::{
    api::broker_topic::ExchangeType,
    broker::{
        BrokerError,
        subscriber::{BrokerLag, Delivery, Subscriber, SubscriptionConfig},
    },
    config::RabbitMqTarget,
};

pub use delay::queue_names as retry_queue_names;
pub use headers::ATTEMPT_HEADER;

/// How often `lag` looks for delay queues it has not seen (another member's).
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(60);

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
    declared: Mutex<HashMap<Duration, Instant>>,
    delay_queues: Mutex<DelayQueues>,
}

/// The delay queues `lag` counts.
#[derive(Default)]
struct DelayQueues {
    seen: BTreeSet<Duration>,
    discovered_at: Option<Instant>,
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

/// What RabbitMQ said to one publish of a retry copy.
enum Published {
    Confirmed,
    /// No queue took it: the delay queue expired or the group's queue is gone.
    Returned,
    Refused,
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
        let binding = binding(target.exchange_type);
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
            Some((routing_key, arguments)) if subscription.provision => {
                let exchange = declare_exchange(topic, &channel, target, true).await?;
                declare_group_queue(topic, &channel, &queue).await?;
                channel
                    .queue_bind(
                        queue.clone(),
                        exchange.clone(),
                        routing_key,
                        QueueBindOptions::default(),
                        arguments,
                    )
                    .await
                    .map_err(|e| {
                        declare_error(topic, &e, &format!("binding {queue} to {exchange}"))
                    })?;
            }
            _ => check_group_queue(topic, &channel, &queue, &target.exchange).await?,
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
            declared: Mutex::new(HashMap::new()),
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

    /// Publishes a retry copy to the delay queue for `delay` (or straight to the group's queue)
    /// and waits for its confirm. A delay queue that expired meanwhile makes the copy come back
    /// unroutable: it is declared again and the copy published once more.
    async fn publish_copy(
        &self,
        channel: &Channel,
        delay: Option<Duration>,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let Some(delay) = delay else {
            return match publish(channel, &self.group, body, properties)
                .await
                .map_err(|e| lapin_error(&self.topic, &e))?
            {
                Published::Confirmed => Ok(()),
                Published::Returned => Err(self.queue_gone()),
                Published::Refused => Err(self.refused()),
            };
        };
        let queue = delay::queue_name(&self.group, delay);
        let mut renewed = false;
        loop {
            self.declare_delay_queue(channel, delay, renewed).await?;
            match publish(channel, &queue, body, properties.clone())
                .await
                .map_err(|e| lapin_error(&self.topic, &e))?
            {
                Published::Confirmed => return Ok(()),
                Published::Refused => return Err(self.refused()),
                Published::Returned if renewed => {
                    return Err(self.failure(format!(
                        "delay queue {queue} was declared but the copy was returned unroutable"
                    )));
                }
                Published::Returned => {
                    tracing::debug!(topic = %self.topic, queue, "delay queue expired; declaring it again");
                    renewed = true;
                }
            }
        }
    }

    /// Declares the delay queue unless this subscriber did so less than `RENEW_AFTER` ago (or
    /// always, with `force`), which also renews its `x-expires` lease.
    async fn declare_delay_queue(
        &self,
        channel: &Channel,
        delay: Duration,
        force: bool,
    ) -> Result<(), BrokerError> {
        let recent = lock(&self.declared)
            .get(&delay)
            .is_some_and(|at| at.elapsed() < delay::RENEW_AFTER);
        if recent && !force {
            return Ok(());
        }
        let queue = delay::queue_name(&self.group, delay);
        let started = Instant::now();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                delay::queue_arguments(&self.group, delay),
            )
            .await
            .map_err(|e| declare_error(&self.topic, &e, &format!("delay queue {queue}")))?;
        lock(&self.declared).insert(delay, started);
        lock(&self.delay_queues).seen.insert(delay);
        Ok(())
    }

    async fn retry_channel(&self) -> Result<Channel, BrokerError> {
        let idle = lock(&self.retry_channels).pop();
        if let Some(channel) = idle.filter(|channel| channel.status().connected()) {
            return Ok(channel);
        }
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| lapin_error(&self.topic, &e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| lapin_error(&self.topic, &e))?;
        Ok(channel)
    }

    /// The number of messages in a queue, `None` when it does not exist. Each probe has a
    /// channel to itself, since RabbitMQ closes the channel of a passive declare that fails.
    async fn probe(&self, queue: &str) -> Result<Option<u64>, BrokerError> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| lapin_error(&self.topic, &e))?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let name = ShortString::try_new(queue).map_err(|e| self.failure(e.to_string()))?;
        match channel
            .queue_declare(name, options, FieldTable::default())
            .await
        {
            Ok(found) => {
                // Errors are ignored: the count is in, and a channel left open is closed with
                // the connection.
                let _ = channel.close(200, "probed".into()).await;
                Ok(Some(u64::from(found.message_count())))
            }
            Err(error) if soft_error(&error) == Some(AMQPSoftError::NOTFOUND) => Ok(None),
            Err(error) => Err(lapin_error(&self.topic, &error)),
        }
    }

    /// The messages waiting in this group's delay queues.
    async fn delayed(&self) -> Result<u64, BrokerError> {
        let (delays, discovering): (Vec<Duration>, bool) = {
            let queues = lock(&self.delay_queues);
            let discovering = queues
                .discovered_at
                .is_none_or(|at| at.elapsed() >= DISCOVERY_INTERVAL);
            if discovering {
                (delay::grid().collect(), true)
            } else {
                (queues.seen.iter().copied().collect(), false)
            }
        };
        let started = Instant::now();
        let counts =
            futures::future::join_all(delays.iter().map(|delay| self.probe_delay_queue(*delay)))
                .await;
        let mut queues = lock(&self.delay_queues);
        if discovering {
            queues.discovered_at = Some(started);
        }
        let mut total = 0;
        for (delay, count) in delays.into_iter().zip(counts) {
            match count? {
                Some(count) => {
                    queues.seen.insert(delay);
                    total += count;
                }
                None => {
                    queues.seen.remove(&delay);
                }
            }
        }
        Ok(total)
    }

    async fn probe_delay_queue(&self, delay: Duration) -> Result<Option<u64>, BrokerError> {
        self.probe(&delay::queue_name(&self.group, delay)).await
    }

    fn failure(&self, message: String) -> BrokerError {
        BrokerError::Publish {
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
        Ok(received)
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        self.ack_original(self.settlement(delivery)?).await
    }

    async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), BrokerError> {
        let settlement = self.settlement(delivery)?;
        if settlement.acker.poisoned() {
            return Err(self.channel_lost());
        }
        if !settlement.acker.usable() {
            return Err(self.failure("the delivery was already settled".into()));
        }
        let properties =
            headers::retry_properties(&settlement.properties, delivery.attempt.saturating_add(1));
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

/// The binding key and arguments that route every message of the exchange to the queue; none
/// for a direct exchange.
fn binding(kind: ExchangeType) -> Option<(ShortString, FieldTable)> {
    match kind {
        ExchangeType::Topic => Some(("#".into(), FieldTable::default())),
        ExchangeType::Fanout => Some(("".into(), FieldTable::default())),
        ExchangeType::Headers => {
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-match".into(),
                AMQPValue::LongString(LongString::from("all".as_bytes())),
            );
            Some(("".into(), arguments))
        }
        ExchangeType::Direct => None,
    }
}

async fn declare_group_queue(
    topic: &str,
    channel: &Channel,
    queue: &ShortString,
) -> Result<(), BrokerError> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum".as_bytes())),
    );
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.clone(), options, arguments)
        .await
        .map(drop)
        .map_err(|e| {
            declare_error(
                topic,
                &e,
                &format!("queue {queue} (a durable quorum queue)"),
            )
        })
}

async fn check_group_queue(
    topic: &str,
    channel: &Channel,
    queue: &ShortString,
    exchange: &str,
) -> Result<(), BrokerError> {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(queue.clone(), options, FieldTable::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if soft_error(&error) == Some(AMQPSoftError::NOTFOUND) => {
            Err(BrokerError::Topology {
                topic: topic.to_owned(),
                message: format!(
                    "queue {queue} does not exist and provision is false: declare it and bind \
                     it to exchange {exchange}, or set provision to true"
                ),
            })
        }
        Err(error) => Err(declare_error(topic, &error, &format!("queue {queue}"))),
    }
}

/// A failed declaration or binding: a topology error when RabbitMQ refused it, a connection
/// error otherwise.
fn declare_error(topic: &str, error: &lapin::Error, what: &str) -> BrokerError {
    let topology = |message: String| BrokerError::Topology {
        topic: topic.to_owned(),
        message,
    };
    match soft_error(error) {
        Some(AMQPSoftError::PRECONDITIONFAILED) => {
            topology(format!("{what} exists with other settings: {error}"))
        }
        Some(AMQPSoftError::NOTFOUND) => topology(format!("{what}: {error}")),
        Some(AMQPSoftError::ACCESSREFUSED) => {
            topology(format!("not allowed to declare {what}: {error}"))
        }
        _ => lapin_error(topic, error),
    }
}

/// Publishes one message through the default exchange to `queue` (mandatory, so a missing
/// queue comes back) and waits for the confirm.
async fn publish(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<Published, lapin::Error> {
    let confirm = channel
        .basic_publish(
            "".into(),
            ShortString::from(queue),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            body,
            properties,
        )
        .await?
        .await?;
    Ok(match confirm {
        Confirmation::Ack(None) => Published::Confirmed,
        Confirmation::Ack(Some(_)) => Published::Returned,
        Confirmation::Nack(_) | Confirmation::NotRequested => Published::Refused,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
