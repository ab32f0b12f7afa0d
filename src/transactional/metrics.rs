//! What the relay tells about half messages: counters of what was prepared and decided (by
//! whom), of check-backs that got no answer, and gauges of what waits in the table. `/status`
//! shows the same under `halfMessages`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde_json::{Value, json};

use super::{Decided, DecidedBy, State, store::HalfStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub state: String,
    pub by: String,
}

/// Registered under `ferry_relay_half_messages_...` when the API is enabled.
#[derive(Debug, Default)]
pub struct HalfMetrics {
    prepared: Counter,
    decided: Family<DecisionLabels, Counter>,
    failed_checks: Counter,
    waiting: Gauge,
    oldest_age: Gauge,
    dead_lettered: Gauge,
    /// `/status`'s copies: the counters cannot be read back by label cheaply.
    committed_total: AtomicU64,
    rolled_back_total: AtomicU64,
    dead_lettered_total: AtomicU64,
    /// Whether the table has been counted once: the gauges read 0 before that.
    counted: AtomicBool,
}

impl HalfMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let half = registry.sub_registry_with_prefix("ferry_relay_half_messages");
        half.register(
            "prepared",
            "Half messages prepared through the API",
            metrics.prepared.clone(),
        );
        half.register(
            "decided",
            "Half messages decided, by state and by whom (producer, check-back, max-checks)",
            metrics.decided.clone(),
        );
        half.register(
            "failed_check_backs",
            "Check-backs that got no usable answer and will be repeated",
            metrics.failed_checks.clone(),
        );
        half.register(
            "waiting",
            "Half messages prepared and not yet decided",
            metrics.waiting.clone(),
        );
        half.register(
            "oldest_waiting_age_seconds",
            "Age of the oldest half message not yet decided",
            metrics.oldest_age.clone(),
        );
        half.register(
            "dead_lettered_kept",
            "Half messages that were never decided, kept in the table",
            metrics.dead_lettered.clone(),
        );
        metrics
    }

    pub fn record_prepared(&self) {
        self.prepared.inc();
    }

    /// A decision call's outcome; one that found the message already decided that way changed
    /// nothing and is not counted again.
    pub fn record_decided(&self, decided: Decided, by: DecidedBy) {
        if decided.repeated {
            return;
        }
        let state = decided.state;
        self.decided
            .get_or_create(&DecisionLabels {
                state: state.as_str().to_owned(),
                by: by.as_str().to_owned(),
            })
            .inc();
        let total = match state {
            State::Committed => &self.committed_total,
            State::RolledBack => &self.rolled_back_total,
            State::DeadLettered => &self.dead_lettered_total,
            State::Prepared => return,
        };
        total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_failed_check(&self) {
        self.failed_checks.inc();
    }

    pub fn record_table(&self, stats: HalfStats, now: DateTime<Utc>) {
        let age = stats
            .oldest_prepared_at
            .map_or(0, |oldest| (now - oldest).num_seconds().max(0));
        self.waiting.set(stats.prepared);
        self.oldest_age.set(age);
        self.dead_lettered.set(stats.dead_lettered);
        self.counted.store(true, Ordering::Relaxed);
    }

    /// The `halfMessages` section of `/status`; the table's figures are null until counted.
    pub fn status(&self) -> Value {
        let counted = self.counted.load(Ordering::Relaxed);
        json!({
            "waiting": counted.then(|| self.waiting.get()),
            "oldestWaitingAgeSeconds": counted.then(|| self.oldest_age.get()),
            "deadLetteredKept": counted.then(|| self.dead_lettered.get()),
            "preparedTotal": self.prepared.get(),
            "committedTotal": self.committed_total.load(Ordering::Relaxed),
            "rolledBackTotal": self.rolled_back_total.load(Ordering::Relaxed),
            "deadLetteredTotal": self.dead_lettered_total.load(Ordering::Relaxed),
            "failedCheckBacksTotal": self.failed_checks.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counts_decisions_by_state_and_shows_the_table_once_counted() {
        let mut registry = Registry::default();
        let metrics = HalfMetrics::new(&mut registry);
        assert_eq!(metrics.status()["waiting"], Value::Null);
        metrics.record_prepared();
        metrics.record_prepared();
        let decided = |state| Decided {
            state,
            repeated: false,
        };
        metrics.record_decided(decided(State::Committed), DecidedBy::Producer);
        metrics.record_decided(decided(State::Committed), DecidedBy::CheckBack);
        metrics.record_decided(decided(State::RolledBack), DecidedBy::CheckBack);
        metrics.record_decided(
            Decided {
                state: State::Committed,
                repeated: true,
            },
            DecidedBy::Producer,
        );
        metrics.record_failed_check();
        let now = Utc::now();
        metrics.record_table(
            HalfStats {
                prepared: 3,
                oldest_prepared_at: Some(now - chrono::Duration::seconds(42)),
                dead_lettered: 1,
            },
            now,
        );
        let status = metrics.status();
        assert_eq!(status["waiting"], 3);
        assert_eq!(status["oldestWaitingAgeSeconds"], 42);
        assert_eq!(status["deadLetteredKept"], 1);
        assert_eq!(status["preparedTotal"], 2);
        assert_eq!(status["committedTotal"], 2);
        assert_eq!(status["rolledBackTotal"], 1);
        assert_eq!(status["failedCheckBacksTotal"], 1);

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"ferry_relay_half_messages_decided_total{state="committed",by="check-back"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("ferry_relay_half_messages_waiting 3"),
            "{text}"
        );
    }
}
