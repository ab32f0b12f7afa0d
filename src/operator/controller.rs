//! The controller loop: one kube-runtime `Controller` for OutboxSources and one for Consumers
//! per watched namespace (or one each for all namespaces). Each owns the four child kinds and
//! watches BrokerTopics, RetryPolicies, DeadLetterQueues and Secrets through the mapper in
//! `watch.rs`. An invalid resource waits for a change; a failed API call is retried with
//! exponential backoff.
//!
//! With leader election on, the controllers (every write) run only while this replica holds
//! the Lease (`lease/`); losing it ends the process with an error, so that the pod restarts
//! as a follower. Every reconcile ends by writing the resource's status when it changed
//! (`reconcile::write_status`), and a working resource is reconciled again every `RESYNC` so
//! that its lag and health figures stay fresh.

use std::{
    collections::HashMap,
    fmt::Debug,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, future::join_all};
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Secret, Service},
        policy::v1::PodDisruptionBudget,
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::Reporter,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::{
    api::{FIELD_MANAGER, KubeApi},
    build::{LABEL_MANAGED_BY, MANAGER},
    lease::{self, KubeLeases, LeaderElector, LeaseConfig, SystemClock},
    metrics::OperatorMetrics,
    reconcile::{
        Next, Outcome, ReconcileError, Settings, reconcile_consumer, reconcile_outbox_source,
    },
    watch::{Dependents, Referenced, dependents},
};
use crate::{
    api::{BrokerTopic, Consumer, DeadLetterQueue, Kind, OutboxSource, RetryPolicy},
    observe::{Health, http::StatusReport},
    validate::Catalog,
};

/// How often an applied resource is looked at again without any change: its status step then
/// reads the Deployment and the workload's `/status` again, so lag and health in the status
/// are at most this old.
const RESYNC: Duration = Duration::from_secs(30);
/// The first retry after a failed API call, doubled after each further failure.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const LAST_RETRY: Duration = Duration::from_secs(300);

/// The namespaces the operator watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespaces(Vec<String>),
}

/// What `ferry operator` runs with.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    pub scope: Scope,
    pub settings: Settings,
    /// `/healthz`, `/readyz`, `/metrics` and `/status`.
    pub metrics_address: SocketAddr,
    /// Run the controllers only while holding the Lease `lease::LEASE_NAME` in the namespace
    /// `POD_NAMESPACE` (else the client's default namespace).
    pub leader_election: bool,
}

/// An OutboxSource or a Consumer: the two kinds that have workloads.
trait Parent:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    const KIND: Kind;
    fn add_to(&self, catalog: &mut Catalog);
    fn pick(dependents: Dependents) -> Vec<ObjectRef<Self>>;
}

impl Parent for OutboxSource {
    const KIND: Kind = Kind::OutboxSource;
    fn add_to(&self, catalog: &mut Catalog) {
        catalog.add_outbox_source(self.clone());
    }
    fn pick(dependents: Dependents) -> Vec<ObjectRef<Self>> {
        dependents.outbox_sources
    }
}

impl Parent for Consumer {
    const KIND: Kind = Kind::Consumer;
    fn add_to(&self, catalog: &mut Catalog) {
        catalog.add_consumer(self.clone());
    }
    fn pick(dependents: Dependents) -> Vec<ObjectRef<Self>> {
        dependents.consumers
    }
}

struct Context {
    api: KubeApi,
    settings: Settings,
    metrics: OperatorMetrics,
    /// Consecutive failed API calls per resource, for the backoff.
    failures: Mutex<HashMap<(Kind, String, String), u32>>,
}

impl Context {
    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(Kind, String, String), u32>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn key<K: Parent>(object: &K) -> (Kind, String, String) {
    (
        K::KIND,
        object.namespace().unwrap_or_default(),
        object.name_any(),
    )
}

async fn reconcile<K: Parent>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let (kind, namespace, name) = key(object.as_ref());
    let started = Instant::now();
    let result = match kind {
        Kind::OutboxSource => {
            reconcile_outbox_source(&ctx.api, &namespace, &name, &ctx.settings).await
        }
        _ => reconcile_consumer(&ctx.api, &namespace, &name, &ctx.settings).await,
    };
    let label = match &result {
        Ok(Outcome::Applied(_)) => "applied",
        Ok(Outcome::Gone { .. }) => "gone",
        Ok(Outcome::Invalid { error, .. }) | Err(error) => error.category(),
    };
    ctx.metrics.record(kind.as_str(), label, started.elapsed());
    let outcome = result?;
    ctx.failures()
        .remove(&(kind, namespace.clone(), name.clone()));
    tracing::debug!(
        kind = kind.as_str(),
        %namespace,
        %name,
        result = label,
        applied = outcome.applied().len(),
        unchanged = outcome.unchanged().len(),
        deleted = outcome.deleted().len(),
        "reconciled"
    );
    Ok(match outcome.next() {
        Next::WaitForChange => Action::await_change(),
        Next::Resync => Action::requeue(RESYNC),
    })
}

/// The delay before retry `attempt` (1-based) of a failed API call.
fn backoff(attempt: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(LAST_RETRY)
}

fn error_policy<K: Parent>(object: Arc<K>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    if !error.is_transient() {
        return Action::await_change();
    }
    let key = key(object.as_ref());
    let attempt = {
        let mut failures = ctx.failures();
        let count = failures.entry(key.clone()).or_insert(0);
        *count += 1;
        *count
    };
    let delay = backoff(attempt);
    tracing::warn!(
        kind = key.0.as_str(),
        namespace = %key.1,
        name = %key.2,
        category = error.category(),
        %error,
        attempt,
        retry_in_seconds = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// The referenced objects the mappers need to follow a reference through another object.
#[derive(Clone)]
struct References {
    topics: Store<BrokerTopic>,
    queues: Store<DeadLetterQueue>,
}

impl References {
    fn catalog<K: Parent>(&self, parents: &Store<K>, namespace: &str) -> Catalog {
        let mut catalog = Catalog::default();
        let here = |meta: &kube::api::ObjectMeta| meta.namespace.as_deref() == Some(namespace);
        for parent in parents.state().iter().filter(|p| here(p.meta())) {
            parent.add_to(&mut catalog);
        }
        for topic in self.topics.state().iter().filter(|t| here(&t.metadata)) {
            catalog.add_broker_topic(topic.as_ref().clone());
        }
        for queue in self.queues.state().iter().filter(|q| here(&q.metadata)) {
            catalog.add_dead_letter_queue(queue.as_ref().clone());
        }
        catalog
    }
}

/// A store of every `K` in scope, and the watch that keeps it filled (to be driven).
fn reflect<K>(
    client: &Client,
    namespace: Option<&str>,
) -> (Store<K>, impl Future<Output = ()> + Send + use<K>)
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api::<K>(client, namespace), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(|event| {
        if let Err(error) = event {
            tracing::warn!(%error, kind = %K::kind(&()), "watch failed");
        }
        futures::future::ready(())
    });
    (store, stream)
}

async fn run_controller<K: Parent>(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    references: References,
    shutdown: CancellationToken,
) {
    let namespace = namespace.as_deref();
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    let controller = Controller::new(api::<K>(&client, namespace), watcher::Config::default());
    let parents = controller.store();
    let mapper = move |changed: Referenced, at: Option<String>| -> Vec<ObjectRef<K>> {
        let at = at.unwrap_or_default();
        let catalog = references.catalog(&parents, &at);
        K::pick(dependents(&changed, &at, &catalog))
    };
    let (for_topics, for_policies, for_queues, for_secrets) =
        (mapper.clone(), mapper.clone(), mapper.clone(), mapper);
    controller
        .owns(api::<ConfigMap>(&client, namespace), owned.clone())
        .owns(api::<Deployment>(&client, namespace), owned.clone())
        .owns(api::<Service>(&client, namespace), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, namespace), owned)
        .watches(
            api::<BrokerTopic>(&client, namespace),
            watcher::Config::default(),
            move |topic| for_topics(Referenced::BrokerTopic(topic.name_any()), topic.namespace()),
        )
        .watches(
            api::<RetryPolicy>(&client, namespace),
            watcher::Config::default(),
            move |policy| {
                for_policies(
                    Referenced::RetryPolicy(policy.name_any()),
                    policy.namespace(),
                )
            },
        )
        .watches(
            api::<DeadLetterQueue>(&client, namespace),
            watcher::Config::default(),
            move |queue| {
                for_queues(
                    Referenced::DeadLetterQueue(queue.name_any()),
                    queue.namespace(),
                )
            },
        )
        .watches(
            api::<Secret>(&client, namespace),
            watcher::Config::default(),
            move |secret: Secret| {
                for_secrets(Referenced::Secret(secret.name_any()), secret.namespace())
            },
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|result| {
            if let Err(error) = result {
                tracing::debug!(%error, kind = K::KIND.as_str(), "controller event");
            }
            futures::future::ready(())
        })
        .await;
}

/// Runs the controllers of `scope` until `shutdown`.
async fn run_controllers(
    client: Client,
    scope: Scope,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) {
    let namespaces: Vec<Option<String>> = match scope {
        Scope::All => vec![None],
        Scope::Namespaces(list) => list.into_iter().map(Some).collect(),
    };
    let mut tasks: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();
    for namespace in namespaces {
        let (topics, watch_topics) = reflect::<BrokerTopic>(&client, namespace.as_deref());
        let (queues, watch_queues) = reflect::<DeadLetterQueue>(&client, namespace.as_deref());
        let until_shutdown = |watch: futures::future::BoxFuture<'static, ()>| {
            let shutdown = shutdown.clone();
            Box::pin(async move {
                tokio::select! {
                    () = watch => {}
                    () = shutdown.cancelled() => {}
                }
            }) as futures::future::BoxFuture<'static, ()>
        };
        tasks.push(until_shutdown(Box::pin(watch_topics)));
        tasks.push(until_shutdown(Box::pin(watch_queues)));
        let references = References { topics, queues };
        tasks.push(Box::pin(run_controller::<OutboxSource>(
            client.clone(),
            namespace.clone(),
            ctx.clone(),
            references.clone(),
            shutdown.clone(),
        )));
        tasks.push(Box::pin(run_controller::<Consumer>(
            client.clone(),
            namespace,
            ctx.clone(),
            references,
            shutdown.clone(),
        )));
    }
    join_all(tasks).await;
}

/// What the operator's `/status` says.
struct OperatorReport {
    scope: Scope,
}

impl StatusReport for OperatorReport {
    fn status(&self) -> serde_json::Value {
        let namespaces = match &self.scope {
            Scope::All => serde_json::Value::from("all"),
            Scope::Namespaces(list) => serde_json::Value::from(list.clone()),
        };
        serde_json::json!({"component": "operator", "namespaces": namespaces})
    }
}

/// `ferry operator`: serves the operator's endpoints and runs the controllers until
/// `shutdown`.
pub async fn run(options: OperatorOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let reporter = Reporter {
        controller: FIELD_MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let ctx = Arc::new(Context {
        api: KubeApi::new(client.clone(), reporter),
        settings: options.settings,
        metrics: OperatorMetrics::new(&mut registry),
        failures: Mutex::default(),
    });
    // The operator has neither database nor broker: once it has a client it is ready, and
    // `/readyz` never reports either as unreachable.
    let health = Arc::new(Health::default());
    health.set_database(true);
    health.set_broker(true);
    let report = Arc::new(OperatorReport {
        scope: options.scope.clone(),
    });
    let (address, http) = crate::observe::http::serve(
        options.metrics_address,
        health,
        registry,
        report,
        shutdown.clone(),
    )
    .await?;
    tracing::info!(%address, scope = ?options.scope, "operator started");
    let result = if options.leader_election {
        run_while_leading(client, options.scope, ctx, shutdown.clone()).await
    } else {
        ctx.metrics.leader.set(1);
        run_controllers(client, options.scope, ctx, shutdown.clone()).await;
        Ok(())
    };
    // A lost Lease ends the process: stop serving too.
    shutdown.cancel();
    http.await?;
    result
}

/// Runs the controllers only while this replica holds the Lease (see `lease::run_while_leading`).
/// A follower stays ready: it is healthy, and takes over when the leader goes. A lost Lease
/// is an error, so that the process exits and the pod restarts as a follower.
async fn run_while_leading(
    client: Client,
    scope: Scope,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|namespace| !namespace.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let config = LeaseConfig::new(lease::identity_from_env());
    tracing::info!(%namespace, lease = %config.name, identity = %config.identity, "waiting to lead");
    let elector = LeaderElector::new(
        KubeLeases::new(client.clone(), &namespace),
        SystemClock,
        config,
    );
    let controllers = run_controllers(client, scope, ctx.clone(), shutdown.clone());
    let leader = |leads: bool| {
        ctx.metrics.leader.set(i64::from(leads));
    };
    lease::run_while_leading(elector, controllers, &shutdown, leader)
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "{error} in {namespace}: stopped the controllers; exiting to restart as a follower"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_after_failed_api_calls_double_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(u32::MAX), LAST_RETRY);
    }
}
