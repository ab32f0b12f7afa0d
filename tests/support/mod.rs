//! Support shared by the integration tests: unique names, temporary directories, free ports,
//! sample envelopes, and private server instances for fault tests (`servers`).
//!
//! Each test binary that declares `mod support;` compiles all of this and uses only part of it,
//! hence the `dead_code` allowance below.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the shared support"
)]

pub mod servers;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use chrono::Utc;
use ferry::message::{Envelope, OutboxEvent, envelope};
use uuid::Uuid;

/// The `ce-source` of sample envelopes.
pub const SOURCE: &str = "/namespaces/test/outboxsources/orders";
/// The trace context every sample envelope carries through.
pub const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test (in this process or a parallel one) uses: a valid SQL identifier,
/// stream key and queue name (`[a-z0-9_]`, under 63 characters with a short prefix).
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{count}_{nanos}", std::process::id())
}

/// Manifests written in a test as one file `file` would hold them: each value a document,
/// numbered from 1, so a refusal names the file, document and field as it would for a user.
pub fn documents(
    file: &str,
    manifests: impl IntoIterator<Item = serde_json::Value>,
) -> Vec<ferry::manifest::Document> {
    manifests
        .into_iter()
        .enumerate()
        .map(|(index, value)| ferry::manifest::Document {
            origin: ferry::manifest::Origin {
                file: PathBuf::from(file),
                document: index + 1,
            },
            value,
        })
        .collect()
}

/// A loopback port that was free a moment ago: the kernel picks it for a listener that is
/// dropped at once. Another process could take it before the server binds it, which is rare
/// enough for tests; a server that fails to bind says so in its log.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `GET path` on a workload's endpoint port: the status code and the body, or `None` when
/// nothing answers (yet).
pub async fn try_http_get(address: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A directory removed with everything in it when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(unique_name(&format!("ferry_{prefix}")));
        std::fs::create_dir(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in the temp dir harms nothing.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `count` envelopes over `keys` ordering keys (`order-0` ...), each with trace context and a
/// user header carried through, and a JSON body that names its position.
pub fn sample_envelopes(count: usize, keys: usize) -> Vec<Envelope> {
    (0..count)
        .map(|position| {
            let event = OutboxEvent {
                seq: i64::try_from(position).expect("small position") + 1,
                id: Uuid::now_v7().to_string(),
                aggregate_type: "Order".into(),
                aggregate_id: format!("order-{}", position % keys.max(1)),
                event_type: "order.created".into(),
                payload: serde_json::json!({ "position": position, "note": "ünïcödé ✓" })
                    .to_string()
                    .into_bytes(),
                headers: Some(
                    serde_json::json!({ "traceparent": TRACEPARENT, "x-tenant": "acme" })
                        .to_string(),
                ),
                created_at: Utc::now(),
                defect: None,
            };
            envelope(&event, SOURCE, "Order.order.created".into())
                .expect("a sample event is a valid CloudEvent")
        })
        .collect()
}
