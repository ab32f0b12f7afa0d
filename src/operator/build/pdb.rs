//! The PodDisruptionBudget that keeps all but one pod of a workload running through voluntary
//! disruptions (node drains); only for workloads with more than one replica.

use k8s_openapi::{
    api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{Workload, with_spec_hash};

/// `maxUnavailable: 1` when the workload runs more than one pod, else none: with one pod
/// (or none, suspended) such a budget would protect nothing.
pub fn build_pdb(workload: &Workload) -> Option<PodDisruptionBudget> {
    (workload.replicas > 1).then(|| {
        with_spec_hash(PodDisruptionBudget {
            metadata: workload.child_metadata(),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(workload.selector_labels()),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        })
    })
}
