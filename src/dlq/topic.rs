//! Dead letters published to a `BrokerTopic`, for teams that handle them with their own tools.

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Mutex;

use super::{DeadLetter, DeadLetterError, DeadLetterStore};
use crate::{
    broker::{self, Outcome, Publisher},
    config::TopicConfig,
    message::Envelope,
};

pub struct TopicStore {
    topic: TopicConfig,
    publisher: Mutex<Option<Box<dyn Publisher>>>,
}

impl TopicStore {
    pub async fn connect(topic: &TopicConfig) -> Result<Self, DeadLetterError> {
        let publisher = broker::connect(topic).await?;
        Ok(Self {
            topic: topic.clone(),
            publisher: Mutex::new(Some(publisher)),
        })
    }
}

/// The message as it was, plus `ferry-dead-letter-*` headers saying why it is here.
fn envelope_of(letter: &DeadLetter) -> Envelope {
    let mut headers = letter.headers.clone();
    headers.extend([
        ("ferry-dead-letter-origin".to_owned(), letter.origin.clone()),
        (
            "ferry-dead-letter-reason".to_owned(),
            letter.last_error.clone(),
        ),
        (
            "ferry-dead-letter-category".to_owned(),
            letter.error_category.clone(),
        ),
        (
            "ferry-dead-letter-fingerprint".to_owned(),
            letter.fingerprint.clone(),
        ),
        (
            "ferry-dead-letter-attempts".to_owned(),
            letter.attempts.to_string(),
        ),
    ]);
    Envelope {
        // A fresh id per origin and message: the broker's de-duplication must not drop the dead
        // letter of a message that was also published normally.
        id: format!("dead-letter:{}:{}", letter.origin, letter.message_id),
        key: letter.message_key.clone(),
        routing_key: format!("dead-letter.{}", letter.event_type),
        headers,
        body: Bytes::from(letter.body.clone()),
    }
}

#[async_trait]
impl DeadLetterStore for TopicStore {
    async fn put(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let mut guard = self.publisher.lock().await;
        if guard.is_none() {
            *guard = Some(broker::connect(&self.topic).await?);
        }
        let Some(publisher) = guard.as_ref() else {
            return Err(DeadLetterError::Rejected("no publisher".into()));
        };
        match publisher.publish(&[envelope_of(letter)]).await {
            Ok(outcomes) => match outcomes.into_iter().next() {
                Some(Outcome::Confirmed) => Ok(()),
                Some(Outcome::Rejected(reason)) => Err(DeadLetterError::Rejected(reason)),
                None => Err(DeadLetterError::Rejected(
                    "the broker did not answer for the dead letter".into(),
                )),
            },
            Err(error) => {
                *guard = None;
                Err(error.into())
            }
        }
    }
}
