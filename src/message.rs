//! The message Ferry moves: an outbox event turned into a CloudEvents 1.0 event in binary mode
//! (attributes as `ce-*` headers, the JSON payload as the body), and the templates that give it
//! a routing key or subject.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use cloudevents::{
    EventBuilder, EventBuilderV10,
    event::SpecVersion,
    message::{BinaryDeserializer, BinarySerializer, MessageAttributeValue},
};
use uuid::Uuid;

/// The content type of every payload: outbox payloads are JSON.
pub const JSON: &str = "application/json";
/// The CloudEvents partitioning extension: the ordering key.
pub const PARTITION_KEY: &str = "partitionkey";
/// Prefix of CloudEvents attributes in binary mode.
pub const CE_PREFIX: &str = "ce-";
/// The binary-mode header of `datacontenttype`.
pub const CONTENT_TYPE: &str = "content-type";
/// W3C trace-context headers, carried through from the outbox row's headers.
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// One event as the service wrote it into the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The row's position in the outbox; per key, the publish order.
    pub seq: i64,
    /// The message id, a UUID: `ce-id` and the idempotency key downstream.
    pub id: String,
    pub aggregate_type: String,
    /// The ordering key.
    pub aggregate_id: String,
    pub event_type: String,
    /// The payload as stored; it must be a JSON document.
    pub payload: Vec<u8>,
    /// A JSON object of string values (trace context, user headers), as stored.
    pub headers: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Set when the row could be read but not understood (a time that does not parse): the
    /// relay dead-letters it with this reason instead of stalling the rows behind it.
    pub defect: Option<String>,
}

/// A message ready for a broker: binary-mode CloudEvents headers and the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// `ce-id`: the outbox id.
    pub id: String,
    /// The ordering key (`ce-partitionkey`): the aggregate id.
    pub key: String,
    /// The rendered routing key (RabbitMQ) or subject (NATS); brokers without one ignore it.
    pub routing_key: String,
    /// Headers in order: CloudEvents attributes first, then carried-through headers.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Envelope {
    /// Bytes on the wire, roughly: header names and values plus the body.
    pub fn size(&self) -> usize {
        self.headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + self.body.len()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why an event cannot become a message. Each is permanent: retrying cannot fix the row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unpublishable {
    #[error("payload is not valid JSON: {0}")]
    MalformedPayload(String),
    #[error("headers are not a JSON object of string values: {0}")]
    MalformedHeaders(String),
    #[error("no route matches aggregate type {aggregate_type:?} and event type {event_type:?}")]
    Unroutable {
        aggregate_type: String,
        event_type: String,
    },
    #[error("message is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("not a valid CloudEvent: {0}")]
    InvalidEvent(String),
}

impl Unpublishable {
    /// A short, stable name for metrics and dead-letter grouping.
    pub fn category(&self) -> &'static str {
        match self {
            Self::MalformedPayload(_) => "malformed_payload",
            Self::MalformedHeaders(_) => "malformed_headers",
            Self::Unroutable { .. } => "unroutable",
            Self::TooLarge { .. } => "too_large",
            Self::InvalidEvent(_) => "invalid_event",
        }
    }
}

/// Builds the CloudEvent of an outbox event. `source` is the `ce-source` (the OutboxSource as
/// `/namespaces/<ns>/outboxsources/<name>`).
pub fn envelope(
    event: &OutboxEvent,
    source: &str,
    routing_key: String,
) -> Result<Envelope, Unpublishable> {
    if let Some(defect) = &event.defect {
        return Err(Unpublishable::InvalidEvent(defect.clone()));
    }
    let id = Uuid::parse_str(&event.id).map_err(|e| {
        Unpublishable::InvalidEvent(format!("id {:?} is not a UUID: {e}", event.id))
    })?;
    serde_json::from_slice::<serde::de::IgnoredAny>(&event.payload)
        .map_err(|e| Unpublishable::MalformedPayload(e.to_string()))?;
    let carried = carried_headers(event.headers.as_deref())?;
    let mut builder = EventBuilderV10::new()
        .id(id.to_string())
        .source(source)
        .ty(event.event_type.clone())
        .subject(event.aggregate_id.clone())
        .time(event.created_at)
        .extension(PARTITION_KEY, event.aggregate_id.clone())
        .data(JSON, event.payload.clone());
    for (name, value) in &carried {
        if TRACE_HEADERS.contains(&name.as_str()) {
            builder = builder.extension(name, value.clone());
        }
    }
    let cloud_event = builder
        .build()
        .map_err(|e| Unpublishable::InvalidEvent(e.to_string()))?;
    let mut binary = cloud_event
        .deserialize_binary(BinaryHeaders::default())
        .map_err(|e| Unpublishable::InvalidEvent(e.to_string()))?;
    for (name, value) in carried {
        if !TRACE_HEADERS.contains(&name.as_str()) {
            binary.headers.push((name, value));
        }
    }
    Ok(Envelope {
        id: id.to_string(),
        key: event.aggregate_id.clone(),
        routing_key,
        headers: binary.headers,
        body: binary.body,
    })
}

/// The user headers of a row: a JSON object of strings. `ce-*` and `content-type` are Ferry's
/// and cannot be overridden, so they are refused rather than silently dropped.
fn carried_headers(headers: Option<&str>) -> Result<Vec<(String, String)>, Unpublishable> {
    let Some(text) = headers.filter(|t| !t.trim().is_empty() && t.trim() != "null") else {
        return Ok(Vec::new());
    };
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| Unpublishable::MalformedHeaders(e.to_string()))?;
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with(CE_PREFIX) || lower == CONTENT_TYPE {
            return Err(Unpublishable::MalformedHeaders(format!(
                "{name:?} is reserved for CloudEvents attributes"
            )));
        }
        let serde_json::Value::String(value) = value else {
            return Err(Unpublishable::MalformedHeaders(format!(
                "value of {name:?} is not a string"
            )));
        };
        out.push((lower, value));
    }
    Ok(out)
}

/// Collects a CloudEvent in binary mode: `ce-<attribute>` headers, `content-type`, the body.
#[derive(Default)]
struct BinaryHeaders {
    headers: Vec<(String, String)>,
    body: Bytes,
}

fn attribute_text(value: MessageAttributeValue) -> String {
    match value {
        MessageAttributeValue::DateTime(time) => time.to_rfc3339_opts(SecondsFormat::Micros, true),
        other => other.to_string(),
    }
}

impl BinarySerializer<BinaryHeaders> for BinaryHeaders {
    fn set_spec_version(mut self, spec_version: SpecVersion) -> cloudevents::message::Result<Self> {
        self.headers
            .push(("ce-specversion".into(), spec_version.to_string()));
        Ok(self)
    }

    fn set_attribute(
        mut self,
        name: &str,
        value: MessageAttributeValue,
    ) -> cloudevents::message::Result<Self> {
        let header = if name == "datacontenttype" {
            CONTENT_TYPE.to_owned()
        } else {
            format!("{CE_PREFIX}{name}")
        };
        self.headers.push((header, attribute_text(value)));
        Ok(self)
    }

    fn set_extension(
        mut self,
        name: &str,
        value: MessageAttributeValue,
    ) -> cloudevents::message::Result<Self> {
        // Trace context keeps its W3C header names, which tracing libraries read as they are.
        let header = if TRACE_HEADERS.contains(&name) {
            name.to_owned()
        } else {
            format!("{CE_PREFIX}{name}")
        };
        self.headers.push((header, attribute_text(value)));
        Ok(self)
    }

    fn end_with_data(mut self, bytes: Vec<u8>) -> cloudevents::message::Result<BinaryHeaders> {
        self.body = Bytes::from(bytes);
        Ok(self)
    }

    fn end(self) -> cloudevents::message::Result<BinaryHeaders> {
        Ok(self)
    }
}

/// Renders a routing-key or subject template (`{aggregateType}.{eventType}`). Templates are
/// checked when the manifest is validated, so an unknown placeholder is left as written.
pub fn render_template(template: &str, event: &OutboxEvent) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        match name {
            "aggregateType" => out.push_str(&event.aggregate_type),
            "aggregateId" => out.push_str(&event.aggregate_id),
            "eventType" => out.push_str(&event.event_type),
            _ => out.push_str(&rest[open..=open + close]),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Glob matching with `*` for any run of characters, as routes and filters use it.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut position = first.len();
    let end = text.len() - last.len();
    for part in &parts[1..parts.len() - 1] {
        match text[position..end].find(part) {
            Some(found) => position += found + part.len(),
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> OutboxEvent {
        OutboxEvent {
            seq: 7,
            id: "0190a6a0-0000-7000-8000-000000000001".into(),
            aggregate_type: "Order".into(),
            aggregate_id: "order-42".into(),
            event_type: "order.created".into(),
            payload: br#"{"total": 12.5}"#.to_vec(),
            headers: Some(r#"{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "X-Tenant": "acme"}"#.into()),
            created_at: DateTime::parse_from_rfc3339("2026-11-29T10:00:00.123456Z").expect("time").with_timezone(&Utc),
            defect: None,
        }
    }

    #[test]
    fn an_outbox_event_becomes_a_binary_mode_cloudevent() {
        let envelope = envelope(
            &event(),
            "/namespaces/shop/outboxsources/orders",
            "Order.order.created".into(),
        )
        .expect("valid");
        assert_eq!(envelope.header("ce-specversion"), Some("1.0"));
        assert_eq!(
            envelope.header("ce-id"),
            Some("0190a6a0-0000-7000-8000-000000000001")
        );
        assert_eq!(envelope.header("ce-type"), Some("order.created"));
        assert_eq!(
            envelope.header("ce-source"),
            Some("/namespaces/shop/outboxsources/orders")
        );
        assert_eq!(envelope.header("ce-subject"), Some("order-42"));
        assert_eq!(envelope.header("ce-partitionkey"), Some("order-42"));
        assert_eq!(
            envelope.header("ce-time"),
            Some("2026-11-29T10:00:00.123456Z")
        );
        assert_eq!(envelope.header("content-type"), Some(JSON));
        assert_eq!(
            envelope.header("traceparent"),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(envelope.header("x-tenant"), Some("acme"));
        assert_eq!(&envelope.body[..], br#"{"total": 12.5}"#);
        assert_eq!(envelope.routing_key, "Order.order.created");
    }

    #[test]
    fn malformed_payloads_and_headers_are_unpublishable() {
        let mut bad = event();
        bad.payload = b"{not json".to_vec();
        assert!(matches!(
            envelope(&bad, "/s", String::new()),
            Err(Unpublishable::MalformedPayload(_))
        ));
        let mut bad = event();
        bad.headers = Some(r#"{"ce-id": "spoofed"}"#.into());
        assert!(matches!(
            envelope(&bad, "/s", String::new()),
            Err(Unpublishable::MalformedHeaders(_))
        ));
        bad.headers = Some(r#"{"retries": 3}"#.into());
        assert!(matches!(
            envelope(&bad, "/s", String::new()),
            Err(Unpublishable::MalformedHeaders(_))
        ));
        bad.headers = Some("[1]".into());
        assert!(matches!(
            envelope(&bad, "/s", String::new()),
            Err(Unpublishable::MalformedHeaders(_))
        ));
        let mut bad = event();
        bad.id = "42".into();
        assert!(matches!(
            envelope(&bad, "/s", String::new()),
            Err(Unpublishable::InvalidEvent(_))
        ));
    }

    #[test]
    fn templates_render_placeholders() {
        assert_eq!(
            render_template("{aggregateType}.{eventType}", &event()),
            "Order.order.created"
        );
        assert_eq!(
            render_template("orders.{aggregateId}", &event()),
            "orders.order-42"
        );
        assert_eq!(render_template("static", &event()), "static");
    }

    #[test]
    fn globs_match_like_shell_patterns() {
        assert!(glob_matches("order.*", "order.created"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("*.created", "order.created"));
        assert!(glob_matches("o*r.*d", "order.created"));
        assert!(!glob_matches("order.*", "orders"));
        assert!(!glob_matches("order", "order.created"));
        assert!(!glob_matches("a*a", "a"));
    }
}
