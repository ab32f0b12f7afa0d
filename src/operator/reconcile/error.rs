//! Why a reconcile did not apply a resource's children, with a stable category for metrics and
//! events, and whether trying again soon could help.

use crate::{
    operator::{api::ApiError, build::BuildError},
    validate::FieldError,
};

/// The resource concerned is not named here: the outcome, the event and the log line name it.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The resource itself fails Ferry's checks (decode, name, spec).
    #[error("invalid spec: {}", join(.0))]
    InvalidSpec(Vec<FieldError>),
    /// A reference does not resolve: the object or Secret key it names is missing, or the
    /// object is itself invalid.
    #[error("references do not resolve: {}", join(.0))]
    MissingReference(Vec<FieldError>),
    /// The children cannot be built from a resource that passed validation (two Secret keys
    /// mapping to one variable, say).
    #[error("cannot build the children: {0}")]
    Build(#[source] BuildError),
    /// The API server failed a call.
    #[error(transparent)]
    Api(#[from] ApiError),
}

fn join(errors: &[FieldError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("; ")
}

impl ReconcileError {
    /// A stable, low-cardinality name for metrics labels.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "invalid_spec",
            Self::MissingReference(_) => "missing_reference",
            Self::Build(_) => "build",
            Self::Api(_) => "api",
        }
    }

    /// The same in PascalCase, for event and condition reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::MissingReference(_) => "MissingReference",
            Self::Build(_) => "BuildFailed",
            Self::Api(_) => "ApiError",
        }
    }

    /// Only a failed API call can succeed when tried again unchanged; everything else waits
    /// for a change to the resource or what it references.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Api(_))
    }

    /// The fields at fault, each naming its field path (or the object it concerns).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Self::InvalidSpec(errors) | Self::MissingReference(errors) => errors,
            Self::Build(BuildError::Unresolved(errors)) => errors,
            Self::Build(_) | Self::Api(_) => &[],
        }
    }
}
