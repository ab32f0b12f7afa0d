//! The apply step: server-side apply every wanted child whose live object is not already the
//! one built, then delete the resource's children that are no longer wanted.

use std::collections::{BTreeMap, BTreeSet};

use crate::operator::{
    api::{ApiError, Child, ChildMeta, ClusterApi},
    build::{ChildRef, Children, Workload},
};

/// What the apply step did, in the order it did it.
pub(super) struct Written {
    pub applied: Vec<ChildRef>,
    /// Wanted children left alone: the live object, controlled by this resource, carries the
    /// `ferry.dev/spec-hash` of the child as built.
    pub unchanged: Vec<ChildRef>,
    pub deleted: Vec<ChildRef>,
}

/// Lists the children that carry the workload's labels, applies each of `children` unless its
/// live object is controlled by the resource with `owner_uid` and carries the same
/// `ferry.dev/spec-hash` (so a second pass over an unchanged resource writes nothing), then
/// deletes every listed child controlled by the resource that is not wanted any more. A child
/// with the labels but another controller (or none) is never deleted.
pub(super) async fn apply(
    api: &dyn ClusterApi,
    workload: &Workload,
    children: &Children,
) -> Result<Written, ApiError> {
    let owner_uid = workload.owner.uid.as_str();
    let mut existing = api
        .list_children(&workload.namespace, &workload.labels())
        .await?;
    existing.sort_by_key(ChildMeta::child_ref);
    let live: BTreeMap<ChildRef, &ChildMeta> = existing
        .iter()
        .filter(|child| child.controller_uid() == Some(owner_uid))
        .map(|child| (child.child_ref(), child))
        .collect();

    let (mut applied, mut unchanged) = (Vec::new(), Vec::new());
    for child in Child::all(children) {
        let child_ref = child.child_ref();
        let up_to_date = live.get(&child_ref).is_some_and(|live| {
            child.spec_hash().is_some() && live.spec_hash() == child.spec_hash()
        });
        if up_to_date {
            unchanged.push(child_ref);
        } else {
            api.apply(&child).await?;
            applied.push(child_ref);
        }
    }

    let wanted: BTreeSet<ChildRef> = children.wanted().into_iter().collect();
    let mut deleted = Vec::new();
    for child in live.into_keys().filter(|child| !wanted.contains(child)) {
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
    Ok(Written {
        applied,
        unchanged,
        deleted,
    })
}
