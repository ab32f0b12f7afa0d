//! The HTTP service the pipeline's Consumer delivers to: it records the id (`ce-id`) of every
//! request it accepted, and fails on purpose: every request with 503 while down, and chosen
//! ("poison") ids with 422, which no retry policy retries.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};

#[derive(Default)]
struct Record {
    down: bool,
    poison: HashMap<String, StatusCode>,
    /// Accepted id -> how many times it was accepted.
    accepted: BTreeMap<String, usize>,
}

pub struct Sink {
    address: SocketAddr,
    record: Arc<Mutex<Record>>,
    server: tokio::task::JoinHandle<()>,
}

impl Sink {
    pub async fn start() -> Self {
        let record = Arc::new(Mutex::new(Record::default()));
        let router = Router::new()
            .route("/events", post(receive))
            .with_state(record.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the sink");
        let address = listener.local_addr().expect("the sink's address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            address,
            record,
            server,
        }
    }

    fn record(&self) -> MutexGuard<'_, Record> {
        self.record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.address)
    }

    /// While `down`, every request is answered 503 (retried by the consumer).
    pub fn set_down(&self, down: bool) {
        self.record().down = down;
    }

    /// Requests for `id` are answered 422 (dead-lettered at once).
    pub fn poison(&self, id: &str) {
        self.record()
            .poison
            .insert(id.to_owned(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    /// Every id accepted (2xx), with how many times.
    pub fn accepted(&self) -> BTreeMap<String, usize> {
        self.record().accepted.clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(record): State<Arc<Mutex<Record>>>, headers: HeaderMap) -> StatusCode {
    let id = headers
        .get("ce-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut record = record
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if record.down {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if let Some(status) = record.poison.get(&id) {
        return *status;
    }
    *record.accepted.entry(id).or_default() += 1;
    StatusCode::OK
}
