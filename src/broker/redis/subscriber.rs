//! Redis Streams subscriber: reads a stream through a consumer group, keeps retries as pending
//! entries scheduled in Redis, and takes over the entries of members that stopped.
//!
//! What it creates and uses, for the stream `<stream>` and the group `<group>`:
//! - the consumer group `<group>` on `<stream>` (created at id `0` with `MKSTREAM` when
//!   provisioning, so a new group gets the entries already in the stream), whose consumer is
//!   the member's name;
//! - `<stream>:ferry:<group>:retry`, a sorted set of the entries waiting for a retry: member the
//!   entry id, score when it is due, in Unix milliseconds of the server's clock;
//! - `<stream>:ferry:<group>:attempts`, a hash from entry id to the attempt number of its next
//!   delivery, for entries past their first attempt.
//!
//! An acked entry leaves nothing behind in the two keys; whoever deletes the group deletes them.
//!
//! A received entry stays in the group's pending list until `ack` (`XACK`). `retry` leaves it
//! pending and puts it on the schedule; once due it comes out of `receive` again, claimed for
//! whichever member took it off the schedule (a Lua script, so exactly one does). An entry
//! pending and idle for longer than `ack_timeout` (its member crashed, or did not `extend`) is
//! taken over with `XAUTOCLAIM` by the next member that scans, as a new attempt; entries waiting
//! for their retry are left to the schedule however long they wait.
//!
//! A blocking `XREADGROUP` holds its connection, so reads have one of their own; acks, retries
//! and scans share a reconnecting connection manager. A read never blocks past the next
//! scheduled retry, and a `retry` due before the current block ends cuts it short with
//! `CLIENT UNBLOCK`; as that is best effort, no read blocks longer than a second either.
//!
//! Needs Redis 7.0 or later (`XAUTOCLAIM` listing deleted entries, the group's `lag`), and one
//! server, not a cluster: the scripts touch the stream and its two keys together.

mod entry;
mod reader;
mod scripts;
mod setup;

use std::{
    collections::HashSet,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use redis::{Client, RedisResult, Value, aio::ConnectionManager};

use self::{
    entry::{Entry, EntryToken, array, integer, parse_claimed, parse_read, stream_order},
    reader::{ReadError, Reader},
    scripts::{CLAIM_DUE, FORGET_CONSUMER, LAG, SCHEDULE_RETRY, TAKE_OVER, TOUCH},
    setup::{check_group, classify, create_group},
};
use super::open;
use crate::{
    broker::{
        BrokerError,
        subscriber::{BrokerLag, Delivery, Subscriber, SubscriptionConfig},
    },
    config::RedisTarget,
};

/// Bounds of the interval between takeover scans, a quarter of `ack_timeout`: a stopped
/// member's entries wait at most a quarter longer than `ack_timeout`, for a few cheap scans.
const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_SCAN_INTERVAL: Duration = Duration::from_secs(10);
/// The longest one blocking read waits. `CLIENT UNBLOCK` can miss a read that has not reached
/// the server yet, or be refused by the server's ACL; this bounds how late that makes a retry.
const MAX_BLOCK: Duration = Duration::from_secs(1);
/// The most unread entries `lag` counts one by one, when Redis cannot tell their number: an
/// estimate past this is as useful, and counting blocks the server.
const LAG_COUNT_LIMIT: u64 = 100_000;
/// The longest retry delay kept as asked; longer ones are cut to it. Due times are scores, and
/// a year keeps them far inside the integers a double holds exactly.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Receives one Redis stream's entries as one member of a consumer group.
pub struct RedisSubscriber {
    topic: String,
    stream: String,
    group: String,
    member: String,
    retry_key: String,
    attempts_key: String,
    prefetch: usize,
    ack_timeout: Duration,
    /// Acks, retries, scans and lag; reconnects by itself, cloned per call.
    commands: ConnectionManager,
    reader: Reader,
    /// Entry ids handed out and not yet settled, to keep within `prefetch` and to offer them to
    /// the other members on `close`.
    held: Mutex<HashSet<String>>,
    /// Woken by each settlement, for a `receive` that waits for room under `prefetch`.
    settled: tokio::sync::Notify,
    scan: Mutex<Scan>,
    connected: AtomicBool,
    closed: AtomicBool,
}

/// Where the takeover scan of the pending list stands.
struct Scan {
    /// `XAUTOCLAIM` cursor: `0-0` starts a new pass.
    cursor: String,
    next_at: Instant,
    /// The first pass of an ordered group takes every pending entry, however briefly idle: a
    /// session starts with nothing in flight, so they were left by a stopped member, and they
    /// must come before the newer entries of their keys (which `XREADGROUP` would hand out at
    /// once, while the left entries waited out `ack_timeout`).
    everything: bool,
}

impl RedisSubscriber {
    /// Connects as `subscription.member` of the group `subscription.group`, creating the group
    /// (and the stream) when `provision` is on; without it both must exist.
    pub async fn connect(
        topic: &str,
        url: &str,
        target: &RedisTarget,
        subscription: &SubscriptionConfig,
    ) -> Result<Self, BrokerError> {
        let client = Client::open(url).map_err(|error| classify(topic, &error))?;
        let mut commands = open(url).await.map_err(|error| classify(topic, &error))?;
        let stream = &target.stream;
        let group = &subscription.group;
        if subscription.provision {
            create_group(topic, stream, group, &mut commands).await?;
        } else {
            check_group(topic, stream, group, &mut commands).await?;
        }
        let reader = Reader::open(client)
            .await
            .map_err(|error| classify(topic, &error))?;
        let state_key = |name: &str| format!("{stream}:ferry:{group}:{name}");
        tracing::debug!(topic, stream, group, member = %subscription.member, "redis subscriber ready");
        Ok(Self {
            topic: topic.to_owned(),
            stream: stream.clone(),
            group: group.clone(),
            member: subscription.member.clone(),
            retry_key: state_key("retry"),
            attempts_key: state_key("attempts"),
            prefetch: usize::try_from(subscription.prefetch)
                .unwrap_or(usize::MAX)
                .max(1),
            ack_timeout: subscription.ack_timeout,
            commands,
            reader,
            held: Mutex::new(HashSet::new()),
            settled: tokio::sync::Notify::new(),
            scan: Mutex::new(Scan {
                cursor: "0-0".into(),
                next_at: Instant::now(),
                everything: subscription.single_active,
            }),
            connected: AtomicBool::new(true),
            closed: AtomicBool::new(false),
        })
    }

    /// Takes the entries whose retry is due, and says how long until the next one is.
    async fn claim_due(&self, count: usize) -> Result<(Vec<Entry>, Option<Duration>), BrokerError> {
        let reply: RedisResult<Value> = CLAIM_DUE
            .key(&self.stream)
            .key(&self.retry_key)
            .key(&self.attempts_key)
            .arg(&self.group)
            .arg(&self.member)
            .arg(count)
            .invoke_async(&mut self.commands.clone())
            .await;
        let mut parts = array(self.track(reply)?, "the due retries")
            .map_err(|detail| self.unexpected(detail))?
            .into_iter();
        let entries = parts
            .next()
            .map(parse_claimed)
            .transpose()
            .map_err(|detail| self.unexpected(detail))?
            .unwrap_or_default();
        let next_due = parts
            .next()
            .and_then(integer)
            .and_then(|millis| u64::try_from(millis).ok())
            .map(Duration::from_millis);
        Ok((entries, next_due))
    }

    /// Whether the takeover scan should run now.
    fn scan_is_due(&self) -> bool {
        Instant::now() >= self.lock_scan().next_at
    }

    fn until_next_scan(&self) -> Duration {
        self.lock_scan()
            .next_at
            .saturating_duration_since(Instant::now())
    }

    /// Takes over entries idle for longer than `ack_timeout`, continuing the scan where the last
    /// one stopped; a finished pass waits for the scan interval before the next begins.
    async fn take_over(&self, count: usize) -> Result<Vec<Entry>, BrokerError> {
        let (cursor, everything) = {
            let scan = self.lock_scan();
            (scan.cursor.clone(), scan.everything)
        };
        let min_idle = if everything {
            Duration::ZERO
        } else {
            self.ack_timeout
        };
        let reply: RedisResult<Value> = TAKE_OVER
            .key(&self.stream)
            .key(&self.retry_key)
            .key(&self.attempts_key)
            .arg(&self.group)
            .arg(&self.member)
            .arg(millis(min_idle))
            .arg(&cursor)
            .arg(count)
            .invoke_async(&mut self.commands.clone())
            .await;
        let mut parts = array(self.track(reply)?, "the takeover")
            .map_err(|detail| self.unexpected(detail))?
            .into_iter();
        let next_cursor = parts
            .next()
            .and_then(entry::bytes)
            .and_then(|cursor| String::from_utf8(cursor).ok())
            .unwrap_or_else(|| "0-0".into());
        let entries = parts
            .next()
            .map(parse_claimed)
            .transpose()
            .map_err(|detail| self.unexpected(detail))?
            .unwrap_or_default();
        {
            let mut scan = self.lock_scan();
            if next_cursor == "0-0" {
                scan.everything = false;
            }
            scan.next_at = if next_cursor == "0-0" {
                Instant::now() + (self.ack_timeout / 4).clamp(MIN_SCAN_INTERVAL, MAX_SCAN_INTERVAL)
            } else {
                Instant::now()
            };
            scan.cursor = next_cursor;
        }
        if !entries.is_empty() {
            tracing::info!(
                topic = %self.topic,
                stream = %self.stream,
                group = %self.group,
                member = %self.member,
                entries = entries.len(),
                "took over entries left pending longer than the ack timeout"
            );
        }
        Ok(entries)
    }

    /// Reads entries the group has not seen, waiting up to `block` for some (not at all when
    /// zero).
    async fn read_new(&self, count: usize, block: Duration) -> Result<Vec<Entry>, BrokerError> {
        let reply = self
            .reader
            .read(&self.stream, &self.group, &self.member, count, block)
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(ReadError::Redis(error)) => return self.track(Err(error)),
            Err(ReadError::NoReply(limit)) => {
                self.connected.store(false, Ordering::Release);
                return Err(BrokerError::Connection {
                    topic: self.topic.clone(),
                    message: format!("no reply to XREADGROUP within {limit:?}"),
                });
            }
        };
        parse_read(reply).map_err(|detail| self.unexpected(detail))
    }

    /// Turns entries into deliveries in stream order, and counts them as held.
    fn hand_out(&self, mut entries: Vec<Entry>) -> Vec<Delivery> {
        entries.sort_by(|left, right| stream_order(&left.id, &right.id));
        let mut held = self.lock_held();
        entries
            .into_iter()
            .map(|entry| {
                held.insert(entry.id.clone());
                entry.into_delivery()
            })
            .collect()
    }

    fn settle(&self, id: &str) {
        self.lock_held().remove(id);
        self.settled.notify_one();
    }

    /// Runs the `TOUCH` script on these entries with this idle time.
    async fn touch(&self, ids: &[&str], idle: Duration) -> Result<i64, BrokerError> {
        let mut invocation = TOUCH.key(&self.stream);
        invocation
            .arg(&self.group)
            .arg(&self.member)
            .arg(millis(idle));
        for id in ids {
            invocation.arg(*id);
        }
        let touched = invocation.invoke_async(&mut self.commands.clone()).await;
        self.track(touched)
    }

    /// Records whether the connection worked, and classifies the error.
    fn track<T>(&self, result: RedisResult<T>) -> Result<T, BrokerError> {
        let result = result.map_err(|error| classify(&self.topic, &error));
        let connection_lost = matches!(result, Err(BrokerError::Connection { .. }));
        self.connected.store(!connection_lost, Ordering::Release);
        result
    }

    fn unexpected(&self, detail: String) -> BrokerError {
        BrokerError::Receive {
            topic: self.topic.clone(),
            message: format!("unexpected reply from redis: {detail}"),
        }
    }

    fn entry_id<'a>(&self, delivery: &'a Delivery) -> Result<&'a str, BrokerError> {
        delivery
            .token
            .downcast_ref::<EntryToken>()
            .map(|token| token.id.as_str())
            .ok_or_else(|| BrokerError::Receive {
                topic: self.topic.clone(),
                message: format!(
                    "delivery {:?} was not received from a redis subscriber",
                    delivery.id
                ),
            })
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_scan(&self) -> std::sync::MutexGuard<'_, Scan> {
        self.scan.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Subscriber for RedisSubscriber {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        let deadline = Instant::now() + wait;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Ok(Vec::new());
            }
            let room = max.min(self.prefetch.saturating_sub(self.lock_held().len()));
            if room == 0 {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if max == 0 || remaining.is_zero() {
                    return Ok(Vec::new());
                }
                // Entries taken now would wait in memory, unseen by the other members.
                let _ = tokio::time::timeout(remaining, self.settled.notified()).await;
                continue;
            }
            let (mut entries, next_due) = self.claim_due(room).await?;
            if entries.len() < room && self.scan_is_due() {
                entries.extend(self.take_over(room - entries.len()).await?);
            }
            if entries.len() < room {
                let block = if entries.is_empty() {
                    let mut block = deadline
                        .saturating_duration_since(Instant::now())
                        .min(self.until_next_scan())
                        .min(MAX_BLOCK);
                    if let Some(next_due) = next_due {
                        block = block.min(next_due);
                    }
                    block
                } else {
                    Duration::ZERO
                };
                entries.extend(self.read_new(room - entries.len(), block).await?);
            }
            if !entries.is_empty() || Instant::now() >= deadline {
                return Ok(self.hand_out(entries));
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        let id = self.entry_id(delivery)?;
        let acked: RedisResult<()> = redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(id)
            .ignore()
            .cmd("ZREM")
            .arg(&self.retry_key)
            .arg(id)
            .ignore()
            .cmd("HDEL")
            .arg(&self.attempts_key)
            .arg(id)
            .ignore()
            .query_async(&mut self.commands.clone())
            .await;
        self.track(acked)?;
        self.settle(id);
        Ok(())
    }

    async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), BrokerError> {
        let id = self.entry_id(delivery)?;
        let delay = delay.min(MAX_RETRY_DELAY);
        let scheduled: RedisResult<i64> = SCHEDULE_RETRY
            .key(&self.stream)
            .key(&self.retry_key)
            .key(&self.attempts_key)
            .arg(&self.group)
            .arg(id)
            // Rounded up: a retry never comes out before its delay.
            .arg(delay.as_micros().div_ceil(1000).to_string())
            .arg(delivery.attempt.saturating_add(1))
            .invoke_async(&mut self.commands.clone())
            .await;
        if self.track(scheduled)? == 0 {
            tracing::debug!(
                topic = %self.topic,
                stream = %self.stream,
                group = %self.group,
                entry = id,
                "entry no longer pending, nothing to retry"
            );
        }
        self.settle(id);
        self.reader
            .wake_for(delay, &mut self.commands.clone())
            .await;
        Ok(())
    }

    async fn extend(&self, delivery: &Delivery) -> Result<(), BrokerError> {
        let id = self.entry_id(delivery)?;
        if self.touch(&[id], Duration::ZERO).await? == 0 {
            tracing::debug!(
                topic = %self.topic,
                stream = %self.stream,
                group = %self.group,
                entry = id,
                "entry no longer held by this member, not extended"
            );
        }
        Ok(())
    }

    async fn lag(&self) -> Result<BrokerLag, BrokerError> {
        let reply: RedisResult<Value> = LAG
            .key(&self.stream)
            .arg(&self.group)
            .arg(LAG_COUNT_LIMIT)
            .invoke_async(&mut self.commands.clone())
            .await;
        let mut parts = array(self.track(reply)?, "the lag")
            .map_err(|detail| self.unexpected(detail))?
            .into_iter();
        let mut count = || {
            parts
                .next()
                .and_then(integer)
                .and_then(|number| u64::try_from(number).ok())
        };
        let unread = count().unwrap_or_default();
        let pending = count().unwrap_or_default();
        let oldest = parts
            .next()
            .and_then(entry::bytes)
            .and_then(|id| entry::id_millis(&String::from_utf8_lossy(&id)));
        let now = parts.next().and_then(integer);
        let oldest_age = oldest.zip(now).map(|(oldest, now)| {
            Duration::from_millis(u64::try_from(now.saturating_sub(oldest)).unwrap_or(0))
        });
        Ok(BrokerLag {
            messages: unread + pending,
            oldest_age,
        })
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Offers the entries still held to the other members at once (their idle time set to
    /// `ack_timeout`, so the next scan takes them over), and leaves the group when nothing is
    /// pending for this member any more.
    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.reader.close(&mut self.commands.clone()).await;
        let held: Vec<String> = self.lock_held().drain().collect();
        if !held.is_empty() {
            let ids: Vec<&str> = held.iter().map(String::as_str).collect();
            if let Err(error) = self.touch(&ids, self.ack_timeout).await {
                tracing::warn!(
                    topic = %self.topic,
                    stream = %self.stream,
                    group = %self.group,
                    error = %error,
                    category = error.category(),
                    "cannot release held entries; others take them over after the ack timeout"
                );
            }
        }
        let forgotten: RedisResult<i64> = FORGET_CONSUMER
            .key(&self.stream)
            .arg(&self.group)
            .arg(&self.member)
            .invoke_async(&mut self.commands.clone())
            .await;
        if let Err(error) = forgotten {
            tracing::debug!(topic = %self.topic, %error, "cannot remove the consumer from the group");
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
