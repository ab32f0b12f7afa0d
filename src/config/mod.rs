//! The resolved configuration a workload reads (`ferry relay --config FILE`): every reference
//! followed, every default filled in, no secret values (only where to read them at run time).
//! The operator renders it into a ConfigMap; standalone mode builds it in memory.

mod relay;
mod resolve;
mod secret;
mod topic;

pub use relay::{
    CaptureConfig, CleanupConfig, DatabaseConfig, DeadLetterConfig, HttpConfig, RelayConfig,
    RouteConfig, SourceIdentity,
};
pub use resolve::{env_var_for, resolve_relay, secret_from_env};
pub use secret::{SecretError, SecretSource};
pub use topic::{NatsTarget, RabbitMqTarget, RedisTarget, SqlTarget, TopicConfig, TopicTarget};

use std::path::Path;

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: String,
        field: String,
        message: String,
    },
}

/// Reads a YAML config file, naming the field that does not fit.
pub fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: display.clone(),
        source,
    })?;
    let deserializer = serde_yaml_ng::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| ConfigError::Invalid {
        path: display,
        field: error.path().to_string(),
        message: error.into_inner().to_string(),
    })
}
