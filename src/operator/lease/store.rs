//! Where the Lease lives: the `LeaseStore` seam (get, create, replace with optimistic
//! concurrency) and the error a store answers with.

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease;

/// A failed or refused Lease call.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// 409: the Lease was created or changed by someone else since it was read. A normal
    /// answer in an election: another candidate won this round.
    #[error("the Lease {name} was changed by someone else")]
    Conflict { name: String },
    /// Any other failure: the API server was unreachable or refused the call.
    #[error("{verb} Lease {name}: {message}")]
    Api {
        verb: &'static str,
        name: String,
        message: String,
    },
}

/// The Leases of one namespace. Only these three calls are made (RBAC grants exactly
/// `get`, `create` and `update` on leases).
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// The Lease `name`, or `None` when it does not exist.
    async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError>;
    /// Creates `lease` (no resourceVersion); `Conflict` when it exists already.
    async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError>;
    /// Replaces `lease` as a whole, only if its resourceVersion is still the stored one;
    /// `Conflict` otherwise.
    async fn replace(&self, lease: &Lease) -> Result<Lease, LeaseError>;
}
