//! Writing a status: whether it changed (times aside), and the server-side apply body for the
//! status subresource.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::Resource;
use serde_json::{Value, json};

use super::WorkloadStatus;
use crate::api::status::condition_type;

/// The condition types the status step writes on an OutboxSource or a Consumer. Conditions of
/// other types (written by someone else) are left alone and not compared.
pub const CONDITION_TYPES: [&str; 6] = [
    condition_type::READY,
    condition_type::REFERENCES_RESOLVED,
    condition_type::WORKLOAD_AVAILABLE,
    condition_type::LAGGING,
    condition_type::DEAD_LETTERS,
    condition_type::SUSPENDED,
];

/// Whether `new` differs from the stored `old` in anything but times: conditions'
/// `lastTransitionTime` and `lastError.at` are ignored, as is the order of conditions. No
/// stored status counts as changed.
pub fn status_changed<S: WorkloadStatus>(old: Option<&S>, new: &S) -> bool {
    old.is_none_or(|old| without_times(old) != without_times(new))
}

fn without_times<S: WorkloadStatus>(status: &S) -> S {
    let mut status = status.clone();
    let epoch = Time(Timestamp::UNIX_EPOCH);
    let conditions = &mut status.common_mut().conditions;
    conditions.retain(|condition| CONDITION_TYPES.contains(&condition.type_.as_str()));
    for condition in conditions.iter_mut() {
        condition.last_transition_time = epoch.clone();
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    if let Some(error) = status.last_error_mut() {
        error.at = None;
    }
    status
}

/// The body of a server-side apply patch on the status subresource of a `S::Kind`: its
/// `apiVersion`, `kind` and the whole `status`.
pub fn status_patch<S: WorkloadStatus>(status: &S) -> Value {
    // `json!` serializes the status in place; these status types hold only strings, numbers,
    // booleans, times and lists, which always serialize.
    json!({
        "apiVersion": S::Kind::api_version(&()),
        "kind": S::Kind::kind(&()),
        "status": status,
    })
}
