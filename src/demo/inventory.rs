//! The demo's inventory service: an HTTP endpoint that reserves stock for each order event,
//! idempotently (an inbox row in the same transaction as the stock change), and fails on
//! purpose: a share of requests fail before or after the reservation commits, and the poison
//! orders always fail.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use rand::RngExt;
use tokio_util::sync::CancellationToken;

use super::store::{DemoDb, Order, Reserved};

/// The path the consumer posts to.
pub const PATH: &str = "/reservations";
/// The SKU prefix of orders the service can never reserve.
pub const POISON_SKU: &str = "POISON";
/// After this many injected failures of one message the service stops injecting them for it,
/// so that only the poison orders use up the retry policy's attempts.
const MAX_INJECTED_PER_MESSAGE: u32 = 2;

/// What the service saw, for the report.
#[derive(Debug, Default)]
pub struct Tally {
    pub requests: AtomicU64,
    /// Injected failures before anything was done.
    pub failed_before: AtomicU64,
    /// Injected failures after the reservation committed: the answer was "lost".
    pub failed_after: AtomicU64,
    pub poison_refusals: AtomicU64,
    /// Database errors, answered 503 so that the consumer retries.
    pub database_errors: AtomicU64,
}

struct Service {
    db: DemoDb,
    failure_rate: f64,
    /// Set once "the cause is fixed": the poison orders then reserve like any other.
    carries_poison_items: AtomicBool,
    injected: Mutex<HashMap<String, u32>>,
    tally: Arc<Tally>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Before,
    After,
}

impl Service {
    fn pick_fault(&self, message_id: &str) -> Fault {
        let mut rng = rand::rng();
        if self.failure_rate <= 0.0 || rng.random_range(0.0..1.0) >= self.failure_rate {
            return Fault::None;
        }
        let Ok(mut injected) = self.injected.lock() else {
            return Fault::None;
        };
        let count = injected.entry(message_id.to_owned()).or_default();
        if *count >= MAX_INJECTED_PER_MESSAGE {
            return Fault::None;
        }
        *count += 1;
        if rng.random_range(0.0..1.0) < 0.5 {
            Fault::Before
        } else {
            Fault::After
        }
    }
}

/// The running service.
pub struct Inventory {
    pub address: SocketAddr,
    pub tally: Arc<Tally>,
    service: Arc<Service>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Inventory {
    /// The fix for the poison orders: from now on they reserve like any other.
    pub fn carry_poison_items(&self) {
        self.service
            .carries_poison_items
            .store(true, Ordering::Relaxed);
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Starts the service on a free loopback port.
pub async fn start(db: DemoDb, failure_rate: f64) -> std::io::Result<Inventory> {
    let tally = Arc::new(Tally::default());
    let service = Arc::new(Service {
        db,
        failure_rate,
        carries_poison_items: AtomicBool::new(false),
        injected: Mutex::new(HashMap::new()),
        tally: tally.clone(),
    });
    let stop = CancellationToken::new();
    let router = Router::new()
        .route(PATH, post(reserve))
        .with_state(service.clone());
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let address = listener.local_addr()?;
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(stopped.cancelled_owned())
            .await
        {
            tracing::error!(%error, "the demo inventory service stopped");
        }
    });
    Ok(Inventory {
        address,
        tally,
        service,
        stop,
        task,
    })
}

async fn reserve(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let tally = &service.tally;
    tally.requests.fetch_add(1, Ordering::Relaxed);
    let Some(message_id) = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
    else {
        return (
            StatusCode::BAD_REQUEST,
            "the Idempotency-Key header is missing".into(),
        );
    };
    let order: Order = match serde_json::from_slice(&body) {
        Ok(order) => order,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("body: {error}")),
    };
    if order.sku.starts_with(POISON_SKU) && !service.carries_poison_items.load(Ordering::Relaxed) {
        tally.poison_refusals.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "stock lookup failed for SKU {}: no warehouse carries it",
                order.sku
            ),
        );
    }
    let fault = service.pick_fault(message_id);
    if fault == Fault::Before {
        tally.failed_before.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "inventory busy (a failure the demo injected before reserving)".into(),
        );
    }
    match service.db.reserve(message_id, &order).await {
        Ok(Reserved::Applied) => {}
        Ok(Reserved::Repeat) => {
            if let Err(error) = service.db.record_repeat(message_id).await {
                tracing::warn!(%error, "cannot note a repeated reservation");
            }
        }
        Err(error) => {
            tally.database_errors.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database: {error}"),
            );
        }
    }
    if fault == Fault::After {
        tally.failed_after.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "answer lost (a failure the demo injected after the reservation committed)".into(),
        );
    }
    (StatusCode::OK, "reserved".into())
}
