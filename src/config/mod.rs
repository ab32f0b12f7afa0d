//! The resolved configuration a workload reads (`ferry relay --config FILE`): every reference
//! followed, every default filled in, no secret values (only where to read them at run time).
//! The operator renders it into a ConfigMap; standalone mode builds it in memory.

mod consumer;
mod relay;
mod resolve;
mod secret;
mod topic;

pub use consumer::{ConsumerConfig, ConsumerIdentity, IdempotencyConfig, SinkConfig};
pub use relay::{
    CaptureConfig, CleanupConfig, DatabaseConfig, DeadLetterConfig, HttpConfig, RelayConfig,
    RouteConfig, SourceIdentity, TransactionalConfig,
};
pub use resolve::{env_var_for, resolve_consumer, resolve_relay, secret_from_env};
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
    from_yaml(&text).map_err(|(field, message)| ConfigError::Invalid {
        path: display,
        field,
        message,
    })
}

/// Parses a config from YAML; on failure, the field and what is wrong with it.
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, (String, String)> {
    // Through a JSON value, so that choices such as `url: {env: NAME}` are plain one-key maps
    // in the file (YAML tags like `!env` are easy to get wrong by hand).
    let value: serde_json::Value =
        serde_yaml_ng::from_str(text).map_err(|error| (String::new(), error.to_string()))?;
    serde_path_to_error::deserialize(value)
        .map_err(|error| (error.path().to_string(), error.into_inner().to_string()))
}

/// Writes a config as YAML in the form `from_yaml` reads.
pub fn to_yaml<T: serde::Serialize>(config: &T) -> Result<String, serde_yaml_ng::Error> {
    let value = serde_json::to_value(config)
        .map_err(<serde_yaml_ng::Error as serde::ser::Error>::custom)?;
    serde_yaml_ng::to_string(&value)
}
