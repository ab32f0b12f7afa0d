//! Fixtures of the status tests: `/status` documents written by the relay's and the consumer's
//! own report code, Deployments as the API server returns them, and a healthy observation to
//! vary.

use std::{path::Path, sync::Arc, time::Duration};

use chrono::Utc;
use ferry::{
    api::{
        common::LagThresholds,
        status::{CommonStatus, condition_type},
    },
    broker::subscriber::BrokerLag,
    consumer::metrics::{ConsumerMetrics, ConsumerReport, Settled},
    manifest::{Admitted, admit, parse_documents},
    observe::{Health, http::StatusReport},
    operator::status::{
        ConsumerReading, DeadLetterQueueState, DeploymentState, Observed, Probe, Reading,
        References, RelayReading,
    },
    outbox::PendingStats,
    relay::metrics::{RelayMetrics, RelayReport},
    validate::SecretCheck,
};
use k8s_openapi::{
    api::apps::v1::Deployment,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

pub fn time(text: &str) -> Time {
    Time(text.parse().expect("a valid timestamp"))
}

pub fn t0() -> Time {
    time("2026-11-30T06:00:00Z")
}

pub fn t1() -> Time {
    time("2026-11-30T06:05:00Z")
}

pub fn t2() -> Time {
    time("2026-11-30T06:10:00Z")
}

/// What the relay's `/status` serves, from the relay's own `RelayReport`.
pub fn relay_status_json(pending: i64, oldest_age_seconds: i64, failed: i64) -> Value {
    let metrics = RelayMetrics::new(&mut Registry::default(), true);
    metrics.record_published("orders", 1500);
    let now = Utc::now();
    if let Some(half) = &metrics.half {
        half.record_table(
            ferry::transactional::HalfStats {
                prepared: 2,
                oldest_prepared_at: Some(now - chrono::Duration::seconds(9)),
                dead_lettered: 1,
            },
            now,
        );
    }
    metrics.record_dead_letter("no_route");
    metrics.record_pending(
        PendingStats {
            rows: pending,
            oldest: (pending > 0).then(|| now - chrono::Duration::seconds(oldest_age_seconds)),
            failed,
        },
        now,
    );
    let health = Arc::new(Health::default());
    health.set_database(true);
    health.set_broker(true);
    RelayReport { metrics, health }.status()
}

/// What the consumer's `/status` serves, from the consumer's own `ConsumerReport`.
pub fn consumer_status_json(lag: u64, oldest_age_seconds: Option<u64>) -> Value {
    let metrics = ConsumerMetrics::new(&mut Registry::default());
    for _ in 0..7 {
        metrics.record(Settled::Delivered);
    }
    for _ in 0..3 {
        metrics.record(Settled::Retried);
    }
    metrics.record(Settled::DeadLettered);
    metrics.record_lag(BrokerLag {
        messages: lag,
        oldest_age: oldest_age_seconds.map(Duration::from_secs),
    });
    let health = Arc::new(Health::default());
    health.set_database(true);
    health.set_broker(true);
    health.record_error(
        "sink",
        "POST http://billing/events: 503 Service Unavailable",
    );
    ConsumerReport { metrics, health }.status()
}

/// The probe's reading of `document`, through the bytes it would fetch.
pub fn read<R: Reading>(document: &Value) -> Probe<R> {
    let body = serde_json::to_vec(document).expect("JSON serializes");
    Probe::from_fetch::<_, String>(Ok(body))
}

/// A Deployment as the API server returns it: `replicas` wanted, `ready` of them ready and
/// available, all up to date, the controller caught up.
pub fn deployment(replicas: i32, ready: i32) -> Value {
    let available = if ready > 0 { "True" } else { "False" };
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "orders-relay", "namespace": "shop", "generation": 4},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/instance": "orders"}},
            "template": {"spec": {"containers": [{"name": "relay"}]}}
        },
        "status": {
            "observedGeneration": 4,
            "replicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": replicas,
            "conditions": [
                {"type": "Available", "status": available, "reason": "MinimumReplicasAvailable",
                 "message": "Deployment has minimum availability."},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                 "message": "ReplicaSet \"orders-relay-6d5f\" has successfully progressed."}
            ]
        }
    })
}

pub fn deployment_state(value: Value) -> DeploymentState {
    let deployment: Deployment = serde_json::from_value(value).expect("a Deployment");
    DeploymentState::from(&deployment)
}

pub fn thresholds(max_messages: Option<i64>, max_age: Option<&str>) -> LagThresholds {
    LagThresholds {
        max_messages,
        max_age: max_age.map(|age| age.parse().expect("a duration")),
    }
}

pub fn dead_letter_queue(depth: Option<i64>, alert_threshold: Option<i64>) -> DeadLetterQueueState {
    DeadLetterQueueState {
        name: "orders-dead-letters".to_owned(),
        depth,
        alert_threshold,
    }
}

/// An OutboxSource whose references resolve, whose two relay pods are available and whose
/// relay reports 5 rows waiting, the oldest 2 s old, well within its thresholds.
pub fn healthy_relay() -> Observed<RelayReading> {
    Observed {
        generation: Some(3),
        references: References::Resolved,
        suspended: false,
        deployment: Some(deployment_state(deployment(2, 2))),
        probe: read(&relay_status_json(5, 2, 0)),
        dead_letters: Some(dead_letter_queue(Some(0), Some(10))),
        lag: Some(thresholds(Some(100), Some("5m"))),
        previous: None,
        now: t0(),
    }
}

/// A Consumer as healthy as `healthy_relay`.
pub fn healthy_consumer() -> Observed<ConsumerReading> {
    Observed {
        generation: Some(1),
        references: References::Resolved,
        suspended: false,
        deployment: Some(deployment_state(deployment(1, 1))),
        probe: read(&consumer_status_json(4, Some(1))),
        dead_letters: Some(dead_letter_queue(Some(0), Some(10))),
        lag: Some(thresholds(Some(100), Some("5m"))),
        previous: None,
        now: t0(),
    }
}

/// The condition of `type_`, which must be there.
pub fn condition<'a>(common: &'a CommonStatus, type_: &str) -> &'a Condition {
    common
        .conditions
        .iter()
        .find(|condition| condition.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:#?}", common.conditions))
}

/// `(status, reason)` of the condition of `type_`.
pub fn state(common: &CommonStatus, type_: &str) -> (String, String) {
    let condition = condition(common, type_);
    (condition.status.clone(), condition.reason.clone())
}

pub fn ready(common: &CommonStatus) -> (String, String) {
    state(common, condition_type::READY)
}

pub fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_owned(), reason.to_owned())
}

/// Manifests admitted as `ferry validate` would, in namespace `shop`, Secrets not checked
/// unless `secrets` says so.
pub fn admit_yaml(text: &str, secrets: SecretCheck) -> Admitted {
    let documents = parse_documents(Path::new("inline.yaml"), text).expect("valid YAML");
    admit(&documents, "shop", secrets)
}

pub const SOURCE_WITH_MISSING_TOPIC: &str = "
apiVersion: ferry.dev/v1alpha1
kind: OutboxSource
metadata: {name: orders, namespace: shop, uid: 0b5e7c1a-4f3d-4c2b-9a8e-1d2c3b4a5f60}
spec:
  database: {engine: postgres, connection: {secretRef: {name: orders-db}}}
  routes:
    - {name: order-events, topicRef: {name: orders}}
";
