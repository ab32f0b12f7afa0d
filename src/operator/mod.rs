//! The operator: makes each OutboxSource a relay workload and each Consumer a consumer
//! workload. The reconcile driver (fetch, validate, build, apply, status) runs over the
//! `ClusterApi` trait, reading each workload's `/status` through a `StatusProbe`, and the
//! controller runs it for every resource.

pub mod api;
pub mod build;
pub mod controller;
pub mod lease;
pub mod metrics;
pub mod probe;
pub mod reconcile;
pub mod status;
pub mod watch;
