//! The check-back loop: a prepared message that nobody decided within the first delay is
//! checked back with the producer (`POST <checkBackUrl>` with its id); `committed` publishes
//! it, `rolled_back` drops it, anything else is tried again at the interval, and after the
//! last check it goes to the dead-letter queue with the reason, never silently away.
//!
//! The producer's answer: `200` with `{"status": "committed"}` or `{"status": "rolled_back"}`.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{
    Decided, DecidedBy, Decision, HalfError, HalfMessage, HalfStore, State, metrics::HalfMetrics,
};
use crate::config::TransactionalConfig;
use crate::dlq::{DeadLetter, DeadLetterStore};

/// Messages checked per round.
const ROUND: u32 = 64;
/// The longest wait between rounds; shorter check intervals wait less.
const MOST_IDLE: Duration = Duration::from_secs(1);
/// How often decided messages past the retention are purged, and how many per statement.
const PURGE_EVERY: Duration = Duration::from_secs(60);
const PURGE_BATCH: u32 = 1000;

pub struct CheckBack {
    pub store: Arc<dyn HalfStore>,
    pub metrics: Arc<HalfMetrics>,
    pub http: reqwest::Client,
    pub url: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub max_checks: u32,
    /// How long decided messages are kept before `purge` deletes them.
    pub retention: Duration,
    pub dead_letters: Option<Arc<dyn DeadLetterStore>>,
    /// Who gives up on a message, in its dead letter: `outboxsource/<ns>/<name>`.
    pub origin: String,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
}

impl CheckBack {
    pub fn new(
        config: &TransactionalConfig,
        store: Arc<dyn HalfStore>,
        metrics: Arc<HalfMetrics>,
        dead_letters: Option<Arc<dyn DeadLetterStore>>,
        origin: String,
    ) -> Result<Self, reqwest::Error> {
        let timeout = config.check_timeout.as_std();
        Ok(Self {
            store,
            metrics,
            http: reqwest::Client::builder().timeout(timeout).build()?,
            url: config.check_back_url.clone(),
            interval: config.check_interval.as_std(),
            timeout,
            max_checks: config.max_checks,
            retention: config.retention.as_std(),
            dead_letters,
            origin,
        })
    }

    /// Runs rounds until `stop`, and purges decided messages past the retention once a minute.
    pub async fn run(self, stop: CancellationToken) {
        let idle = self.interval.min(MOST_IDLE);
        let mut last_purge: Option<std::time::Instant> = None;
        while !stop.is_cancelled() {
            if last_purge.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                self.purge().await;
                last_purge = Some(std::time::Instant::now());
            }
            let checked = match self.round().await {
                Ok(checked) => checked,
                Err(error) => {
                    tracing::warn!(%error, "checking back half messages failed");
                    0
                }
            };
            if checked < ROUND as usize {
                tokio::select! {
                    _ = tokio::time::sleep(idle) => {}
                    _ = stop.cancelled() => {}
                }
            }
        }
    }

    /// Deletes decided messages older than the retention, in bounded batches.
    async fn purge(&self) {
        let Ok(retention) = chrono::Duration::from_std(self.retention) else {
            return;
        };
        let before = Utc::now() - retention;
        crate::outbox::purge_in_batches(PURGE_BATCH, "decided half messages", || {
            self.store.purge_decided(before, PURGE_BATCH)
        })
        .await;
    }

    /// Checks back every message due now (at most one round's worth); how many.
    pub async fn round(&self) -> Result<usize, HalfError> {
        // The lease outlasts the call and its recording, so another replica does not ask too.
        let lease = self.timeout + self.interval;
        let due = self.store.due(ROUND, lease).await?;
        for message in &due {
            self.check(message).await?;
        }
        Ok(due.len())
    }

    async fn check(&self, message: &HalfMessage) -> Result<(), HalfError> {
        let problem = match self.ask(message).await {
            Ok(decision) => {
                match self
                    .store
                    .decide(message.id, decision, DecidedBy::CheckBack)
                    .await
                {
                    Ok(decided) => self.metrics.record_decided(decided, DecidedBy::CheckBack),
                    // Decided meanwhile by the producer's own call: that decision stands.
                    Err(HalfError::Conflict { .. } | HalfError::NotFound(_)) => {}
                    Err(error) => return Err(error),
                }
                tracing::info!(id = %message.id, ?decision, "half message decided by check-back");
                return Ok(());
            }
            Err(problem) => problem,
        };
        let checks = self
            .store
            .check_failed(message.id, &problem, self.interval)
            .await?;
        self.metrics.record_failed_check();
        tracing::warn!(id = %message.id, checks, error = %problem, "check-back got no answer");
        if checks >= self.max_checks as i32 {
            self.give_up(message, checks, &problem).await?;
        }
        Ok(())
    }

    /// The producer's answer, or why there is none.
    async fn ask(&self, message: &HalfMessage) -> Result<Decision, String> {
        let request = json!({
            "id": message.id,
            "aggregateType": message.aggregate_type,
            "aggregateId": message.aggregate_id,
            "eventType": message.event_type,
            "checks": message.checks,
        });
        let response = self
            .http
            .post(&self.url)
            .json(&request)
            .send()
            .await
            .map_err(|error| format!("check-back call failed: {error}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("check-back answered HTTP {}", status.as_u16()));
        }
        let answer: Answer = response
            .json()
            .await
            .map_err(|error| format!("check-back answer is not {{\"status\": ...}}: {error}"))?;
        match answer.status.as_str() {
            "committed" => Ok(Decision::Commit),
            "rolled_back" => Ok(Decision::Rollback),
            other => Err(format!(
                "check-back answered status {other:?}, not committed or rolled_back"
            )),
        }
    }

    async fn give_up(
        &self,
        message: &HalfMessage,
        checks: i32,
        last: &str,
    ) -> Result<(), HalfError> {
        let reason = format!("no decision after {checks} check-backs; the last: {last}");
        if let Some(store) = &self.dead_letters {
            let now = Utc::now();
            let mut headers = vec![
                ("half-message-id".to_owned(), message.id.to_string()),
                ("aggregate-type".to_owned(), message.aggregate_type.clone()),
                ("aggregate-id".to_owned(), message.aggregate_id.clone()),
                ("event-type".to_owned(), message.event_type.clone()),
                ("prepared-at".to_owned(), message.prepared_at.to_rfc3339()),
            ];
            if let Some(raw) = &message.headers {
                headers.push(("outbox-headers".to_owned(), raw.clone()));
            }
            let letter = DeadLetter {
                origin: self.origin.clone(),
                message_id: message.id.to_string(),
                event_type: message.event_type.clone(),
                message_key: message.aggregate_id.clone(),
                headers,
                body: message.payload.clone().into_bytes(),
                attempts: checks,
                first_failed_at: message.prepared_at,
                last_failed_at: now,
                last_error: reason.clone(),
                error_category: "check_back_exhausted".to_owned(),
                http_status: None,
                fingerprint: String::new(),
            }
            .finish();
            if let Err(error) = store.put(&letter).await {
                // Still prepared: the next round tries the dead-letter queue again.
                tracing::warn!(id = %message.id, %error, "cannot dead-letter an undecided half message");
                return Ok(());
            }
        }
        if self.store.give_up(message.id, &reason).await? {
            let decided = Decided {
                state: State::DeadLettered,
                repeated: false,
            };
            self.metrics.record_decided(decided, DecidedBy::MaxChecks);
            tracing::warn!(id = %message.id, %reason, "half message dead-lettered");
        }
        Ok(())
    }
}
