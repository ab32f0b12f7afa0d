//! The reconcile driver against the in-memory API (`MemoryApi`): what it applies and deletes
//! for the example pipeline, what it does with an invalid spec or a missing reference, and which
//! parents a change to a referenced object wakes.

#[path = "operator_reconcile/dependents.rs"]
mod dependents;
#[path = "operator_reconcile/fixtures.rs"]
mod fixtures;

use ferry::{
    operator::{
        api::{Call, EventType, MemoryApi},
        build::{CONFIG_HASH_ANNOTATION, ChildKind},
        reconcile::{Next, Outcome, reconcile_consumer, reconcile_outbox_source},
    },
    validate::FieldError,
};
use serde_json::json;

use fixtures::*;

async fn reconcile_orders(api: &MemoryApi) -> Outcome {
    reconcile_outbox_source(api, "shop", "orders", &settings())
        .await
        .expect("no API call fails")
}

/// How many status writes `calls` holds.
fn statuses_written(calls: &[Call]) -> usize {
    calls
        .iter()
        .filter(|call| matches!(call, Call::ApplyStatus { .. }))
        .count()
}

fn fields(outcome: &Outcome) -> Vec<&FieldError> {
    outcome
        .invalid()
        .map(|error| error.field_errors().iter().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn reconciling_an_outbox_source_applies_exactly_the_children_the_build_layer_gives() {
    let api = orders();
    let outcome = reconcile_orders(&api).await;

    let expected = bodies(&relay_children(&api, "shop", "orders"));
    let calls = api.calls();
    assert_eq!(applied(&calls), expected);
    let kinds: Vec<ChildKind> = expected.iter().map(|(kind, _, _)| *kind).collect();
    assert_eq!(
        kinds,
        ChildKind::ALL,
        "two replicas: a disruption budget too"
    );
    assert!(deleted(&calls).is_empty());
    assert_eq!(outcome.applied().len(), 4);
    assert_eq!(outcome.next(), Next::Resync);
    for (kind, name, body) in expected {
        let stored = api
            .get(kind.as_str(), "shop", &name)
            .expect("the child is stored");
        assert_eq!(stored, body, "{} {name}", kind.as_str());
    }
}

#[tokio::test]
async fn reconciling_a_consumer_applies_exactly_the_children_the_build_layer_gives() {
    let api = orders();
    let outcome = reconcile_consumer(&api, "shop", "inventory", &settings())
        .await
        .expect("no API call fails");
    assert!(outcome.invalid().is_none(), "{:?}", outcome.invalid());
    let expected = bodies(&consumer_children(&api, "shop", "inventory"));
    assert_eq!(applied(&api.calls()), expected);
    assert_eq!(
        api.objects("Deployment", "shop").len(),
        1,
        "only the consumer's Deployment"
    );
}

#[tokio::test]
async fn every_child_is_controlled_by_its_resource_with_the_resources_uid() {
    let api = orders();
    reconcile_orders(&api).await;
    let uid = field(&api, "OutboxSource", "shop", "orders", "/metadata/uid");
    for kind in ChildKind::ALL {
        let owners = field(
            &api,
            kind.as_str(),
            "shop",
            "orders-relay",
            "/metadata/ownerReferences",
        );
        assert_eq!(
            owners,
            json!([{
                "apiVersion": "ferry.dev/v1alpha1",
                "kind": "OutboxSource",
                "name": "orders",
                "uid": uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }]),
            "{}",
            kind.as_str()
        );
    }
}

#[tokio::test]
async fn a_second_reconcile_of_an_unchanged_resource_writes_nothing() {
    let api = orders();
    let built = bodies(&relay_children(&api, "shop", "orders"));
    reconcile_orders(&api).await;
    let first = api.take_calls();
    assert_eq!(applied(&first), built);
    assert_eq!(statuses_written(&first), 1, "the first status is written");

    let outcome = reconcile_orders(&api).await;
    let second = api.take_calls();

    let child_writes: Vec<&Call> = second.iter().filter(|c| c.writes_a_child()).collect();
    assert!(child_writes.is_empty(), "{child_writes:#?}");
    assert_eq!(statuses_written(&second), 0, "the status settled");
    assert!(!second.iter().any(Call::is_write), "{second:#?}");
    assert!(outcome.applied().is_empty());
    assert_eq!(outcome.unchanged().len(), 4);
    // Built again from the unchanged resource, the children are byte for byte the same.
    assert_eq!(bodies(&relay_children(&api, "shop", "orders")), built);
    for (kind, name, body) in built {
        let stored = api.get(kind.as_str(), "shop", &name).expect("stored");
        assert_eq!(stored, body, "{} {name}", kind.as_str());
    }
}

#[tokio::test]
async fn a_child_edited_by_hand_is_reapplied_only_once_the_resource_changes() {
    let api = orders();
    reconcile_orders(&api).await;
    edit(&api, "Service", "shop", "orders-relay", |service| {
        service["spec"]["type"] = json!("NodePort");
    });
    api.take_calls();

    reconcile_orders(&api).await;
    assert!(
        applied(&api.take_calls()).is_empty(),
        "the hash still matches"
    );
    assert_eq!(
        field(&api, "Service", "shop", "orders-relay", "/spec/type"),
        json!("NodePort")
    );

    edit(&api, "OutboxSource", "shop", "orders", |source| {
        source["spec"]["relay"]["image"] = json!("ghcr.io/ferry-dev/ferry:0.2.0");
    });
    reconcile_orders(&api).await;
    let kinds: Vec<ChildKind> = applied(&api.take_calls())
        .into_iter()
        .map(|(kind, _, _)| kind)
        .collect();
    assert_eq!(
        kinds,
        [ChildKind::Deployment],
        "only the Deployment changed"
    );
}

#[tokio::test]
async fn scaling_from_three_replicas_to_one_deletes_the_disruption_budget() {
    let api = orders();
    edit(&api, "OutboxSource", "shop", "orders", |source| {
        source["spec"]["relay"]["replicas"] = json!(3);
    });
    reconcile_orders(&api).await;
    assert!(
        api.get("PodDisruptionBudget", "shop", "orders-relay")
            .is_some()
    );
    api.take_calls();

    edit(&api, "OutboxSource", "shop", "orders", |source| {
        source["spec"]["relay"]["replicas"] = json!(1);
    });
    let outcome = reconcile_orders(&api).await;

    let calls = api.calls();
    assert_eq!(
        deleted(&calls),
        [(ChildKind::PodDisruptionBudget, "orders-relay".to_owned())]
    );
    let built = bodies(&relay_children(&api, "shop", "orders"));
    assert_eq!(built.len(), 3, "no budget for one pod");
    assert_eq!(
        applied(&calls),
        [built[1].clone()],
        "only the Deployment's replicas changed"
    );
    assert!(
        api.get("PodDisruptionBudget", "shop", "orders-relay")
            .is_none()
    );
    assert_eq!(outcome.deleted().len(), 1);
    assert_eq!(
        field(&api, "Deployment", "shop", "orders-relay", "/spec/replicas"),
        json!(1)
    );
}

#[tokio::test]
async fn suspend_scales_the_workload_to_zero_and_drops_the_disruption_budget() {
    let api = orders();
    reconcile_orders(&api).await;
    edit(&api, "OutboxSource", "shop", "orders", |source| {
        source["spec"]["suspend"] = json!(true);
    });
    let outcome = reconcile_orders(&api).await;

    let Outcome::Applied(applied) = &outcome else {
        panic!("a suspended resource is still applied: {outcome:?}");
    };
    assert!(applied.suspended());
    assert_eq!(applied.replicas(), 0);
    assert_eq!(
        field(&api, "Deployment", "shop", "orders-relay", "/spec/replicas"),
        json!(0)
    );
    assert!(
        api.get("PodDisruptionBudget", "shop", "orders-relay")
            .is_none()
    );
    assert!(api.get("ConfigMap", "shop", "orders-relay").is_some());
}

#[tokio::test]
async fn a_missing_broker_topic_names_the_field_waits_for_a_change_and_applies_nothing() {
    let api = orders();
    api.remove("BrokerTopic", "shop", "orders");
    let outcome = reconcile_orders(&api).await;

    let error = outcome.invalid().expect("the outcome says why");
    assert_eq!(error.category(), "missing_reference");
    assert!(!error.is_transient());
    assert_eq!(outcome.next(), Next::WaitForChange);
    let fields = fields(&outcome);
    assert!(
        fields
            .iter()
            .any(|e| e.field == "spec.routes[0].topicRef.name" && e.message.contains("\"orders\"")),
        "{fields:?}"
    );
    let calls = api.calls();
    assert!(!calls.iter().any(Call::writes_a_child), "{calls:#?}");
    assert!(api.objects("Deployment", "shop").is_empty());

    let events: Vec<_> = calls
        .iter()
        .filter_map(|call| match call {
            Call::Event(event) => Some(event),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].type_, EventType::Warning);
    assert_eq!(events[0].reason, "MissingReference");
    assert_eq!(events[0].regarding.name.as_deref(), Some("orders"));
    assert!(
        events[0].note.contains("spec.routes[0].topicRef.name"),
        "{}",
        events[0].note
    );
}

#[tokio::test]
async fn an_invalid_spec_keeps_the_running_workload_and_deletes_nothing() {
    let api = orders();
    reconcile_orders(&api).await;
    api.take_calls();
    // The API server's schema would refuse this; an object stored under an older schema is not
    // checked again, so Ferry's own checks must catch it.
    edit(&api, "OutboxSource", "shop", "orders", |source| {
        source["spec"]["capture"]["batchSize"] = json!(1_000_000);
    });
    let outcome = reconcile_orders(&api).await;

    let error = outcome.invalid().expect("the outcome says why");
    assert_eq!(error.category(), "invalid_spec");
    assert!(
        fields(&outcome)
            .iter()
            .any(|e| e.field == "spec.capture.batchSize"),
        "{:?}",
        fields(&outcome)
    );
    assert!(!api.calls().iter().any(Call::writes_a_child));
    assert!(api.get("Deployment", "shop", "orders-relay").is_some());
}

#[tokio::test]
async fn a_rule_across_objects_about_the_resources_own_field_is_an_invalid_spec() {
    let api = nats_billing();
    edit(&api, "Consumer", "default", "billing", |consumer| {
        consumer["spec"]["ordering"] = json!("PerKey");
        consumer["spec"]["workload"] = json!({"replicas": 2});
    });
    let outcome = reconcile_consumer(&api, "default", "billing", &settings())
        .await
        .expect("no API call fails");
    let error = outcome.invalid().expect("the outcome says why");
    assert_eq!(error.category(), "invalid_spec", "{error}");
    assert!(
        fields(&outcome)
            .iter()
            .any(|e| e.field == "spec.workload.replicas"),
        "{error}"
    );
}

#[tokio::test]
async fn a_missing_secret_key_names_the_key_field() {
    let api = orders();
    edit(&api, "OutboxSource", "shop", "orders", |source| {
        source["spec"]["database"]["connection"]["secretRef"]["key"] = json!("dsn");
    });
    let outcome = reconcile_orders(&api).await;
    let error = outcome.invalid().expect("the outcome says why");
    assert_eq!(error.category(), "missing_reference", "{error}");
    assert!(
        fields(&outcome)
            .iter()
            .any(|e| e.field == "spec.database.connection.secretRef.key"),
        "{error}"
    );
}

#[tokio::test]
async fn a_first_reconcile_reads_the_namespace_and_children_applies_four_children_then_the_status()
{
    let api = orders();
    reconcile_orders(&api).await;
    let verbs: Vec<String> = api
        .calls()
        .iter()
        .map(|call| match call {
            Call::Get { kind, .. } => format!("get {kind}"),
            Call::List { kind, .. } => format!("list {kind}"),
            Call::Apply { kind, .. } => format!("apply {}", kind.as_str()),
            Call::Delete { kind, .. } => format!("delete {}", kind.as_str()),
            Call::ListChildren { .. } => "list children".to_owned(),
            Call::ApplyStatus { kind, .. } => format!("apply status {kind}"),
            Call::Event(_) => "event".to_owned(),
        })
        .collect();
    assert_eq!(
        verbs,
        [
            "get OutboxSource",
            "list BrokerTopic",
            "list RetryPolicy",
            "list DeadLetterQueue",
            "list Secret",
            "list children",
            "apply ConfigMap",
            "apply Deployment",
            "apply Service",
            "apply PodDisruptionBudget",
            "get Deployment",
            "apply status OutboxSource",
        ]
    );
}

#[tokio::test]
async fn a_missing_secret_of_a_referenced_topic_is_named_with_the_topic() {
    let api = orders();
    api.remove("Secret", "shop", "rabbitmq");
    let outcome = reconcile_consumer(&api, "shop", "inventory", &settings())
        .await
        .expect("no API call fails");
    let error = outcome.invalid().expect("the outcome says why");
    assert_eq!(error.category(), "missing_reference");
    let text = error.to_string();
    assert!(
        text.contains("BrokerTopic shop/orders: spec.connection.secretRef.name"),
        "{text}"
    );
}

#[tokio::test]
async fn a_referenced_object_that_is_invalid_is_named_as_invalid_not_as_missing() {
    let api = orders();
    edit(&api, "RetryPolicy", "shop", "publish-retries", |policy| {
        policy["spec"]["multiplier"] = json!(0.5);
    });
    let outcome = reconcile_orders(&api).await;
    let fields = fields(&outcome);
    assert_eq!(fields.len(), 1, "{fields:?}");
    assert_eq!(fields[0].field, "spec.retryPolicyRef.name");
    assert!(
        fields[0]
            .message
            .contains("RetryPolicy \"publish-retries\" is invalid")
            && fields[0].message.contains("spec.multiplier"),
        "{}",
        fields[0].message
    );
}

#[tokio::test]
async fn a_changed_retry_policy_changes_the_config_map_and_the_pod_template_hash() {
    let api = orders();
    reconcile_orders(&api).await;
    let hash_pointer = format!(
        "/spec/template/metadata/annotations/{}",
        CONFIG_HASH_ANNOTATION.replace('/', "~1")
    );
    let config = |api: &MemoryApi| {
        field(
            api,
            "ConfigMap",
            "shop",
            "orders-relay",
            "/data/config.yaml",
        )
    };
    let (config_before, hash_before) = (
        config(&api),
        field(&api, "Deployment", "shop", "orders-relay", &hash_pointer),
    );
    assert!(hash_before.is_string());

    edit(&api, "RetryPolicy", "shop", "publish-retries", |policy| {
        policy["spec"]["maxBackoff"] = json!("45s");
    });
    reconcile_orders(&api).await;

    assert_ne!(config(&api), config_before);
    assert!(
        config(&api)
            .as_str()
            .is_some_and(|text| text.contains("45s")),
        "{}",
        config(&api)
    );
    assert_ne!(
        field(&api, "Deployment", "shop", "orders-relay", &hash_pointer),
        hash_before
    );
}

#[tokio::test]
async fn a_changed_retry_policy_reapplies_only_what_changed() {
    let api = orders();
    reconcile_orders(&api).await;
    reconcile_consumer(&api, "shop", "inventory", &settings())
        .await
        .expect("no API call fails");
    api.take_calls();

    edit(&api, "RetryPolicy", "shop", "publish-retries", |policy| {
        policy["spec"]["maxBackoff"] = json!("45s");
    });
    let relay = reconcile_orders(&api).await;
    let consumer = reconcile_consumer(&api, "shop", "inventory", &settings())
        .await
        .expect("no API call fails");

    let calls = api.calls();
    let built = bodies(&relay_children(&api, "shop", "orders"));
    assert_eq!(
        applied(&calls),
        built[..2],
        "the relay's ConfigMap and Deployment (its pod-template hash), nothing else"
    );
    assert!(deleted(&calls).is_empty());
    assert_eq!(relay.unchanged().len(), 2, "the Service and the budget");
    assert!(
        consumer.applied().is_empty(),
        "the consumer uses another policy"
    );
}

#[tokio::test]
async fn children_of_another_parent_are_never_deleted() {
    let api = orders();
    reconcile_orders(&api).await;
    reconcile_consumer(&api, "shop", "inventory", &settings())
        .await
        .expect("no API call fails");
    // A budget with the relay's labels that someone else controls.
    let mut foreign = api
        .get("PodDisruptionBudget", "shop", "orders-relay")
        .expect("the relay has a budget");
    foreign["metadata"]["name"] = json!("orders-relay-extra");
    foreign["metadata"]["ownerReferences"][0]["uid"] = json!("another-uid");
    api.insert(foreign);
    api.take_calls();

    edit(&api, "OutboxSource", "shop", "orders", |source| {
        source["spec"]["relay"]["replicas"] = json!(1);
    });
    reconcile_orders(&api).await;

    assert_eq!(
        deleted(&api.calls()),
        [(ChildKind::PodDisruptionBudget, "orders-relay".to_owned())]
    );
    assert!(
        api.get("PodDisruptionBudget", "shop", "orders-relay-extra")
            .is_some()
    );
    assert!(
        api.get("PodDisruptionBudget", "shop", "inventory-consumer")
            .is_some()
    );
    assert!(
        api.get("Deployment", "shop", "inventory-consumer")
            .is_some()
    );
}

#[tokio::test]
async fn a_deleted_resource_is_gone_and_nothing_is_written() {
    let api = orders();
    api.remove("OutboxSource", "shop", "orders");
    let outcome = reconcile_orders(&api).await;
    assert!(matches!(outcome, Outcome::Gone { .. }), "{outcome:?}");
    assert_eq!(outcome.next(), Next::WaitForChange);
    assert!(!api.calls().iter().any(Call::is_write));

    let api = orders();
    edit(&api, "OutboxSource", "shop", "orders", |source| {
        source["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    });
    assert!(matches!(reconcile_orders(&api).await, Outcome::Gone { .. }));
    assert!(!api.calls().iter().any(Call::is_write));
}

#[tokio::test]
async fn a_failed_api_call_is_a_transient_error_to_retry() {
    let api = orders();
    api.fail_next("apply", "connection refused");
    let error = reconcile_outbox_source(&api, "shop", "orders", &settings())
        .await
        .expect_err("the apply failed");
    assert_eq!(error.category(), "api");
    assert!(error.is_transient());
    assert!(
        error.to_string().contains("ConfigMap shop/orders-relay"),
        "{error}"
    );
}
