//! Reads a SQL queue as a consumer group: leases, settles and measures the group's messages in
//! state tables next to the queue table.
//!
//! Each group (`SubscriptionConfig::group`) gets every message of the queue; the members of a
//! group share them. Per group and queue, `<table>_groups` keeps `done_through` (every message
//! at or below that `seq` is done), and `<table>_deliveries` keeps one row per message started
//! above it: attempts so far, when it is due, the lease (member and expiry) and whether it is
//! done. A claim leases the lowest due messages: those with no delivery row yet, retries whose
//! time has come, and leases that expired, each counting one more attempt. `ack` marks the row
//! done, `retry` makes it due later and ends the lease, `extend` pushes the lease, each one
//! committed statement. Compaction, run by claims about once a second, folds the done rows at
//! the bottom of the backlog into `done_through` and deletes them, so the state holds only
//! messages in flight, waiting for a retry, or done above one that is not. How it copes with
//! PostgreSQL rows that commit out of `seq` order is in the `postgres` module's docs.
//!
//! Neither engine tells a reader that rows arrived (the publisher sends no NOTIFY), so
//! `receive` polls: at once, then after 25 ms doubling to 200 ms while nothing comes, until
//! `wait` ends. A retry is therefore delivered at most about 200 ms after it is due.
//!
//! The group's row is data, not topology: it is registered on connect whatever `provision`
//! says, and a new group starts at the oldest message the queue holds.

mod postgres;
mod sqlite;
mod state;
mod store;

use std::{
    collections::HashMap,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;

use self::{
    postgres::PostgresStore,
    sqlite::SqliteStore,
    store::{ClaimedRow, Group, GroupStore, Lease},
};
use super::{Engine, Fallback, TableName, classify, decode_headers};
use crate::{
    broker::{
        BrokerError,
        subscriber::{BrokerLag, Delivery, Subscriber, SubscriptionConfig},
    },
    config::SqlTarget,
};

/// The first pause of `receive` after a claim that found nothing; it doubles up to `MAX_POLL`.
const MIN_POLL: Duration = Duration::from_millis(25);
const MAX_POLL: Duration = Duration::from_millis(200);
/// How often a claim also compacts the group's state.
const COMPACT_EVERY: Duration = Duration::from_secs(1);

/// Receives one queue of a queue table as one member of a consumer group.
pub struct SqlSubscriber {
    topic: String,
    engine: Engine,
    store: Box<dyn GroupStore>,
    prefetch: usize,
    /// The leases this member holds and has not settled (seq -> attempt): what `close` gives
    /// back, and what counts against `prefetch`.
    held: Mutex<HashMap<i64, i32>>,
    last_compaction: Mutex<Option<Instant>>,
    connected: AtomicBool,
}

impl SqlSubscriber {
    /// Opens the queue's database, creates the queue table and the state tables when
    /// `subscription.provision` is on (checks that they exist otherwise), and registers the
    /// group.
    pub async fn connect(
        topic: &str,
        url: &str,
        target: &SqlTarget,
        subscription: &SubscriptionConfig,
    ) -> Result<Self, BrokerError> {
        let engine = Engine::of_url(url).map_err(|scheme| BrokerError::Connection {
            topic: topic.to_owned(),
            message: format!(
                "URL scheme {scheme:?} is not a SQL queue engine (postgres://, postgresql:// or sqlite:)"
            ),
        })?;
        let table = TableName::parse(&target.table).map_err(|message| BrokerError::Topology {
            topic: topic.to_owned(),
            message,
        })?;
        let group = Group {
            name: subscription.group.clone(),
            queue: target.queue.clone(),
            member: subscription.member.clone(),
            ack_timeout: subscription.ack_timeout,
        };
        let provision = subscription.provision;
        let store: Box<dyn GroupStore> = match engine {
            Engine::Postgres => {
                Box::new(PostgresStore::open(topic, url, &table, group, provision).await?)
            }
            Engine::Sqlite => {
                Box::new(SqliteStore::open(topic, url, &table, group, provision).await?)
            }
        };
        if subscription.single_active {
            store
                .release_all()
                .await
                .map_err(|error| BrokerError::Connection {
                    topic: topic.to_owned(),
                    message: format!("giving back the group's leases: {error}"),
                })?;
        }
        tracing::debug!(
            topic,
            table = %table.qualified(),
            queue = %target.queue,
            group = %subscription.group,
            member = %subscription.member,
            ?engine,
            "sql queue subscriber ready"
        );
        Ok(Self {
            topic: topic.to_owned(),
            engine,
            store,
            // 0 is no limit, as in AMQP's prefetch count.
            prefetch: match subscription.prefetch {
                0 => usize::MAX,
                prefetch => usize::try_from(prefetch).unwrap_or(usize::MAX),
            },
            held: Mutex::new(HashMap::new()),
            last_compaction: Mutex::new(None),
            connected: AtomicBool::new(true),
        })
    }

    /// The leases held. A panic elsewhere while holding the lock leaves a map that is still
    /// consistent (every change is one insert or remove), so a poisoned lock is used as is.
    fn held(&self) -> MutexGuard<'_, HashMap<i64, i32>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether this claim should also compact, and if so, counts it as done from now.
    fn compaction_due(&self) -> bool {
        let mut last = self
            .last_compaction
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = last.is_none_or(|last| last.elapsed() >= COMPACT_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Maps a database error, and notes whether the connection looks up.
    fn failed(&self, error: sqlx::Error) -> BrokerError {
        let error = classify(&self.topic, self.engine, error, Fallback::Publish);
        if matches!(error, BrokerError::Connection { .. }) {
            self.connected.store(false, Ordering::Relaxed);
        }
        error
    }

    fn succeeded(&self) {
        self.connected.store(true, Ordering::Relaxed);
    }

    fn lease_of(&self, delivery: &Delivery) -> Result<Lease, BrokerError> {
        delivery
            .token
            .downcast_ref::<Lease>()
            .copied()
            .ok_or_else(|| BrokerError::Receive {
                topic: self.topic.clone(),
                message: format!(
                    "delivery {} was not received from a SQL queue subscriber",
                    delivery.id
                ),
            })
    }

    /// Forgets a lease this member settled (unless a later claim of the same row replaced it).
    fn settled(&self, lease: Lease) {
        let mut held = self.held();
        if held.get(&lease.seq) == Some(&lease.attempt) {
            held.remove(&lease.seq);
        }
    }

    fn delivery(&self, row: ClaimedRow) -> Delivery {
        let ClaimedRow {
            lease,
            id,
            message_key,
            headers,
            body,
            enqueued_at,
        } = row;
        let decoded = decode_headers(&headers);
        let readable = decoded.is_ok();
        let headers = decoded.unwrap_or_else(|error| {
            tracing::warn!(topic = %self.topic, id, seq = lease.seq, %error, "queue row headers are not JSON pairs; delivering without headers");
            Vec::new()
        });
        let mut delivery = Delivery::from_headers(headers, body, Box::new(lease));
        if !readable {
            // The columns the publisher wrote from the same envelope still name the message,
            // so the consumer can dead-letter it by id.
            delivery.id = id;
            delivery.key = message_key;
        }
        delivery.attempt = u32::try_from(lease.attempt).unwrap_or(1).max(1);
        delivery.redelivered = lease.attempt > 1;
        delivery.published_at = enqueued_at;
        delivery
    }
}

#[async_trait]
impl Subscriber for SqlSubscriber {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        let deadline = Instant::now() + wait;
        let mut pause = MIN_POLL;
        loop {
            let room = max.min(self.prefetch.saturating_sub(self.held().len()));
            if room > 0 {
                let rows = self
                    .store
                    .claim(room, self.compaction_due())
                    .await
                    .map_err(|error| self.failed(error))?;
                self.succeeded();
                if !rows.is_empty() {
                    let mut held = self.held();
                    held.extend(rows.iter().map(|row| (row.lease.seq, row.lease.attempt)));
                    drop(held);
                    return Ok(rows.into_iter().map(|row| self.delivery(row)).collect());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        let lease = self.lease_of(delivery)?;
        let changed = self
            .store
            .ack(lease)
            .await
            .map_err(|error| self.failed(error))?;
        if !changed {
            tracing::debug!(topic = %self.topic, id = %delivery.id, seq = lease.seq, "acked a message already done for the group");
        }
        self.settled(lease);
        self.succeeded();
        Ok(())
    }

    async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), BrokerError> {
        let lease = self.lease_of(delivery)?;
        let changed = self
            .store
            .retry(lease, delay)
            .await
            .map_err(|error| self.failed(error))?;
        if !changed {
            // Another member took the message after this lease expired (it settles it now),
            // or it is done: either way nothing is lost by leaving it be.
            tracing::debug!(topic = %self.topic, id = %delivery.id, seq = lease.seq, attempt = lease.attempt, "retry of a lease no longer held; left to its holder");
        }
        self.settled(lease);
        self.succeeded();
        Ok(())
    }

    async fn extend(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        let lease = self.lease_of(delivery)?;
        let changed = self
            .store
            .extend(lease)
            .await
            .map_err(|error| self.failed(error))?;
        if !changed {
            tracing::warn!(topic = %self.topic, id = %delivery.id, seq = lease.seq, attempt = lease.attempt, "lease lost before it was extended: another member may deliver this message too");
        }
        self.succeeded();
        Ok(())
    }

    async fn lag(&self) -> Result<BrokerLag, BrokerError> {
        let lag = self.store.lag().await.map_err(|error| self.failed(error))?;
        self.succeeded();
        Ok(BrokerLag {
            messages: u64::try_from(lag.messages).unwrap_or(0),
            oldest_age: lag.oldest_age,
        })
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Gives this member's unsettled leases back at once, rather than after `ack_timeout`;
    /// each still counts as an attempt.
    async fn close(&self) {
        let leases: Vec<Lease> = self
            .held()
            .drain()
            .map(|(seq, attempt)| Lease { seq, attempt })
            .collect();
        if !leases.is_empty()
            && let Err(error) = self.store.release(&leases).await
        {
            // They expire after `ack_timeout` instead.
            tracing::warn!(topic = %self.topic, leases = leases.len(), %error, "could not release leases on close");
        }
        self.store.close().await;
    }
}
