//! Where a secret value (a connection URL) is read from when the workload starts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A secret value's source. The operator uses `env` (a Secret key mapped into the pod's
/// environment), so no secret value is ever written into a ConfigMap; `value` is for standalone
/// mode and tests, where the value is already in memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum SecretSource {
    /// An environment variable.
    Env(String),
    /// A file, e.g. a mounted Secret volume; surrounding whitespace is trimmed.
    File(PathBuf),
    /// The value itself.
    Value(String),
}

/// A secret that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

impl SecretSource {
    pub fn read(&self) -> Result<String, SecretError> {
        match self {
            Self::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::MissingEnv(name.clone()))
            }
            Self::File(path) => std::fs::read_to_string(path)
                .map(|text| text.trim().to_owned())
                .map_err(|source| SecretError::File {
                    path: path.display().to_string(),
                    source,
                }),
            Self::Value(value) => Ok(value.clone()),
        }
    }
}

impl std::fmt::Display for SecretSource {
    /// Says where the value comes from, never what it is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env {name}"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Value(_) => f.write_str("inline value"),
        }
    }
}
