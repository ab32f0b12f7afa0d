//! One connection to the broker at a time: receive into the schedule, run deliveries up to the
//! concurrency limit, and reconnect with backoff when the broker goes away.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use super::{Shared, deliver::deliver, schedule::Schedule};
use crate::{
    api::Ordering,
    broker::{
        BrokerError,
        subscriber::{self, Delivery, Subscriber},
    },
    retry::sleep_or_stop,
};

/// How long one `receive` waits before the receiver checks for shutdown.
const RECEIVE_WAIT: Duration = Duration::from_millis(250);
/// How often the broker is asked for the group's lag.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Connects, delivers until the connection fails, and connects again, until `shutdown`.
pub(crate) async fn run_sessions(shared: Arc<Shared>, shutdown: &CancellationToken) {
    let member = member_name();
    let subscription = super::subscription(&shared.config, &member);
    let mut retry = 0;
    while !shutdown.is_cancelled() {
        let subscriber: Arc<dyn Subscriber> =
            match subscriber::subscribe(&shared.config.topic, &subscription).await {
                Ok(subscriber) => Arc::from(subscriber),
                Err(error) => {
                    shared.health.set_broker(false);
                    shared
                        .health
                        .record_error(error.category(), error.to_string());
                    tracing::warn!(%error, "cannot subscribe; retrying");
                    retry += 1;
                    if !sleep_or_stop(shared.backoff.delay_for(retry), shutdown).await {
                        return;
                    }
                    continue;
                }
            };
        shared.health.set_broker(true);
        tracing::info!(group = %subscription.group, member = %member, "subscribed");
        let prefetch = subscription.prefetch as usize;
        match run_session(&shared, subscriber.clone(), prefetch, shutdown).await {
            Ok(()) => retry = 0,
            Err(error) => {
                shared.health.set_broker(false);
                shared
                    .health
                    .record_error(error.category(), error.to_string());
                tracing::warn!(%error, "lost the broker; reconnecting");
                retry += 1;
                subscriber.close().await;
                if !sleep_or_stop(shared.backoff.delay_for(retry), shutdown).await {
                    return;
                }
                continue;
            }
        }
        subscriber.close().await;
    }
}

/// This replica's name in the group: the pod name where there is one, else host and process.
fn member_name() -> String {
    let host = std::env::var("HOSTNAME")
        .or_else(|_| std::env::var("POD_NAME"))
        .unwrap_or_else(|_| "local".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Delivers until `shutdown` (`Ok`) or a broker failure (`Err`). Either way every delivery in
/// progress settles first; messages received but not started go back to the broker when the
/// subscriber closes.
async fn run_session(
    shared: &Arc<Shared>,
    subscriber: Arc<dyn Subscriber>,
    prefetch: usize,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let stop_receiving = CancellationToken::new();
    // One credit per message the session may hold (received, waiting or in progress): the
    // receiver asks the broker only for as many as there are credits.
    let credits = Arc::new(Semaphore::new(prefetch));
    let (received, mut inbox) = mpsc::channel::<Result<Delivery, BrokerError>>(prefetch);
    let receiver = tokio::spawn(receive(
        subscriber.clone(),
        credits.clone(),
        received,
        stop_receiving.clone(),
    ));
    let lag = tokio::spawn(watch_lag(
        shared.clone(),
        subscriber.clone(),
        stop_receiving.clone(),
    ));
    let mut schedule = Schedule::new(shared.config.ordering == Ordering::PerKey);
    // Every message the schedule lets go gets its task at once (the credits bound how many);
    // the delivery slots inside limit how many are at the sink (see `slots`).
    let mut running: JoinSet<(String, Result<(), BrokerError>)> = JoinSet::new();
    let mut outcome = Ok(());
    loop {
        while let Some((key, delivery)) = schedule.next() {
            let (shared, subscriber, shutdown) =
                (shared.clone(), subscriber.clone(), shutdown.clone());
            running.spawn(async move {
                let settled = deliver(&shared, &subscriber, delivery, &shutdown).await;
                (key, settled)
            });
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(done) = running.join_next(), if !running.is_empty() => {
                credits.add_permits(1);
                match done {
                    Ok((key, Ok(_))) => schedule.finished(&key),
                    Ok((key, Err(error))) => {
                        schedule.finished(&key);
                        outcome = Err(error);
                        break;
                    }
                    Err(panic) => {
                        tracing::error!(%panic, "a delivery task failed");
                    }
                }
            }
            message = inbox.recv() => match message {
                Some(Ok(delivery)) => {
                    let key = delivery.key.clone();
                    schedule.push(&key, delivery);
                }
                Some(Err(error)) => {
                    outcome = Err(error);
                    break;
                }
                None => break,
            },
        }
    }
    stop_receiving.cancel();
    if let Err(error) = &outcome {
        // Said at once: the deliveries still in progress may take a while to give up.
        shared.health.set_broker(false);
        shared
            .health
            .record_error(error.category(), error.to_string());
    }
    // Deliveries in progress settle (ack, retry or dead letter) before the session ends; what
    // was received and not started is left to the broker, which hands it out again.
    while let Some(done) = running.join_next().await {
        if let Ok((_, Err(error))) = done
            && outcome.is_ok()
        {
            outcome = Err(error);
        }
    }
    let _ = receiver.await;
    let _ = lag.await;
    drop(schedule.drain());
    outcome
}

/// Receives as many messages as there are credits and passes them on, until stopped or the
/// broker fails.
async fn receive(
    subscriber: Arc<dyn Subscriber>,
    credits: Arc<Semaphore>,
    received: mpsc::Sender<Result<Delivery, BrokerError>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let first = tokio::select! {
            permit = credits.acquire() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = stop.cancelled() => return,
        };
        first.forget();
        let mut room = 1;
        while let Ok(permit) = credits.try_acquire() {
            permit.forget();
            room += 1;
        }
        // Not raced against `stop`: a receive cut short could drop messages it already took
        // from the client's buffer. It returns within `RECEIVE_WAIT` anyway.
        match subscriber.receive(room, RECEIVE_WAIT).await {
            Ok(deliveries) => {
                credits.add_permits(room.saturating_sub(deliveries.len()));
                for delivery in deliveries {
                    if received.send(Ok(delivery)).await.is_err() {
                        return;
                    }
                }
            }
            Err(error) => {
                let _ = received.send(Err(error)).await;
                return;
            }
        }
    }
}

/// Follows the broker's health for readiness, so that it turns false within seconds of an
/// outage even with a client that reconnects by itself (NATS) and shows nothing in `receive`
/// meanwhile: every second the client's own view of its connection, and every few seconds a
/// round trip (the group's lag, for `/status` and the metrics too).
async fn watch_lag(shared: Arc<Shared>, subscriber: Arc<dyn Subscriber>, stop: CancellationToken) {
    let mut since_lag = LAG_INTERVAL;
    let mut round_trip_ok = true;
    loop {
        if since_lag >= LAG_INTERVAL {
            since_lag = Duration::ZERO;
            round_trip_ok = match tokio::time::timeout(LAG_INTERVAL, subscriber.lag()).await {
                Ok(Ok(lag)) => {
                    shared.metrics.record_lag(lag);
                    true
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "cannot read the consumer group's lag");
                    false
                }
                Err(_) => false,
            };
        }
        let connected = round_trip_ok && subscriber.connected();
        if connected != shared.health.broker() {
            shared.health.set_broker(connected);
            if connected {
                tracing::info!("the broker answers again");
            } else {
                shared
                    .health
                    .record_error("connection", "the broker does not answer; reconnecting");
                tracing::warn!("the broker does not answer; the client is reconnecting");
            }
        }
        if !sleep_or_stop(Duration::from_secs(1), &stop).await {
            return;
        }
        since_lag += Duration::from_secs(1);
        if !round_trip_ok {
            // While the broker is away, try the round trip every second to notice its return.
            since_lag = LAG_INTERVAL;
        }
    }
}
