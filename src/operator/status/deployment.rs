//! `WorkloadAvailable`, from what the Deployment controller reports about the workload's
//! Deployment.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition};

use super::{Reason, Verdict};

/// The parts of a Deployment its availability is judged from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeploymentState {
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `spec.replicas` (1 when unset, as the API server defaults it).
    pub desired_replicas: i32,
    /// `status.observedGeneration`.
    pub observed_generation: Option<i64>,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
    pub updated_replicas: i32,
    pub conditions: Vec<DeploymentCondition>,
}

impl From<&Deployment> for DeploymentState {
    fn from(deployment: &Deployment) -> Self {
        let status = deployment.status.clone().unwrap_or_default();
        Self {
            name: deployment.metadata.name.clone().unwrap_or_default(),
            generation: deployment.metadata.generation,
            desired_replicas: deployment
                .spec
                .as_ref()
                .and_then(|spec| spec.replicas)
                .unwrap_or(1),
            observed_generation: status.observed_generation,
            replicas: status.replicas.unwrap_or(0),
            ready_replicas: status.ready_replicas.unwrap_or(0),
            available_replicas: status.available_replicas.unwrap_or(0),
            updated_replicas: status.updated_replicas.unwrap_or(0),
            conditions: status.conditions.unwrap_or_default(),
        }
    }
}

impl DeploymentState {
    fn condition(&self, type_: &str) -> Option<&DeploymentCondition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the Deployment controller has acted on the current spec.
    fn observed(&self) -> bool {
        match (self.generation, self.observed_generation) {
            (Some(generation), Some(observed)) => observed >= generation,
            (None, _) => true,
            (Some(_), None) => false,
        }
    }

    fn rolling_out(&self) -> bool {
        !self.observed()
            || self.updated_replicas < self.desired_replicas
            || self.replicas > self.desired_replicas
    }

    fn counts(&self) -> String {
        format!(
            "{} of {} replicas ready, {} available, {} up to date",
            self.ready_replicas,
            self.desired_replicas,
            self.available_replicas,
            self.updated_replicas
        )
    }
}

/// `WorkloadAvailable` for the workload's Deployment, or its absence.
pub(super) fn workload_available(
    what: &str,
    deployment: Option<&DeploymentState>,
    suspended: bool,
) -> Verdict {
    let Some(deployment) = deployment else {
        return if suspended {
            Verdict::no(
                Reason::Suspended,
                format!("suspend is set: the {what} does not run"),
            )
        } else {
            Verdict::no(
                Reason::DeploymentNotFound,
                format!("the {what}'s Deployment does not exist yet"),
            )
        };
    };
    let name = &deployment.name;
    if suspended {
        let running = if deployment.replicas > 0 {
            format!(", {} pods still stopping", deployment.replicas)
        } else {
            String::new()
        };
        return Verdict::no(
            Reason::Suspended,
            format!("suspend is set: Deployment {name} is scaled to zero{running}"),
        );
    }
    if deployment.desired_replicas == 0 {
        return Verdict::no(
            Reason::ScaledToZero,
            format!(
                "Deployment {name} has 0 replicas: set replicas above 0 (or suspend: true to stop the {what} on purpose)"
            ),
        );
    }
    if let Some(progressing) = deployment.condition("Progressing")
        && progressing.status == "False"
        && progressing.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        let detail = progressing.message.as_deref().unwrap_or("no progress");
        return Verdict::no(
            Reason::ProgressDeadlineExceeded,
            format!(
                "Deployment {name} made no progress within its deadline: {detail} ({})",
                deployment.counts()
            ),
        );
    }
    let available = deployment.condition("Available");
    match available.map(|c| c.status.as_str()) {
        Some("True") if deployment.available_replicas > 0 => {
            if deployment.rolling_out() {
                Verdict::yes(
                    Reason::RollingOut,
                    format!(
                        "Deployment {name} is available while it rolls out: {}",
                        deployment.counts()
                    ),
                )
            } else {
                Verdict::yes(
                    Reason::ReplicasAvailable,
                    format!("Deployment {name}: {}", deployment.counts()),
                )
            }
        }
        Some("True") | Some("False") => {
            let detail = available
                .and_then(|c| c.message.as_deref())
                .map(|message| format!(" ({message})"))
                .unwrap_or_default();
            Verdict::no(
                Reason::ReplicasUnavailable,
                format!(
                    "Deployment {name} has too few pods available: {}{detail}",
                    deployment.counts()
                ),
            )
        }
        _ => Verdict::unknown(
            Reason::DeploymentPending,
            format!(
                "Deployment {name} has not reported availability yet: {}",
                deployment.counts()
            ),
        ),
    }
}
