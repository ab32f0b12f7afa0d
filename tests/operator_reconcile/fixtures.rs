//! Fixtures of the reconcile tests: an in-memory cluster loaded from the examples, the
//! children the build layer gives for what it holds, and the calls the reconciler made.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use ferry::{
    api::Kind,
    manifest::{self, Document, Origin},
    operator::{
        api::{Call, Child, MemoryApi},
        build::{ChildKind, Children, Workload, build_children},
        probe::CannedProbe,
        reconcile::Settings,
    },
    validate::{Catalog, SecretCheck},
};
use serde_json::Value;

/// The image the tests pass as the operator's default.
pub const IMAGE: &str = "ghcr.io/ferry-dev/ferry:0.1.0";

/// The operator's settings, with a probe that finds no workload answering (the in-memory
/// cluster runs no pods).
pub fn settings() -> Settings {
    Settings {
        default_image: IMAGE.to_owned(),
        probe: Arc::new(CannedProbe::new()),
    }
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A cluster holding every object of the manifests at `path` (relative to the crate).
pub fn cluster(path: &str) -> MemoryApi {
    let api = MemoryApi::new();
    for document in manifest::load(&[root().join(path)]).expect("manifests load") {
        api.insert(document.value);
    }
    api
}

/// The orders pipeline of `examples/orders/`, in namespace `shop`.
pub fn orders() -> MemoryApi {
    cluster("examples/orders")
}

/// The Ferry objects and Secrets the cluster holds in `namespace`, admitted as `ferry validate`
/// would admit them from files.
pub fn catalog(api: &MemoryApi, namespace: &str) -> Catalog {
    let mut values: Vec<Value> = api.objects("Secret", namespace);
    for kind in Kind::ALL {
        values.extend(api.objects(kind.as_str(), namespace));
    }
    let documents: Vec<Document> = values
        .into_iter()
        .enumerate()
        .map(|(index, value)| Document {
            origin: Origin {
                file: Path::new("memory").to_owned(),
                document: index + 1,
            },
            value,
        })
        .collect();
    let admitted = manifest::admit(&documents, namespace, SecretCheck::Check);
    let problems: Vec<String> = admitted.problems.iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{problems:#?}");
    admitted.catalog
}

fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_owned(), name.to_owned())
}

/// What the build layer gives for the relay of OutboxSource `namespace/name` as stored.
pub fn relay_children(api: &MemoryApi, namespace: &str, name: &str) -> Children {
    let catalog = catalog(api, namespace);
    let source = &catalog.outbox_sources[&key(namespace, name)];
    build_children(&Workload::relay(source, &catalog, IMAGE).expect("the relay builds"))
}

/// What the build layer gives for Consumer `namespace/name` as stored.
pub fn consumer_children(api: &MemoryApi, namespace: &str, name: &str) -> Children {
    let catalog = catalog(api, namespace);
    let consumer = &catalog.consumers[&key(namespace, name)];
    build_children(&Workload::consumer(consumer, &catalog, IMAGE).expect("the consumer builds"))
}

/// The children as apply request bodies, in apply order.
pub fn bodies(children: &Children) -> Vec<(ChildKind, String, Value)> {
    Child::all(children)
        .into_iter()
        .map(|child| {
            let body = child.to_value().expect("a child serializes");
            (child.kind(), child.name().to_owned(), body)
        })
        .collect()
}

/// The apply calls among `calls`, as (kind, name, body).
pub fn applied(calls: &[Call]) -> Vec<(ChildKind, String, Value)> {
    calls
        .iter()
        .filter_map(|call| match call {
            Call::Apply {
                kind, name, object, ..
            } => Some((*kind, name.clone(), object.clone())),
            _ => None,
        })
        .collect()
}

/// The delete calls among `calls`, as (kind, name).
pub fn deleted(calls: &[Call]) -> Vec<(ChildKind, String)> {
    calls
        .iter()
        .filter_map(|call| match call {
            Call::Delete { kind, name, .. } => Some((*kind, name.clone())),
            _ => None,
        })
        .collect()
}

/// Replaces a stored object with `change` applied to it, as a user's edit would.
pub fn edit(
    api: &MemoryApi,
    kind: &str,
    namespace: &str,
    name: &str,
    change: impl FnOnce(&mut Value),
) {
    let mut object = api.get(kind, namespace, name).expect("the object exists");
    change(&mut object);
    api.insert(object);
}

/// A stored object's field, by JSON pointer.
pub fn field(api: &MemoryApi, kind: &str, namespace: &str, name: &str, pointer: &str) -> Value {
    api.get(kind, namespace, name)
        .and_then(|object| object.pointer(pointer).cloned())
        .unwrap_or(Value::Null)
}

/// The billing Consumer of `examples/brokers/` (reading a NATS topic) with the Secrets its
/// objects name.
pub fn nats_billing() -> MemoryApi {
    let api = cluster("examples/brokers");
    for secret in ["nats", "redis", "queue-db"] {
        api.insert(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": secret, "namespace": "default"},
            "stringData": {"url": "x"},
        }));
    }
    api
}
