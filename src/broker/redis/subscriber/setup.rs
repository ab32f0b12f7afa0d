//! What the Redis subscriber checks or creates when it connects (the consumer group, and with
//! it the stream), and how it names a failure.

use redis::{RedisError, RedisResult, aio::ConnectionManager};

use super::scripts::CHECK_GROUP;
use crate::broker::{BrokerError, redis::classify as classify_client_error};

/// `XGROUP CREATE <stream> <group> 0 MKSTREAM`: from id `0`, so a new group gets the entries
/// already in the stream. A group that exists is kept as it is (`BUSYGROUP`).
pub(super) async fn create_group(
    topic: &str,
    stream: &str,
    group: &str,
    commands: &mut ConnectionManager,
) -> Result<(), BrokerError> {
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(commands)
        .await;
    match created {
        Ok(()) => {
            tracing::info!(topic, stream, group, "created redis consumer group");
            Ok(())
        }
        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
        Err(error) => Err(classify(topic, &error)),
    }
}

/// Without provisioning, the stream and the group must exist; a topology error names the one
/// that does not.
pub(super) async fn check_group(
    topic: &str,
    stream: &str,
    group: &str,
    commands: &mut ConnectionManager,
) -> Result<(), BrokerError> {
    let found: String = CHECK_GROUP
        .key(stream)
        .arg(group)
        .invoke_async(commands)
        .await
        .map_err(|error| classify(topic, &error))?;
    let missing = match found.as_str() {
        "ok" => return Ok(()),
        "no stream" => format!("stream {stream:?} does not exist"),
        _ => format!("consumer group {group:?} does not exist on stream {stream:?}"),
    };
    Err(BrokerError::Topology {
        topic: topic.to_owned(),
        message: format!("{missing} and provision is off"),
    })
}

/// The publisher's classification, plus what only a reader meets: its group or its stream
/// deleted while it runs.
pub(super) fn classify(topic: &str, error: &RedisError) -> BrokerError {
    let gone = error.code() == Some("NOGROUP")
        || error
            .detail()
            .is_some_and(|detail| detail.contains("no such key"));
    if gone {
        return BrokerError::Topology {
            topic: topic.to_owned(),
            message: error.to_string(),
        };
    }
    classify_client_error(topic, error)
}
