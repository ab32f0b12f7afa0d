//! Which parents a change to a referenced object wakes (`watch::dependents`), for the
//! example pipelines.

use ferry::operator::watch::{Referenced, dependents};
use serde_json::{Value, json};

use super::fixtures::*;

#[test]
fn a_changed_broker_topic_maps_to_every_parent_that_uses_it() {
    let api = orders();
    let catalog = catalog(&api, "shop");
    let names = |changed: Referenced| {
        let found = dependents(&changed, "shop", &catalog);
        let mut names: Vec<String> = found
            .outbox_sources
            .iter()
            .map(|r| format!("OutboxSource/{}", r.name))
            .chain(
                found
                    .consumers
                    .iter()
                    .map(|r| format!("Consumer/{}", r.name)),
            )
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(Referenced::BrokerTopic("orders".into())),
        ["Consumer/inventory", "OutboxSource/orders"]
    );
    assert_eq!(
        names(Referenced::RetryPolicy("publish-retries".into())),
        ["OutboxSource/orders"]
    );
    assert_eq!(
        names(Referenced::DeadLetterQueue("inventory-dead-letters".into())),
        ["Consumer/inventory"]
    );
    // Through the topic both use.
    assert_eq!(
        names(Referenced::Secret("rabbitmq".into())),
        ["Consumer/inventory", "OutboxSource/orders"]
    );
    assert!(names(Referenced::BrokerTopic("unused".into())).is_empty());
    assert!(
        dependents(
            &Referenced::BrokerTopic("orders".into()),
            "elsewhere",
            &catalog
        )
        .outbox_sources
        .is_empty()
    );
}

#[test]
fn a_topic_used_only_through_a_dead_letter_queue_wakes_its_consumer() {
    let api = nats_billing();
    edit(&api, "Consumer", "default", "billing", |consumer| {
        consumer["spec"]["deadLetterQueueRef"] = json!({"name": "billing-dead-letters"});
    });
    let catalog = catalog(&api, "default");
    let found = dependents(
        &Referenced::BrokerTopic("orders-redis".into()),
        "default",
        &catalog,
    );
    let names: Vec<&str> = found.consumers.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["billing"]);
    let value: Value = field(
        &api,
        "Consumer",
        "default",
        "billing",
        "/spec/topicRef/name",
    );
    assert_eq!(value, json!("orders-nats"));
}
