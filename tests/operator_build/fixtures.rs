//! Fixtures of the build tests: catalogs of the examples and of `tests/fixtures/operator/`, the
//! children built from them, and the parts of the children the tests look at.

use std::path::{Path, PathBuf};

use ferry::{
    api::{Consumer, OutboxSource},
    manifest,
    operator::build::{CONFIG_HASH_ANNOTATION, Children, Workload, build_children},
    validate::{Catalog, SecretCheck},
};
use k8s_openapi::api::core::v1::PodSpec;
use kube::Resource;

/// The image the tests pass as the operator's default.
pub const IMAGE: &str = "ghcr.io/ferry-dev/ferry:0.1.0";
/// The uid every test resource gets, as if the API server had stored it.
pub const UID: &str = "0b5e7c1a-4f3d-4c2b-9a8e-1d2c3b4a5f60";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The admitted objects of the manifests at `path`, each with a uid.
pub fn catalog(path: &Path, secrets: SecretCheck) -> Catalog {
    let documents = manifest::load(&[path.to_owned()]).expect("manifests load");
    let admitted = manifest::admit(&documents, "default", secrets);
    let problems: Vec<String> = admitted.problems.iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{problems:#?}");
    let mut catalog = admitted.catalog;
    for source in catalog.outbox_sources.values_mut() {
        source.meta_mut().uid = Some(UID.to_owned());
    }
    for consumer in catalog.consumers.values_mut() {
        consumer.meta_mut().uid = Some(UID.to_owned());
    }
    catalog
}

pub fn examples() -> Catalog {
    catalog(&root().join("examples"), SecretCheck::Skip)
}

pub fn canary() -> Catalog {
    catalog(
        &root().join("tests/fixtures/operator/canary-secrets.yaml"),
        SecretCheck::Check,
    )
}

pub fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_owned(), name.to_owned())
}

pub fn source<'a>(catalog: &'a Catalog, namespace: &str, name: &str) -> &'a OutboxSource {
    &catalog.outbox_sources[&key(namespace, name)]
}

pub fn consumer<'a>(catalog: &'a Catalog, namespace: &str, name: &str) -> &'a Consumer {
    &catalog.consumers[&key(namespace, name)]
}

pub fn relay_children(catalog: &Catalog, namespace: &str, name: &str) -> Children {
    let workload = Workload::relay(source(catalog, namespace, name), catalog, IMAGE)
        .expect("the relay workload builds");
    build_children(&workload)
}

pub fn consumer_children(catalog: &Catalog, namespace: &str, name: &str) -> Children {
    let workload = Workload::consumer(consumer(catalog, namespace, name), catalog, IMAGE)
        .expect("the consumer workload builds");
    build_children(&workload)
}

/// The children as the multi-document YAML a user would `kubectl apply`.
pub fn render(children: &Children) -> String {
    let mut documents = vec![
        serde_yaml_ng::to_string(&children.config_map),
        serde_yaml_ng::to_string(&children.deployment),
        serde_yaml_ng::to_string(&children.service),
    ];
    documents.extend(children.pdb.iter().map(serde_yaml_ng::to_string));
    let documents: Vec<String> = documents
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("children serialize");
    documents.join("---\n")
}

pub fn pod(children: &Children) -> &PodSpec {
    children
        .deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("the Deployment has a pod template")
}

pub fn config_yaml(children: &Children) -> &str {
    children
        .config_map
        .data
        .as_ref()
        .expect("the ConfigMap has data")["config.yaml"]
        .as_str()
}

pub fn config_hash(children: &Children) -> String {
    children
        .deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref())
        .and_then(|meta| meta.annotations.as_ref())
        .and_then(|annotations| annotations.get(CONFIG_HASH_ANNOTATION))
        .cloned()
        .expect("the pod template carries the config hash")
}

pub fn replicas(children: &Children) -> Option<i32> {
    children
        .deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
}
