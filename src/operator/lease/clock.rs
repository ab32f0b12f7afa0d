//! The wall clock the elector writes into the Lease and judges expiry by, injectable so
//! that tests control it. (Waiting always uses tokio's timers, which tests can pause.)

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A wall clock for tests: starts at a given time and moves with tokio's clock (so under
/// `tokio::time::pause` only when tokio's time does), plus any jumps made with `advance`.
/// Clones share the jumps.
#[derive(Clone, Debug)]
pub struct FakeClock {
    start: Timestamp,
    origin: tokio::time::Instant,
    jumped: Arc<Mutex<Duration>>,
}

impl FakeClock {
    pub fn new(start: Timestamp) -> Self {
        Self {
            start,
            origin: tokio::time::Instant::now(),
            jumped: Arc::default(),
        }
    }

    /// Moves this clock (and its clones) forward by `by`, without moving tokio's.
    pub fn advance(&self, by: Duration) {
        let mut jumped = self
            .jumped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *jumped += by;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        let jumped = *self
            .jumped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let elapsed = self.origin.elapsed() + jumped;
        SignedDuration::try_from(elapsed)
            .ok()
            .and_then(|elapsed| self.start.checked_add(elapsed).ok())
            .unwrap_or(Timestamp::MAX)
    }
}
