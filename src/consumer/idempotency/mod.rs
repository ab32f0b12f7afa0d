//! Idempotency: which message ids this consumer has delivered, so that a redelivered message is
//! acknowledged without calling the sink again.
//!
//! A message id goes through three states for one consumer:
//!
//! - **claimed** before the sink is called, with a lease (the sink timeout plus a margin). A
//!   second copy of the same id that arrives meanwhile (a duplicate publish, a broker
//!   redelivery) finds it `Busy` and is retried later instead of calling the sink a second time
//!   at once. A claim whose holder died expires with its lease and can be taken again.
//! - **done** after the sink's 2xx, before the broker acknowledgement: any later copy within
//!   the window finds it `Done` and is acknowledged without a call.
//! - **released** (the record removed) when the attempt failed, so the retry, a replay from the
//!   dead-letter queue, or a copy can claim it again.
//!
//! The remaining gap: a consumer killed after the sink's 2xx and before `done` is recorded has
//! its message redelivered and delivered again. The `Idempotency-Key` header carries the id so
//! that the service can close that gap with its own unique constraint (see `inbox`).

mod batcher;
mod redis;
mod table;

use std::time::Duration;

use async_trait::async_trait;

pub use batcher::BatchedStore;
pub use table::{TableIdempotency, idempotency_ddl};

use crate::config::{IdempotencyConfig, SecretError};

/// What a claim found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Nobody has delivered it (or its record expired): this consumer delivers it now.
    Owned,
    /// Already delivered within the window.
    Done,
    /// Another delivery of the same id holds an unexpired claim.
    Busy,
}

#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error("idempotency table: {0}")]
    Database(#[from] sqlx::Error),
    #[error("idempotency store in Redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("idempotency store: cannot read the connection URL: {0}")]
    Secret(#[from] SecretError),
    #[error("idempotency store: {0}")]
    Closed(String),
    /// The error of a batch this call was part of.
    #[error("{message}")]
    Batched {
        category: &'static str,
        message: String,
    },
}

impl IdempotencyError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::Database(_) => "idempotency_database",
            Self::Redis(_) => "idempotency_redis",
            Self::Secret(_) => "secret",
            Self::Closed(_) => "idempotency_closed",
            Self::Batched { category, .. } => category,
        }
    }
}

/// The records of one consumer. Each call takes many ids at once, so that concurrent
/// deliveries share round trips (see `BatchedStore`); the result of `claim` is in input order.
/// An id given twice in one `claim` is `Owned` at most once.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    async fn claim(&self, ids: &[String]) -> Result<Vec<Claim>, IdempotencyError>;
    async fn complete(&self, ids: &[String]) -> Result<(), IdempotencyError>;
    async fn release(&self, ids: &[String]) -> Result<(), IdempotencyError>;
    /// Removes records older than the window; returns how many. Redis expires its own.
    async fn purge(&self) -> Result<u64, IdempotencyError> {
        Ok(0)
    }
}

/// Opens the store for `consumer` (its origin, `consumer/<ns>/<name>`), creating the table when
/// it is missing. `lease` is how long a claim holds.
pub async fn open(
    config: &IdempotencyConfig,
    consumer: &str,
    lease: Duration,
) -> Result<Box<dyn IdempotencyStore>, IdempotencyError> {
    match config {
        IdempotencyConfig::Database { database, window } => Ok(Box::new(
            TableIdempotency::connect(database, consumer, lease, window.as_std()).await?,
        )),
        IdempotencyConfig::Redis {
            url,
            key_prefix,
            window,
        } => Ok(Box::new(
            redis::RedisIdempotency::connect(
                &url.read()?,
                &format!("{key_prefix}{consumer}:"),
                lease,
                window.as_std(),
            )
            .await?,
        )),
    }
}

/// Marks every repeated id after its first occurrence `Busy`, so that a batch holding two
/// copies of one message delivers it once; returns the distinct ids to ask the store about.
fn first_occurrences(ids: &[String]) -> (Vec<String>, Vec<Option<usize>>) {
    let mut distinct: Vec<String> = Vec::with_capacity(ids.len());
    let mut index_of = std::collections::HashMap::with_capacity(ids.len());
    let positions = ids
        .iter()
        .map(|id| {
            if index_of.contains_key(id.as_str()) {
                None
            } else {
                index_of.insert(id.as_str(), distinct.len());
                distinct.push(id.clone());
                Some(distinct.len() - 1)
            }
        })
        .collect();
    (distinct, positions)
}

/// Spreads the answers for the distinct ids back over the input, `Busy` for repeats.
fn spread(answers: &[Claim], positions: &[Option<usize>]) -> Vec<Claim> {
    positions
        .iter()
        .map(|position| position.map_or(Claim::Busy, |index| answers[index]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_ids_are_busy_after_the_first() {
        let ids: Vec<String> = ["a", "b", "a"].map(String::from).to_vec();
        let (distinct, positions) = first_occurrences(&ids);
        assert_eq!(distinct, ["a", "b"]);
        let claims = spread(&[Claim::Owned, Claim::Done], &positions);
        assert_eq!(claims, [Claim::Owned, Claim::Done, Claim::Busy]);
    }
}
