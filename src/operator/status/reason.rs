//! The reasons Ferry's workload conditions give: stable CamelCase words, one set for all of them.

use std::fmt;

/// Why a condition has its status. The strings never change: alerts and scripts match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    // ReferencesResolved
    /// Every reference resolves and the spec is valid.
    Resolved,
    BrokerTopicNotFound,
    /// The BrokerTopic exists but cannot be used (for example it reads a Secret key it lacks).
    BrokerTopicInvalid,
    RetryPolicyNotFound,
    DeadLetterQueueNotFound,
    SecretNotFound,
    SecretKeyNotFound,
    /// Two Secret keys map to the same environment variable.
    SecretEnvClash,
    /// A field of the spec itself is wrong.
    InvalidSpec,

    // WorkloadAvailable
    /// The Deployment has the pods it needs available.
    ReplicasAvailable,
    /// Available, while a rollout replaces pods.
    RollingOut,
    DeploymentNotFound,
    /// The Deployment controller has not reported on the current spec yet.
    DeploymentPending,
    ProgressDeadlineExceeded,
    ReplicasUnavailable,
    /// Zero replicas asked for without `suspend`.
    ScaledToZero,
    /// `suspend: true` (also the reason of `Ready` and of `Lagging` then).
    Suspended,

    // Lagging
    WithinThresholds,
    NoThresholds,
    MessagesAboveThreshold,
    AgeAboveThreshold,
    MessagesAndAgeAboveThreshold,
    /// The workload answered but has not measured its lag yet, or has not been asked.
    LagNotReported,
    StatusEndpointUnreachable,
    StatusEndpointUnreadable,

    // DeadLetters
    NoDeadLetterQueue,
    NoAlertThreshold,
    BelowAlertThreshold,
    AboveAlertThreshold,
    /// The dead-letter queue has not reported its depth.
    DepthUnknown,
    /// A relay without a dead-letter queue left rows in the outbox marked failed.
    FailedRowsInOutbox,

    // Suspended
    SuspendedBySpec,

    // Ready (when not ready, `Ready` takes the reason of the condition that stops it)
    /// References resolve and the workload is available, with no warning.
    Available,
    /// As `Available`, while `Lagging` or `DeadLetters` is true.
    AvailableWithWarnings,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resolved => "Resolved",
            Self::BrokerTopicNotFound => "BrokerTopicNotFound",
            Self::BrokerTopicInvalid => "BrokerTopicInvalid",
            Self::RetryPolicyNotFound => "RetryPolicyNotFound",
            Self::DeadLetterQueueNotFound => "DeadLetterQueueNotFound",
            Self::SecretNotFound => "SecretNotFound",
            Self::SecretKeyNotFound => "SecretKeyNotFound",
            Self::SecretEnvClash => "SecretEnvClash",
            Self::InvalidSpec => "InvalidSpec",
            Self::ReplicasAvailable => "ReplicasAvailable",
            Self::RollingOut => "RollingOut",
            Self::DeploymentNotFound => "DeploymentNotFound",
            Self::DeploymentPending => "DeploymentPending",
            Self::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
            Self::ReplicasUnavailable => "ReplicasUnavailable",
            Self::ScaledToZero => "ScaledToZero",
            Self::Suspended => "Suspended",
            Self::WithinThresholds => "WithinThresholds",
            Self::NoThresholds => "NoThresholds",
            Self::MessagesAboveThreshold => "MessagesAboveThreshold",
            Self::AgeAboveThreshold => "AgeAboveThreshold",
            Self::MessagesAndAgeAboveThreshold => "MessagesAndAgeAboveThreshold",
            Self::LagNotReported => "LagNotReported",
            Self::StatusEndpointUnreachable => "StatusEndpointUnreachable",
            Self::StatusEndpointUnreadable => "StatusEndpointUnreadable",
            Self::NoDeadLetterQueue => "NoDeadLetterQueue",
            Self::NoAlertThreshold => "NoAlertThreshold",
            Self::BelowAlertThreshold => "BelowAlertThreshold",
            Self::AboveAlertThreshold => "AboveAlertThreshold",
            Self::DepthUnknown => "DepthUnknown",
            Self::FailedRowsInOutbox => "FailedRowsInOutbox",
            Self::SuspendedBySpec => "SuspendedBySpec",
            Self::Available => "Available",
            Self::AvailableWithWarnings => "AvailableWithWarnings",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
