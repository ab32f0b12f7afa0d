//! The Redis Streams subscriber against the shared Redis on 127.0.0.1:6379, fed by Ferry's own
//! publisher: each test uses its own stream key and deletes it, with the groups' retry keys,
//! when it ends.

mod support;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use ferry::{
    broker::{
        BrokerError, Publisher,
        redis::{RedisPublisher, subscriber::RedisSubscriber},
        subscriber::{Delivery, Subscriber, SubscriptionConfig},
    },
    config::RedisTarget,
    message::Envelope,
};
use support::{sample_envelopes, unique_name};

const REDIS_URL: &str = "redis://127.0.0.1:6379/";
/// How long a test waits for something that should happen well before.
const PATIENCE: Duration = Duration::from_secs(10);
/// Lateness allowed to a retry on a loaded machine: it is due to come out within milliseconds.
const RETRY_SLACK: Duration = Duration::from_secs(3);

/// A stream key of the test's own; dropping it deletes the stream and every
/// `<stream>:ferry:*` key of its groups, even when the test fails.
struct Stream(String);

impl Stream {
    fn new() -> Self {
        Self(unique_name("ferry_test_sub"))
    }

    fn target(&self) -> RedisTarget {
        RedisTarget {
            stream: self.0.clone(),
            max_length: None,
        }
    }

    async fn publish(&self, messages: &[Envelope]) {
        let publisher = RedisPublisher::connect("orders", REDIS_URL, &self.target(), true)
            .await
            .expect("the publisher connects");
        publisher.publish(messages).await.expect("published");
    }

    async fn subscriber(
        &self,
        group: &str,
        member: &str,
        ack_timeout: Duration,
    ) -> RedisSubscriber {
        RedisSubscriber::connect(
            "orders",
            REDIS_URL,
            &self.target(),
            &subscription(group, member, ack_timeout, true),
        )
        .await
        .expect("the subscriber connects")
    }

    fn state_key(&self, group: &str, name: &str) -> String {
        format!("{}:ferry:{group}:{name}", self.0)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Synchronous, as Drop is: a plain connection is enough.
        let Ok(mut connection) =
            redis::Client::open(REDIS_URL).and_then(|client| client.get_connection())
        else {
            return;
        };
        let mut keys: Vec<String> =
            redis::Commands::scan_match(&mut connection, format!("{}:ferry:*", self.0))
                .map(|keys| keys.filter_map(Result::ok).collect())
                .unwrap_or_default();
        keys.push(self.0.clone());
        let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query(&mut connection);
    }
}

fn subscription(
    group: &str,
    member: &str,
    ack_timeout: Duration,
    provision: bool,
) -> SubscriptionConfig {
    SubscriptionConfig {
        group: group.to_owned(),
        member: member.to_owned(),
        prefetch: 100,
        ack_timeout,
        provision,
        single_active: false,
    }
}

async fn connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS_URL)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("the shared redis runs on 6379")
}

async fn query<T: redis::FromRedisValue>(command: &redis::Cmd) -> T {
    command
        .query_async(&mut connection().await)
        .await
        .expect("redis answers")
}

/// How many entries the group holds pending.
async fn pending(stream: &Stream, group: &str) -> usize {
    let summary: (usize, redis::Value, redis::Value, redis::Value) =
        query(redis::cmd("XPENDING").arg(&stream.0).arg(group)).await;
    summary.0
}

/// Receives until `count` deliveries came in all, or `PATIENCE` ran out.
async fn receive_until(subscriber: &RedisSubscriber, count: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + PATIENCE;
    let mut received = Vec::new();
    while received.len() < count && Instant::now() < deadline {
        let batch = subscriber
            .receive(count - received.len(), Duration::from_millis(500))
            .await
            .expect("receive");
        received.extend(batch);
    }
    received
}

async fn ack_all(subscriber: &RedisSubscriber, deliveries: &[Delivery]) {
    for delivery in deliveries {
        subscriber.ack(delivery).await.expect("ack");
    }
}

fn position(delivery: &Delivery) -> u64 {
    let body: serde_json::Value =
        serde_json::from_slice(&delivery.body).expect("the body is the JSON payload");
    body["position"].as_u64().expect("a position")
}

fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|delivery| delivery.id.clone())
        .collect()
}

#[tokio::test]
async fn every_message_comes_once_with_its_headers_and_acked_leaves_nothing_behind() {
    let stream = Stream::new();
    let messages = sample_envelopes(40, 4);
    stream.publish(&messages).await;
    let subscriber = stream.subscriber("g", "m1", PATIENCE).await;

    let received = receive_until(&subscriber, messages.len()).await;
    assert_eq!(received.len(), messages.len());
    let by_id: HashMap<&str, &Envelope> = messages.iter().map(|m| (m.id.as_str(), m)).collect();
    for delivery in &received {
        let message = by_id[delivery.id.as_str()];
        assert_eq!(
            delivery.headers, message.headers,
            "headers of {}",
            message.id
        );
        assert_eq!(delivery.body, message.body.to_vec());
        assert_eq!(delivery.key, message.key);
        assert_eq!(delivery.event_type, "order.created");
        assert_eq!((delivery.attempt, delivery.redelivered), (1, false));
        let age = chrono::Utc::now() - delivery.published_at.expect("the entry id's time");
        assert!(age.num_seconds().abs() < 60, "published {age} ago");
    }
    let unique: HashSet<String> = ids(&received).into_iter().collect();
    assert_eq!(unique.len(), messages.len(), "no message twice");

    ack_all(&subscriber, &received).await;
    assert_eq!(pending(&stream, "g").await, 0);
    let again = subscriber
        .receive(10, Duration::from_millis(300))
        .await
        .expect("receive");
    assert!(again.is_empty(), "nothing comes back after the ack");
    assert!(subscriber.connected());

    // Closing with nothing held leaves the group: no consumer piles up per pod name.
    subscriber.close().await;
    let consumers: Vec<redis::Value> =
        query(redis::cmd("XINFO").arg("CONSUMERS").arg(&stream.0).arg("g")).await;
    assert!(consumers.is_empty(), "consumers left: {consumers:?}");
}

#[tokio::test]
async fn messages_of_one_key_come_out_in_stream_order() {
    let stream = Stream::new();
    let messages = sample_envelopes(60, 3);
    stream.publish(&messages).await;
    let subscriber = stream.subscriber("g", "m1", PATIENCE).await;

    let mut last_position: HashMap<String, u64> = HashMap::new();
    let mut seen = 0;
    let deadline = Instant::now() + PATIENCE;
    while seen < messages.len() && Instant::now() < deadline {
        let batch = subscriber
            .receive(7, Duration::from_millis(500))
            .await
            .expect("receive");
        for delivery in &batch {
            let position = position(delivery);
            if let Some(previous) = last_position.insert(delivery.key.clone(), position) {
                assert!(
                    previous < position,
                    "key {}: {position} after {previous}",
                    delivery.key
                );
            }
        }
        seen += batch.len();
        ack_all(&subscriber, &batch).await;
    }
    assert_eq!(seen, messages.len());
    assert_eq!(last_position.len(), 3);
}

#[tokio::test]
async fn each_group_gets_every_message() {
    let stream = Stream::new();
    let messages = sample_envelopes(20, 2);
    stream.publish(&messages).await;
    let expected: HashSet<String> = messages.iter().map(|m| m.id.clone()).collect();

    for group in ["billing", "shipping"] {
        let subscriber = stream.subscriber(group, "m1", PATIENCE).await;
        let received = receive_until(&subscriber, messages.len()).await;
        assert_eq!(
            ids(&received).into_iter().collect::<HashSet<_>>(),
            expected,
            "group {group}"
        );
        ack_all(&subscriber, &received).await;
    }
}

#[tokio::test]
async fn members_of_one_group_share_its_messages() {
    let stream = Stream::new();
    let messages = sample_envelopes(30, 3);
    stream.publish(&messages).await;
    let first = stream.subscriber("g", "m1", PATIENCE).await;
    let second = stream.subscriber("g", "m2", PATIENCE).await;

    let (mut of_first, mut of_second) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + PATIENCE;
    while of_first.len() + of_second.len() < messages.len() && Instant::now() < deadline {
        for (subscriber, received) in [(&first, &mut of_first), (&second, &mut of_second)] {
            let batch = subscriber
                .receive(5, Duration::from_millis(200))
                .await
                .expect("receive");
            ack_all(subscriber, &batch).await;
            received.extend(ids(&batch));
        }
    }
    assert!(!of_first.is_empty() && !of_second.is_empty());
    let union: HashSet<&String> = of_first.iter().chain(&of_second).collect();
    assert_eq!(
        union.len(),
        messages.len(),
        "every message once, to one member"
    );
    assert_eq!(of_first.len() + of_second.len(), messages.len());
}

#[tokio::test]
async fn a_crashed_members_entries_are_taken_over_after_the_ack_timeout_as_attempt_two() {
    let stream = Stream::new();
    stream.publish(&sample_envelopes(3, 1)).await;
    let ack_timeout = Duration::from_secs(1);
    let crashed = stream.subscriber("g", "m1", ack_timeout).await;
    let held = receive_until(&crashed, 3).await;
    let received_at = Instant::now();
    drop(crashed);

    let survivor = stream.subscriber("g", "m2", ack_timeout).await;
    let taken = receive_until(&survivor, 3).await;
    assert!(
        received_at.elapsed() >= ack_timeout,
        "taken over after {:?}",
        received_at.elapsed()
    );
    assert_eq!(ids(&taken), ids(&held), "the same entries, in order");
    for delivery in &taken {
        assert_eq!((delivery.attempt, delivery.redelivered), (2, true));
    }
    ack_all(&survivor, &taken).await;
    assert_eq!(pending(&stream, "g").await, 0);
}

#[tokio::test]
async fn extend_keeps_a_held_entry_from_a_takeover() {
    let stream = Stream::new();
    stream.publish(&sample_envelopes(1, 1)).await;
    let ack_timeout = Duration::from_secs(1);
    let holder = stream.subscriber("g", "m1", ack_timeout).await;
    let other = stream.subscriber("g", "m2", ack_timeout).await;
    let held = receive_until(&holder, 1).await;

    let until = Instant::now() + ack_timeout * 3;
    while Instant::now() < until {
        holder.extend(&held[0]).await.expect("extend");
        let stolen = other
            .receive(1, Duration::from_millis(250))
            .await
            .expect("receive");
        assert!(stolen.is_empty(), "an extended entry was taken over");
    }
    ack_all(&holder, &held).await;
}

#[tokio::test]
async fn close_offers_held_entries_to_the_other_members_at_once() {
    let stream = Stream::new();
    stream.publish(&sample_envelopes(2, 1)).await;
    // Far longer than the test waits: only the release on close can explain a takeover.
    let ack_timeout = Duration::from_secs(60);
    let leaving = stream.subscriber("g", "m1", ack_timeout).await;
    let held = receive_until(&leaving, 2).await;
    leaving.close().await;

    let staying = stream.subscriber("g", "m2", ack_timeout).await;
    let taken = receive_until(&staying, 2).await;
    assert_eq!(ids(&taken), ids(&held));
    assert!(taken.iter().all(|delivery| delivery.attempt == 2));
    ack_all(&staying, &taken).await;
}

#[tokio::test]
async fn a_retry_comes_back_after_its_delay_as_the_next_attempt_even_across_a_restart() {
    let stream = Stream::new();
    stream.publish(&sample_envelopes(1, 1)).await;
    let subscriber = stream.subscriber("g", "m1", PATIENCE).await;
    let first = receive_until(&subscriber, 1).await;
    assert_eq!(first[0].attempt, 1);

    let delay = Duration::from_millis(800);
    let scheduled_at = Instant::now();
    subscriber.retry(&first[0], delay).await.expect("retry");
    drop(subscriber);

    let restarted = stream.subscriber("g", "m1", PATIENCE).await;
    let second = receive_until(&restarted, 1).await;
    let waited = scheduled_at.elapsed();
    assert_eq!(ids(&second), ids(&first));
    assert_eq!((second[0].attempt, second[0].redelivered), (2, true));
    assert!(
        waited >= delay && waited < delay + RETRY_SLACK,
        "came back after {waited:?}"
    );

    let delay = Duration::from_millis(300);
    let scheduled_at = Instant::now();
    restarted.retry(&second[0], delay).await.expect("retry");
    let third = receive_until(&restarted, 1).await;
    let waited = scheduled_at.elapsed();
    assert_eq!(third[0].attempt, 3);
    assert!(
        waited >= delay && waited < delay + RETRY_SLACK,
        "came back after {waited:?}"
    );

    ack_all(&restarted, &third).await;
    assert_eq!(pending(&stream, "g").await, 0);
    let scheduled: usize = query(redis::cmd("ZCARD").arg(stream.state_key("g", "retry"))).await;
    let attempts: usize = query(redis::cmd("HLEN").arg(stream.state_key("g", "attempts"))).await;
    assert_eq!(
        (scheduled, attempts),
        (0, 0),
        "an ack removes the retry records"
    );
}

#[tokio::test]
async fn a_takeover_leaves_an_entry_waiting_for_its_retry_alone() {
    let stream = Stream::new();
    stream.publish(&sample_envelopes(1, 1)).await;
    // The retry waits several ack timeouts: idle as it is, no member may take it before it is due.
    let ack_timeout = Duration::from_millis(300);
    let delay = Duration::from_secs(2);
    let first = stream.subscriber("g", "m1", ack_timeout).await;
    let other = stream.subscriber("g", "m2", ack_timeout).await;
    let received = receive_until(&first, 1).await;
    let scheduled_at = Instant::now();
    first.retry(&received[0], delay).await.expect("retry");

    let back = receive_until(&other, 1).await;
    let waited = scheduled_at.elapsed();
    assert!(
        waited >= delay && waited < delay + RETRY_SLACK,
        "came back after {waited:?}"
    );
    assert_eq!((back[0].attempt, back[0].redelivered), (2, true));
    ack_all(&other, &back).await;
}

#[tokio::test]
async fn a_short_retry_is_not_held_behind_a_long_one() {
    let stream = Stream::new();
    stream.publish(&sample_envelopes(2, 1)).await;
    let subscriber = stream.subscriber("g", "m1", PATIENCE).await;
    let received = receive_until(&subscriber, 2).await;

    subscriber
        .retry(&received[0], Duration::from_secs(30))
        .await
        .expect("retry");
    let scheduled_at = Instant::now();
    subscriber
        .retry(&received[1], Duration::from_millis(200))
        .await
        .expect("retry");
    let back = receive_until(&subscriber, 1).await;
    assert!(scheduled_at.elapsed() < Duration::from_millis(200) + RETRY_SLACK);
    assert_eq!(ids(&back), [received[1].id.clone()]);
    assert_eq!(back[0].attempt, 2);

    // The long one still waits, and counts as not yet done.
    let lag = subscriber.lag().await.expect("lag");
    assert_eq!(lag.messages, 2);
    ack_all(&subscriber, &back).await;
    assert_eq!(subscriber.lag().await.expect("lag").messages, 1);
}

#[tokio::test]
async fn a_retry_comes_out_on_time_while_receive_is_blocked() {
    let stream = Stream::new();
    stream.publish(&sample_envelopes(1, 1)).await;
    let subscriber = Arc::new(stream.subscriber("g", "m1", PATIENCE).await);
    let received = receive_until(&subscriber, 1).await;

    let waiting = tokio::spawn({
        let subscriber = Arc::clone(&subscriber);
        async move { subscriber.receive(1, Duration::from_secs(15)).await }
    });
    let delay = Duration::from_millis(300);
    let scheduled_at = Instant::now();
    subscriber.retry(&received[0], delay).await.expect("retry");
    let back = waiting
        .await
        .expect("the receiving task ends")
        .expect("receive");
    let waited = scheduled_at.elapsed();
    assert_eq!(ids(&back), ids(&received));
    assert!(
        waited >= delay && waited < delay + RETRY_SLACK,
        "came back after {waited:?}"
    );
    ack_all(&subscriber, &back).await;
}

/// Receives for four seconds, whatever comes.
async fn receive_for_a_while(subscriber: &RedisSubscriber) -> Vec<Delivery> {
    let mut taken = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let batch = subscriber
            .receive(4, Duration::from_millis(200))
            .await
            .expect("receive");
        taken.extend(batch);
    }
    taken
}

#[tokio::test]
async fn two_members_never_both_take_one_due_retry() {
    let stream = Stream::new();
    let messages = sample_envelopes(30, 3);
    stream.publish(&messages).await;
    let first = stream.subscriber("g", "m1", PATIENCE).await;
    let second = stream.subscriber("g", "m2", PATIENCE).await;
    let received = receive_until(&first, messages.len()).await;
    for delivery in &received {
        first
            .retry(delivery, Duration::from_millis(300))
            .await
            .expect("retry");
    }

    // Both race for the same due entries until every one came back once.
    let (of_first, of_second) =
        tokio::join!(receive_for_a_while(&first), receive_for_a_while(&second));
    let all: Vec<String> = ids(&of_first).into_iter().chain(ids(&of_second)).collect();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(
        all.len(),
        messages.len(),
        "every entry came back exactly once"
    );
    assert_eq!(unique.len(), messages.len());
    assert!(of_first.iter().chain(&of_second).all(|d| d.attempt == 2));
    ack_all(&first, &of_first).await;
    ack_all(&second, &of_second).await;
    assert_eq!(pending(&stream, "g").await, 0);
}

#[tokio::test]
async fn lag_counts_unread_and_unsettled_entries_and_their_age() {
    let stream = Stream::new();
    let subscriber = stream.subscriber("g", "m1", PATIENCE).await;
    let empty = subscriber.lag().await.expect("lag");
    assert_eq!((empty.messages, empty.oldest_age), (0, None));

    stream.publish(&sample_envelopes(5, 1)).await;
    let lag = subscriber.lag().await.expect("lag");
    assert_eq!(lag.messages, 5);
    let age = lag.oldest_age.expect("an oldest entry");
    assert!(age < Duration::from_secs(60), "oldest age {age:?}");

    let two = receive_until(&subscriber, 2).await;
    assert_eq!(
        subscriber.lag().await.expect("lag").messages,
        5,
        "read is not done"
    );
    subscriber.ack(&two[0]).await.expect("ack");
    subscriber
        .retry(&two[1], Duration::from_secs(30))
        .await
        .expect("retry");
    assert_eq!(
        subscriber.lag().await.expect("lag").messages,
        4,
        "waiting for a retry is not done"
    );

    let rest = receive_until(&subscriber, 3).await;
    ack_all(&subscriber, &rest).await;
    assert_eq!(subscriber.lag().await.expect("lag").messages, 1);
    subscriber.ack(&two[1]).await.expect("ack");
    let done = subscriber.lag().await.expect("lag");
    assert_eq!((done.messages, done.oldest_age), (0, None));
}

#[tokio::test]
async fn without_provision_the_stream_and_the_group_must_exist() {
    let stream = Stream::new();
    let connect = || async {
        RedisSubscriber::connect(
            "orders",
            REDIS_URL,
            &stream.target(),
            &subscription("billing", "m1", PATIENCE, false),
        )
        .await
    };
    let missing_stream = connect().await.err();
    assert!(
        matches!(&missing_stream, Some(BrokerError::Topology { message, .. }) if message.contains(&stream.0)),
        "got {missing_stream:?}"
    );

    stream.publish(&sample_envelopes(1, 1)).await;
    let missing_group = connect().await.err();
    assert!(
        matches!(&missing_group, Some(BrokerError::Topology { message, .. }) if message.contains("billing")),
        "got {missing_group:?}"
    );

    stream.subscriber("billing", "m1", PATIENCE).await;
    connect().await.expect("the provisioned group is found");
}

#[tokio::test]
async fn a_key_of_another_type_is_a_topology_error() {
    let stream = Stream::new();
    let _: () = query(redis::cmd("SET").arg(&stream.0).arg("not a stream")).await;
    for provision in [true, false] {
        let result = RedisSubscriber::connect(
            "orders",
            REDIS_URL,
            &stream.target(),
            &subscription("g", "m1", PATIENCE, provision),
        )
        .await;
        assert!(
            matches!(result, Err(BrokerError::Topology { .. })),
            "provision {provision}: got {:?}",
            result.err()
        );
    }
}
