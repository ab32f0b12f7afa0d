//! The status step: pure functions from what the operator observed about an OutboxSource or a
//! Consumer (its references, its Deployment, its workload's `/status`, its dead-letter queue)
//! to the status it writes. No API calls.
//!
//! `compute_status` gives the new status, `status_changed` says whether it differs from the
//! stored one other than in its times (when it does not, nothing is written), and
//! `status_patch` is the body of the server-side apply on the status subresource.

mod conditions;
mod deployment;
mod reading;
mod reason;
mod references;
mod write;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub use deployment::DeploymentState;
pub use reading::{ConsumerReading, Probe, Reading, RelayReading, ReportedError, WorkloadStatus};
pub use reason::Reason;
pub use references::References;
pub use write::{CONDITION_TYPES, status_changed, status_patch};

use crate::api::{DeadLetterQueue, common::LagThresholds, status::condition_type};
use conditions::{Parts, Verdict};

/// The longest condition or error message written, in bytes; longer ones are cut.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// The dead-letter queue a workload writes to, as far as its `DeadLetters` condition needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterQueueState {
    pub name: String,
    /// Dead letters waiting for a decision, when the queue has reported it.
    pub depth: Option<i64>,
    /// `spec.alert.depthThreshold`.
    pub alert_threshold: Option<i64>,
}

impl From<&DeadLetterQueue> for DeadLetterQueueState {
    fn from(queue: &DeadLetterQueue) -> Self {
        Self {
            name: queue.metadata.name.clone().unwrap_or_default(),
            depth: queue.status.as_ref().and_then(|status| status.depth),
            alert_threshold: queue.spec.alert.as_ref().map(|alert| alert.depth_threshold),
        }
    }
}

/// Everything one status is computed from. `R` is the workload's `/status` document:
/// `RelayReading` for an OutboxSource, `ConsumerReading` for a Consumer.
#[derive(Clone, Debug)]
pub struct Observed<R: Reading> {
    /// The resource's `metadata.generation`.
    pub generation: Option<i64>,
    /// Validation and reference resolution.
    pub references: References,
    /// The spec's `suspend`.
    pub suspended: bool,
    /// The workload's Deployment; `None` when it does not exist.
    pub deployment: Option<DeploymentState>,
    /// What the workload's `/status` said, or why it said nothing.
    pub probe: Probe<R>,
    /// The dead-letter queue the spec references; `None` when it references none.
    pub dead_letters: Option<DeadLetterQueueState>,
    /// The spec's `lag`.
    pub lag: Option<LagThresholds>,
    /// The status stored now: conditions keep their `lastTransitionTime` from it, and figures
    /// the probe did not read keep their values.
    pub previous: Option<R::Status>,
    pub now: Time,
}

/// The status `observed` calls for.
///
/// Conditions: `Ready`, `ReferencesResolved`, `WorkloadAvailable`, `Lagging`, `DeadLetters`,
/// and `Suspended` while `suspend` is set. Figures: from the probe when it read the
/// `/status`, else as they were; ready replicas from the Deployment.
pub fn compute_status<R: Reading>(observed: &Observed<R>) -> R::Status {
    let mut status = observed.previous.clone().unwrap_or_default();
    if let Probe::Read(reading) = &observed.probe {
        reading.write_figures(&mut status);
    }
    status.set_ready_replicas(
        observed
            .deployment
            .as_ref()
            .map(|deployment| deployment.ready_replicas),
    );

    let references = conditions::references_resolved(&observed.references);
    let suspended = observed.suspended.then(conditions::suspended::<R>);
    let workload = deployment::workload_available(
        R::WORKLOAD,
        observed.deployment.as_ref(),
        observed.suspended,
    );
    let lagging = conditions::lagging(&observed.probe, observed.lag.as_ref(), observed.suspended);
    // The workload counts its own letters in the queue; the queue's status (all origins) is
    // the fallback.
    let queue = observed.dead_letters.clone().map(|mut queue| {
        if let Probe::Read(reading) = &observed.probe
            && let Some(depth) = reading.dead_letter_depth()
        {
            queue.depth = Some(depth);
        }
        queue
    });
    let dead_letters = conditions::dead_letters(queue.as_ref(), status.failed_rows());
    let ready = conditions::ready(
        R::WORKLOAD,
        &Parts {
            references: &references,
            suspended: suspended.as_ref(),
            workload: &workload,
            lagging: &lagging,
            dead_letters: &dead_letters,
        },
    );

    let previous = observed
        .previous
        .as_ref()
        .map(|previous| previous.common().conditions.clone())
        .unwrap_or_default();
    let verdicts: [(&str, Option<Verdict>); 6] = [
        (condition_type::READY, Some(ready)),
        (condition_type::REFERENCES_RESOLVED, Some(references)),
        (condition_type::WORKLOAD_AVAILABLE, Some(workload)),
        (condition_type::LAGGING, Some(lagging)),
        (condition_type::DEAD_LETTERS, Some(dead_letters)),
        (condition_type::SUSPENDED, suspended),
    ];
    let conditions = verdicts
        .into_iter()
        .filter_map(|(type_, verdict)| {
            verdict.map(|verdict| {
                verdict.into_condition(type_, &previous, observed.generation, &observed.now)
            })
        })
        .collect();

    let common = status.common_mut();
    common.observed_generation = observed.generation;
    common.conditions = conditions;
    status
}

/// `text`, cut to at most `MAX_MESSAGE_BYTES` on a character boundary, with `...` when cut.
fn clip(text: &str) -> String {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_MESSAGE_BYTES - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
