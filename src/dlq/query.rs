//! Which dead letters a `ferry dlq` command is about (`Selection`), and the read-only questions
//! asked of them: list, count, find one, group by failure.

use chrono::{DateTime, Utc};

use super::{
    db::Sql,
    error::DlqError,
    record::{STORED_COLUMNS, Status, StoredLetter},
    table::TableStore,
};
use crate::api::DatabaseEngine;

/// The filters shared by every `ferry dlq` command. Empty fields do not filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Who gave up on the letters: exact, or a glob with `*` (`consumer/shop/*`).
    pub origin: Option<String>,
    /// A glob with `*` (`order.*`), or an exact event type.
    pub event_type: Option<String>,
    pub fingerprint: Option<String>,
    /// Last failed at or after.
    pub since: Option<DateTime<Utc>>,
    /// Last failed before.
    pub until: Option<DateTime<Utc>>,
    /// Any of these; empty means every status.
    pub statuses: Vec<Status>,
    pub message_ids: Vec<String>,
    pub seqs: Vec<i64>,
    /// At most this many, oldest first.
    pub limit: Option<u32>,
    /// A person asked for every letter (the statuses still apply): what makes a selection
    /// without filters explicit enough to discard or replay.
    pub all: bool,
}

impl Selection {
    /// The letters waiting for a decision: the default of every command.
    pub fn waiting() -> Self {
        Self {
            statuses: vec![Status::Waiting],
            ..Self::default()
        }
    }

    /// Whether it names which letters it is about, rather than taking every letter by default.
    pub fn is_explicit(&self) -> bool {
        self.all
            || self.origin.is_some()
            || self.event_type.is_some()
            || self.fingerprint.is_some()
            || self.since.is_some()
            || self.until.is_some()
            || !self.message_ids.is_empty()
            || !self.seqs.is_empty()
    }

    /// Refuses a selection that is not explicit, for commands that change letters in bulk.
    pub fn require_explicit(&self, action: &'static str) -> Result<(), DlqError> {
        if self.is_explicit() {
            Ok(())
        } else {
            Err(DlqError::NoSelection { action })
        }
    }

    /// The statuses it selects among `allowed` (every status when `allowed` is empty).
    pub fn statuses_within(&self, allowed: &[Status]) -> Vec<Status> {
        let wanted: &[Status] = if self.statuses.is_empty() {
            &Status::ALL
        } else {
            &self.statuses
        };
        wanted
            .iter()
            .copied()
            .filter(|status| allowed.is_empty() || allowed.contains(status))
            .collect()
    }

    /// Writes ` WHERE ...` for the letters selected whose status is among `allowed` (any when
    /// empty). The limit is not written: callers add it after their `ORDER BY`.
    pub(crate) fn push_where(&self, sql: &mut Sql, allowed: &[Status]) {
        sql.push(" WHERE ");
        let statuses = self.statuses_within(allowed);
        if statuses.is_empty() {
            sql.push("1 = 0");
            return;
        }
        sql.push("status IN ")
            .bind_list(statuses.iter().map(|status| status.as_str()));
        if let Some(origin) = &self.origin {
            sql.push(" AND ");
            push_match(sql, "origin", origin);
        }
        if let Some(event_type) = &self.event_type {
            sql.push(" AND ");
            push_match(sql, "event_type", event_type);
        }
        if let Some(fingerprint) = &self.fingerprint {
            sql.push(" AND fingerprint = ").bind(fingerprint.as_str());
        }
        if let Some(since) = self.since {
            sql.push(" AND last_failed_at >= ").bind(since);
        }
        if let Some(until) = self.until {
            sql.push(" AND last_failed_at < ").bind(until);
        }
        if !self.message_ids.is_empty() {
            sql.push(" AND message_id IN ")
                .bind_list(self.message_ids.iter().map(String::as_str));
        }
        if !self.seqs.is_empty() {
            sql.push(" AND seq IN ")
                .bind_list(self.seqs.iter().copied());
        }
    }

    pub(crate) fn push_limit(&self, sql: &mut Sql) {
        if let Some(limit) = self.limit {
            sql.push(" LIMIT ").bind(i64::from(limit));
        }
    }
}

/// `column` equals `pattern`, or matches it as a glob where `*` is any text, case-sensitively
/// as `crate::message::glob_matches` does.
pub(crate) fn push_match(sql: &mut Sql, column: &str, pattern: &str) {
    if !pattern.contains('*') {
        sql.push(column).push(" = ").bind(pattern);
        // MySQL's default collations compare case-insensitively; the plain comparison above
        // still uses the index, this one makes the match exact.
        if sql.engine() == DatabaseEngine::Mysql {
            sql.push(" AND CAST(")
                .push(column)
                .push(" AS BINARY) = ")
                .bind(pattern);
        }
        return;
    }
    match sql.engine() {
        DatabaseEngine::Sqlite => {
            // GLOB is case-sensitive and already uses `*`; its other wildcards are bracketed.
            let glob: String = pattern
                .chars()
                .map(|c| match c {
                    '?' => "[?]".to_owned(),
                    '[' => "[[]".to_owned(),
                    c => c.to_string(),
                })
                .collect();
            sql.push(column).push(" GLOB ").bind(glob);
        }
        engine => {
            let like: String = pattern
                .chars()
                .map(|c| match c {
                    '*' => "%".to_owned(),
                    '!' | '%' | '_' => format!("!{c}"),
                    c => c.to_string(),
                })
                .collect();
            // `!` as the escape: a backslash means different things in MySQL and PostgreSQL
            // string literals. MySQL compares case-insensitively unless the text is binary.
            if engine == DatabaseEngine::Mysql {
                sql.push("CAST(").push(column).push(" AS BINARY) LIKE ");
            } else {
                sql.push(column).push(" LIKE ");
            }
            sql.bind(like).push(" ESCAPE '!'");
        }
    }
}

/// The selected letters, oldest first.
pub async fn list(
    store: &TableStore,
    selection: &Selection,
) -> Result<Vec<StoredLetter>, DlqError> {
    let mut sql = store.db().sql();
    sql.push("SELECT ")
        .push(STORED_COLUMNS)
        .push(" FROM ")
        .push(store.table());
    selection.push_where(&mut sql, &[]);
    sql.push(" ORDER BY seq");
    selection.push_limit(&mut sql);
    let rows = store.db().fetch_all(&sql).await?;
    Ok(rows
        .iter()
        .map(StoredLetter::from_row)
        .collect::<Result<_, _>>()?)
}

/// How many letters the selection matches, ignoring its limit.
pub async fn count(store: &TableStore, selection: &Selection) -> Result<i64, DlqError> {
    let mut sql = store.db().sql();
    sql.push("SELECT COUNT(*) AS letters FROM ")
        .push(store.table());
    selection.push_where(&mut sql, &[]);
    let rows = store.db().fetch_all(&sql).await?;
    Ok(match rows.first() {
        Some(row) => row.int("letters")?,
        None => 0,
    })
}

/// The letters a person means by `id`: its seq (when `id` is a number) or its message id, which
/// several origins may share; `origin` narrows.
pub async fn find(
    store: &TableStore,
    id: &str,
    origin: Option<&str>,
) -> Result<Vec<StoredLetter>, DlqError> {
    let mut sql = store.db().sql();
    sql.push("SELECT ")
        .push(STORED_COLUMNS)
        .push(" FROM ")
        .push(store.table())
        .push(" WHERE (message_id = ")
        .bind(id);
    if let Ok(seq) = id.parse::<i64>() {
        sql.push(" OR seq = ").bind(seq);
    }
    sql.push(")");
    if let Some(origin) = origin {
        sql.push(" AND ");
        push_match(&mut sql, "origin", origin);
    }
    sql.push(" ORDER BY seq");
    let letters: Vec<StoredLetter> = store
        .db()
        .fetch_all(&sql)
        .await?
        .iter()
        .map(StoredLetter::from_row)
        .collect::<Result<_, _>>()?;
    if letters.is_empty() {
        let scope = origin
            .map(|origin| format!(" with origin {origin:?}"))
            .unwrap_or_default();
        return Err(DlqError::NotFound(id.to_owned(), scope));
    }
    Ok(letters)
}

/// Letters that failed the same way, counted together.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FailureGroup {
    pub fingerprint: String,
    pub origin: String,
    pub event_type: String,
    pub error_category: String,
    pub letters: i64,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    /// One of the group's errors, to recognise the failure by.
    pub example_error: String,
    /// The newest letter of the group, for `ferry dlq show`.
    pub example_seq: i64,
}

/// The selected letters grouped by fingerprint (and so by origin, event type and category),
/// largest group first. The selection's limit bounds the number of groups.
pub async fn stats(
    store: &TableStore,
    selection: &Selection,
) -> Result<Vec<FailureGroup>, DlqError> {
    let mut sql = store.db().sql();
    sql.push(
        "SELECT fingerprint, origin, event_type, error_category, COUNT(*) AS letters, \
         MIN(first_failed_at) AS first_failure, MAX(last_failed_at) AS last_failure, \
         MAX(last_error) AS example_error, MAX(seq) AS example_seq FROM ",
    )
    .push(store.table());
    selection.push_where(&mut sql, &[]);
    sql.push(
        " GROUP BY fingerprint, origin, event_type, error_category \
         ORDER BY letters DESC, last_failure DESC, fingerprint",
    );
    selection.push_limit(&mut sql);
    let rows = store.db().fetch_all(&sql).await?;
    let mut groups = Vec::with_capacity(rows.len());
    for row in &rows {
        groups.push(FailureGroup {
            fingerprint: row.text("fingerprint")?,
            origin: row.text("origin")?,
            event_type: row.text("event_type")?,
            error_category: row.text("error_category")?,
            letters: row.int("letters")?,
            first_failed_at: row.time("first_failure")?,
            last_failed_at: row.time("last_failure")?,
            example_error: row.text("example_error")?,
            example_seq: row.int("example_seq")?,
        });
    }
    Ok(groups)
}

/// The history of one letter, oldest first.
pub async fn history(
    store: &TableStore,
    seq: i64,
) -> Result<Vec<super::history::HistoryEntry>, DlqError> {
    Ok(super::history::read(store.db(), store.table(), seq).await?)
}
