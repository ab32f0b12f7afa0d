//! `KubeLeases`: the `LeaseStore` over the API server, `coordination.k8s.io/v1` Leases in one
//! namespace (the operator's release namespace).

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client, ResourceExt, api::PostParams};

use super::store::{LeaseError, LeaseStore};

pub struct KubeLeases {
    api: Api<Lease>,
}

impl KubeLeases {
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
        }
    }
}

fn error(verb: &'static str, name: &str, error: kube::Error) -> LeaseError {
    match error {
        kube::Error::Api(status) if status.code == 409 => LeaseError::Conflict {
            name: name.to_owned(),
        },
        other => LeaseError::Api {
            verb,
            name: name.to_owned(),
            message: other.to_string(),
        },
    }
}

#[async_trait]
impl LeaseStore for KubeLeases {
    async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
        self.api
            .get_opt(name)
            .await
            .map_err(|e| error("get", name, e))
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let name = lease.name_any();
        self.api
            .create(&PostParams::default(), lease)
            .await
            .map_err(|e| error("create", &name, e))
    }

    /// A PUT carrying the Lease's resourceVersion: the API server refuses it with 409 when
    /// the stored Lease has moved on.
    async fn replace(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let name = lease.name_any();
        self.api
            .replace(&name, &PostParams::default(), lease)
            .await
            .map_err(|e| error("update", &name, e))
    }
}
