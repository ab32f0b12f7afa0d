//! Ending dead letters without delivering them: `discard` (a person's decision, the row stays)
//! and `purge` (retention, which deletes only letters already replayed or discarded).

use chrono::{DateTime, Utc};

use super::{
    db::Value,
    error::DlqError,
    history::{self, Action, Change},
    query::Selection,
    record::Status,
    table::TableStore,
};

/// Letters changed per statement: well under every engine's limit on bound values.
const CHUNK: usize = 500;

/// Marks the selected letters that still wait (or wait for a replay) `discarded`, by `by`, with
/// `note`; returns how many. Requires an explicit selection. Nothing is deleted.
pub async fn discard(
    store: &TableStore,
    selection: &Selection,
    by: &str,
    note: Option<&str>,
) -> Result<u64, DlqError> {
    selection.require_explicit("discard")?;
    let mut tx = store.db().begin().await?;
    let mut select = tx.sql();
    select.push("SELECT seq FROM ").push(store.table());
    selection.push_where(&mut select, &Status::UNRESOLVED);
    select.push(" ORDER BY seq");
    selection.push_limit(&mut select);
    select.for_update();
    let seqs = tx
        .fetch_all(&select)
        .await?
        .iter()
        .map(|row| row.int("seq"))
        .collect::<Result<Vec<_>, _>>()?;
    let now = Utc::now();
    for chunk in seqs.chunks(CHUNK) {
        let mut update = tx.sql();
        update
            .push("UPDATE ")
            .push(store.table())
            .push(" SET status = 'discarded', resolved_at = ")
            .bind(now)
            .push(", resolved_by = ")
            .bind(by)
            .push(", note = ")
            .bind(Value::OptText(note.map(str::to_owned)))
            .push(", lease_until = NULL WHERE seq IN ")
            .bind_list(chunk.iter().copied());
        tx.execute(&update).await?;
    }
    let change = Change {
        action: Action::Discarded,
        at: now,
        actor: by,
        note,
    };
    history::record(&mut tx, store.table(), &seqs, change).await?;
    tx.commit().await?;
    Ok(seqs.len() as u64)
}

/// What `purge` deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    pub replayed: u64,
    pub discarded: u64,
}

/// Deletes the selected letters that were replayed or discarded before `resolved_before`, and
/// only those: a letter still waiting is never deleted, whatever the selection says. Each
/// deleted letter gets a `purged` line in its history, which stays.
pub async fn purge(
    store: &TableStore,
    selection: &Selection,
    resolved_before: DateTime<Utc>,
    by: &str,
) -> Result<Purged, DlqError> {
    let mut tx = store.db().begin().await?;
    let mut select = tx.sql();
    select.push("SELECT seq, status FROM ").push(store.table());
    selection.push_where(&mut select, &Status::RESOLVED);
    select.push(" AND resolved_at < ").bind(resolved_before);
    select.push(" ORDER BY seq");
    selection.push_limit(&mut select);
    select.for_update();
    let mut purged = Purged::default();
    let mut by_status: [(Status, Vec<i64>); 2] = [
        (Status::Replayed, Vec::new()),
        (Status::Discarded, Vec::new()),
    ];
    for row in tx.fetch_all(&select).await? {
        let status = row.text("status")?;
        let seq = row.int("seq")?;
        if let Some((_, seqs)) = by_status
            .iter_mut()
            .find(|(resolved, _)| resolved.as_str() == status)
        {
            seqs.push(seq);
        }
    }
    let now = Utc::now();
    for (status, seqs) in &by_status {
        for chunk in seqs.chunks(CHUNK) {
            let mut delete = tx.sql();
            // The status is checked again here so that nothing unresolved can ever be deleted.
            delete
                .push("DELETE FROM ")
                .push(store.table())
                .push(" WHERE status IN ('replayed', 'discarded') AND seq IN ")
                .bind_list(chunk.iter().copied());
            tx.execute(&delete).await?;
        }
        let note = format!("it had been {status}");
        let change = Change {
            action: Action::Purged,
            at: now,
            actor: by,
            note: Some(&note),
        };
        history::record(&mut tx, store.table(), seqs, change).await?;
        match status {
            Status::Replayed => purged.replayed = seqs.len() as u64,
            _ => purged.discarded = seqs.len() as u64,
        }
    }
    tx.commit().await?;
    Ok(purged)
}
