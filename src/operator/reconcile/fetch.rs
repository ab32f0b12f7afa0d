//! The fetch step: the resource, and everything in its namespace it may reference.

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use crate::{
    api::Kind,
    operator::api::{ApiError, ClusterApi},
};

/// The kinds a resource can reference.
const REFERENCED: [Kind; 3] = [Kind::BrokerTopic, Kind::RetryPolicy, Kind::DeadLetterQueue];

/// What the validate step works on, as the API server returned it.
pub(super) struct Fetched {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub parent: Value,
    /// BrokerTopics, RetryPolicies and DeadLetterQueues of the namespace.
    pub objects: Vec<(Kind, Value)>,
    /// Read for their keys only; no value is ever logged or copied into a child.
    pub secrets: Vec<Secret>,
}

impl Fetched {
    /// Being deleted: its children go with it through garbage collection.
    pub fn is_deleting(&self) -> bool {
        self.parent.pointer("/metadata/deletionTimestamp").is_some()
    }

    pub fn generation(&self) -> Option<i64> {
        self.parent
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
    }

    pub fn uid(&self) -> Option<&str> {
        self.parent.pointer("/metadata/uid").and_then(Value::as_str)
    }
}

/// `None` when the resource does not exist (any more).
pub(super) async fn fetch(
    api: &dyn ClusterApi,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<Option<Fetched>, ApiError> {
    let Some(parent) = api.get_ferry(kind, namespace, name).await? else {
        return Ok(None);
    };
    let mut objects = Vec::new();
    for referenced in REFERENCED {
        let listed = api.list_ferry(referenced, namespace).await?;
        objects.extend(listed.into_iter().map(|object| (referenced, object)));
    }
    let secrets = api.list_secrets(namespace).await?;
    Ok(Some(Fetched {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        parent,
        objects,
        secrets,
    }))
}
