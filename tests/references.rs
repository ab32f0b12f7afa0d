//! Checks only Ferry can make, because they span objects or need Ferry's own rules: references
//! that do not resolve, Secret keys that do not exist, dead letters that would loop, routes that
//! can never match, templates with unknown placeholders.

use std::path::Path;

use ferry::{
    manifest::{Admitted, admit, parse_documents},
    validate::SecretCheck,
};

fn admit_yaml(text: &str, secrets: SecretCheck) -> Admitted {
    let documents = parse_documents(Path::new("inline.yaml"), text).expect("valid YAML");
    admit(&documents, "shop", secrets)
}

fn problems(admitted: &Admitted) -> Vec<String> {
    admitted.problems.iter().map(ToString::to_string).collect()
}

const TOPIC: &str = "
apiVersion: ferry.dev/v1alpha1
kind: BrokerTopic
metadata: {name: orders}
spec:
  broker: rabbitmq
  connection: {secretRef: {name: rabbitmq}}
";

#[test]
fn a_route_to_a_missing_topic_names_the_route_and_the_topic() {
    let admitted = admit_yaml(
        "
apiVersion: ferry.dev/v1alpha1
kind: OutboxSource
metadata: {name: orders}
spec:
  database: {engine: postgres, connection: {secretRef: {name: db}}}
  routes:
    - {name: first, topicRef: {name: orders}, match: {eventType: 'a.*'}}
    - {name: second, topicRef: {name: shipments}}
  retryPolicyRef: {name: missing-policy}
",
        SecretCheck::Skip,
    );
    let problems = problems(&admitted);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("inline.yaml (document 1): OutboxSource shop/orders: spec.routes[0].topicRef.name: BrokerTopic \"orders\" not found in namespace \"shop\""), "{problems:#?}");
    assert!(
        problems[1].contains("spec.routes[1].topicRef.name: BrokerTopic \"shipments\" not found"),
        "{problems:#?}"
    );
    assert!(
        problems[2].contains("spec.retryPolicyRef.name: RetryPolicy \"missing-policy\" not found"),
        "{problems:#?}"
    );
}

#[test]
fn references_resolve_only_within_the_same_namespace() {
    let text = format!(
        "{TOPIC}---
apiVersion: ferry.dev/v1alpha1
kind: Consumer
metadata: {{name: inventory, namespace: billing}}
spec:
  topicRef: {{name: orders}}
  sink: {{url: 'http://inventory/events'}}
"
    );
    let problems = problems(&admit_yaml(&text, SecretCheck::Skip));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("Consumer billing/inventory: spec.topicRef.name: BrokerTopic \"orders\" not found in namespace \"billing\""));
}

#[test]
fn a_missing_secret_or_secret_key_is_reported_when_secrets_are_checked() {
    let text = format!(
        "{TOPIC}---
apiVersion: v1
kind: Secret
metadata: {{name: rabbitmq}}
stringData: {{uri: 'amqp://localhost'}}
---
apiVersion: ferry.dev/v1alpha1
kind: DeadLetterQueue
metadata: {{name: dead}}
spec:
  store: {{database: {{engine: sqlite, connection: {{secretRef: {{name: dlq-db}}}}}}}}
"
    );
    let checked = problems(&admit_yaml(&text, SecretCheck::Check));
    assert_eq!(checked.len(), 2, "{checked:#?}");
    assert!(checked.iter().any(|p| p.contains("BrokerTopic shop/orders: spec.connection.secretRef.key: Secret \"rabbitmq\" has no key \"url\" (it has: uri)")), "{checked:#?}");
    assert!(checked.iter().any(|p| p.contains("DeadLetterQueue shop/dead: spec.store.database.connection.secretRef.name: Secret \"dlq-db\" not found")), "{checked:#?}");
    assert!(problems(&admit_yaml(&text, SecretCheck::Skip)).is_empty());
}

#[test]
fn a_dead_letter_queue_that_publishes_into_the_consumers_own_topic_is_refused() {
    let text = format!(
        "{TOPIC}---
apiVersion: ferry.dev/v1alpha1
kind: DeadLetterQueue
metadata: {{name: loop}}
spec:
  store: {{topicRef: {{name: orders}}}}
---
apiVersion: ferry.dev/v1alpha1
kind: Consumer
metadata: {{name: inventory}}
spec:
  topicRef: {{name: orders}}
  sink: {{url: 'http://inventory/events'}}
  deadLetterQueueRef: {{name: loop}}
"
    );
    let problems = problems(&admit_yaml(&text, SecretCheck::Skip));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].contains(
            "spec.deadLetterQueueRef.name: DeadLetterQueue \"loop\" stores into topic \"orders\""
        ),
        "{problems:#?}"
    );
}

#[test]
fn a_route_after_a_catch_all_is_refused_as_unreachable() {
    let admitted = admit_yaml(
        "
apiVersion: ferry.dev/v1alpha1
kind: OutboxSource
metadata: {name: orders}
spec:
  database: {engine: postgres, connection: {secretRef: {name: db}}}
  routes:
    - {name: everything, topicRef: {name: orders}}
    - {name: shipments, topicRef: {name: orders}, match: {aggregateType: Shipment}}
",
        SecretCheck::Skip,
    );
    let problems = problems(&admitted);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("spec.routes[1]: route \"shipments\" can never match: route \"everything\" before it matches every row"), "{problems:#?}");
}

#[test]
fn templates_with_unknown_or_unbalanced_placeholders_are_refused() {
    let admitted = admit_yaml(
        "
apiVersion: ferry.dev/v1alpha1
kind: BrokerTopic
metadata: {name: orders}
spec:
  broker: rabbitmq
  connection: {secretRef: {name: rabbitmq}}
  rabbitmq: {routingKey: '{aggregate}.{eventType}'}
---
apiVersion: ferry.dev/v1alpha1
kind: BrokerTopic
metadata: {name: shipments}
spec:
  broker: nats
  connection: {secretRef: {name: nats}}
  nats: {subject: 'shipments.{eventType'}
",
        SecretCheck::Skip,
    );
    let problems = problems(&admitted);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].contains("spec.rabbitmq.routingKey: unknown placeholder {aggregate}"),
        "{problems:#?}"
    );
    assert!(
        problems[1].contains(
            "spec.nats.subject: \"shipments.{eventType\" has a '{' without a matching '}'"
        ),
        "{problems:#?}"
    );
}

#[test]
fn the_same_object_twice_is_reported_with_both_places() {
    let text = format!("{TOPIC}---{TOPIC}");
    let problems = problems(&admit_yaml(&text, SecretCheck::Skip));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("inline.yaml (document 2): BrokerTopic shop/orders: metadata.name: duplicate object; first defined in inline.yaml (document 1)"), "{problems:#?}");
}

#[test]
fn documents_of_other_kinds_are_skipped_and_wrong_ferry_versions_are_refused() {
    let admitted = admit_yaml(
        "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: ferry.dev/v1beta9
kind: BrokerTopic
metadata: {name: orders}
spec: {}
---
kind: BrokerTopic
metadata: {name: orders}
",
        SecretCheck::Skip,
    );
    assert_eq!(admitted.ignored.len(), 1);
    let problems = problems(&admitted);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].contains(
            "apiVersion: \"ferry.dev/v1beta9\" is not supported; use \"ferry.dev/v1alpha1\""
        ),
        "{problems:#?}"
    );
    assert!(
        problems[1].contains("(document 3)") && problems[1].contains("apiVersion: is required"),
        "{problems:#?}"
    );
}

#[test]
fn per_key_ordering_with_several_replicas_needs_rabbitmq() {
    let consumer = |broker: &str| {
        format!(
            "
apiVersion: ferry.dev/v1alpha1
kind: BrokerTopic
metadata: {{name: orders}}
spec:
  broker: {broker}
  connection: {{secretRef: {{name: broker}}}}
---
apiVersion: ferry.dev/v1alpha1
kind: Consumer
metadata: {{name: inventory}}
spec:
  topicRef: {{name: orders}}
  sink: {{url: 'http://inventory:8080/events'}}
  ordering: PerKey
  workload: {{replicas: 3}}
"
        )
    };
    let nats = problems(&admit_yaml(&consumer("nats"), SecretCheck::Skip));
    assert_eq!(nats.len(), 1, "{nats:#?}");
    assert!(
        nats[0].contains("Consumer shop/inventory: spec.workload.replicas: ordering PerKey keeps order within one replica"),
        "{nats:#?}"
    );
    assert!(nats[0].contains("nats consumer"), "{nats:#?}");
    let rabbitmq = problems(&admit_yaml(&consumer("rabbitmq"), SecretCheck::Skip));
    assert_eq!(
        rabbitmq,
        Vec::<String>::new(),
        "RabbitMQ keeps one replica active"
    );
}
