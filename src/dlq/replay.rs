//! Replay: re-delivering dead letters through the consumer that gave up on them.
//!
//! A replay is a request recorded in the table, not a delivery made by `ferry dlq`: the CLI marks
//! the letters `replay_requested`; the running consumer of that origin takes them
//! (`take_replay_requests`, which marks them `replaying` under a lease), delivers each through
//! its normal pipeline, and either calls `mark_replayed` or stores the new failure with `put`,
//! which puts the letter back to `waiting`. The CLI watches the request until every letter has
//! settled. A consumer that crashes holding letters loses them when its lease ends, and another
//! consumer of the origin takes them again.

use std::{collections::BTreeMap, time::Duration};

use chrono::{TimeDelta, Utc};
use uuid::Uuid;

use super::{
    DeadLetterError,
    db::Value,
    error::DlqError,
    history::{self, Action, Change},
    query::{Selection, push_match},
    record::{STORED_COLUMNS, Status, StoredLetter},
    table::TableStore,
};

/// Origins the relay dead-letters under: outbox rows that could not be published. No consumer
/// can re-deliver them.
pub const OUTBOX_ORIGIN_PREFIX: &str = "outboxsource/";

/// Letters updated per statement: well under every engine's limit on bound values.
const UPDATE_CHUNK: usize = 500;

/// A recorded replay request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRequest {
    /// Names the request in the table (`replay_request`), to watch it.
    pub id: String,
    /// How many letters it asked to replay.
    pub letters: u64,
}

/// Records a request to replay the selected letters (those waiting, or already replayed or
/// discarded when the selection asks for those statuses). Refuses the whole request, naming
/// them, when any selected letter came from an outbox relay.
pub async fn request(
    store: &TableStore,
    selection: &Selection,
    by: &str,
    note: Option<&str>,
) -> Result<ReplayRequest, DlqError> {
    selection.require_explicit("replay")?;
    let mut tx = store.db().begin().await?;
    let mut select = tx.sql();
    select.push("SELECT seq, origin FROM ").push(store.table());
    selection.push_where(
        &mut select,
        &[Status::Waiting, Status::Replayed, Status::Discarded],
    );
    select.push(" ORDER BY seq");
    selection.push_limit(&mut select);
    select.for_update();
    let mut seqs = Vec::new();
    let mut outbox_origins = BTreeMap::<String, i64>::new();
    for row in tx.fetch_all(&select).await? {
        let origin = row.text("origin")?;
        if origin.starts_with(OUTBOX_ORIGIN_PREFIX) {
            *outbox_origins.entry(origin).or_default() += 1;
        }
        seqs.push(row.int("seq")?);
    }
    if !outbox_origins.is_empty() {
        return Err(DlqError::NotReplayable(
            outbox_origins.into_iter().collect(),
        ));
    }
    let id = Uuid::now_v7().to_string();
    let now = Utc::now();
    for chunk in seqs.chunks(UPDATE_CHUNK) {
        let mut update = tx.sql();
        update
            .push("UPDATE ")
            .push(store.table())
            .push(" SET status = 'replay_requested', requested_at = ")
            .bind(now)
            .push(", requested_by = ")
            .bind(by)
            .push(", replay_request = ")
            .bind(id.as_str())
            .push(", note = ")
            .bind(Value::OptText(note.map(str::to_owned)))
            .push(", lease_until = NULL, resolved_at = NULL, resolved_by = NULL WHERE seq IN ")
            .bind_list(chunk.iter().copied());
        tx.execute(&update).await?;
    }
    let change = Change {
        action: Action::ReplayRequested,
        at: now,
        actor: by,
        note,
    };
    history::record(&mut tx, store.table(), &seqs, change).await?;
    tx.commit().await?;
    Ok(ReplayRequest {
        id,
        letters: seqs.len() as u64,
    })
}

impl TableStore {
    /// Takes up to `limit` letters of `origin` whose replay was requested (or whose previous
    /// taker's lease ran out), oldest first, and marks them `replaying` under a lease of
    /// `with_replay_lease` (default `DEFAULT_REPLAY_LEASE`). Consumers of one origin running
    /// side by side each take different letters.
    pub async fn take_replay_requests(
        &self,
        origin: &str,
        limit: u32,
    ) -> Result<Vec<StoredLetter>, DeadLetterError> {
        let now = Utc::now();
        let lease = TimeDelta::from_std(self.replay_lease()).unwrap_or(TimeDelta::MAX);
        let lease_until = now.checked_add_signed(lease).unwrap_or(now);
        let mut tx = self.db().begin().await?;
        let mut select = tx.sql();
        select
            .push("SELECT ")
            .push(STORED_COLUMNS)
            .push(" FROM ")
            .push(self.table())
            .push(" WHERE ");
        push_match(&mut select, "origin", origin);
        select
            .push(" AND (status = 'replay_requested' OR (status = 'replaying' AND lease_until < ")
            .bind(now)
            .push(")) ORDER BY seq LIMIT ")
            .bind(i64::from(limit));
        select.for_update_skip_locked();
        let mut letters = tx
            .fetch_all(&select)
            .await?
            .iter()
            .map(StoredLetter::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if letters.is_empty() {
            return Ok(letters);
        }
        let seqs: Vec<i64> = letters.iter().map(|letter| letter.seq).collect();
        for chunk in seqs.chunks(UPDATE_CHUNK) {
            let mut update = tx.sql();
            update
                .push("UPDATE ")
                .push(self.table())
                .push(" SET status = 'replaying', lease_until = ")
                .bind(lease_until)
                .push(" WHERE seq IN ")
                .bind_list(chunk.iter().copied());
            tx.execute(&update).await?;
        }
        let (retaken, fresh): (Vec<&StoredLetter>, Vec<&StoredLetter>) = letters
            .iter()
            .partition(|letter| letter.status == Status::Replaying);
        let lease_note = format!("lease until {}", lease_until.to_rfc3339());
        let retaken_note = format!("the previous lease ran out; {lease_note}");
        for (group, note) in [(fresh, &lease_note), (retaken, &retaken_note)] {
            let group: Vec<i64> = group.iter().map(|letter| letter.seq).collect();
            if group.is_empty() {
                continue;
            }
            let change = Change {
                action: Action::Replaying,
                at: now,
                actor: origin,
                note: Some(note),
            };
            history::record(&mut tx, self.table(), &group, change).await?;
        }
        tx.commit().await?;
        for letter in &mut letters {
            letter.status = Status::Replaying;
            letter.lease_until = Some(lease_until);
        }
        Ok(letters)
    }

    /// Records that a letter taken for replay was delivered: `replayed`, its replay count one
    /// higher, resolved by whoever requested the replay. Returns false, changing nothing, when
    /// the letter is no longer `replaying` (a person discarded it meanwhile, or the lease ran
    /// out and another consumer finished it first).
    pub async fn mark_replayed(&self, seq: i64) -> Result<bool, DeadLetterError> {
        let mut tx = self.db().begin().await?;
        let mut select = tx.sql();
        select
            .push("SELECT origin, requested_by FROM ")
            .push(self.table())
            .push(" WHERE seq = ")
            .bind(seq)
            .push(" AND status = 'replaying'");
        select.for_update();
        let rows = tx.fetch_all(&select).await?;
        let Some(row) = rows.first() else {
            return Ok(false);
        };
        let origin = row.text("origin")?;
        let requested_by = row.opt_text("requested_by")?;
        let now = Utc::now();
        let mut update = tx.sql();
        update
            .push("UPDATE ")
            .push(self.table())
            .push(" SET status = 'replayed', replay_count = replay_count + 1, resolved_at = ")
            .bind(now)
            .push(", resolved_by = ")
            .bind(Value::OptText(requested_by))
            .push(", lease_until = NULL WHERE seq = ")
            .bind(seq);
        tx.execute(&update).await?;
        let change = Change {
            action: Action::Replayed,
            at: now,
            actor: &origin,
            note: None,
        };
        history::record(&mut tx, self.table(), &[seq], change).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Where the letters of one replay request stand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayProgress {
    /// Not taken by a consumer yet.
    pub requested: u64,
    pub replaying: u64,
    pub replayed: u64,
    /// Delivered again and failed again: waiting for a decision once more.
    pub failed_again: u64,
    /// Discarded by someone while the request was open.
    pub discarded: u64,
}

impl ReplayProgress {
    pub fn total(&self) -> u64 {
        self.requested + self.replaying + self.replayed + self.failed_again + self.discarded
    }

    /// Letters still to be delivered.
    pub fn pending(&self) -> u64 {
        self.requested + self.replaying
    }

    pub fn all_replayed(&self) -> bool {
        self.replayed == self.total()
    }
}

/// Counts the letters of a request by where they stand.
pub async fn progress(store: &TableStore, request_id: &str) -> Result<ReplayProgress, DlqError> {
    let mut sql = store.db().sql();
    sql.push("SELECT status, COUNT(*) AS letters FROM ")
        .push(store.table())
        .push(" WHERE replay_request = ")
        .bind(request_id)
        .push(" GROUP BY status");
    let mut progress = ReplayProgress::default();
    for row in store.db().fetch_all(&sql).await? {
        let letters = u64::try_from(row.int("letters")?).unwrap_or_default();
        match row.text("status")?.parse::<Status>() {
            Ok(Status::ReplayRequested) => progress.requested += letters,
            Ok(Status::Replaying) => progress.replaying += letters,
            Ok(Status::Replayed) => progress.replayed += letters,
            Ok(Status::Waiting) => progress.failed_again += letters,
            Ok(Status::Discarded) => progress.discarded += letters,
            Err(_) => {}
        }
    }
    Ok(progress)
}

/// The letters of a request that failed again, oldest first.
pub async fn failed_again(
    store: &TableStore,
    request_id: &str,
    limit: u32,
) -> Result<Vec<StoredLetter>, DlqError> {
    let mut sql = store.db().sql();
    sql.push("SELECT ")
        .push(STORED_COLUMNS)
        .push(" FROM ")
        .push(store.table())
        .push(" WHERE replay_request = ")
        .bind(request_id)
        .push(" AND status = 'waiting' ORDER BY seq LIMIT ")
        .bind(i64::from(limit));
    Ok(store
        .db()
        .fetch_all(&sql)
        .await?
        .iter()
        .map(StoredLetter::from_row)
        .collect::<Result<_, _>>()?)
}

/// Polls a request's progress every `poll`, telling `on_change` each time it changes, until
/// nothing is pending or `timeout` has passed; returns the last progress seen.
pub async fn watch(
    store: &TableStore,
    request_id: &str,
    poll: Duration,
    timeout: Option<Duration>,
    mut on_change: impl FnMut(&ReplayProgress),
) -> Result<ReplayProgress, DlqError> {
    let deadline = timeout.map(|timeout| tokio::time::Instant::now() + timeout);
    let mut last: Option<ReplayProgress> = None;
    loop {
        let now = progress(store, request_id).await?;
        if last != Some(now) {
            on_change(&now);
            last = Some(now);
        }
        if now.pending() == 0 {
            return Ok(now);
        }
        if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
            return Ok(now);
        }
        tokio::time::sleep(poll).await;
    }
}
