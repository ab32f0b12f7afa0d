//! The build step: pure functions from a validated OutboxSource or Consumer, and the config
//! resolved from what it references, to the child objects the operator applies. No API calls.
//!
//! One file per child kind; this file holds the `Workload` model they all take.

mod configmap;
mod deployment;
mod names;
mod pdb;
mod secrets;
mod service;
mod spec_hash;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, ResourceRequirements, Service},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::Resource;

pub use configmap::{CONFIG_FILE, build_config_map, config_hash};
pub use deployment::{
    API_PORT_NAME, CONFIG_DIR, CONFIG_HASH_ANNOTATION, HTTP_PORT_NAME, RUN_AS_USER,
    build_deployment,
};
pub use names::{LABEL_MANAGED_BY, MANAGER, child_name, label_value, labels, selector_labels};
pub use pdb::build_pdb;
pub use secrets::SecretEnv;
pub use service::build_service;
pub use spec_hash::{SPEC_HASH_ANNOTATION, with_spec_hash};

use crate::{
    api::{Consumer, OutboxSource, common::WorkloadSpec},
    config::{self, ConsumerConfig, RelayConfig},
    validate::{Catalog, FieldError},
};

/// The two kinds of workload, named as the `ferry` subcommand that runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// `ferry relay`, for an OutboxSource.
    Relay,
    /// `ferry consumer`, for a Consumer.
    Consumer,
}

impl Component {
    /// `relay` or `consumer`: the subcommand, the container name, the child name suffix and the
    /// `app.kubernetes.io/component` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Consumer => "consumer",
        }
    }

    /// The label naming the resource a child belongs to: `ferry.dev/<kind, lower case>`.
    pub fn parent_label(self) -> &'static str {
        match self {
            Self::Relay => "ferry.dev/outboxsource",
            Self::Consumer => "ferry.dev/consumer",
        }
    }
}

/// Why a resource's children cannot be built. Every one is a problem with the resource or what
/// it references, so it waits for a change to them rather than a retry.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{}", join(.0))]
    Unresolved(Vec<FieldError>),
    #[error("metadata.{0} is not set")]
    MissingMetadata(&'static str),
    #[error(
        "Secret keys {first} and {second} both map to environment variable {variable}: rename one Secret or key"
    )]
    SecretEnvClash {
        variable: String,
        first: String,
        second: String,
    },
    /// `origin` says where the secret comes from, never its value.
    #[error("the resolved config reads a secret from {origin}, not from a Secret key")]
    SecretNotFromEnv { origin: String },
    #[error("cannot render the resolved config: {0}")]
    Render(#[from] serde_yaml_ng::Error),
}

fn join(errors: &[FieldError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("; ")
}

impl BuildError {
    /// A stable, low-cardinality name for metrics and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Unresolved(_) => "unresolved_reference",
            Self::MissingMetadata(_) => "missing_metadata",
            Self::SecretEnvClash { .. } => "secret_env_clash",
            Self::SecretNotFromEnv { .. } => "secret_not_from_env",
            Self::Render(_) => "render",
        }
    }
}

/// Everything the builders need to know about one workload: who owns it, how it runs, and the
/// config it reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub component: Component,
    /// The OutboxSource's or Consumer's name.
    pub resource: String,
    pub namespace: String,
    /// The controller owner reference every child carries.
    pub owner: OwnerReference,
    /// Pods to run: the spec's `replicas`, or 0 when suspended.
    pub replicas: i32,
    pub suspended: bool,
    /// The spec's image, else the operator's default.
    pub image: String,
    pub resources: Option<ResourceRequirements>,
    /// The resolved config as `ferry config relay|consumer` prints it (without the header).
    pub config_yaml: String,
    /// The port of `/healthz`, `/readyz`, `/metrics` and `/status`, from the config's
    /// `http.listen`.
    pub http_port: u16,
    /// The relay's transactional-message API port, when enabled.
    pub api_port: Option<u16>,
    /// The Secret keys the pod gets as environment variables.
    pub secret_env: SecretEnv,
}

impl Workload {
    /// The ports the container opens and the Service forwards, each with its name: the
    /// endpoints' `http`, and the relay's `tx-api` when transactional messages are on.
    pub fn named_ports(&self) -> impl Iterator<Item = (&'static str, u16)> {
        std::iter::once((HTTP_PORT_NAME, self.http_port))
            .chain(self.api_port.map(|port| (API_PORT_NAME, port)))
    }

    /// The relay workload of `source`, its references resolved against `catalog` (which must
    /// hold `source` too).
    pub fn relay(
        source: &OutboxSource,
        catalog: &Catalog,
        default_image: &str,
    ) -> Result<Self, BuildError> {
        let (namespace, name) = identity(source)?;
        let (config, secret_env) = SecretEnv::resolve(
            |secret| config::resolve_relay(catalog, &namespace, &name, secret),
            RelayConfig::secret_sources,
        )?;
        let mut workload = Self::new(
            Component::Relay,
            source,
            (namespace, name),
            &source.spec.relay,
            source.spec.suspend,
            Rendered::of(&config, config.http.listen.port(), secret_env)?,
            default_image,
        )?;
        workload.api_port = config.transactional.map(|api| api.listen.port());
        Ok(workload)
    }

    /// The consumer workload of `consumer`, its references resolved against `catalog` (which
    /// must hold `consumer` too).
    pub fn consumer(
        consumer: &Consumer,
        catalog: &Catalog,
        default_image: &str,
    ) -> Result<Self, BuildError> {
        let (namespace, name) = identity(consumer)?;
        let (config, secret_env) = SecretEnv::resolve(
            |secret| config::resolve_consumer(catalog, &namespace, &name, secret),
            ConsumerConfig::secret_sources,
        )?;
        Self::new(
            Component::Consumer,
            consumer,
            (namespace, name),
            &consumer.spec.workload,
            consumer.spec.suspend,
            Rendered::of(&config, config.http.listen.port(), secret_env)?,
            default_image,
        )
    }

    fn new<K: Resource<DynamicType = ()>>(
        component: Component,
        parent: &K,
        (namespace, resource): (String, String),
        spec: &WorkloadSpec,
        suspended: bool,
        rendered: Rendered,
        default_image: &str,
    ) -> Result<Self, BuildError> {
        let owner = parent
            .controller_owner_ref(&())
            .ok_or(BuildError::MissingMetadata("uid"))?;
        Ok(Self {
            component,
            resource,
            namespace,
            owner: OwnerReference {
                block_owner_deletion: Some(true),
                ..owner
            },
            replicas: if suspended { 0 } else { spec.replicas },
            suspended,
            image: spec
                .image
                .clone()
                .unwrap_or_else(|| default_image.to_owned()),
            resources: spec.resources.clone(),
            config_yaml: rendered.yaml,
            http_port: rendered.port,
            api_port: None,
            secret_env: rendered.secret_env,
        })
    }

    /// The name all of this workload's children share.
    pub fn child_name(&self) -> String {
        child_name(&self.resource, self.component)
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        labels(self.component, &self.resource)
    }

    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        selector_labels(self.component, &self.resource)
    }

    /// Name, namespace, labels and owner reference of a child.
    fn child_metadata(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.child_name()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// A resolved config as the pod gets it: rendered for the ConfigMap, the port it serves on,
/// and the Secret keys behind its environment variables.
struct Rendered {
    yaml: String,
    port: u16,
    secret_env: SecretEnv,
}

impl Rendered {
    fn of(
        config: &impl serde::Serialize,
        port: u16,
        secret_env: SecretEnv,
    ) -> Result<Self, BuildError> {
        Ok(Self {
            yaml: config::to_yaml(config)?,
            port,
            secret_env,
        })
    }
}

fn identity<K: Resource>(object: &K) -> Result<(String, String), BuildError> {
    let meta = object.meta();
    let namespace = meta
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let name = meta
        .name
        .clone()
        .ok_or(BuildError::MissingMetadata("name"))?;
    Ok((namespace, name))
}

/// The kinds of child a workload has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildKind {
    ConfigMap,
    Deployment,
    Service,
    PodDisruptionBudget,
}

impl ChildKind {
    pub const ALL: [ChildKind; 4] = [
        ChildKind::ConfigMap,
        ChildKind::Deployment,
        ChildKind::Service,
        ChildKind::PodDisruptionBudget,
    ];
}

/// One child that should exist.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildRef {
    pub kind: ChildKind,
    pub name: String,
}

/// Every child of one workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    /// Only with more than one replica.
    pub pdb: Option<PodDisruptionBudget>,
}

impl Children {
    /// The children that should exist, in `ChildKind` order. A child of a kind in
    /// `ChildKind::ALL` that carries this workload's labels but is not listed here is no longer
    /// wanted (a PodDisruptionBudget after scaling to one replica) and should be deleted.
    pub fn wanted(&self) -> Vec<ChildRef> {
        let name = |meta: &ObjectMeta| meta.name.clone().unwrap_or_default();
        let mut wanted = vec![
            ChildRef {
                kind: ChildKind::ConfigMap,
                name: name(&self.config_map.metadata),
            },
            ChildRef {
                kind: ChildKind::Deployment,
                name: name(&self.deployment.metadata),
            },
            ChildRef {
                kind: ChildKind::Service,
                name: name(&self.service.metadata),
            },
        ];
        wanted.extend(self.pdb.iter().map(|pdb| ChildRef {
            kind: ChildKind::PodDisruptionBudget,
            name: name(&pdb.metadata),
        }));
        wanted
    }
}

/// Every child of `workload`: the ConfigMap, the Deployment (whose pod template carries the
/// ConfigMap's hash), the Service, and a PodDisruptionBudget when there is more than one replica.
pub fn build_children(workload: &Workload) -> Children {
    let config_map = build_config_map(workload);
    let deployment = build_deployment(workload, &config_map);
    Children {
        deployment,
        config_map,
        service: build_service(workload),
        pdb: build_pdb(workload),
    }
}
