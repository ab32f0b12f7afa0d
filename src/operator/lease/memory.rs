//! `MemoryLeases`: an in-memory `LeaseStore` for tests, with the API server's optimistic
//! concurrency (a stale or missing resourceVersion is a conflict) and an outage switch.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;

use super::store::{LeaseError, LeaseStore};

/// Cloning shares the store, so several candidates can compete over one Lease.
#[derive(Clone, Default)]
pub struct MemoryLeases {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    leases: BTreeMap<String, Lease>,
    last_version: u64,
    conflicts: u64,
    unavailable: bool,
}

impl MemoryLeases {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The stored Lease `name`.
    pub fn lease(&self, name: &str) -> Option<Lease> {
        self.state().leases.get(name).cloned()
    }

    /// How many creates and replaces were refused with a conflict.
    pub fn conflicts(&self) -> u64 {
        self.state().conflicts
    }

    /// While `true`, every call fails as if the API server were unreachable.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state().unavailable = unavailable;
    }

    /// Checks the outage switch; yields first so that concurrent candidates interleave
    /// between their read and their write, as they would over the network.
    async fn call(
        &self,
        verb: &'static str,
        name: &str,
    ) -> Result<MutexGuard<'_, State>, LeaseError> {
        tokio::task::yield_now().await;
        let state = self.state();
        if state.unavailable {
            return Err(LeaseError::Api {
                verb,
                name: name.to_owned(),
                message: "the API server is unavailable".to_owned(),
            });
        }
        Ok(state)
    }
}

impl State {
    fn store(&mut self, mut lease: Lease) -> Lease {
        self.last_version += 1;
        lease.metadata.resource_version = Some(self.last_version.to_string());
        self.leases.insert(lease.name_any(), lease.clone());
        lease
    }

    fn conflict(&mut self, name: String) -> LeaseError {
        self.conflicts += 1;
        LeaseError::Conflict { name }
    }
}

#[async_trait]
impl LeaseStore for MemoryLeases {
    async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
        Ok(self.call("get", name).await?.leases.get(name).cloned())
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let name = lease.name_any();
        let mut state = self.call("create", &name).await?;
        if lease.metadata.resource_version.is_some() {
            return Err(LeaseError::Api {
                verb: "create",
                name,
                message: "resourceVersion should not be set on objects to be created".into(),
            });
        }
        if state.leases.contains_key(&name) {
            return Err(state.conflict(name));
        }
        Ok(state.store(lease.clone()))
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let name = lease.name_any();
        let mut state = self.call("update", &name).await?;
        let Some(stored) = state.leases.get(&name) else {
            return Err(LeaseError::Api {
                verb: "update",
                name,
                message: "not found".into(),
            });
        };
        if lease.metadata.resource_version.is_none()
            || lease.metadata.resource_version != stored.metadata.resource_version
        {
            return Err(state.conflict(name));
        }
        Ok(state.store(lease.clone()))
    }
}
