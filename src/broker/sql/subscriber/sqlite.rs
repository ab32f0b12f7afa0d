//! A consumer group's delivery state in SQLite, next to the queue table.
//!
//! SQLite has one writer at a time, and a writer takes its `seq` and commits while holding the
//! write lock, so rows become visible in `seq` order. A claim starts with `BEGIN IMMEDIATE`:
//! it holds the write lock from its first statement, sees every committed row, and is the only
//! claimer of any group while it runs. Compaction can then fold done rows into `done_through`
//! up to the highest `seq` it sees. Times are milliseconds since the Unix epoch by this host's
//! clock: every reader of the file runs on the same host.

use std::{str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    AssertSqlSafe, SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{
    super::{BUSY_TIMEOUT, CONNECT_TIMEOUT, Engine, Fallback, QueuePool, TableName, classify},
    state::{StateTables, state_probes, state_schema},
    store::{ClaimedRow, Group, GroupLag, GroupStore, Lease, lowest, millis},
};
use crate::broker::BrokerError;

/// Writes take turns anyway; more connections let acks queue for the lock instead of for a
/// connection while a claim runs.
const MAX_CONNECTIONS: u32 = 4;

/// The statements, written once with the table names in them. Parameters are numbered
/// (`?1`): SQLite numbers `$1`-style names by first appearance, not by their digits.
struct Statements {
    register: Arc<str>,
    done_through: Arc<str>,
    due: Arc<str>,
    fresh: Arc<str>,
    lease_again: Arc<str>,
    lease_fresh: Arc<str>,
    fetch: Arc<str>,
    highest: Arc<str>,
    first_not_done: Arc<str>,
    forget_done: Arc<str>,
    advance: Arc<str>,
    ack: Arc<str>,
    retry: Arc<str>,
    extend: Arc<str>,
    release: Arc<str>,
    release_all: Arc<str>,
    lag: Arc<str>,
}

impl Statements {
    fn new(queue: &str, tables: &StateTables) -> Self {
        let StateTables { groups, deliveries } = tables;
        let this_group = "group_name = ?1 AND queue = ?2";
        let done_here = format!(
            "SELECT 1 FROM {deliveries} d WHERE d.group_name = ?1 AND d.queue = ?2 \
             AND d.seq = q.seq AND d.done"
        );
        let text = |sql: String| Arc::<str>::from(sql);
        Self {
            register: text(format!(
                "INSERT INTO {groups} (group_name, queue) VALUES (?1, ?2) ON CONFLICT DO NOTHING"
            )),
            done_through: text(format!(
                "SELECT done_through FROM {groups} WHERE {this_group}"
            )),
            due: text(format!(
                "SELECT seq FROM {deliveries} WHERE {this_group} AND NOT done AND due_at <= ?3 \
                 AND (leased_until IS NULL OR leased_until <= ?3) ORDER BY seq LIMIT ?4"
            )),
            fresh: text(format!(
                "SELECT q.seq FROM {queue} q WHERE q.queue = ?2 AND q.seq > ?3 AND NOT EXISTS \
                 (SELECT 1 FROM {deliveries} d WHERE d.group_name = ?1 AND d.queue = ?2 \
                 AND d.seq = q.seq) ORDER BY q.seq LIMIT ?4"
            )),
            lease_again: text(format!(
                "UPDATE {deliveries} SET attempt = attempt + 1, leased_by = ?4, leased_until = ?5 \
                 WHERE {this_group} AND seq = ?3"
            )),
            lease_fresh: text(format!(
                "INSERT INTO {deliveries} \
                 (group_name, queue, seq, attempt, due_at, leased_by, leased_until) \
                 VALUES (?1, ?2, ?3, 1, ?6, ?4, ?5)"
            )),
            fetch: text(format!(
                "SELECT d.attempt, q.id, q.message_key, q.headers, q.body, q.enqueued_at \
                 FROM {deliveries} d JOIN {queue} q ON q.seq = d.seq \
                 WHERE d.group_name = ?1 AND d.queue = ?2 AND d.seq = ?3"
            )),
            highest: text(format!("SELECT max(seq) FROM {queue} WHERE queue = ?1")),
            first_not_done: text(format!(
                "SELECT q.seq FROM {queue} q WHERE q.queue = ?2 AND q.seq > ?3 AND q.seq <= ?4 \
                 AND NOT EXISTS ({done_here}) ORDER BY q.seq LIMIT 1"
            )),
            forget_done: text(format!(
                "DELETE FROM {deliveries} WHERE {this_group} AND seq <= ?3"
            )),
            advance: text(format!(
                "UPDATE {groups} SET done_through = ?3 WHERE {this_group}"
            )),
            ack: text(format!(
                "UPDATE {deliveries} SET done = 1, leased_by = NULL, leased_until = NULL \
                 WHERE {this_group} AND seq = ?3 AND NOT done"
            )),
            retry: text(format!(
                "UPDATE {deliveries} SET due_at = ?5, leased_by = NULL, leased_until = NULL \
                 WHERE {this_group} AND seq = ?3 AND attempt = ?4 AND NOT done"
            )),
            extend: text(format!(
                "UPDATE {deliveries} SET leased_until = ?5 \
                 WHERE {this_group} AND seq = ?3 AND attempt = ?4 AND NOT done"
            )),
            release: text(format!(
                "UPDATE {deliveries} SET leased_by = NULL, leased_until = NULL \
                 WHERE {this_group} AND seq = ?3 AND attempt = ?4 AND NOT done"
            )),
            release_all: text(format!(
                "UPDATE {deliveries} SET leased_by = NULL, leased_until = NULL \
                 WHERE {this_group} AND NOT done AND leased_until IS NOT NULL"
            )),
            lag: text(format!(
                "SELECT count(*), min(q.enqueued_at) \
                 FROM {queue} q JOIN {groups} g ON g.group_name = ?1 AND g.queue = ?2 \
                 WHERE q.queue = ?2 AND q.seq > g.done_through AND NOT EXISTS ({done_here})"
            )),
        }
    }
}

/// A claimed row: `attempt`, `id`, `message_key`, `headers`, `body`, `enqueued_at` (text).
type FetchedRow = (i32, String, String, String, Vec<u8>, String);

pub(super) struct SqliteStore {
    pool: SqlitePool,
    group: Group,
    sql: Statements,
}

impl SqliteStore {
    /// Opens the database (creating the file when `provision`), creates the queue and state
    /// tables when `provision` (checks them otherwise), and registers the group, which then
    /// starts at the oldest message the queue holds.
    pub async fn open(
        topic: &str,
        url: &str,
        table: &TableName,
        group: Group,
        provision: bool,
    ) -> Result<Self, BrokerError> {
        let failed = |fallback| move |error| classify(topic, Engine::Sqlite, error, fallback);
        let options = SqliteConnectOptions::from_str(url)
            .map_err(failed(Fallback::Connection))?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .create_if_missing(provision);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(failed(Fallback::Connection))?;
        let tables = StateTables::of(table);
        let queue_pool = QueuePool::Sqlite(pool.clone());
        if provision {
            queue_pool
                .provision(table)
                .await
                .map_err(failed(Fallback::Topology))?;
            provision_state(&pool, &tables)
                .await
                .map_err(failed(Fallback::Topology))?;
        }
        queue_pool
            .check(table)
            .await
            .map_err(failed(Fallback::Topology))?;
        for probe in state_probes(Engine::Sqlite, &tables) {
            sqlx::query(AssertSqlSafe(probe))
                .execute(&pool)
                .await
                .map_err(failed(Fallback::Topology))?;
        }
        let sql = Statements::new(&table.qualified(), &tables);
        sqlx::query(AssertSqlSafe(sql.register.clone()))
            .bind(&group.name)
            .bind(&group.queue)
            .execute(&pool)
            .await
            .map_err(failed(Fallback::Topology))?;
        Ok(Self { pool, group, sql })
    }

    /// Folds the done messages at the bottom of the group's backlog into `done_through`.
    async fn compact(
        &self,
        connection: &mut SqliteConnection,
        done_through: i64,
    ) -> Result<(), sqlx::Error> {
        let Group { name, queue, .. } = &self.group;
        let highest: Option<i64> = sqlx::query_scalar(AssertSqlSafe(self.sql.highest.clone()))
            .bind(queue)
            .fetch_one(&mut *connection)
            .await?;
        let Some(highest) = highest.filter(|highest| *highest > done_through) else {
            return Ok(());
        };
        let first_not_done: Option<i64> =
            sqlx::query_scalar(AssertSqlSafe(self.sql.first_not_done.clone()))
                .bind(name)
                .bind(queue)
                .bind(done_through)
                .bind(highest)
                .fetch_optional(&mut *connection)
                .await?;
        let through = first_not_done.map_or(highest, |seq| seq - 1);
        if through > done_through {
            for statement in [&self.sql.forget_done, &self.sql.advance] {
                sqlx::query(AssertSqlSafe(statement.clone()))
                    .bind(name)
                    .bind(queue)
                    .bind(through)
                    .execute(&mut *connection)
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs a statement on one lease: `?1` group, `?2` queue, `?3` seq, `?4` attempt, `?5` a
    /// time. True when it changed the row.
    async fn on_lease(&self, sql: &Arc<str>, lease: Lease, at: i64) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(&self.group.name)
            .bind(&self.group.queue)
            .bind(lease.seq)
            .bind(lease.attempt)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }
}

/// Creates the state tables in one write transaction: SQLite runs one at a time, so consumers
/// that start together take turns.
async fn provision_state(pool: &SqlitePool, tables: &StateTables) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for statement in state_schema(Engine::Sqlite, tables) {
        sqlx::query(AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Now, in milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

#[async_trait]
impl GroupStore for SqliteStore {
    async fn claim(&self, max: usize, compact: bool) -> Result<Vec<ClaimedRow>, sqlx::Error> {
        let Group {
            name,
            queue,
            member,
            ack_timeout,
        } = &self.group;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        let leased_until = now.saturating_add(millis(*ack_timeout));
        let done_through: i64 = sqlx::query_scalar(AssertSqlSafe(self.sql.done_through.clone()))
            .bind(name)
            .bind(queue)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        let due: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(self.sql.due.clone()))
            .bind(name)
            .bind(queue)
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        let fresh: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(self.sql.fresh.clone()))
            .bind(name)
            .bind(queue)
            .bind(done_through)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        let (again, new) = lowest(&due, &fresh, max);
        for seq in &again {
            sqlx::query(AssertSqlSafe(self.sql.lease_again.clone()))
                .bind(name)
                .bind(queue)
                .bind(seq)
                .bind(member)
                .bind(leased_until)
                .execute(&mut *tx)
                .await?;
        }
        for seq in &new {
            sqlx::query(AssertSqlSafe(self.sql.lease_fresh.clone()))
                .bind(name)
                .bind(queue)
                .bind(seq)
                .bind(member)
                .bind(leased_until)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        let mut claimed = [again, new].concat();
        claimed.sort_unstable();
        let mut rows = Vec::with_capacity(claimed.len());
        for seq in claimed {
            let (attempt, id, message_key, headers, body, enqueued_at): FetchedRow =
                sqlx::query_as(AssertSqlSafe(self.sql.fetch.clone()))
                    .bind(name)
                    .bind(queue)
                    .bind(seq)
                    .fetch_one(&mut *tx)
                    .await?;
            rows.push(ClaimedRow {
                lease: Lease { seq, attempt },
                id,
                message_key,
                headers,
                body,
                enqueued_at: parse_time(&enqueued_at),
            });
        }
        if compact {
            self.compact(&mut tx, done_through).await?;
        }
        tx.commit().await?;
        Ok(rows)
    }

    async fn ack(&self, lease: Lease) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(AssertSqlSafe(self.sql.ack.clone()))
            .bind(&self.group.name)
            .bind(&self.group.queue)
            .bind(lease.seq)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn retry(&self, lease: Lease, delay: Duration) -> Result<bool, sqlx::Error> {
        let due_at = now_ms().saturating_add(millis(delay));
        self.on_lease(&self.sql.retry, lease, due_at).await
    }

    async fn extend(&self, lease: Lease) -> Result<bool, sqlx::Error> {
        let leased_until = now_ms().saturating_add(millis(self.group.ack_timeout));
        self.on_lease(&self.sql.extend, lease, leased_until).await
    }

    async fn release(&self, leases: &[Lease]) -> Result<(), sqlx::Error> {
        for lease in leases {
            sqlx::query(AssertSqlSafe(self.sql.release.clone()))
                .bind(&self.group.name)
                .bind(&self.group.queue)
                .bind(lease.seq)
                .bind(lease.attempt)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    async fn release_all(&self) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(self.sql.release_all.clone()))
            .bind(&self.group.name)
            .bind(&self.group.queue)
            .execute(&self.pool)
            .await
            .map(drop)
    }

    async fn lag(&self) -> Result<GroupLag, sqlx::Error> {
        let (messages, oldest): (i64, Option<String>) =
            sqlx::query_as(AssertSqlSafe(self.sql.lag.clone()))
                .bind(&self.group.name)
                .bind(&self.group.queue)
                .fetch_one(&self.pool)
                .await?;
        let oldest_age = oldest
            .as_deref()
            .and_then(parse_time)
            .map(|oldest| (Utc::now() - oldest).to_std().unwrap_or_default());
        Ok(GroupLag {
            messages,
            oldest_age,
        })
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// `enqueued_at` as the queue table's default writes it (RFC 3339, UTC). A row written some
/// other way gives no time rather than failing the claim.
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.to_utc())
}
