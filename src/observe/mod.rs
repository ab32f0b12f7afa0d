//! What a workload tells the outside: health flags and the last error, served with metrics and
//! a JSON status on one port (`/healthz`, `/readyz`, `/metrics`, `/status`).

pub mod http;

use std::sync::{
    Mutex,
    atomic::{AtomicBool, Ordering},
};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Connection health and the last error, updated by the workload as it runs.
#[derive(Debug, Default)]
pub struct Health {
    database: AtomicBool,
    broker: AtomicBool,
    last_error: Mutex<Option<LastError>>,
}

/// The most recent failure, for `/status` (never a secret: errors name hosts, not passwords).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    pub message: String,
    pub category: String,
    pub at: DateTime<Utc>,
}

impl Health {
    pub fn set_database(&self, connected: bool) {
        self.database.store(connected, Ordering::Relaxed);
    }

    pub fn set_broker(&self, connected: bool) {
        self.broker.store(connected, Ordering::Relaxed);
    }

    pub fn database(&self) -> bool {
        self.database.load(Ordering::Relaxed)
    }

    pub fn broker(&self) -> bool {
        self.broker.load(Ordering::Relaxed)
    }

    /// Ready when both sides are reachable: a relay that cannot publish should not count as
    /// serving, so a rollout waits and an alert on readiness fires.
    pub fn ready(&self) -> bool {
        self.database() && self.broker()
    }

    pub fn record_error(&self, category: &str, message: impl Into<String>) {
        let error = LastError {
            message: message.into(),
            category: category.to_owned(),
            at: Utc::now(),
        };
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }
}
