//! Ferry: reliable messaging pipelines (transactional outbox, relay, idempotent consumers,
//! retries and dead-letter queues) run by a Kubernetes operator or standalone.

pub mod api;
pub mod cli;
pub mod crd;
pub mod manifest;
pub mod telemetry;
pub mod validate;
