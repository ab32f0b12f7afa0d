//! A consumer group's delivery state in PostgreSQL, next to the queue table.
//!
//! Claims run one at a time per group: each locks the group's row (`FOR UPDATE`), leases due
//! rows of `<table>_deliveries` (`FOR UPDATE SKIP LOCKED`, so a claim never waits for an ack
//! in flight) and inserts delivery rows for messages above `done_through` that have none.
//!
//! Queue rows can commit out of `seq` order (sql.rs), so a row may appear below rows already
//! delivered. Delivery never depends on a position for that reason: a message is new while it
//! has no delivery row, wherever its `seq` is. Only compaction, which folds done rows into
//! `done_through` and deletes them, must never pass a `seq` that could still commit. It stops
//! at the group's `horizon`, a `seq` at and below which every row that will ever exist is
//! visible, which moves in two steps:
//!
//! 1. mark: `mark_seq` = the highest visible `seq` of the queue, and `mark_writers` = the
//!    transactions that hold a `RowExclusiveLock` on the queue table (from `pg_locks`, which
//!    every role can read). A row still to commit below `mark_seq` took its `seq` before the
//!    row holding `mark_seq` did; its writer locked the table before taking it, and holds the
//!    lock until it ends, so it is one of `mark_writers`.
//! 2. once none of `mark_writers` runs any more (and no prepared transaction holds the table,
//!    as a writer that prepares changes its id), each has committed or rolled back:
//!    `horizon` = `mark_seq`. With no writer at the mark, that is at once.
//!
//! A long transaction writing to the queue table holds compaction back, never delivery; other
//! transactions do not matter.

use std::{str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    AssertSqlSafe, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{
    super::{CONNECT_TIMEOUT, Engine, Fallback, QueuePool, TableName, classify},
    state::{StateTables, state_probes, state_schema},
    store::{ClaimedRow, Group, GroupLag, GroupStore, Lease, lowest, millis},
};
use crate::broker::BrokerError;

/// The receive loop holds one connection for a claim; the others serve acks, retries and
/// extends from the consumer's workers concurrently.
const MAX_CONNECTIONS: u32 = 4;

/// The statements, written once with the table names in them.
struct Statements {
    register: Arc<str>,
    lock_group: Arc<str>,
    due: Arc<str>,
    fresh: Arc<str>,
    lease_again: Arc<str>,
    lease_fresh: Arc<str>,
    fetch: Arc<str>,
    mark: Arc<str>,
    settle: Arc<str>,
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
        let this_group = "group_name = $1 AND queue = $2";
        let done_here = format!(
            "SELECT 1 FROM {deliveries} d WHERE d.group_name = $1 AND d.queue = $2 \
             AND d.seq = q.seq AND d.done"
        );
        let lease_until = "now() + $4 * interval '1 millisecond'";
        // Locks on the queue table; relation ids are per database.
        let queue_locks = format!(
            "l.locktype = 'relation' AND l.relation = '{queue}'::regclass \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        );
        let text = |sql: String| Arc::<str>::from(sql);
        Self {
            register: text(format!(
                "INSERT INTO {groups} (group_name, queue) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            )),
            lock_group: text(format!(
                "SELECT done_through, horizon FROM {groups} WHERE {this_group} FOR UPDATE"
            )),
            due: text(format!(
                "SELECT seq FROM {deliveries} WHERE {this_group} AND NOT done AND due_at <= now() \
                 AND (leased_until IS NULL OR leased_until <= now()) \
                 ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED"
            )),
            fresh: text(format!(
                "SELECT q.seq FROM {queue} q WHERE q.queue = $2 AND q.seq > $3 AND NOT EXISTS \
                 (SELECT 1 FROM {deliveries} d WHERE d.group_name = $1 AND d.queue = $2 \
                 AND d.seq = q.seq) ORDER BY q.seq LIMIT $4"
            )),
            lease_again: text(format!(
                "UPDATE {deliveries} SET attempt = attempt + 1, leased_by = $3, \
                 leased_until = {lease_until} WHERE {this_group} AND seq = ANY($5)"
            )),
            lease_fresh: text(format!(
                "INSERT INTO {deliveries} \
                 (group_name, queue, seq, attempt, due_at, leased_by, leased_until) \
                 SELECT $1, $2, fresh.seq, 1, now(), $3, {lease_until} \
                 FROM unnest($5::bigint[]) AS fresh(seq)"
            )),
            fetch: text(format!(
                "SELECT d.seq, d.attempt, q.id, q.message_key, q.headers, q.body, q.enqueued_at \
                 FROM {deliveries} d JOIN {queue} q ON q.seq = d.seq \
                 WHERE d.group_name = $1 AND d.queue = $2 AND d.seq = ANY($3) ORDER BY d.seq"
            )),
            mark: text(format!(
                "UPDATE {groups} SET mark_seq = (SELECT max(seq) FROM {queue} WHERE queue = $2), \
                 mark_writers = ARRAY(SELECT l.virtualtransaction FROM pg_locks l \
                 WHERE {queue_locks} AND l.mode = 'RowExclusiveLock') \
                 WHERE {this_group} AND mark_seq IS NULL"
            )),
            settle: text(format!(
                "UPDATE {groups} SET horizon = GREATEST(horizon, mark_seq), mark_seq = NULL, \
                 mark_writers = NULL WHERE {this_group} AND mark_seq IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM pg_locks l \
                 WHERE l.virtualtransaction = ANY(mark_writers)) \
                 AND NOT EXISTS (SELECT 1 FROM pg_locks l \
                 WHERE {queue_locks} AND l.virtualtransaction LIKE '-1/%') \
                 RETURNING horizon"
            )),
            first_not_done: text(format!(
                "SELECT q.seq FROM {queue} q WHERE q.queue = $2 AND q.seq > $3 AND q.seq <= $4 \
                 AND NOT EXISTS ({done_here}) ORDER BY q.seq LIMIT 1"
            )),
            forget_done: text(format!(
                "DELETE FROM {deliveries} WHERE {this_group} AND seq <= $3"
            )),
            advance: text(format!(
                "UPDATE {groups} SET done_through = $3 WHERE {this_group}"
            )),
            ack: text(format!(
                "UPDATE {deliveries} SET done = TRUE, leased_by = NULL, leased_until = NULL \
                 WHERE {this_group} AND seq = $3 AND NOT done"
            )),
            retry: text(format!(
                "UPDATE {deliveries} SET due_at = now() + $5 * interval '1 millisecond', \
                 leased_by = NULL, leased_until = NULL \
                 WHERE {this_group} AND seq = $3 AND attempt = $4 AND NOT done"
            )),
            extend: text(format!(
                "UPDATE {deliveries} SET leased_until = now() + $5 * interval '1 millisecond' \
                 WHERE {this_group} AND seq = $3 AND attempt = $4 AND NOT done"
            )),
            release: text(format!(
                "UPDATE {deliveries} d SET leased_by = NULL, leased_until = NULL \
                 FROM unnest($3::bigint[], $4::int[]) AS held(seq, attempt) \
                 WHERE d.group_name = $1 AND d.queue = $2 AND d.seq = held.seq \
                 AND d.attempt = held.attempt AND NOT d.done"
            )),
            release_all: text(format!(
                "UPDATE {deliveries} SET leased_by = NULL, leased_until = NULL \
                 WHERE {this_group} AND NOT done AND leased_until IS NOT NULL"
            )),
            lag: text(format!(
                "SELECT count(*), \
                 (extract(epoch FROM now() - min(q.enqueued_at)) * 1000)::bigint \
                 FROM {queue} q JOIN {groups} g ON g.group_name = $1 AND g.queue = $2 \
                 WHERE q.queue = $2 AND q.seq > g.done_through AND NOT EXISTS ({done_here})"
            )),
        }
    }
}

/// The group's row as a claim locks it: `done_through` and `horizon`.
type GroupRow = (i64, i64);

/// A claimed row: `seq`, `attempt`, `id`, `message_key`, `headers`, `body`, `enqueued_at`.
type FetchedRow = (i64, i32, String, String, String, Vec<u8>, DateTime<Utc>);

pub(super) struct PostgresStore {
    pool: PgPool,
    group: Group,
    sql: Statements,
}

impl PostgresStore {
    /// Connects, creates the queue and state tables when `provision` (checks them otherwise),
    /// and registers the group, which then starts at the oldest message the queue holds.
    pub async fn open(
        topic: &str,
        url: &str,
        table: &TableName,
        group: Group,
        provision: bool,
    ) -> Result<Self, BrokerError> {
        let failed = |fallback| move |error| classify(topic, Engine::Postgres, error, fallback);
        let options = PgConnectOptions::from_str(url).map_err(failed(Fallback::Connection))?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(failed(Fallback::Connection))?;
        let tables = StateTables::of(table);
        let queue_pool = QueuePool::Postgres(pool.clone());
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
        for probe in state_probes(Engine::Postgres, &tables) {
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

    /// Marks the queue unless a mark is pending and moves the horizon to the mark once its
    /// writers have ended (see the module docs), then folds the done messages at the bottom of
    /// the group's backlog, up to the horizon, into `done_through`.
    async fn compact(
        &self,
        connection: &mut PgConnection,
        (done_through, horizon): GroupRow,
    ) -> Result<(), sqlx::Error> {
        let Group { name, queue, .. } = &self.group;
        sqlx::query(AssertSqlSafe(self.sql.mark.clone()))
            .bind(name)
            .bind(queue)
            .execute(&mut *connection)
            .await?;
        let settled: Option<i64> = sqlx::query_scalar(AssertSqlSafe(self.sql.settle.clone()))
            .bind(name)
            .bind(queue)
            .fetch_optional(&mut *connection)
            .await?;
        let horizon = settled.unwrap_or(horizon);
        if horizon <= done_through {
            return Ok(());
        }
        let first_not_done: Option<i64> =
            sqlx::query_scalar(AssertSqlSafe(self.sql.first_not_done.clone()))
                .bind(name)
                .bind(queue)
                .bind(done_through)
                .bind(horizon)
                .fetch_optional(&mut *connection)
                .await?;
        let through = first_not_done.map_or(horizon, |seq| seq - 1);
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

    /// Runs a statement on one lease: `$1` group, `$2` queue, `$3` seq, `$4` attempt, `$5`
    /// milliseconds. True when it changed the row.
    async fn on_lease(&self, sql: &Arc<str>, lease: Lease, ms: i64) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(&self.group.name)
            .bind(&self.group.queue)
            .bind(lease.seq)
            .bind(lease.attempt)
            .bind(ms)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }
}

/// Creates the state tables. A transaction-scoped advisory lock keeps consumers that start
/// together from racing on `CREATE TABLE IF NOT EXISTS`, which can fail when run concurrently.
async fn provision_state(pool: &PgPool, tables: &StateTables) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let lock = format!("ferry queue group state {}", tables.groups);
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(lock)
        .execute(&mut *tx)
        .await?;
    for statement in state_schema(Engine::Postgres, tables) {
        sqlx::query(AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

#[async_trait]
impl GroupStore for PostgresStore {
    async fn claim(&self, max: usize, compact: bool) -> Result<Vec<ClaimedRow>, sqlx::Error> {
        let Group {
            name,
            queue,
            member,
            ack_timeout,
        } = &self.group;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        let group: GroupRow = sqlx::query_as(AssertSqlSafe(self.sql.lock_group.clone()))
            .bind(name)
            .bind(queue)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        let due: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(self.sql.due.clone()))
            .bind(name)
            .bind(queue)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        let fresh: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(self.sql.fresh.clone()))
            .bind(name)
            .bind(queue)
            .bind(group.0)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        let (again, new) = lowest(&due, &fresh, max);
        for (statement, seqs) in [
            (&self.sql.lease_again, &again),
            (&self.sql.lease_fresh, &new),
        ] {
            if !seqs.is_empty() {
                sqlx::query(AssertSqlSafe(statement.clone()))
                    .bind(name)
                    .bind(queue)
                    .bind(member)
                    .bind(millis(*ack_timeout))
                    .bind(seqs)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let claimed = [again, new].concat();
        let rows: Vec<FetchedRow> = if claimed.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(AssertSqlSafe(self.sql.fetch.clone()))
                .bind(name)
                .bind(queue)
                .bind(&claimed)
                .fetch_all(&mut *tx)
                .await?
        };
        if compact {
            self.compact(&mut tx, group).await?;
        }
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(
                |(seq, attempt, id, message_key, headers, body, enqueued_at)| ClaimedRow {
                    lease: Lease { seq, attempt },
                    id,
                    message_key,
                    headers,
                    body,
                    enqueued_at: Some(enqueued_at),
                },
            )
            .collect())
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
        self.on_lease(&self.sql.retry, lease, millis(delay)).await
    }

    async fn extend(&self, lease: Lease) -> Result<bool, sqlx::Error> {
        let ack_timeout = millis(self.group.ack_timeout);
        self.on_lease(&self.sql.extend, lease, ack_timeout).await
    }

    async fn release(&self, leases: &[Lease]) -> Result<(), sqlx::Error> {
        let seqs: Vec<i64> = leases.iter().map(|lease| lease.seq).collect();
        let attempts: Vec<i32> = leases.iter().map(|lease| lease.attempt).collect();
        sqlx::query(AssertSqlSafe(self.sql.release.clone()))
            .bind(&self.group.name)
            .bind(&self.group.queue)
            .bind(seqs)
            .bind(attempts)
            .execute(&self.pool)
            .await
            .map(drop)
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
        let (messages, oldest_ms): (i64, Option<i64>) =
            sqlx::query_as(AssertSqlSafe(self.sql.lag.clone()))
                .bind(&self.group.name)
                .bind(&self.group.queue)
                .fetch_one(&self.pool)
                .await?;
        Ok(GroupLag {
            messages,
            oldest_age: oldest_ms.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        })
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
