//! Which OutboxSources and Consumers to reconcile again when an object they use changes: a
//! pure map from a changed BrokerTopic, RetryPolicy, DeadLetterQueue or Secret to the parents
//! that reference it, directly or through another object (a Consumer whose DeadLetterQueue
//! stores into a BrokerTopic uses that topic and its Secret too).

use std::collections::BTreeSet;

use kube::runtime::reflector::ObjectRef;

use crate::{
    api::{
        BrokerTopicSpec, Consumer, ConsumerSpec, DeadLetterQueueSpec, OutboxSource,
        OutboxSourceSpec,
        common::{Connection, ObjectRef as SpecRef},
    },
    validate::{Catalog, FieldPath},
};

/// An object a parent can use, by kind and name (in the parent's namespace).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Referenced {
    BrokerTopic(String),
    RetryPolicy(String),
    DeadLetterQueue(String),
    Secret(String),
}

/// One reference in a spec: the field that holds it and what it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// As the validator names it: `spec.routes[0].topicRef.name`.
    pub field: String,
    pub target: Referenced,
}

struct Collect {
    references: Vec<Reference>,
}

impl Collect {
    fn new() -> Self {
        Self {
            references: Vec::new(),
        }
    }

    fn object(&mut self, path: &FieldPath, target: fn(String) -> Referenced, reference: &SpecRef) {
        self.references.push(Reference {
            field: path.child("name").as_str().to_owned(),
            target: target(reference.name.clone()),
        });
    }

    fn secret(&mut self, path: &FieldPath, connection: &Connection) {
        self.references.push(Reference {
            field: path.child("secretRef").child("name").as_str().to_owned(),
            target: Referenced::Secret(connection.secret_ref.name.clone()),
        });
    }
}

/// The references an OutboxSource makes itself.
pub fn outbox_source_references(spec: &OutboxSourceSpec) -> Vec<Reference> {
    let path = FieldPath::root("spec");
    let mut collect = Collect::new();
    collect.secret(
        &path.child("database").child("connection"),
        &spec.database.connection,
    );
    for (index, route) in spec.routes.iter().enumerate() {
        let route_path = path.child("routes").index(index).child("topicRef");
        collect.object(&route_path, Referenced::BrokerTopic, &route.topic_ref);
    }
    if let Some(reference) = &spec.retry_policy_ref {
        collect.object(
            &path.child("retryPolicyRef"),
            Referenced::RetryPolicy,
            reference,
        );
    }
    if let Some(reference) = &spec.dead_letter_queue_ref {
        let queue = path.child("deadLetterQueueRef");
        collect.object(&queue, Referenced::DeadLetterQueue, reference);
    }
    collect.references
}

/// The references a Consumer makes itself.
pub fn consumer_references(spec: &ConsumerSpec) -> Vec<Reference> {
    let path = FieldPath::root("spec");
    let mut collect = Collect::new();
    collect.object(
        &path.child("topicRef"),
        Referenced::BrokerTopic,
        &spec.topic_ref,
    );
    if let Some(idempotency) = &spec.idempotency {
        let store = path.child("idempotency");
        if let Some(database) = &idempotency.database {
            collect.secret(
                &store.child("database").child("connection"),
                &database.connection,
            );
        }
        if let Some(redis) = &idempotency.redis {
            collect.secret(&store.child("redis").child("connection"), &redis.connection);
        }
    }
    if let Some(reference) = &spec.retry_policy_ref {
        collect.object(
            &path.child("retryPolicyRef"),
            Referenced::RetryPolicy,
            reference,
        );
    }
    if let Some(reference) = &spec.dead_letter_queue_ref {
        let queue = path.child("deadLetterQueueRef");
        collect.object(&queue, Referenced::DeadLetterQueue, reference);
    }
    collect.references
}

fn broker_topic_references(spec: &BrokerTopicSpec) -> Vec<Reference> {
    let mut collect = Collect::new();
    collect.secret(
        &FieldPath::root("spec").child("connection"),
        &spec.connection,
    );
    collect.references
}

fn dead_letter_queue_references(spec: &DeadLetterQueueSpec) -> Vec<Reference> {
    let store = FieldPath::root("spec").child("store");
    let mut collect = Collect::new();
    if let Some(database) = &spec.store.database {
        collect.secret(
            &store.child("database").child("connection"),
            &database.connection,
        );
    }
    if let Some(reference) = &spec.store.topic_ref {
        collect.object(&store.child("topicRef"), Referenced::BrokerTopic, reference);
    }
    collect.references
}

/// Everything a parent with `direct` references uses in `namespace`: those objects, and what
/// the BrokerTopics and DeadLetterQueues among them reference in turn (as far as `catalog`
/// holds them).
pub fn dependencies(
    direct: &[Reference],
    namespace: &str,
    catalog: &Catalog,
) -> BTreeSet<Referenced> {
    let mut found = BTreeSet::new();
    let mut pending: Vec<Referenced> = direct.iter().map(|r| r.target.clone()).collect();
    while let Some(target) = pending.pop() {
        if !found.insert(target.clone()) {
            continue;
        }
        let key = |name: &String| (namespace.to_owned(), name.clone());
        let next = match &target {
            Referenced::BrokerTopic(name) => catalog
                .broker_topics
                .get(&key(name))
                .map(|topic| broker_topic_references(&topic.spec)),
            Referenced::DeadLetterQueue(name) => catalog
                .dead_letter_queues
                .get(&key(name))
                .map(|queue| dead_letter_queue_references(&queue.spec)),
            Referenced::RetryPolicy(_) | Referenced::Secret(_) => None,
        };
        pending.extend(next.into_iter().flatten().map(|r| r.target));
    }
    found
}

/// The parents to reconcile again after a change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dependents {
    pub outbox_sources: Vec<ObjectRef<OutboxSource>>,
    pub consumers: Vec<ObjectRef<Consumer>>,
}

/// Every OutboxSource and Consumer in `catalog` that uses `changed` in `namespace`, directly or
/// through another object, in name order. A reference to an object that does not exist yet
/// counts: creating it is the change the parent waits for.
pub fn dependents(changed: &Referenced, namespace: &str, catalog: &Catalog) -> Dependents {
    let uses = |direct: Vec<Reference>| dependencies(&direct, namespace, catalog).contains(changed);
    let in_namespace = |(ns, _): &&(String, String)| ns == namespace;
    Dependents {
        outbox_sources: catalog
            .outbox_sources
            .iter()
            .filter(|(key, _)| in_namespace(key))
            .filter(|(_, source)| uses(outbox_source_references(&source.spec)))
            .map(|((ns, name), _)| ObjectRef::new(name).within(ns))
            .collect(),
        consumers: catalog
            .consumers
            .iter()
            .filter(|(key, _)| in_namespace(key))
            .filter(|(_, consumer)| uses(consumer_references(&consumer.spec)))
            .map(|((ns, name), _)| ObjectRef::new(name).within(ns))
            .collect(),
    }
}
