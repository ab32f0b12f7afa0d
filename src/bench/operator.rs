//! `ferry bench operator`: the reconcilers over many resources in the in-memory API. A first
//! pass takes every OutboxSource and Consumer to steady state (children applied, Deployments
//! available, status read from a canned `/status`); a second pass over the unchanged resources
//! must write nothing. Wall times, API writes and the process's peak memory against targets.

use std::{
    collections::BTreeMap,
    path::Path,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::Utc;
use prometheus_client::registry::Registry;
use serde_json::Value;

use super::{
    BenchError,
    report::{met, table},
};
use crate::{
    broker::subscriber::BrokerLag,
    consumer::metrics::{ConsumerMetrics, ConsumerReport, Settled},
    manifest,
    observe::{Health, http::StatusReport},
    operator::{
        api::MemoryApi,
        build::{Component, child_name},
        probe::{ProbeError, ProbeTarget, StatusProbe},
        reconcile::{Outcome, Settings, reconcile_consumer, reconcile_outbox_source},
    },
    outbox::PendingStats,
    relay::metrics::{RelayMetrics, RelayReport},
};

/// Both passes together must take at most this long.
pub const WALL_TARGET: Duration = Duration::from_secs(30);
/// The benchmark process's peak resident memory must stay within this.
pub const OPERATOR_RSS_TARGET_MIB: f64 = 128.0;

/// The example pipeline every resource is a copy of, compiled in so the benchmark runs from
/// anywhere.
const EXAMPLES: [(&str, &str); 6] = [
    (
        "00-secrets.yaml",
        include_str!("../../examples/orders/00-secrets.yaml"),
    ),
    (
        "10-outbox-source.yaml",
        include_str!("../../examples/orders/10-outbox-source.yaml"),
    ),
    (
        "20-broker-topic.yaml",
        include_str!("../../examples/orders/20-broker-topic.yaml"),
    ),
    (
        "30-retry-policies.yaml",
        include_str!("../../examples/orders/30-retry-policies.yaml"),
    ),
    (
        "40-dead-letter-queues.yaml",
        include_str!("../../examples/orders/40-dead-letter-queues.yaml"),
    ),
    (
        "50-consumer.yaml",
        include_str!("../../examples/orders/50-consumer.yaml"),
    ),
];

const IMAGE: &str = "ghcr.io/ferry-dev/ferry:bench";

/// `ferry bench operator`.
#[derive(Debug, clap::Args)]
pub struct OperatorBenchArgs {
    /// OutboxSources, each a copy of `examples/orders`' `orders` under its own name.
    #[arg(long, default_value_t = 1_000)]
    pub sources: usize,
    /// Consumers, each a copy of `examples/orders`' `inventory` under its own name.
    #[arg(long, default_value_t = 1_000)]
    pub consumers: usize,
    /// Namespaces the resources are spread over, round-robin; each holds one shared set of the
    /// BrokerTopic, RetryPolicies, DeadLetterQueues and Secrets they reference.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub namespaces: u32,
}

/// A `/status` that every workload answers the same: what a healthy relay or consumer with a
/// small backlog serves, written by their own report code.
struct SteadyProbe {
    relay: Vec<u8>,
    consumer: Vec<u8>,
}

impl SteadyProbe {
    fn new() -> Self {
        let relay = RelayMetrics::new(&mut Registry::default(), false);
        relay.record_published("orders", 25_000);
        let now = Utc::now();
        relay.record_pending(
            PendingStats {
                rows: 12,
                oldest: Some(now - chrono::Duration::seconds(2)),
                failed: 0,
            },
            now,
        );
        let consumer = ConsumerMetrics::new(&mut Registry::default());
        for _ in 0..100 {
            consumer.record(Settled::Delivered);
        }
        consumer.record_lag(BrokerLag {
            messages: 5,
            oldest_age: Some(Duration::from_secs(1)),
        });
        let health = || {
            let health = Arc::new(Health::default());
            health.set_database(true);
            health.set_broker(true);
            health
        };
        let relay = RelayReport {
            metrics: relay,
            health: health(),
        };
        let consumer = ConsumerReport {
            metrics: consumer,
            health: health(),
        };
        Self {
            relay: relay.status().to_string().into_bytes(),
            consumer: consumer.status().to_string().into_bytes(),
        }
    }
}

#[async_trait]
impl StatusProbe for SteadyProbe {
    async fn fetch(&self, target: &ProbeTarget) -> Result<Vec<u8>, ProbeError> {
        Ok(if target.service.ends_with("-relay") {
            self.relay.clone()
        } else {
            self.consumer.clone()
        })
    }
}

/// One OutboxSource or Consumer to reconcile.
#[derive(Clone, Debug)]
struct Parent {
    kind: &'static str,
    namespace: String,
    name: String,
}

/// What the benchmark measured.
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorResult {
    pub sources: usize,
    pub consumers: usize,
    pub namespaces: u32,
    /// Reconciles of the first pass: two per resource (apply, then read the available workload).
    pub first_reconciles: usize,
    pub first_pass: Duration,
    pub first_writes: usize,
    pub second_pass: Duration,
    /// Child applies and deletes, and status writes, of the second pass.
    pub second_writes: usize,
    pub peak_rss_mib: f64,
}

impl OperatorResult {
    pub fn table(&self) -> String {
        table(
            &[
                "sources",
                "consumers",
                "namespaces",
                "1st pass s",
                "1st pass writes",
                "2nd pass s",
                "2nd pass writes",
                "peak RSS MiB",
            ],
            &[vec![
                self.sources.to_string(),
                self.consumers.to_string(),
                self.namespaces.to_string(),
                format!("{:.2}", self.first_pass.as_secs_f64()),
                self.first_writes.to_string(),
                format!("{:.2}", self.second_pass.as_secs_f64()),
                self.second_writes.to_string(),
                format!("{:.1}", self.peak_rss_mib),
            ]],
        )
    }

    pub fn met(&self) -> bool {
        self.first_pass + self.second_pass <= WALL_TARGET
            && self.second_writes == 0
            && self.peak_rss_mib <= OPERATOR_RSS_TARGET_MIB
    }

    pub fn verdict(&self) -> String {
        let wall = self.first_pass + self.second_pass;
        format!(
            "verdict: wall {:.2} s <= {} s {}; 2nd pass writes {} = 0 {}; peak RSS {:.1} MiB <= {OPERATOR_RSS_TARGET_MIB:.0} MiB {}",
            wall.as_secs_f64(),
            WALL_TARGET.as_secs(),
            met(wall <= WALL_TARGET),
            self.second_writes,
            met(self.second_writes == 0),
            self.peak_rss_mib,
            met(self.peak_rss_mib <= OPERATOR_RSS_TARGET_MIB)
        )
    }
}

/// `ferry bench operator`: see `docs/benchmarks.md`.
pub async fn run(args: OperatorBenchArgs) -> anyhow::Result<ExitCode> {
    let result = measure(&args).await?;
    print!("{}", result.table());
    println!("{}", result.verdict());
    Ok(if result.met() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Fills the in-memory API, runs both passes and reads the peak memory.
pub async fn measure(args: &OperatorBenchArgs) -> Result<OperatorResult, BenchError> {
    let api = MemoryApi::new();
    let parents = fill(&api, args)?;
    let settings = Settings {
        default_image: IMAGE.to_owned(),
        probe: Arc::new(SteadyProbe::new()),
    };

    let started = Instant::now();
    let mut first_writes = 0;
    for parent in &parents {
        first_writes += reconcile(&api, parent, &settings).await?;
        become_available(&api, parent);
        first_writes += reconcile(&api, parent, &settings).await?;
    }
    let first_pass = started.elapsed();

    let started = Instant::now();
    let mut second_writes = 0;
    for parent in &parents {
        second_writes += reconcile(&api, parent, &settings).await?;
    }
    let second_pass = started.elapsed();

    Ok(OperatorResult {
        sources: args.sources,
        consumers: args.consumers,
        namespaces: args.namespaces,
        first_reconciles: parents.len() * 2,
        first_pass,
        first_writes,
        second_pass,
        second_writes,
        peak_rss_mib: peak_rss_kib()? as f64 / 1024.0,
    })
}

/// Reconciles one resource with the real reconciler and returns the API writes it made. The
/// recorded calls are dropped as it goes, so the record does not count as operator memory.
async fn reconcile(
    api: &MemoryApi,
    parent: &Parent,
    settings: &Settings,
) -> Result<usize, BenchError> {
    let outcome = match parent.kind {
        "OutboxSource" => {
            reconcile_outbox_source(api, &parent.namespace, &parent.name, settings).await
        }
        _ => reconcile_consumer(api, &parent.namespace, &parent.name, settings).await,
    }
    .map_err(|error| BenchError::Check(format!("reconcile {}: {error}", parent.name)))?;
    if let Outcome::Invalid { error, .. } = &outcome {
        return Err(BenchError::Check(format!(
            "{} {}/{} is invalid: {error}",
            parent.kind, parent.namespace, parent.name
        )));
    }
    Ok(api
        .take_calls()
        .iter()
        .filter(|call| call.is_write())
        .count())
}

/// Marks the resource's Deployment available with all its replicas, as the Deployment
/// controller would once the pods are ready.
fn become_available(api: &MemoryApi, parent: &Parent) {
    let component = if parent.kind == "OutboxSource" {
        Component::Relay
    } else {
        Component::Consumer
    };
    api.mark_deployment_available(&parent.namespace, &child_name(&parent.name, component));
}

/// Stores, in each namespace, the example's Secrets, BrokerTopic, RetryPolicies and
/// DeadLetterQueues once, and round-robin over the namespaces `sources` copies of its
/// OutboxSource and `consumers` copies of its Consumer, renamed. Returns the parents in the
/// order they are reconciled.
fn fill(api: &MemoryApi, args: &OperatorBenchArgs) -> Result<Vec<Parent>, BenchError> {
    let mut templates: BTreeMap<String, Value> = BTreeMap::new();
    let mut shared = Vec::new();
    for (file, text) in EXAMPLES {
        let documents = manifest::parse_documents(Path::new(file), text)
            .map_err(|error| BenchError::Check(format!("examples/orders/{file}: {error}")))?;
        for document in documents {
            let kind = document.value["kind"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match kind.as_str() {
                "OutboxSource" | "Consumer" => {
                    templates.insert(kind, document.value);
                }
                _ => shared.push(document.value),
            }
        }
    }
    let template = |kind: &str| {
        templates
            .get(kind)
            .cloned()
            .ok_or_else(|| BenchError::Check(format!("examples/orders holds no {kind}")))
    };
    let (source, consumer) = (template("OutboxSource")?, template("Consumer")?);

    let namespaces: Vec<String> = (0..args.namespaces)
        .map(|index| format!("bench-{index:03}"))
        .collect();
    for namespace in &namespaces {
        for object in &shared {
            api.insert(renamed(object, namespace, None));
        }
    }
    let mut parents = Vec::with_capacity(args.sources + args.consumers);
    for (kind, template, count) in [
        ("OutboxSource", &source, args.sources),
        ("Consumer", &consumer, args.consumers),
    ] {
        let base = template["metadata"]["name"].as_str().unwrap_or("bench");
        for index in 0..count {
            let namespace = &namespaces[index % namespaces.len()];
            let name = format!("{base}-{index:05}");
            api.insert(renamed(template, namespace, Some(&name)));
            parents.push(Parent {
                kind,
                namespace: namespace.clone(),
                name,
            });
        }
    }
    Ok(parents)
}

/// `object` in `namespace`, under `name` when given.
fn renamed(object: &Value, namespace: &str, name: Option<&str>) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".into(), namespace.into());
        if let Some(name) = name {
            meta.insert("name".into(), name.into());
        }
    }
    object
}

/// This process's peak resident set (`VmHWM` of `/proc/self/status`), in KiB.
fn peak_rss_kib() -> Result<u64, BenchError> {
    let path = "/proc/self/status";
    let text = std::fs::read_to_string(path).map_err(BenchError::io(path))?;
    super::child::vm_hwm_kib(&text)
        .ok_or_else(|| BenchError::Check(format!("no VmHWM line in {path}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_pass_over_a_few_unchanged_resources_writes_nothing() {
        let args = OperatorBenchArgs {
            sources: 6,
            consumers: 6,
            namespaces: 2,
        };
        let result = measure(&args).await.expect("the benchmark runs");
        assert_eq!(result.second_writes, 0, "{result:?}");
        // Per resource: 4 children and a status, then the status again with the workload read.
        assert_eq!(result.first_writes, 12 * 6, "{result:?}");
        assert!(result.verdict().contains("2nd pass writes 0 = 0 met"));
    }
}
