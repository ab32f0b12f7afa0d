//! The status probe: reads a workload's `/status` document through its Service. `HttpProbe`
//! asks the cluster's DNS name of the Service over HTTP with a short timeout, a bounded number
//! at a time; `CannedProbe`
//! answers from bytes or errors a test set. A failed fetch is an input to the status
//! (`Probe::from_fetch`), never an error of the reconcile.

use std::{
    collections::BTreeMap,
    error::Error as _,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::Semaphore;

/// How long the operator waits for a workload's `/status`: a workload that takes longer is
/// reported unreachable rather than holding up its reconcile.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most `/status` fetches one operator makes at once; further reconciles wait their turn.
pub const MAX_CONCURRENT_PROBES: usize = 16;

/// The Service in front of one workload's HTTP port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProbeTarget {
    pub namespace: String,
    /// The Service's name: the workload's child name.
    pub service: String,
    pub port: u16,
}

impl ProbeTarget {
    /// `http://<service>.<namespace>.svc:<port>/status`.
    pub fn url(&self) -> String {
        format!(
            "http://{}.{}.svc:{}/status",
            self.service, self.namespace, self.port
        )
    }
}

/// Why a `/status` could not be fetched: no connection, a timeout, an HTTP error status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProbeError(pub String);

/// Fetches the body of a workload's `/status`.
#[async_trait]
pub trait StatusProbe: Send + Sync {
    async fn fetch(&self, target: &ProbeTarget) -> Result<Vec<u8>, ProbeError>;
}

/// The probe of a running operator: a plain HTTP GET inside the cluster, straight to the
/// Service (never through a proxy the operator's environment may name).
#[derive(Clone, Debug)]
pub struct HttpProbe {
    /// A client that could not be built is reported as the failure of every fetch, so that
    /// it shows in the statuses rather than stopping the operator.
    client: Result<reqwest::Client, String>,
    permits: Arc<Semaphore>,
}

impl HttpProbe {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .timeout(PROBE_TIMEOUT)
            .connect_timeout(PROBE_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|error| format!("cannot build an HTTP client: {}", describe(&error)));
        if let Err(error) = &client {
            tracing::error!(%error, "the status probe cannot read any workload's /status");
        }
        Self {
            client,
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
        }
    }
}

impl Default for HttpProbe {
    fn default() -> Self {
        Self::new()
    }
}

/// reqwest's own message names only the URL; the innermost cause says what happened
/// ("Connection refused", "operation timed out").
fn describe(error: &reqwest::Error) -> String {
    let mut message = if error.is_timeout() {
        format!("no answer within {}s", PROBE_TIMEOUT.as_secs())
    } else {
        error.to_string()
    };
    let mut source = error.source();
    let mut innermost = None;
    while let Some(cause) = source {
        innermost = Some(cause.to_string());
        source = cause.source();
    }
    if let Some(cause) = innermost {
        message.push_str(": ");
        message.push_str(&cause);
    }
    message
}

#[async_trait]
impl StatusProbe for HttpProbe {
    async fn fetch(&self, target: &ProbeTarget) -> Result<Vec<u8>, ProbeError> {
        let client = self
            .client
            .as_ref()
            .map_err(|error| ProbeError(error.clone()))?;
        // Never closed, so acquiring only waits.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|error| ProbeError(error.to_string()))?;
        let url = target.url();
        let fail = |error: reqwest::Error| ProbeError(format!("GET {url}: {}", describe(&error)));
        let response = client.get(&url).send().await.map_err(fail)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ProbeError(format!("GET {url}: HTTP {status}")));
        }
        let body = response.bytes().await.map_err(fail)?;
        Ok(body.to_vec())
    }
}

/// A probe for tests: each target answers the bytes or the error it was given, and one it was
/// given nothing for is refused. Every fetch is recorded.
#[derive(Default)]
pub struct CannedProbe {
    state: Mutex<CannedState>,
}

#[derive(Default)]
struct CannedState {
    /// (namespace, service) -> the answer.
    answers: BTreeMap<(String, String), Result<Vec<u8>, ProbeError>>,
    fetched: Vec<ProbeTarget>,
}

impl CannedProbe {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, CannedState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// From now on Service `namespace/service` answers `body`.
    pub fn answer(&self, namespace: &str, service: &str, body: impl Into<Vec<u8>>) {
        self.state()
            .answers
            .insert((namespace.to_owned(), service.to_owned()), Ok(body.into()));
    }

    /// From now on fetching from Service `namespace/service` fails with `message`.
    pub fn fail(&self, namespace: &str, service: &str, message: &str) {
        self.state().answers.insert(
            (namespace.to_owned(), service.to_owned()),
            Err(ProbeError(message.to_owned())),
        );
    }

    /// Every target fetched so far, in order.
    pub fn fetched(&self) -> Vec<ProbeTarget> {
        self.state().fetched.clone()
    }
}

#[async_trait]
impl StatusProbe for CannedProbe {
    async fn fetch(&self, target: &ProbeTarget) -> Result<Vec<u8>, ProbeError> {
        let mut state = self.state();
        state.fetched.push(target.clone());
        let key = (target.namespace.clone(), target.service.clone());
        state.answers.get(&key).cloned().unwrap_or_else(|| {
            Err(ProbeError(format!(
                "GET {}: connection refused (no canned answer)",
                target.url()
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_asks_the_workloads_service_by_its_cluster_dns_name() {
        let target = ProbeTarget {
            namespace: "shop".to_owned(),
            service: "orders-relay".to_owned(),
            port: 8080,
        };
        assert_eq!(target.url(), "http://orders-relay.shop.svc:8080/status");
    }

    #[tokio::test]
    async fn an_unreachable_workload_is_a_probe_error_naming_the_url() {
        // Outside a cluster the Service's name does not resolve (and port 1 has no listener
        // where it does): the fetch fails within the timeout, naming the URL.
        let probe = HttpProbe::new();
        let target = ProbeTarget {
            namespace: "shop".to_owned(),
            service: "orders-relay".to_owned(),
            port: 1,
        };
        let error = probe.fetch(&target).await.expect_err("nothing answers");
        assert!(
            error.0.contains("http://orders-relay.shop.svc:1/status"),
            "{error}"
        );
    }
}
