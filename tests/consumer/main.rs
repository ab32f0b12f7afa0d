//! The consumer against the real brokers and PostgreSQL on this machine, delivering to a real
//! HTTP sink that fails on purpose.

mod delivery;
mod faults;
mod harness;
mod sink;
mod stores;
#[path = "../support/mod.rs"]
mod support;

macro_rules! per_broker {
    ($($module:ident => $broker:expr),* $(,)?) => {$(
        mod $module {
            use crate::{delivery, faults, harness::Broker};
            const BROKER: Broker = $broker;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn flaky_sink_gets_every_effect_once() {
                delivery::flaky_sink_gets_every_effect_once(BROKER).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn poison_is_dead_lettered_after_max_attempts() {
                delivery::poison_is_dead_lettered_after_max_attempts(BROKER).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn per_key_order_holds_through_failures() {
                delivery::per_key_order_holds_through_failures(BROKER).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_killed_consumers_messages_are_delivered_by_another() {
                faults::a_killed_consumers_messages_are_delivered_by_another(BROKER).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_sink_outage_delays_but_loses_nothing() {
                faults::a_sink_outage_delays_but_loses_nothing(BROKER).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retry_after_is_honoured_up_to_the_cap() {
                faults::retry_after_is_honoured_up_to_the_cap(BROKER).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn replay_delivers_a_dead_letter_once_the_sink_is_fixed() {
                delivery::replay_delivers_a_dead_letter_once_the_sink_is_fixed(BROKER).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retry_waits_follow_the_policy() {
                delivery::retry_waits_follow_the_policy(BROKER).await;
            }
        }
    )*};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_under_load_loses_nothing() {
    faults::a_broker_restart_under_load_loses_nothing(harness::Broker::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load_loses_nothing() {
    faults::a_broker_restart_under_load_loses_nothing(harness::Broker::Redis).await;
}

per_broker! {
    rabbitmq => Broker::Rabbitmq,
    nats => Broker::Nats,
    redis => Broker::Redis,
    sql => Broker::SqlPostgres,
}
