//! RabbitMQ over TLS: an `amqps://` URL to a private node's TLS listener, trusted through
//! `SSL_CERT_FILE` (lapin verifies with rustls-platform-verifier, which on Linux loads its roots
//! with rustls-native-certs, which reads it).

use lapin::{
    Connection, ConnectionProperties, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};

use crate::{
    harness::{ORDERS, PASSWORD, Relay, Trust, UNKNOWN_ISSUER, manifests, sqlite_outbox, wait_for},
    support::servers::{rabbitmq::PrivateRabbitMq, tls::ServerTls},
};

/// The node's only user (`guest` is not created): one with a password to look for in the
/// relay's status and log.
const USER: &str = "ferry";
const EXCHANGE: &str = "tls-orders";
const QUEUE: &str = "tls-orders";

/// Declares the exchange the relay publishes to, as the relay would, and a queue that keeps
/// everything published to it, so that what arrives can be counted.
async fn queue_everything(url: &str) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("the test connects to the node's plain listener");
    let channel = connection.create_channel().await.expect("a channel");
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .expect("declare the exchange");
    channel
        .queue_declare(
            QUEUE.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare the queue");
    channel
        .queue_bind(
            QUEUE.into(),
            EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the queue");
    let _ = connection.close(200, "done".into()).await;
}

/// Messages waiting in the queue.
async fn queued(url: &str) -> Option<u64> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .ok()?;
    let channel = connection.create_channel().await.ok()?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(QUEUE.into(), passive, FieldTable::default())
        .await
        .ok()?;
    let _ = connection.close(200, "done".into()).await;
    Some(u64::from(queue.message_count()))
}

#[tokio::test]
async fn a_relay_publishes_to_a_tls_rabbitmq_it_trusts_and_refuses_one_it_does_not() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let tls = ServerTls::generate(dir.path());
    let rabbitmq = PrivateRabbitMq::launch_with_tls(
        &tls,
        &format!("default_user = {USER}\ndefault_pass = {PASSWORD}"),
    )
    .await
    .unwrap_or_else(|error| panic!("{error}"));
    let tls_port = rabbitmq.tls_port().expect("a TLS listener");
    let plain = format!("amqp://{USER}:{PASSWORD}@127.0.0.1:{}/%2f", rabbitmq.port());
    queue_everything(&plain).await;

    let database = sqlite_outbox(dir.path()).await;
    let url = format!("amqps://{USER}:{PASSWORD}@127.0.0.1:{tls_port}/%2f");
    let manifests = manifests(
        "sqlite",
        &database,
        &url,
        serde_json::json!({"broker": "rabbitmq", "rabbitmq": {"exchange": EXCHANGE}}),
    );

    let untrusting = Relay::start(dir.path(), &manifests, Trust::System);
    untrusting
        .assert_refused("brokerConnected", UNKNOWN_ISSUER)
        .await;
    assert_eq!(queued(&plain).await, Some(0));
    drop(untrusting);

    let trusting = Relay::start(dir.path(), &manifests, Trust::Authority(&tls.ca));
    let messages = wait_for(
        async || queued(&plain).await,
        |&messages| messages == Some(ORDERS),
    )
    .await;
    assert_eq!(messages, Some(ORDERS), "{}", trusting.report().await);
    trusting.assert_keeps_secrets().await;
}
