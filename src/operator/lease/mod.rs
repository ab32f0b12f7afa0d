//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! only one writes. The semantics are client-go's: a candidate takes the Lease when it is
//! absent, expired (`renewTime + leaseDurationSeconds < now`), free (no holder) or already its
//! own; the holder renews it every retry period; a holder that cannot renew within the renew
//! deadline steps down (before anyone else may take the Lease over); a holder that shuts down
//! gives it up so that another takes over at once. Every write carries the resourceVersion it
//! read, so of two candidates racing for one Lease exactly one wins.

mod clock;
mod gate;
mod kube;
mod memory;
mod store;

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

pub use self::kube::KubeLeases;
pub use clock::{Clock, FakeClock, SystemClock};
pub use gate::{GateError, run_while_leading};
pub use memory::MemoryLeases;
pub use store::{LeaseError, LeaseStore};

/// The operator's Lease, in its release namespace.
pub const LEASE_NAME: &str = "ferry-operator";

/// Who competes for which Lease, and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub name: String,
    /// This candidate's `holderIdentity`; unique among the candidates.
    pub identity: String,
    /// How long a Lease stays the holder's after its last renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps leading without a successful renewal. Shorter than
    /// `lease_duration`, so that it has stopped before another candidate may take over.
    pub renew_deadline: Duration,
    /// The time between two attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, an attempt every 2 s.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            name: LEASE_NAME.to_owned(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// This process's identity: the pod's name (`POD_NAME`, from the downward API), else the
/// host's name and the process id (two processes on one host must differ).
pub fn identity_from_env() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok());
    identity(std::env::var("POD_NAME").ok(), host, std::process::id())
}

fn identity(pod_name: Option<String>, host: Option<String>, pid: u32) -> String {
    let set = |value: Option<String>| value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    match (set(pod_name), set(host)) {
        (Some(pod), _) => pod,
        (None, Some(host)) => format!("{host}-{pid}"),
        (None, None) => format!("ferry-operator-{pid}"),
    }
}

/// What one attempt to acquire or renew found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This candidate holds the Lease, renewed just now.
    Leading,
    /// Another does: `holder`, or unknown when another candidate won a race just now.
    Following { holder: Option<String> },
}

/// Why `LeaderElector::run` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Told to stop; the Lease was given up if this candidate held it.
    Stopped,
    /// Was leading and lost the Lease, or could not renew it within the renew deadline.
    SteppedDown,
}

pub struct LeaderElector<S, C = SystemClock> {
    store: S,
    clock: C,
    config: LeaseConfig,
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Whether another candidate may take `spec` over at `now`.
fn is_free(spec: &LeaseSpec, now: Timestamp) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    let (Some(renewed), Some(duration)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    let expires = renewed
        .0
        .checked_add(SignedDuration::from_secs(i64::from(duration)))
        .unwrap_or(Timestamp::MAX);
    holder.is_empty() || expires < now
}

impl<S: LeaseStore, C: Clock> LeaderElector<S, C> {
    pub fn new(store: S, clock: C, config: LeaseConfig) -> Self {
        Self {
            store,
            clock,
            config,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn is_mine(&self, spec: &LeaseSpec) -> bool {
        spec.holder_identity.as_deref() == Some(self.config.identity.as_str())
    }

    /// One attempt: take the Lease if it is absent, free, expired or ours, and renew it.
    /// A conflict (another candidate wrote first) is `Following`, not an error.
    pub async fn try_acquire_or_renew(&self) -> Result<Attempt, LeaseError> {
        let now = MicroTime(self.clock.now());
        let name = &self.config.name;
        let duration = Some(seconds(self.config.lease_duration));
        let written = match self.store.get(name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.identity.clone()),
                        lease_duration_seconds: duration,
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.store.create(&lease).await
            }
            Some(mut lease) => {
                let mut spec = lease.spec.take().unwrap_or_default();
                if !self.is_mine(&spec) {
                    if !is_free(&spec, now.0) {
                        return Ok(Attempt::Following {
                            holder: spec.holder_identity,
                        });
                    }
                    spec.holder_identity = Some(self.config.identity.clone());
                    spec.acquire_time = Some(now.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = duration;
                spec.renew_time = Some(now);
                lease.spec = Some(spec);
                self.store.replace(&lease).await
            }
        };
        match written {
            Ok(_) => Ok(Attempt::Leading),
            Err(LeaseError::Conflict { .. }) => Ok(Attempt::Following { holder: None }),
            Err(error) => Err(error),
        }
    }

    /// Gives the Lease up, if this candidate holds it: no holder, so that any other candidate
    /// takes it at its next attempt. Returns whether it did.
    pub async fn release(&self) -> Result<bool, LeaseError> {
        let Some(mut lease) = self.store.get(&self.config.name).await? else {
            return Ok(false);
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        if !self.is_mine(&spec) {
            return Ok(false);
        }
        let now = MicroTime(self.clock.now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now);
        lease.spec = Some(spec);
        match self.store.replace(&lease).await {
            Ok(_) => Ok(true),
            Err(LeaseError::Conflict { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Competes until leading, then renews until `stop` (give the Lease up and return
    /// `Stopped`) or until the Lease is lost or not renewed within the renew deadline (return
    /// `SteppedDown`). `leading` is `true` exactly while this candidate leads.
    pub async fn run(&self, leading: &watch::Sender<bool>, stop: &CancellationToken) -> Ended {
        let config = &self.config;
        let (lease, identity) = (config.name.as_str(), config.identity.as_str());
        loop {
            let attempt = tokio::time::timeout(config.renew_deadline, self.try_acquire_or_renew());
            match attempt.await {
                Ok(Ok(Attempt::Leading)) => break,
                Ok(Ok(Attempt::Following { holder })) => {
                    tracing::debug!(lease, identity, ?holder, "another replica leads");
                }
                Ok(Err(error)) => tracing::warn!(lease, identity, %error, "cannot read the Lease"),
                Err(_) => tracing::warn!(lease, identity, "reading the Lease timed out"),
            }
            tokio::select! {
                () = stop.cancelled() => return Ended::Stopped,
                () = tokio::time::sleep(config.retry_period) => {}
            }
        }
        tracing::info!(lease, identity, "leading");
        leading.send_replace(true);
        let mut renewed = Instant::now();
        let ended = loop {
            let deadline = renewed + config.renew_deadline;
            tokio::select! {
                () = stop.cancelled() => break Ended::Stopped,
                () = tokio::time::sleep_until((Instant::now() + config.retry_period).min(deadline)) => {}
            }
            match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leading)) => renewed = Instant::now(),
                Ok(Ok(Attempt::Following { holder })) => {
                    tracing::warn!(lease, identity, ?holder, "lost the Lease");
                    break Ended::SteppedDown;
                }
                Ok(Err(error)) if Instant::now() < deadline => {
                    tracing::warn!(lease, identity, %error, "cannot renew the Lease");
                }
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(
                        lease,
                        identity,
                        renew_deadline_seconds = config.renew_deadline.as_secs_f64(),
                        "no renewal within the renew deadline"
                    );
                    break Ended::SteppedDown;
                }
            }
        };
        leading.send_replace(false);
        if ended == Ended::Stopped {
            match tokio::time::timeout(config.retry_period, self.release()).await {
                Ok(Ok(released)) => tracing::info!(lease, identity, released, "stopped leading"),
                Ok(Err(error)) => {
                    tracing::warn!(lease, identity, %error, "cannot give up the Lease")
                }
                Err(_) => tracing::warn!(lease, identity, "giving up the Lease timed out"),
            }
        } else {
            tracing::warn!(lease, identity, "stepped down");
        }
        ended
    }
}

impl<S: LeaseStore, C: Clock> LeaderElector<S, C> {
    /// Runs the election in a task: whether this candidate leads, and the task.
    pub fn spawn(self, stop: CancellationToken) -> (watch::Receiver<bool>, JoinHandle<Ended>) {
        let (leading, receiver) = watch::channel(false);
        let task = tokio::spawn(async move { self.run(&leading, &stop).await });
        (receiver, task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_the_pod_name_else_the_host_and_process() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(identity(some("ferry-7d9-x"), some("h"), 7), "ferry-7d9-x");
        assert_eq!(identity(some(" "), some("laptop\n"), 7), "laptop-7");
        assert_eq!(identity(None, None, 7), "ferry-operator-7");
    }

    #[test]
    fn the_defaults_step_down_before_the_lease_can_be_taken_over() {
        let config = LeaseConfig::new("a");
        assert!(config.retry_period < config.renew_deadline);
        assert!(config.renew_deadline < config.lease_duration);
        assert_eq!(config.name, "ferry-operator");
    }

    #[test]
    fn a_lease_without_holder_or_past_its_duration_is_free() {
        let at = |s: i64| MicroTime(Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH));
        let held = LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(at(100)),
            ..LeaseSpec::default()
        };
        assert!(!is_free(&held, at(115).0));
        assert!(is_free(&held, at(116).0));
        let released = LeaseSpec {
            holder_identity: None,
            ..held.clone()
        };
        assert!(is_free(&released, at(100).0));
        assert!(is_free(&LeaseSpec::default(), at(100).0));
    }
}
