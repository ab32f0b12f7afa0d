//! The reconcile driver: fetch -> validate -> build -> apply -> status, for one OutboxSource
//! or Consumer. Only fetch, apply and status call the API; validate and build are pure.

mod apply;
mod error;
mod fetch;
mod status;
mod validate;

use std::{fmt, sync::Arc};

use k8s_openapi::api::core::v1::ObjectReference;

pub use error::ReconcileError;

use super::{
    api::{ClusterApi, Event, EventType},
    build::{BuildError, ChildRef, Component, Workload, build_children},
    probe::StatusProbe,
    status::DeploymentState,
};
use crate::{
    api::{API_VERSION, Kind},
    validate::{Catalog, FieldError, ObjectId},
};
use fetch::Fetched;

/// What every reconcile needs besides the resource.
#[derive(Clone)]
pub struct Settings {
    /// The workload image when a resource names none (`--workload-image`).
    pub default_image: String,
    /// Reads a workload's `/status` for the status step (`HttpProbe` in a cluster).
    pub probe: Arc<dyn StatusProbe>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("default_image", &self.default_image)
            .finish_non_exhaustive()
    }
}

/// What to do after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing will change until the resource or something it references does.
    WaitForChange,
    /// Look again soon: the workload's health and lag change on their own, and the status
    /// step reads them only when the resource is reconciled.
    Resync,
}

/// What one reconcile did, for the status step, events and metrics.
#[derive(Debug)]
pub enum Outcome {
    /// The resource does not exist or is being deleted: nothing was written, its children go
    /// with it through garbage collection.
    Gone { parent: ObjectId },
    /// The resource or something it references is invalid: nothing was applied or deleted
    /// (a workload built from its last valid spec keeps running), an event names the fields.
    Invalid {
        parent: ObjectId,
        generation: Option<i64>,
        error: ReconcileError,
    },
    /// Every wanted child was applied, or found unchanged, and unwanted ones deleted.
    Applied(Applied),
}

/// The children as written. Only the apply step makes one, so a status computed from it is
/// computed from applied children.
#[derive(Debug)]
pub struct Applied {
    parent: ObjectId,
    generation: Option<i64>,
    component: Component,
    deployment: String,
    replicas: i32,
    suspended: bool,
    http_port: u16,
    applied: Vec<ChildRef>,
    unchanged: Vec<ChildRef>,
    deleted: Vec<ChildRef>,
    deployment_state: Option<DeploymentState>,
}

impl Applied {
    pub fn parent(&self) -> &ObjectId {
        &self.parent
    }

    /// The `metadata.generation` the children were built from.
    pub fn generation(&self) -> Option<i64> {
        self.generation
    }

    pub fn component(&self) -> Component {
        self.component
    }

    /// The Deployment's name.
    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// Replicas asked for: 0 when suspended.
    pub fn replicas(&self) -> i32 {
        self.replicas
    }

    pub fn suspended(&self) -> bool {
        self.suspended
    }

    /// The port of the workload's `/status`, on its Service (named as the Deployment).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The Deployment as read after the apply: its generation, replicas asked for and status
    /// (`None` only if it was deleted in between).
    pub fn deployment_state(&self) -> Option<&DeploymentState> {
        self.deployment_state.as_ref()
    }
}

impl Outcome {
    pub fn parent(&self) -> &ObjectId {
        match self {
            Outcome::Gone { parent } | Outcome::Invalid { parent, .. } => parent,
            Outcome::Applied(applied) => &applied.parent,
        }
    }

    /// The children applied, in the order applied.
    pub fn applied(&self) -> &[ChildRef] {
        match self {
            Outcome::Applied(applied) => &applied.applied,
            _ => &[],
        }
    }

    /// The wanted children not applied because their live objects already carry the
    /// `ferry.dev/spec-hash` of the children as built.
    pub fn unchanged(&self) -> &[ChildRef] {
        match self {
            Outcome::Applied(applied) => &applied.unchanged,
            _ => &[],
        }
    }

    /// The children deleted as no longer wanted.
    pub fn deleted(&self) -> &[ChildRef] {
        match self {
            Outcome::Applied(applied) => &applied.deleted,
            _ => &[],
        }
    }

    /// Why the spec could not be applied, when it could not.
    pub fn invalid(&self) -> Option<&ReconcileError> {
        match self {
            Outcome::Invalid { error, .. } => Some(error),
            _ => None,
        }
    }

    pub fn next(&self) -> Next {
        match self {
            Outcome::Applied(_) => Next::Resync,
            Outcome::Gone { .. } | Outcome::Invalid { .. } => Next::WaitForChange,
        }
    }
}

/// Makes the relay workload of OutboxSource `namespace/name` match its spec.
pub async fn reconcile_outbox_source(
    api: &dyn ClusterApi,
    namespace: &str,
    name: &str,
    settings: &Settings,
) -> Result<Outcome, ReconcileError> {
    reconcile(api, Component::Relay, namespace, name, settings).await
}

/// Makes the consumer workload of Consumer `namespace/name` match its spec.
pub async fn reconcile_consumer(
    api: &dyn ClusterApi,
    namespace: &str,
    name: &str,
    settings: &Settings,
) -> Result<Outcome, ReconcileError> {
    reconcile(api, Component::Consumer, namespace, name, settings).await
}

fn parent_kind(component: Component) -> Kind {
    match component {
        Component::Relay => Kind::OutboxSource,
        Component::Consumer => Kind::Consumer,
    }
}

/// Only an API failure is an `Err`; a resource that cannot be built is an `Outcome::Invalid`.
async fn reconcile(
    api: &dyn ClusterApi,
    component: Component,
    namespace: &str,
    name: &str,
    settings: &Settings,
) -> Result<Outcome, ReconcileError> {
    let kind = parent_kind(component);
    let Some(fetched) = fetch::fetch(api, kind, namespace, name).await? else {
        return Ok(gone(kind, namespace, name));
    };
    if fetched.is_deleting() {
        return Ok(gone(kind, namespace, name));
    }
    let workload = match validate::validate(&fetched)
        .and_then(|catalog| build(component, &fetched, &catalog, settings))
    {
        Ok(workload) => workload,
        Err(error) if error.is_transient() => return Err(error),
        Err(error) => return invalid(api, settings, &fetched, error).await,
    };
    let children = build_children(&workload);
    let written = apply::apply(api, &workload, &children).await?;
    let deployment = workload.child_name();
    let deployment_state = api
        .deployment(namespace, &deployment)
        .await?
        .as_ref()
        .map(DeploymentState::from);
    let outcome = Outcome::Applied(Applied {
        parent: validate::object_id(&fetched),
        generation: fetched.generation(),
        component,
        deployment,
        replicas: workload.replicas,
        suspended: workload.suspended,
        http_port: workload.http_port,
        applied: written.applied,
        unchanged: written.unchanged,
        deleted: written.deleted,
        deployment_state,
    });
    status::write_status(api, settings.probe.as_ref(), &fetched, &outcome).await?;
    Ok(outcome)
}

fn gone(kind: Kind, namespace: &str, name: &str) -> Outcome {
    Outcome::Gone {
        parent: ObjectId {
            kind: kind.to_string(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
    }
}

/// The build step: the workload of a validated resource.
fn build(
    component: Component,
    fetched: &Fetched,
    catalog: &Catalog,
    settings: &Settings,
) -> Result<Workload, ReconcileError> {
    let key = (fetched.namespace.clone(), fetched.name.clone());
    let image = settings.default_image.as_str();
    let built = match component {
        Component::Relay => catalog
            .outbox_sources
            .get(&key)
            .map(|source| Workload::relay(source, catalog, image)),
        Component::Consumer => catalog
            .consumers
            .get(&key)
            .map(|consumer| Workload::consumer(consumer, catalog, image)),
    };
    match built {
        Some(Ok(workload)) => Ok(workload),
        Some(Err(BuildError::Unresolved(errors))) => Err(ReconcileError::MissingReference(errors)),
        Some(Err(error)) => Err(ReconcileError::Build(error)),
        // `validate` put it in the catalog; not finding it is a bug, reported as one.
        None => Err(ReconcileError::InvalidSpec(vec![FieldError::new(
            "",
            "was not admitted into the catalog",
        )])),
    }
}

/// Reports an invalid resource with a warning event naming the fields and in its status, and
/// applies nothing.
async fn invalid(
    api: &dyn ClusterApi,
    settings: &Settings,
    fetched: &Fetched,
    error: ReconcileError,
) -> Result<Outcome, ReconcileError> {
    let parent = validate::object_id(fetched);
    tracing::warn!(
        kind = %parent.kind,
        namespace = %parent.namespace,
        name = %parent.name,
        category = error.category(),
        %error,
        "not applying: waiting for a change"
    );
    let event = Event {
        regarding: ObjectReference {
            api_version: Some(API_VERSION.to_owned()),
            kind: Some(parent.kind.clone()),
            namespace: Some(parent.namespace.clone()),
            name: Some(parent.name.clone()),
            uid: fetched.uid().map(str::to_owned),
            ..ObjectReference::default()
        },
        type_: EventType::Warning,
        reason: error.reason().to_owned(),
        action: "Reconcile".to_owned(),
        note: event_note(&error),
    };
    if let Err(failure) = api.publish_event(&event).await {
        // The outcome says the same; a lost event is not worth failing the reconcile for.
        tracing::warn!(%failure, name = %parent.name, "cannot publish an event");
    }
    let outcome = Outcome::Invalid {
        parent,
        generation: fetched.generation(),
        error,
    };
    status::write_status(api, settings.probe.as_ref(), fetched, &outcome).await?;
    Ok(outcome)
}

/// The longest event note the API server accepts.
const MAX_NOTE: usize = 1024;

fn event_note(error: &ReconcileError) -> String {
    let mut note = error.to_string();
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}
