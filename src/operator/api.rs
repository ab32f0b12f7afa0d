//! The narrow slice of the Kubernetes API the reconciler uses, as one trait: read the Ferry
//! objects and Secrets of a namespace, server-side apply and delete children, read a
//! Deployment, server-side apply an OutboxSource's or Consumer's status, publish an event. `KubeApi` talks to a cluster; `MemoryApi` keeps
//! everything in memory for tests.

mod kube;
mod memory;

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::{
    Resource as _,
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, ObjectReference, Secret, Service},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use serde_json::Value;

pub use self::kube::KubeApi;
pub use memory::{Call, MemoryApi};

use super::build::{ChildKind, ChildRef, Children, SPEC_HASH_ANNOTATION};
use crate::api::Kind;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "ferry-operator";

/// A failed API call. Every one is worth a retry with backoff: the objects themselves were
/// fine, the API server was not reachable or refused the request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{verb} {what}: {source}")]
    Kube {
        verb: &'static str,
        what: String,
        #[source]
        source: Box<::kube::Error>,
    },
    #[error("{what}: cannot convert: {source}")]
    Convert {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A failure of `MemoryApi`: one it was told to return, or a status written to an object
    /// it does not hold.
    #[error("{verb} {what}: {message}")]
    Injected {
        verb: &'static str,
        what: String,
        message: String,
    },
}

/// One child object of a built `Children`, to be server-side applied.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Child<'a> {
    ConfigMap(&'a ConfigMap),
    Deployment(&'a Deployment),
    Service(&'a Service),
    PodDisruptionBudget(&'a PodDisruptionBudget),
}

impl<'a> Child<'a> {
    /// Every child of a workload, in `ChildKind` order (the ConfigMap before the Deployment
    /// that mounts it).
    pub fn all(children: &'a Children) -> Vec<Child<'a>> {
        let mut all = vec![
            Child::ConfigMap(&children.config_map),
            Child::Deployment(&children.deployment),
            Child::Service(&children.service),
        ];
        all.extend(children.pdb.as_ref().map(Child::PodDisruptionBudget));
        all
    }

    pub fn kind(&self) -> ChildKind {
        match self {
            Child::ConfigMap(_) => ChildKind::ConfigMap,
            Child::Deployment(_) => ChildKind::Deployment,
            Child::Service(_) => ChildKind::Service,
            Child::PodDisruptionBudget(_) => ChildKind::PodDisruptionBudget,
        }
    }

    pub fn metadata(&self) -> &'a ObjectMeta {
        match self {
            Child::ConfigMap(object) => &object.metadata,
            Child::Deployment(object) => &object.metadata,
            Child::Service(object) => &object.metadata,
            Child::PodDisruptionBudget(object) => &object.metadata,
        }
    }

    pub fn name(&self) -> &'a str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> &'a str {
        self.metadata().namespace.as_deref().unwrap_or_default()
    }

    pub fn child_ref(&self) -> ChildRef {
        ChildRef {
            kind: self.kind(),
            name: self.name().to_owned(),
        }
    }

    /// The `ferry.dev/spec-hash` the builders gave the child.
    pub fn spec_hash(&self) -> Option<&'a str> {
        self.metadata()
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(SPEC_HASH_ANNOTATION))
            .map(String::as_str)
    }

    /// The object as the apply request's body: `apiVersion`, `kind`, `metadata`, `spec`/`data`.
    pub fn to_value(&self) -> Result<Value, ApiError> {
        let value = match self {
            Child::ConfigMap(object) => serde_json::to_value(object),
            Child::Deployment(object) => serde_json::to_value(object),
            Child::Service(object) => serde_json::to_value(object),
            Child::PodDisruptionBudget(object) => serde_json::to_value(object),
        };
        value.map_err(|source| ApiError::Convert {
            what: format!("{} {}", self.kind().as_str(), self.name()),
            source,
        })
    }
}

impl ChildKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildKind::ConfigMap => ConfigMap::KIND,
            ChildKind::Deployment => Deployment::KIND,
            ChildKind::Service => Service::KIND,
            ChildKind::PodDisruptionBudget => PodDisruptionBudget::KIND,
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            ChildKind::ConfigMap => ConfigMap::API_VERSION,
            ChildKind::Deployment => Deployment::API_VERSION,
            ChildKind::Service => Service::API_VERSION,
            ChildKind::PodDisruptionBudget => PodDisruptionBudget::API_VERSION,
        }
    }
}

/// What the reconciler needs to know of an existing child: which it is, who controls it, and
/// its annotations (for `ferry.dev/spec-hash`).
#[derive(Clone, Debug, PartialEq)]
pub struct ChildMeta {
    pub kind: ChildKind,
    pub name: String,
    pub owner_references: Vec<OwnerReference>,
    pub annotations: BTreeMap<String, String>,
}

impl ChildMeta {
    pub fn from_meta(kind: ChildKind, meta: &ObjectMeta) -> Self {
        Self {
            kind,
            name: meta.name.clone().unwrap_or_default(),
            owner_references: meta.owner_references.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
        }
    }

    /// The child's `ferry.dev/spec-hash` annotation, if it has one.
    pub fn spec_hash(&self) -> Option<&str> {
        self.annotations
            .get(SPEC_HASH_ANNOTATION)
            .map(String::as_str)
    }

    /// The uid of the controlling owner, if any.
    pub fn controller_uid(&self) -> Option<&str> {
        self.owner_references
            .iter()
            .find(|owner| owner.controller == Some(true))
            .map(|owner| owner.uid.as_str())
    }

    pub fn child_ref(&self) -> ChildRef {
        ChildRef {
            kind: self.kind,
            name: self.name.clone(),
        }
    }
}

/// How an event reads in `kubectl describe`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// An event about one Ferry object.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub regarding: ObjectReference,
    pub type_: EventType,
    /// Short and PascalCase: `InvalidSpec`, `MissingReference`.
    pub reason: String,
    /// What the operator was doing: `Reconcile`.
    pub action: String,
    /// For a person; never a secret value.
    pub note: String,
}

/// Everything the reconciler asks of the API server.
///
/// Ferry objects are returned as JSON values, not typed, so that the validate step decodes
/// them with `manifest::ferry_check`, exactly as `ferry validate` does: one object that no
/// longer fits the types is a problem named by field, not a failed list.
#[async_trait]
pub trait ClusterApi: Send + Sync {
    /// One Ferry object, `None` when it does not exist.
    async fn get_ferry(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, ApiError>;

    /// Every Ferry object of `kind` in `namespace`.
    async fn list_ferry(&self, kind: Kind, namespace: &str) -> Result<Vec<Value>, ApiError>;

    /// Every Secret in `namespace` (only their keys are ever used).
    async fn list_secrets(&self, namespace: &str) -> Result<Vec<Secret>, ApiError>;

    /// Server-side applies `child` with field manager `ferry-operator`, forcing conflicts.
    async fn apply(&self, child: &Child<'_>) -> Result<(), ApiError>;

    /// Deletes a child; one that is already gone is not an error.
    async fn delete(&self, namespace: &str, child: &ChildRef) -> Result<(), ApiError>;

    /// The children of the four kinds in `namespace` that carry all of `labels`.
    async fn list_children(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ChildMeta>, ApiError>;

    /// A Deployment (its generation, replicas asked for and status), `None` when it does not
    /// exist.
    async fn deployment(&self, namespace: &str, name: &str)
    -> Result<Option<Deployment>, ApiError>;

    /// Server-side applies `patch` (`apiVersion`, `kind` and `status`) to the status
    /// subresource of a Ferry object, with field manager `ferry-operator`, forcing conflicts.
    /// The object's current status needs no call of its own: it comes with `get_ferry`.
    async fn apply_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<(), ApiError>;

    async fn publish_event(&self, event: &Event) -> Result<(), ApiError>;
}

/// `key=value,...` in key order, as a label selector.
pub fn label_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}
