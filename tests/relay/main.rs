//! The relay end to end against the real databases and brokers on this machine: business
//! transactions commit with outbox rows, the relay publishes them, a raw broker client reads
//! them back, and every id must arrive with per-key order held.

#[path = "../support/mod.rs"]
mod support;

mod arrivals;
mod bad_input;
mod delivery;
mod faults;
mod harness;
