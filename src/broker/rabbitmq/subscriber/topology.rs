//! The group's queue: declared as a durable quorum queue and bound to receive every message
//! of the exchange, or only checked when the user provisions it.

use lapin::{
    Channel,
    options::{QueueBindOptions, QueueDeclareOptions},
    protocol::AMQPSoftError,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use super::super::{declare_exchange, lapin_error, soft_error};
use crate::{api::broker_topic::ExchangeType, broker::BrokerError, config::RabbitMqTarget};

/// Declares the exchange (as the relay does), the group's quorum queue, and the binding that
/// routes every message of the exchange to it.
pub async fn provision(
    topic: &str,
    channel: &Channel,
    target: &RabbitMqTarget,
    queue: &ShortString,
    (routing_key, arguments): (ShortString, FieldTable),
    single_active: bool,
) -> Result<(), BrokerError> {
    let exchange = declare_exchange(topic, channel, target, true).await?;
    declare_quorum_queue(topic, channel, queue, single_active).await?;
    channel
        .queue_bind(
            queue.clone(),
            exchange.clone(),
            routing_key,
            QueueBindOptions::default(),
            arguments,
        )
        .await
        .map_err(|e| declare_error(topic, &e, &format!("binding {queue} to {exchange}")))
}

/// The binding key and arguments that route every message of the exchange to the queue; none
/// for a direct exchange.
pub fn binding(kind: ExchangeType) -> Option<(ShortString, FieldTable)> {
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

/// The queue's arguments are fixed when it is created: declaring it again with other ones
/// (another queue type, single active consumer switched) fails with a topology error naming it.
async fn declare_quorum_queue(
    topic: &str,
    channel: &Channel,
    queue: &ShortString,
    single_active: bool,
) -> Result<(), BrokerError> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum".as_bytes())),
    );
    if single_active {
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
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
                &format!(
                    "queue {queue} (a durable quorum queue{})",
                    if single_active {
                        " with single active consumer, for per-key ordering"
                    } else {
                        ""
                    }
                ),
            )
        })
}

pub async fn check(
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
pub fn declare_error(topic: &str, error: &lapin::Error, what: &str) -> BrokerError {
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
