//! RabbitMQ: persistent, mandatory publishes on channels in publisher-confirm mode.

use std::{
    collections::HashSet,
    pin::Pin,
    sync::{Mutex, MutexGuard, PoisonError},
    task::Poll,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use chrono::DateTime;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use super::{BrokerError, Outcome, Publisher};
use crate::{
    api::broker_topic::ExchangeType,
    config::RabbitMqTarget,
    message::{CONTENT_TYPE, Envelope},
};

/// How long a batch may take, sends and confirms together. RabbitMQ confirms once the message
/// is on disk in every queue it was routed to, which takes milliseconds when healthy; a broker
/// that is blocked (memory or disk alarm) may never answer, and the relay must get its batch
/// back.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// How many messages `publish_raw` sends before it waits for their confirms.
const RAW_WINDOW: usize = 500;

/// AMQP delivery mode 2: the broker writes the message to disk in durable queues.
const PERSISTENT: u8 = 2;

/// Publishes to one exchange over one connection.
///
/// Each batch has a channel to itself for as long as it is in flight: idle channels are kept
/// for the next batch, and a new one is opened only when the relay's workers publish at the
/// same time. A batch on its own channel goes out in batch order, which keeps per-key order,
/// and only its own confirms and returns arrive on that channel, which is what lets returns be
/// matched to its messages (see `confirm_all`).
pub struct RabbitMqPublisher {
    topic: String,
    exchange: ShortString,
    connection: Connection,
    idle: Mutex<Vec<Channel>>,
}

impl RabbitMqPublisher {
    /// Connects, turns on publisher confirms and declares the exchange (durable, of the target's
    /// type) or, with `provision: false`, only checks that it exists.
    pub async fn connect(
        topic: &str,
        url: &str,
        target: &RabbitMqTarget,
        provision: bool,
    ) -> Result<Self, BrokerError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("ferry-relay/{topic}").into());
        let connection = Connection::connect(url, properties)
            .await
            .map_err(|e| lapin_error(topic, &e))?;
        let channel = confirm_channel(topic, &connection).await?;
        let exchange = declare_exchange(topic, &channel, target, provision).await?;
        tracing::debug!(topic, exchange = %exchange, provision, "connected to RabbitMQ");
        Ok(Self {
            topic: topic.to_owned(),
            exchange,
            connection,
            idle: Mutex::new(vec![channel]),
        })
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        batch: &[Envelope],
    ) -> Result<Vec<Outcome>, BrokerError> {
        let mut refused = vec![None; batch.len()];
        let mut sendable = Vec::with_capacity(batch.len());
        for (index, envelope) in batch.iter().enumerate() {
            match outgoing(envelope) {
                Ok((routing_key, properties)) => {
                    sendable.push((routing_key, properties, &envelope.body[..]))
                }
                Err(reason) => refused[index] = Some(reason),
            }
        }
        let confirms = send_in_order(channel, &self.exchange, sendable)
            .await
            .map_err(|e| lapin_error(&self.topic, &e))?;
        let returned = confirm_all(confirms)
            .await
            .map_err(|failure| match failure {
                Failure::Lapin(error) => lapin_error(&self.topic, &error),
                Failure::Nacked => BrokerError::Publish {
                    topic: self.topic.clone(),
                    message: "the broker refused (nacked) a message: it could not store it".into(),
                },
            })?;
        Ok(batch
            .iter()
            .zip(refused)
            .map(|(envelope, refused)| match refused {
                Some(reason) => Outcome::Rejected(reason),
                None if returned.contains(envelope.id.as_str()) => Outcome::Rejected(format!(
                    "unroutable: no queue is bound to exchange {} for routing key {}",
                    self.exchange, envelope.routing_key
                )),
                None => Outcome::Confirmed,
            })
            .collect())
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Channel>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Publisher for RabbitMqPublisher {
    async fn publish(&self, batch: &[Envelope]) -> Result<Vec<Outcome>, BrokerError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let idle = self.idle().pop();
        let channel = match idle {
            Some(channel) => channel,
            None => confirm_channel(&self.topic, &self.connection).await?,
        };
        let outcomes = tokio::time::timeout(PUBLISH_TIMEOUT, self.publish_on(&channel, batch))
            .await
            .map_err(|_| BrokerError::Publish {
                topic: self.topic.clone(),
                message: format!(
                    "no confirm within {}s for a batch of {}",
                    PUBLISH_TIMEOUT.as_secs(),
                    batch.len()
                ),
            })??;
        // Only a channel whose every confirm arrived goes back: after an error or a timeout,
        // late confirms and returns would be taken for the next batch's.
        self.idle().push(channel);
        Ok(outcomes)
    }

    fn connected(&self) -> bool {
        self.connection.status().connected()
    }

    async fn close(&self) {
        // Errors are only logged: the connection is being given up either way.
        let channels = std::mem::take(&mut *self.idle());
        for channel in channels {
            if let Err(error) = channel.close(200, "closing".into()).await {
                tracing::debug!(topic = %self.topic, %error, "closing a RabbitMQ channel failed");
            }
        }
        if let Err(error) = self.connection.close(200, "closing".into()).await {
            tracing::debug!(topic = %self.topic, %error, "closing the RabbitMQ connection failed");
        }
    }
}

/// The benchmark's ceiling: the same lapin client sending the same messages with the same
/// guarantees (persistent, mandatory, publisher confirms, in order on one channel), in windows
/// of `RAW_WINDOW` with all confirms of a window awaited before the next, and nothing of
/// Ferry's in between (no outcomes, no channel reuse, no timeout).
pub async fn publish_raw(
    url: &str,
    target: &RabbitMqTarget,
    messages: &[Envelope],
) -> Result<(), BrokerError> {
    const TOPIC: &str = "raw";
    let failed = |message: String| BrokerError::Publish {
        topic: TOPIC.into(),
        message,
    };
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| lapin_error(TOPIC, &e))?;
    let channel = confirm_channel(TOPIC, &connection).await?;
    let exchange = declare_exchange(TOPIC, &channel, target, true).await?;
    for window in messages.chunks(RAW_WINDOW) {
        let mut sendable = Vec::with_capacity(window.len());
        for envelope in window {
            let (routing_key, properties) = outgoing(envelope).map_err(failed)?;
            sendable.push((routing_key, properties, &envelope.body[..]));
        }
        let confirms = send_in_order(&channel, &exchange, sendable)
            .await
            .map_err(|e| lapin_error(TOPIC, &e))?;
        match confirm_all(confirms).await {
            Ok(returned) if returned.is_empty() => {}
            Ok(returned) => {
                return Err(failed(format!(
                    "{} messages were unroutable",
                    returned.len()
                )));
            }
            Err(Failure::Nacked) => return Err(failed("a message was nacked".into())),
            Err(Failure::Lapin(error)) => return Err(lapin_error(TOPIC, &error)),
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Queues every message on the channel, in order, then waits until all are written.
///
/// In its first poll, `basic_publish` takes the next delivery tag and queues the frames for
/// lapin's I/O thread; it then waits for that thread to write them. Polling each publish once,
/// in order, fixes their order on the wire without a thread hand-off per message (awaiting each
/// publish before starting the next was 25-50% slower on a two-core machine). This relies on
/// lapin queueing in the first poll, as 4.12 does; the order tests in `tests/broker_rabbitmq.rs`
/// are there to catch a version that stops doing so.
async fn send_in_order(
    channel: &Channel,
    exchange: &ShortString,
    messages: Vec<(ShortString, BasicProperties, &[u8])>,
) -> Result<Vec<PublisherConfirm>, lapin::Error> {
    let mut sends = Vec::with_capacity(messages.len());
    for (routing_key, properties, body) in messages {
        let mut send = Box::pin(channel.basic_publish(
            exchange.clone(),
            routing_key,
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            body,
            properties,
        ));
        sends.push(match futures::poll!(send.as_mut()) {
            Poll::Ready(sent) => Sending::Written(sent),
            Poll::Pending => Sending::Queued(send),
        });
    }
    let mut confirms = Vec::with_capacity(sends.len());
    for send in sends {
        confirms.push(match send {
            Sending::Written(sent) => sent?,
            Sending::Queued(send) => send.await?,
        });
    }
    Ok(confirms)
}

/// A publish after its first poll: already written, or queued for the I/O thread.
enum Sending<F: Future> {
    Written(F::Output),
    Queued(Pin<Box<F>>),
}

/// Why a batch's confirms are not all acks.
enum Failure {
    Lapin(lapin::Error),
    Nacked,
}

/// Waits for every confirm; returns the message ids of the messages RabbitMQ returned as
/// unroutable.
///
/// lapin hands a returned message to whichever confirm of the channel completes next, and one
/// `multiple` ack completes several confirms in no set order, so the confirm that carries a
/// return is often not the returned message's own. Returns are matched by message id instead;
/// all of a batch's returns have been handed out once all its confirms are in, because RabbitMQ
/// sends a return before the ack of the same message.
async fn confirm_all(confirms: Vec<PublisherConfirm>) -> Result<HashSet<String>, Failure> {
    let mut returned = HashSet::new();
    for confirm in confirms {
        match confirm.await.map_err(Failure::Lapin)? {
            Confirmation::Ack(message) => {
                let id = message.and_then(|m| m.delivery.properties.message_id().clone());
                returned.extend(id.map(|id| id.as_str().to_owned()));
            }
            // `NotRequested` cannot happen on a channel in confirm mode; it is no ack either.
            Confirmation::Nack(_) | Confirmation::NotRequested => return Err(Failure::Nacked),
        }
    }
    Ok(returned)
}

async fn confirm_channel(topic: &str, connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| lapin_error(topic, &e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| lapin_error(topic, &e))?;
    Ok(channel)
}

async fn declare_exchange(
    topic: &str,
    channel: &Channel,
    target: &RabbitMqTarget,
    provision: bool,
) -> Result<ShortString, BrokerError> {
    let topology = |message: String| BrokerError::Topology {
        topic: topic.to_owned(),
        message,
    };
    let exchange = ShortString::try_new(target.exchange.as_str())
        .map_err(|e| topology(format!("exchange name {:?}: {e}", target.exchange)))?;
    let kind = match target.exchange_type {
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Headers => ExchangeKind::Headers,
    };
    let options = ExchangeDeclareOptions {
        passive: !provision,
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let Err(error) = channel
        .exchange_declare(exchange.clone(), kind, options, FieldTable::default())
        .await
    else {
        return Ok(exchange);
    };
    Err(match soft_error(&error) {
        Some(AMQPSoftError::NOTFOUND) => topology(format!(
            "exchange {exchange} does not exist and provision is false"
        )),
        Some(AMQPSoftError::PRECONDITIONFAILED) => topology(format!(
            "exchange {exchange} exists with other settings than a durable {:?} exchange: {error}",
            target.exchange_type
        )),
        Some(AMQPSoftError::ACCESSREFUSED) => topology(format!(
            "not allowed to declare exchange {exchange}: {error}"
        )),
        _ => lapin_error(topic, &error),
    })
}

/// The routing key and properties of a message, or why it cannot be sent at all (AMQP short
/// strings hold at most 255 bytes; such a message would fail every retry).
fn outgoing(envelope: &Envelope) -> Result<(ShortString, BasicProperties), String> {
    let short = |what: &str, value: &str| {
        ShortString::try_new(value)
            .map_err(|e| format!("{what} {value:?} cannot be sent over AMQP: {e}"))
    };
    let routing_key = short("routing key", &envelope.routing_key)?;
    let mut headers = FieldTable::default();
    for (name, value) in &envelope.headers {
        headers.insert(
            short("header name", name)?,
            AMQPValue::LongString(LongString::from(value.as_bytes())),
        );
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(short("message id", &envelope.id)?)
        .with_timestamp(timestamp(envelope.header("ce-time")))
        .with_headers(headers);
    if let Some(content_type) = envelope.header(CONTENT_TYPE) {
        properties = properties.with_content_type(short("content type", content_type)?);
    }
    Ok((routing_key, properties))
}

/// AMQP timestamps are seconds since the epoch: the event's `ce-time`, else now.
fn timestamp(ce_time: Option<&str>) -> u64 {
    ce_time
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .and_then(|time| u64::try_from(time.timestamp()).ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs())
        })
}

fn soft_error(error: &lapin::Error) -> Option<AMQPSoftError> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => Some(soft.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

/// Any failure of the connection or a channel: the relay gives this publisher up and connects
/// again. The URL is not part of the message, as it may hold a password.
fn lapin_error(topic: &str, error: &lapin::Error) -> BrokerError {
    let message = error.to_string();
    match size_limit_in(&message) {
        Some(limit) => BrokerError::TooLarge {
            topic: topic.to_owned(),
            limit,
            message,
        },
        None => BrokerError::Connection {
            topic: topic.to_owned(),
            message,
        },
    }
}

/// The limit in RabbitMQ's refusal of an oversized message: the channel is closed with
/// `PRECONDITION_FAILED - message size N is larger than configured max size M`. The limit is
/// not announced when connecting, so this is the only way to learn it.
fn size_limit_in(message: &str) -> Option<usize> {
    const MARKER: &str = "larger than configured max size ";
    let rest = &message[message.find(MARKER)? + MARKER.len()..];
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

pub mod subscriber;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_limit_is_read_from_rabbitmqs_refusal() {
        let refusal = "protocol error: AMQP soft error: PRECONDITION_FAILED - message size 9000 \
                       is larger than configured max size 4096";
        assert_eq!(size_limit_in(refusal), Some(4096));
        assert_eq!(size_limit_in("NOT_FOUND - no exchange 'x'"), None);
    }

    #[test]
    fn a_routing_key_over_255_bytes_is_refused_before_sending() {
        let envelope = Envelope {
            id: "id".into(),
            key: "k".into(),
            routing_key: "r".repeat(256),
            headers: Vec::new(),
            body: bytes::Bytes::new(),
        };
        let reason = outgoing(&envelope).expect_err("refused");
        assert!(reason.starts_with("routing key"), "{reason}");
    }
}
