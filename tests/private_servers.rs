//! The private server helpers work: each starts, serves a real client, stops (connections are
//! refused) and restarts on the same port with its data kept.

mod support;

use std::time::Duration;

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
};
use sqlx::{Connection as _, PgConnection};
use support::servers::{
    PrivateNats, PrivateRedis, accepts, postgres::PrivatePostgres, rabbitmq::PrivateRabbitMq,
};

/// Dropping a server kills it: its port stops accepting within a deadline.
async fn assert_gone_after_drop(port: u16, server: impl Sized) {
    drop(server);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while accepts(port).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "port {port} still accepts after the drop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seconds a client gets to finish one call against a server that was just started.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn private_redis_restarts_with_its_data() {
    let mut redis = PrivateRedis::launch().await.expect("redis starts");
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let pong: String = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");
    let _: () = redis::cmd("SET")
        .arg("kept")
        .arg("yes")
        .query_async(&mut connection)
        .await
        .expect("SET");
    drop(connection);

    redis.stop().await.expect("redis stops");
    assert!(
        !accepts(redis.port()).await,
        "a stopped redis refuses connections"
    );

    redis.start().await.expect("redis restarts");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("reconnects");
    let kept: Option<String> = redis::cmd("GET")
        .arg("kept")
        .query_async(&mut connection)
        .await
        .expect("GET");
    assert_eq!(
        kept.as_deref(),
        Some("yes"),
        "the append-only file kept the key"
    );
}

#[tokio::test]
async fn private_nats_restarts_with_its_jetstream_streams() {
    let mut nats = PrivateNats::launch().await.expect("nats starts");
    let client = async_nats::connect(nats.url()).await.expect("connects");
    let jetstream = async_nats::jetstream::new(client.clone());
    let config = async_nats::jetstream::stream::Config {
        name: "KEPT".into(),
        subjects: vec!["kept.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    };
    jetstream
        .create_stream(config)
        .await
        .expect("stream created");
    let ack = jetstream
        .publish("kept.one", "hello".into())
        .await
        .expect("published");
    ack.await.expect("acknowledged");
    drop(jetstream);
    drop(client);

    nats.stop().await.expect("nats stops");
    assert!(
        !accepts(nats.port()).await,
        "a stopped nats refuses connections"
    );

    nats.start().await.expect("nats restarts");
    let jetstream =
        async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("reconnects"));
    let mut stream = tokio::time::timeout(CALL_TIMEOUT, jetstream.get_stream("KEPT"))
        .await
        .expect("in time")
        .expect("the stream survived the restart");
    let info = stream.info().await.expect("stream info");
    assert_eq!(
        info.state.messages, 1,
        "the stored message survived the restart"
    );
}

#[tokio::test]
async fn private_postgres_restarts_with_its_tables() {
    let mut postgres = PrivatePostgres::launch().await.expect("postgres starts");
    let mut connection = PgConnection::connect(&postgres.url())
        .await
        .expect("connects");
    sqlx::query("CREATE TABLE kept (value TEXT NOT NULL)")
        .execute(&mut connection)
        .await
        .expect("create");
    sqlx::query("INSERT INTO kept VALUES ('yes')")
        .execute(&mut connection)
        .await
        .expect("insert");
    connection.close().await.expect("closes");

    postgres.stop().await.expect("postgres stops");
    assert!(
        !accepts(postgres.port()).await,
        "a stopped postgres refuses connections"
    );

    postgres.start().await.expect("postgres restarts");
    let mut connection = PgConnection::connect(&postgres.url())
        .await
        .expect("reconnects");
    let value: String = sqlx::query_scalar("SELECT value FROM kept")
        .fetch_one(&mut connection)
        .await
        .expect("select");
    assert_eq!(value, "yes");
    connection.close().await.expect("closes");
    assert_gone_after_drop(postgres.port(), postgres).await;
}

#[tokio::test]
async fn private_rabbitmq_restarts_with_durable_queues_and_persistent_messages() {
    let mut rabbitmq = PrivateRabbitMq::launch().await.expect("rabbitmq starts");
    let connection = Connection::connect(&rabbitmq.url(), ConnectionProperties::default())
        .await
        .expect("connects");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            "kept".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("durable queue declared");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms on");
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            "".into(),
            "kept".into(),
            BasicPublishOptions::default(),
            b"hello",
            persistent,
        )
        .await
        .expect("published")
        .await
        .expect("confirmed");
    assert!(confirm.is_ack(), "the broker acknowledged the message");
    connection.close(200, "done".into()).await.expect("closes");

    rabbitmq.stop().await.expect("rabbitmq stops");
    assert!(
        !accepts(rabbitmq.port()).await,
        "a stopped rabbitmq refuses connections"
    );

    rabbitmq.start().await.expect("rabbitmq restarts");
    let connection = Connection::connect(&rabbitmq.url(), ConnectionProperties::default())
        .await
        .expect("reconnects");
    let channel = connection.create_channel().await.expect("channel");
    let message = channel
        .basic_get("kept".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("the persistent message survived the restart");
    assert_eq!(message.delivery.data, b"hello");
    connection.close(200, "done".into()).await.expect("closes");
    assert_gone_after_drop(rabbitmq.port(), rabbitmq).await;
}
