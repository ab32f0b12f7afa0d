//! How far behind a group is, as far as AMQP tells: the ready messages of its queue and of its
//! delay queues, found by probing them with passive declarations.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use lapin::{
    options::QueueDeclareOptions,
    protocol::AMQPSoftError,
    types::{FieldTable, ShortString},
};

use super::super::{lapin_error, soft_error};
use super::{RabbitMqSubscriber, delay, lock};
use crate::broker::BrokerError;

/// How often `lag` looks for delay queues it has not seen (another member's).
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(60);

/// The delay queues `lag` counts.
#[derive(Default)]
pub struct DelayQueues {
    seen: BTreeSet<Duration>,
    discovered_at: Option<Instant>,
}

impl DelayQueues {
    /// Counts this delay queue from now on: this subscriber just declared it.
    pub fn declared(&mut self, delay: Duration) {
        self.seen.insert(delay);
    }
}

impl RabbitMqSubscriber {
    /// The number of messages in a queue, `None` when it does not exist. Each probe has a
    /// channel to itself, since RabbitMQ closes the channel of a passive declare that fails.
    pub(super) async fn probe(&self, queue: &str) -> Result<Option<u64>, BrokerError> {
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
    pub(super) async fn delayed(&self) -> Result<u64, BrokerError> {
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
}
