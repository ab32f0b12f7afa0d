//! The operator: makes each OutboxSource a relay workload and each Consumer a consumer
//! workload. Only the pure build step exists so far; fetch, apply and status are still to come.

pub mod build;
