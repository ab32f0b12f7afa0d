//! The receiving service of the scenarios: applies each event's effect (a ledger row) in one
//! transaction with its inbox row keyed by the `Idempotency-Key`, as Ferry's docs tell services
//! to, so a repeated delivery changes nothing; refuses poison events with 422 (dead-lettered at
//! once); can fail a share of requests with 500, or be down (503) for a while.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use ferry::consumer::inbox::Inbox;
use rand::RngExt;
use sqlx::PgPool;
use tokio::sync::OnceCell;

use super::world::{INBOX, LEDGER};

#[derive(Default)]
pub struct Tally {
    pub requests: AtomicU64,
    /// Requests being answered now, and the most at once.
    in_flight: AtomicU64,
    pub most_in_flight: AtomicU64,
    /// Deliveries of an id whose effect was already applied: closed by the inbox.
    pub repeats: AtomicU64,
    pub failed_on_purpose: AtomicU64,
}

struct State_ {
    /// Set once the scenario's database exists (the service starts first: its URL goes into
    /// the manifests).
    pool: OnceCell<PgPool>,
    /// Per mille of requests answered 500.
    failure_per_mille: AtomicU32,
    /// How long each request takes, in milliseconds.
    delay_ms: AtomicU64,
    down: AtomicBool,
    tally: Arc<Tally>,
}

pub struct Service {
    pub address: SocketAddr,
    pub tally: Arc<Tally>,
    state: Arc<State_>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    pub async fn start() -> Self {
        let tally = Arc::new(Tally::default());
        let state = Arc::new(State_ {
            pool: OnceCell::new(),
            failure_per_mille: AtomicU32::new(0),
            delay_ms: AtomicU64::new(0),
            down: AtomicBool::new(false),
            tally: tally.clone(),
        });
        let router = Router::new()
            .route("/effects", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the service");
        let address = listener.local_addr().expect("its address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            address,
            tally,
            state,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/effects", self.address)
    }

    pub fn use_database(&self, pool: PgPool) {
        let _ = self.state.pool.set(pool);
    }

    /// Answers this share of requests with 500.
    pub fn fail_randomly(&self, share: f64) {
        self.state
            .failure_per_mille
            .store((share * 1000.0) as u32, Ordering::Relaxed);
    }

    /// Makes every request take `delay` before it is answered.
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::Relaxed);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(state): State<Arc<State_>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let tally = &state.tally;
    tally.requests.fetch_add(1, Ordering::Relaxed);
    let now = tally.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    tally.most_in_flight.fetch_max(now, Ordering::Relaxed);
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let answer = answer(&state, &headers, &body).await;
    tally.in_flight.fetch_sub(1, Ordering::Relaxed);
    answer
}

async fn answer(state: &State_, headers: &HeaderMap, body: &Bytes) -> (StatusCode, String) {
    if state.down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down".into());
    }
    let per_mille = state.failure_per_mille.load(Ordering::Relaxed);
    if per_mille > 0 && rand::rng().random_range(0..1000) < per_mille {
        state
            .tally
            .failed_on_purpose
            .fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed on purpose".into(),
        );
    }
    let Some(id) = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
    else {
        return (StatusCode::BAD_REQUEST, "no Idempotency-Key".into());
    };
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (StatusCode::BAD_REQUEST, "not JSON".into());
    };
    if event["poison"].as_bool() == Some(true) {
        return (StatusCode::UNPROCESSABLE_ENTITY, "poison".into());
    }
    let Some(pool) = state.pool.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no database yet".into());
    };
    match apply(pool, id, &event).await {
        Ok(true) => (StatusCode::OK, "applied".into()),
        Ok(false) => {
            state.tally.repeats.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, "already applied".into())
        }
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
    }
}

async fn apply(pool: &PgPool, id: &str, event: &serde_json::Value) -> Result<bool, sqlx::Error> {
    let inbox = Inbox::new(INBOX, "service").map_err(sqlx::Error::Protocol)?;
    let mut tx = pool.begin().await?;
    if !inbox.record(&mut *tx, id).await? {
        tx.commit().await?;
        return Ok(false);
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {LEDGER} (message_id, key, n) VALUES ($1, $2, $3)"
    )))
    .bind(id)
    .bind(event["key"].as_str().unwrap_or_default())
    .bind(event["n"].as_i64().unwrap_or(-1) as i32)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}
