//! The validate step, pure: the fetched objects admitted by Ferry's own checks (the same
//! `manifest::ferry_check` and `check_references` that `ferry validate` runs) into a
//! `Catalog`, or why the resource cannot be built.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{ReconcileError, fetch::Fetched};
use crate::{
    api::Kind,
    manifest,
    operator::watch::{self, Reference, Referenced},
    validate::{Catalog, FieldError, ObjectId, SecretCheck, check_references},
};

fn referenced(kind: &str, name: &str) -> Option<Referenced> {
    let name = name.to_owned();
    match Kind::from_kind_name(kind)? {
        Kind::BrokerTopic => Some(Referenced::BrokerTopic(name)),
        Kind::RetryPolicy => Some(Referenced::RetryPolicy(name)),
        Kind::DeadLetterQueue => Some(Referenced::DeadLetterQueue(name)),
        Kind::OutboxSource | Kind::Consumer => None,
    }
}

fn describe(target: &Referenced) -> String {
    match target {
        Referenced::BrokerTopic(name) => format!("BrokerTopic {name:?}"),
        Referenced::RetryPolicy(name) => format!("RetryPolicy {name:?}"),
        Referenced::DeadLetterQueue(name) => format!("DeadLetterQueue {name:?}"),
        Referenced::Secret(name) => format!("Secret {name:?}"),
    }
}

/// The resource's identity, for errors and events.
pub(super) fn object_id(fetched: &Fetched) -> ObjectId {
    ObjectId {
        kind: fetched.kind.to_string(),
        namespace: fetched.namespace.clone(),
        name: fetched.name.clone(),
    }
}

/// A catalog holding the resource and every valid object of its namespace it may reference,
/// after checking that each of its references (direct, or through a BrokerTopic or
/// DeadLetterQueue it uses) resolves to a valid object and an existing Secret key.
pub(super) fn validate(fetched: &Fetched) -> Result<Catalog, ReconcileError> {
    let parent = object_id(fetched);
    let mut catalog = Catalog::default();
    manifest::ferry_check(fetched.kind, &fetched.parent, &mut catalog)
        .map_err(ReconcileError::InvalidSpec)?;

    // Objects that fail their own checks stay out of the catalog, as in `ferry validate`.
    let mut rejected: BTreeMap<Referenced, Vec<FieldError>> = BTreeMap::new();
    for (kind, value) in &fetched.objects {
        if let Err(errors) = manifest::ferry_check(*kind, value, &mut catalog) {
            let name = value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            rejected.extend(referenced(kind.as_str(), name).map(|target| (target, errors)));
        }
    }
    for secret in &fetched.secrets {
        catalog.add_secret(secret);
    }

    let key = (fetched.namespace.clone(), fetched.name.clone());
    let direct: Vec<Reference> = match fetched.kind {
        Kind::OutboxSource => catalog
            .outbox_sources
            .get(&key)
            .map(|source| watch::outbox_source_references(&source.spec)),
        _ => catalog
            .consumers
            .get(&key)
            .map(|consumer| watch::consumer_references(&consumer.spec)),
    }
    .unwrap_or_default();
    let uses = watch::dependencies(&direct, &fetched.namespace, &catalog);

    let mut errors = Vec::new();
    for (id, problems) in check_references(&catalog, SecretCheck::Check) {
        if id == parent {
            // "not found" is wrong for an object that exists but is invalid: said below.
            let names_rejected = |error: &FieldError| {
                direct
                    .iter()
                    .any(|r| r.field == error.field && rejected.contains_key(&r.target))
            };
            errors.extend(problems.into_iter().filter(|e| !names_rejected(e)));
        } else if referenced(&id.kind, &id.name).is_some_and(|target| uses.contains(&target)) {
            errors.extend(
                problems
                    .into_iter()
                    .map(|error| FieldError::new("", format!("{id}: {error}"))),
            );
        }
    }
    for reference in &direct {
        if let Some(problems) = rejected.get(&reference.target) {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            errors.push(FieldError::new(
                reference.field.clone(),
                format!(
                    "{} is invalid: {}",
                    describe(&reference.target),
                    problems.join("; ")
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(catalog)
    } else if errors.iter().all(|error| about_a_reference(&direct, error)) {
        Err(ReconcileError::MissingReference(errors))
    } else {
        // `check_references` also holds rules across objects that are about the resource's own
        // fields (`spec.workload.replicas` with `ordering: PerKey` on a NATS topic).
        Err(ReconcileError::InvalidSpec(errors))
    }
}

/// Whether `error` is about a reference: on a reference's field (or a Secret reference's key),
/// or about an object the resource uses (those carry no field of the resource).
fn about_a_reference(direct: &[Reference], error: &FieldError) -> bool {
    error.field.is_empty()
        || direct.iter().any(|reference| {
            reference.field == error.field
                || (matches!(reference.target, Referenced::Secret(_))
                    && reference
                        .field
                        .strip_suffix(".name")
                        .map(|path| format!("{path}.key"))
                        == Some(error.field.clone()))
        })
}
