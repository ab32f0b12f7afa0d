//! Redis Streams publisher: each message becomes one stream entry added with `XADD`.
//!
//! An entry's fields are the envelope's headers in order (`ce-specversion`, `ce-id`, ...,
//! `content-type`, `traceparent`, user headers), then a field `data` holding the body. Redis
//! keeps an entry's fields in the order they were given, so readers see them in that order.
//! A message with a header named `data` is rejected: it would be indistinguishable from the
//! body field.
//!
//! A batch is one pipeline, so the entries of a batch are added in batch order. The XADD reply
//! (the new entry's id) is the confirmation: the entry is in the server's memory, and on disk
//! as the server's `appendonly`/`appendfsync` settings say.
//!
//! Redis has no de-duplication. When the relay crashes after an `XADD` but before it marks the
//! rows published, it publishes them again and the stream holds a second entry with the same
//! `ce-id`: consumers deduplicate by `ce-id`.
//!
//! `maxLength` adds `MAXLEN ~ n` to each `XADD`: Redis trims whole nodes of the stream, so the
//! stream keeps about `n` entries (a little more, never fewer), read or not.

use std::time::Duration;

use async_trait::async_trait;
use redis::{
    ErrorKind, Pipeline, RedisError, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::{BrokerError, Outcome, Publisher};
use crate::{config::RedisTarget, message::Envelope};

/// The field holding the message body, after the header fields.
pub const BODY_FIELD: &str = "data";

/// Messages per pipeline in [`publish_raw`].
const RAW_WINDOW: usize = 500;
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection attempts of the connection manager. Few: after a failed batch the relay calls
/// `connect` again on its own backoff, and a refused first connection should be reported in
/// well under a second, not after the client's default six attempts (about ten seconds).
const CONNECT_RETRIES: usize = 2;
/// How long a pipeline may wait for its replies. The client's default (500 ms) is too short
/// for a large batch on a server that fsyncs every write.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Error codes that mean the key or the deployment is not what the topic expects: retrying
/// cannot help until someone changes the setup.
const TOPOLOGY_CODES: [&str; 7] = [
    "WRONGTYPE",
    "READONLY",
    "MOVED",
    "ASK",
    "CROSSSLOT",
    "CLUSTERDOWN",
    "NOPERM",
];

/// Publishes to one Redis stream.
pub struct RedisPublisher {
    topic: String,
    stream: String,
    max_length: Option<i64>,
    /// Reconnects by itself; cloned per call because commands need `&mut`.
    connection: ConnectionManager,
}

impl RedisPublisher {
    /// Connects and checks the stream key. There is nothing to declare with `provision` (the
    /// first `XADD` creates the stream), but a key of another type is refused either way, and
    /// without `provision` the stream must already exist.
    pub async fn connect(
        topic: &str,
        url: &str,
        target: &RedisTarget,
        provision: bool,
    ) -> Result<Self, BrokerError> {
        let connection = open(url).await.map_err(|error| classify(topic, &error))?;
        let kind: String = redis::cmd("TYPE")
            .arg(&target.stream)
            .query_async(&mut connection.clone())
            .await
            .map_err(|error| classify(topic, &error))?;
        match kind.as_str() {
            "stream" => {}
            "none" if provision => {}
            "none" => {
                return Err(topology(
                    topic,
                    format!(
                        "stream {:?} does not exist and provision is off",
                        target.stream
                    ),
                ));
            }
            other => {
                return Err(topology(
                    topic,
                    format!("key {:?} is a {other}, not a stream", target.stream),
                ));
            }
        }
        tracing::debug!(topic, stream = %target.stream, provision, "redis stream ready");
        Ok(Self {
            topic: topic.to_owned(),
            stream: target.stream.clone(),
            max_length: target.max_length,
            connection,
        })
    }
}

#[async_trait]
impl Publisher for RedisPublisher {
    async fn publish(&self, batch: &[Envelope]) -> Result<Vec<Outcome>, BrokerError> {
        let mut outcomes: Vec<Option<Outcome>> = batch.iter().map(refusal).collect();
        let mut pipe = redis::pipe();
        // Per-command errors come back as values, so each one can be classified by its code.
        pipe.ignore_errors();
        let mut sent = 0;
        for (message, outcome) in batch.iter().zip(&outcomes) {
            if outcome.is_none() {
                push_xadd(&mut pipe, &self.stream, self.max_length, message);
                sent += 1;
            }
        }
        if sent == 0 {
            return Ok(outcomes.into_iter().flatten().collect());
        }
        let replies: Vec<Value> = pipe
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|error| classify(&self.topic, &error))?;
        if replies.len() != sent {
            return Err(BrokerError::Publish {
                topic: self.topic.clone(),
                message: format!("{} replies to {sent} XADD commands", replies.len()),
            });
        }
        let mut replies = replies.into_iter();
        for outcome in outcomes.iter_mut().filter(|outcome| outcome.is_none()) {
            match replies.next() {
                Some(Value::BulkString(_) | Value::SimpleString(_)) => {
                    *outcome = Some(Outcome::Confirmed)
                }
                Some(Value::ServerError(error)) => {
                    return Err(by_code(
                        &self.topic,
                        error.code(),
                        format!("XADD to {:?}: {error}", self.stream),
                    ));
                }
                other => {
                    return Err(BrokerError::Publish {
                        topic: self.topic.clone(),
                        message: format!("unexpected XADD reply {other:?}"),
                    });
                }
            }
        }
        Ok(outcomes.into_iter().flatten().collect())
    }
}

/// The benchmark's ceiling: the same `XADD`s through the same client, pipelined in windows of
/// 500 messages, without batching, outcomes or anything else of Ferry's.
pub async fn publish_raw(
    url: &str,
    target: &RedisTarget,
    messages: &[Envelope],
) -> Result<(), BrokerError> {
    let label = target.stream.as_str();
    let mut connection = open(url).await.map_err(|error| classify(label, &error))?;
    for window in messages.chunks(RAW_WINDOW) {
        let mut pipe = redis::pipe();
        for message in window {
            push_xadd(&mut pipe, &target.stream, target.max_length, message);
        }
        let _: Vec<Value> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|error| classify(label, &error))?;
    }
    Ok(())
}

async fn open(url: &str) -> Result<ConnectionManager, RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(CONNECT_RETRIES)
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    ConnectionManager::new_with_config(client, config).await
}

/// `XADD <stream> [MAXLEN ~ n] * <header> <value> ... data <body>`.
fn push_xadd(pipe: &mut Pipeline, stream: &str, max_length: Option<i64>, message: &Envelope) {
    let command = pipe.cmd("XADD").arg(stream);
    if let Some(max_length) = max_length {
        command.arg("MAXLEN").arg("~").arg(max_length);
    }
    command.arg("*");
    for (name, value) in &message.headers {
        command.arg(name).arg(value);
    }
    command.arg(BODY_FIELD).arg(&message.body[..]);
}

/// A message that cannot become an entry, whatever the server says.
fn refusal(message: &Envelope) -> Option<Outcome> {
    message
        .headers
        .iter()
        .any(|(name, _)| name == BODY_FIELD)
        .then(|| {
            Outcome::Rejected(format!(
                "header {BODY_FIELD:?} collides with the body field of the stream entry"
            ))
        })
}

fn topology(topic: &str, message: String) -> BrokerError {
    BrokerError::Topology {
        topic: topic.to_owned(),
        message,
    }
}

fn by_code(topic: &str, code: &str, message: String) -> BrokerError {
    if TOPOLOGY_CODES.contains(&code) {
        topology(topic, message)
    } else {
        BrokerError::Publish {
            topic: topic.to_owned(),
            message,
        }
    }
}

/// Maps a client error onto the relay's categories. A timeout is "did not confirm in time"
/// (some entries may have been added), anything below the protocol is the connection's.
fn classify(topic: &str, error: &RedisError) -> BrokerError {
    if error.is_timeout() {
        return BrokerError::Publish {
            topic: topic.to_owned(),
            message: format!("no reply in time: {error}"),
        };
    }
    let connection_level = error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig
        );
    if connection_level {
        return BrokerError::Connection {
            topic: topic.to_owned(),
            message: error.to_string(),
        };
    }
    by_code(topic, error.code().unwrap_or_default(), error.to_string())
}

pub mod subscriber;
