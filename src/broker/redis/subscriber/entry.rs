//! Stream entries as the Redis subscriber reads them: the reply shapes that carry entries, and
//! how an entry becomes a `Delivery` (header fields in order, the body field, the publish time
//! taken from the entry id).

use std::cmp::Ordering;

use chrono::DateTime;
use redis::Value;

use crate::broker::{redis::BODY_FIELD, subscriber::Delivery};

/// What `ack`, `retry` and `extend` need to find a delivery's entry again.
#[derive(Debug)]
pub(super) struct EntryToken {
    pub id: String,
}

/// An entry's field names and values, in the order the entry stores them.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One entry read from the stream, with what the subscriber knows about its deliveries.
#[derive(Debug)]
pub(super) struct Entry {
    pub id: String,
    pub fields: Fields,
    pub attempt: u32,
    /// Claimed again (a due retry or a takeover) rather than read for the first time.
    pub redelivered: bool,
}

impl Entry {
    /// The entry's header fields in order, all but the first body field, which becomes the body.
    pub fn into_delivery(self) -> Delivery {
        let mut headers = Vec::with_capacity(self.fields.len());
        let mut body = None;
        for (name, value) in self.fields {
            if body.is_none() && name == BODY_FIELD.as_bytes() {
                body = Some(value);
            } else {
                headers.push((text(name), text(value)));
            }
        }
        let published_at = id_millis(&self.id).and_then(DateTime::from_timestamp_millis);
        let mut delivery = Delivery::from_headers(
            headers,
            body.unwrap_or_default(),
            Box::new(EntryToken { id: self.id }),
        );
        delivery.attempt = self.attempt;
        delivery.redelivered = self.redelivered;
        delivery.published_at = published_at;
        delivery
    }
}

/// The millisecond part of an entry id (`<ms>-<seq>`): when the server added the entry.
pub(super) fn id_millis(id: &str) -> Option<i64> {
    id.split_once('-')
        .map_or(id, |(millis, _)| millis)
        .parse()
        .ok()
}

/// Stream order of two entry ids.
pub(super) fn stream_order(left: &str, right: &str) -> Ordering {
    position(left).cmp(&position(right))
}

fn position(id: &str) -> (u64, u64) {
    let (millis, sequence) = id.split_once('-').unwrap_or((id, "0"));
    (
        millis.parse().unwrap_or(u64::MAX),
        sequence.parse().unwrap_or(u64::MAX),
    )
}

/// The entries of an `XREADGROUP` reply for one stream: nil when nothing came, else the streams
/// as an array of `[name, entries]` (RESP2) or a map from name to entries (RESP3).
pub(super) fn parse_read(reply: Value) -> Result<Vec<Entry>, String> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => Ok(pair.swap_remove(1)),
                other => Err(format!("a stream as {other:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(format!("{other:?}")),
    };
    let mut entries = Vec::new();
    for stream in streams {
        for entry in array(stream, "the entries of a stream")? {
            let mut parts = array(entry, "an entry")?.into_iter();
            let Some(id) = parts.next().and_then(bytes).map(text) else {
                return Err("an entry without an id".to_owned());
            };
            // Nil fields: the entry was deleted meanwhile, there is nothing to deliver.
            let fields = match parts.next() {
                None | Some(Value::Nil) => continue,
                Some(fields) => parse_fields(fields)?,
            };
            entries.push(Entry {
                id,
                fields,
                attempt: 1,
                redelivered: false,
            });
        }
    }
    Ok(entries)
}

/// The entries a claiming script returns: each `{id, attempt, fields}`.
pub(super) fn parse_claimed(reply: Value) -> Result<Vec<Entry>, String> {
    array(reply, "the claimed entries")?
        .into_iter()
        .map(|entry| {
            let mut parts = array(entry, "a claimed entry")?.into_iter();
            let id = parts.next().and_then(bytes).map(text);
            let attempt = parts.next().and_then(integer);
            let fields = parts.next().map(parse_fields).transpose()?;
            match (id, attempt, fields) {
                (Some(id), Some(attempt), Some(fields)) => Ok(Entry {
                    id,
                    fields,
                    attempt: u32::try_from(attempt).unwrap_or(u32::MAX).max(1),
                    redelivered: true,
                }),
                _ => Err("a claimed entry without id, attempt or fields".to_owned()),
            }
        })
        .collect()
}

/// A flat `[name, value, name, value, ...]` array.
fn parse_fields(fields: Value) -> Result<Fields, String> {
    let values = array(fields, "the fields of an entry")?;
    let mut pairs = Vec::with_capacity(values.len() / 2);
    let mut values = values.into_iter();
    while let Some(name) = values.next() {
        let name = bytes(name).ok_or("a field name that is not a string")?;
        let value = values
            .next()
            .and_then(bytes)
            .ok_or("a field without a string value")?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

pub(super) fn array(value: Value, what: &str) -> Result<Vec<Value>, String> {
    match value {
        Value::Array(values) | Value::Set(values) => Ok(values),
        other => Err(format!("{what} as {other:?}")),
    }
}

pub(super) fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(number) => Some(number.to_string().into_bytes()),
        _ => None,
    }
}

/// A number, sent as an integer or as its decimal text (Lua returns either).
pub(super) fn integer(value: Value) -> Option<i64> {
    match value {
        Value::Int(number) => Some(number),
        other => bytes(other).and_then(|text| String::from_utf8(text).ok()?.parse().ok()),
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn ids_order_by_milliseconds_then_sequence() {
        assert_eq!(stream_order("9-5", "10-0"), Ordering::Less);
        assert_eq!(stream_order("10-2", "10-11"), Ordering::Less);
        assert_eq!(stream_order("10-2", "10-2"), Ordering::Equal);
        assert_eq!(id_millis("1700000000123-4"), Some(1_700_000_000_123));
    }

    #[test]
    fn body_field_is_split_from_the_headers_kept_in_order() {
        let entry = Entry {
            id: "1700000000123-0".into(),
            fields: [
                ("ce-id", "a"),
                ("ce-subject", "k"),
                ("x-z", "1"),
                ("data", "{}"),
            ]
            .into_iter()
            .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
            .collect(),
            attempt: 3,
            redelivered: true,
        };
        let delivery = entry.into_delivery();
        let names: Vec<&str> = delivery.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ce-id", "ce-subject", "x-z"]);
        assert_eq!(delivery.body, b"{}");
        assert_eq!((delivery.id.as_str(), delivery.key.as_str()), ("a", "k"));
        assert_eq!(delivery.attempt, 3);
        assert_eq!(
            delivery.published_at.map(|at| at.timestamp_millis()),
            Some(1_700_000_000_123)
        );
    }

    #[test]
    fn read_reply_parses_in_both_protocols() {
        let entries = Value::Array(vec![Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("ce-id"), bulk("a"), bulk("data"), bulk("x")]),
        ])]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk("s"), entries)]);
        for reply in [resp2, resp3] {
            let parsed = parse_read(reply).expect("a valid reply");
            assert_eq!(parsed.len(), 1);
            assert_eq!(parsed[0].id, "1-0");
            assert_eq!(parsed[0].fields.len(), 2);
        }
        assert!(parse_read(Value::Nil).expect("nil is empty").is_empty());
        assert!(parse_read(Value::Int(3)).is_err());
    }
}
