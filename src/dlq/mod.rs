//! Dead letters: messages that could not be delivered (or rows that could not be published),
//! kept with everything a person needs to decide what to do with them.

pub mod args;
pub mod command;
mod db;
pub mod depth;
pub mod discard;
pub mod error;
pub mod history;
pub mod query;
pub mod record;
pub mod render;
pub mod replay;
pub mod table;
pub mod topic;
pub mod when;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{broker::BrokerError, config::DeadLetterConfig};

/// One dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Who gave up on it: `outboxsource/<ns>/<name>` or `consumer/<ns>/<name>`.
    pub origin: String,
    pub message_id: String,
    pub event_type: String,
    /// The ordering key (aggregate id).
    pub message_key: String,
    /// The message's headers as they were (CloudEvents attributes and carried headers).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub attempts: i32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    /// The last error, bounded in length.
    pub last_error: String,
    /// A stable, low-cardinality kind of failure (`unroutable`, `http_status`, ...).
    pub error_category: String,
    pub http_status: Option<i32>,
    /// Groups dead letters that failed the same way: see `fingerprint`.
    pub fingerprint: String,
}

/// The most of an error message a dead letter keeps.
pub const MAX_ERROR_CHARS: usize = 2000;

impl DeadLetter {
    /// Bounds `last_error` and computes the fingerprint; call after filling the other fields.
    pub fn finish(mut self) -> Self {
        if self.last_error.chars().count() > MAX_ERROR_CHARS {
            self.last_error = self
                .last_error
                .chars()
                .take(MAX_ERROR_CHARS)
                .collect::<String>()
                + "…";
        }
        self.fingerprint = fingerprint(
            &self.origin,
            &self.event_type,
            &self.error_category,
            &self.last_error,
        );
        self
    }
}

/// A short hash of where and how a message failed, with the variable parts of the error (numbers,
/// ids, quoted values) blanked out, so that a thousand letters failing the same way share one
/// fingerprint.
pub fn fingerprint(origin: &str, event_type: &str, category: &str, error: &str) -> String {
    let mut shape = String::with_capacity(error.len());
    let mut in_quotes = false;
    for c in error.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                shape.push('"');
            }
            _ if in_quotes => {}
            c if c.is_ascii_hexdigit() && !c.is_ascii_alphabetic() || c.is_ascii_digit() => {
                if !shape.ends_with('#') {
                    shape.push('#');
                }
            }
            c => shape.push(c),
        }
    }
    // FNV-1a: stable across Rust versions and machines, unlike the std hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in [origin, event_type, category, &shape]
        .join("\u{1f}")
        .bytes()
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// A dead letter that could not be stored; the caller keeps the message and retries.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter table: {0}")]
    Database(#[from] sqlx::Error),
    #[error("dead-letter table: cannot read the database URL: {0}")]
    Secret(#[from] crate::config::SecretError),
    #[error("dead-letter topic: {0}")]
    Broker(#[from] BrokerError),
    #[error("dead-letter topic refused the message: {0}")]
    Rejected(String),
}

/// Where dead letters are kept. `put` is idempotent per (origin, message id): storing the same
/// letter again updates it, so a retry after a crash never makes two.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    async fn put(&self, letter: &DeadLetter) -> Result<(), DeadLetterError>;
}

/// Opens the store a config points at, creating the table if needed.
pub async fn open(config: &DeadLetterConfig) -> Result<Box<dyn DeadLetterStore>, DeadLetterError> {
    match config {
        DeadLetterConfig::Database(database) => {
            Ok(Box::new(table::TableStore::connect(database).await?))
        }
        DeadLetterConfig::Topic(topic) => Ok(Box::new(topic::TopicStore::connect(topic).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_numbers_and_quoted_values_but_not_the_kind_of_failure() {
        let a = fingerprint(
            "consumer/shop/inventory",
            "order.created",
            "http_status",
            "HTTP 500: order \"o-1\" failed after 31ms",
        );
        let b = fingerprint(
            "consumer/shop/inventory",
            "order.created",
            "http_status",
            "HTTP 500: order \"o-2\" failed after 7ms",
        );
        let c = fingerprint(
            "consumer/shop/inventory",
            "order.created",
            "timeout",
            "HTTP 500: order \"o-1\" failed after 31ms",
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 16);
    }
}
