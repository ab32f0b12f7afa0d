//! The NATS JetStream publisher against the NATS server on this machine: what it confirms is in
//! the stream once, in order per key, with its CloudEvents headers; what is too large is
//! rejected; missing or conflicting streams are reported.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
    stream,
};
use chrono::Utc;
use ferry::{
    api::{broker_topic::NatsStorage, duration},
    broker::{
        BrokerError, Outcome, Publisher,
        nats::{NatsPublisher, publish_raw},
    },
    config::NatsTarget,
    message::{Envelope, OutboxEvent, envelope},
};
use futures::StreamExt;
use uuid::Uuid;

const URL: &str = "nats://127.0.0.1:4222";
const SOURCE: &str = "/namespaces/test/outboxsources/orders";
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
/// How long a test waits for stored messages before it fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// The `n`th event of a test: ten keys in turn, `payload` as the body.
fn event_envelope(n: usize, subject: &str, payload: String) -> Envelope {
    let event = OutboxEvent {
        seq: n as i64,
        id: Uuid::now_v7().to_string(),
        aggregate_type: "Order".into(),
        aggregate_id: format!("order-{}", n % 10),
        event_type: "order.created".into(),
        payload: payload.into_bytes(),
        headers: Some(format!(
            r#"{{"traceparent":"{TRACEPARENT}","x-tenant":"acme"}}"#
        )),
        created_at: Utc::now(),
        defect: None,
    };
    envelope(&event, SOURCE, subject.to_owned()).expect("a valid event")
}

/// A small event whose body carries its position.
fn small(n: usize, subject: &str) -> Envelope {
    event_envelope(n, subject, format!(r#"{{"n":{n}}}"#))
}

/// A test's own stream and subjects, and a client to look inside.
struct Scene {
    target: NatsTarget,
    /// The subject the test publishes on; the stream captures `<prefix>.>`.
    subject: String,
    jetstream: jetstream::Context,
}

impl Scene {
    async fn new() -> Self {
        let suffix = Uuid::new_v4().simple().to_string();
        let prefix = format!("ferry-test-{suffix}");
        let client = async_nats::connect(URL).await.expect("a NATS connection");
        Self {
            target: NatsTarget {
                stream: format!("FERRY_TEST_{suffix}"),
                subjects: vec![format!("{prefix}.>")],
                subject: format!("{prefix}.{{aggregateType}}.{{eventType}}"),
                replicas: 1,
                duplicate_window: duration::Duration::from_secs(120),
                max_age: Some(duration::Duration::from_secs(600)),
                storage: NatsStorage::File,
            },
            subject: format!("{prefix}.Order.order-created"),
            jetstream: jetstream::new(client),
        }
    }

    async fn connect(&self) -> NatsPublisher {
        NatsPublisher::connect("orders", URL, &self.target, true)
            .await
            .expect("connect and create the stream")
    }

    async fn stored_count(&self) -> u64 {
        let mut stream = self
            .jetstream
            .get_stream(&self.target.stream)
            .await
            .expect("the stream exists");
        stream.info().await.expect("stream info").state.messages
    }

    /// Reads `count` messages from the start of the stream through a pull consumer.
    async fn receive(&self, count: usize) -> Vec<jetstream::Message> {
        let stream = self
            .jetstream
            .get_stream(&self.target.stream)
            .await
            .expect("the stream exists");
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("a consumer");
        let mut messages = consumer.messages().await.expect("a message stream");
        let mut received = Vec::with_capacity(count);
        let collect = async {
            while received.len() < count {
                let message = messages
                    .next()
                    .await
                    .expect("the stream stays open")
                    .expect("a message");
                received.push(message);
            }
        };
        tokio::time::timeout(DEADLINE, collect)
            .await
            .expect("all messages arrive before the deadline");
        received
    }

    async fn clean_up(self) {
        self.jetstream
            .delete_stream(&self.target.stream)
            .await
            .expect("delete the stream");
    }
}

fn header<'a>(message: &'a jetstream::Message, name: &str) -> Option<&'a str> {
    message
        .headers
        .as_ref()?
        .get(name)
        .map(|value| value.as_str())
}

#[tokio::test]
async fn a_confirmed_batch_is_stored_in_order_per_key_with_headers_and_body_intact() {
    let scene = Scene::new().await;
    let publisher = scene.connect().await;
    let batch: Vec<Envelope> = (0..200).map(|n| small(n, &scene.subject)).collect();

    let outcomes = publisher
        .publish(&batch)
        .await
        .expect("the batch is published");
    assert_eq!(outcomes, vec![Outcome::Confirmed; batch.len()]);

    let received = scene.receive(batch.len()).await;
    let sent: BTreeMap<&str, &Envelope> = batch.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for message in &received {
        let id = header(message, "ce-id").expect("ce-id");
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
                header(message, name),
                envelope.header(name),
                "header {name}"
            );
        }
        assert_eq!(header(message, "traceparent"), Some(TRACEPARENT));
        assert_eq!(header(message, "Nats-Msg-Id"), Some(envelope.id.as_str()));
        assert_eq!(message.subject.as_str(), scene.subject);
        assert_eq!(message.payload, envelope.body);
        let body: serde_json::Value =
            serde_json::from_slice(&message.payload).expect("a JSON body");
        per_key
            .entry(envelope.key.clone())
            .or_default()
            .push(body["n"].as_i64().expect("n"));
    }
    assert_eq!(per_key.len(), 10);
    for (key, positions) in &per_key {
        assert!(
            positions.is_sorted(),
            "{key} was stored out of order: {positions:?}"
        );
        assert_eq!(positions.len(), 20, "{key}");
    }
    publisher.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn publishing_the_same_batch_twice_stores_each_message_once() {
    let scene = Scene::new().await;
    let publisher = scene.connect().await;
    let batch: Vec<Envelope> = (0..50).map(|n| small(n, &scene.subject)).collect();

    let first = publisher.publish(&batch).await.expect("first publish");
    let again = publisher.publish(&batch).await.expect("second publish");
    assert_eq!(first, vec![Outcome::Confirmed; batch.len()]);
    assert_eq!(
        again,
        vec![Outcome::Confirmed; batch.len()],
        "a duplicate is confirmed: it is stored"
    );
    assert_eq!(scene.stored_count().await, batch.len() as u64);
    publisher.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn a_message_over_max_payload_is_rejected_and_the_others_are_confirmed() {
    let scene = Scene::new().await;
    let publisher = scene.connect().await;
    let max_payload = publisher
        .max_message_bytes()
        .expect("NATS says its max_payload");
    let mut batch: Vec<Envelope> = (0..5).map(|n| small(n, &scene.subject)).collect();
    batch[2] = event_envelope(
        2,
        &scene.subject,
        format!(r#"{{"blob":"{}"}}"#, "x".repeat(max_payload)),
    );

    let outcomes = publisher
        .publish(&batch)
        .await
        .expect("the batch is published");
    for (n, outcome) in outcomes.iter().enumerate() {
        if n == 2 {
            let Outcome::Rejected(reason) = outcome else {
                panic!("message 2 is too large: {outcome:?}")
            };
            assert!(reason.starts_with("message is "), "{reason}");
            assert!(
                reason.ends_with(&format!(
                    "bytes, over the server's max_payload of {max_payload}"
                )),
                "{reason}"
            );
        } else {
            assert_eq!(outcome, &Outcome::Confirmed, "message {n}");
        }
    }
    assert_eq!(scene.stored_count().await, 4);
    publisher.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn max_message_bytes_is_the_servers_max_payload() {
    let scene = Scene::new().await;
    let publisher = scene.connect().await;
    let client = async_nats::connect(URL).await.expect("a NATS connection");
    assert_eq!(
        publisher.max_message_bytes(),
        Some(client.server_info().max_payload)
    );
    publisher.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn a_missing_stream_without_provision_is_a_topology_error() {
    let scene = Scene::new().await;
    let error = NatsPublisher::connect("orders", URL, &scene.target, false)
        .await
        .err()
        .expect("no such stream");
    assert!(matches!(error, BrokerError::Topology { .. }), "{error:?}");
    assert!(error.to_string().contains(&scene.target.stream), "{error}");
}

#[tokio::test]
async fn an_existing_stream_without_provision_is_used_as_it_is() {
    let scene = Scene::new().await;
    scene.connect().await.close().await;
    let publisher = NatsPublisher::connect("orders", URL, &scene.target, false)
        .await
        .expect("the stream exists");
    let outcomes = publisher
        .publish(&[small(0, &scene.subject)])
        .await
        .expect("published");
    assert_eq!(outcomes, vec![Outcome::Confirmed]);
    publisher.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn a_stream_with_other_subjects_is_a_topology_error_and_is_left_alone() {
    let scene = Scene::new().await;
    let other = format!("{}-other.>", scene.target.stream.to_lowercase());
    scene
        .jetstream
        .create_stream(stream::Config {
            name: scene.target.stream.clone(),
            subjects: vec![other.clone()],
            ..Default::default()
        })
        .await
        .expect("someone else's stream");

    let error = NatsPublisher::connect("orders", URL, &scene.target, true)
        .await
        .err()
        .expect("the subjects conflict");
    assert!(matches!(error, BrokerError::Topology { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&other) && error.to_string().contains(&scene.target.subjects[0]),
        "{error}"
    );
    let mut stream = scene
        .jetstream
        .get_stream(&scene.target.stream)
        .await
        .expect("still there");
    assert_eq!(
        stream.info().await.expect("info").config.subjects,
        vec![other]
    );
    scene.clean_up().await;
}

#[tokio::test]
async fn an_existing_stream_gets_the_topics_duplicate_window_and_max_age() {
    let scene = Scene::new().await;
    scene
        .jetstream
        .create_stream(stream::Config {
            name: scene.target.stream.clone(),
            subjects: scene.target.subjects.clone(),
            duplicate_window: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("a stream with a short window");

    scene.connect().await.close().await;
    let mut stream = scene
        .jetstream
        .get_stream(&scene.target.stream)
        .await
        .expect("still there");
    let config = stream.info().await.expect("info").config.clone();
    assert_eq!(config.duplicate_window, Duration::from_secs(120));
    assert_eq!(config.max_age, Duration::from_secs(600));
    scene.clean_up().await;
}

#[tokio::test]
async fn a_subject_no_stream_captures_is_a_topology_error() {
    let scene = Scene::new().await;
    let publisher = scene.connect().await;
    let stray = format!("ferry-test-stray-{}.orders", Uuid::new_v4().simple());
    let error = publisher
        .publish(&[small(0, &stray)])
        .await
        .expect_err("no stream listens");
    assert!(matches!(error, BrokerError::Topology { .. }), "{error:?}");
    assert!(error.to_string().contains(&stray), "{error}");
    publisher.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn a_wildcard_subject_is_rejected_without_sending() {
    let scene = Scene::new().await;
    let publisher = scene.connect().await;
    let wildcard = format!("{}.*", scene.subject);
    let outcomes = publisher
        .publish(&[small(0, &wildcard), small(1, &scene.subject)])
        .await
        .expect("published");
    assert!(
        matches!(&outcomes[0], Outcome::Rejected(reason) if reason.contains("not a NATS subject")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], Outcome::Confirmed);
    assert_eq!(scene.stored_count().await, 1);
    publisher.close().await;
    scene.clean_up().await;
}

#[tokio::test]
async fn publish_raw_stores_every_message_in_order() {
    let scene = Scene::new().await;
    scene.connect().await.close().await;
    let messages: Vec<Envelope> = (0..1_200).map(|n| small(n, &scene.subject)).collect();
    publish_raw(URL, &scene.target, &messages)
        .await
        .expect("the raw client publishes");
    let received = scene.receive(messages.len()).await;
    let ids: Vec<&str> = received
        .iter()
        .map(|m| header(m, "ce-id").expect("ce-id"))
        .collect();
    let sent: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, sent);
    scene.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_on_one_publisher_are_all_stored() {
    let scene = Scene::new().await;
    let publisher = scene.connect().await;
    let batches: Vec<Vec<Envelope>> = (0..4)
        .map(|_| (0..1_500).map(|n| small(n, &scene.subject)).collect())
        .collect();
    let results =
        futures::future::join_all(batches.iter().map(|batch| publisher.publish(batch))).await;
    for outcomes in results {
        assert_eq!(
            outcomes.expect("the batch is published"),
            vec![Outcome::Confirmed; 1_500]
        );
    }
    assert_eq!(scene.stored_count().await, 6_000);
    publisher.close().await;
    scene.clean_up().await;
}
