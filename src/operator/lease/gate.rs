//! Running work only while leading: the gate `ferry operator` puts around its controllers.

use tokio_util::sync::CancellationToken;

use super::{Clock, Ended, LeaderElector, LeaseStore};

/// Why the gated work did not end with a shutdown.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The Lease was lost (or not renewed in time) while the work ran; the work was dropped.
    #[error("lost the leader election Lease {lease}")]
    Lost { lease: String },
    /// The election task itself failed.
    #[error("the election for the Lease {lease} failed: {message}")]
    Failed { lease: String, message: String },
}

/// Competes with `elector` and runs `work` once leading, until it finishes (it is expected
/// to finish after `shutdown`) or until the Lease is lost, which drops `work` at once and is
/// an error. The Lease is given up only after `work` has finished, so that no other replica
/// writes while this one still does. `on_leading` hears `true` when `work` starts and `false`
/// when it stops. Until leading, `shutdown` ends the wait and `work` never starts.
pub async fn run_while_leading<S: LeaseStore, C: Clock>(
    elector: LeaderElector<S, C>,
    work: impl Future<Output = ()>,
    shutdown: &CancellationToken,
    on_leading: impl Fn(bool),
) -> Result<(), GateError> {
    let lease = elector.config().name.clone();
    let stop_electing = CancellationToken::new();
    let (mut leading, election) = elector.spawn(stop_electing.clone());
    let leads = tokio::select! {
        led = leading.wait_for(|leads| *leads) => led.is_ok(),
        () = shutdown.cancelled() => false,
    };
    if leads {
        on_leading(true);
        let lost = tokio::select! {
            () = work => false,
            _ = leading.wait_for(|leads| !*leads) => true,
        };
        on_leading(false);
        if lost {
            election.abort();
            return Err(GateError::Lost { lease });
        }
    }
    stop_electing.cancel();
    match election.await {
        Ok(Ended::SteppedDown) if !shutdown.is_cancelled() => Err(GateError::Lost { lease }),
        Ok(_) => Ok(()),
        Err(error) => Err(GateError::Failed {
            lease,
            message: error.to_string(),
        }),
    }
}
