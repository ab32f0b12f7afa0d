//! The apply step: server-side apply every wanted child, then delete the resource's children
//! that are no longer wanted.

use std::collections::BTreeSet;

use crate::operator::{
    api::{ApiError, Child, ClusterApi},
    build::{ChildRef, Children, Workload},
};

/// What the apply step did, in the order it did it.
pub(super) struct Written {
    pub applied: Vec<ChildRef>,
    pub deleted: Vec<ChildRef>,
}

/// Applies `children` of `workload`, then deletes every child that carries the workload's
/// labels and is controlled by the resource with `owner_uid` but is not wanted any more. A
/// child with the labels but another controller (or none) is never touched.
pub(super) async fn apply(
    api: &dyn ClusterApi,
    workload: &Workload,
    children: &Children,
) -> Result<Written, ApiError> {
    let mut applied = Vec::new();
    for child in Child::all(children) {
        api.apply(&child).await?;
        applied.push(child.child_ref());
    }

    let wanted: BTreeSet<ChildRef> = children.wanted().into_iter().collect();
    let mut existing = api
        .list_children(&workload.namespace, &workload.labels())
        .await?;
    existing.sort_by_key(|child| child.child_ref());
    let mut deleted = Vec::new();
    for child in existing {
        let ours = child.controller_uid() == Some(workload.owner.uid.as_str());
        let child = child.child_ref();
        if ours && !wanted.contains(&child) {
            api.delete(&workload.namespace, &child).await?;
            tracing::info!(
                namespace = %workload.namespace,
                resource = %workload.resource,
                kind = child.kind.as_str(),
                child = %child.name,
                "deleted a child that is no longer wanted"
            );
            deleted.push(child);
        }
    }
    Ok(Written { applied, deleted })
}
