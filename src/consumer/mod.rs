//! The consumer workload (`ferry consumer`): delivers a topic's messages to a service over HTTP,
//! acknowledging each only after the service accepted it, idempotently, retrying failures with
//! exponential backoff and dead-lettering what keeps failing.

mod deliver;
pub mod idempotency;
pub mod inbox;
pub mod metrics;
mod replay;
mod schedule;
mod session;
pub mod sink;
mod slots;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::subscriber::SubscriptionConfig,
    config::{ConsumerConfig, DeadLetterConfig},
    dlq::{self, DeadLetterStore, table::TableStore},
    observe::{
        Health,
        http::{self, StatusReport},
    },
    retry::{Backoff, sleep_or_stop},
};
use idempotency::{BatchedStore, IdempotencyStore};
use metrics::{ConsumerMetrics, ConsumerReport};
use sink::HttpSink;

/// The shortest time a received message may stay unsettled before the broker may hand it to
/// another replica; longer sink timeouts lengthen it (see `ack_timeout`).
const MIN_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// What every delivery of one consumer shares.
pub(crate) struct Shared {
    config: ConsumerConfig,
    sink: HttpSink,
    idempotency: Option<BatchedStore>,
    dead_letters: Option<Arc<dyn DeadLetterStore>>,
    /// The dead-letter table, when the store is one: where replay requests come from.
    replays: Option<Arc<TableStore>>,
    backoff: Backoff,
    ack_timeout: Duration,
    slots: slots::Slots,
    metrics: Arc<ConsumerMetrics>,
    health: Arc<Health>,
}

/// A consumer that has started serving its endpoints.
pub struct RunningConsumer {
    /// Where `/healthz`, `/readyz`, `/metrics` and `/status` are served.
    pub address: SocketAddr,
    report: Arc<dyn StatusReport>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningConsumer {
    /// What answers `/status`, to read it in-process (it keeps answering after the stop).
    pub fn report(&self) -> Arc<dyn StatusReport> {
        self.report.clone()
    }

    /// Waits until the consumer has stopped (after `shutdown` is cancelled). An error means it
    /// did not stop cleanly (its task panicked): the process should exit with a failure, so
    /// that whatever runs it restarts it and the failure shows.
    pub async fn wait(self) -> Result<(), String> {
        self.task.await.map_err(|error| {
            tracing::error!(%error, "consumer task failed");
            format!("the consumer failed: {error}")
        })
    }
}

/// A config the consumer cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("sink: {0}")]
    Sink(String),
    #[error("status endpoint: {0}")]
    Listen(#[from] std::io::Error),
}

/// How long a message may stay unsettled at the broker: a sink call with margin, at least
/// `MIN_ACK_TIMEOUT`. Deliveries that take longer (in-place retries) extend it as they go.
pub fn ack_timeout(config: &ConsumerConfig) -> Duration {
    match config.ack_timeout {
        Some(timeout) => timeout.as_std().max(Duration::from_secs(1)),
        None => (config.sink.timeout.as_std() * 2 + Duration::from_secs(5)).max(MIN_ACK_TIMEOUT),
    }
}

/// The consumer group settings for `config`; `member` names this replica.
pub fn subscription(config: &ConsumerConfig, member: &str) -> SubscriptionConfig {
    SubscriptionConfig {
        group: config.consumer.group(),
        member: member.to_owned(),
        // Enough received ahead to keep every delivery slot busy while acks travel.
        prefetch: (config.concurrency * 4).max(64),
        ack_timeout: ack_timeout(config),
        provision: config.topic.provision,
        // Per-key order across replicas needs one receiving replica at a time.
        single_active: config.ordering == crate::api::Ordering::PerKey,
    }
}

/// Starts a consumer: endpoints at once, then (retrying with backoff until they answer) the
/// idempotency and dead-letter stores and the broker, then deliveries. Cancelling `shutdown`
/// stops receiving, lets deliveries in progress settle, and stops.
pub async fn start(
    config: ConsumerConfig,
    shutdown: CancellationToken,
) -> Result<RunningConsumer, StartError> {
    let sink = HttpSink::new(
        &config.sink.url,
        config.sink.timeout.as_std(),
        config.concurrency as usize,
    )
    .map_err(StartError::Sink)?;
    let health = Arc::new(Health::default());
    let mut registry = Registry::default();
    let metrics = ConsumerMetrics::new(&mut registry);
    let report = Arc::new(ConsumerReport {
        metrics: metrics.clone(),
        health: health.clone(),
    });
    let http_stop = CancellationToken::new();
    let (address, http_task) = http::serve(
        config.http.listen,
        health.clone(),
        registry,
        report.clone(),
        http_stop.clone(),
    )
    .await?;
    tracing::info!(%address, consumer = %config.consumer.name, "consumer endpoints listening");
    let task = tokio::spawn(async move {
        if let Some((shared, raw_store)) = connect(config, sink, health, metrics, &shutdown).await {
            let shared = Arc::new(shared);
            let background = CancellationToken::new();
            if let Some(store) = raw_store {
                tokio::spawn(purge_idempotency(store, background.clone()));
            }
            if let Some(table) = shared.replays.clone() {
                tokio::spawn(dlq::depth::follow(
                    table,
                    shared.config.consumer.origin(),
                    shared.metrics.dead_letter_depth.clone(),
                    background.clone(),
                ));
            }
            if let Some(replays) = shared.replays.clone() {
                tokio::spawn(replay::serve_requests(
                    shared.clone(),
                    replays,
                    shutdown.clone(),
                ));
            }
            session::run_sessions(shared, &shutdown).await;
            background.cancel();
        }
        http_stop.cancel();
        let _ = http_task.await;
        tracing::info!("consumer stopped");
    });
    Ok(RunningConsumer {
        address,
        report,
        task,
    })
}

type Stores = (Shared, Option<Arc<dyn IdempotencyStore>>);

/// Opens the stores, retrying until they answer or `shutdown`.
async fn connect(
    config: ConsumerConfig,
    sink: HttpSink,
    health: Arc<Health>,
    metrics: Arc<ConsumerMetrics>,
    shutdown: &CancellationToken,
) -> Option<Stores> {
    let backoff = Backoff::new(&config.retry);
    let lease = ack_timeout(&config);
    let origin = config.consumer.origin();
    let raw_store: Option<Arc<dyn IdempotencyStore>> = match &config.idempotency {
        None => None,
        Some(settings) => Some(Arc::from(
            until_ok(&backoff, shutdown, &health, "idempotency", || {
                idempotency::open(settings, &origin, lease)
            })
            .await?,
        )),
    };
    let (dead_letters, replays): (Option<Arc<dyn DeadLetterStore>>, _) = match &config.dead_letter {
        None => (None, None),
        Some(DeadLetterConfig::Database(database)) => {
            let table = Arc::new(
                until_ok(&backoff, shutdown, &health, "dead_letter", || {
                    TableStore::connect(database)
                })
                .await?,
            );
            (Some(table.clone()), Some(table))
        }
        Some(settings) => (
            Some(Arc::from(
                until_ok(&backoff, shutdown, &health, "dead_letter", || {
                    dlq::open(settings)
                })
                .await?,
            )),
            None,
        ),
    };
    health.set_database(true);
    Some((
        Shared {
            idempotency: raw_store
                .clone()
                .map(|store| BatchedStore::new(store, metrics.clone())),
            dead_letters,
            replays,
            backoff,
            ack_timeout: lease,
            slots: slots::Slots::new(config.concurrency),
            sink,
            config,
            metrics,
            health,
        },
        raw_store,
    ))
}

/// Calls `open` until it succeeds, waiting with backoff in between; `None` on `shutdown`.
pub(crate) async fn until_ok<T, E, F, Fut>(
    backoff: &Backoff,
    shutdown: &CancellationToken,
    health: &Health,
    what: &str,
    mut open: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut retry = 0;
    loop {
        match open().await {
            Ok(value) => return Some(value),
            Err(error) => {
                retry += 1;
                health.record_error(what, error.to_string());
                tracing::warn!(%error, what, "cannot connect; retrying");
                if !sleep_or_stop(backoff.delay_for(retry), shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// Removes idempotency records older than the window, in bounded batches, every minute.
async fn purge_idempotency(store: Arc<dyn IdempotencyStore>, stop: CancellationToken) {
    loop {
        loop {
            match store.purge().await {
                Ok(removed) if removed > 0 => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "purging idempotency records failed");
                    break;
                }
            }
        }
        if !sleep_or_stop(Duration::from_secs(60), &stop).await {
            return;
        }
    }
}
