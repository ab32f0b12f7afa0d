//! The status step of the reconcile driver against the in-memory API (`MemoryApi`) and a canned
//! status probe: what each resource's status says about its references, its Deployment and
//! its workload's `/status`, and that an unchanged status is not written again.

use std::{path::PathBuf, sync::Arc};

use ferry::{
    manifest,
    operator::{
        api::{Call, MemoryApi},
        probe::{CannedProbe, ProbeTarget},
        reconcile::{Outcome, ReconcileError, Settings, reconcile_outbox_source},
    },
};
use serde_json::{Value, json};

const NAMESPACE: &str = "shop";
/// The OutboxSource of `examples/orders/`: two replicas, `lag.maxMessages: 10000`,
/// `lag.maxAge: 30s`.
const SOURCE: &str = "orders";
/// Its Deployment and Service.
const RELAY: &str = "orders-relay";

/// The orders pipeline in memory, with a probe that answers only what a test tells it to.
struct Cluster {
    api: MemoryApi,
    probe: Arc<CannedProbe>,
    settings: Settings,
}

impl Cluster {
    fn orders() -> Self {
        let api = MemoryApi::new();
        let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/orders");
        for document in manifest::load(&[examples]).expect("the examples load") {
            api.insert(document.value);
        }
        let probe = Arc::new(CannedProbe::new());
        let settings = Settings {
            default_image: "ghcr.io/ferry-dev/ferry:0.1.0".to_owned(),
            probe: probe.clone(),
        };
        Self {
            api,
            probe,
            settings,
        }
    }

    async fn try_reconcile(&self) -> Result<Outcome, ReconcileError> {
        reconcile_outbox_source(&self.api, NAMESPACE, SOURCE, &self.settings).await
    }

    async fn reconcile(&self) -> Outcome {
        self.try_reconcile().await.expect("no API call fails")
    }

    /// The relay's `/status` answers `document`.
    fn relay_reports(&self, document: Value) {
        self.probe
            .answer(NAMESPACE, RELAY, document.to_string().into_bytes());
    }

    /// The Deployment controller reports every replica of the relay available.
    fn relay_becomes_available(&self) {
        self.api.mark_deployment_available(NAMESPACE, RELAY);
    }

    /// Changes the OutboxSource as `kubectl apply` would (its generation goes up).
    fn edit_source(&self, change: impl FnOnce(&mut Value)) {
        let mut object = self
            .api
            .get("OutboxSource", NAMESPACE, SOURCE)
            .expect("the OutboxSource exists");
        change(&mut object);
        self.api.insert(object);
    }

    fn status(&self) -> Value {
        self.api
            .status("OutboxSource", NAMESPACE, SOURCE)
            .expect("a status is written")
    }

    /// The condition of `type_` in the written status.
    fn condition(&self, type_: &str) -> Value {
        let status = self.status();
        status["conditions"]
            .as_array()
            .and_then(|conditions| conditions.iter().find(|c| c["type"] == type_))
            .cloned()
            .unwrap_or_else(|| panic!("no {type_} condition in {status:#}"))
    }

    /// The status applies made since the last call.
    fn status_writes(&self) -> Vec<Value> {
        self.api
            .take_calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::ApplyStatus { patch, .. } => Some(patch),
                _ => None,
            })
            .collect()
    }
}

fn within_thresholds() -> Value {
    json!({"pendingRows": 3, "oldestPendingAgeSeconds": 1, "publishedTotal": 120, "ready": true})
}

/// `(status, reason)` of a condition.
fn verdict(condition: &Value) -> (&str, &str) {
    (
        condition["status"].as_str().unwrap_or_default(),
        condition["reason"].as_str().unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_valid_outbox_source_whose_deployment_becomes_available_is_ready_with_its_observed_generation()
 {
    let cluster = Cluster::orders();
    cluster.reconcile().await;
    assert_eq!(
        verdict(&cluster.condition("Ready")),
        ("Unknown", "DeploymentPending"),
        "no pod is ready yet: {:#}",
        cluster.status()
    );
    assert!(
        cluster.probe.fetched().is_empty(),
        "a workload without a ready pod is not probed"
    );

    cluster.relay_becomes_available();
    cluster.relay_reports(within_thresholds());
    cluster.reconcile().await;

    let status = cluster.status();
    assert_eq!(status["observedGeneration"], 1, "{status:#}");
    let ready = cluster.condition("Ready");
    assert_eq!(verdict(&ready).0, "True", "{ready:#}");
    assert_eq!(ready["observedGeneration"], 1);
    assert_eq!(
        verdict(&cluster.condition("ReferencesResolved")),
        ("True", "Resolved")
    );
    assert_eq!(
        verdict(&cluster.condition("WorkloadAvailable")),
        ("True", "ReplicasAvailable")
    );
    assert_eq!(
        verdict(&cluster.condition("Lagging")),
        ("False", "WithinThresholds")
    );
    assert_eq!(status["readyReplicas"], 2);
    assert_eq!(status["lag"]["messages"], 3);
    assert_eq!(status["publishedTotal"], 120);
}

#[tokio::test]
async fn the_probe_reads_status_through_the_workloads_service_port() {
    let cluster = Cluster::orders();
    cluster.reconcile().await;
    cluster.relay_becomes_available();
    cluster.relay_reports(within_thresholds());
    cluster.reconcile().await;

    let service = cluster
        .api
        .get("Service", NAMESPACE, RELAY)
        .expect("the Service is applied");
    let port = service
        .pointer("/spec/ports/0/port")
        .and_then(Value::as_u64)
        .and_then(|port| u16::try_from(port).ok())
        .expect("the Service has a port");
    assert_eq!(
        cluster.probe.fetched(),
        [ProbeTarget {
            namespace: NAMESPACE.to_owned(),
            service: RELAY.to_owned(),
            port,
        }]
    );
}

#[tokio::test]
async fn an_unchanged_second_reconcile_writes_no_status() {
    let cluster = Cluster::orders();
    cluster.relay_reports(within_thresholds());
    cluster.reconcile().await;
    cluster.relay_becomes_available();
    cluster.reconcile().await;
    let first = cluster.status();
    cluster.status_writes();

    cluster.reconcile().await;
    assert!(
        cluster.status_writes().is_empty(),
        "the same observations write nothing"
    );
    assert_eq!(cluster.status(), first, "the stored status keeps its times");

    // New figures are a change: written once, then not again.
    cluster.relay_reports(json!({"pendingRows": 7, "oldestPendingAgeSeconds": 2}));
    cluster.reconcile().await;
    assert_eq!(cluster.status_writes().len(), 1);
    assert_eq!(cluster.status()["lag"]["messages"], 7);
    assert_eq!(
        cluster.condition("Ready")["lastTransitionTime"],
        first["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_default(),
        "Ready stayed True: its transition time is kept"
    );
    cluster.reconcile().await;
    assert!(cluster.status_writes().is_empty());
}

#[tokio::test]
async fn a_missing_broker_topic_writes_ready_false_and_references_resolved_false_naming_the_field()
{
    let cluster = Cluster::orders();
    cluster.api.remove("BrokerTopic", NAMESPACE, "orders");
    let outcome = cluster.reconcile().await;
    assert!(outcome.invalid().is_some(), "{outcome:?}");

    let resolved = cluster.condition("ReferencesResolved");
    assert_eq!(
        verdict(&resolved),
        ("False", "BrokerTopicNotFound"),
        "{resolved:#}"
    );
    let message = resolved["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.routes[0].topicRef.name") && message.contains("\"orders\""),
        "{message}"
    );
    let ready = cluster.condition("Ready");
    assert_eq!(
        verdict(&ready),
        ("False", "BrokerTopicNotFound"),
        "{ready:#}"
    );
    assert_eq!(ready["message"], resolved["message"]);
    assert_eq!(cluster.status()["observedGeneration"], 1);
    assert!(cluster.probe.fetched().is_empty());
}

#[tokio::test]
async fn lag_above_the_resources_threshold_sets_lagging_while_ready_stays_true() {
    let cluster = Cluster::orders();
    cluster.reconcile().await;
    cluster.relay_becomes_available();
    cluster.relay_reports(json!({"pendingRows": 25000, "oldestPendingAgeSeconds": 5}));
    cluster.reconcile().await;

    let lagging = cluster.condition("Lagging");
    assert_eq!(
        verdict(&lagging),
        ("True", "MessagesAboveThreshold"),
        "{lagging:#}"
    );
    let message = lagging["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("25000") && message.contains("lag.maxMessages 10000"),
        "{message}"
    );
    let ready = cluster.condition("Ready");
    assert_eq!(
        verdict(&ready),
        ("True", "AvailableWithWarnings"),
        "{ready:#}"
    );
    assert_eq!(cluster.status()["lag"]["messages"], 25000);
}

#[tokio::test]
async fn an_unreachable_status_endpoint_is_reported_in_lagging_and_does_not_fail_the_reconcile() {
    let cluster = Cluster::orders();
    cluster.reconcile().await;
    cluster.relay_becomes_available();
    cluster.probe.fail(NAMESPACE, RELAY, "connection refused");
    let outcome = cluster.try_reconcile().await;
    assert!(
        matches!(outcome, Ok(Outcome::Applied(_))),
        "an unreachable workload is no reconcile error: {outcome:?}"
    );

    let lagging = cluster.condition("Lagging");
    assert_eq!(
        verdict(&lagging),
        ("Unknown", "StatusEndpointUnreachable"),
        "{lagging:#}"
    );
    assert!(
        lagging["message"]
            .as_str()
            .unwrap_or_default()
            .contains("connection refused"),
        "{lagging:#}"
    );
    assert_eq!(verdict(&cluster.condition("Ready")).0, "True");
}

#[tokio::test]
async fn suspend_gives_suspended_true_and_ready_false_without_probing() {
    let cluster = Cluster::orders();
    cluster.reconcile().await;
    cluster.relay_becomes_available();
    cluster.relay_reports(within_thresholds());
    cluster.edit_source(|source| source["spec"]["suspend"] = json!(true));
    cluster.reconcile().await;

    assert_eq!(
        verdict(&cluster.condition("Suspended")),
        ("True", "SuspendedBySpec")
    );
    assert_eq!(verdict(&cluster.condition("Ready")), ("False", "Suspended"));
    assert_eq!(
        verdict(&cluster.condition("Lagging")),
        ("Unknown", "Suspended")
    );
    assert_eq!(cluster.status()["observedGeneration"], 2);
    assert!(
        cluster.probe.fetched().is_empty(),
        "a suspended workload is not probed"
    );
}

#[tokio::test]
async fn a_failed_status_write_is_a_transient_error_to_retry() {
    let cluster = Cluster::orders();
    cluster
        .api
        .fail_next("apply_status", "the API server is away");
    let error = cluster
        .try_reconcile()
        .await
        .expect_err("the status could not be written");
    assert!(error.is_transient(), "{error}");
    assert!(
        cluster
            .api
            .status("OutboxSource", NAMESPACE, SOURCE)
            .is_none()
    );

    cluster.reconcile().await;
    assert!(
        cluster
            .api
            .status("OutboxSource", NAMESPACE, SOURCE)
            .is_some()
    );
}
