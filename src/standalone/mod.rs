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
    let mut secrets = SecretValues::from_documents(documents, namespace).map_err(RunError::Invalid)?;
    adjust(&mut secrets);
    let env_is_set = |variable: &str| std::env::var_os(variable).is_some();
    let plan = plan::plan(&admitted, &secrets, &env_is_set).map_err(RunError::Invalid)?;
    if plan.workloads.is_empty() && plan.suspended.is_empty() {
        return Err(RunError::Nothing);
    }
    Ok(plan)
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

impl Running {
    pub fn reading(&self) -> Reading {
        read(&self.workload, self.report.as_ref())
    }

    /// Waits for the stop, then reads the final figures.
    async fn wait(self) -> (Workload, Reading) {
        match self.handle {
            Handle::Relay(relay) => relay.wait().await,
            Handle::Consumer(consumer) => consumer.wait().await,
        }
        let reading = read(&self.workload, self.report.as_ref());
        (self.workload, reading)
    }
}

fn read(workload: &Workload, report: &dyn StatusReport) -> Reading {
    // The documents are built by the same binary, so a field that does not parse is a bug;
    // the figures then show as unknown rather than stopping the run.
    let status = report.status();
    match workload.config {
        WorkloadConfig::Relay(_) => Reading::Relay(serde_json::from_value(status).unwrap_or_default()),
        WorkloadConfig::Consumer(_) => {
            Reading::Consumer(serde_json::from_value(status).unwrap_or_default())
        }
    }
}

/// Every workload of a plan, running.
pub struct Pipelines {
    pub running: Vec<Running>,
}

impl Pipelines {
    /// Starts every workload of `plan`; each connects (retrying with backoff) in the background.
    /// Cancelling `shutdown` stops them all. When one cannot start, those already started are
    /// stopped before the error is returned.
    pub async fn start(
        plan: Plan,
        listen: Listen,
        shutdown: &CancellationToken,
    ) -> Result<Self, RunError> {
        let mut running = Vec::new();
        for (index, mut workload) in plan.workloads.into_iter().enumerate() {
            workload.set_listen(listen.address(index));
            let started = match &workload.config {
                WorkloadConfig::Relay(config) => relay::start((**config).clone(), shutdown.clone())
                    .await
                    .map(|relay| (relay.address, relay.report(), Handle::Relay(relay)))
                    .map_err(|error| error.to_string()),
                WorkloadConfig::Consumer(config) => {
                    consumer::start((**config).clone(), shutdown.clone())
                        .await
                        .map(|consumer| {
                            (consumer.address, consumer.report(), Handle::Consumer(consumer))
                        })
                        .map_err(|error| error.to_string())
                }
            };
            match started {
                Ok((address, report, handle)) => running.push(Running {
                    workload,
                    address,
                    report,
                    handle,
                }),
                Err(message) => {
                    shutdown.cancel();
                    Self { running }.wait().await;
                    return Err(RunError::Start {
                        workload: format!("{} {}", workload.object.kind, workload.name()),
                        message,
                    });
                }
            }
        }
        Ok(Self { running })
    }

    /// Waits until every workload has stopped (after `shutdown` is cancelled); their final
    /// figures.
    pub async fn wait(self) -> Vec<(Workload, Reading)> {
        futures::future::join_all(self.running.into_iter().map(Running::wait)).await
    }
}
