//! NATS JetStream: publishes acknowledged by the stream, de-duplicated by `Nats-Msg-Id`.

use std::{collections::VecDeque, time::Duration};

use async_nats::{
    Client, ConnectOptions, HeaderMap, HeaderName, HeaderValue, ServerAddr,
    connection::State,
    header::NATS_MESSAGE_ID,
    jetstream::{
        self,
        context::{PublishAckFuture, PublishError, PublishErrorKind},
        publish::PublishAck,
    },
};
use async_trait::async_trait;

use super::{BrokerError, Outcome, Publisher};
use crate::{config::NatsTarget, message::Envelope};

mod stream;
pub mod subscriber;

/// How long a batch may take, sends and acks together, and the bound of each API request.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// How many acks may be outstanding: sending waits for the oldest beyond this, so a batch of
/// any size keeps a bounded number of messages in flight.
const WINDOW: usize = 1_000;

/// The connection's limit on outstanding acks, across concurrent batches.
const MAX_ACKS_IN_FLIGHT: usize = 64 * WINDOW;

/// How many messages `publish_raw` sends before it waits for their acks.
const RAW_WINDOW: usize = 500;

/// Publishes to one JetStream stream. Messages are sent in batch order on one connection, and
/// JetStream stores them in arrival order, so per-key order holds.
pub struct NatsPublisher {
    topic: String,
    stream: String,
    client: Client,
    jetstream: jetstream::Context,
}

impl NatsPublisher {
    /// Connects and makes sure the stream exists.
    ///
    /// With `provision`, a missing stream is created from the target. An existing stream must
    /// capture the same subjects and use the same storage, or it is a topology error: those
    /// belong to whoever made the stream, and changing them could take messages from another
    /// application. Its duplicate window, `max_age` (when the target sets one) and replica count
    /// are updated to the target's, because the duplicate window is what makes a re-published
    /// batch harmless and the topic says how long it must be. Without `provision`, the stream
    /// is only looked up.
    pub async fn connect(
        topic: &str,
        url: &str,
        target: &NatsTarget,
        provision: bool,
    ) -> Result<Self, BrokerError> {
        let (client, jetstream) = open(topic, url, &format!("ferry-relay/{topic}")).await?;
        stream::ensure_stream(topic, &jetstream, target, provision).await?;
        tracing::debug!(topic, stream = %target.stream, provision, "connected to NATS JetStream");
        Ok(Self {
            topic: topic.to_owned(),
            stream: target.stream.clone(),
            client,
            jetstream,
        })
    }

    async fn send_and_ack(&self, batch: &[Envelope]) -> Result<Vec<Outcome>, BrokerError> {
        let max_payload = self.client.max_payload();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut pending: VecDeque<(usize, PublishAckFuture)> = VecDeque::new();
        for (index, envelope) in batch.iter().enumerate() {
            let headers = match outgoing(envelope, max_payload) {
                Ok(headers) => headers,
                Err(reason) => {
                    outcomes[index] = Some(Outcome::Rejected(reason));
                    continue;
                }
            };
            if pending.len() >= WINDOW
                && let Some((oldest, ack)) = pending.pop_front()
            {
                outcomes[oldest] = Some(self.settle(ack.await, &batch[oldest])?);
            }
            let sent = self
                .jetstream
                .publish_with_headers(envelope.routing_key.clone(), headers, envelope.body.clone())
                .await;
            match sent {
                Ok(ack) => pending.push_back((index, ack)),
                // The server's limit can only shrink between our check and the send after a
                // reconnect to another server; the message is refused just the same.
                Err(error) if error.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    outcomes[index] = Some(Outcome::Rejected(format!(
                        "message is over the server's max_payload: {error}"
                    )));
                }
                Err(error) => return Err(self.publish_error(&error, envelope)),
            }
        }
        while let Some((index, ack)) = pending.pop_front() {
            outcomes[index] = Some(self.settle(ack.await, &batch[index])?);
        }
        // Every message was refused or settled above; a gap would be a bug, and is not taken
        // for a confirm.
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.ok_or_else(|| BrokerError::Publish {
                    topic: self.topic.clone(),
                    message: "a message of the batch got no outcome".into(),
                })
            })
            .collect()
    }

    /// The outcome of one ack. A duplicate is confirmed: the stream holds the message once.
    fn settle(
        &self,
        ack: Result<PublishAck, PublishError>,
        envelope: &Envelope,
    ) -> Result<Outcome, BrokerError> {
        let ack = ack.map_err(|error| self.publish_error(&error, envelope))?;
        if ack.stream != self.stream {
            return Err(BrokerError::Topology {
                topic: self.topic.clone(),
                message: format!(
                    "the message was stored by stream {}, not {}: their subjects overlap",
                    ack.stream, self.stream
                ),
            });
        }
        Ok(Outcome::Confirmed)
    }

    fn publish_error(&self, error: &PublishError, envelope: &Envelope) -> BrokerError {
        let topic = self.topic.clone();
        match error.kind() {
            // No stream listens on the subject: every message of the topic would fail alike.
            PublishErrorKind::StreamNotFound => BrokerError::Topology {
                topic,
                message: format!(
                    "no stream captures subject {} (stream {} was expected to)",
                    envelope.routing_key, self.stream
                ),
            },
            PublishErrorKind::BrokenPipe => BrokerError::Connection {
                topic,
                message: error.to_string(),
            },
            _ => BrokerError::Publish {
                topic,
                message: error.to_string(),
            },
        }
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, batch: &[Envelope]) -> Result<Vec<Outcome>, BrokerError> {
        tokio::time::timeout(PUBLISH_TIMEOUT, self.send_and_ack(batch))
            .await
            .map_err(|_| BrokerError::Publish {
                topic: self.topic.clone(),
                message: format!(
                    "no ack within {}s for a batch of {}",
                    PUBLISH_TIMEOUT.as_secs(),
                    batch.len()
                ),
            })?
    }

    fn max_message_bytes(&self) -> Option<usize> {
        Some(self.client.max_payload())
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    async fn close(&self) {
        // Drain flushes what is buffered and closes; acks were all awaited by `publish`.
        if let Err(error) = self.client.drain().await {
            tracing::debug!(topic = %self.topic, %error, "closing the NATS connection failed");
        }
    }
}

/// The benchmark's ceiling: the same async-nats client sending the same messages with the same
/// headers (`Nats-Msg-Id` included), in windows of `RAW_WINDOW` with every ack awaited before
/// the next window, and nothing of Ferry's in between. The stream must exist.
pub async fn publish_raw(
    url: &str,
    target: &NatsTarget,
    messages: &[Envelope],
) -> Result<(), BrokerError> {
    const TOPIC: &str = "raw";
    let failed = |message: String| BrokerError::Publish {
        topic: TOPIC.into(),
        message,
    };
    let (client, jetstream) = open(TOPIC, url, "ferry-raw").await?;
    let max_payload = client.max_payload();
    for window in messages.chunks(RAW_WINDOW) {
        let mut acks = Vec::with_capacity(window.len());
        for envelope in window {
            let headers = outgoing(envelope, max_payload).map_err(failed)?;
            acks.push(
                jetstream
                    .publish_with_headers(
                        envelope.routing_key.clone(),
                        headers,
                        envelope.body.clone(),
                    )
                    .await
                    .map_err(|e| failed(e.to_string()))?,
            );
        }
        for ack in acks {
            let ack = ack.await.map_err(|e| failed(e.to_string()))?;
            if ack.stream != target.stream {
                return Err(failed(format!("stored by stream {}", ack.stream)));
            }
        }
    }
    let _ = client.drain().await;
    Ok(())
}

async fn open(
    topic: &str,
    url: &str,
    name: &str,
) -> Result<(Client, jetstream::Context), BrokerError> {
    let client = with_url_credentials(ConnectOptions::new(), url)
        .name(name)
        .connection_timeout(PUBLISH_TIMEOUT)
        .connect(url)
        .await
        .map_err(|e| BrokerError::Connection {
            topic: topic.to_owned(),
            message: e.to_string(),
        })?;
    // Acks of all batches in flight on this connection share one limit, and a batch waiting
    // for a free slot would never give back the slots it holds; so the limit is far above what
    // the relay's workers keep in flight (`WINDOW` each), and reaching it is an error, not a wait.
    let jetstream = jetstream::ContextBuilder::new()
        .timeout(PUBLISH_TIMEOUT)
        .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
        .backpressure_on_inflight(false)
        .build(client.clone());
    Ok((client, jetstream))
}

/// Credentials written into a server URL.
#[derive(Debug, PartialEq, Eq)]
enum UrlCredentials {
    UserPassword(String, String),
    Token(String),
}

/// The credentials in the server URL, which async-nats does not send by itself
/// (nats-io/nats.rs#1623): `user:password@` is a user and password, a lone `token@` a token, as
/// in NATS's other clients. Both are percent-decoded, so a password may hold any character.
fn url_credentials(url: &str) -> Option<UrlCredentials> {
    // A malformed URL has none; connecting reports it.
    let server = url.parse::<ServerAddr>().ok()?;
    let decoded = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    Some(match (server.username()?, server.password()) {
        (user, Some(password)) => UrlCredentials::UserPassword(decoded(user), decoded(password)),
        (token, None) => UrlCredentials::Token(decoded(token)),
    })
}

fn with_url_credentials(options: ConnectOptions, url: &str) -> ConnectOptions {
    match url_credentials(url) {
        Some(UrlCredentials::UserPassword(user, password)) => {
            options.user_and_password(user, password)
        }
        Some(UrlCredentials::Token(token)) => options.token(token),
        None => options,
    }
}

/// The headers of a message, or why it cannot be sent: every envelope header, then
/// `Nats-Msg-Id` so that the stream's duplicate window drops a re-publish.
fn outgoing(envelope: &Envelope, max_payload: usize) -> Result<HeaderMap, String> {
    if !is_publish_subject(&envelope.routing_key) {
        return Err(format!(
            "{:?} is not a NATS subject a message can be published to",
            envelope.routing_key
        ));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &envelope.headers {
        let name: HeaderName = name
            .parse()
            .map_err(|_| format!("header name {name:?} is not valid in NATS"))?;
        let value: HeaderValue = value
            .parse()
            .map_err(|_| format!("header {name} has a line break in its value"))?;
        headers.append(name, value);
    }
    let id: HeaderValue = envelope
        .id
        .parse()
        .map_err(|_| format!("message id {:?} is not a valid header value", envelope.id))?;
    headers.insert(NATS_MESSAGE_ID, id);
    let size = wire_size(envelope);
    if size > max_payload {
        return Err(format!(
            "message is {size} bytes, over the server's max_payload of {max_payload}"
        ));
    }
    Ok(headers)
}

/// What the server counts against `max_payload`: the header block (`NATS/1.0`, one
/// `name: value` line per header, a blank line) and the body.
fn wire_size(envelope: &Envelope) -> usize {
    const LINE: usize = "\r\n".len();
    const SEPARATOR: usize = ": ".len();
    let line = |name: &str, value: &str| name.len() + SEPARATOR + value.len() + LINE;
    "NATS/1.0".len()
        + LINE
        + envelope
            .headers
            .iter()
            .map(|(n, v)| line(n, v))
            .sum::<usize>()
        + line(NATS_MESSAGE_ID.as_ref(), &envelope.id)
        + LINE
        + envelope.body.len()
}

/// A concrete subject: not empty, no whitespace, no empty token, no wildcard.
fn is_publish_subject(subject: &str) -> bool {
    !subject.is_empty()
        && !subject.contains(char::is_whitespace)
        && subject
            .split('.')
            .all(|token| !token.is_empty() && token != "*" && token != ">")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(subject: &str, headers: &[(&str, &str)], body: &str) -> Envelope {
        Envelope {
            id: "0190a6a0-0000-7000-8000-000000000001".into(),
            key: "k".into(),
            routing_key: subject.into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: bytes::Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn credentials_in_the_url_are_a_user_and_password_or_a_token() {
        assert_eq!(
            url_credentials("tls://relay:p%40ss%3Aw0rd@nats.example:4222"),
            Some(UrlCredentials::UserPassword(
                "relay".into(),
                "p@ss:w0rd".into()
            ))
        );
        assert_eq!(
            url_credentials("nats://s3cr3t@nats.example"),
            Some(UrlCredentials::Token("s3cr3t".into()))
        );
        assert_eq!(url_credentials("nats://nats.example:4222"), None);
        assert_eq!(url_credentials("http://user:pass@nats.example"), None);
    }

    #[test]
    fn wire_size_counts_the_header_block_and_body() {
        let message = envelope(
            "orders.created",
            &[("ce-id", "1"), ("content-type", "application/json")],
            "{}",
        );
        let headers = outgoing(&message, usize::MAX).expect("valid");
        let mut block = "NATS/1.0\r\n".to_owned();
        for (name, values) in headers.iter() {
            for value in values {
                block.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        block.push_str("\r\n");
        assert_eq!(wire_size(&message), block.len() + 2);
    }

    #[test]
    fn an_oversized_message_is_refused_with_both_sizes() {
        let message = envelope("orders.created", &[], "{}");
        let size = wire_size(&message);
        let reason = outgoing(&message, size - 1).expect_err("too large");
        assert_eq!(
            reason,
            format!(
                "message is {size} bytes, over the server's max_payload of {}",
                size - 1
            )
        );
        assert!(outgoing(&message, size).is_ok());
    }

    #[test]
    fn wildcards_and_blank_subjects_are_not_publishable() {
        for bad in [
            "",
            "orders.*",
            "orders.>",
            "orders..created",
            "orders created",
            ".orders",
        ] {
            assert!(!is_publish_subject(bad), "{bad:?}");
        }
        assert!(is_publish_subject("orders.Order.created"));
    }
}
