//! The NATS JetStream subscriber against the NATS server on this machine: what Ferry's
//! publisher stores comes out once per group, in order per key, with its headers; acks, retries
//! and extensions are kept by the durable consumer across restarts; lag and topology are
//! reported.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, pull},
};
use ferry::{
    api::{broker_topic::NatsStorage, duration},
    broker::{
        BrokerError, Outcome, Publisher,
        nats::{
            NatsPublisher,
            subscriber::{NatsSubscriber, durable_name},
        },
        subscriber::{Delivery, Subscriber, SubscriptionConfig},
    },
    config::NatsTarget,
    message::Envelope,
};
use futures::future::join_all;
use support::{sample_envelopes, unique_name};
use tokio::time::Instant;

const URL: &str = "nats://127.0.0.1:4222";
const TOPIC: &str = "orders";
/// How long a test waits for messages it expects before it fails.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long one `receive` waits.
const POLL: Duration = Duration::from_millis(200);
/// How late a delayed or timed-out redelivery may be on a loaded machine.
const LATENESS: Duration = Duration::from_secs(4);

/// A test's own stream, and a client to look inside.
struct Scene {
    target: NatsTarget,
    subject: String,
    jetstream: jetstream::Context,
}

impl Scene {
    async fn new() -> Self {
        let name = unique_name("ferry_sub");
        let client = async_nats::connect(URL).await.expect("a NATS connection");
        Self {
            target: NatsTarget {
                stream: name.clone(),
                subjects: vec![format!("{name}.>")],
                subject: format!("{name}.{{aggregateType}}.{{eventType}}"),
                replicas: 1,
                duplicate_window: duration::Duration::from_secs(120),
                max_age: None,
                storage: NatsStorage::File,
            },
            subject: format!("{name}.Order.created"),
            jetstream: jetstream::new(client),
        }
    }

    /// Publishes `count` sample events over `keys` keys with Ferry's publisher.
    async fn publish(&self, count: usize, keys: usize) -> Vec<Envelope> {
        let batch: Vec<Envelope> = sample_envelopes(count, keys)
            .into_iter()
            .map(|mut envelope| {
                envelope.routing_key = self.subject.clone();
                envelope
            })
            .collect();
        let publisher = NatsPublisher::connect(TOPIC, URL, &self.target, true)
            .await
            .expect("connect the publisher");
        let outcomes = publisher.publish(&batch).await.expect("publish");
        assert_eq!(outcomes, vec![Outcome::Confirmed; batch.len()]);
        publisher.close().await;
        batch
    }

    async fn subscribe(&self, settings: SubscriptionConfig) -> NatsSubscriber {
        NatsSubscriber::connect(TOPIC, URL, &self.target, &settings)
            .await
            .expect("subscribe")
    }

    async fn consumer_info(&self, group: &str) -> jetstream::consumer::Info {
        self.jetstream
            .get_stream(&self.target.stream)
            .await
            .expect("the stream exists")
            .consumer_info(durable_name(group))
            .await
            .expect("the consumer exists")
    }

    async fn clean_up(self) {
        self.jetstream
            .delete_stream(&self.target.stream)
            .await
            .expect("delete the stream");
    }
}

fn settings(group: &str) -> SubscriptionConfig {
    SubscriptionConfig {
        group: group.to_owned(),
        member: "member-0".into(),
        prefetch: 64,
        ack_timeout: Duration::from_secs(30),
        provision: true,
        single_active: false,
    }
}

fn group() -> String {
    format!("ferry.test.{}", unique_name("group"))
}

/// Receives until `count` messages came, or fails at the deadline.
async fn receive_count(subscriber: &NatsSubscriber, count: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + DEADLINE;
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} messages arrived before the deadline",
            received.len()
        );
        let batch = subscriber
            .receive(count - received.len(), POLL)
            .await
            .expect("receive");
        received.extend(batch);
    }
    assert_eq!(received.len(), count, "receive returned more than asked");
    received
}

/// Receives and acknowledges until `count` messages came, or fails at the deadline; returns
/// their ids in the order they came.
async fn receive_and_ack(subscriber: &NatsSubscriber, count: usize) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} messages arrived before the deadline",
            ids.len()
        );
        let batch = subscriber
            .receive(count - ids.len(), POLL)
            .await
            .expect("receive");
        ack_all(subscriber, &batch).await;
        ids.extend(batch.into_iter().map(|delivery| delivery.id));
    }
    ids
}

/// Receives the next message, or fails at the deadline.
async fn receive_one(subscriber: &NatsSubscriber) -> Delivery {
    receive_count(subscriber, 1).await.remove(0)
}

async fn ack_all(subscriber: &NatsSubscriber, deliveries: &[Delivery]) {
    for result in join_all(deliveries.iter().map(|d| subscriber.ack(d))).await {
        result.expect("ack");
    }
}

/// Nothing more arrives within a short while.
async fn assert_nothing_more(subscriber: &NatsSubscriber) {
    let extra = subscriber
        .receive(10, Duration::from_millis(500))
        .await
        .expect("receive");
    let ids: Vec<&str> = extra.iter().map(|d| d.id.as_str()).collect();
    assert!(ids.is_empty(), "unexpected deliveries {ids:?}");
}

fn position(delivery: &Delivery) -> u64 {
    let body: serde_json::Value = serde_json::from_slice(&delivery.body).expect("a JSON body");
    body["position"].as_u64().expect("a position")
}

#[tokio::test]
async fn every_message_arrives_once_with_its_headers_and_acks_leave_nothing_pending() {
    let scene = Scene::new().await;
    let sent = scene.publish(300, 10).await;
    let group = group();
    let subscriber = scene
        .subscribe(SubscriptionConfig {
            prefetch: 300,
            ..settings(&group)
        })
        .await;

    let received = receive_count(&subscriber, sent.len()).await;
    let by_id: BTreeMap<&str, &Envelope> = sent.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut seen = BTreeSet::new();
    for delivery in &received {
        assert!(seen.insert(delivery.id.clone()), "{} twice", delivery.id);
        let envelope = by_id.get(delivery.id.as_str()).expect("a sent message");
        let mut expected = envelope.headers.clone();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(delivery.headers, expected, "headers of {}", delivery.id);
        assert_eq!(delivery.body, envelope.body.to_vec());
        assert_eq!(delivery.key, envelope.key);
        assert_eq!(delivery.event_type, "order.created");
        assert_eq!((delivery.attempt, delivery.redelivered), (1, false));
        let age = chrono::Utc::now() - delivery.published_at.expect("a publish time");
        assert!(age.num_seconds().abs() < 60, "published {age} ago");
    }
    ack_all(&subscriber, &received).await;

    assert_nothing_more(&subscriber).await;
    let info = scene.consumer_info(&group).await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    assert_eq!(info.ack_floor.stream_sequence, 300);
    subscriber.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn messages_of_one_key_arrive_in_publish_order_across_many_pulls() {
    let scene = Scene::new().await;
    scene.publish(500, 5).await;
    let subscriber = scene
        .subscribe(SubscriptionConfig {
            prefetch: 16,
            ..settings(&group())
        })
        .await;

    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let deadline = Instant::now() + DEADLINE;
    let mut count = 0;
    while count < 500 {
        assert!(Instant::now() < deadline, "only {count} of 500 arrived");
        let batch = subscriber.receive(16, POLL).await.expect("receive");
        for delivery in &batch {
            per_key
                .entry(delivery.key.clone())
                .or_default()
                .push(position(delivery));
        }
        count += batch.len();
        ack_all(&subscriber, &batch).await;
    }
    assert_eq!(per_key.len(), 5);
    for (key, positions) in &per_key {
        assert_eq!(positions.len(), 100, "{key}");
        assert!(positions.is_sorted(), "{key} out of order: {positions:?}");
    }
    subscriber.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn a_member_holds_no_more_than_its_prefetch_unsettled() {
    let scene = Scene::new().await;
    scene.publish(30, 3).await;
    let subscriber = scene
        .subscribe(SubscriptionConfig {
            prefetch: 10,
            ..settings(&group())
        })
        .await;

    let held = receive_count(&subscriber, 10).await;
    assert_nothing_more(&subscriber).await;
    // Each settled message frees one place.
    subscriber.ack(&held[0]).await.expect("ack");
    subscriber
        .retry(&held[1], Duration::from_secs(600))
        .await
        .expect("retry");
    let next = receive_count(&subscriber, 2).await;
    assert_nothing_more(&subscriber).await;
    ack_all(&subscriber, &held[2..]).await;
    ack_all(&subscriber, &next).await;
    subscriber.ack(&held[1]).await.expect("ack");
    assert_eq!(receive_and_ack(&subscriber, 18).await.len(), 18);
    assert_eq!(subscriber.lag().await.expect("lag").messages, 0);
    subscriber.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn two_groups_each_get_every_message() {
    let scene = Scene::new().await;
    let sent = scene.publish(50, 5).await;
    let first = scene.subscribe(settings(&group())).await;
    let second = scene.subscribe(settings(&group())).await;

    let expected: BTreeSet<&str> = sent.iter().map(|e| e.id.as_str()).collect();
    for subscriber in [&first, &second] {
        let received = receive_count(subscriber, sent.len()).await;
        let ids: BTreeSet<&str> = received.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, expected);
        ack_all(subscriber, &received).await;
    }
    first.close().await;
    second.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn two_members_of_one_group_share_the_messages_without_duplicates() {
    let scene = Scene::new().await;
    let sent = scene.publish(40, 4).await;
    let group = group();
    let member = |name: &str| SubscriptionConfig {
        member: name.to_owned(),
        prefetch: 10,
        ..settings(&group)
    };
    let first = scene.subscribe(member("member-a")).await;
    let second = scene.subscribe(member("member-b")).await;

    // The first member holds its whole prefetch unsettled, so the rest must go to the second.
    let held = receive_count(&first, 10).await;
    let mut ids: Vec<String> = held.iter().map(|d| d.id.clone()).collect();
    let mut from_second = 0;
    let mut held_acked = false;
    let deadline = Instant::now() + DEADLINE;
    while ids.len() < sent.len() {
        assert!(Instant::now() < deadline, "only {} arrived", ids.len());
        let batch = second.receive(10, POLL).await.expect("receive");
        from_second += batch.len();
        ids.extend(batch.iter().map(|d| d.id.clone()));
        ack_all(&second, &batch).await;
        if from_second > 0 && !held_acked {
            ack_all(&first, &held).await;
            held_acked = true;
        }
        let batch = first.receive(10, POLL).await.expect("receive");
        ids.extend(batch.iter().map(|d| d.id.clone()));
        ack_all(&first, &batch).await;
    }
    assert!(from_second > 0, "the second member got nothing");
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a message went to both members");
    assert_eq!(unique.len(), sent.len());
    first.close().await;
    second.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn a_message_not_settled_is_redelivered_after_ack_timeout_as_attempt_2() {
    let scene = Scene::new().await;
    scene.publish(1, 1).await;
    let ack_timeout = Duration::from_secs(1);
    let subscriber = scene
        .subscribe(SubscriptionConfig {
            ack_timeout,
            ..settings(&group())
        })
        .await;

    let first = receive_one(&subscriber).await;
    let received_at = Instant::now();
    assert_eq!(first.attempt, 1);
    let again = receive_one(&subscriber).await;
    let waited = received_at.elapsed();
    assert_eq!(again.id, first.id);
    assert_eq!((again.attempt, again.redelivered), (2, true));
    assert!(
        waited + Duration::from_millis(100) >= ack_timeout,
        "{waited:?}"
    );
    assert!(waited <= ack_timeout + LATENESS, "{waited:?}");
    subscriber.ack(&again).await.expect("ack");
    assert_eq!(subscriber.lag().await.expect("lag").messages, 0);
    subscriber.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn extend_keeps_a_message_from_being_redelivered_past_ack_timeout() {
    let scene = Scene::new().await;
    scene.publish(1, 1).await;
    let ack_timeout = Duration::from_secs(1);
    let subscriber = scene
        .subscribe(SubscriptionConfig {
            ack_timeout,
            ..settings(&group())
        })
        .await;

    let delivery = receive_one(&subscriber).await;
    // Held for three ack timeouts, extended every third of one, as the consumer does.
    let until = Instant::now() + 3 * ack_timeout;
    while Instant::now() < until {
        subscriber.extend(&delivery).await.expect("extend");
        let extra = subscriber
            .receive(1, ack_timeout / 3)
            .await
            .expect("receive");
        assert!(extra.is_empty(), "redelivered while extended");
    }
    subscriber.ack(&delivery).await.expect("ack");
    assert_nothing_more(&subscriber).await;
    subscriber.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn retry_redelivers_after_its_delay_with_the_next_attempt_and_short_delays_overtake_long_ones()
 {
    let scene = Scene::new().await;
    scene.publish(2, 2).await;
    let subscriber = scene.subscribe(settings(&group())).await;
    let received = receive_count(&subscriber, 2).await;
    let (long, short) = (&received[0], &received[1]);

    let long_delay = Duration::from_secs(4);
    let short_delay = Duration::from_secs(1);
    let started = Instant::now();
    subscriber.retry(long, long_delay).await.expect("retry");
    let short_started = Instant::now();
    subscriber.retry(short, short_delay).await.expect("retry");

    let first_back = receive_one(&subscriber).await;
    let short_waited = short_started.elapsed();
    assert_eq!(first_back.id, short.id, "the short delay came back first");
    assert_eq!((first_back.attempt, first_back.redelivered), (2, true));
    assert!(short_waited >= short_delay, "{short_waited:?}");
    assert!(short_waited <= short_delay + LATENESS, "{short_waited:?}");

    // Retried again, it counts one more attempt.
    subscriber
        .retry(&first_back, short_delay)
        .await
        .expect("retry");
    let mut rest = receive_count(&subscriber, 2).await;
    rest.sort_by_key(|d| d.attempt);
    let (second_back, third_try) = (&rest[0], &rest[1]);
    assert_eq!(
        (second_back.id.as_str(), second_back.attempt),
        (long.id.as_str(), 2)
    );
    assert_eq!(
        (third_try.id.as_str(), third_try.attempt),
        (short.id.as_str(), 3)
    );
    let long_waited = started.elapsed();
    assert!(long_waited >= long_delay, "{long_waited:?}");
    assert!(long_waited <= long_delay + LATENESS, "{long_waited:?}");

    ack_all(&subscriber, &rest).await;
    assert_eq!(subscriber.lag().await.expect("lag").messages, 0);
    subscriber.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn a_retry_survives_a_subscriber_restart() {
    let scene = Scene::new().await;
    scene.publish(1, 1).await;
    let group = group();
    let subscriber = scene.subscribe(settings(&group)).await;
    let delivery = receive_one(&subscriber).await;
    let delay = Duration::from_secs(2);
    let started = Instant::now();
    subscriber.retry(&delivery, delay).await.expect("retry");
    drop(subscriber);

    let restarted = scene.subscribe(settings(&group)).await;
    let again = receive_one(&restarted).await;
    let waited = started.elapsed();
    assert_eq!(again.id, delivery.id);
    assert_eq!((again.attempt, again.redelivered), (2, true));
    assert!(waited >= delay, "{waited:?}");
    assert!(waited <= delay + LATENESS, "{waited:?}");
    restarted.ack(&again).await.expect("ack");
    restarted.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn lag_counts_waiting_in_flight_and_delayed_messages() {
    let scene = Scene::new().await;
    scene.publish(5, 5).await;
    let subscriber = scene.subscribe(settings(&group())).await;

    let lag = subscriber.lag().await.expect("lag");
    assert_eq!(lag.messages, 5);
    let age = lag.oldest_age.expect("the oldest message's age");
    assert!(age < Duration::from_secs(60), "{age:?}");

    let received = receive_count(&subscriber, 5).await;
    ack_all(&subscriber, &received[..2]).await;
    subscriber
        .retry(&received[2], Duration::from_secs(600))
        .await
        .expect("retry");
    // Two in flight and one waiting for its retry.
    assert_eq!(subscriber.lag().await.expect("lag").messages, 3);
    ack_all(&subscriber, &received[3..]).await;
    let lag = subscriber.lag().await.expect("lag");
    assert_eq!(lag.messages, 1, "the delayed retry is still counted");
    assert!(lag.oldest_age.is_some());

    // Acknowledged while it waits, the retried message is done for good.
    subscriber.ack(&received[2]).await.expect("ack");
    let lag = subscriber.lag().await.expect("lag");
    assert_eq!((lag.messages, lag.oldest_age), (0, None));
    subscriber.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn without_provision_a_missing_consumer_is_a_topology_error_naming_it() {
    let scene = Scene::new().await;
    scene.publish(1, 1).await;
    let group = group();
    let result = NatsSubscriber::connect(
        TOPIC,
        URL,
        &scene.target,
        &SubscriptionConfig {
            provision: false,
            ..settings(&group)
        },
    )
    .await;
    match result {
        Err(error @ BrokerError::Topology { .. }) => {
            let text = error.to_string();
            assert!(text.contains(&durable_name(&group)), "{text}");
            assert!(text.contains("provision is false"), "{text}");
        }
        Err(other) => panic!("expected a topology error, got {other}"),
        Ok(_) => panic!("subscribed without a consumer"),
    }
    scene.clean_up().await;
}

#[tokio::test]
async fn an_existing_consumer_with_a_subject_filter_is_refused() {
    let scene = Scene::new().await;
    scene.publish(1, 1).await;
    let group = group();
    scene
        .jetstream
        .get_stream(&scene.target.stream)
        .await
        .expect("the stream")
        .create_consumer(pull::Config {
            durable_name: Some(durable_name(&group)),
            ack_policy: AckPolicy::Explicit,
            filter_subject: scene.subject.clone(),
            ..Default::default()
        })
        .await
        .expect("a filtered consumer");

    let result = NatsSubscriber::connect(TOPIC, URL, &scene.target, &settings(&group)).await;
    match result {
        Err(error @ BrokerError::Topology { .. }) => {
            let text = error.to_string();
            assert!(text.contains("filters subjects"), "{text}");
            assert!(text.contains(&durable_name(&group)), "{text}");
        }
        Err(other) => panic!("expected a topology error, got {other}"),
        Ok(_) => panic!("subscribed to a filtered consumer"),
    }
    scene.clean_up().await;
}

#[tokio::test]
async fn provision_brings_the_settings_ferry_owns_up_to_date() {
    let scene = Scene::new().await;
    scene.publish(1, 1).await;
    let group = group();
    let first = scene.subscribe(settings(&group)).await;
    let delivery = receive_one(&first).await;
    first.ack(&delivery).await.expect("ack");
    let info = scene.consumer_info(&group).await;
    assert_eq!(info.config.ack_policy, AckPolicy::Explicit);
    assert_eq!(info.config.ack_wait, Duration::from_secs(30));
    assert!(info.config.max_deliver <= 0, "{}", info.config.max_deliver);
    assert!(info.config.max_ack_pending >= 64);
    first.close().await;

    let second = scene
        .subscribe(SubscriptionConfig {
            ack_timeout: Duration::from_secs(7),
            prefetch: 200,
            ..settings(&group)
        })
        .await;
    let info = scene.consumer_info(&group).await;
    assert_eq!(info.config.ack_wait, Duration::from_secs(7));
    assert!(info.config.max_ack_pending >= 200);
    // The consumer kept its state: the acknowledged message does not come again.
    assert_nothing_more(&second).await;
    second.close().await;
    scene.clean_up().await;
}

/// Messages the throughput comparison moves.
const BENCH_MESSAGES: usize = 20_000;

/// The subscriber against the raw client on one stream: a pull consumer's `messages()` with a
/// fire-and-forget ack per message is the ceiling; the subscriber receives in batches and acks
/// each message with a confirmed (double) ack, all of a batch at once. Run by hand on a quiet
/// machine: `cargo test --test subscriber_nats -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a throughput measurement, too noisy for a loaded CI machine"]
async fn consume_and_ack_rate_is_at_least_half_the_raw_clients() {
    use futures::StreamExt;

    let scene = Scene::new().await;
    let publisher = NatsPublisher::connect(TOPIC, URL, &scene.target, true)
        .await
        .expect("connect the publisher");
    for chunk in sample_envelopes(BENCH_MESSAGES, 100).chunks(1_000) {
        let batch: Vec<Envelope> = chunk
            .iter()
            .cloned()
            .map(|mut envelope| {
                envelope.routing_key = scene.subject.clone();
                envelope
            })
            .collect();
        publisher.publish(&batch).await.expect("publish");
    }
    publisher.close().await;

    let started = Instant::now();
    let consumer = scene
        .jetstream
        .get_stream(&scene.target.stream)
        .await
        .expect("the stream")
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("a raw consumer");
    let mut messages = consumer.messages().await.expect("messages");
    for _ in 0..BENCH_MESSAGES {
        let message = messages.next().await.expect("open").expect("a message");
        message.ack().await.expect("ack");
    }
    let raw = BENCH_MESSAGES as f64 / started.elapsed().as_secs_f64();
    drop(messages);

    let started = Instant::now();
    let subscriber = scene
        .subscribe(SubscriptionConfig {
            prefetch: 256,
            ..settings(&group())
        })
        .await;
    let mut count = 0;
    while count < BENCH_MESSAGES {
        let batch = subscriber
            .receive(256, Duration::from_secs(1))
            .await
            .expect("receive");
        ack_all(&subscriber, &batch).await;
        count += batch.len();
    }
    let ferry = BENCH_MESSAGES as f64 / started.elapsed().as_secs_f64();
    subscriber.close().await;

    println!(
        "raw client: {raw:.0} msg/s, subscriber: {ferry:.0} msg/s ({:.2} of raw)",
        ferry / raw
    );
    assert!(ferry >= 0.5 * raw, "{ferry:.0} msg/s against {raw:.0}");
    scene.clean_up().await;
}
