//! How many dead letters of one origin wait for a decision, counted every so often by the
//! workload that writes them: its `/status` reports it (`deadLetterDepth`), which is what the
//! operator's `DeadLetters` condition compares with the queue's alert threshold.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    query::{Selection, count},
    table::TableStore,
};

/// How often the letters are counted: an index scan per origin, cheap but not free.
const INTERVAL: Duration = Duration::from_secs(30);

/// The last count: `None` until the first one succeeds (or without a dead-letter table).
#[derive(Debug)]
pub struct Depth {
    letters: AtomicI64,
    gauge: Gauge,
    recount: Notify,
}

impl Depth {
    /// `gauge` is the workload's `..._dead_letter_depth` metric.
    pub fn new(gauge: Gauge) -> Self {
        Self {
            letters: AtomicI64::new(-1),
            gauge,
            recount: Notify::new(),
        }
    }

    /// Asks for a count now rather than at the next interval: a letter was just stored.
    pub fn recount(&self) {
        self.recount.notify_one();
    }

    /// The metric, for registering it.
    pub fn gauge(&self) -> Gauge {
        self.gauge.clone()
    }

    pub fn get(&self) -> Option<i64> {
        let letters = self.letters.load(Ordering::Relaxed);
        (letters >= 0).then_some(letters)
    }

    fn set(&self, letters: i64) {
        self.letters.store(letters, Ordering::Relaxed);
        self.gauge.set(letters);
    }
}

/// Counts the waiting letters of `origin` now, every `INTERVAL` and on `Depth::recount`, until
/// `stop`. A failed count keeps the last one (the store's errors show in the workload's own
/// writes).
pub async fn follow(
    store: Arc<TableStore>,
    origin: String,
    depth: Arc<Depth>,
    stop: CancellationToken,
) {
    let selection = Selection {
        origin: Some(origin),
        ..Selection::waiting()
    };
    loop {
        match count(&store, &selection).await {
            Ok(letters) => depth.set(letters),
            Err(error) => tracing::debug!(%error, "cannot count the waiting dead letters"),
        }
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            () = depth.recount.notified() => {}
            () = stop.cancelled() => return,
        }
    }
}
