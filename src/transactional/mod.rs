//! Transactional ("half") messages, for services that cannot write an outbox table: the
//! producer prepares a message with the relay, runs its local transaction, then commits or rolls
//! the message back; a message left undecided is checked back with the producer.
//!
//! - `store`: the half-message table beside the outbox, one module per engine;
//! - `server`: the relay's HTTP API (prepare, commit, rollback, state);
//! - `checkback`: the loop that asks producers about undecided messages;
//! - `metrics`: what `/metrics` and `/status` say about them;
//! - `producer`: the helpers a Rust producer uses, including the marker row that makes the
//!   check-back's answer definite.

pub mod checkback;
pub mod metrics;
pub mod producer;
pub mod server;
pub mod store;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use store::{Decided, HalfStats, HalfStore, State};

/// What a producer prepares: an outbox row's fields.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewHalfMessage {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    /// Any JSON document, kept as it was sent.
    pub payload: Box<serde_json::value::RawValue>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A prepared message as the check-back sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HalfMessage {
    pub id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub payload: String,
    pub headers: Option<String>,
    pub checks: i32,
    pub prepared_at: DateTime<Utc>,
}

/// What the producer (or the check-back) decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Commit,
    Rollback,
}

impl Decision {
    pub fn state(self) -> State {
        match self {
            Self::Commit => State::Committed,
            Self::Rollback => State::RolledBack,
        }
    }
}

/// Who decided, kept with the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// The producer's commit or rollback call.
    Producer,
    /// The producer's answer to a check-back.
    CheckBack,
    /// Nobody: the checks ran out.
    MaxChecks,
}

impl DecidedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Producer => "producer",
            Self::CheckBack => "check-back",
            Self::MaxChecks => "max-checks",
        }
    }
}

/// A half-message operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum HalfError {
    #[error("no half message {0}")]
    NotFound(Uuid),
    #[error("half message {id} is already {}; it cannot be {}", .state.as_str(), match .wanted { Decision::Commit => "committed", Decision::Rollback => "rolled back" })]
    Conflict {
        id: Uuid,
        state: State,
        wanted: Decision,
    },
    #[error("the half-message table holds something unexpected: {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl HalfError {
    /// A stable, low-cardinality name for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Conflict { .. } => "conflict",
            Self::Corrupt(_) => "corrupt",
            Self::Database(_) => "database",
        }
    }
}

/// How often the table's waiting and dead-lettered messages are counted for the gauges.
const COUNT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the API and the check-back for a relay until `stop`: opens the half-message table
/// (creating it when missing; retried with backoff while the database is unreachable), reads
/// the token, then serves. A port that cannot be bound is logged as an error and leaves the
/// relay's publishing running.
pub async fn run(
    config: crate::config::TransactionalConfig,
    metrics: std::sync::Arc<metrics::HalfMetrics>,
    database: crate::config::DatabaseConfig,
    retry: crate::api::retry_policy::RetryPolicySpec,
    dead_letters: Option<std::sync::Arc<dyn crate::dlq::DeadLetterStore>>,
    origin: String,
    stop: tokio_util::sync::CancellationToken,
) {
    use crate::retry::{Backoff, sleep_or_stop};
    let mut backoff = Backoff::new(&retry);
    let (store, token) = loop {
        let opened = async {
            let url = database.url.read().map_err(|e| e.to_string())?;
            let token = config
                .token
                .read()
                .map_err(|e| format!("the API token: {e}"))?;
            let store = store::open(database.engine, &url, &database.table)
                .await
                .map_err(|e| e.to_string())?;
            store.migrate().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((store, token))
        };
        match opened.await {
            Ok(opened) => break opened,
            Err(error) => {
                tracing::warn!(%error, "cannot open the half-message table; retrying");
                if !sleep_or_stop(backoff.next_delay(), &stop).await {
                    return;
                }
            }
        }
    };
    tokio::spawn(count_table(store.clone(), metrics.clone(), stop.clone()));
    let served = server::serve(
        config.listen,
        store.clone(),
        metrics.clone(),
        token,
        config.first_check_delay.as_std(),
        config.max_request_bytes as usize,
        stop.clone(),
    )
    .await;
    let server = match served {
        Ok((address, task)) => {
            tracing::info!(%address, "transactional-message API listening");
            task
        }
        Err(error) => {
            tracing::error!(%error, listen = %config.listen, "cannot serve the transactional-message API");
            return;
        }
    };
    match checkback::CheckBack::new(&config, store, metrics, dead_letters, origin) {
        Ok(check_back) => check_back.run(stop).await,
        Err(error) => tracing::error!(%error, "cannot build the check-back HTTP client"),
    }
    let _ = server.await;
}

/// Refreshes the gauges of waiting and dead-lettered messages until `stop`.
async fn count_table(
    store: std::sync::Arc<dyn HalfStore>,
    metrics: std::sync::Arc<metrics::HalfMetrics>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match store.stats().await {
            Ok(stats) => metrics.record_table(stats, Utc::now()),
            Err(error) => tracing::debug!(%error, "cannot count half messages"),
        }
        if !crate::retry::sleep_or_stop(COUNT_EVERY, &stop).await {
            return;
        }
    }
}
