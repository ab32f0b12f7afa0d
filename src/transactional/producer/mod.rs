//! What a Rust producer uses to send transactional messages through the relay's API, and the
//! marker row that makes the check-back's answer definite.
//!
//! The producer's local transaction inserts a marker keyed by the half message's id (state
//! `committed`). The check-back handler tries to insert a `rolled_back` marker for the same id:
//! if the transaction committed, the insert conflicts and the answer is `committed`; if it is
//! still running, the insert waits for the transaction's lock on that key and then answers for
//! its outcome; if it never ran or rolled back, the `rolled_back` marker goes in and stays, so a
//! late commit of that transaction fails on the marker instead of publishing behind the answer.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use ferry::transactional::producer::{HalfMessages, mark_committed};
//! let relay = HalfMessages::new("http://orders-relay:8081", "token")?;
//! let id = relay.prepare("Order", "42", "order.placed", &serde_json::json!({"total": 12.5})).await?;
//! let mut tx = pool.begin().await?;
//! sqlx::query("UPDATE orders SET status = 'placed' WHERE id = 42").execute(&mut *tx).await?;
//! mark_committed(&mut *tx, "ferry_tx_markers", id).await?;
//! tx.commit().await?;
//! relay.commit(id).await?; // if this call is lost, the check-back finds the marker
//! # Ok(()) }
//! ```

mod markers;

pub use markers::{
    MarkerEngine, Outcome, check_back, check_back_router, mark_committed, marker_ddl,
};

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// A call to the relay's API that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the relay's transactional API cannot be reached: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("the relay answered HTTP {status}: {message}")]
    Refused { status: u16, message: String },
}

/// A client of the relay's transactional-message API.
#[derive(Clone)]
pub struct HalfMessages {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl HalfMessages {
    pub fn new(base_url: &str, token: &str) -> Result<Self, ApiError> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()?,
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    /// Prepares a message; it is not published until committed.
    pub async fn prepare(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
        payload: &impl Serialize,
    ) -> Result<Uuid, ApiError> {
        // Serialized straight into the request: going through a `Value` would parse a payload
        // given as raw JSON only to write it out again.
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Prepare<'a, P: Serialize> {
            aggregate_type: &'a str,
            aggregate_id: &'a str,
            event_type: &'a str,
            payload: &'a P,
        }
        let body = Prepare {
            aggregate_type,
            aggregate_id,
            event_type,
            payload,
        };
        let answer = self.call("/v1/half-messages", Some(&body)).await?;
        answer["id"]
            .as_str()
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| ApiError::Refused {
                status: 200,
                message: format!("no id in the answer {answer}"),
            })
    }

    /// Commits `id`: it is published like an outbox row. Repeating it is harmless.
    pub async fn commit(&self, id: Uuid) -> Result<(), ApiError> {
        self.call(&format!("/v1/half-messages/{id}/commit"), None::<&()>)
            .await
            .map(drop)
    }

    /// Rolls `id` back: it is never published. Repeating it is harmless.
    pub async fn rollback(&self, id: Uuid) -> Result<(), ApiError> {
        self.call(&format!("/v1/half-messages/{id}/rollback"), None::<&()>)
            .await
            .map(drop)
    }

    async fn call(&self, path: &str, body: Option<&impl Serialize>) -> Result<Value, ApiError> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|value| value["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(ApiError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}
