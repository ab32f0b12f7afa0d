//! `ReferencesResolved` and `Ready` for specs whose references do not resolve, from the
//! problems the real validation and build steps report.

use ferry::{
    api::status::condition_type,
    operator::{
        build::Workload,
        status::{Probe, Reason, References, compute_status},
    },
    validate::SecretCheck,
};

use super::fixtures::*;

#[test]
fn missing_broker_topic_sets_references_resolved_false_naming_the_object() {
    // As admission reports it for the whole catalog...
    let admitted = admit_yaml(SOURCE_WITH_MISSING_TOPIC, SecretCheck::Skip);
    let errors: Vec<_> = admitted.problems.iter().map(|p| p.error.clone()).collect();
    let from_admission = References::from_field_errors(&errors);
    // ...and as the build step reports it for the one resource.
    let source = admitted
        .catalog
        .outbox_sources
        .values()
        .next()
        .expect("the source is admitted");
    let error = Workload::relay(source, &admitted.catalog, "ferry:test")
        .expect_err("a missing topic stops the build");
    let from_build = References::from_build_error(&error);

    for references in [from_admission, from_build] {
        let mut observed = healthy_relay();
        observed.references = references;
        observed.deployment = None;
        observed.probe = Probe::NotProbed;
        let status = compute_status(&observed);
        let resolved = condition(&status.common, condition_type::REFERENCES_RESOLVED);
        assert_eq!(resolved.status, "False");
        assert_eq!(resolved.reason, "BrokerTopicNotFound");
        assert!(
            resolved.message.contains("spec.routes[0].topicRef.name")
                && resolved
                    .message
                    .contains("BrokerTopic \"orders\" not found"),
            "{}",
            resolved.message
        );
        let ready_condition = condition(&status.common, condition_type::READY);
        assert_eq!(ready_condition.status, "False");
        assert_eq!(ready_condition.reason, "BrokerTopicNotFound");
        assert_eq!(ready_condition.message, resolved.message);
    }
}

#[test]
fn each_kind_of_unresolved_reference_has_its_own_reason() {
    let cases = [
        (
            "
apiVersion: ferry.dev/v1alpha1
kind: OutboxSource
metadata: {name: orders}
spec:
  database: {engine: postgres, connection: {secretRef: {name: orders-db}}}
  routes: [{name: all, topicRef: {name: orders}}]
  retryPolicyRef: {name: missing-policy}
---
apiVersion: ferry.dev/v1alpha1
kind: BrokerTopic
metadata: {name: orders}
spec: {broker: rabbitmq, connection: {secretRef: {name: rabbitmq}}}
",
            SecretCheck::Skip,
            Reason::RetryPolicyNotFound,
        ),
        (
            "
apiVersion: ferry.dev/v1alpha1
kind: Consumer
metadata: {name: billing}
spec:
  topicRef: {name: orders}
  sink: {url: 'http://billing/events'}
  deadLetterQueueRef: {name: missing-dlq}
---
apiVersion: ferry.dev/v1alpha1
kind: BrokerTopic
metadata: {name: orders}
spec: {broker: rabbitmq, connection: {secretRef: {name: rabbitmq}}}
",
            SecretCheck::Skip,
            Reason::DeadLetterQueueNotFound,
        ),
        (
            "
apiVersion: ferry.dev/v1alpha1
kind: OutboxSource
metadata: {name: orders}
spec:
  database: {engine: postgres, connection: {secretRef: {name: orders-db}}}
  routes: [{name: all, topicRef: {name: orders}}]
---
apiVersion: ferry.dev/v1alpha1
kind: BrokerTopic
metadata: {name: orders}
spec: {broker: rabbitmq, connection: {secretRef: {name: rabbitmq}}}
---
apiVersion: v1
kind: Secret
metadata: {name: rabbitmq}
stringData: {url: 'amqp://guest:guest@rabbitmq/'}
",
            SecretCheck::Check,
            Reason::SecretNotFound,
        ),
        (
            "
apiVersion: ferry.dev/v1alpha1
kind: OutboxSource
metadata: {name: orders}
spec:
  database: {engine: postgres, connection: {secretRef: {name: orders-db, key: dsn}}}
  routes: [{name: all, topicRef: {name: orders}}]
---
apiVersion: ferry.dev/v1alpha1
kind: BrokerTopic
metadata: {name: orders}
spec: {broker: rabbitmq, connection: {secretRef: {name: rabbitmq}}}
---
apiVersion: v1
kind: Secret
metadata: {name: rabbitmq}
stringData: {url: 'amqp://guest:guest@rabbitmq/'}
---
apiVersion: v1
kind: Secret
metadata: {name: orders-db}
stringData: {url: 'postgres://orders@db/orders'}
",
            SecretCheck::Check,
            Reason::SecretKeyNotFound,
        ),
        (
            "
apiVersion: ferry.dev/v1alpha1
kind: Consumer
metadata: {name: billing}
spec:
  topicRef: {name: orders}
  sink: {url: 'http://billing/events'}
  ordering: PerKey
  workload: {replicas: 2}
---
apiVersion: ferry.dev/v1alpha1
kind: BrokerTopic
metadata: {name: orders}
spec: {broker: nats, connection: {secretRef: {name: nats}}, nats: {subject: orders}}
",
            SecretCheck::Skip,
            Reason::InvalidSpec,
        ),
    ];
    for (yaml, secrets, expected) in cases {
        let admitted = admit_yaml(yaml, secrets);
        let errors: Vec<_> = admitted.problems.iter().map(|p| p.error.clone()).collect();
        assert!(!errors.is_empty(), "expected a problem for {expected}");
        match References::from_field_errors(&errors) {
            References::Unresolved { reason, message } => {
                assert!(message.starts_with("spec."), "names the field: {message}");
                assert_eq!(reason, expected, "{message}")
            }
            References::Resolved => panic!("{expected}: resolved"),
        }
    }
}
