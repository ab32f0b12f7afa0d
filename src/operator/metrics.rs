//! The operator's metrics: reconciles by kind and result, failures by stable category, how
//! long reconciles take, and whether this replica leads.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `OutboxSource` or `Consumer`.
    pub kind: String,
    /// `applied`, `gone`, or the `ReconcileError` category.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

pub struct OperatorMetrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub durations: Family<KindLabels, Histogram>,
    /// 1 while this replica runs the controllers (holds the Lease, or leader election is
    /// off), else 0.
    pub leader: Gauge,
}

impl OperatorMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            durations: Family::new_with_constructor(|| {
                Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
            leader: Gauge::default(),
        };
        let operator = registry.sub_registry_with_prefix("ferry_operator");
        operator.register(
            "reconciles",
            "Reconciles by kind and result (applied, gone, or the error category)",
            metrics.reconciles.clone(),
        );
        operator.register(
            "reconcile_duration_seconds",
            "How long a reconcile took, by kind",
            metrics.durations.clone(),
        );
        operator.register(
            "leader",
            "1 while this replica runs the controllers (it holds the leader election Lease, or leader election is off), else 0",
            metrics.leader.clone(),
        );
        metrics
    }

    pub fn record(&self, kind: &str, result: &str, took: Duration) {
        self.reconciles
            .get_or_create(&ResultLabels {
                kind: kind.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        self.durations
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}
