//! The Redis Streams publisher against the shared Redis on 127.0.0.1:6379: each test uses its
//! own stream key and deletes it afterwards.

mod support;

use ferry::{
    broker::{
        BrokerError, Outcome, Publisher,
        redis::{BODY_FIELD, RedisPublisher, publish_raw},
    },
    config::RedisTarget,
    message::Envelope,
};
use support::{free_port, sample_envelopes, unique_name};

const REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// A stream key of the test's own, deleted when the test ends (even when it fails).
struct Key(String);

impl Key {
    fn new() -> Self {
        Self(unique_name("ferry_test_stream"))
    }

    fn target(&self, max_length: Option<i64>) -> RedisTarget {
        RedisTarget {
            stream: self.0.clone(),
            max_length,
        }
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // Synchronous, as Drop is: a plain connection is enough for one DEL.
        if let Ok(mut connection) =
            redis::Client::open(REDIS_URL).and_then(|client| client.get_connection())
        {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&self.0).query(&mut connection);
        }
    }
}

async fn connection() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(REDIS_URL).expect("redis url");
    client
        .get_multiplexed_async_connection()
        .await
        .expect("the shared redis runs on 6379")
}

/// Every entry of the stream: its fields as (name, value) pairs, in the order stored.
async fn entries(key: &Key) -> Vec<Vec<(String, Vec<u8>)>> {
    let reply: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(&key.0)
        .arg("-")
        .arg("+")
        .query_async(&mut connection().await)
        .await
        .expect("XRANGE");
    reply
        .into_iter()
        .map(|(_, fields)| {
            fields
                .chunks(2)
                .map(|pair| {
                    (
                        String::from_utf8_lossy(&pair[0]).into_owned(),
                        pair.get(1).cloned().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .collect()
}

/// The fields an envelope must become: its headers in order, then the body.
fn expected_fields(message: &Envelope) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = message
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), value.clone().into_bytes()))
        .collect();
    fields.push((BODY_FIELD.to_owned(), message.body.to_vec()));
    fields
}

async fn xlen(key: &Key) -> usize {
    redis::cmd("XLEN")
        .arg(&key.0)
        .query_async(&mut connection().await)
        .await
        .expect("XLEN")
}

#[tokio::test]
async fn redis_adds_every_message_in_order_with_its_headers_and_body() {
    let key = Key::new();
    let publisher = RedisPublisher::connect("orders", REDIS_URL, &key.target(None), true)
        .await
        .expect("connects");
    let messages = sample_envelopes(200, 10);
    for batch in messages.chunks(50) {
        let outcomes = publisher.publish(batch).await.expect("published");
        assert_eq!(outcomes, vec![Outcome::Confirmed; batch.len()]);
    }

    let stored = entries(&key).await;
    assert_eq!(stored.len(), messages.len());
    for (entry, message) in stored.iter().zip(&messages) {
        assert_eq!(
            entry,
            &expected_fields(message),
            "entry of message {}",
            message.id
        );
    }
    let traceparent = stored[0]
        .iter()
        .find(|(name, _)| name == "traceparent")
        .map(|(_, value)| value.as_slice());
    assert_eq!(
        traceparent,
        Some(support::TRACEPARENT.as_bytes()),
        "trace context is carried through"
    );
}

#[tokio::test]
async fn redis_max_length_trims_the_stream_to_about_that_many_entries() {
    let key = Key::new();
    let publisher = RedisPublisher::connect("orders", REDIS_URL, &key.target(Some(100)), true)
        .await
        .expect("connects");
    for batch in sample_envelopes(1000, 10).chunks(100) {
        publisher.publish(batch).await.expect("published");
    }
    // `MAXLEN ~` trims whole radix-tree nodes (100 entries each by default): never below the
    // limit, at most about one node above it.
    let length = xlen(&key).await;
    assert!(
        (100..=200).contains(&length),
        "{length} entries kept for a maxLength of 100"
    );
}

#[tokio::test]
async fn redis_without_provision_refuses_a_missing_stream() {
    let key = Key::new();
    let result = RedisPublisher::connect("orders", REDIS_URL, &key.target(None), false).await;
    assert!(
        matches!(result, Err(BrokerError::Topology { .. })),
        "got {:?}",
        result.err()
    );
}

#[tokio::test]
async fn redis_refuses_a_key_of_another_type() {
    let key = Key::new();
    let _: () = redis::cmd("SET")
        .arg(&key.0)
        .arg("not a stream")
        .query_async(&mut connection().await)
        .await
        .expect("SET");
    for provision in [true, false] {
        let result =
            RedisPublisher::connect("orders", REDIS_URL, &key.target(None), provision).await;
        assert!(
            matches!(result, Err(BrokerError::Topology { .. })),
            "got {:?}",
            result.err()
        );
    }
}

#[tokio::test]
async fn redis_publish_to_a_key_that_became_another_type_is_a_topology_error() {
    let key = Key::new();
    let publisher = RedisPublisher::connect("orders", REDIS_URL, &key.target(None), true)
        .await
        .expect("connects");
    let _: () = redis::cmd("SET")
        .arg(&key.0)
        .arg("not a stream")
        .query_async(&mut connection().await)
        .await
        .expect("SET");
    let result = publisher.publish(&sample_envelopes(3, 1)).await;
    assert!(
        matches!(result, Err(BrokerError::Topology { .. })),
        "got {result:?}"
    );
}

#[tokio::test]
async fn redis_rejects_a_message_whose_header_would_shadow_the_body_field() {
    let key = Key::new();
    let publisher = RedisPublisher::connect("orders", REDIS_URL, &key.target(None), true)
        .await
        .expect("connects");
    let mut messages = sample_envelopes(3, 1);
    messages[1]
        .headers
        .push((BODY_FIELD.to_owned(), "shadow".to_owned()));
    let outcomes = publisher.publish(&messages).await.expect("published");
    assert_eq!(outcomes[0], Outcome::Confirmed);
    assert!(
        matches!(&outcomes[1], Outcome::Rejected(reason) if reason.contains(BODY_FIELD)),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], Outcome::Confirmed);
    let stored = entries(&key).await;
    assert_eq!(
        stored,
        vec![expected_fields(&messages[0]), expected_fields(&messages[2])]
    );
}

#[tokio::test]
async fn redis_unreachable_server_is_a_connection_error() {
    let port = free_port().expect("free port");
    let target = RedisTarget {
        stream: "unused".into(),
        max_length: None,
    };
    let result = RedisPublisher::connect(
        "orders",
        &format!("redis://127.0.0.1:{port}/"),
        &target,
        true,
    )
    .await;
    assert!(
        matches!(result, Err(BrokerError::Connection { .. })),
        "got {:?}",
        result.err()
    );
}

#[tokio::test]
async fn redis_raw_publish_adds_the_same_entries_as_the_publisher() {
    let key = Key::new();
    let messages = sample_envelopes(1200, 10);
    publish_raw(REDIS_URL, &key.target(None), &messages)
        .await
        .expect("published");
    let stored = entries(&key).await;
    assert_eq!(stored.len(), messages.len());
    assert_eq!(
        stored.first(),
        messages.first().map(expected_fields).as_ref()
    );
    assert_eq!(stored.last(), messages.last().map(expected_fields).as_ref());
}

#[tokio::test]
async fn redis_down_is_a_connection_error_and_entries_survive_a_restart() {
    let mut redis = support::servers::PrivateRedis::launch()
        .await
        .expect("private redis starts");
    let target = RedisTarget {
        stream: "orders".into(),
        max_length: None,
    };
    let messages = sample_envelopes(20, 2);
    let publisher = RedisPublisher::connect("orders", &redis.url(), &target, true)
        .await
        .expect("connects");
    publisher
        .publish(&messages[..10])
        .await
        .expect("published before the stop");

    redis.stop().await.expect("redis stops");
    let result = publisher.publish(&messages[10..]).await;
    assert!(
        matches!(result, Err(BrokerError::Connection { .. })),
        "got {result:?}"
    );

    // As the relay does after an error: connect again, then publish the batch again.
    redis.start().await.expect("redis restarts");
    let publisher = RedisPublisher::connect("orders", &redis.url(), &target, false)
        .await
        .expect("reconnects");
    publisher
        .publish(&messages[10..])
        .await
        .expect("published after the restart");
    let mut connection = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let length: usize = redis::cmd("XLEN")
        .arg("orders")
        .query_async(&mut connection)
        .await
        .expect("XLEN");
    assert_eq!(length, 20, "the entries added before the stop were kept");
}
