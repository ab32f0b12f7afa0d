//! A real HTTP service for the consumer to deliver to: it records every request (id, time,
//! headers) and every effect, and fails on purpose: a share of requests at random, some ids
//! always, or everything while "down".

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use rand::RngExt;

/// How the sink answers.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Share of requests answered 500 at random (0.0 to 1.0).
    pub fail_ratio: f64,
    /// Ids always answered with this status.
    pub poison: HashMap<String, u16>,
    /// Every request answered 503.
    pub down: bool,
    /// How long each request takes before it is answered.
    pub delay: Duration,
    /// `Retry-After` seconds sent with 429 and 503 answers.
    pub retry_after: Option<u64>,
}

/// One request as the sink saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub id: String,
    pub key: String,
    pub at: Instant,
    pub status: u16,
    pub idempotency_key: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Default)]
struct Record {
    behaviour: Behaviour,
    requests: Vec<Request>,
    /// Ids answered 2xx, in order, with repeats: the effects.
    effects: Vec<String>,
}

#[derive(Clone)]
pub struct Sink {
    pub address: SocketAddr,
    record: Arc<Mutex<Record>>,
}

impl Sink {
    pub async fn start(behaviour: Behaviour) -> Self {
        let record = Arc::new(Mutex::new(Record {
            behaviour,
            ..Record::default()
        }));
        let router = Router::new()
            .route("/events", post(receive))
            .with_state(record.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the sink");
        let address = listener.local_addr().expect("sink address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { address, record }
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.address)
    }

    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.record.lock().unwrap().behaviour);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.record.lock().unwrap().requests.clone()
    }

    pub fn effects(&self) -> Vec<String> {
        self.record.lock().unwrap().effects.clone()
    }

    /// Distinct ids with an effect.
    pub fn delivered(&self) -> HashSet<String> {
        self.effects().into_iter().collect()
    }

    /// Ids whose effect happened more than once.
    pub fn applied_twice(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.effects()
            .into_iter()
            .filter(|id| !seen.insert(id.clone()))
            .collect()
    }

    /// Waits until `done` holds for the sink's record, or fails after `limit`.
    pub async fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&Sink) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {} effects, {} requests",
                self.effects().len(),
                self.requests().len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn receive(
    State(record): State<Arc<Mutex<Record>>>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let id = header("ce-id").unwrap_or_default();
    let delay = record.lock().unwrap().behaviour.delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut record = record.lock().unwrap();
    let behaviour = &record.behaviour;
    let status = if behaviour.down {
        503
    } else if let Some(status) = behaviour.poison.get(&id) {
        *status
    } else if rand::rng().random_bool(behaviour.fail_ratio.clamp(0.0, 1.0)) {
        500
    } else {
        200
    };
    record.requests.push(Request {
        id: id.clone(),
        key: header("ce-partitionkey").unwrap_or_default(),
        at: Instant::now(),
        status,
        idempotency_key: header("idempotency-key"),
        content_type: header("content-type"),
    });
    if status == 200 {
        record.effects.push(id);
    }
    let mut answer = HeaderMap::new();
    if let (Some(seconds), 429 | 503) = (record.behaviour.retry_after, status) {
        answer.insert("retry-after", seconds.into());
    }
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        answer,
    )
}
