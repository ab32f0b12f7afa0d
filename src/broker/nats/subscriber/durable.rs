//! The durable pull consumer behind a consumer group: its name, the settings Ferry owns, and
//! creating it, checking it or bringing those settings up to date.

use std::time::Duration;

use async_nats::jetstream::{
    consumer::{self, AckPolicy, DeliverPolicy, PullConsumer, ReplayPolicy, pull},
    context::ConsumerInfoErrorKind,
    stream::{ConsumerErrorKind, Stream},
};

use crate::broker::{BrokerError, subscriber::SubscriptionConfig};

/// How many members of one group can each hold their full prefetch plus one pull batch before
/// the server's group-wide `max_ack_pending` holds them back. Each member bounds itself; the
/// server's limit is only a backstop, so it leaves room for a scaled-out group.
const MEMBERS_AT_FULL_PREFETCH: i64 = 8;

/// The most messages one pull request asks for. Beyond a few hundred a larger batch adds
/// nothing to throughput, and every pulled message starts its `ack_wait` at once.
const MAX_PULL_BATCH: usize = 500;

/// The durable name of a group. JetStream names cannot contain `.`, `*`, `>`, whitespace, and
/// (for file storage) path separators; each of those becomes `_`. Ferry's groups are
/// `ferry.<namespace>.<name>` of Kubernetes names, which never contain `_`, so no two groups
/// share a durable name.
pub fn durable_name(group: &str) -> String {
    group
        .chars()
        .map(|c| match c {
            '.' | '*' | '>' | '/' | '\\' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect()
}

/// How many messages each pull request asks for: at most the member's prefetch, and within
/// the consumer's own `max_batch` when it has one.
pub(super) fn pull_batch(prefetch: u32, max_batch: i64) -> usize {
    let wanted = usize::try_from(prefetch)
        .unwrap_or(MAX_PULL_BATCH)
        .clamp(1, MAX_PULL_BATCH);
    match usize::try_from(max_batch) {
        Ok(limit) if limit > 0 => wanted.min(limit),
        _ => wanted,
    }
}

/// Looks the group's durable consumer up and, with `provision`, creates it when missing or
/// updates the settings Ferry owns (`ack_wait`, `max_ack_pending`, `max_deliver`, `backoff`).
/// Settings that change what or how the group receives (push delivery, ack policy, a subject
/// filter, replay pace, headers only, priority groups) belong to whoever made the consumer: an
/// existing consumer with any of them set otherwise is a topology error, never rewritten.
pub(super) async fn ensure(
    topic: &str,
    stream: &Stream,
    subscription: &SubscriptionConfig,
) -> Result<PullConsumer, BrokerError> {
    let topology = |message: String| BrokerError::Topology {
        topic: topic.to_owned(),
        message,
    };
    let name = durable_name(&subscription.group);
    if name.is_empty() {
        return Err(topology("the consumer group name is empty".into()));
    }
    let stream_name = stream.cached_info().config.name.clone();
    let wanted = wanted_config(&name, subscription);
    match stream.consumer_info(&name).await {
        Ok(info) => {
            let problems = incompatibilities(&info.config);
            if !problems.is_empty() {
                return Err(topology(format!(
                    "durable consumer {name} on stream {stream_name} exists with settings Ferry \
                     cannot use: {}",
                    problems.join("; ")
                )));
            }
            let current = owned_settings_match(&info.config, &wanted);
            if subscription.single_active && info.num_ack_pending > 0 {
                rewind(topic, stream, &info, &wanted, subscription.provision).await?;
            } else if !current && subscription.provision {
                stream
                    .create_consumer(with_owned_settings(&info.config, &wanted))
                    .await
                    .map_err(|error| consumer_error(topic, &name, &error))?;
                tracing::info!(
                    topic,
                    stream = %stream_name,
                    consumer = %name,
                    ack_wait = ?wanted.ack_wait,
                    max_ack_pending = wanted.max_ack_pending,
                    "updated the durable consumer to the group's settings"
                );
            } else if !current {
                tracing::warn!(
                    topic,
                    stream = %stream_name,
                    consumer = %name,
                    ack_wait = ?info.config.ack_wait,
                    max_ack_pending = info.config.max_ack_pending,
                    max_deliver = info.config.max_deliver,
                    "the durable consumer's settings differ from the group's; provision is off, \
                     so they are left as they are"
                );
            }
        }
        Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => {
            if !subscription.provision {
                return Err(topology(format!(
                    "durable consumer {name} (group {}) does not exist on stream {stream_name} \
                     and provision is false",
                    subscription.group
                )));
            }
            stream
                .create_consumer(wanted)
                .await
                .map_err(|error| consumer_error(topic, &name, &error))?;
            tracing::info!(topic, stream = %stream_name, consumer = %name, "created the durable consumer");
        }
        Err(error) if error.kind() == ConsumerInfoErrorKind::StreamNotFound => {
            return Err(topology(format!(
                "stream {stream_name} vanished while looking up consumer {name}"
            )));
        }
        Err(error) => {
            return Err(BrokerError::Connection {
                topic: topic.to_owned(),
                message: format!("looking up consumer {name} on stream {stream_name}: {error}"),
            });
        }
    }
    stream
        .get_consumer::<pull::Config>(&name)
        .await
        .map_err(|error| BrokerError::Connection {
            topic: topic.to_owned(),
            message: format!("opening consumer {name} on stream {stream_name}: {error}"),
        })
}

/// Restarts an ordered group's consumer at its ack floor. A session starts with nothing in
/// flight, so messages the group has not acknowledged were left by a stopped member (a crashed
/// process, a lost connection). JetStream would hand out the newer messages at once and those
/// only when their `ack_wait` ends, after later messages of the same key: the group would
/// break per-key order. Recreated from the first unacknowledged sequence, the consumer delivers
/// them again first, in stream order; messages above the floor that were already acknowledged
/// come again too, and the idempotency store acknowledges them without a second delivery.
async fn rewind(
    topic: &str,
    stream: &Stream,
    info: &consumer::Info,
    wanted: &consumer::Config,
    provision: bool,
) -> Result<(), BrokerError> {
    let name = info.name.clone();
    let start_sequence = info.ack_floor.stream_sequence + 1;
    if !provision {
        tracing::warn!(
            topic,
            consumer = %name,
            unacknowledged = info.num_ack_pending,
            "an ordered group has unacknowledged messages from a stopped member; with provision \
             off the consumer is not rewound, so they come after newer messages of their keys"
        );
        return Ok(());
    }
    let mut rewound = with_owned_settings(&info.config, wanted);
    rewound.deliver_policy = DeliverPolicy::ByStartSequence { start_sequence };
    stream
        .delete_consumer(&name)
        .await
        .map_err(|error| BrokerError::Connection {
            topic: topic.to_owned(),
            message: format!("rewinding consumer {name}: deleting it: {error}"),
        })?;
    stream
        .create_consumer(rewound)
        .await
        .map_err(|error| consumer_error(topic, &name, &error))?;
    tracing::info!(
        topic,
        consumer = %name,
        start_sequence,
        unacknowledged = info.num_ack_pending,
        "rewound the ordered group's consumer to its ack floor: a stopped member's \
         unacknowledged messages come first, in stream order"
    );
    Ok(())
}

/// The consumer Ferry creates: every message of the stream from its start, each acknowledged
/// on its own, redelivered without limit (Ferry decides when to dead-letter).
fn wanted_config(name: &str, subscription: &SubscriptionConfig) -> consumer::Config {
    let prefetch = i64::from(subscription.prefetch.max(1));
    let batch = i64::try_from(pull_batch(subscription.prefetch, 0)).unwrap_or(i64::MAX);
    consumer::Config {
        durable_name: Some(name.to_owned()),
        description: Some(format!("Ferry consumer group {}", subscription.group)),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: subscription.ack_timeout,
        max_deliver: -1,
        max_ack_pending: (prefetch + batch).saturating_mul(MEMBERS_AT_FULL_PREFETCH),
        replay_policy: ReplayPolicy::Instant,
        ..consumer::Config::default()
    }
}

/// `existing` with the settings Ferry owns taken from `wanted`.
fn with_owned_settings(existing: &consumer::Config, wanted: &consumer::Config) -> consumer::Config {
    let mut updated = existing.clone();
    updated.ack_wait = wanted.ack_wait;
    updated.max_ack_pending = wanted.max_ack_pending;
    updated.max_deliver = wanted.max_deliver;
    updated.backoff = Vec::new();
    updated
}

fn owned_settings_match(existing: &consumer::Config, wanted: &consumer::Config) -> bool {
    // The server stores "unlimited" as -1 and may report 0 for it.
    let unlimited = |max_deliver: i64| max_deliver <= 0;
    existing.ack_wait == wanted.ack_wait
        && existing.max_ack_pending == wanted.max_ack_pending
        && unlimited(existing.max_deliver) == unlimited(wanted.max_deliver)
        && existing.backoff.is_empty()
}

/// What about an existing consumer keeps Ferry from using it as the group's consumer.
fn incompatibilities(existing: &consumer::Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(subject) = &existing.deliver_subject {
        problems.push(format!(
            "it is a push consumer delivering to {subject}, not a pull consumer"
        ));
    }
    if existing.ack_policy != AckPolicy::Explicit {
        problems.push(format!(
            "its ack policy is {:?}, not explicit",
            existing.ack_policy
        ));
    }
    if !existing.filter_subject.is_empty() || !existing.filter_subjects.is_empty() {
        let mut filters = existing.filter_subjects.clone();
        if !existing.filter_subject.is_empty() {
            filters.insert(0, existing.filter_subject.clone());
        }
        problems.push(format!(
            "it filters subjects {filters:?}, while the group reads every subject of the stream"
        ));
    }
    if existing.replay_policy != ReplayPolicy::Instant {
        problems.push("it replays at the original pace, not instantly".into());
    }
    if existing.headers_only {
        problems.push("it delivers headers only, without bodies".into());
    }
    if !existing.priority_groups.is_empty() {
        problems.push(format!(
            "it has priority groups {:?}, which Ferry's pulls do not name",
            existing.priority_groups
        ));
    }
    problems
}

/// The server refusing a consumer (an illegal update, bad settings) is a topology error; not
/// reaching it is a connection error.
fn consumer_error(
    topic: &str,
    name: &str,
    error: &async_nats::jetstream::stream::ConsumerError,
) -> BrokerError {
    match error.kind() {
        ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => BrokerError::Connection {
            topic: topic.to_owned(),
            message: format!("consumer {name}: {error}"),
        },
        _ => BrokerError::Topology {
            topic: topic.to_owned(),
            message: format!("consumer {name}: {error}"),
        },
    }
}

/// How long one pull request stays open, and the idle heartbeat that tells a live one from a
/// lost one, within the consumer's own `max_expires` when it has one.
pub(super) fn pull_timing(max_expires: Duration) -> (Duration, Duration) {
    const EXPIRES: Duration = Duration::from_secs(30);
    const HEARTBEAT: Duration = Duration::from_secs(5);
    let expires = if max_expires.is_zero() {
        EXPIRES
    } else {
        EXPIRES.min(max_expires)
    };
    // The server refuses a heartbeat over half the expiry.
    (expires, HEARTBEAT.min(expires / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_become_valid_durable_names() {
        assert_eq!(durable_name("ferry.shop.orders"), "ferry_shop_orders");
        assert_eq!(durable_name("ferry.shop.orders.v2"), "ferry_shop_orders_v2");
        assert_eq!(durable_name("a b\t*>/\\c"), "a_b_____c");
        assert_eq!(durable_name("plain-name"), "plain-name");
    }

    #[test]
    fn the_pull_batch_stays_within_prefetch_and_the_consumers_max_batch() {
        assert_eq!(pull_batch(0, 0), 1);
        assert_eq!(pull_batch(64, 0), 64);
        assert_eq!(pull_batch(10_000, 0), MAX_PULL_BATCH);
        assert_eq!(pull_batch(64, 10), 10);
        assert_eq!(pull_batch(64, -1), 64);
    }

    #[test]
    fn the_heartbeat_is_at_most_half_the_expiry() {
        assert_eq!(
            pull_timing(Duration::ZERO),
            (Duration::from_secs(30), Duration::from_secs(5))
        );
        assert_eq!(
            pull_timing(Duration::from_secs(4)),
            (Duration::from_secs(4), Duration::from_secs(2))
        );
    }

    #[test]
    fn a_filtered_or_push_consumer_is_refused_and_owned_settings_are_not() {
        let subscription = SubscriptionConfig {
            group: "ferry.shop.orders".into(),
            member: "m".into(),
            prefetch: 10,
            ack_timeout: Duration::from_secs(30),
            provision: true,
            single_active: false,
        };
        let wanted = wanted_config("ferry_shop_orders", &subscription);
        assert!(incompatibilities(&wanted).is_empty());

        let mut other = wanted.clone();
        other.ack_wait = Duration::from_secs(5);
        other.max_deliver = 3;
        assert!(incompatibilities(&other).is_empty());
        assert!(!owned_settings_match(&other, &wanted));

        other.filter_subject = "orders.eu.>".into();
        other.ack_policy = AckPolicy::All;
        other.deliver_subject = Some("deliver.here".into());
        let problems = incompatibilities(&other);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("orders.eu.>")));
    }
}
