//! The consumer's metrics and its `/status` document.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use serde_json::json;

use crate::{
    broker::subscriber::BrokerLag,
    dlq::depth::Depth,
    observe::{Health, http::StatusReport},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    pub category: String,
}

/// An idempotency store call (`claim`, `complete`, `release`) or a broker settlement (`ack`,
/// `retry`): a fixed, small set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

/// Round-trip buckets for calls to a store or broker on the same machine or network.
const ROUND_TRIP_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

type Histograms = Family<OperationLabels, Histogram, fn() -> Histogram>;

fn round_trips() -> Histograms {
    Family::new_with_constructor(|| Histogram::new(ROUND_TRIP_BUCKETS))
}

fn batch_sizes() -> Histograms {
    Family::new_with_constructor(|| Histogram::new(BATCH_BUCKETS))
}

/// How a message ended for this consumer: one counter per variant, and its total in `/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The sink answered 2xx.
    Delivered,
    /// Already delivered earlier: acknowledged without calling the sink.
    Deduplicated,
    /// Not one of the consumer's event types: acknowledged without calling the sink.
    Filtered,
    /// Stored in the dead-letter queue, then acknowledged.
    DeadLettered,
    /// Handed back to the broker for a later attempt.
    Retried,
}

/// Counters and gauges, registered once and shared by every delivery.
pub struct ConsumerMetrics {
    pub delivered: Counter,
    pub deduplicated: Counter,
    pub filtered: Counter,
    pub dead_lettered: Counter,
    pub retried: Counter,
    /// Failed attempts by category (`http_status`, `timeout`, `connection`, ...).
    pub failures: Family<CategoryLabels, Counter>,
    pub in_flight: Gauge,
    /// Seconds from sending a request to the sink to its answer.
    pub sink_latency: Histogram,
    pub lag_messages: Gauge,
    pub lag_oldest_age_seconds: Gauge,
    /// Seconds per idempotency store call, by operation (one call serves a batch of ids).
    store_seconds: Histograms,
    /// Ids per idempotency store call, by operation.
    store_batch_size: Histograms,
    /// Seconds per broker settlement (`ack`, `retry`) of one message.
    settle_seconds: Histograms,
    /// This consumer's dead letters waiting for a decision, when the queue is a table.
    pub dead_letter_depth: Arc<Depth>,
    /// Per `Settled` variant (its discriminant is the index), for `/status`.
    totals: [AtomicU64; 5],
    lag: AtomicI64,
    oldest_age: AtomicI64,
}

impl ConsumerMetrics {
    pub fn new(registry: &mut Registry) -> Arc<Self> {
        let metrics = Arc::new(Self {
            delivered: Counter::default(),
            deduplicated: Counter::default(),
            filtered: Counter::default(),
            dead_lettered: Counter::default(),
            retried: Counter::default(),
            failures: Family::default(),
            in_flight: Gauge::default(),
            sink_latency: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            lag_messages: Gauge::default(),
            lag_oldest_age_seconds: Gauge::default(),
            store_seconds: round_trips(),
            store_batch_size: batch_sizes(),
            settle_seconds: round_trips(),
            dead_letter_depth: Arc::new(Depth::new(Gauge::default())),
            totals: Default::default(),
            lag: AtomicI64::new(-1),
            oldest_age: AtomicI64::new(-1),
        });
        let prefix = registry.sub_registry_with_prefix("ferry_consumer");
        prefix.register(
            "delivered",
            "Messages the sink accepted",
            metrics.delivered.clone(),
        );
        prefix.register(
            "deduplicated",
            "Redelivered messages acknowledged without calling the sink",
            metrics.deduplicated.clone(),
        );
        prefix.register(
            "filtered",
            "Messages of other event types, acknowledged without calling the sink",
            metrics.filtered.clone(),
        );
        prefix.register(
            "dead_lettered",
            "Messages stored in the dead-letter queue",
            metrics.dead_lettered.clone(),
        );
        prefix.register(
            "retried",
            "Messages scheduled for another attempt",
            metrics.retried.clone(),
        );
        prefix.register(
            "failed_attempts",
            "Failed delivery attempts by category",
            metrics.failures.clone(),
        );
        prefix.register(
            "in_flight",
            "Messages being delivered now",
            metrics.in_flight.clone(),
        );
        prefix.register(
            "sink_latency_seconds",
            "Time from sending a message to the sink to its answer",
            metrics.sink_latency.clone(),
        );
        prefix.register(
            "lag_messages",
            "Messages at the broker not yet acknowledged by this consumer",
            metrics.lag_messages.clone(),
        );
        prefix.register(
            "lag_oldest_age_seconds",
            "Age of the oldest message not yet acknowledged, where the broker tells it",
            metrics.lag_oldest_age_seconds.clone(),
        );
        prefix.register(
            "idempotency_seconds",
            "Time per idempotency store call, by operation; one call serves a batch of ids",
            metrics.store_seconds.clone(),
        );
        prefix.register(
            "idempotency_batch_size",
            "Message ids per idempotency store call, by operation",
            metrics.store_batch_size.clone(),
        );
        prefix.register(
            "dead_letter_depth",
            "This consumer's dead letters waiting for a decision (counted every 30 s)",
            metrics.dead_letter_depth.gauge(),
        );
        prefix.register(
            "settle_seconds",
            "Time to settle one message with the broker, by operation (ack, retry)",
            metrics.settle_seconds.clone(),
        );
        metrics
    }

    pub fn observe_store(&self, operation: &'static str, ids: usize, elapsed: Duration) {
        let labels = OperationLabels { operation };
        self.store_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.store_batch_size
            .get_or_create(&labels)
            .observe(ids as f64);
    }

    pub fn observe_settle(&self, operation: &'static str, elapsed: Duration) {
        self.settle_seconds
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
    }

    pub fn record(&self, settled: Settled) {
        let counter = match settled {
            Settled::Delivered => &self.delivered,
            Settled::Deduplicated => &self.deduplicated,
            Settled::Filtered => &self.filtered,
            Settled::DeadLettered => &self.dead_lettered,
            Settled::Retried => &self.retried,
        };
        counter.inc();
        self.totals[settled as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_failure(&self, category: &str) {
        self.failures
            .get_or_create(&CategoryLabels {
                category: category.to_owned(),
            })
            .inc();
    }

    pub fn record_lag(&self, lag: BrokerLag) {
        let messages = i64::try_from(lag.messages).unwrap_or(i64::MAX);
        let age = lag
            .oldest_age
            .map_or(-1, |age| i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
        self.lag.store(messages, Ordering::Relaxed);
        self.oldest_age.store(age, Ordering::Relaxed);
        self.lag_messages.set(messages);
        self.lag_oldest_age_seconds.set(age.max(0));
    }

    pub fn total(&self, settled: Settled) -> u64 {
        self.totals[settled as usize].load(Ordering::Relaxed)
    }

    pub fn observe_sink(&self, elapsed: Duration) {
        self.sink_latency.observe(elapsed.as_secs_f64());
    }
}

/// `/status` for the consumer; the operator reads it.
pub struct ConsumerReport {
    pub metrics: Arc<ConsumerMetrics>,
    pub health: Arc<Health>,
}

impl StatusReport for ConsumerReport {
    fn status(&self) -> serde_json::Value {
        let metrics = &self.metrics;
        let lag = metrics.lag.load(Ordering::Relaxed);
        let age = metrics.oldest_age.load(Ordering::Relaxed);
        json!({
            "lagMessages": (lag >= 0).then_some(lag),
            "oldestUnacknowledgedAgeSeconds": (age >= 0).then_some(age),
            "deliveredTotal": metrics.total(Settled::Delivered),
            "deduplicatedTotal": metrics.total(Settled::Deduplicated),
            "filteredTotal": metrics.total(Settled::Filtered),
            "retriedTotal": metrics.total(Settled::Retried),
            "deadLetteredTotal": metrics.total(Settled::DeadLettered),
            "deadLetterDepth": metrics.dead_letter_depth.get(),
            "inFlight": metrics.in_flight.get(),
            "brokerConnected": self.health.broker(),
            "storesConnected": self.health.database(),
            "ready": self.health.ready(),
            "lastError": self.health.last_error(),
        })
    }
}
