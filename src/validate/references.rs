//! Reference resolution: every `...Ref` must name an object of the right kind in the same
//! namespace, and every Secret key a connection names must exist.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;

use super::{FieldError, FieldPath};
use crate::api::{
    BrokerKind, BrokerTopic, Consumer, DeadLetterQueue, Kind, Ordering, OutboxSource, RetryPolicy,
    common::{Connection, ObjectRef},
};

/// An object's identity, for error messages and lookups.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

type ByName<T> = BTreeMap<(String, String), T>;

/// The objects that references are resolved against: what is in the cluster (operator) or in
/// the manifests given on the command line (standalone mode).
#[derive(Default, Debug)]
pub struct Catalog {
    pub outbox_sources: ByName<OutboxSource>,
    pub broker_topics: ByName<BrokerTopic>,
    pub retry_policies: ByName<RetryPolicy>,
    pub dead_letter_queues: ByName<DeadLetterQueue>,
    pub consumers: ByName<Consumer>,
    /// Secret name -> the keys it holds (values are never kept here).
    pub secrets: ByName<BTreeSet<String>>,
}

fn key_of(metadata: &kube::api::ObjectMeta) -> (String, String) {
    (
        metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        metadata.name.clone().unwrap_or_default(),
    )
}

impl Catalog {
    pub fn add_outbox_source(&mut self, object: OutboxSource) {
        self.outbox_sources.insert(key_of(&object.metadata), object);
    }

    pub fn add_broker_topic(&mut self, object: BrokerTopic) {
        self.broker_topics.insert(key_of(&object.metadata), object);
    }

    pub fn add_retry_policy(&mut self, object: RetryPolicy) {
        self.retry_policies.insert(key_of(&object.metadata), object);
    }

    pub fn add_dead_letter_queue(&mut self, object: DeadLetterQueue) {
        self.dead_letter_queues
            .insert(key_of(&object.metadata), object);
    }

    pub fn add_consumer(&mut self, object: Consumer) {
        self.consumers.insert(key_of(&object.metadata), object);
    }

    /// Records which keys a Secret holds, from `data` and `stringData`.
    pub fn add_secret(&mut self, secret: &Secret) {
        let keys = secret
            .data
            .iter()
            .flat_map(|data| data.keys())
            .chain(secret.string_data.iter().flat_map(|data| data.keys()))
            .cloned()
            .collect();
        self.secrets.insert(key_of(&secret.metadata), keys);
    }
}

/// Whether Secret references are checked: a GitOps repository often keeps its Secrets
/// elsewhere (sealed, or in a vault), so checking them is a choice of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretCheck {
    Check,
    Skip,
}

struct Resolver<'a> {
    catalog: &'a Catalog,
    namespace: &'a str,
    secrets: SecretCheck,
    errors: Vec<FieldError>,
}

impl Resolver<'_> {
    fn require<T>(
        &mut self,
        path: &FieldPath,
        kind: Kind,
        reference: &ObjectRef,
        objects: &ByName<T>,
    ) {
        if !objects.contains_key(&(self.namespace.to_owned(), reference.name.clone())) {
            self.errors.push(path.child("name").error(format!(
                "{kind} {:?} not found in namespace {:?}",
                reference.name, self.namespace
            )));
        }
    }

    fn secret(&mut self, path: &FieldPath, connection: &Connection) {
        if self.secrets == SecretCheck::Skip {
            return;
        }
        let reference = &connection.secret_ref;
        let secret_path = path.child("secretRef");
        match self
            .catalog
            .secrets
            .get(&(self.namespace.to_owned(), reference.name.clone()))
        {
            None => self.errors.push(secret_path.child("name").error(format!(
                "Secret {:?} not found in namespace {:?}",
                reference.name, self.namespace
            ))),
            Some(keys) if !keys.contains(&reference.key) => {
                self.errors.push(secret_path.child("key").error(format!(
                    "Secret {:?} has no key {:?} (it has: {})",
                    reference.name,
                    reference.key,
                    keys.iter().cloned().collect::<Vec<_>>().join(", ")
                )))
            }
            Some(_) => {}
        }
    }
}

/// Resolves every reference in the catalog. Returns the objects with problems and, for each,
/// every problem found.
pub fn check_references(
    catalog: &Catalog,
    secrets: SecretCheck,
) -> Vec<(ObjectId, Vec<FieldError>)> {
    let mut problems = Vec::new();
    let mut report = |kind: Kind, (namespace, name): &(String, String), errors: Vec<FieldError>| {
        if !errors.is_empty() {
            let id = ObjectId {
                kind: kind.to_string(),
                namespace: namespace.clone(),
                name: name.clone(),
            };
            problems.push((id, errors));
        }
    };
    let spec = FieldPath::root("spec");

    for (key, source) in &catalog.outbox_sources {
        let mut resolver = Resolver {
            catalog,
            namespace: &key.0,
            secrets,
            errors: Vec::new(),
        };
        resolver.secret(
            &spec.child("database").child("connection"),
            &source.spec.database.connection,
        );
        for (index, route) in source.spec.routes.iter().enumerate() {
            let path = spec.child("routes").index(index).child("topicRef");
            resolver.require(
                &path,
                Kind::BrokerTopic,
                &route.topic_ref,
                &catalog.broker_topics,
            );
        }
        if let Some(reference) = &source.spec.retry_policy_ref {
            resolver.require(
                &spec.child("retryPolicyRef"),
                Kind::RetryPolicy,
                reference,
                &catalog.retry_policies,
            );
        }
        if let Some(reference) = &source.spec.dead_letter_queue_ref {
            resolver.require(
                &spec.child("deadLetterQueueRef"),
                Kind::DeadLetterQueue,
                reference,
                &catalog.dead_letter_queues,
            );
        }
        report(Kind::OutboxSource, key, resolver.errors);
    }

    for (key, topic) in &catalog.broker_topics {
        let mut resolver = Resolver {
            catalog,
            namespace: &key.0,
            secrets,
            errors: Vec::new(),
        };
        resolver.secret(&spec.child("connection"), &topic.spec.connection);
        report(Kind::BrokerTopic, key, resolver.errors);
    }

    for (key, queue) in &catalog.dead_letter_queues {
        let mut resolver = Resolver {
            catalog,
            namespace: &key.0,
            secrets,
            errors: Vec::new(),
        };
        let store = spec.child("store");
        if let Some(database) = &queue.spec.store.database {
            resolver.secret(
                &store.child("database").child("connection"),
                &database.connection,
            );
        }
        if let Some(reference) = &queue.spec.store.topic_ref {
            resolver.require(
                &store.child("topicRef"),
                Kind::BrokerTopic,
                reference,
                &catalog.broker_topics,
            );
        }
        report(Kind::DeadLetterQueue, key, resolver.errors);
    }

    for (key, consumer) in &catalog.consumers {
        let mut resolver = Resolver {
            catalog,
            namespace: &key.0,
            secrets,
            errors: Vec::new(),
        };
        resolver.require(
            &spec.child("topicRef"),
            Kind::BrokerTopic,
            &consumer.spec.topic_ref,
            &catalog.broker_topics,
        );
        if let Some(idempotency) = &consumer.spec.idempotency {
            let path = spec.child("idempotency");
            if let Some(database) = &idempotency.database {
                resolver.secret(
                    &path.child("database").child("connection"),
                    &database.connection,
                );
            }
            if let Some(redis) = &idempotency.redis {
                resolver.secret(&path.child("redis").child("connection"), &redis.connection);
            }
        }
        if let Some(reference) = &consumer.spec.retry_policy_ref {
            resolver.require(
                &spec.child("retryPolicyRef"),
                Kind::RetryPolicy,
                reference,
                &catalog.retry_policies,
            );
        }
        if let Some(reference) = &consumer.spec.dead_letter_queue_ref {
            resolver.require(
                &spec.child("deadLetterQueueRef"),
                Kind::DeadLetterQueue,
                reference,
                &catalog.dead_letter_queues,
            );
            let dead_letter_topic = catalog
                .dead_letter_queues
                .get(&(key.0.clone(), reference.name.clone()))
                .and_then(|queue| queue.spec.store.topic_ref.as_ref());
            if dead_letter_topic == Some(&consumer.spec.topic_ref) {
                resolver.errors.push(spec.child("deadLetterQueueRef").child("name").error(format!(
                    "DeadLetterQueue {:?} stores into topic {:?}, the topic this consumer reads: dead letters would be delivered again",
                    reference.name, consumer.spec.topic_ref.name
                )));
            }
        }
        let topic_broker = catalog
            .broker_topics
            .get(&(key.0.clone(), consumer.spec.topic_ref.name.clone()))
            .map(|topic| topic.spec.broker);
        if consumer.spec.ordering == Ordering::PerKey
            && consumer.spec.workload.replicas > 1
            && topic_broker.is_some_and(|broker| broker != BrokerKind::Rabbitmq)
        {
            resolver.errors.push(spec.child("workload").child("replicas").error(format!(
                "ordering PerKey keeps order within one replica, and replicas of a {} consumer share messages without regard to their keys: set replicas to 1 (RabbitMQ consumers keep one replica active and the others on standby)",
                topic_broker.map_or("", |broker| broker.as_str())
            )));
        }
        report(Kind::Consumer, key, resolver.errors);
    }
    problems
}
