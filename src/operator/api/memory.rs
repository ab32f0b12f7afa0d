//! `ClusterApi` in memory, for tests and benchmarks: a store of JSON objects keyed by kind,
//! namespace and name, and a record of every call. A server-side apply is a JSON merge of the
//! applied object into the stored one (the operator is the only field manager in a test, so
//! the merge is what the API server would keep, except that a field the operator stops setting
//! stays until the object is replaced).

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
};

use async_trait::async_trait;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentCondition, DeploymentStatus},
        core::v1::Secret,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use serde_json::Value;

use super::{ApiError, Child, ChildMeta, ClusterApi, Event};
use crate::{
    api::Kind,
    operator::build::{ChildKind, ChildRef},
};

/// One call made to a `MemoryApi`, in the order made.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    Get {
        kind: String,
        namespace: String,
        name: String,
    },
    List {
        kind: String,
        namespace: String,
    },
    /// `object` is the body as sent.
    Apply {
        kind: ChildKind,
        namespace: String,
        name: String,
        object: Value,
    },
    Delete {
        kind: ChildKind,
        namespace: String,
        name: String,
    },
    ListChildren {
        namespace: String,
        labels: BTreeMap<String, String>,
    },
    /// A server-side apply on a Ferry object's status subresource; `patch` is the body as sent.
    ApplyStatus {
        kind: String,
        namespace: String,
        name: String,
        patch: Value,
    },
    Event(Event),
}

impl Call {
    /// Whether the call changes an object: an apply or a delete of a child, or a status apply.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Call::Apply { .. } | Call::Delete { .. } | Call::ApplyStatus { .. }
        )
    }

    /// Whether the call applies or deletes a child.
    pub fn writes_a_child(&self) -> bool {
        matches!(self, Call::Apply { .. } | Call::Delete { .. })
    }
}

/// (kind, namespace, name)
type Key = (String, String, String);

/// An object as compact JSON text: a few kilobytes instead of the tens a `Value` tree takes, so
/// that `ferry bench operator` can hold thousands of resources and their children.
/// Its labels are kept aside, so that a label selector does not parse every object.
struct Stored {
    json: Box<str>,
    labels: BTreeMap<String, String>,
}

impl Stored {
    fn save(object: &Value) -> Self {
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            json: object.to_string().into_boxed_str(),
            labels,
        }
    }

    fn load(&self) -> Value {
        // Only `save` writes it, from a `Value`: it always parses.
        serde_json::from_str(&self.json).unwrap_or(Value::Null)
    }

    fn carries(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(key, value)| self.labels.get(key) == Some(value))
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Stored>,
    calls: Vec<Call>,
    /// Verb (`apply`, `apply_status`, `delete`, `list`, `get`) -> the message its next call
    /// fails with.
    failures: BTreeMap<&'static str, String>,
    next_uid: u64,
}

/// An in-memory API server holding whole objects as JSON.
#[derive(Default)]
pub struct MemoryApi {
    state: Mutex<State>,
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn key_of(value: &Value) -> Key {
    (
        text(value, "/kind").to_owned(),
        text(value, "/metadata/namespace").to_owned(),
        text(value, "/metadata/name").to_owned(),
    )
}

/// Merges `patch` into `target`: objects field by field, anything else replaced; a `null`
/// removes the field.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (field, value) in patch {
                if value.is_null() {
                    target.remove(field);
                } else {
                    merge(target.entry(field.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

impl MemoryApi {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; keep the state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores an object as a user's `kubectl apply` would: any kind, with `apiVersion`, `kind`
    /// and `metadata.name` (and `metadata.namespace`, else `default`). It gets a uid if it has
    /// none, and `metadata.generation` 1, or one more than the object it replaces.
    pub fn insert(&self, mut object: Value) {
        let mut state = self.state();
        if object.pointer("/metadata/namespace").is_none()
            && let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.insert("namespace".into(), "default".into());
        }
        let key = key_of(&object);
        let previous = state.objects.get(&key).map(Stored::load);
        let generation = previous
            .as_ref()
            .and_then(|old| old.pointer("/metadata/generation"))
            .and_then(Value::as_i64)
            .map_or(1, |generation| generation + 1);
        let uid = previous
            .as_ref()
            .and_then(|old| old.pointer("/metadata/uid"))
            .cloned()
            .unwrap_or_else(|| format!("00000000-0000-4000-8000-{:012x}", state.next_uid).into());
        state.next_uid += 1;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.entry("uid").or_insert(uid);
            meta.insert("generation".into(), generation.into());
        }
        state.objects.insert(key, Stored::save(&object));
    }

    /// Removes an object as `kubectl delete` would (without garbage collection of children).
    pub fn remove(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state()
            .objects
            .remove(&(kind.to_owned(), namespace.to_owned(), name.to_owned()))
            .map(|stored| stored.load())
    }

    /// The stored object, as a `kubectl get -o json` would show it.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state()
            .objects
            .get(&(kind.to_owned(), namespace.to_owned(), name.to_owned()))
            .map(Stored::load)
    }

    /// Every stored object of `kind` in `namespace`, in name order.
    pub fn objects(&self, kind: &str, namespace: &str) -> Vec<Value> {
        let from = (kind.to_owned(), namespace.to_owned(), String::new());
        self.state()
            .objects
            .range(from..)
            .take_while(|((k, ns, _), _)| k == kind && ns == namespace)
            .map(|(_, object)| object.load())
            .collect()
    }

    /// The stored objects of `kind` in `namespace` that carry every label of `selector`.
    fn objects_selected(
        &self,
        kind: &str,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Vec<Value> {
        let from = (kind.to_owned(), namespace.to_owned(), String::new());
        self.state()
            .objects
            .range(from..)
            .take_while(|((k, ns, _), _)| k == kind && ns == namespace)
            .filter(|(_, object)| object.carries(selector))
            .map(|(_, object)| object.load())
            .collect()
    }

    /// Reports every replica the stored Deployment asks for (1 when it names none) ready and
    /// available, as the Deployment controller would once the pods pass their readiness probes.
    pub fn mark_deployment_available(&self, namespace: &str, name: &str) {
        let replicas = self
            .get("Deployment", namespace, name)
            .and_then(|deployment| deployment.pointer("/spec/replicas").and_then(Value::as_i64))
            .and_then(|replicas| i32::try_from(replicas).ok())
            .unwrap_or(1);
        let status = DeploymentStatus {
            replicas: Some(replicas),
            ready_replicas: Some(replicas),
            available_replicas: Some(replicas),
            updated_replicas: Some(replicas),
            conditions: Some(vec![DeploymentCondition {
                type_: "Available".to_owned(),
                status: "True".to_owned(),
                reason: Some("MinimumReplicasAvailable".to_owned()),
                last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)),
                ..DeploymentCondition::default()
            }]),
            ..DeploymentStatus::default()
        };
        self.set_deployment_status(namespace, name, &status);
    }

    /// Sets a Deployment's status, as the Deployment controller would.
    pub fn set_deployment_status(&self, namespace: &str, name: &str, status: &DeploymentStatus) {
        let mut state = self.state();
        let key = (
            "Deployment".to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        let (Some(stored), Ok(status)) = (state.objects.get(&key), serde_json::to_value(status))
        else {
            return;
        };
        let mut object = stored.load();
        if let Some(fields) = object.as_object_mut() {
            fields.insert("status".into(), status);
        }
        state.objects.insert(key, Stored::save(&object));
    }

    /// Makes the next call of `verb` (`get`, `list`, `apply`, `apply_status`, `delete`) fail
    /// with `message`.
    pub fn fail_next(&self, verb: &'static str, message: &str) {
        self.state().failures.insert(verb, message.to_owned());
    }

    /// The status of a stored object, as its status subresource would show it.
    pub fn status(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.get(kind, namespace, name)
            .and_then(|object| object.get("status").cloned())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Every call so far, forgetting them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state().calls)
    }

    fn call(
        &self,
        verb: &'static str,
        what: impl Fn() -> String,
        call: Call,
    ) -> Result<(), ApiError> {
        let mut state = self.state();
        state.calls.push(call);
        match state.failures.remove(verb) {
            Some(message) => Err(ApiError::Injected {
                verb,
                what: what(),
                message,
            }),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl ClusterApi for MemoryApi {
    async fn get_ferry(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, ApiError> {
        let call = Call::Get {
            kind: kind.to_string(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.call("get", || format!("{kind} {namespace}/{name}"), call)?;
        Ok(self.get(kind.as_str(), namespace, name))
    }

    async fn list_ferry(&self, kind: Kind, namespace: &str) -> Result<Vec<Value>, ApiError> {
        let call = Call::List {
            kind: kind.to_string(),
            namespace: namespace.to_owned(),
        };
        self.call("list", || format!("{kind} in {namespace}"), call)?;
        Ok(self.objects(kind.as_str(), namespace))
    }

    async fn list_secrets(&self, namespace: &str) -> Result<Vec<Secret>, ApiError> {
        let call = Call::List {
            kind: "Secret".to_owned(),
            namespace: namespace.to_owned(),
        };
        let what = || format!("Secret in {namespace}");
        self.call("list", what, call)?;
        self.objects("Secret", namespace)
            .into_iter()
            .map(|object| {
                serde_json::from_value(object).map_err(|source| ApiError::Convert {
                    what: what(),
                    source,
                })
            })
            .collect()
    }

    async fn apply(&self, child: &Child<'_>) -> Result<(), ApiError> {
        let object = child.to_value()?;
        let (namespace, name) = (child.namespace().to_owned(), child.name().to_owned());
        let call = Call::Apply {
            kind: child.kind(),
            namespace: namespace.clone(),
            name: name.clone(),
            object: object.clone(),
        };
        self.call(
            "apply",
            || format!("{} {namespace}/{name}", child.kind().as_str()),
            call,
        )?;
        let mut state = self.state();
        let key = key_of(&object);
        let merged = match state.objects.get(&key) {
            Some(stored) => {
                let mut current = stored.load();
                merge(&mut current, &object);
                current
            }
            None => object,
        };
        state.objects.insert(key, Stored::save(&merged));
        Ok(())
    }

    async fn delete(&self, namespace: &str, child: &ChildRef) -> Result<(), ApiError> {
        let call = Call::Delete {
            kind: child.kind,
            namespace: namespace.to_owned(),
            name: child.name.clone(),
        };
        let what = || format!("{} {namespace}/{}", child.kind.as_str(), child.name);
        self.call("delete", what, call)?;
        self.remove(child.kind.as_str(), namespace, &child.name);
        Ok(())
    }

    async fn list_children(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ChildMeta>, ApiError> {
        let call = Call::ListChildren {
            namespace: namespace.to_owned(),
            labels: labels.clone(),
        };
        self.call("list", || format!("children in {namespace}"), call)?;
        let mut children = Vec::new();
        for kind in ChildKind::ALL {
            for object in self.objects_selected(kind.as_str(), namespace, labels) {
                let meta = object
                    .get("metadata")
                    .cloned()
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(|source| ApiError::Convert {
                        what: format!("{} in {namespace}", kind.as_str()),
                        source,
                    })?
                    .unwrap_or_default();
                children.push(ChildMeta::from_meta(kind, &meta));
            }
        }
        Ok(children)
    }

    async fn deployment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Deployment>, ApiError> {
        let call = Call::Get {
            kind: "Deployment".to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let what = || format!("Deployment {namespace}/{name}");
        self.call("get", what, call)?;
        self.get("Deployment", namespace, name)
            .map(|object| {
                serde_json::from_value(object).map_err(|source| ApiError::Convert {
                    what: what(),
                    source,
                })
            })
            .transpose()
    }

    /// The status is replaced as a whole: the operator is the only manager of its fields in a
    /// test, so a field it stops setting is gone, as the API server would do.
    async fn apply_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<(), ApiError> {
        let call = Call::ApplyStatus {
            kind: kind.to_string(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            patch: patch.clone(),
        };
        let what = || format!("status of {kind} {namespace}/{name}");
        self.call("apply_status", what, call)?;
        let mut state = self.state();
        let key = (
            kind.as_str().to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        // The status subresource of an object that does not exist is a 404.
        let mut object = match state.objects.get(&key).map(Stored::load) {
            Some(object) if object.is_object() => object,
            _ => {
                return Err(ApiError::Injected {
                    verb: "apply_status",
                    what: what(),
                    message: "not found".to_owned(),
                });
            }
        };
        if let Some(fields) = object.as_object_mut() {
            match patch.get("status") {
                Some(status) => fields.insert("status".into(), status.clone()),
                None => fields.remove("status"),
            };
        }
        state.objects.insert(key, Stored::save(&object));
        Ok(())
    }

    async fn publish_event(&self, event: &Event) -> Result<(), ApiError> {
        let what = || {
            format!(
                "event about {}",
                event.regarding.name.as_deref().unwrap_or_default()
            )
        };
        self.call("event", what, Call::Event(event.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_apply_merges_objects_and_replaces_lists() {
        let mut stored =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [1, 2], "x": 1}});
        merge(
            &mut stored,
            &json!({"metadata": {"labels": {"b": "2"}}, "spec": {"ports": [3], "x": null}}),
        );
        assert_eq!(
            stored,
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"ports": [3]}})
        );
    }

    #[test]
    fn a_replaced_object_keeps_its_uid_and_gets_the_next_generation() {
        let api = MemoryApi::new();
        let object = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
        api.insert(object.clone());
        let first = api.get("Secret", "default", "s").expect("stored");
        api.insert(object);
        let second = api.get("Secret", "default", "s").expect("stored");
        assert_eq!(first["metadata"]["uid"], second["metadata"]["uid"]);
        assert_eq!(second["metadata"]["generation"], 2);
    }
}
