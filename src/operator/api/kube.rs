//! `ClusterApi` over a real cluster through `kube::Client`: every child, and the status
//! subresource of an OutboxSource or Consumer, is written with a server-side apply patch,
//! field manager `ferry-operator`, forced; events go through one shared `Recorder`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Secret, Service},
        policy::v1::PodDisruptionBudget,
    },
};
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
    runtime::events::{self, Recorder, Reporter},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{
    ApiError, Child, ChildMeta, ClusterApi, Event, EventType, FIELD_MANAGER, label_selector,
};
use crate::{
    api::{BrokerTopic, Consumer, DeadLetterQueue, Kind, OutboxSource, RetryPolicy},
    operator::build::{ChildKind, ChildRef},
};

/// The cluster as the operator sees it.
#[derive(Clone)]
pub struct KubeApi {
    client: Client,
    recorder: Recorder,
}

impl KubeApi {
    /// `reporter` names the operator in the events it publishes (`ferry-operator` and the pod).
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
        }
    }

    fn ferry(&self, kind: Kind, namespace: &str) -> Api<DynamicObject> {
        let resource = match kind {
            Kind::OutboxSource => ApiResource::erase::<OutboxSource>(&()),
            Kind::BrokerTopic => ApiResource::erase::<BrokerTopic>(&()),
            Kind::RetryPolicy => ApiResource::erase::<RetryPolicy>(&()),
            Kind::DeadLetterQueue => ApiResource::erase::<DeadLetterQueue>(&()),
            Kind::Consumer => ApiResource::erase::<Consumer>(&()),
        };
        Api::namespaced_with(self.client.clone(), namespace, &resource)
    }

    fn typed<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn apply_typed<K>(&self, object: &K) -> Result<(), ApiError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
    {
        let meta = object.meta();
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        let name = meta.name.as_deref().unwrap_or_default();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.typed::<K>(namespace)
            .patch(name, &params, &Patch::Apply(object))
            .await
            .map_err(kube_error("apply", || {
                format!("{} {namespace}/{name}", K::kind(&()))
            }))?;
        Ok(())
    }

    async fn list_kind<K>(
        &self,
        kind: ChildKind,
        namespace: &str,
        params: &ListParams,
    ) -> Result<Vec<ChildMeta>, ApiError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let list = self
            .typed::<K>(namespace)
            .list_metadata(params)
            .await
            .map_err(kube_error("list", || {
                format!("{} in {namespace}", kind.as_str())
            }))?;
        Ok(list
            .items
            .iter()
            .map(|item| ChildMeta::from_meta(kind, &item.metadata))
            .collect())
    }

    async fn delete_typed<K>(&self, namespace: &str, name: &str) -> Result<(), ApiError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        match self
            .typed::<K>(namespace)
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(kube_error("delete", || {
                format!("{} {namespace}/{name}", K::kind(&()))
            })(error)),
        }
    }
}

fn kube_error(
    verb: &'static str,
    what: impl FnOnce() -> String,
) -> impl FnOnce(kube::Error) -> ApiError {
    move |source| ApiError::Kube {
        verb,
        what: what(),
        source: Box::new(source),
    }
}

fn to_value(what: &str, object: &DynamicObject) -> Result<Value, ApiError> {
    serde_json::to_value(object).map_err(|source| ApiError::Convert {
        what: what.to_owned(),
        source,
    })
}

#[async_trait]
impl ClusterApi for KubeApi {
    async fn get_ferry(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, ApiError> {
        let what = || format!("{kind} {namespace}/{name}");
        let object = self
            .ferry(kind, namespace)
            .get_opt(name)
            .await
            .map_err(kube_error("get", what))?;
        object.map(|object| to_value(&what(), &object)).transpose()
    }

    async fn list_ferry(&self, kind: Kind, namespace: &str) -> Result<Vec<Value>, ApiError> {
        let what = || format!("{kind} in {namespace}");
        let list = self
            .ferry(kind, namespace)
            .list(&ListParams::default())
            .await
            .map_err(kube_error("list", what))?;
        list.items
            .iter()
            .map(|object| to_value(&what(), object))
            .collect()
    }

    async fn list_secrets(&self, namespace: &str) -> Result<Vec<Secret>, ApiError> {
        let list = self
            .typed::<Secret>(namespace)
            .list(&ListParams::default())
            .await
            .map_err(kube_error("list", || format!("Secret in {namespace}")))?;
        Ok(list.items)
    }

    async fn apply(&self, child: &Child<'_>) -> Result<(), ApiError> {
        match child {
            Child::ConfigMap(object) => self.apply_typed(*object).await,
            Child::Deployment(object) => self.apply_typed(*object).await,
            Child::Service(object) => self.apply_typed(*object).await,
            Child::PodDisruptionBudget(object) => self.apply_typed(*object).await,
        }
    }

    async fn delete(&self, namespace: &str, child: &ChildRef) -> Result<(), ApiError> {
        let name = child.name.as_str();
        match child.kind {
            ChildKind::ConfigMap => self.delete_typed::<ConfigMap>(namespace, name).await,
            ChildKind::Deployment => self.delete_typed::<Deployment>(namespace, name).await,
            ChildKind::Service => self.delete_typed::<Service>(namespace, name).await,
            ChildKind::PodDisruptionBudget => {
                self.delete_typed::<PodDisruptionBudget>(namespace, name)
                    .await
            }
        }
    }

    async fn list_children(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ChildMeta>, ApiError> {
        let params = ListParams::default().labels(&label_selector(labels));
        let mut children = Vec::new();
        children.extend(
            self.list_kind::<ConfigMap>(ChildKind::ConfigMap, namespace, &params)
                .await?,
        );
        children.extend(
            self.list_kind::<Deployment>(ChildKind::Deployment, namespace, &params)
                .await?,
        );
        children.extend(
            self.list_kind::<Service>(ChildKind::Service, namespace, &params)
                .await?,
        );
        children.extend(
            self.list_kind::<PodDisruptionBudget>(
                ChildKind::PodDisruptionBudget,
                namespace,
                &params,
            )
            .await?,
        );
        Ok(children)
    }

    async fn deployment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Deployment>, ApiError> {
        self.typed::<Deployment>(namespace)
            .get_opt(name)
            .await
            .map_err(kube_error("get", || {
                format!("Deployment {namespace}/{name}")
            }))
    }

    async fn apply_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<(), ApiError> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.ferry(kind, namespace)
            .patch_status(name, &params, &Patch::Apply(patch))
            .await
            .map_err(kube_error("apply status of", || {
                format!("{kind} {namespace}/{name}")
            }))?;
        Ok(())
    }

    async fn publish_event(&self, event: &Event) -> Result<(), ApiError> {
        let published = events::Event {
            type_: match event.type_ {
                EventType::Normal => events::EventType::Normal,
                EventType::Warning => events::EventType::Warning,
            },
            reason: event.reason.clone(),
            note: Some(event.note.clone()),
            action: event.action.clone(),
            secondary: None,
        };
        self.recorder
            .publish(&published, &event.regarding)
            .await
            .map_err(kube_error("publish event about", || {
                format!(
                    "{} {}",
                    event.regarding.kind.as_deref().unwrap_or_default(),
                    event.regarding.name.as_deref().unwrap_or_default()
                )
            }))
    }
}
