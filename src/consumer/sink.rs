//! The receiving service: one HTTP POST per message in CloudEvents binary mode, with an
//! `Idempotency-Key` header, and what the answer means for the message.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{
    Client,
    header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
};

use crate::{api::retry_policy::RetryOn, broker::subscriber::Delivery};

/// The header that carries the message id, so the service can close the last gap of
/// idempotency with its own unique constraint.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The most of a failed response's body kept for the dead letter and the logs.
pub const MAX_BODY_EXCERPT: usize = 1024;

/// Why an attempt did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The service answered with a non-2xx status.
    Status {
        status: u16,
        /// The start of the response body.
        excerpt: String,
        /// What `Retry-After` asked for, if anything.
        retry_after: Option<Duration>,
    },
    /// No answer within the attempt timeout.
    Timeout,
    /// The connection could not be made or broke.
    Connection(String),
    /// The message cannot be sent at all (a header value HTTP cannot carry).
    Request(String),
}

impl Failure {
    /// A stable, low-cardinality name for metrics and dead letters.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Status { .. } => "http_status",
            Self::Timeout => "timeout",
            Self::Connection(_) => "connection",
            Self::Request(_) => "request",
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the policy says another attempt may succeed.
    pub fn retryable(&self, policy: &RetryOn) -> bool {
        match self {
            Self::Status { status, .. } => status_matches(&policy.http_statuses, *status),
            Self::Timeout => policy.timeouts,
            Self::Connection(_) => policy.connection_errors,
            Self::Request(_) => false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status {
                status, excerpt, ..
            } if excerpt.is_empty() => write!(f, "HTTP {status}"),
            Self::Status {
                status, excerpt, ..
            } => write!(f, "HTTP {status}: {excerpt}"),
            Self::Timeout => f.write_str("timed out"),
            Self::Connection(message) => write!(f, "connection failed: {message}"),
            Self::Request(message) => write!(f, "cannot send: {message}"),
        }
    }
}

/// Whether `status` is listed: exact codes (`503`) or classes (`5xx`).
pub fn status_matches(patterns: &[String], status: u16) -> bool {
    let text = status.to_string();
    patterns.iter().any(|pattern| {
        pattern == &text
            || (pattern.len() == 3 && pattern.ends_with("xx") && text.starts_with(&pattern[..1]))
    })
}

/// POSTs messages to one URL.
#[derive(Clone)]
pub struct HttpSink {
    client: Client,
    url: reqwest::Url,
    timeout: Duration,
}

impl HttpSink {
    pub fn new(url: &str, timeout: Duration, concurrency: usize) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|error| format!("sink url {url:?}: {error}"))?;
        let client = Client::builder()
            // One idle connection per concurrent delivery: reused, so a busy consumer does not
            // pay a TCP handshake per message.
            .pool_max_idle_per_host(concurrency)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|error| format!("HTTP client: {error}"))?;
        Ok(Self {
            client,
            url,
            timeout,
        })
    }

    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Sends one message; `Ok` is a 2xx answer.
    pub async fn send(&self, delivery: &Delivery) -> Result<u16, Failure> {
        let headers = request_headers(delivery)?;
        let response = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(delivery.body.clone())
            .timeout(self.timeout)
            .send()
            .await
            .map_err(transport_failure)?;
        let status = response.status();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, Utc::now()));
        let excerpt = body_excerpt(response).await;
        Err(Failure::Status {
            status: status.as_u16(),
            excerpt,
            retry_after,
        })
    }
}

/// The message's headers (`ce-*`, `content-type`, `traceparent`, user headers) plus
/// `Idempotency-Key`.
fn request_headers(delivery: &Delivery) -> Result<HeaderMap, Failure> {
    let mut headers = HeaderMap::with_capacity(delivery.headers.len() + 1);
    for (name, value) in &delivery.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Failure::Request(format!("header name {name:?} is not valid in HTTP")))?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            Failure::Request(format!("value of header {name:?} is not valid in HTTP"))
        })?;
        headers.append(name, value);
    }
    let key = HeaderValue::from_str(&delivery.id).map_err(|_| {
        Failure::Request(format!("message id {:?} is not valid in HTTP", delivery.id))
    })?;
    headers.insert(IDEMPOTENCY_KEY, key);
    Ok(headers)
}

fn transport_failure(error: reqwest::Error) -> Failure {
    if error.is_timeout() {
        return Failure::Timeout;
    }
    // The innermost cause says what happened ("Connection refused"); reqwest's own message
    // only says that sending failed.
    let mut cause: &dyn std::error::Error = &error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    Failure::Connection(cause.to_string())
}

/// At most `MAX_BODY_EXCERPT` bytes of the body, as text, without reading all of a huge body.
async fn body_excerpt(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < MAX_BODY_EXCERPT {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let cut = bytes.len().min(MAX_BODY_EXCERPT);
    let mut text = String::from_utf8_lossy(&bytes[..cut]).trim().to_owned();
    if bytes.len() > MAX_BODY_EXCERPT {
        text.push('…');
    }
    text
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (when.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_patterns_match_codes_and_classes() {
        let patterns: Vec<String> = ["408", "429", "5xx"].map(String::from).to_vec();
        assert!(status_matches(&patterns, 503));
        assert!(status_matches(&patterns, 429));
        assert!(!status_matches(&patterns, 404));
        assert!(!status_matches(&patterns, 400));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Mon, 30 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Mon, 30 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn failures_follow_the_policy() {
        let policy = RetryOn::default();
        let status = |status| Failure::Status {
            status,
            excerpt: String::new(),
            retry_after: None,
        };
        assert!(status(500).retryable(&policy));
        assert!(!status(422).retryable(&policy));
        assert!(Failure::Timeout.retryable(&policy));
        assert!(Failure::Connection("refused".into()).retryable(&policy));
        assert!(!Failure::Request("bad header".into()).retryable(&policy));
    }
}
