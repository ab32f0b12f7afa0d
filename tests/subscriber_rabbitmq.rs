//! The RabbitMQ subscriber against the RabbitMQ server on this machine, fed by Ferry's own
//! publisher: every message once, per-key order, groups and members, redelivery of what a
//! closed or crashed member held, delayed retries that keep their attempt count, lag, and the
//! topology errors.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use ferry::{
    api::broker_topic::ExchangeType,
    broker::{
        BrokerError, Outcome, Publisher,
        rabbitmq::{
            RabbitMqPublisher,
            subscriber::{RabbitMqSubscriber, retry_queue_names},
        },
        subscriber::{Delivery, Subscriber, SubscriptionConfig},
    },
    config::RabbitMqTarget,
    message::Envelope,
};
use lapin::{
    Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use support::{sample_envelopes, unique_name};
use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::Instant,
};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// How long a test waits for a condition before it fails; generous for a loaded machine.
const DEADLINE: Duration = Duration::from_secs(15);
/// How long one `receive` waits.
const POLL: Duration = Duration::from_millis(200);
/// The routing key of the sample envelopes.
const ROUTING_KEY: &str = "Order.order.created";

/// A test's own exchange, its publisher, and the consumer groups it subscribes; dropping it
/// deletes the exchange, the groups' queues and their delay queues, also when the test fails.
struct Scene {
    exchange: String,
    target: RabbitMqTarget,
    publisher: RabbitMqPublisher,
    groups: std::sync::Mutex<BTreeSet<String>>,
}

impl Scene {
    async fn new(exchange_type: ExchangeType) -> Self {
        let exchange = unique_name("ferry_sub_x");
        let target = RabbitMqTarget {
            exchange: exchange.clone(),
            exchange_type,
            routing_key: "{aggregateType}.{eventType}".into(),
        };
        let publisher = RabbitMqPublisher::connect("orders", URL, &target, true)
            .await
            .expect("connect the publisher and declare the exchange");
        Self {
            exchange,
            target,
            publisher,
            groups: std::sync::Mutex::new(BTreeSet::new()),
        }
    }

    fn group(&self) -> String {
        let group = unique_name("ferry_sub_g");
        self.groups
            .lock()
            .expect("the group list")
            .insert(group.clone());
        group
    }

    fn subscription(&self, group: &str, member: &str, prefetch: u32) -> SubscriptionConfig {
        SubscriptionConfig {
            group: group.to_owned(),
            member: member.to_owned(),
            prefetch,
            ack_timeout: Duration::from_secs(30),
            provision: true,
            single_active: false,
        }
    }

    async fn subscribe_single_active(&self, group: &str, member: &str) -> RabbitMqSubscriber {
        let subscription = SubscriptionConfig {
            single_active: true,
            ..self.subscription(group, member, 10)
        };
        RabbitMqSubscriber::connect("orders", URL, &self.target, &subscription)
            .await
            .expect("subscribe")
    }

    async fn subscribe(&self, group: &str, member: &str, prefetch: u32) -> RabbitMqSubscriber {
        self.subscribe_at(URL, group, member, prefetch).await
    }

    async fn subscribe_at(
        &self,
        url: &str,
        group: &str,
        member: &str,
        prefetch: u32,
    ) -> RabbitMqSubscriber {
        RabbitMqSubscriber::connect(
            "orders",
            url,
            &self.target,
            &self.subscription(group, member, prefetch),
        )
        .await
        .expect("subscribe")
    }

    async fn publish(&self, envelopes: &[Envelope]) {
        let outcomes = self
            .publisher
            .publish(envelopes)
            .await
            .expect("publish the batch");
        assert_eq!(outcomes, vec![Outcome::Confirmed; envelopes.len()]);
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let exchange = self.exchange.clone();
        let groups = std::mem::take(&mut *self.groups.lock().unwrap_or_else(|e| e.into_inner()));
        // A thread with its own runtime, since `Drop` cannot await and also runs on a panic.
        let cleaned = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the clean-up");
            runtime.block_on(async {
                let connection = Connection::connect(URL, ConnectionProperties::default())
                    .await
                    .expect("connect for the clean-up");
                let channel = connection.create_channel().await.expect("a channel");
                for group in &groups {
                    for queue in std::iter::once(group.clone()).chain(retry_queue_names(group)) {
                        channel
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await
                            .expect("delete a queue");
                    }
                }
                channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await
                    .expect("delete the exchange");
                let _ = connection.close(200, "cleaned up".into()).await;
            });
        })
        .join();
        if cleaned.is_err() && !std::thread::panicking() {
            panic!("the clean-up of exchange {} failed", self.exchange);
        }
    }
}

/// Receives until `count` messages came, without settling them, or fails at the deadline.
async fn receive_count(subscriber: &RabbitMqSubscriber, count: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + DEADLINE;
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} messages arrived before the deadline",
            received.len()
        );
        received.extend(
            subscriber
                .receive(count - received.len(), POLL)
                .await
                .expect("receive"),
        );
    }
    assert_eq!(
        received.len(),
        count,
        "receive returned more than asked for"
    );
    received
}

/// Fails if a message arrives within `quiet`.
async fn assert_nothing_arrives(subscriber: &RabbitMqSubscriber, quiet: Duration) {
    let extra = subscriber.receive(10, quiet).await.expect("receive");
    assert!(extra.is_empty(), "unexpected deliveries: {extra:?}");
}

async fn ack_all(subscriber: &RabbitMqSubscriber, deliveries: &[Delivery]) {
    for delivery in deliveries {
        subscriber.ack(delivery).await.expect("ack");
    }
}

/// Polls `lag` until it reports `expected` messages, or fails at the deadline with the last.
async fn assert_lag_becomes(subscriber: &RabbitMqSubscriber, expected: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let lag = subscriber.lag().await.expect("lag");
        assert_eq!(lag.oldest_age, None);
        if lag.messages == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lag stayed at {} messages, expected {expected}",
            lag.messages
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn position(delivery: &Delivery) -> u64 {
    let body: serde_json::Value =
        serde_json::from_slice(&delivery.body).expect("the body is the JSON payload");
    body["position"].as_u64().expect("a position")
}

fn sorted(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut headers = headers.to_vec();
    headers.sort();
    headers
}

#[tokio::test]
async fn every_message_arrives_once_as_published_and_acking_leaves_nothing_behind() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    // A prefetch above the count: every message is held unsettled until all have arrived.
    let subscriber = scene.subscribe(&group, "a", 100).await;
    let envelopes = sample_envelopes(50, 5);
    scene.publish(&envelopes).await;

    let received = receive_count(&subscriber, envelopes.len()).await;
    let sent: BTreeMap<&str, &Envelope> = envelopes.iter().map(|e| (e.id.as_str(), e)).collect();
    let ids: BTreeSet<&str> = received.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), envelopes.len(), "a message arrived twice");
    for delivery in &received {
        let envelope = sent
            .get(delivery.id.as_str())
            .expect("a message that was sent");
        assert_eq!(delivery.body, envelope.body.to_vec());
        assert_eq!(sorted(&delivery.headers), sorted(&envelope.headers));
        assert_eq!(delivery.key, envelope.key);
        assert_eq!(delivery.event_type, "order.created");
        assert_eq!(delivery.header("x-tenant"), Some("acme"));
        assert_eq!(delivery.header("traceparent"), Some(support::TRACEPARENT));
        assert_eq!(delivery.attempt, 1);
        assert!(!delivery.redelivered);
        assert!(delivery.published_at.is_some());
    }
    ack_all(&subscriber, &received).await;

    assert_lag_becomes(&subscriber, 0).await;
    assert_nothing_arrives(&subscriber, Duration::from_millis(500)).await;
    subscriber.close().await;
}

#[tokio::test]
async fn messages_of_one_key_come_out_of_receive_in_publish_order() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    let subscriber = scene.subscribe(&group, "a", 50).await;
    let envelopes = sample_envelopes(300, 4);
    for batch in envelopes.chunks(50) {
        scene.publish(batch).await;
    }

    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut count = 0;
    while count < envelopes.len() {
        // Small batches, settled before the next receive, as the consumer core does.
        let batch = receive_count(&subscriber, 7.min(envelopes.len() - count)).await;
        for delivery in &batch {
            per_key
                .entry(delivery.key.clone())
                .or_default()
                .push(position(delivery));
        }
        count += batch.len();
        ack_all(&subscriber, &batch).await;
    }
    assert_eq!(per_key.len(), 4);
    for (key, positions) in per_key {
        assert!(
            positions.windows(2).all(|pair| pair[0] < pair[1]),
            "key {key} out of order: {positions:?}"
        );
    }
    subscriber.close().await;
}

#[tokio::test]
async fn each_group_receives_every_message() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let (first_group, second_group) = (scene.group(), scene.group());
    let first = scene.subscribe(&first_group, "a", 50).await;
    let second = scene.subscribe(&second_group, "a", 50).await;
    let envelopes = sample_envelopes(40, 4);
    scene.publish(&envelopes).await;

    let expected: BTreeSet<String> = envelopes.iter().map(|e| e.id.clone()).collect();
    for subscriber in [&first, &second] {
        let received = receive_count(subscriber, envelopes.len()).await;
        let ids: BTreeSet<String> = received.iter().map(|d| d.id.clone()).collect();
        assert_eq!(ids, expected);
        ack_all(subscriber, &received).await;
    }
    first.close().await;
    second.close().await;
}

#[tokio::test]
async fn members_of_one_group_share_its_messages_and_never_get_the_same_one() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    let members = [
        scene.subscribe(&group, "a", 5).await,
        scene.subscribe(&group, "b", 5).await,
    ];
    let envelopes = sample_envelopes(60, 6);
    scene.publish(&envelopes).await;

    let mut seen: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    let deadline = Instant::now() + DEADLINE;
    while seen.iter().map(Vec::len).sum::<usize>() < envelopes.len() {
        assert!(Instant::now() < deadline, "not every message arrived");
        for (member, ids) in members.iter().zip(seen.iter_mut()) {
            let batch = member
                .receive(5, Duration::from_millis(50))
                .await
                .expect("receive");
            ids.extend(batch.iter().map(|d| d.id.clone()));
            ack_all(member, &batch).await;
        }
    }
    let [a, b] = &seen;
    assert!(!a.is_empty() && !b.is_empty(), "one member got everything");
    let a_ids: BTreeSet<&String> = a.iter().collect();
    let b_ids: BTreeSet<&String> = b.iter().collect();
    assert!(a_ids.is_disjoint(&b_ids), "a message went to both members");
    assert_eq!(a_ids.len() + b_ids.len(), envelopes.len(), "a duplicate");
    for member in &members {
        member.close().await;
    }
}

/// With a single active consumer, only one member receives; the other takes over, in order,
/// when it goes away. This is what keeps per-key order across replicas.
#[tokio::test]
async fn with_single_active_one_member_receives_and_the_other_takes_over() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    let active = scene.subscribe_single_active(&group, "a").await;
    let standby = scene.subscribe_single_active(&group, "b").await;
    let envelopes = sample_envelopes(20, 2);
    scene.publish(&envelopes[..10]).await;
    let first = receive_count(&active, 10).await;
    assert_nothing_arrives(&standby, Duration::from_millis(500)).await;
    ack_all(&active, &first).await;
    active.close().await;
    scene.publish(&envelopes[10..]).await;
    let rest = receive_count(&standby, 10).await;
    let ids: Vec<&str> = rest.iter().map(|d| d.id.as_str()).collect();
    let sent: Vec<&str> = envelopes[10..].iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, sent, "the standby member takes over in order");
    ack_all(&standby, &rest).await;
    standby.close().await;
}

#[tokio::test]
async fn what_a_closed_member_held_is_redelivered_to_the_next_one() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    let first = scene.subscribe(&group, "a", 10).await;
    let envelopes = sample_envelopes(3, 1);
    scene.publish(&envelopes).await;
    let held = receive_count(&first, 3).await;
    first.close().await;
    assert!(!first.connected());
    drop(held);

    let next = scene.subscribe(&group, "b", 10).await;
    let again = receive_count(&next, 3).await;
    let ids: Vec<&str> = again.iter().map(|d| d.id.as_str()).collect();
    let sent: Vec<&str> = envelopes.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, sent, "redelivered in the original order");
    for delivery in &again {
        assert!(delivery.redelivered);
        // The quorum queue counted the return: an attempt that did not end.
        assert_eq!(delivery.attempt, 2);
    }
    ack_all(&next, &again).await;
    next.close().await;
}

#[tokio::test]
async fn what_a_dropped_member_held_is_redelivered_to_the_next_one() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    let first = scene.subscribe(&group, "a", 10).await;
    scene.publish(&sample_envelopes(2, 1)).await;
    let held = receive_count(&first, 2).await;
    // A crash: nothing is settled or closed.
    drop(first);
    drop(held);

    let next = scene.subscribe(&group, "b", 10).await;
    let again = receive_count(&next, 2).await;
    assert!(again.iter().all(|d| d.redelivered));
    ack_all(&next, &again).await;
    next.close().await;
}

#[tokio::test]
async fn a_retry_comes_back_after_its_quantised_delay_as_the_next_attempt() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    let subscriber = scene.subscribe(&group, "a", 10).await;
    let envelopes = sample_envelopes(1, 1);
    scene.publish(&envelopes).await;
    let original = receive_count(&subscriber, 1).await.remove(0);

    // 1.2 s is rounded down to the 1 s delay queue, 120 ms to the 100 ms one, 60 ms to 50 ms.
    let mut current = original;
    for (attempt, requested, quantised) in [(2, 1_200, 1_000), (3, 120, 100), (4, 60, 50)] {
        let retried_at = Instant::now();
        subscriber
            .retry(&current, Duration::from_millis(requested))
            .await
            .expect("retry");
        let copy = receive_count(&subscriber, 1).await.remove(0);
        let waited = retried_at.elapsed();
        assert!(
            waited >= Duration::from_millis(quantised),
            "came back after {waited:?}, before its {quantised} ms"
        );
        assert!(
            waited < Duration::from_millis(quantised) + Duration::from_secs(5),
            "came back only after {waited:?}"
        );
        assert_eq!(copy.attempt, attempt);
        assert_eq!(copy.id, envelopes[0].id);
        assert_eq!(copy.body, envelopes[0].body.to_vec());
        assert_eq!(sorted(&copy.headers), sorted(&envelopes[0].headers));
        assert!(copy.header("x-ferry-attempt").is_none());
        assert!(copy.header("x-death").is_none());
        current = copy;
    }

    // A delay under the shortest delay queue goes straight back.
    subscriber
        .retry(&current, Duration::from_millis(5))
        .await
        .expect("retry at once");
    let last = receive_count(&subscriber, 1).await.remove(0);
    assert_eq!(last.attempt, 5);
    subscriber.ack(&last).await.expect("ack");
    assert_lag_becomes(&subscriber, 0).await;
    subscriber.close().await;
}

#[tokio::test]
async fn a_short_retry_is_not_held_behind_a_long_one() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    let subscriber = scene.subscribe(&group, "a", 10).await;
    let envelopes = sample_envelopes(2, 2);
    scene.publish(&envelopes).await;
    let received = receive_count(&subscriber, 2).await;

    let started = Instant::now();
    subscriber
        .retry(&received[0], Duration::from_secs(60))
        .await
        .expect("retry the first later");
    subscriber
        .retry(&received[1], Duration::from_millis(300))
        .await
        .expect("retry the second soon");
    let back = receive_count(&subscriber, 1).await.remove(0);
    assert_eq!(back.id, received[1].id);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the short retry took {:?}",
        started.elapsed()
    );
    subscriber.ack(&back).await.expect("ack");
    // The long one is still waiting in its delay queue.
    assert_lag_becomes(&subscriber, 1).await;
    subscriber.close().await;
}

#[tokio::test]
async fn a_retry_waiting_in_its_delay_queue_survives_a_crash_of_the_member() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    let first = scene.subscribe(&group, "a", 10).await;
    scene.publish(&sample_envelopes(1, 1)).await;
    let original = receive_count(&first, 1).await.remove(0);
    first
        .retry(&original, Duration::from_millis(500))
        .await
        .expect("retry");
    drop(original);
    drop(first);

    let next = scene.subscribe(&group, "b", 10).await;
    let copy = receive_count(&next, 1).await.remove(0);
    assert_eq!(copy.attempt, 2);
    assert!(!copy.redelivered, "the copy is a new message");
    next.ack(&copy).await.expect("ack");
    next.close().await;
}

#[tokio::test]
async fn a_retried_copy_held_by_a_crashed_member_keeps_its_attempt_count() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    let first = scene.subscribe(&group, "a", 10).await;
    scene.publish(&sample_envelopes(1, 1)).await;
    let original = receive_count(&first, 1).await.remove(0);
    first
        .retry(&original, Duration::from_millis(100))
        .await
        .expect("retry");
    let copy = receive_count(&first, 1).await.remove(0);
    assert_eq!(copy.attempt, 2);
    drop(copy);
    drop(first);

    let next = scene.subscribe(&group, "b", 10).await;
    let again = receive_count(&next, 1).await.remove(0);
    assert!(again.redelivered);
    // Attempt 2 did not end, so this is attempt 3: Ferry's count plus the quorum queue's.
    assert_eq!(again.attempt, 3);
    next.ack(&again).await.expect("ack");
    next.close().await;
}

#[tokio::test]
async fn lag_counts_ready_delayed_and_held_messages() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    let subscriber = scene.subscribe(&group, "a", 2).await;
    scene.publish(&sample_envelopes(5, 5)).await;

    // Two are held (the prefetch), three are ready.
    let held = receive_count(&subscriber, 2).await;
    assert_lag_becomes(&subscriber, 5).await;

    // One goes to a delay queue; RabbitMQ hands out the next ready one in its place.
    subscriber
        .retry(&held[0], Duration::from_secs(60))
        .await
        .expect("retry");
    assert_lag_becomes(&subscriber, 5).await;

    subscriber.ack(&held[1]).await.expect("ack");
    let mut rest = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while rest.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the other messages did not arrive"
        );
        let batch = subscriber.receive(3, POLL).await.expect("receive");
        ack_all(&subscriber, &batch).await;
        rest.extend(batch);
    }
    assert_lag_becomes(&subscriber, 1).await;

    // Another member finds the delay queue it never declared.
    let other = scene.subscribe(&group, "b", 2).await;
    assert_lag_becomes(&other, 1).await;
    other.close().await;
    subscriber.close().await;
}

#[tokio::test]
async fn fanout_and_headers_exchanges_deliver_every_message_to_the_group() {
    for exchange_type in [ExchangeType::Fanout, ExchangeType::Headers] {
        let scene = Scene::new(exchange_type).await;
        let group = scene.group();
        let subscriber = scene.subscribe(&group, "a", 20).await;
        let envelopes = sample_envelopes(10, 2);
        scene.publish(&envelopes).await;
        let received = receive_count(&subscriber, envelopes.len()).await;
        ack_all(&subscriber, &received).await;
        subscriber.close().await;
    }
}

#[tokio::test]
async fn provision_off_with_a_missing_queue_is_a_topology_error_naming_it() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    let mut subscription = scene.subscription(&group, "a", 10);
    subscription.provision = false;
    let error = RabbitMqSubscriber::connect("orders", URL, &scene.target, &subscription)
        .await
        .err()
        .expect("no queue, no subscriber");
    assert!(matches!(error, BrokerError::Topology { .. }), "{error}");
    assert!(error.to_string().contains(&group), "{error}");
}

#[tokio::test]
async fn a_direct_exchange_with_provision_on_is_a_topology_error_saying_what_to_do() {
    let scene = Scene::new(ExchangeType::Direct).await;
    let group = scene.group();
    let error = RabbitMqSubscriber::connect(
        "orders",
        URL,
        &scene.target,
        &scene.subscription(&group, "a", 10),
    )
    .await
    .err()
    .expect("a direct exchange cannot be bound to everything");
    assert!(matches!(error, BrokerError::Topology { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("direct") && message.contains("provision to false"),
        "{message}"
    );
}

#[tokio::test]
async fn provision_off_consumes_and_retries_from_a_queue_the_user_bound_to_a_direct_exchange() {
    let scene = Scene::new(ExchangeType::Direct).await;
    let group = scene.group();
    let connection = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .queue_declare(
            group.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare a classic queue");
    channel
        .queue_bind(
            group.as_str().into(),
            scene.exchange.as_str().into(),
            ROUTING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind it");
    let mut subscription = scene.subscription(&group, "a", 10);
    subscription.provision = false;
    let subscriber = RabbitMqSubscriber::connect("orders", URL, &scene.target, &subscription)
        .await
        .expect("the queue exists");

    scene.publish(&sample_envelopes(2, 2)).await;
    let received = receive_count(&subscriber, 2).await;
    subscriber
        .retry(&received[0], Duration::from_millis(100))
        .await
        .expect("retry through a delay queue Ferry declares");
    subscriber.ack(&received[1]).await.expect("ack");
    let copy = receive_count(&subscriber, 1).await.remove(0);
    assert_eq!(copy.id, received[0].id);
    assert_eq!(copy.attempt, 2);
    subscriber.ack(&copy).await.expect("ack");
    subscriber.close().await;
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn an_existing_classic_group_queue_is_a_topology_error_with_provision_on() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    let connection = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .queue_declare(
            group.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare a classic queue");
    let error = RabbitMqSubscriber::connect(
        "orders",
        URL,
        &scene.target,
        &scene.subscription(&group, "a", 10),
    )
    .await
    .err()
    .expect("a quorum queue cannot replace a classic one");
    assert!(matches!(error, BrokerError::Topology { .. }), "{error}");
    assert!(error.to_string().contains(&group), "{error}");
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_deleted_group_queue_ends_receiving_with_a_connection_error() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    let subscriber = scene.subscribe(&group, "a", 10).await;
    assert!(subscriber.connected());
    let connection = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .queue_delete(group.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the group's queue");

    let deadline = Instant::now() + DEADLINE;
    let error = loop {
        match subscriber.receive(10, POLL).await {
            Err(error) => break error,
            Ok(batch) => assert!(batch.is_empty() && Instant::now() < deadline),
        }
    };
    assert!(matches!(error, BrokerError::Connection { .. }), "{error}");
    assert!(!subscriber.connected());
    let lag = subscriber.lag().await.expect_err("no queue, no lag");
    assert!(matches!(lag, BrokerError::Topology { .. }), "{lag}");
    let _ = connection.close(200, "done".into()).await;
}

/// A TCP proxy to the shared server whose connections the test can cut, as a network failure
/// would, without touching the server.
struct CuttableProxy {
    port: u16,
    links: std::sync::Arc<tokio::sync::Mutex<JoinSet<()>>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("an address").port();
        let links = std::sync::Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let accepted = std::sync::Arc::clone(&links);
        let acceptor = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                accepted.lock().await.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect("127.0.0.1:5672").await {
                        let _ = copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self {
            port,
            links,
            acceptor,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    async fn cut(&self) {
        self.acceptor.abort();
        self.links.lock().await.abort_all();
    }
}

#[tokio::test]
async fn a_lost_connection_makes_receive_fail_and_connected_false() {
    let scene = Scene::new(ExchangeType::Topic).await;
    let group = scene.group();
    let proxy = CuttableProxy::start().await;
    let subscriber = scene.subscribe_at(&proxy.url(), &group, "a", 10).await;
    scene.publish(&sample_envelopes(1, 1)).await;
    let held = receive_count(&subscriber, 1).await;
    assert!(subscriber.connected());

    proxy.cut().await;
    let deadline = Instant::now() + DEADLINE;
    let error = loop {
        match subscriber.receive(10, POLL).await {
            Err(error) => break error,
            Ok(batch) => assert!(batch.is_empty() && Instant::now() < deadline),
        }
    };
    assert!(matches!(error, BrokerError::Connection { .. }), "{error}");
    assert!(!subscriber.connected());
    let ack = subscriber
        .ack(&held[0])
        .await
        .expect_err("no ack without a channel");
    assert!(matches!(ack, BrokerError::Connection { .. }), "{ack}");

    // The message it held goes back to the group.
    let next = scene.subscribe(&group, "b", 10).await;
    let again = receive_count(&next, 1).await;
    assert!(again[0].redelivered);
    ack_all(&next, &again).await;
    next.close().await;
}
