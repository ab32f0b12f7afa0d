//! The relay's metrics and its `/status` document.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use chrono::{DateTime, Utc};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use serde_json::json;

use crate::{
    dlq::depth::Depth,
    observe::{Health, http::StatusReport},
    outbox::PendingStats,
    transactional::metrics::HalfMetrics,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Counters and gauges, registered once and shared by every worker.
pub struct RelayMetrics {
    pub published: Family<TopicLabels, Counter>,
    pub dead_lettered: Family<ReasonLabels, Counter>,
    /// Batches that failed and will be retried, by error category.
    pub failed_batches: Family<ReasonLabels, Counter>,
    pub batch_size: Histogram,
    /// Seconds from sending a batch to the last broker confirm.
    pub publish_latency: Histogram,
    pub pending_rows: Gauge,
    pub oldest_pending_age_seconds: Gauge,
    pub failed_rows: Gauge,
    /// This source's dead letters waiting for a decision, when the queue is a table.
    pub dead_letter_depth: Arc<Depth>,
    /// Half messages, when the transactional API is enabled.
    pub half: Option<Arc<HalfMetrics>>,
    published_total: AtomicU64,
    dead_lettered_total: AtomicU64,
    /// Whether the pending rows have been counted once: the gauges read 0 before that.
    pending_counted: AtomicBool,
}

impl RelayMetrics {
    pub fn new(registry: &mut Registry, transactional: bool) -> Arc<Self> {
        let half = transactional.then(|| Arc::new(HalfMetrics::new(registry)));
        let metrics = Arc::new(Self {
            published: Family::default(),
            dead_lettered: Family::default(),
            failed_batches: Family::default(),
            batch_size: Histogram::new([
                1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 10000.0,
            ]),
            publish_latency: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            pending_rows: Gauge::default(),
            oldest_pending_age_seconds: Gauge::default(),
            failed_rows: Gauge::default(),
            dead_letter_depth: Arc::new(Depth::new(Gauge::default())),
            half,
            published_total: AtomicU64::new(0),
            dead_lettered_total: AtomicU64::new(0),
            pending_counted: AtomicBool::new(false),
        });
        let relay = registry.sub_registry_with_prefix("ferry_relay");
        relay.register(
            "published",
            "Messages the broker confirmed",
            metrics.published.clone(),
        );
        relay.register(
            "dead_lettered",
            "Rows that can never be published, by reason",
            metrics.dead_lettered.clone(),
        );
        relay.register(
            "failed_batches",
            "Batches left pending after a database or broker error, by category",
            metrics.failed_batches.clone(),
        );
        relay.register(
            "batch_size",
            "Rows per claimed batch",
            metrics.batch_size.clone(),
        );
        relay.register(
            "publish_latency_seconds",
            "Time from sending a batch to its last confirm",
            metrics.publish_latency.clone(),
        );
        relay.register(
            "pending_rows",
            "Outbox rows not yet published",
            metrics.pending_rows.clone(),
        );
        relay.register(
            "oldest_pending_age_seconds",
            "Age of the oldest unpublished row",
            metrics.oldest_pending_age_seconds.clone(),
        );
        relay.register(
            "failed_rows",
            "Rows marked failed in the outbox (no dead-letter queue)",
            metrics.failed_rows.clone(),
        );
        relay.register(
            "dead_letter_depth",
            "This source's dead letters waiting for a decision (counted every 30 s)",
            metrics.dead_letter_depth.gauge(),
        );
        metrics
    }

    pub fn record_published(&self, topic: &str, count: u64) {
        self.published
            .get_or_create(&TopicLabels {
                topic: topic.to_owned(),
            })
            .inc_by(count);
        self.published_total.fetch_add(count, Ordering::Relaxed);
    }

    pub fn record_dead_letter(&self, reason: &str) {
        self.dead_lettered
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        self.dead_lettered_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_pending(&self, stats: PendingStats, now: DateTime<Utc>) {
        let age = stats
            .oldest
            .map_or(0, |oldest| (now - oldest).num_seconds().max(0));
        self.pending_rows.set(stats.rows);
        self.oldest_pending_age_seconds.set(age);
        self.failed_rows.set(stats.failed);
        self.pending_counted.store(true, Ordering::Relaxed);
    }

    pub fn published_total(&self) -> u64 {
        self.published_total.load(Ordering::Relaxed)
    }
}

/// `/status` for the relay; the operator reads it.
pub struct RelayReport {
    pub metrics: Arc<RelayMetrics>,
    pub health: Arc<Health>,
}

impl StatusReport for RelayReport {
    fn status(&self) -> serde_json::Value {
        let metrics = &self.metrics;
        let counted = metrics.pending_counted.load(Ordering::Relaxed);
        json!({
            "pendingRows": counted.then(|| metrics.pending_rows.get()),
            "oldestPendingAgeSeconds": counted.then(|| metrics.oldest_pending_age_seconds.get()),
            "failedRows": metrics.failed_rows.get(),
            "publishedTotal": metrics.published_total(),
            "deadLetteredTotal": metrics.dead_lettered_total.load(Ordering::Relaxed),
            "deadLetterDepth": metrics.dead_letter_depth.get(),
            "databaseConnected": self.health.database(),
            "brokerConnected": self.health.broker(),
            "ready": self.health.ready(),
            "lastError": self.health.last_error(),
            "halfMessages": metrics.half.as_ref().map(|half| half.status()),
        })
    }
}
