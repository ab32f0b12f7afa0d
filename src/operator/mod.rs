//! The operator: makes each OutboxSource a relay workload and each Consumer a consumer
//! workload. The reconcile driver (fetch, validate, build, apply) runs over the `ClusterApi`
//! trait, and the controller runs it for every resource; writing status is still to come.

pub mod api;
pub mod build;
pub mod controller;
pub mod metrics;
pub mod reconcile;
pub mod status;
pub mod watch;
