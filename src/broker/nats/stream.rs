//! The JetStream stream behind a NATS topic: created when missing, checked when it exists.

use async_nats::jetstream::{
    self, ErrorCode,
    context::{CreateStreamError, CreateStreamErrorKind, GetStreamErrorKind},
    stream::{self, StorageType},
};

use crate::{api::broker_topic::NatsStorage, broker::BrokerError, config::NatsTarget};

/// Makes sure the target's stream exists; see `NatsPublisher::connect` for what an existing
/// stream must match and what is updated.
pub(super) async fn ensure_stream(
    topic: &str,
    jetstream: &jetstream::Context,
    target: &NatsTarget,
    provision: bool,
) -> Result<(), BrokerError> {
    let topology = |message: String| BrokerError::Topology {
        topic: topic.to_owned(),
        message,
    };
    let wanted = stream_config(target).map_err(topology)?;
    let existing = match lookup(topic, jetstream, &wanted.name).await? {
        Some(existing) => existing,
        None if !provision => {
            return Err(topology(format!(
                "stream {} does not exist and provision is false",
                wanted.name
            )));
        }
        None => match jetstream.create_stream(wanted.clone()).await {
            Ok(_) => {
                tracing::info!(topic, stream = %wanted.name, "created the JetStream stream");
                return Ok(());
            }
            // Another relay created it first: theirs is checked like any existing stream.
            Err(error) if is_jetstream_error(&error, ErrorCode::STREAM_NAME_EXIST) => {
                lookup(topic, jetstream, &wanted.name)
                    .await?
                    .ok_or_else(|| {
                        topology(format!(
                            "stream {} vanished while being created",
                            wanted.name
                        ))
                    })?
            }
            Err(error) => return Err(create_error(topic, &wanted.name, &error)),
        },
    };
    if provision {
        reconcile(topic, jetstream, existing, &wanted).await
    } else {
        Ok(())
    }
}

/// The stream's config, or `None` when there is no such stream.
async fn lookup(
    topic: &str,
    jetstream: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Config>, BrokerError> {
    match jetstream.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().config.clone())),
        Err(error) => match error.kind() {
            GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Ok(None)
            }
            GetStreamErrorKind::JetStream(e) => Err(BrokerError::Topology {
                topic: topic.to_owned(),
                message: format!("stream {name}: {e}"),
            }),
            _ => Err(BrokerError::Connection {
                topic: topic.to_owned(),
                message: format!("looking up stream {name}: {error}"),
            }),
        },
    }
}

/// Compares an existing stream with the wanted one; see `NatsPublisher::connect` for what is
/// refused and what is updated.
async fn reconcile(
    topic: &str,
    jetstream: &jetstream::Context,
    existing: stream::Config,
    wanted: &stream::Config,
) -> Result<(), BrokerError> {
    let topology = |message: String| BrokerError::Topology {
        topic: topic.to_owned(),
        message,
    };
    let missing: Vec<&String> = wanted
        .subjects
        .iter()
        .filter(|s| !existing.subjects.contains(s))
        .collect();
    let extra: Vec<&String> = existing
        .subjects
        .iter()
        .filter(|s| !wanted.subjects.contains(s))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Err(topology(format!(
            "stream {} exists with subjects {:?}: it lacks {missing:?} and has {extra:?} besides; \
             Ferry does not change the subjects of an existing stream",
            wanted.name, existing.subjects
        )));
    }
    if existing.storage != wanted.storage {
        return Err(topology(format!(
            "stream {} exists with {:?} storage, not {:?}; storage cannot be changed",
            wanted.name, existing.storage, wanted.storage
        )));
    }
    let mut updated = existing.clone();
    updated.duplicate_window = wanted.duplicate_window;
    updated.num_replicas = wanted.num_replicas;
    if !wanted.max_age.is_zero() {
        updated.max_age = wanted.max_age;
    }
    if updated == existing {
        return Ok(());
    }
    jetstream
        .update_stream(&updated)
        .await
        .map_err(|error| create_error(topic, &wanted.name, &error))?;
    tracing::info!(
        topic,
        stream = %wanted.name,
        duplicate_window = ?updated.duplicate_window,
        max_age = ?updated.max_age,
        replicas = updated.num_replicas,
        "updated the JetStream stream to the topic's settings"
    );
    Ok(())
}

fn stream_config(target: &NatsTarget) -> Result<stream::Config, String> {
    let replicas = usize::try_from(target.replicas).map_err(|_| {
        format!(
            "stream {}: replicas {} is negative",
            target.stream, target.replicas
        )
    })?;
    Ok(stream::Config {
        name: target.stream.clone(),
        subjects: target.subjects.clone(),
        num_replicas: replicas,
        duplicate_window: target.duplicate_window.as_std(),
        max_age: target.max_age.map(|age| age.as_std()).unwrap_or_default(),
        storage: match target.storage {
            NatsStorage::File => StorageType::File,
            NatsStorage::Memory => StorageType::Memory,
        },
        ..stream::Config::default()
    })
}

fn is_jetstream_error(error: &CreateStreamError, code: ErrorCode) -> bool {
    matches!(error.kind(), CreateStreamErrorKind::JetStream(e) if e.error_code() == code)
}

/// The server refusing a stream (overlapping subjects, bad settings) is a topology error; not
/// reaching it is a connection error.
fn create_error(topic: &str, stream: &str, error: &CreateStreamError) -> BrokerError {
    match error.kind() {
        CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::Response => {
            BrokerError::Connection {
                topic: topic.to_owned(),
                message: format!("stream {stream}: {error}"),
            }
        }
        _ => BrokerError::Topology {
            topic: topic.to_owned(),
            message: format!("stream {stream}: {error}"),
        },
    }
}
