//! What `ferry run` will run: one relay per OutboxSource and one consumer per Consumer, each with
//! the config the operator would render (same resolution, same defaults), secrets taken from the
//! manifests or the environment. Pure apart from asking whether an environment variable is set.

use std::{cell::RefCell, collections::BTreeSet};

use crate::{
    api::common::SecretKeyRef,
    config::{self, ConsumerConfig, RelayConfig, SecretSource},
    manifest::{Admitted, Problem},
    validate::{FieldError, ObjectId},
};

use super::secrets::SecretValues;

/// A workload's resolved config.
#[derive(Clone, Debug)]
pub enum WorkloadConfig {
    Relay(Box<RelayConfig>),
    Consumer(Box<ConsumerConfig>),
}

/// One relay or consumer to run, and the object it comes from.
#[derive(Clone, Debug)]
pub struct Workload {
    pub object: ObjectId,
    pub config: WorkloadConfig,
}

impl Workload {
    /// `relay` or `consumer`, as the status lines call it.
    pub fn role(&self) -> &'static str {
        match self.config {
            WorkloadConfig::Relay(_) => "relay",
            WorkloadConfig::Consumer(_) => "consumer",
        }
    }

    /// `namespace/name`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.object.namespace, self.object.name)
    }

    /// Where messages come from and go to, in a few words (no secret: URLs are not shown).
    pub fn route(&self) -> String {
        match &self.config {
            WorkloadConfig::Relay(relay) => {
                let topics: Vec<String> = relay
                    .topics
                    .values()
                    .map(|topic| format!("{} ({})", topic.name, topic.broker().as_str()))
                    .collect();
                format!(
                    "{} table {} -> {}",
                    relay.database.engine.as_str(),
                    relay.database.table,
                    topics.join(", ")
                )
            }
            WorkloadConfig::Consumer(consumer) => format!(
                "{} ({}) -> {}",
                consumer.topic.name,
                consumer.topic.broker().as_str(),
                consumer.sink.url
            ),
        }
    }

    /// Gives the workload its own `/healthz`, `/readyz`, `/metrics` and `/status` address.
    pub fn set_listen(&mut self, address: std::net::SocketAddr) {
        match &mut self.config {
            WorkloadConfig::Relay(relay) => relay.http.listen = address,
            WorkloadConfig::Consumer(consumer) => consumer.http.listen = address,
        }
    }
}

/// Everything the manifests describe.
#[derive(Debug, Default)]
pub struct Plan {
    pub workloads: Vec<Workload>,
    /// Objects with `spec.suspend: true`: listed, not run.
    pub suspended: Vec<ObjectId>,
}

/// Resolves every OutboxSource and Consumer of `admitted`. Every problem is returned, each
/// naming the file, the object and the field; a secret that is neither in the manifests nor in
/// the environment is one of them, so nothing starts only to fail to connect.
pub fn plan(
    admitted: &Admitted,
    secrets: &SecretValues,
    env_is_set: &dyn Fn(&str) -> bool,
) -> Result<Plan, Vec<Problem>> {
    let catalog = &admitted.catalog;
    let mut plan = Plan::default();
    let mut problems = Vec::new();
    let objects = catalog
        .outbox_sources
        .iter()
        .map(|(key, source)| ("OutboxSource", key, source.spec.suspend))
        .chain(
            catalog
                .consumers
                .iter()
                .map(|(key, consumer)| ("Consumer", key, consumer.spec.suspend)),
        );
    for (kind, (namespace, name), suspended) in objects {
        let object = ObjectId {
            kind: kind.to_owned(),
            namespace: namespace.clone(),
            name: name.clone(),
        };
        if suspended {
            plan.suspended.push(object);
            continue;
        }
        let missing = RefCell::new(BTreeSet::new());
        let secret = |reference: &SecretKeyRef| {
            let source = secrets.source(namespace, reference);
            if let SecretSource::Env(variable) = &source
                && !env_is_set(variable)
            {
                missing.borrow_mut().insert((
                    reference.name.clone(),
                    reference.key.clone(),
                    variable.clone(),
                ));
            }
            source
        };
        let result = if kind == "OutboxSource" {
            config::resolve_relay(catalog, namespace, name, &secret)
                .map(|relay| WorkloadConfig::Relay(Box::new(relay)))
        } else {
            config::resolve_consumer(catalog, namespace, name, &secret)
                .map(|consumer| WorkloadConfig::Consumer(Box::new(consumer)))
        };
        let mut errors = result.as_ref().err().cloned().unwrap_or_default();
        errors.extend(missing.into_inner().into_iter().map(|(secret, key, variable)| {
            FieldError::new(
                "spec",
                format!(
                    "Secret {namespace}/{secret} (key {key}) is not among the manifests and \
                     {variable} is not set: add the Secret to the files, or export {variable}"
                ),
            )
        }));
        match result {
            Ok(config) if errors.is_empty() => plan.workloads.push(Workload { object, config }),
            _ => {
                let origin = admitted.origin_of(&object).cloned();
                problems.extend(errors.into_iter().map(|error| Problem {
                    origin: origin.clone(),
                    object: Some(object.clone()),
                    error,
                }));
            }
        }
    }
    if problems.is_empty() {
        Ok(plan)
    } else {
        Err(problems)
    }
}
