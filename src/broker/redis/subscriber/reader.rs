//! The blocking reads' own connection. `XREADGROUP ... BLOCK` holds its connection while it
//! waits, so it cannot share the one acks and retries go through; and a retry due before the
//! current block ends must be able to cut the block short (`CLIENT UNBLOCK`).

use std::{
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use redis::{
    AsyncConnectionConfig, Client, RedisError, RedisResult, Value, aio::MultiplexedConnection,
};

use super::millis;
use crate::broker::redis::CONNECT_TIMEOUT;

/// How much longer than its `BLOCK` time a read may take to answer before its connection is
/// taken for lost. The server answers at once when the block ends; this only covers a loaded
/// machine and a silent network.
const READ_MARGIN: Duration = Duration::from_secs(10);
/// A read blocked for less than this beyond a new retry's due time is left alone.
const UNBLOCK_SLACK_MS: u64 = 20;

/// Why a read failed.
pub(super) enum ReadError {
    Redis(RedisError),
    /// No answer in time; the connection was dropped.
    NoReply(Duration),
}

pub(super) struct Reader {
    /// Opens the connection again after it failed.
    client: Client,
    /// `None` after a failure, until the next read.
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// `CLIENT ID` of the connection, 0 when there is none.
    id: AtomicI64,
    /// When the current blocking read ends, in ms since `started`; 0 while none is blocked.
    blocked_until: AtomicU64,
    started: Instant,
}

impl Reader {
    /// Connects at once, so that a bad URL or a refused login shows when the subscriber
    /// connects rather than at its first read.
    pub async fn open(client: Client) -> RedisResult<Self> {
        let (connection, id) = connect(&client).await?;
        Ok(Self {
            client,
            connection: tokio::sync::Mutex::new(Some(connection)),
            id: AtomicI64::new(id),
            blocked_until: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// `XREADGROUP GROUP <group> <consumer> COUNT <count> [BLOCK <ms>] STREAMS <stream> >`,
    /// without `BLOCK` when `block` is zero (`BLOCK 0` would wait for ever).
    pub async fn read(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Value, ReadError> {
        let mut slot = self.connection.lock().await;
        let connection = match &mut *slot {
            Some(connection) => connection,
            empty @ None => {
                let (connection, id) = connect(&self.client).await.map_err(ReadError::Redis)?;
                self.id.store(id, Ordering::Release);
                empty.insert(connection)
            }
        };
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        let block_ms = millis(block);
        if block_ms > 0 {
            command.arg("BLOCK").arg(block_ms);
            self.blocked_until
                .store(self.elapsed_ms() + block_ms, Ordering::Release);
        }
        command.arg("STREAMS").arg(stream).arg(">");
        let limit = block + READ_MARGIN;
        let reply = tokio::time::timeout(limit, command.query_async(connection)).await;
        self.blocked_until.store(0, Ordering::Release);
        let failure = match reply {
            Ok(Ok(value)) => return Ok(value),
            // The server refused the command: the connection itself is fine.
            Ok(Err(error)) if error.code().is_some() => return Err(ReadError::Redis(error)),
            Ok(Err(error)) => ReadError::Redis(error),
            // A late reply would hand this member entries that nobody receives.
            Err(_) => ReadError::NoReply(limit),
        };
        *slot = None;
        self.id.store(0, Ordering::Release);
        Err(failure)
    }

    /// Cuts the current blocking read short when something due after `delay` (a retry just
    /// scheduled) would otherwise wait for it. Best effort: a read that has not reached the
    /// server yet, or a server that refuses `CLIENT UNBLOCK`, leaves the read to its own end.
    pub async fn wake_for(&self, delay: Duration, commands: &mut impl redis::aio::ConnectionLike) {
        let blocked_until = self.blocked_until.load(Ordering::Acquire);
        let due = self.elapsed_ms() + millis(delay) + UNBLOCK_SLACK_MS;
        let id = self.id.load(Ordering::Acquire);
        if blocked_until == 0 || due >= blocked_until || id == 0 {
            return;
        }
        let unblocked: RedisResult<i64> = redis::cmd("CLIENT")
            .arg("UNBLOCK")
            .arg(id)
            .query_async(commands)
            .await;
        if let Err(error) = unblocked {
            tracing::debug!(%error, "cannot cut a blocking read short; it ends by itself");
        }
    }

    /// Ends a blocking read (best effort) and closes the connection.
    pub async fn close(&self, commands: &mut impl redis::aio::ConnectionLike) {
        self.wake_for(Duration::ZERO, commands).await;
        *self.connection.lock().await = None;
        self.id.store(0, Ordering::Release);
    }

    fn elapsed_ms(&self) -> u64 {
        millis(self.started.elapsed())
    }
}

/// A connection without a response timeout (each read sets its own) and its `CLIENT ID`.
async fn connect(client: &Client) -> RedisResult<(MultiplexedConnection, i64)> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(None);
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let id = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut connection)
        .await?;
    Ok((connection, id))
}
