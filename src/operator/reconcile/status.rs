//! The status step: what the operator observed about a resource (the outcome of the steps
//! before, its Deployment, its workload's `/status`, its dead-letter queue) turned into the
//! status `status::compute_status` gives, written with a server-side apply on the status
//! subresource only when it differs from the stored one other than in its times.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use serde_json::Value;

use super::{Outcome, ReconcileError, fetch::Fetched};
use crate::{
    api::{DeadLetterQueue, Kind, common::LagThresholds},
    operator::{
        api::ClusterApi,
        build::{Component, child_name},
        probe::{ProbeTarget, StatusProbe},
        status::{
            ConsumerReading, DeadLetterQueueState, DeploymentState, Observed, Probe, Reading,
            Reason, References, RelayReading, compute_status, status_changed, status_patch,
        },
    },
};

/// Writes the status of the resource `outcome` is about, when it changed. A resource that is
/// gone gets none. Only a failed API call is an error: an unreachable workload is part of the
/// status.
pub(super) async fn write_status(
    api: &dyn ClusterApi,
    probe: &dyn StatusProbe,
    fetched: &Fetched,
    outcome: &Outcome,
) -> Result<(), ReconcileError> {
    match fetched.kind {
        Kind::OutboxSource => write::<RelayReading>(api, probe, fetched, outcome).await,
        Kind::Consumer => write::<ConsumerReading>(api, probe, fetched, outcome).await,
        // Only the two workload kinds are reconciled.
        Kind::BrokerTopic | Kind::RetryPolicy | Kind::DeadLetterQueue => Ok(()),
    }
}

async fn write<R: Reading>(
    api: &dyn ClusterApi,
    probe: &dyn StatusProbe,
    fetched: &Fetched,
    outcome: &Outcome,
) -> Result<(), ReconcileError> {
    let Some(observed) = observe::<R>(api, probe, fetched, outcome).await? else {
        return Ok(());
    };
    let status = compute_status(&observed);
    if !status_changed(observed.previous.as_ref(), &status) {
        return Ok(());
    }
    api.apply_status(
        fetched.kind,
        &fetched.namespace,
        &fetched.name,
        &status_patch(&status),
    )
    .await?;
    tracing::debug!(
        kind = fetched.kind.as_str(),
        namespace = %fetched.namespace,
        name = %fetched.name,
        generation = observed.generation,
        "status written"
    );
    Ok(())
}

/// Everything the status of `fetched` is computed from; `None` when it gets no status.
async fn observe<R: Reading>(
    api: &dyn ClusterApi,
    probe: &dyn StatusProbe,
    fetched: &Fetched,
    outcome: &Outcome,
) -> Result<Option<Observed<R>>, ReconcileError> {
    let spec = fetched.parent.get("spec");
    let observed = |references, suspended, deployment, probe, generation| Observed {
        generation,
        references,
        suspended,
        deployment,
        probe,
        dead_letters: dead_letter_queue(fetched),
        lag: spec
            .and_then(|spec| spec.get("lag"))
            .and_then(|lag| serde_json::from_value::<LagThresholds>(lag.clone()).ok()),
        previous: fetched
            .parent
            .get("status")
            .and_then(|status| serde_json::from_value(status.clone()).ok()),
        now: Time(Timestamp::now()),
    };
    match outcome {
        Outcome::Gone { .. } => Ok(None),
        Outcome::Invalid {
            generation, error, ..
        } => {
            // A workload built from the last valid spec keeps running: say how it does.
            let component = match fetched.kind {
                Kind::OutboxSource => Component::Relay,
                _ => Component::Consumer,
            };
            let name = child_name(&fetched.name, component);
            let deployment = api.deployment(&fetched.namespace, &name).await?;
            let suspended = spec
                .and_then(|spec| spec.get("suspend"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            Ok(Some(observed(
                unresolved(error),
                suspended,
                deployment.as_ref().map(DeploymentState::from),
                Probe::NotProbed,
                *generation,
            )))
        }
        Outcome::Applied(applied) => {
            let deployment = applied.deployment_state().cloned();
            let running = deployment
                .as_ref()
                .is_some_and(|deployment| deployment.ready_replicas > 0);
            let read = if applied.suspended() || !running {
                Probe::NotProbed
            } else {
                let target = ProbeTarget {
                    namespace: applied.parent().namespace.clone(),
                    service: applied.deployment().to_owned(),
                    port: applied.http_port(),
                };
                Probe::from_fetch(probe.fetch(&target).await)
            };
            Ok(Some(observed(
                References::Resolved,
                applied.suspended(),
                deployment,
                read,
                applied.generation(),
            )))
        }
    }
}

/// `ReferencesResolved` of a resource whose children could not be built.
fn unresolved(error: &ReconcileError) -> References {
    match error {
        ReconcileError::Build(build) => References::from_build_error(build),
        _ if !error.field_errors().is_empty() => {
            References::from_field_errors(error.field_errors())
        }
        // An invalid spec or a missing reference always names a field; should one not, the
        // error still says what is wrong.
        _ => References::Unresolved {
            reason: Reason::InvalidSpec,
            message: error.to_string(),
        },
    }
}

/// The dead-letter queue the spec references, as far as it can be read: the queue's alert
/// threshold and the depth it reports (none when it does not exist or reports none).
fn dead_letter_queue(fetched: &Fetched) -> Option<DeadLetterQueueState> {
    let name = fetched
        .parent
        .pointer("/spec/deadLetterQueueRef/name")
        .and_then(Value::as_str)?;
    let queue = fetched
        .objects
        .iter()
        .filter(|(kind, _)| *kind == Kind::DeadLetterQueue)
        .find(|(_, object)| object.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
        .and_then(|(_, object)| serde_json::from_value::<DeadLetterQueue>(object.clone()).ok());
    Some(match queue {
        Some(queue) => DeadLetterQueueState::from(&queue),
        None => DeadLetterQueueState {
            name: name.to_owned(),
            ..DeadLetterQueueState::default()
        },
    })
}
