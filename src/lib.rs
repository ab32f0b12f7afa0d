//! Ferry: reliable messaging pipelines (transactional outbox, relay, idempotent consumers,
//! retries and dead-letter queues) run by a Kubernetes operator or standalone.

pub mod api;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod crd;
pub mod demo;
pub mod dlq;
pub mod manifest;
pub mod message;
pub mod observe;
pub mod operator;
pub mod outbox;
pub mod relay;
pub mod retry;
pub mod standalone;
pub mod telemetry;
pub mod transactional;
pub mod validate;
