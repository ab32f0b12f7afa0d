//! Standalone mode (`ferry run -f PATH...`): the relays and consumers that manifests describe,
//! resolved exactly as the operator resolves them, all running in this one process until
//! SIGINT or SIGTERM, each finishing its in-flight work before it stops.

pub mod display;
pub mod plan;
pub mod secrets;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use tokio_util::sync::CancellationToken;

use crate::{
    consumer::{self, RunningConsumer},
    manifest::{self, Problem},
    observe::http::StatusReport,
    operator::status::{ConsumerReading, RelayReading},
    outbox,
    relay::{self, RunningRelay},
    validate::SecretCheck,
};
pub use plan::{Plan, Workload, WorkloadConfig};
pub use secrets::SecretValues;

/// Manifests that cannot run: every problem, each naming its file, object and field.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Load(#[from] manifest::LoadError),
    #[error("{}", problems_text(.0))]
    Invalid(Vec<Problem>),
    #[error("the manifests describe no OutboxSource or Consumer to run")]
    Nothing,
    #[error("{workload}: cannot start: {message}")]
    Start { workload: String, message: String },
}

fn problems_text(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!(
        "{}\n{} problem{} found; nothing was started",
        lines.join("\n"),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    )
}

/// Reads, admits and resolves the manifests at `paths`. `adjust` may change the admitted
/// objects' secrets before they are resolved (the demo points them at its own files).
pub fn load_plan(
    paths: &[PathBuf],
    namespace: &str,
    adjust: impl FnOnce(&mut SecretValues),
) -> Result<Plan, RunError> {
    let documents = manifest::load(paths)?;
    plan_documents(&documents, namespace, adjust)
}

/// `load_plan` for documents already read.
pub fn plan_documents(
    documents: &[manifest::Document],
    namespace: &str,
    adjust: impl FnOnce(&mut SecretValues),
) -> Result<Plan, RunError> {
    let admitted = manifest::admit(documents, namespace, SecretCheck::Skip);
    if !admitted.is_valid() {
        return Err(RunError::Invalid(admitted.problems));
    }
    let mut secrets =
        SecretValues::from_documents(documents, namespace).map_err(RunError::Invalid)?;
    adjust(&mut secrets);
    let env_is_set = |variable: &str| std::env::var_os(variable).is_some();
    let plan = plan::plan(&admitted, &secrets, &env_is_set).map_err(RunError::Invalid)?;
    if plan.workloads.is_empty() && plan.suspended.is_empty() {
        return Err(RunError::Nothing);
    }
    Ok(plan)
}

/// Creates every relay's outbox table (and its triggers) where missing.
pub async fn migrate_outboxes(plan: &Plan) -> Result<(), RunError> {
    for workload in &plan.workloads {
        if let WorkloadConfig::Relay(relay) = &workload.config {
            let failed = |message: String| RunError::Start {
                workload: format!("{} {}", workload.object.kind, workload.name()),
                message,
            };
            let url = relay
                .database
                .url
                .read()
                .map_err(|error| failed(format!("the outbox database URL: {error}")))?;
            outbox::migrate::migrate(relay.database.engine, &url, &relay.database.table)
                .await
                .map_err(|error| {
                    failed(format!(
                        "creating outbox table {}: {error}",
                        relay.database.table
                    ))
                })?;
        }
    }
    Ok(())
}

/// Where the workloads serve their endpoints: each on its own port from `base` upwards, or
/// each on a free loopback port when no base is given.
#[derive(Clone, Copy, Debug)]
pub struct Listen {
    pub base: Option<SocketAddr>,
}

impl Listen {
    fn address(&self, index: usize) -> SocketAddr {
        match self.base {
            Some(base) => SocketAddr::new(base.ip(), base.port().saturating_add(index as u16)),
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

enum Handle {
    Relay(RunningRelay),
    Consumer(RunningConsumer),
}

/// One started workload.
pub struct Running {
    pub workload: Workload,
    /// Where its `/healthz`, `/readyz`, `/metrics` and `/status` are served.
    pub address: SocketAddr,
    report: Arc<dyn StatusReport>,
    handle: Handle,
}

/// What a workload reports, read in-process (the same document as its `/status`).
#[derive(Clone, Debug)]
pub enum Reading {
    Relay(RelayReading),
    Consumer(ConsumerReading),
}

impl Reading {
    /// Whether the workload says it is ready.
    pub fn ready(&self) -> bool {
        match self {
            Self::Relay(relay) => relay.ready == Some(true),
            Self::Consumer(consumer) => consumer.ready == Some(true),
        }
    }
}

impl Running {
    pub fn reading(&self) -> Reading {
        read(&self.workload, self.report.as_ref())
    }

    /// Waits for the stop, then reads the final figures; an error when it did not stop cleanly.
    async fn wait(self) -> (Workload, Reading, Result<(), String>) {
        let outcome = match self.handle {
            Handle::Relay(relay) => relay.wait().await,
            Handle::Consumer(consumer) => consumer.wait().await,
        };
        let reading = read(&self.workload, self.report.as_ref());
        (self.workload, reading, outcome)
    }
}

fn read(workload: &Workload, report: &dyn StatusReport) -> Reading {
    // The documents are built by the same binary, so a field that does not parse is a bug;
    // the figures then show as unknown rather than stopping the run.
    let status = report.status();
    match workload.config {
        WorkloadConfig::Relay(_) => {
            Reading::Relay(serde_json::from_value(status).unwrap_or_default())
        }
        WorkloadConfig::Consumer(_) => {
            Reading::Consumer(serde_json::from_value(status).unwrap_or_default())
        }
    }
}

/// How long relays wait for the consumers to subscribe before they start anyway (a consumer
/// whose broker is down must not hold up the relays of other brokers for ever).
const CONSUMERS_FIRST: std::time::Duration = std::time::Duration::from_secs(15);

/// Every workload of a plan, running.
pub struct Pipelines {
    pub running: Vec<Running>,
}

impl Pipelines {
    /// Starts every workload of `plan`; each connects (retrying with backoff) in the background.
    /// Consumers start first, and relays once every consumer is subscribed (or after
    /// `CONSUMERS_FIRST`): a RabbitMQ exchange drops what no queue is bound to yet, so a relay
    /// that published before its consumer had declared its queue would dead-letter the first
    /// messages as unroutable. Cancelling `shutdown` stops them all. When one cannot start,
    /// those already started are stopped before the error is returned.
    pub async fn start(
        plan: Plan,
        listen: Listen,
        shutdown: &CancellationToken,
    ) -> Result<Self, RunError> {
        let (consumers, relays): (Vec<Workload>, Vec<Workload>) = plan
            .workloads
            .into_iter()
            .partition(|workload| matches!(workload.config, WorkloadConfig::Consumer(_)));
        let mut pipelines = Self {
            running: Vec::new(),
        };
        for workload in consumers {
            pipelines.start_one(workload, listen, shutdown).await?;
        }
        let deadline = tokio::time::Instant::now() + CONSUMERS_FIRST;
        while !pipelines.all_ready()
            && tokio::time::Instant::now() < deadline
            && !shutdown.is_cancelled()
        {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        for workload in relays {
            pipelines.start_one(workload, listen, shutdown).await?;
        }
        Ok(pipelines)
    }

    async fn start_one(
        &mut self,
        mut workload: Workload,
        listen: Listen,
        shutdown: &CancellationToken,
    ) -> Result<(), RunError> {
        workload.set_listen(listen.address(self.running.len()));
        let started = match &workload.config {
            WorkloadConfig::Relay(config) => relay::start((**config).clone(), shutdown.clone())
                .await
                .map(|relay| (relay.address, relay.report(), Handle::Relay(relay)))
                .map_err(|error| error.to_string()),
            WorkloadConfig::Consumer(config) => {
                consumer::start((**config).clone(), shutdown.clone())
                    .await
                    .map(|consumer| {
                        (
                            consumer.address,
                            consumer.report(),
                            Handle::Consumer(consumer),
                        )
                    })
                    .map_err(|error| error.to_string())
            }
        };
        match started {
            Ok((address, report, handle)) => {
                self.running.push(Running {
                    workload,
                    address,
                    report,
                    handle,
                });
                Ok(())
            }
            Err(message) => {
                shutdown.cancel();
                let started = Self {
                    running: std::mem::take(&mut self.running),
                };
                started.wait().await;
                Err(RunError::Start {
                    workload: format!("{} {}", workload.object.kind, workload.name()),
                    message,
                })
            }
        }
    }

    /// Whether every workload reports ready (connected and, a consumer, subscribed).
    pub fn all_ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    /// The workloads not ready yet, as `relay namespace/name`.
    pub fn not_ready(&self) -> Vec<String> {
        self.running
            .iter()
            .filter(|running| !running.reading().ready())
            .map(|running| format!("{} {}", running.workload.role(), running.workload.name()))
            .collect()
    }

    /// Waits until every workload has stopped (after `shutdown` is cancelled); their final
    /// figures, and whether each stopped cleanly.
    pub async fn wait(self) -> Vec<(Workload, Reading, Result<(), String>)> {
        futures::future::join_all(self.running.into_iter().map(Running::wait)).await
    }
}
