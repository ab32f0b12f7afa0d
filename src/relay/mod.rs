//! The relay workload (`ferry relay`): moves every committed outbox row to its broker topic,
//! at least once, in commit order per key, and only then deletes or marks the row.

pub mod metrics;
mod publishers;
mod router;
mod worker;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use chrono::Utc;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    api::outbox_source::CleanupMode,
    config::{DeadLetterConfig, RelayConfig},
    dlq::{self, DeadLetterStore, table::TableStore},
    observe::{
        Health,
        http::{self, StatusReport},
    },
    outbox::{self, NotificationChannel, OutboxStore},
    retry::{Backoff, sleep_or_stop},
};
pub use router::{Destination, Router};

/// What every worker of one relay shares.
pub(crate) struct Shared {
    config: RelayConfig,
    store: Box<dyn OutboxStore>,
    publishers: publishers::Publishers,
    router: Router,
    dead_letters: Option<Arc<dyn DeadLetterStore>>,
    /// The dead-letter table, when the store is one: its depth is counted for `/status`.
    dead_letter_table: Option<Arc<TableStore>>,
    metrics: Arc<metrics::RelayMetrics>,
    health: Arc<Health>,
}

/// A relay that has started serving its endpoints.
pub struct RunningRelay {
    /// Where `/healthz`, `/readyz`, `/metrics` and `/status` are served.
    pub address: SocketAddr,
    report: Arc<dyn StatusReport>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningRelay {
    /// What answers `/status`, to read it in-process (it keeps answering after the stop).
    pub fn report(&self) -> Arc<dyn StatusReport> {
        self.report.clone()
    }

    /// Waits until the relay has stopped (after `shutdown` is cancelled). An error means it
    /// did not stop cleanly (its task panicked): the process should exit with a failure, so
    /// that whatever runs it restarts it and the failure shows.
    pub async fn wait(self) -> Result<(), String> {
        self.task.await.map_err(|error| {
            tracing::error!(%error, "relay task failed");
            format!("the relay failed: {error}")
        })
    }
}

/// Starts a relay: endpoints at once, then (retrying with backoff until they answer) the
/// database, the dead-letter store and the brokers, then the workers. Cancelling `shutdown`
/// lets every worker finish its batch, then stops.
pub async fn start(
    config: RelayConfig,
    shutdown: CancellationToken,
) -> std::io::Result<RunningRelay> {
    let health = Arc::new(Health::default());
    let mut registry = Registry::default();
    let relay_metrics = metrics::RelayMetrics::new(&mut registry, config.transactional.is_some());
    let report = Arc::new(metrics::RelayReport {
        metrics: relay_metrics.clone(),
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
    tracing::info!(%address, source = %config.source.name, "relay endpoints listening");
    let task = tokio::spawn(async move {
        if let Some(shared) = connect(config, health, relay_metrics, &shutdown).await {
            run_workers(Arc::new(shared), &shutdown).await;
        }
        http_stop.cancel();
        let _ = http_task.await;
        tracing::info!("relay stopped");
    });
    Ok(RunningRelay {
        address,
        report,
        task,
    })
}

/// Opens everything the workers need, retrying until it works or `shutdown`.
async fn connect(
    config: RelayConfig,
    health: Arc<Health>,
    metrics: Arc<metrics::RelayMetrics>,
    shutdown: &CancellationToken,
) -> Option<Shared> {
    let mut backoff = Backoff::new(&config.retry);
    let store = loop {
        match outbox::open(&config.database).await {
            Ok(store) => break store,
            Err(error) => {
                health.record_error("database", error.to_string());
                tracing::warn!(%error, "cannot open the outbox database; retrying");
                if !sleep_or_stop(backoff.next_delay(), shutdown).await {
                    return None;
                }
            }
        }
    };
    health.set_database(true);
    backoff.reset();
    let (dead_letters, dead_letter_table) = match &config.dead_letter {
        None => (None, None),
        Some(dead_letter) => loop {
            let opened = match dead_letter {
                DeadLetterConfig::Database(database) => {
                    TableStore::connect(database).await.map(|table| {
                        let table = Arc::new(table);
                        let store: Arc<dyn DeadLetterStore> = table.clone();
                        (Some(store), Some(table))
                    })
                }
                other => dlq::open(other)
                    .await
                    .map(|store| (Some(Arc::from(store)), None)),
            };
            match opened {
                Ok(stores) => break stores,
                Err(error) => {
                    health.record_error("dead_letter", error.to_string());
                    tracing::warn!(%error, "cannot open the dead-letter store; retrying");
                    if !sleep_or_stop(backoff.next_delay(), shutdown).await {
                        return None;
                    }
                }
            }
        },
    };
    let publishers = publishers::Publishers::new(&config.topics);
    backoff.reset();
    while let Err(error) = publishers.connect_all().await {
        health.record_error(error.category(), error.to_string());
        tracing::warn!(%error, "cannot reach a broker; retrying");
        if !sleep_or_stop(backoff.next_delay(), shutdown).await {
            return None;
        }
    }
    health.set_broker(true);
    Some(Shared {
        router: Router::new(&config),
        config,
        store,
        publishers,
        dead_letters,
        dead_letter_table,
        metrics,
        health,
    })
}

async fn run_workers(shared: Arc<Shared>, shutdown: &CancellationToken) {
    let (wake_sender, wake) = watch::channel(0_u64);
    let background = CancellationToken::new();
    if shared.config.capture.notify
        && let Some(channel) = shared.store.notifications()
    {
        tokio::spawn(listen(
            channel,
            wake_sender.clone(),
            shared.clone(),
            background.clone(),
        ));
    }
    tokio::spawn(watch_pending(shared.clone(), background.clone()));
    if let Some(table) = shared.dead_letter_table.clone() {
        tokio::spawn(dlq::depth::follow(
            table,
            shared.config.source.origin(),
            shared.metrics.dead_letter_depth.clone(),
            background.clone(),
        ));
    }
    if shared.config.cleanup.mode == CleanupMode::Mark {
        tokio::spawn(purge(shared.clone(), background.clone()));
    }
    let transactional = shared
        .config
        .transactional
        .clone()
        .zip(shared.metrics.half.clone())
        .map(|(api, half_metrics)| {
            tokio::spawn(crate::transactional::run(
                api,
                half_metrics,
                shared.config.database.clone(),
                shared.config.retry.clone(),
                shared.dead_letters.clone(),
                shared.config.source.origin(),
                background.clone(),
            ))
        });
    let workers = if shared.store.supports_concurrent_claims() {
        shared.config.capture.workers.max(1)
    } else {
        1
    };
    let tasks: Vec<_> = (0..workers)
        .map(|_| tokio::spawn(worker::run(shared.clone(), wake.clone(), shutdown.clone())))
        .collect();
    for task in tasks {
        if let Err(error) = task.await {
            tracing::error!(%error, "relay worker failed");
        }
    }
    background.cancel();
    if let Some(task) = transactional {
        let _ = task.await;
    }
    shared.publishers.close_all().await;
}

/// LISTENs for commit notifications and wakes the workers; reconnects after a failure (polling
/// covers the gap) and wakes them once more after reconnecting, in case rows came meanwhile.
async fn listen(
    channel: NotificationChannel,
    wake: watch::Sender<u64>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(&shared.config.retry);
    while !stop.is_cancelled() {
        let listener = async {
            let mut listener = sqlx::postgres::PgListener::connect(&channel.url).await?;
            listener.listen(&channel.channel).await?;
            wake.send_modify(|n| *n += 1);
            tracing::debug!(channel = %channel.channel, "listening for outbox commits");
            loop {
                listener.recv().await?;
                wake.send_modify(|n| *n += 1);
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            result = listener => {
                if let Err(error) = result {
                    tracing::warn!(%error, "LISTEN connection lost; polling until it is back");
                }
            }
            _ = stop.cancelled() => return,
        }
        if !sleep_or_stop(backoff.next_delay(), &stop).await {
            return;
        }
    }
}

/// Refreshes the pending-row gauges and the health flags every second.
async fn watch_pending(shared: Arc<Shared>, stop: CancellationToken) {
    let mut client_was_down = false;
    loop {
        match shared.store.pending().await {
            Ok(stats) => {
                shared.metrics.record_pending(stats, Utc::now());
                shared.health.set_database(true);
            }
            Err(error) => {
                // Readiness turns false here, so `/status` says why here too: a worker idle
                // between polls would only notice at its next claim.
                shared.health.record_error("database", error.to_string());
                shared.health.set_database(false);
                tracing::debug!(%error, "cannot count pending rows");
            }
        }
        // Only a change of the clients' own view is applied here; a failed publish (broker up
        // but refusing) keeps readiness off until a batch succeeds.
        let connected = shared.publishers.all_connected().await;
        if connected == client_was_down {
            shared.health.set_broker(connected);
            client_was_down = !connected;
        }
        if !sleep_or_stop(Duration::from_secs(1), &stop).await {
            return;
        }
    }
}

/// With `cleanup.mode: Mark`, deletes rows published longer ago than the retention, in bounded
/// batches so that no statement holds locks for long.
async fn purge(shared: Arc<Shared>, stop: CancellationToken) {
    let cleanup = &shared.config.cleanup;
    loop {
        let before = Utc::now()
            - chrono::Duration::from_std(cleanup.retention.as_std())
                .unwrap_or(chrono::Duration::MAX);
        let batch = cleanup.purge_batch_size;
        outbox::purge_in_batches(batch, "published rows", || {
            shared.store.purge_published(before, batch)
        })
        .await;
        if !sleep_or_stop(Duration::from_secs(60), &stop).await {
            return;
        }
    }
}
