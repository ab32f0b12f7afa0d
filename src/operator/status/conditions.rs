//! The conditions other than `WorkloadAvailable`: `ReferencesResolved`, `Lagging`,
//! `DeadLetters`, `Suspended` and `Ready`, and how each becomes a `Condition` that keeps its
//! `lastTransitionTime` while its status stays the same.

use std::time::Duration as StdDuration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{DeadLetterQueueState, Probe, Reading, Reason, References, clip};
use crate::api::common::LagThresholds;

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// A condition before it has a type and times.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Verdict {
    pub truth: Truth,
    pub reason: Reason,
    pub message: String,
}

impl Verdict {
    pub fn yes(reason: Reason, message: String) -> Self {
        Self {
            truth: Truth::True,
            reason,
            message,
        }
    }

    pub fn no(reason: Reason, message: String) -> Self {
        Self {
            truth: Truth::False,
            reason,
            message,
        }
    }

    pub fn unknown(reason: Reason, message: String) -> Self {
        Self {
            truth: Truth::Unknown,
            reason,
            message,
        }
    }

    /// The condition of type `type_`, keeping the previous condition's `lastTransitionTime`
    /// when the status is the same, whatever happened to reason and message.
    pub fn into_condition(
        self,
        type_: &str,
        previous: &[Condition],
        generation: Option<i64>,
        now: &Time,
    ) -> Condition {
        let status = self.truth.as_str();
        let last_transition_time = previous
            .iter()
            .find(|condition| condition.type_ == type_ && condition.status == status)
            .map_or_else(|| now.clone(), |kept| kept.last_transition_time.clone());
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: self.reason.as_str().to_owned(),
            message: clip(&self.message),
            observed_generation: generation,
            last_transition_time,
        }
    }
}

pub(super) fn references_resolved(references: &References) -> Verdict {
    match references {
        References::Resolved => Verdict::yes(
            Reason::Resolved,
            "every referenced object exists and the spec is valid".to_owned(),
        ),
        References::Unresolved { reason, message } => Verdict::no(*reason, message.clone()),
    }
}

pub(super) fn suspended<R: Reading>() -> Verdict {
    Verdict::yes(Reason::SuspendedBySpec, R::SUSPENDED.to_owned())
}

/// `Lagging`, from what the probe read, against the thresholds.
pub(super) fn lagging<R: Reading>(
    probe: &Probe<R>,
    thresholds: Option<&LagThresholds>,
    suspended: bool,
) -> Verdict {
    let what = R::WORKLOAD;
    if suspended {
        return Verdict::unknown(
            Reason::Suspended,
            format!("suspend is set: the {what} does not run and reports no lag"),
        );
    }
    let reading = match probe {
        Probe::Read(reading) => reading,
        Probe::NotProbed => {
            return Verdict::unknown(
                Reason::LagNotReported,
                format!("the {what}'s /status has not been read yet"),
            );
        }
        Probe::Unreachable(error) => {
            return Verdict::unknown(
                Reason::StatusEndpointUnreachable,
                format!("status endpoint unreachable: {error}"),
            );
        }
        Probe::Unreadable(error) => {
            return Verdict::unknown(
                Reason::StatusEndpointUnreadable,
                format!("status endpoint answered with an unreadable document: {error}"),
            );
        }
    };
    let (pending, age) = (reading.pending(), reading.oldest_age_seconds());
    if pending.is_none() && age.is_none() {
        return Verdict::unknown(
            Reason::LagNotReported,
            format!("the {what} has not measured its lag yet"),
        );
    }
    let figures = describe_lag(R::PENDING, pending, age);
    let (max_messages, max_age) = thresholds.map_or((None, None), |t| (t.max_messages, t.max_age));
    if max_messages.is_none() && max_age.is_none() {
        return Verdict::no(
            Reason::NoThresholds,
            format!("{figures}; no lag thresholds are set"),
        );
    }
    let over_messages = max_messages
        .zip(pending)
        .filter(|(max, pending)| pending > max);
    let over_age = max_age.zip(age).filter(|(max, age)| {
        StdDuration::from_secs(u64::try_from(*age).unwrap_or(0)) > max.as_std()
    });
    let limits = {
        let mut limits = Vec::new();
        if let Some(max) = max_messages {
            limits.push(format!("lag.maxMessages {max}"));
        }
        if let Some(max) = max_age {
            limits.push(format!("lag.maxAge {max}"));
        }
        limits.join(" and ")
    };
    match (over_messages, over_age) {
        (Some((max, _)), Some((max_age, _))) => Verdict::yes(
            Reason::MessagesAndAgeAboveThreshold,
            format!("{figures}: above lag.maxMessages {max} and lag.maxAge {max_age}"),
        ),
        (Some((max, _)), None) => Verdict::yes(
            Reason::MessagesAboveThreshold,
            format!("{figures}: above lag.maxMessages {max}"),
        ),
        (None, Some((max_age, _))) => Verdict::yes(
            Reason::AgeAboveThreshold,
            format!("{figures}: above lag.maxAge {max_age}"),
        ),
        (None, None) => Verdict::no(
            Reason::WithinThresholds,
            format!("{figures}: within {limits}"),
        ),
    }
}

fn describe_lag(noun: &str, pending: Option<i64>, age: Option<i64>) -> String {
    match (pending, age) {
        (Some(pending), Some(age)) => format!("{pending} {noun}, the oldest {age}s old"),
        (Some(pending), None) => format!("{pending} {noun}"),
        (None, Some(age)) => format!("the oldest of the {noun} is {age}s old"),
        (None, None) => format!("{noun} not measured"),
    }
}

/// `DeadLetters`: the dead-letter queue's depth against its alert threshold, or, without a
/// queue, the rows a relay left in the outbox marked failed.
pub(super) fn dead_letters(
    queue: Option<&DeadLetterQueueState>,
    failed_rows: Option<i64>,
) -> Verdict {
    let Some(queue) = queue else {
        return match failed_rows.filter(|rows| *rows > 0) {
            Some(rows) => Verdict::yes(
                Reason::FailedRowsInOutbox,
                format!(
                    "{rows} rows can never be published and stay in the outbox marked failed: there is no dead-letter queue to move them to"
                ),
            ),
            None => Verdict::no(
                Reason::NoDeadLetterQueue,
                "no dead-letter queue is set".to_owned(),
            ),
        };
    };
    let name = &queue.name;
    match (queue.depth, queue.alert_threshold) {
        (None, _) => Verdict::unknown(
            Reason::DepthUnknown,
            format!("DeadLetterQueue {name} has not reported its depth yet"),
        ),
        (Some(depth), None) => Verdict::no(
            Reason::NoAlertThreshold,
            format!(
                "DeadLetterQueue {name} holds {depth} dead letters waiting for a decision; it sets no alert.depthThreshold"
            ),
        ),
        (Some(depth), Some(threshold)) if depth > threshold => Verdict::yes(
            Reason::AboveAlertThreshold,
            format!(
                "DeadLetterQueue {name} holds {depth} dead letters waiting for a decision, above its alert threshold of {threshold}"
            ),
        ),
        (Some(depth), Some(threshold)) => Verdict::no(
            Reason::BelowAlertThreshold,
            format!(
                "DeadLetterQueue {name} holds {depth} dead letters waiting for a decision, within its alert threshold of {threshold}"
            ),
        ),
    }
}

/// The verdicts `Ready` is computed from.
pub(super) struct Parts<'a> {
    pub references: &'a Verdict,
    pub suspended: Option<&'a Verdict>,
    pub workload: &'a Verdict,
    pub lagging: &'a Verdict,
    pub dead_letters: &'a Verdict,
}

/// `Ready`: true when the references resolve, the workload is available and it is not
/// suspended. `Lagging` and `DeadLetters` are warnings: they change the reason to
/// `AvailableWithWarnings` and are named in the message, but never make `Ready` false.
pub(super) fn ready(what: &str, parts: &Parts<'_>) -> Verdict {
    if parts.references.truth != Truth::True {
        return Verdict::no(parts.references.reason, parts.references.message.clone());
    }
    if let Some(suspended) = parts.suspended {
        return Verdict::no(Reason::Suspended, suspended.message.clone());
    }
    let workload = parts.workload;
    match workload.truth {
        Truth::False => return Verdict::no(workload.reason, workload.message.clone()),
        Truth::Unknown => return Verdict::unknown(workload.reason, workload.message.clone()),
        Truth::True => {}
    }
    let mut message = format!("the {what} is available ({})", workload.message);
    let mut warned = false;
    for (type_, verdict) in [
        ("Lagging", parts.lagging),
        ("DeadLetters", parts.dead_letters),
    ] {
        match verdict.truth {
            Truth::True => {
                warned = true;
                message.push_str(&format!("; warning, {type_}: {}", verdict.message));
            }
            Truth::Unknown => {
                message.push_str(&format!("; {type_} unknown: {}", verdict.message));
            }
            Truth::False => {}
        }
    }
    let reason = if warned {
        Reason::AvailableWithWarnings
    } else {
        Reason::Available
    };
    Verdict::yes(reason, message)
}
