//! One publisher per topic, connected on first use and dropped after an error, so the next
//! batch reconnects (with the worker's backoff in between).

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::Mutex;

use crate::{
    broker::{self, BrokerError, Publisher},
    config::TopicConfig,
};

/// A topic's config and its publisher, once connected.
type Slot = (TopicConfig, Mutex<Option<Arc<dyn Publisher>>>);

pub struct Publishers {
    slots: BTreeMap<String, Slot>,
    /// Size limits a broker revealed only by refusing a message, by topic; they outlive the
    /// connection that learned them.
    learned_limits: std::sync::Mutex<BTreeMap<String, usize>>,
}

impl Publishers {
    pub fn new(topics: &BTreeMap<String, TopicConfig>) -> Self {
        Self {
            slots: topics
                .iter()
                .map(|(name, topic)| (name.clone(), (topic.clone(), Mutex::new(None))))
                .collect(),
            learned_limits: std::sync::Mutex::default(),
        }
    }

    /// The connected publisher of `topic`, connecting it when needed.
    pub async fn get(&self, topic: &str) -> Result<Arc<dyn Publisher>, BrokerError> {
        let Some((config, slot)) = self.slots.get(topic) else {
            return Err(BrokerError::Topology {
                topic: topic.to_owned(),
                message: "no such topic in the relay config".into(),
            });
        };
        let mut slot = slot.lock().await;
        if let Some(publisher) = slot.as_ref() {
            return Ok(publisher.clone());
        }
        let publisher: Arc<dyn Publisher> = Arc::from(broker::connect(config).await?);
        tracing::info!(
            topic,
            broker = config.broker().as_str(),
            "connected to broker"
        );
        *slot = Some(publisher.clone());
        Ok(publisher)
    }

    /// Forgets a publisher whose connection failed.
    pub async fn reset(&self, topic: &str) {
        if let Some((_, slot)) = self.slots.get(topic)
            && let Some(publisher) = slot.lock().await.take()
        {
            publisher.close().await;
        }
    }

    /// Connects every topic now, so a misconfiguration shows at start.
    pub async fn connect_all(&self) -> Result<(), BrokerError> {
        for topic in self.slots.keys() {
            self.get(topic).await?;
        }
        Ok(())
    }

    /// The largest message `topic` accepts: the broker's own limit where it has one, announced
    /// or learned from a refusal.
    pub async fn limit(&self, topic: &str) -> Option<usize> {
        let (_, slot) = self.slots.get(topic)?;
        let announced = slot
            .lock()
            .await
            .as_ref()
            .and_then(|publisher| publisher.max_message_bytes());
        let learned = self.learned_limits().get(topic).copied();
        match (announced, learned) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Remembers a limit the broker revealed by refusing a message.
    pub fn learn_limit(&self, topic: &str, limit: usize) {
        self.learned_limits().insert(topic.to_owned(), limit);
    }

    fn learned_limits(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, usize>> {
        self.learned_limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// False when any connected publisher reports its connection down.
    pub async fn all_connected(&self) -> bool {
        for (_, slot) in self.slots.values() {
            if slot
                .lock()
                .await
                .as_ref()
                .is_some_and(|publisher| !publisher.connected())
            {
                return false;
            }
        }
        true
    }

    pub async fn close_all(&self) {
        for (_, slot) in self.slots.values() {
            if let Some(publisher) = slot.lock().await.take() {
                publisher.close().await;
            }
        }
    }
}
