//! What the status probe read from a workload's `/status`: the relay's and the consumer's
//! documents as typed structs (every field optional, unknown fields ignored), and the figures
//! of the OutboxSource's and Consumer's status they fill in.

use std::fmt::Display;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::api::{
    Consumer, OutboxSource,
    consumer::ConsumerStatus,
    outbox_source::{HalfMessagesStatus, OutboxSourceStatus},
    status::{CommonStatus, LagStatus, LastErrorStatus},
};

/// The outcome of asking a workload for its `/status`. Every outcome is an input to the
/// status, none is an error of the operator.
#[derive(Clone, Debug, PartialEq)]
pub enum Probe<R> {
    /// Not asked (for example while suspended, or before the Deployment has a ready pod).
    NotProbed,
    Read(R),
    /// No answer: connection refused, timeout, an HTTP error status.
    Unreachable(String),
    /// An answer that is not the expected JSON document.
    Unreadable(String),
}

impl<R: DeserializeOwned> Probe<R> {
    /// From the body of a successful `GET /status`.
    pub fn parse(body: &[u8]) -> Self {
        match serde_json::from_slice(body) {
            Ok(reading) => Self::Read(reading),
            Err(error) => Self::Unreadable(error.to_string()),
        }
    }

    /// From a fetch: its body, or the error that stopped it.
    pub fn from_fetch<B: AsRef<[u8]>, E: Display>(fetched: Result<B, E>) -> Self {
        match fetched {
            Ok(body) => Self::parse(body.as_ref()),
            Err(error) => Self::Unreachable(error.to_string()),
        }
    }
}

/// The failure a workload reports as `lastError`.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ReportedError {
    pub message: String,
    pub category: String,
    pub at: Option<Time>,
}

impl From<&ReportedError> for LastErrorStatus {
    fn from(error: &ReportedError) -> Self {
        Self {
            message: super::clip(&error.message),
            category: error.category.clone(),
            at: error.at.clone(),
        }
    }
}

/// The relay's `/status` (`relay::metrics::RelayReport`).
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct RelayReading {
    /// Unpublished rows; absent until the relay has counted them.
    pub pending_rows: Option<i64>,
    pub oldest_pending_age_seconds: Option<i64>,
    /// Rows marked failed in the outbox (no dead-letter queue).
    pub failed_rows: Option<i64>,
    pub published_total: Option<u64>,
    pub dead_lettered_total: Option<u64>,
    /// This source's dead letters waiting for a decision, when its queue is a table.
    pub dead_letter_depth: Option<i64>,
    pub database_connected: Option<bool>,
    pub broker_connected: Option<bool>,
    pub ready: Option<bool>,
    pub last_error: Option<ReportedError>,
    /// Null when the transactional-message API is off.
    pub half_messages: Option<HalfMessagesStatus>,
}

/// The consumer's `/status` (`consumer::metrics::ConsumerReport`).
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ConsumerReading {
    /// Messages not yet acknowledged at the broker; absent until measured.
    pub lag_messages: Option<i64>,
    pub oldest_unacknowledged_age_seconds: Option<i64>,
    pub delivered_total: Option<u64>,
    pub deduplicated_total: Option<u64>,
    pub filtered_total: Option<u64>,
    pub retried_total: Option<u64>,
    pub dead_lettered_total: Option<u64>,
    /// This consumer's dead letters waiting for a decision, when its queue is a table.
    pub dead_letter_depth: Option<i64>,
    pub in_flight: Option<i64>,
    pub broker_connected: Option<bool>,
    pub stores_connected: Option<bool>,
    pub ready: Option<bool>,
    pub last_error: Option<ReportedError>,
}

/// The status of a workload resource: the parts every one has.
pub trait WorkloadStatus: Clone + Default + PartialEq + Serialize + DeserializeOwned {
    /// The kind whose status this is.
    type Kind: Resource<DynamicType = ()>;

    fn common(&self) -> &CommonStatus;
    fn common_mut(&mut self) -> &mut CommonStatus;
    fn set_ready_replicas(&mut self, replicas: Option<i32>);
    fn last_error_mut(&mut self) -> &mut Option<LastErrorStatus>;
    /// Rows left in the outbox marked failed, as last reported (only a relay has them).
    fn failed_rows(&self) -> Option<i64> {
        None
    }
}

/// A workload's `/status` document, and how it fills its resource's status.
pub trait Reading: DeserializeOwned {
    type Status: WorkloadStatus;
    /// `relay` or `consumer`, for messages.
    const WORKLOAD: &'static str;
    /// What the pending figure counts, for messages.
    const PENDING: &'static str;
    /// The `Suspended` condition's message.
    const SUSPENDED: &'static str;

    /// Messages waiting, when measured.
    fn pending(&self) -> Option<i64>;
    /// Age in seconds of the oldest waiting message, when known.
    fn oldest_age_seconds(&self) -> Option<i64>;
    /// The workload's own dead letters waiting for a decision, when it counts them.
    fn dead_letter_depth(&self) -> Option<i64>;
    /// Writes the figures this document has into `status`; a figure it lacks keeps its value,
    /// except `lastError`, which is the document's (none when it reports none).
    fn write_figures(&self, status: &mut Self::Status);
}

fn total(value: Option<u64>) -> Option<i64> {
    value.map(|value| i64::try_from(value).unwrap_or(i64::MAX))
}

fn lag(reading: &impl Reading, previous: Option<LagStatus>) -> Option<LagStatus> {
    match (reading.pending(), reading.oldest_age_seconds()) {
        (None, None) => previous,
        (messages, oldest_age_seconds) => Some(LagStatus {
            messages,
            oldest_age_seconds,
        }),
    }
}

impl Reading for RelayReading {
    type Status = OutboxSourceStatus;
    const WORKLOAD: &'static str = "relay";
    const PENDING: &'static str = "rows waiting to be published";
    const SUSPENDED: &'static str =
        "suspend is set: the relay is scaled to zero and rows wait in the outbox";

    fn pending(&self) -> Option<i64> {
        self.pending_rows
    }

    fn oldest_age_seconds(&self) -> Option<i64> {
        self.oldest_pending_age_seconds
    }

    fn dead_letter_depth(&self) -> Option<i64> {
        self.dead_letter_depth
    }

    fn write_figures(&self, status: &mut OutboxSourceStatus) {
        status.lag = lag(self, status.lag.take());
        status.published_total = total(self.published_total).or(status.published_total);
        status.dead_lettered_total = total(self.dead_lettered_total).or(status.dead_lettered_total);
        status.failed_rows = self.failed_rows.or(status.failed_rows);
        status.last_error = self.last_error.as_ref().map(LastErrorStatus::from);
        // Not kept from before: a relay without the section has the API turned off.
        status.half_messages = self.half_messages.clone();
    }
}

impl Reading for ConsumerReading {
    type Status = ConsumerStatus;
    const WORKLOAD: &'static str = "consumer";
    const PENDING: &'static str = "messages waiting to be acknowledged";
    const SUSPENDED: &'static str =
        "suspend is set: the consumer is scaled to zero and messages wait at the broker";

    fn pending(&self) -> Option<i64> {
        self.lag_messages
    }

    fn oldest_age_seconds(&self) -> Option<i64> {
        self.oldest_unacknowledged_age_seconds
    }

    fn dead_letter_depth(&self) -> Option<i64> {
        self.dead_letter_depth
    }

    fn write_figures(&self, status: &mut ConsumerStatus) {
        status.lag = lag(self, status.lag.take());
        status.delivered_total = total(self.delivered_total).or(status.delivered_total);
        status.retried_total = total(self.retried_total).or(status.retried_total);
        status.dead_lettered_total = total(self.dead_lettered_total).or(status.dead_lettered_total);
        status.last_error = self.last_error.as_ref().map(LastErrorStatus::from);
    }
}

impl WorkloadStatus for OutboxSourceStatus {
    type Kind = OutboxSource;

    fn common(&self) -> &CommonStatus {
        &self.common
    }

    fn failed_rows(&self) -> Option<i64> {
        self.failed_rows
    }

    fn common_mut(&mut self) -> &mut CommonStatus {
        &mut self.common
    }

    fn set_ready_replicas(&mut self, replicas: Option<i32>) {
        self.ready_replicas = replicas;
    }

    fn last_error_mut(&mut self) -> &mut Option<LastErrorStatus> {
        &mut self.last_error
    }
}

impl WorkloadStatus for ConsumerStatus {
    type Kind = Consumer;

    fn common(&self) -> &CommonStatus {
        &self.common
    }

    fn common_mut(&mut self) -> &mut CommonStatus {
        &mut self.common
    }

    fn set_ready_replicas(&mut self, replicas: Option<i32>) {
        self.ready_replicas = replicas;
    }

    fn last_error_mut(&mut self) -> &mut Option<LastErrorStatus> {
        &mut self.last_error
    }
}
