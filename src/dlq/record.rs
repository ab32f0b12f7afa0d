//! A dead letter as the table keeps it: the letter, where it stands (`Status`) and who decided
//! what about it.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};

use super::{DeadLetter, db::Row};

/// Where a dead letter stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Waiting for a person's decision.
    Waiting,
    /// A person asked for it to be re-delivered; its consumer has not taken it yet.
    ReplayRequested,
    /// Its consumer took it and is re-delivering it (until `lease_until`).
    Replaying,
    /// Re-delivered successfully.
    Replayed,
    /// A person decided it needs no delivery.
    Discarded,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Self::Waiting,
        Self::ReplayRequested,
        Self::Replaying,
        Self::Replayed,
        Self::Discarded,
    ];

    /// Still needs something to happen (a decision or a delivery).
    pub const UNRESOLVED: [Status; 3] = [Self::Waiting, Self::ReplayRequested, Self::Replaying];

    /// Nothing more will happen to it; retention may remove it.
    pub const RESOLVED: [Status; 2] = [Self::Replayed, Self::Discarded];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::ReplayRequested => "replay_requested",
            Self::Replaying => "replaying",
            Self::Replayed => "replayed",
            Self::Discarded => "discarded",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name the table does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown dead-letter status {0:?}: one of waiting, replay_requested, replaying, replayed, discarded"
)]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| UnknownStatus(text.to_owned()))
    }
}

/// One row of the dead-letter table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLetter {
    /// The row's number: stable, and what `ferry dlq show` accepts besides the message id.
    pub seq: i64,
    pub letter: DeadLetter,
    pub status: Status,
    /// How many times it was replayed successfully.
    pub replay_count: i32,
    pub requested_at: Option<DateTime<Utc>>,
    pub requested_by: Option<String>,
    /// The replay request it belongs to (one per `ferry dlq replay`), kept after it settles.
    pub replay_request: Option<String>,
    /// While `replaying`: when the consumer's hold on it ends, and another may take it.
    pub lease_until: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub note: Option<String>,
}

/// The columns `StoredLetter::from_row` reads, in `SELECT` form.
pub(crate) const STORED_COLUMNS: &str = "seq, origin, message_id, event_type, message_key, headers, body, attempts, first_failed_at, last_failed_at, last_error, error_category, http_status, fingerprint, status, replay_count, requested_at, requested_by, replay_request, lease_until, resolved_at, resolved_by, note";

impl StoredLetter {
    pub(crate) fn from_row(row: &Row) -> Result<Self, sqlx::Error> {
        let decode_error = |column: &str, message: String| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: message.into(),
        };
        let headers_text = row.text("headers")?;
        let headers: Vec<(String, String)> = serde_json::from_str(&headers_text)
            .map_err(|error| decode_error("headers", error.to_string()))?;
        let status = row
            .text("status")?
            .parse::<Status>()
            .map_err(|error| decode_error("status", error.to_string()))?;
        let small = |column: &str| -> Result<i32, sqlx::Error> {
            i32::try_from(row.int(column)?).map_err(|error| decode_error(column, error.to_string()))
        };
        Ok(Self {
            seq: row.int("seq")?,
            letter: DeadLetter {
                origin: row.text("origin")?,
                message_id: row.text("message_id")?,
                event_type: row.text("event_type")?,
                message_key: row.text("message_key")?,
                headers,
                body: row.bytes("body")?,
                attempts: small("attempts")?,
                first_failed_at: row.time("first_failed_at")?,
                last_failed_at: row.time("last_failed_at")?,
                last_error: row.text("last_error")?,
                error_category: row.text("error_category")?,
                http_status: row
                    .opt_int("http_status")?
                    .map(i32::try_from)
                    .transpose()
                    .map_err(|error| decode_error("http_status", error.to_string()))?,
                fingerprint: row.text("fingerprint")?,
            },
            status,
            replay_count: small("replay_count")?,
            requested_at: row.opt_time("requested_at")?,
            requested_by: row.opt_text("requested_by")?,
            replay_request: row.opt_text("replay_request")?,
            lease_until: row.opt_time("lease_until")?,
            resolved_at: row.opt_time("resolved_at")?,
            resolved_by: row.opt_text("resolved_by")?,
            note: row.opt_text("note")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_from_its_stored_name() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
        }
        assert!("pending".parse::<Status>().is_err());
    }
}
