//! AMQP message headers as Ferry's delivery headers (text, without the broker's and Ferry's own
//! bookkeeping), the attempt a delivery is, and the properties of a retry's copy.

use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::message::CONTENT_TYPE;

/// Ferry's attempt counter on a retry's copy: the attempt that copy is (2 after the first retry).
pub const ATTEMPT_HEADER: &str = "x-ferry-attempt";
/// When a retry copy is due, in milliseconds since the Unix epoch. A delay queue holds a copy
/// for a grid delay at most as long as asked; a copy that comes back before this time goes
/// round again for the rest (see `RabbitMqSubscriber::receive`).
pub const DUE_HEADER: &str = "x-ferry-due";

/// Headers RabbitMQ adds by itself: `x-delivery-count` (a quorum queue's count of returns),
/// `x-death` and the `x-first-death-*` / `x-last-death-*` summary (dead-lettering, which is how a
/// delay queue hands a message back).
const BROKER_HEADERS: [&str; 2] = ["x-death", "x-delivery-count"];
const BROKER_HEADER_PREFIXES: [&str; 3] = ["x-ferry-", "x-first-death-", "x-last-death-"];

/// Whether a header is bookkeeping of RabbitMQ or of Ferry's retries rather than the message's.
pub fn is_internal(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    BROKER_HEADERS.contains(&name.as_str())
        || BROKER_HEADER_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

/// The message's headers as text, in the order of the AMQP table (which sorts them by name, so
/// `ce-*` come first, then `content-type`, then the rest).
///
/// Values that are not text (numbers, booleans, timestamps) are written out; nested tables,
/// arrays and byte arrays have no text form and are left out. The relay writes `content-type`
/// both as a header and as the AMQP property; a message from another publisher may carry only
/// the property, which is then added as the header.
pub fn delivery_headers(properties: &BasicProperties) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter(|(name, _)| !is_internal(name.as_str()))
                .filter_map(|(name, value)| Some((name.as_str().to_owned(), text(value)?)))
                .collect()
        })
        .unwrap_or_default();
    let has_content_type = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case(CONTENT_TYPE));
    if let (false, Some(content_type)) = (has_content_type, properties.content_type()) {
        let at = headers
            .iter()
            .position(|(name, _)| name.as_str() > CONTENT_TYPE)
            .unwrap_or(headers.len());
        headers.insert(
            at,
            (CONTENT_TYPE.to_owned(), content_type.as_str().to_owned()),
        );
    }
    headers
}

/// Which attempt a delivery is: Ferry's counter from the retry copy (1 on the original), plus
/// the returns a quorum queue counted for this copy (a member that crashed or closed while it
/// held the message), which are attempts that did not end.
pub fn attempt(properties: &BasicProperties) -> u32 {
    let header = |name: &str| {
        properties
            .headers()
            .as_ref()
            .and_then(|table| table.inner().get(name))
            .and_then(count)
    };
    let ferry = header(ATTEMPT_HEADER).unwrap_or(1).max(1);
    let returns = header("x-delivery-count").unwrap_or(0);
    ferry.saturating_add(returns)
}

/// When the publisher stamped the message: the AMQP `timestamp` property, in seconds. The relay
/// sets it to the event's `ce-time`; RabbitMQ itself records no arrival time.
pub fn published_at(properties: &BasicProperties) -> Option<DateTime<Utc>> {
    let seconds = i64::try_from((*properties.timestamp())?).ok()?;
    DateTime::from_timestamp(seconds, 0)
}

/// The properties of the copy a retry publishes: the original's, persistent, with Ferry's
/// attempt header set to `attempt` and RabbitMQ's bookkeeping removed (the copy is a new
/// message: its `x-death` history and return count do not carry over).
///
/// Two properties are not copied: a per-message `expiration`, which would end the wait in the
/// delay queue early, and `user-id`, which RabbitMQ checks against the user of the publishing
/// connection and which would make another user's message impossible to retry.
/// When the copy is due, if it is a retry copy.
pub fn due(properties: &BasicProperties) -> Option<std::time::SystemTime> {
    let value = properties.headers().as_ref()?.inner().get(DUE_HEADER)?;
    let millis: u64 = text(value)?.parse().ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis))
}

/// `properties` with the due time set.
pub fn with_due(properties: BasicProperties, due: std::time::SystemTime) -> BasicProperties {
    let millis = due
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(DUE_HEADER),
        AMQPValue::LongString(LongString::from(millis.to_string().as_bytes())),
    );
    properties.with_headers(headers)
}

pub fn retry_properties(original: &BasicProperties, attempt: u32) -> BasicProperties {
    let mut headers: FieldTable = original
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter(|(name, _)| !is_internal(name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into()
        })
        .unwrap_or_default();
    headers.insert(
        ShortString::from(ATTEMPT_HEADER),
        AMQPValue::LongString(LongString::from(attempt.to_string().as_bytes())),
    );
    let mut copy = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(super::super::PERSISTENT);
    let short = |value: &Option<ShortString>| value.clone();
    if let Some(value) = short(original.content_type()) {
        copy = copy.with_content_type(value);
    }
    if let Some(value) = short(original.content_encoding()) {
        copy = copy.with_content_encoding(value);
    }
    if let Some(value) = *original.priority() {
        copy = copy.with_priority(value);
    }
    if let Some(value) = short(original.correlation_id()) {
        copy = copy.with_correlation_id(value);
    }
    if let Some(value) = short(original.reply_to()) {
        copy = copy.with_reply_to(value);
    }
    if let Some(value) = short(original.message_id()) {
        copy = copy.with_message_id(value);
    }
    if let Some(value) = *original.timestamp() {
        copy = copy.with_timestamp(value);
    }
    if let Some(value) = short(original.kind()) {
        copy = copy.with_type(value);
    }
    if let Some(value) = short(original.app_id()) {
        copy = copy.with_app_id(value);
    }
    if let Some(value) = short(original.cluster_id()) {
        copy = copy.with_cluster_id(value);
    }
    copy
}

/// A header value as text, where it has one.
fn text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        AMQPValue::ShortString(text) => text.as_str().to_owned(),
        AMQPValue::Boolean(value) => value.to_string(),
        AMQPValue::ShortShortInt(value) => value.to_string(),
        AMQPValue::ShortShortUInt(value) => value.to_string(),
        AMQPValue::ShortInt(value) => value.to_string(),
        AMQPValue::ShortUInt(value) => value.to_string(),
        AMQPValue::LongInt(value) => value.to_string(),
        AMQPValue::LongUInt(value) => value.to_string(),
        AMQPValue::LongLongInt(value) => value.to_string(),
        AMQPValue::Float(value) => value.to_string(),
        AMQPValue::Double(value) => value.to_string(),
        AMQPValue::Timestamp(value) => value.to_string(),
        AMQPValue::DecimalValue(_)
        | AMQPValue::FieldArray(_)
        | AMQPValue::FieldTable(_)
        | AMQPValue::ByteArray(_)
        | AMQPValue::Void => return None,
    })
}

/// A counter header: Ferry writes text, RabbitMQ writes integers.
fn count(value: &AMQPValue) -> Option<u32> {
    match value {
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => text(value)?.trim().parse().ok(),
        AMQPValue::ShortShortUInt(value) => Some(u32::from(*value)),
        AMQPValue::ShortUInt(value) => Some(u32::from(*value)),
        AMQPValue::LongUInt(value) => Some(*value),
        AMQPValue::ShortShortInt(value) => u32::try_from(*value).ok(),
        AMQPValue::ShortInt(value) => u32::try_from(*value).ok(),
        AMQPValue::LongInt(value) => u32::try_from(*value).ok(),
        AMQPValue::LongLongInt(value) => u32::try_from(*value).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn properties(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (name, value) in headers {
            table.insert(ShortString::from(*name), value.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    fn long(text: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(text.as_bytes()))
    }

    #[test]
    fn broker_and_retry_bookkeeping_is_left_out_of_delivery_headers() {
        let properties = properties(&[
            ("ce-id", long("1")),
            ("x-tenant", long("acme")),
            ("x-ferry-attempt", long("3")),
            ("x-delivery-count", AMQPValue::LongLongInt(2)),
            ("x-death", AMQPValue::FieldArray(Vec::new().into())),
            ("x-first-death-queue", long("q")),
            ("X-Last-Death-Reason", long("expired")),
        ]);
        let headers = delivery_headers(&properties);
        assert_eq!(
            headers,
            vec![
                ("ce-id".to_owned(), "1".to_owned()),
                ("x-tenant".to_owned(), "acme".to_owned()),
            ]
        );
    }

    #[test]
    fn the_content_type_property_becomes_a_header_when_the_table_lacks_it() {
        let properties = properties(&[("ce-id", long("1")), ("traceparent", long("00-x"))])
            .with_content_type("application/json".into());
        let names: Vec<String> = delivery_headers(&properties)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["ce-id", "content-type", "traceparent"]);
    }

    #[test]
    fn numbers_are_written_as_text_and_nested_values_are_left_out() {
        let properties = properties(&[
            ("count", AMQPValue::LongInt(-4)),
            ("flag", AMQPValue::Boolean(true)),
            ("nested", AMQPValue::FieldTable(FieldTable::default())),
        ]);
        assert_eq!(
            delivery_headers(&properties),
            vec![
                ("count".to_owned(), "-4".to_owned()),
                ("flag".to_owned(), "true".to_owned()),
            ]
        );
    }

    #[test]
    fn the_attempt_is_ferrys_counter_plus_the_returns_of_this_copy() {
        assert_eq!(attempt(&BasicProperties::default()), 1);
        assert_eq!(attempt(&properties(&[("x-ferry-attempt", long("3"))])), 3);
        assert_eq!(
            attempt(&properties(&[
                ("x-ferry-attempt", long("3")),
                ("x-delivery-count", AMQPValue::LongLongInt(2)),
            ])),
            5
        );
        assert_eq!(
            attempt(&properties(&[(
                "x-delivery-count",
                AMQPValue::LongLongInt(1)
            )])),
            2
        );
        assert_eq!(
            attempt(&properties(&[("x-ferry-attempt", long("junk"))])),
            1
        );
    }

    #[test]
    fn a_retry_copy_is_persistent_carries_the_next_attempt_and_drops_bookkeeping() {
        let original = properties(&[
            ("ce-id", long("1")),
            ("x-ferry-attempt", long("2")),
            ("x-delivery-count", AMQPValue::LongLongInt(1)),
            ("x-death", AMQPValue::FieldArray(Vec::new().into())),
        ])
        .with_message_id("1".into())
        .with_timestamp(1_700_000_000)
        .with_user_id("someone-else".into())
        .with_expiration("1000".into());
        let copy = retry_properties(&original, 4);
        assert_eq!(*copy.delivery_mode(), Some(2));
        assert_eq!(*copy.expiration(), None);
        assert_eq!(*copy.user_id(), None);
        assert_eq!(*copy.timestamp(), Some(1_700_000_000));
        assert_eq!(
            copy.message_id().as_ref().map(ShortString::as_str),
            Some("1")
        );
        assert_eq!(attempt(&copy), 4);
        let names: Vec<&str> = copy
            .headers()
            .as_ref()
            .map(|table| table.inner().keys().map(ShortString::as_str).collect())
            .unwrap_or_default();
        assert_eq!(names, ["ce-id", "x-ferry-attempt"]);
    }

    #[test]
    fn the_due_time_round_trips_and_stays_out_of_delivery_headers() {
        let due = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_470_000_123);
        let copy = with_due(retry_properties(&properties(&[]), 2), due);
        assert_eq!(super::due(&copy), Some(due));
        assert!(
            delivery_headers(&copy)
                .iter()
                .all(|(name, _)| name != DUE_HEADER)
        );
        assert_eq!(super::due(&properties(&[])), None);
    }

    #[test]
    fn the_timestamp_property_is_the_publish_time() {
        let properties = BasicProperties::default().with_timestamp(1_700_000_000);
        assert_eq!(
            published_at(&properties).map(|time| time.timestamp()),
            Some(1_700_000_000)
        );
        assert_eq!(published_at(&BasicProperties::default()), None);
    }
}
