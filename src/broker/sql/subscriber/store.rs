//! What the SQL subscriber asks of a group's state, whichever engine keeps it.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// The longest retry delay written to the database: far beyond any retry policy, and far from
/// the timestamp types' limits.
const MAX_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Who reads, as the state tables name it.
#[derive(Clone, Debug)]
pub(super) struct Group {
    pub name: String,
    pub queue: String,
    /// Written next to each lease, for whoever inspects the table.
    pub member: String,
    pub ack_timeout: Duration,
}

/// One lease on one message: its `seq` and the attempt it was handed out as. Each claim
/// counts one more attempt, so `(seq, attempt)` tells this lease from a later one another
/// member took after it expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Lease {
    pub seq: i64,
    pub attempt: i32,
}

/// A message as a claim returns it.
#[derive(Debug)]
pub(super) struct ClaimedRow {
    pub lease: Lease,
    /// The `id` and `message_key` columns, for a row whose headers cannot be read.
    pub id: String,
    pub message_key: String,
    /// The `headers` column, JSON as the publisher wrote it.
    pub headers: String,
    pub body: Vec<u8>,
    pub enqueued_at: Option<DateTime<Utc>>,
}

/// Messages not yet done for the group, and the age of the oldest one.
#[derive(Debug, Default)]
pub(super) struct GroupLag {
    pub messages: i64,
    pub oldest_age: Option<Duration>,
}

/// A group's delivery state in one database. Every change is one committed transaction, so
/// what a method returned survives a crash.
#[async_trait]
pub(super) trait GroupStore: Send + Sync {
    /// Leases up to `max` messages that are due for the group, lowest `seq` first: messages
    /// never handed out, retries whose time has come and leases that expired. When `compact`,
    /// also folds done messages into the group's `done_through`.
    async fn claim(&self, max: usize, compact: bool) -> Result<Vec<ClaimedRow>, sqlx::Error>;

    /// Marks the message done for the group, whoever leases it now. False when it already was.
    async fn ack(&self, lease: Lease) -> Result<bool, sqlx::Error>;

    /// Makes the message due again after `delay` and ends the lease. False when the lease is
    /// no longer this one (another member took it after it expired, or it is done).
    async fn retry(&self, lease: Lease, delay: Duration) -> Result<bool, sqlx::Error>;

    /// Pushes the lease to `ack_timeout` from now. False when the lease is no longer this one.
    async fn extend(&self, lease: Lease) -> Result<bool, sqlx::Error>;

    /// Ends leases at once, so that another member need not wait for them to expire.
    async fn release(&self, leases: &[Lease]) -> Result<(), sqlx::Error>;
    /// Gives back every lease of the group, whoever holds it: what an ordered group does when
    /// a session starts (nothing of it is in flight then), so that the messages a stopped
    /// member held come before newer messages of their keys instead of after `ack_timeout`.
    async fn release_all(&self) -> Result<(), sqlx::Error>;

    async fn lag(&self) -> Result<GroupLag, sqlx::Error>;

    async fn close(&self);
}

/// Milliseconds of a duration for SQL arithmetic, capped at `MAX_DELAY`.
pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.min(MAX_DELAY).as_millis()).unwrap_or(i64::MAX)
}

/// The `max` lowest of two ascending lists of `seq`s, as the part taken from each list.
pub(super) fn lowest(first: &[i64], second: &[i64], max: usize) -> (Vec<i64>, Vec<i64>) {
    let (mut from_first, mut from_second) = (Vec::new(), Vec::new());
    let (mut first, mut second) = (first.iter().peekable(), second.iter().peekable());
    while from_first.len() + from_second.len() < max {
        match (first.peek(), second.peek()) {
            (Some(a), Some(b)) if a <= b => from_first.extend(first.next()),
            (_, Some(_)) => from_second.extend(second.next()),
            (Some(_), None) => from_first.extend(first.next()),
            (None, None) => break,
        }
    }
    (from_first, from_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_merges_two_ascending_lists_up_to_max() {
        assert_eq!(
            lowest(&[2, 5, 9], &[1, 3, 4, 10], 5),
            (vec![2, 5], vec![1, 3, 4])
        );
        assert_eq!(lowest(&[1, 2], &[], 5), (vec![1, 2], vec![]));
        assert_eq!(lowest(&[], &[7], 0), (vec![], vec![]));
    }

    #[test]
    fn millis_caps_huge_delays() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), millis(MAX_DELAY));
    }
}
