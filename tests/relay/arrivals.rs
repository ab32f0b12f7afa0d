//! Reads back what reached a broker, with raw clients, and checks it against what committed.

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use futures::StreamExt;
use redis::AsyncCommands;

/// One message as a broker holds it.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub id: String,
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Arrival {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn arrival(headers: Vec<(String, String)>, body: Vec<u8>) -> Arrival {
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    Arrival {
        id: find("ce-id"),
        key: find("ce-partitionkey"),
        headers,
        body,
    }
}

/// Where a test reads messages from.
pub enum Reader {
    Redis {
        url: String,
        stream: String,
    },
    Sql {
        url: String,
        table: String,
        queue: String,
    },
    Rabbitmq {
        channel: lapin::Channel,
        queue: String,
        seen: tokio::sync::Mutex<Vec<Arrival>>,
    },
    Nats {
        url: String,
        stream: String,
    },
}

impl Reader {
    /// A queue bound to every routing key of `exchange`, declared before anything is published.
    pub async fn rabbitmq(url: &str, exchange: &str) -> Self {
        let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .expect("amqp connect");
        let channel = connection.create_channel().await.expect("channel");
        let options = lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                options,
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        let queue = format!("{exchange}-reader");
        let queue_options = lapin::options::QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        channel
            .queue_declare(
                queue.as_str().into(),
                queue_options,
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("declare queue");
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                "#".into(),
                Default::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("bind");
        Self::Rabbitmq {
            channel,
            queue,
            seen: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// Everything that has arrived so far, in broker order.
    pub async fn read(&self) -> Vec<Arrival> {
        match self {
            Self::Redis { url, stream } => {
                let client = redis::Client::open(url.as_str()).expect("redis url");
                let config = redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(Duration::from_secs(30)));
                let mut connection = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .expect("redis connect");
                let mut arrived = Vec::new();
                let mut start = "-".to_owned();
                loop {
                    let reply: redis::streams::StreamRangeReply = connection
                        .xrange_count(stream, &start, "+", 1000)
                        .await
                        .expect("XRANGE");
                    let Some(last) = reply.ids.last().map(|entry| entry.id.clone()) else {
                        break;
                    };
                    for entry in reply.ids {
                        let mut headers = Vec::new();
                        let mut body = Vec::new();
                        for (field, value) in entry.map {
                            let bytes: Vec<u8> = redis::from_redis_value(value).expect("bytes");
                            if field == "data" {
                                body = bytes;
                            } else {
                                headers.push((field, String::from_utf8_lossy(&bytes).into_owned()));
                            }
                        }
                        arrived.push(arrival(headers, body));
                    }
                    start = format!("({last}");
                }
                arrived
            }
            Self::Sql { url, table, queue } => {
                let sql = format!(
                    "SELECT headers, body FROM {table} WHERE queue = '{queue}' ORDER BY seq"
                );
                let rows: Result<Vec<(String, Vec<u8>)>, sqlx::Error> = if url.starts_with("sqlite")
                {
                    let pool = ferry::outbox::sqlite::open_pool(url).await.expect("pool");
                    sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .fetch_all(&pool)
                        .await
                } else {
                    let pool = sqlx::PgPool::connect(url).await.expect("pool");
                    sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .fetch_all(&pool)
                        .await
                };
                let rows = match rows {
                    // The relay creates the queue table when it connects; until then nothing arrived.
                    Err(error)
                        if error.to_string().contains("no such table")
                            || error.to_string().contains("does not exist") =>
                    {
                        Vec::new()
                    }
                    other => other.expect("select from the queue table"),
                };
                rows.into_iter()
                    .map(|(headers, body)| {
                        arrival(
                            ferry::broker::sql::decode_headers(&headers).expect("headers"),
                            body,
                        )
                    })
                    .collect()
            }
            Self::Rabbitmq {
                channel,
                queue,
                seen,
            } => {
                let mut seen = seen.lock().await;
                while let Some(message) = channel
                    .basic_get(
                        queue.as_str().into(),
                        lapin::options::BasicGetOptions { no_ack: true },
                    )
                    .await
                    .expect("basic_get")
                {
                    let headers = message
                        .delivery
                        .properties
                        .headers()
                        .as_ref()
                        .map(|table| {
                            table
                                .inner()
                                .iter()
                                .map(|(k, v)| {
                                    let value = match v {
                                        lapin::types::AMQPValue::LongString(s) => s.to_string(),
                                        other => format!("{other:?}"),
                                    };
                                    (k.to_string(), value)
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    seen.push(arrival(headers, message.delivery.data.clone()));
                }
                seen.clone()
            }
            Self::Nats { url, stream } => read_nats(url, stream).await,
        }
    }

    /// Reads until `count` distinct ids have arrived or `deadline` passes.
    pub async fn wait_for(&self, count: usize, deadline: Duration) -> Vec<Arrival> {
        let start = Instant::now();
        loop {
            let arrived = self.read().await;
            let distinct: HashSet<&str> = arrived.iter().map(|a| a.id.as_str()).collect();
            if distinct.len() >= count || start.elapsed() > deadline {
                return arrived;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn read_nats(url: &str, stream: &str) -> Vec<Arrival> {
    let client = async_nats::connect(url).await.expect("nats connect");
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream.get_stream(stream).await.expect("stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("ephemeral consumer");
    let mut arrived = Vec::new();
    loop {
        let mut got = 0;
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .expect("fetch");
        while let Some(message) = batch.next().await {
            let message = message.expect("nats message");
            let headers = message
                .headers
                .as_ref()
                .map(|h| {
                    h.iter()
                        .flat_map(|(k, values)| {
                            values.iter().map(move |v| (k.to_string(), v.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            arrived.push(arrival(headers, message.payload.to_vec()));
            got += 1;
        }
        if got == 0 {
            break;
        }
    }
    arrived
}

/// What arrived compared with what committed.
#[derive(Debug, PartialEq, Eq)]
pub struct Check {
    pub missing: usize,
    pub duplicates: usize,
    pub out_of_order_keys: Vec<String>,
}

/// Every committed id must have arrived, and per key the first arrival of each id must follow
/// commit order. Duplicates (at-least-once) are counted, not failed.
pub fn check(committed: &[(String, String)], arrived: &[Arrival]) -> Check {
    let mut first_seen = HashSet::new();
    let mut order: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for arrival in arrived {
        if first_seen.insert(arrival.id.as_str()) {
            order
                .entry(arrival.key.as_str())
                .or_default()
                .push(arrival.id.as_str());
        }
    }
    let missing = committed
        .iter()
        .filter(|(id, _)| !first_seen.contains(id.as_str()))
        .count();
    let mut expected: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, key) in committed {
        expected.entry(key.as_str()).or_default().push(id.as_str());
    }
    let out_of_order_keys = expected
        .iter()
        .filter(|(key, ids)| {
            let seen: Vec<&str> = order
                .get(*key)
                .map(|v| v.iter().copied().filter(|id| ids.contains(id)).collect())
                .unwrap_or_default();
            seen.len() == ids.len() && seen != **ids
        })
        .map(|(key, _)| key.to_string())
        .collect();
    Check {
        missing,
        duplicates: arrived.len() - first_seen.len(),
        out_of_order_keys,
    }
}
