//! The service the benchmark's consumer delivers to: an in-process HTTP server on a free
//! loopback port that reads each request's body and answers 200 at once, counting requests and
//! the distinct `Idempotency-Key`s it saw.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::super::BenchError;
use crate::consumer::sink::IDEMPOTENCY_KEY;

/// What the sink has seen so far.
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    body_bytes: AtomicU64,
    /// Requests without an `Idempotency-Key` (there should be none).
    unkeyed: AtomicU64,
    keys: Mutex<HashSet<String>>,
}

/// A running sink, until `stop` (or the end of the process).
pub struct Sink {
    pub url: String,
    seen: Arc<Seen>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Counts after a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkCounts {
    pub requests: u64,
    pub distinct: u64,
    pub unkeyed: u64,
    pub body_bytes: u64,
}

impl SinkCounts {
    /// Requests for a message id the sink had already accepted.
    pub fn duplicates(&self) -> u64 {
        self.requests
            .saturating_sub(self.distinct)
            .saturating_sub(self.unkeyed)
    }
}

impl Sink {
    pub async fn start() -> Result<Self, BenchError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(BenchError::io("binding the benchmark sink"))?;
        let address: SocketAddr = listener
            .local_addr()
            .map_err(BenchError::io("reading the benchmark sink's address"))?;
        let seen = Arc::new(Seen::default());
        let router = Router::new()
            .route("/events", post(accept))
            .with_state(seen.clone());
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "the benchmark sink stopped");
            }
        });
        Ok(Self {
            url: format!("http://{address}/events"),
            seen,
            stop,
            task,
        })
    }

    pub fn counts(&self) -> SinkCounts {
        let distinct = self.seen.keys.lock().map_or(0, |keys| keys.len() as u64);
        SinkCounts {
            requests: self.seen.requests.load(Ordering::Relaxed),
            distinct,
            unkeyed: self.seen.unkeyed.load(Ordering::Relaxed),
            body_bytes: self.seen.body_bytes.load(Ordering::Relaxed),
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn accept(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    seen.requests.fetch_add(1, Ordering::Relaxed);
    seen.body_bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    match headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|value| value.to_str().ok())
    {
        Some(key) => {
            // A poisoned lock (a panicked handler) only loses the count.
            if let Ok(mut keys) = seen.keys.lock() {
                keys.insert(key.to_owned());
            }
        }
        None => {
            seen.unkeyed.fetch_add(1, Ordering::Relaxed);
        }
    }
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sink_answers_200_and_counts_repeated_keys_as_duplicates() {
        let sink = Sink::start().await.expect("start the sink");
        let client = reqwest::Client::new();
        for key in ["a", "b", "a"] {
            let response = client
                .post(&sink.url)
                .header(IDEMPOTENCY_KEY, key)
                .body("{}")
                .send()
                .await
                .expect("POST");
            assert_eq!(response.status(), reqwest::StatusCode::OK);
        }
        let response = client
            .post(&sink.url)
            .body("{}")
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let counts = sink.counts();
        assert_eq!(
            counts,
            SinkCounts {
                requests: 4,
                distinct: 2,
                unkeyed: 1,
                body_bytes: 8,
            }
        );
        assert_eq!(counts.duplicates(), 1);
        sink.stop().await;
    }
}
