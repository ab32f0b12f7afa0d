//! The outcome of validation and reference resolution, as the `ReferencesResolved` condition
//! states it: a specific reason and a message naming each field and object.

use super::Reason;
use crate::{operator::build::BuildError, validate::FieldError};

/// Whether the resource's spec is valid and everything it references resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum References {
    Resolved,
    Unresolved {
        /// The reason of the first problem (problems come in field order).
        reason: Reason,
        /// Every problem, `field: message`, joined with `; `.
        message: String,
    },
}

impl References {
    /// From the problems validation or resolution found; none means resolved.
    pub fn from_field_errors(errors: &[FieldError]) -> Self {
        let Some(first) = errors.first() else {
            return Self::Resolved;
        };
        let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
        Self::Unresolved {
            reason: classify(first),
            message: problems.join("; "),
        }
    }

    /// From the error that stopped the build step.
    pub fn from_build_error(error: &BuildError) -> Self {
        match error {
            BuildError::Unresolved(errors) if !errors.is_empty() => Self::from_field_errors(errors),
            BuildError::SecretEnvClash { .. } => Self::Unresolved {
                reason: Reason::SecretEnvClash,
                message: error.to_string(),
            },
            _ => Self::Unresolved {
                reason: Reason::InvalidSpec,
                message: error.to_string(),
            },
        }
    }

    pub fn is_resolved(&self) -> bool {
        matches!(self, Self::Resolved)
    }
}

/// The reason for one problem. Validation and resolution report problems as a field and a
/// message that starts with the kind and quoted name of the object at fault (`BrokerTopic
/// "orders" not found in namespace "shop"`); `tests/operator_status.rs` runs the real resolver
/// so that a change to those messages shows up there.
fn classify(error: &FieldError) -> Reason {
    let message = error.message.as_str();
    let about = |kind: &str| {
        message
            .strip_prefix(kind)
            .is_some_and(|rest| rest.starts_with(" \""))
    };
    let not_found = message.contains("\" not found");
    if about("BrokerTopic") {
        if not_found {
            Reason::BrokerTopicNotFound
        } else {
            Reason::BrokerTopicInvalid
        }
    } else if about("RetryPolicy") && not_found {
        Reason::RetryPolicyNotFound
    } else if about("DeadLetterQueue") && not_found {
        Reason::DeadLetterQueueNotFound
    } else if about("Secret") && not_found {
        Reason::SecretNotFound
    } else if about("Secret") && message.contains("\" has no key ") {
        Reason::SecretKeyNotFound
    } else {
        Reason::InvalidSpec
    }
}
