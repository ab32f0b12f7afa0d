//! Every example manifest passes the CRD schemas, the CEL rules and Ferry's own validation.

use std::path::PathBuf;

use ferry::{
    api::{Kind, admission::Admission},
    manifest::{self, admit},
    validate::SecretCheck,
};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// OutboxSources, BrokerTopics, RetryPolicies, DeadLetterQueues, Consumers and Secrets.
fn object_counts(catalog: &ferry::validate::Catalog) -> [usize; 6] {
    [
        catalog.outbox_sources.len(),
        catalog.broker_topics.len(),
        catalog.retry_policies.len(),
        catalog.dead_letter_queues.len(),
        catalog.consumers.len(),
        catalog.secrets.len(),
    ]
}

#[test]
fn orders_pipeline_example_is_valid_with_its_secrets() {
    let documents = manifest::load(&[examples().join("orders")]).expect("example loads");
    let admitted = admit(&documents, "default", SecretCheck::Check);
    let problems: Vec<String> = admitted.problems.iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(admitted.ignored.is_empty(), "{:?}", admitted.ignored);
    assert_eq!(
        object_counts(&admitted.catalog),
        [1, 1, 2, 2, 1, 3],
        "the orders example should define one pipeline end to end"
    );
}

#[test]
fn quickstart_is_one_valid_pipeline_with_its_secret() {
    let documents = manifest::load(&[examples().join("quickstart")]).expect("example loads");
    let admitted = admit(&documents, "default", SecretCheck::Check);
    let problems: Vec<String> = admitted.problems.iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(object_counts(&admitted.catalog), [1, 1, 2, 1, 1, 1]);
}

#[test]
fn every_example_passes_the_generated_schemas_and_ferry_validation() {
    let documents = manifest::load(&[examples()]).expect("examples load");
    let admission = Admission::new();
    let mut seen = std::collections::BTreeSet::new();
    for document in &documents {
        let kind = document.value["kind"].as_str().unwrap_or_default();
        if let Some(kind) = Kind::from_kind_name(kind) {
            seen.insert(kind);
            let errors = admission.check(kind, &document.value);
            assert!(errors.is_empty(), "{}: {errors:#?}", document.origin);
        }
    }
    assert_eq!(
        seen.len(),
        Kind::ALL.len(),
        "examples should show every kind, saw {seen:?}"
    );
    let admitted = admit(&documents, "default", SecretCheck::Skip);
    let problems: Vec<String> = admitted.problems.iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_orders_consumer_resolves_into_a_config_without_secret_values() {
    let documents = manifest::load(&[examples().join("orders")]).expect("example loads");
    let admitted = admit(&documents, "default", SecretCheck::Skip);
    let config = ferry::config::resolve_consumer(
        &admitted.catalog,
        "shop",
        "inventory",
        &ferry::config::secret_from_env,
    )
    .expect("the inventory consumer resolves");
    assert_eq!(config.consumer.group(), "ferry.shop.inventory");
    assert_eq!(config.event_types, ["order.created", "order.cancelled"]);
    assert_eq!(config.sink.timeout, ferry::api::Duration::from_secs(10));
    assert!(config.dead_letter.is_some() && config.idempotency.is_some());
    let yaml = ferry::config::to_yaml(&config).expect("config YAML");
    assert!(yaml.contains("env: FERRY_SECRET_"), "{yaml}");
    let round_trip: ferry::config::ConsumerConfig =
        ferry::config::from_yaml(&yaml).expect("the YAML reads back");
    assert_eq!(round_trip, config);
}
