//! Rows that can never be published are dead-lettered with a reason; the rows behind them flow.

use std::time::Duration;

use ferry::{
    api::DatabaseEngine,
    config::{DatabaseConfig, DeadLetterConfig, RouteConfig, SecretSource},
};

use crate::{
    arrivals::{Reader, check},
    delivery::wait_for_pending,
    harness::{InProcessRelay, Source, sql_topic},
};

/// Writes rows the relay must refuse, between good rows of the same key, straight into the
/// outbox as a service in another language could.
async fn write_bad_rows(source: &Source) -> Vec<(String, String)> {
    let mut good = source.commit_orders(0, 5, 1).await;
    let big = format!("{{\"blob\": \"{}\"}}", "x".repeat(8 * 1024));
    let bad = [
        (
            "00000000-0000-4000-8000-000000000001",
            "Order",
            "order.created",
            "{not json",
        ),
        (
            "00000000-0000-4000-8000-000000000002",
            "Invoice",
            "invoice.created",
            "{}",
        ),
        (
            "00000000-0000-4000-8000-000000000003",
            "Order",
            "order.created",
            big.as_str(),
        ),
        ("not-a-uuid", "Order", "order.created", "{}"),
    ];
    for (id, aggregate_type, event_type, payload) in bad {
        source
            .execute(&format!(
                "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('{id}', '{aggregate_type}', 'customer-0', '{event_type}', '{payload}')",
                source.table
            ))
            .await;
    }
    good.extend(source.commit_orders(5, 5, 1).await);
    good
}

fn config(source: &Source, dead_letter: Option<DeadLetterConfig>) -> ferry::config::RelayConfig {
    let mut config =
        crate::harness::relay_config(source, sql_topic(&source.url, "ferry_queue", "orders"));
    config.routes = vec![RouteConfig {
        name: "orders".into(),
        aggregate_type: Some("Order".into()),
        event_type: Some("order.*".into()),
        topic: "orders".into(),
        routing_key: None,
    }];
    config.capture.max_message_bytes = 4096;
    config.dead_letter = dead_letter;
    config
}

#[tokio::test]
async fn malformed_unroutable_oversized_and_invalid_rows_are_dead_lettered_and_the_rest_flow() {
    let source = Source::new(DatabaseEngine::Sqlite).await;
    let good = write_bad_rows(&source).await;
    let dead_letters = DeadLetterConfig::Database(DatabaseConfig {
        engine: DatabaseEngine::Sqlite,
        url: SecretSource::Value(source.url.clone()),
        table: "dead_letters".into(),
    });
    let relay = InProcessRelay::start(config(&source, Some(dead_letters))).await;
    let reader = Reader::Sql {
        url: source.url.clone(),
        table: "ferry_queue".into(),
        queue: "orders".into(),
    };
    let arrived = reader.wait_for(good.len(), Duration::from_secs(30)).await;
    let result = check(&good, &arrived);
    assert_eq!((result.missing, result.duplicates), (0, 0), "{result:?}");
    assert!(result.out_of_order_keys.is_empty());
    assert_eq!(
        arrived.len(),
        good.len(),
        "only the good rows are published"
    );

    let status = wait_for_pending(&relay, 0).await;
    assert_eq!(status["deadLetteredTotal"], 4, "{status}");
    // Counted from the dead-letter table, for the operator's DeadLetters condition.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut status = relay.status().await;
    while status["deadLetterDepth"] != 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = relay.status().await;
    }
    assert_eq!(status["deadLetterDepth"], 4, "{status}");
    let pool = ferry::outbox::sqlite::open_pool(&source.url)
        .await
        .expect("pool");
    let letters: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT message_id, error_category, last_error, origin FROM dead_letters ORDER BY message_id").fetch_all(&pool).await.expect("dead letters");
    let categories: Vec<(&str, &str)> = letters
        .iter()
        .map(|(id, category, _, _)| (id.as_str(), category.as_str()))
        .collect();
    assert_eq!(
        categories,
        [
            ("00000000-0000-4000-8000-000000000001", "malformed_payload"),
            ("00000000-0000-4000-8000-000000000002", "unroutable"),
            ("00000000-0000-4000-8000-000000000003", "too_large"),
            ("not-a-uuid", "invalid_event"),
        ]
    );
    assert!(
        letters[1]
            .2
            .contains("no route matches aggregate type \"Invoice\""),
        "{letters:?}"
    );
    assert!(
        letters[2].2.contains("over the limit of 4096 bytes"),
        "{letters:?}"
    );
    assert!(
        letters
            .iter()
            .all(|l| l.3 == format!("outboxsource/test/{}", source.table))
    );
    let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}",
        source.table
    )))
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(left, 0, "dead-lettered rows leave the outbox");
    relay.stop().await;
}

#[tokio::test]
async fn without_a_dead_letter_queue_bad_rows_stay_marked_failed_and_the_rest_flow() {
    let source = Source::new(DatabaseEngine::Sqlite).await;
    let good = write_bad_rows(&source).await;
    let relay = InProcessRelay::start(config(&source, None)).await;
    let reader = Reader::Sql {
        url: source.url.clone(),
        table: "ferry_queue".into(),
        queue: "orders".into(),
    };
    let arrived = reader.wait_for(good.len(), Duration::from_secs(30)).await;
    assert_eq!(check(&good, &arrived).missing, 0);
    let status = wait_for_pending(&relay, 0).await;
    assert_eq!(status["failedRows"], 4, "{status}");
    let pool = ferry::outbox::sqlite::open_pool(&source.url)
        .await
        .expect("pool");
    let failures: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT failure FROM {} WHERE failed_at IS NOT NULL ORDER BY seq",
        source.table
    )))
    .fetch_all(&pool)
    .await
    .expect("failed rows");
    assert_eq!(failures.len(), 4);
    assert!(
        failures[0].starts_with("payload is not valid JSON"),
        "{failures:?}"
    );
    relay.stop().await;
}

/// RabbitMQ does not announce its `max_message_size`: it closes the channel when a message is
/// over it. The relay learns the limit from that refusal and dead-letters the message on the
/// next try, instead of sending it again for ever.
#[tokio::test]
async fn a_message_over_rabbitmqs_unannounced_size_limit_is_dead_lettered_and_the_rest_flow() {
    let rabbitmq = crate::support::servers::rabbitmq::PrivateRabbitMq::launch_with_config(
        "max_message_size = 4096",
    )
    .await
    .expect("private rabbitmq");
    let source = Source::new(DatabaseEngine::Sqlite).await;
    let mut good = source.commit_orders(0, 5, 1).await;
    let big = format!("{{\"blob\": \"{}\"}}", "x".repeat(8 * 1024));
    source
        .execute(&format!(
            "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('00000000-0000-4000-8000-0000000000b1', 'Order', 'customer-0', 'order.created', '{big}')",
            source.table
        ))
        .await;
    good.extend(source.commit_orders(5, 5, 1).await);

    let exchange = crate::support::unique_name("ferry_limit");
    let reader = Reader::rabbitmq(&rabbitmq.url(), &exchange).await;
    let mut topic = crate::harness::rabbitmq_topic(&exchange);
    topic.url = SecretSource::Value(rabbitmq.url());
    let mut config = crate::harness::relay_config(&source, topic);
    config.dead_letter = Some(DeadLetterConfig::Database(DatabaseConfig {
        engine: DatabaseEngine::Sqlite,
        url: SecretSource::Value(source.url.clone()),
        table: "dead_letters".into(),
    }));
    let relay = InProcessRelay::start(config).await;

    let status = wait_for_pending(&relay, 0).await;
    assert_eq!(status["deadLetteredTotal"], 1, "{status}");
    let arrived = reader.wait_for(good.len(), Duration::from_secs(60)).await;
    let result = check(&good, &arrived);
    assert_eq!(result.missing, 0, "{result:?}");
    // The refused batch's messages before the oversized one were confirmed before RabbitMQ
    // closed the channel, and are published again with the rest of the batch: at least once.
    assert!(result.duplicates <= 5, "{result:?}");
    assert!(result.out_of_order_keys.is_empty(), "{result:?}");
    let pool = ferry::outbox::sqlite::open_pool(&source.url)
        .await
        .expect("pool");
    let (id, category, error): (String, String, String) =
        sqlx::query_as("SELECT message_id, error_category, last_error FROM dead_letters")
            .fetch_one(&pool)
            .await
            .expect("one dead letter");
    assert_eq!(id, "00000000-0000-4000-8000-0000000000b1");
    assert_eq!(category, "too_large");
    assert!(error.contains("4096"), "{error}");
    relay.stop().await;
}
