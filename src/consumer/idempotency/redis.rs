//! The idempotency store in Redis: one key per message id, `<prefix><consumer>:<id>`, holding
//! `claimed` (expiring with the lease) or `done` (expiring with the window).

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::{Claim, IdempotencyError, IdempotencyStore, first_occurrences, spread};

const CLAIMED: &str = "claimed";
const DONE: &str = "done";

pub struct RedisIdempotency {
    connection: ConnectionManager,
    prefix: String,
    lease: Duration,
    window: Duration,
}

impl RedisIdempotency {
    pub async fn connect(
        url: &str,
        prefix: &str,
        lease: Duration,
        window: Duration,
    ) -> Result<Self, IdempotencyError> {
        let client = redis::Client::open(url)?;
        let connection = ConnectionManager::new(client).await?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            lease,
            window,
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    fn millis(duration: Duration) -> u64 {
        u64::try_from(duration.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotency {
    async fn claim(&self, ids: &[String]) -> Result<Vec<Claim>, IdempotencyError> {
        let (distinct, positions) = first_occurrences(ids);
        // `SET NX` takes a free id; `GET` tells the others apart. Both for every id in one
        // pipeline (one round trip); the GET after a successful SET reads our own claim.
        let mut pipe = redis::pipe();
        for id in &distinct {
            pipe.cmd("SET")
                .arg(self.key(id))
                .arg(CLAIMED)
                .arg("NX")
                .arg("PX")
                .arg(Self::millis(self.lease));
            pipe.cmd("GET").arg(self.key(id));
        }
        let mut connection = self.connection.clone();
        let replies: Vec<redis::Value> = pipe.query_async(&mut connection).await?;
        let answers = replies
            .chunks(2)
            .map(|pair| match pair {
                [redis::Value::Okay, _] => Claim::Owned,
                [_, value] => match redis::from_redis_value::<Option<String>>(value.clone()) {
                    Ok(Some(state)) if state == DONE => Claim::Done,
                    _ => Claim::Busy,
                },
                _ => Claim::Busy,
            })
            .collect::<Vec<_>>();
        Ok(spread(&answers, &positions))
    }

    async fn complete(&self, ids: &[String]) -> Result<(), IdempotencyError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("SET")
                .arg(self.key(id))
                .arg(DONE)
                .arg("PX")
                .arg(Self::millis(self.window))
                .ignore();
        }
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await?;
        Ok(())
    }

    async fn release(&self, ids: &[String]) -> Result<(), IdempotencyError> {
        // Compare and delete in one step on the server: a `done` (another copy delivered it
        // meanwhile) must survive a late release.
        let script = redis::Script::new(
            "for _, key in ipairs(KEYS) do \
                 if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end \
             end \
             return 0",
        );
        let mut invocation = script.prepare_invoke();
        for id in ids {
            invocation.key(self.key(id));
        }
        invocation.arg(CLAIMED);
        let mut connection = self.connection.clone();
        let _: i64 = invocation.invoke_async(&mut connection).await?;
        Ok(())
    }
}
