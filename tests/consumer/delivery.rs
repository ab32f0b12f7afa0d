//! Delivery per broker: effects exactly once with a flaky sink, poison messages dead-lettered
//! after exactly the allowed attempts, per-key order, retry waits within the policy.

use std::{collections::HashMap, time::Duration};

use ferry::api::Ordering;

use crate::{
    harness::{Broker, Pipeline, Running},
    sink::{Behaviour, Sink},
    support::sample_envelopes,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// 200 messages over 20 keys to a sink failing 30% of requests at random: every message takes
/// effect exactly once, every request carries its `Idempotency-Key` and CloudEvents headers.
pub async fn flaky_sink_gets_every_effect_once(broker: Broker) {
    let pipeline = Pipeline::new(broker);
    let sink = Sink::start(Behaviour {
        fail_ratio: 0.3,
        ..Behaviour::default()
    })
    .await;
    let consumer = Running::start(pipeline.config(&sink.url(), 50, Ordering::None)).await;
    let envelopes = sample_envelopes(200, 20);
    pipeline.publish(&envelopes).await;
    sink.wait_for(DEADLINE, "every message to take effect", |sink| {
        sink.delivered().len() == envelopes.len()
    })
    .await;
    consumer
        .wait_status("every message to be settled", |status| {
            status["deliveredTotal"] == 200
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sink.applied_twice(),
        Vec::<String>::new(),
        "effects applied twice"
    );
    let requests = sink.requests();
    assert!(
        requests.iter().any(|request| request.status == 500),
        "the sink failed nothing: the test proves nothing"
    );
    for request in &requests {
        assert_eq!(
            request.idempotency_key.as_deref(),
            Some(request.id.as_str())
        );
        assert_eq!(request.content_type.as_deref(), Some("application/json"));
    }
    assert_eq!(pipeline.dead_letters().await, Vec::new());
    let metrics = consumer.metrics().await;
    for line in [
        "ferry_consumer_delivered_total 200",
        "ferry_consumer_failed_attempts_total{category=\"http_status\"}",
        "ferry_consumer_sink_latency_seconds_count",
        "ferry_consumer_lag_messages",
    ] {
        assert!(
            metrics.contains(line),
            "/metrics lacks {line:?}:\n{metrics}"
        );
    }
    consumer.stop().await;
    pipeline.cleanup().await;
}

/// A message the sink always fails with 500 is dead-lettered after exactly `max attempts`; one
/// failing with 422 (not retryable) after one; the rest are delivered.
pub async fn poison_is_dead_lettered_after_max_attempts(broker: Broker) {
    let pipeline = Pipeline::new(broker);
    let envelopes = sample_envelopes(20, 5);
    let (retryable, permanent) = (envelopes[3].id.clone(), envelopes[11].id.clone());
    let sink = Sink::start(Behaviour {
        poison: HashMap::from([(retryable.clone(), 500), (permanent.clone(), 422)]),
        ..Behaviour::default()
    })
    .await;
    let consumer = Running::start(pipeline.config(&sink.url(), 4, Ordering::None)).await;
    pipeline.publish(&envelopes).await;
    consumer
        .wait_status("18 deliveries and 2 dead letters", |status| {
            status["deliveredTotal"] == 18 && status["deadLetteredTotal"] == 2
        })
        .await;
    // Counted from the dead-letter table, for the operator's DeadLetters condition.
    consumer
        .wait_status("a dead-letter depth of 2", |status| {
            status["deadLetterDepth"] == 2
        })
        .await;
    let mut expected = vec![
        (retryable.clone(), 4, "http_status".to_owned(), Some(500)),
        (permanent.clone(), 1, "http_status".to_owned(), Some(422)),
    ];
    expected.sort();
    assert_eq!(pipeline.dead_letters().await, expected);
    let attempts = |id: &str| sink.requests().iter().filter(|r| r.id == id).count();
    assert_eq!(attempts(&retryable), 4, "requests for the retryable poison");
    assert_eq!(attempts(&permanent), 1, "requests for the permanent poison");
    assert_eq!(sink.delivered().len(), 18);
    consumer.stop().await;
    pipeline.cleanup().await;
}

/// With `PerKey`, effects of one key happen in publish order although the sink fails at random.
pub async fn per_key_order_holds_through_failures(broker: Broker) {
    let pipeline = Pipeline::new(broker);
    let sink = Sink::start(Behaviour {
        fail_ratio: 0.3,
        ..Behaviour::default()
    })
    .await;
    let consumer = Running::start(pipeline.config(&sink.url(), 50, Ordering::PerKey)).await;
    let envelopes = sample_envelopes(120, 6);
    pipeline.publish(&envelopes).await;
    sink.wait_for(DEADLINE, "every message to take effect", |sink| {
        sink.delivered().len() == envelopes.len()
    })
    .await;
    let position: HashMap<&str, usize> = envelopes
        .iter()
        .enumerate()
        .map(|(n, envelope)| (envelope.id.as_str(), n))
        .collect();
    let mut last_per_key: HashMap<String, usize> = HashMap::new();
    for request in sink.requests().iter().filter(|r| r.status == 200) {
        let n = position[request.id.as_str()];
        if let Some(previous) = last_per_key.insert(request.key.clone(), n) {
            assert!(
                previous < n,
                "key {}: message {n} took effect after {previous}",
                request.key
            );
        }
    }
    assert_eq!(sink.applied_twice(), Vec::<String>::new());
    consumer.stop().await;
    pipeline.cleanup().await;
}

/// The waits between attempts of one message follow the policy (130 ms doubling to 1040 ms,
/// equal jitter: between half and all of each ceiling), with slack above for a loaded machine
/// and 15 ms below (RabbitMQ's delay queues may hand a copy out up to 10 ms early). The values
/// are off RabbitMQ's grid of delay queues on purpose: its copies must go round again for the
/// rest of their wait.
pub async fn retry_waits_follow_the_policy(broker: Broker) {
    let pipeline = Pipeline::new(broker);
    let envelopes = sample_envelopes(1, 1);
    let id = envelopes[0].id.clone();
    let sink = Sink::start(Behaviour {
        poison: HashMap::from([(id.clone(), 503)]),
        ..Behaviour::default()
    })
    .await;
    let mut config = pipeline.config(&sink.url(), 6, Ordering::None);
    config.retry.initial_backoff = ferry::api::Duration::from_millis(130);
    config.retry.max_backoff = ferry::api::Duration::from_millis(1040);
    let consumer = Running::start(config).await;
    pipeline.publish(&envelopes).await;
    consumer
        .wait_status("the dead letter", |status| status["deadLetteredTotal"] == 1)
        .await;
    let times: Vec<_> = sink.requests().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 6);
    for (retry, pair) in times.windows(2).enumerate() {
        let ceiling = Duration::from_millis((130u64 << retry).min(1040));
        let wait = pair[1] - pair[0];
        let least = ceiling / 2 - Duration::from_millis(15);
        assert!(
            wait >= least,
            "retry {}: waited {wait:?}, at least {least:?}",
            retry + 1
        );
        assert!(
            wait <= ceiling * 2 + Duration::from_millis(1500),
            "retry {}: waited {wait:?} for a ceiling of {ceiling:?}",
            retry + 1
        );
    }
    consumer.stop().await;
    pipeline.cleanup().await;
}

/// A poison message dead-lettered while the sink refuses it is delivered once by
/// `ferry dlq replay` after the sink is fixed; the letter is marked replayed.
pub async fn replay_delivers_a_dead_letter_once_the_sink_is_fixed(broker: Broker) {
    let pipeline = Pipeline::new(broker);
    let envelopes = sample_envelopes(10, 2);
    let poison = envelopes[4].id.clone();
    let sink = Sink::start(Behaviour {
        poison: HashMap::from([(poison.clone(), 422)]),
        ..Behaviour::default()
    })
    .await;
    let consumer = Running::start(pipeline.config(&sink.url(), 3, Ordering::None)).await;
    pipeline.publish(&envelopes).await;
    consumer
        .wait_status("9 deliveries and a dead letter", |status| {
            status["deliveredTotal"] == 9 && status["deadLetteredTotal"] == 1
        })
        .await;
    assert!(!sink.delivered().contains(&poison));
    sink.set(|behaviour| behaviour.poison.clear());
    let replay = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "dlq",
            "replay",
            "--url",
            crate::harness::POSTGRES,
            "--table",
        ])
        .arg(&pipeline.dead_letter_table)
        .args(["--origin", &pipeline.origin(), "--timeout", "60s"])
        .output()
        .await
        .expect("run ferry dlq replay");
    assert!(
        replay.status.success(),
        "ferry dlq replay: {}\n{}",
        String::from_utf8_lossy(&replay.stdout),
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(
        sink.delivered().contains(&poison),
        "the replay reached the sink"
    );
    assert_eq!(sink.applied_twice(), Vec::<String>::new());
    let letters = pipeline.dead_letter_statuses().await;
    assert_eq!(letters, [(poison, "replayed".to_owned(), 1)]);
    consumer.stop().await;
    pipeline.cleanup().await;
}
