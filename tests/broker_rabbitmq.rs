//! The RabbitMQ publisher against the RabbitMQ server on this machine: what it confirms is in a
//! bound queue, persistent, in order per key, with its CloudEvents headers; what cannot be
//! routed is rejected; missing topology is reported.

use std::{collections::BTreeMap, time::Duration};

use chrono::Utc;
use ferry::{
    api::broker_topic::ExchangeType,
    broker::{
        BrokerError, Outcome, Publisher,
        rabbitmq::{RabbitMqPublisher, publish_raw},
    },
    config::RabbitMqTarget,
    message::{Envelope, OutboxEvent, envelope},
};
use futures::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use uuid::Uuid;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const SOURCE: &str = "/namespaces/test/outboxsources/orders";
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
/// How long a test waits for deliveries before it fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// The `n`th event of a test: ten keys in turn, the position in the body.
fn event_envelope(n: usize, routing_key: &str) -> Envelope {
    let event = OutboxEvent {
        seq: n as i64,
        id: Uuid::now_v7().to_string(),
        aggregate_type: "Order".into(),
        aggregate_id: format!("order-{}", n % 10),
        event_type: "order.created".into(),
        payload: format!(r#"{{"n":{n}}}"#).into_bytes(),
        headers: Some(format!(
            r#"{{"traceparent":"{TRACEPARENT}","x-tenant":"acme"}}"#
        )),
        created_at: Utc::now(),
        defect: None,
    };
    envelope(&event, SOURCE, routing_key.to_owned()).expect("a valid event")
}

fn target(exchange: &str) -> RabbitMqTarget {
    RabbitMqTarget {
        exchange: exchange.to_owned(),
        exchange_type: ExchangeType::Topic,
        routing_key: "{aggregateType}.{eventType}".into(),
    }
}

/// A test's own exchange, created through the publisher, and a durable queue bound to it.
struct Scene {
    name: String,
    queue: String,
    connection: Connection,
    channel: Channel,
    publisher: RabbitMqPublisher,
}

impl Scene {
    async fn new(binding_key: &str) -> Self {
        let name = format!("ferry-test-{}", Uuid::new_v4().simple());
        let publisher = RabbitMqPublisher::connect("orders", URL, &target(&name), true)
            .await
            .expect("connect and declare the exchange");
        let connection = Connection::connect(URL, ConnectionProperties::default())
            .await
            .expect("a consumer connection");
        let channel = connection
            .create_channel()
            .await
            .expect("a consumer channel");
        let queue = format!("{name}-queue");
        // The queue expires by itself if a failed test leaves it behind.
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongUInt(120_000));
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .expect("declare the queue");
        channel
            .queue_bind(
                queue.as_str().into(),
                name.as_str().into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the queue");
        Self {
            name,
            queue,
            connection,
            channel,
            publisher,
        }
    }

    /// Receives `count` messages, acknowledging each, or fails at the deadline.
    async fn receive(&self, count: usize) -> Vec<Delivery> {
        let mut consumer = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut received = Vec::with_capacity(count);
        let collect = async {
            while received.len() < count {
                let delivery = consumer
                    .next()
                    .await
                    .expect("the consumer stays open")
                    .expect("a delivery");
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
                received.push(delivery);
            }
        };
        tokio::time::timeout(DEADLINE, collect)
            .await
            .expect("all messages arrive before the deadline");
        received
    }

    async fn clean_up(self) {
        self.publisher.close().await;
        self.channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete the queue");
        self.channel
            .exchange_delete(self.name.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .expect("delete the exchange");
        self.connection
            .close(200, "done".into())
            .await
            .expect("close");
    }
}

fn header<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a str> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
        _ => None,
    }
}

#[tokio::test]
async fn a_confirmed_batch_reaches_a_bound_queue_in_order_per_key_with_headers_and_body_intact() {
    let scene = Scene::new("Order.#").await;
    let batch: Vec<Envelope> = (0..200)
        .map(|n| event_envelope(n, "Order.order.created"))
        .collect();

    let outcomes = scene
        .publisher
        .publish(&batch)
        .await
        .expect("the batch is published");
    assert_eq!(outcomes, vec![Outcome::Confirmed; batch.len()]);

    let received = scene.receive(batch.len()).await;
    let sent: BTreeMap<&str, &Envelope> = batch.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for delivery in &received {
        let id = header(delivery, "ce-id").expect("ce-id");
        let envelope = sent.get(id).expect("a message that was sent");
        for name in [
            "ce-id",
            "ce-type",
            "ce-source",
            "ce-time",
            "ce-partitionkey",
            "content-type",
            "traceparent",
            "x-tenant",
        ] {
            assert_eq!(
                header(delivery, name),
                envelope.header(name),
                "header {name}"
            );
        }
        assert_eq!(header(delivery, "traceparent"), Some(TRACEPARENT));
        assert_eq!(delivery.data, envelope.body.to_vec());
        let n: serde_json::Value = serde_json::from_slice(&delivery.data).expect("a JSON body");
        per_key
            .entry(envelope.key.clone())
            .or_default()
            .push(n["n"].as_i64().expect("n"));
    }
    assert_eq!(per_key.len(), 10);
    for (key, positions) in &per_key {
        assert!(
            positions.is_sorted(),
            "{key} arrived out of order: {positions:?}"
        );
        assert_eq!(positions.len(), 20, "{key}");
    }
    scene.clean_up().await;
}

#[tokio::test]
async fn messages_are_published_persistent_with_their_id_type_and_time() {
    let scene = Scene::new("Order.#").await;
    let batch = vec![event_envelope(1, "Order.order.created")];
    assert_eq!(
        scene.publisher.publish(&batch).await.expect("published"),
        vec![Outcome::Confirmed]
    );

    let queue = scene
        .channel
        .queue_declare(
            scene.queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the queue exists");
    assert_eq!(queue.message_count(), 1);

    let delivery = scene.receive(1).await.remove(0);
    let properties = &delivery.properties;
    assert_eq!(
        *properties.delivery_mode(),
        Some(2),
        "delivery mode 2 is persistent"
    );
    assert_eq!(
        properties.message_id().as_ref().map(|id| id.as_str()),
        Some(batch[0].id.as_str())
    );
    assert_eq!(
        properties.content_type().as_ref().map(|t| t.as_str()),
        Some("application/json")
    );
    let created =
        chrono::DateTime::parse_from_rfc3339(batch[0].header("ce-time").expect("ce-time"))
            .expect("a time");
    assert_eq!(*properties.timestamp(), Some(created.timestamp() as u64));
    scene.clean_up().await;
}

#[tokio::test]
async fn an_unroutable_message_is_rejected_while_the_routable_ones_of_its_batch_are_confirmed() {
    let scene = Scene::new("Order.order.created").await;
    let unroutable = [3, 4, 10, 57, 99];
    let batch: Vec<Envelope> = (0..100)
        .map(|n| {
            event_envelope(
                n,
                if unroutable.contains(&n) {
                    "Order.order.lost"
                } else {
                    "Order.order.created"
                },
            )
        })
        .collect();

    let outcomes = scene
        .publisher
        .publish(&batch)
        .await
        .expect("the batch is published");
    for (n, outcome) in outcomes.iter().enumerate() {
        if unroutable.contains(&n) {
            let expected = format!(
                "unroutable: no queue is bound to exchange {} for routing key Order.order.lost",
                scene.name
            );
            assert_eq!(outcome, &Outcome::Rejected(expected), "message {n}");
        } else {
            assert_eq!(outcome, &Outcome::Confirmed, "message {n}");
        }
    }
    let received = scene.receive(100 - unroutable.len()).await;
    assert!(
        received
            .iter()
            .all(|d| d.routing_key.as_str() == "Order.order.created")
    );
    scene.clean_up().await;
}

#[tokio::test]
async fn a_missing_exchange_without_provision_is_a_topology_error() {
    let name = format!("ferry-test-missing-{}", Uuid::new_v4().simple());
    let error = RabbitMqPublisher::connect("orders", URL, &target(&name), false)
        .await
        .err()
        .expect("no such exchange");
    assert!(matches!(error, BrokerError::Topology { .. }), "{error:?}");
    assert!(error.to_string().contains(&name), "{error}");
}

#[tokio::test]
async fn an_existing_exchange_without_provision_is_accepted() {
    let scene = Scene::new("Order.#").await;
    let publisher = RabbitMqPublisher::connect("orders", URL, &target(&scene.name), false)
        .await
        .expect("the exchange exists");
    let outcomes = publisher
        .publish(&[event_envelope(0, "Order.order.created")])
        .await
        .expect("published");
    assert_eq!(outcomes, vec![Outcome::Confirmed]);
    publisher.close().await;
    scene.receive(1).await;
    scene.clean_up().await;
}

#[tokio::test]
async fn an_exchange_of_another_type_is_a_topology_error() {
    let scene = Scene::new("Order.#").await;
    let mut fanout = target(&scene.name);
    fanout.exchange_type = ExchangeType::Fanout;
    let error = RabbitMqPublisher::connect("orders", URL, &fanout, true)
        .await
        .err()
        .expect("the type conflicts");
    assert!(matches!(error, BrokerError::Topology { .. }), "{error:?}");
    assert!(error.to_string().contains(&scene.name), "{error}");
    scene.clean_up().await;
}

#[tokio::test]
async fn an_empty_batch_has_no_outcomes() {
    let scene = Scene::new("Order.#").await;
    assert_eq!(
        scene.publisher.publish(&[]).await.expect("nothing to do"),
        Vec::new()
    );
    scene.clean_up().await;
}

#[tokio::test]
async fn publish_raw_delivers_every_message_in_order() {
    let scene = Scene::new("Order.#").await;
    let messages: Vec<Envelope> = (0..1_200)
        .map(|n| event_envelope(n, "Order.order.created"))
        .collect();
    publish_raw(URL, &target(&scene.name), &messages)
        .await
        .expect("the raw client publishes");
    let received = scene.receive(messages.len()).await;
    let ids: Vec<&str> = received
        .iter()
        .map(|d| header(d, "ce-id").expect("ce-id"))
        .collect();
    let sent: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, sent);
    scene.clean_up().await;
}

#[tokio::test]
async fn declaring_an_existing_durable_exchange_again_is_accepted() {
    let name = format!("ferry-test-{}", Uuid::new_v4().simple());
    let connection = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            name.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let publisher = RabbitMqPublisher::connect("orders", URL, &target(&name), true)
        .await
        .expect("same settings");
    publisher.close().await;
    channel
        .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete");
    connection.close(200, "done".into()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_on_one_publisher_each_get_their_own_outcomes() {
    let scene = Scene::new("Order.order.created").await;
    // Each batch has its unroutable messages at other places, and the last has none; a return
    // credited to the wrong batch would show as a wrong outcome.
    let batches: Vec<Vec<Envelope>> = (0..8)
        .map(|b| {
            (0..150)
                .map(|n| {
                    let lost = n % 7 == b;
                    event_envelope(
                        n,
                        if lost {
                            "Order.order.lost"
                        } else {
                            "Order.order.created"
                        },
                    )
                })
                .collect()
        })
        .collect();
    let results =
        futures::future::join_all(batches.iter().map(|batch| scene.publisher.publish(batch))).await;
    let mut routed = 0;
    for (batch, outcomes) in batches.iter().zip(results) {
        let outcomes = outcomes.expect("the batch is published");
        for (envelope, outcome) in batch.iter().zip(outcomes) {
            if envelope.routing_key == "Order.order.lost" {
                assert!(matches!(outcome, Outcome::Rejected(_)), "{outcome:?}");
            } else {
                assert_eq!(outcome, Outcome::Confirmed);
                routed += 1;
            }
        }
    }
    scene.receive(routed).await;
    scene.clean_up().await;
}
