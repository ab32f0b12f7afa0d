//! Publishing a retry's copy: to the delay queue for its delay (declared on the way, which
//! renews its lease) or straight back to the group's queue, confirmed before the original is
//! acked.

use std::time::{Duration, Instant};

use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::ShortString,
};

use super::super::lapin_error;
use super::{RabbitMqSubscriber, delay, lock, topology::declare_error};
use crate::broker::BrokerError;

/// What RabbitMQ said to one publish of a retry copy.
enum Published {
    Confirmed,
    /// No queue took it: the delay queue expired or the group's queue is gone.
    Returned,
    Refused,
}

impl RabbitMqSubscriber {
    /// Publishes a retry copy to the delay queue for `delay` (or straight to the group's queue)
    /// and waits for its confirm. A delay queue that expired meanwhile makes the copy come back
    /// unroutable: it is declared again and the copy published once more.
    pub(super) async fn publish_copy(
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
        let mut redeclared = false;
        loop {
            self.declare_delay_queue(channel, delay, redeclared).await?;
            match publish(channel, &queue, body, properties.clone())
                .await
                .map_err(|e| lapin_error(&self.topic, &e))?
            {
                Published::Confirmed => return Ok(()),
                Published::Refused => return Err(self.refused()),
                Published::Returned if redeclared => {
                    return Err(self.failure(format!(
                        "delay queue {queue} was declared but the copy was returned unroutable"
                    )));
                }
                Published::Returned => {
                    tracing::debug!(topic = %self.topic, queue, "delay queue expired; declaring it again");
                    redeclared = true;
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
        let recent = lock(&self.declared_at)
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
        lock(&self.declared_at).insert(delay, started);
        lock(&self.delay_queues).declared(delay);
        Ok(())
    }

    pub(super) async fn retry_channel(&self) -> Result<Channel, BrokerError> {
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
