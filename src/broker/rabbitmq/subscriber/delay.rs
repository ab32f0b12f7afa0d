//! Retry delays on RabbitMQ: a fixed grid of delays, one delay queue per grid value and group,
//! so a message waiting 1 s is never queued behind one waiting 300 s.
//!
//! A delay queue has a queue-level `x-message-ttl`: every message in it waits the same time, so
//! the message at the head always expires first and nothing waits behind a longer delay (which
//! is what goes wrong with per-message TTLs in one queue). An expired message is dead-lettered
//! through the default exchange to the group's queue (`x-dead-letter-exchange: ""`,
//! `x-dead-letter-routing-key: <group>`). A delay queue deletes itself when unused for its
//! delay plus `EXPIRY_MARGIN` (`x-expires`); the subscriber declares it again, which renews
//! that lease, before it publishes to it (see `RENEW_AFTER`).

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString};

/// The grid's values within one decade, in tenths: delays are rounded down to 1, 1.5, 2, 3, 4,
/// 5 or 7 times a power of ten, so a delay is never longer than asked and at least two thirds
/// of it.
const STEPS_PER_DECADE: [u64; 7] = [10, 15, 20, 30, 40, 50, 70];
/// The shortest delay queue. A shorter delay sends the copy straight back to the group's queue:
/// at this scale the time to publish, route and deliver is the delay.
const SHORTEST: Duration = Duration::from_millis(10);
/// The longest delay queue; longer delays are rounded down to it.
const LONGEST: Duration = Duration::from_secs(24 * 60 * 60);
/// How long an unused delay queue outlives its last declaration beyond its delay: it must
/// outlive every message published to it, and the subscriber declares it at most
/// `RENEW_AFTER` before publishing.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5 * 60);
/// A subscriber that declared a delay queue less than this long ago publishes to it without
/// declaring it again. Well below `EXPIRY_MARGIN`, so a message published after a late
/// declaration still expires before its queue; a queue that expired anyway (another client
/// deleted it) makes the publish come back unroutable, and the subscriber declares it again.
pub const RENEW_AFTER: Duration = Duration::from_secs(60);

/// Every delay of the grid, shortest first.
pub fn grid() -> impl Iterator<Item = Duration> {
    let decades = (1..=7u32).map(|exponent| 10u64.pow(exponent));
    decades
        .flat_map(|decade| {
            STEPS_PER_DECADE
                .iter()
                .map(move |tenths| Duration::from_millis(decade * tenths / 10))
        })
        .filter(|delay| (SHORTEST..LONGEST).contains(delay))
        .chain([LONGEST])
}

/// The delay queue a retry after `requested` waits in: the longest grid delay not above it, or
/// `None` when the requested delay is shorter than the shortest delay queue.
pub fn quantise(requested: Duration) -> Option<Duration> {
    grid().take_while(|delay| *delay <= requested).last()
}

/// The delay queue of `group` for `delay` (a grid value): `<group>.retry.<milliseconds>ms`.
pub fn queue_name(group: &str, delay: Duration) -> String {
    format!("{group}.retry.{}ms", delay.as_millis())
}

/// The name of every delay queue `group` may have, for tooling that cleans up after a consumer
/// group is gone.
pub fn queue_names(group: &str) -> impl Iterator<Item = String> + '_ {
    grid().map(move |delay| queue_name(group, delay))
}

/// The arguments of `group`'s delay queue for `delay`. They are a function of the two only, so
/// every replica declares the same queue and a declaration never conflicts.
///
/// Delay queues are classic queues: a classic queue's `x-expires` lease is renewed by declaring
/// the queue again, while a quorum queue's is not (on RabbitMQ 3.10 it expires that long after
/// creation, messages and all). See the subscriber's module docs for what that costs.
pub fn queue_arguments(group: &str, delay: Duration) -> FieldTable {
    let millis = |duration: Duration| {
        AMQPValue::LongLongInt(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
    };
    let text = |value: &str| AMQPValue::LongString(LongString::from(value.as_bytes()));
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), text("classic"));
    arguments.insert("x-message-ttl".into(), millis(delay));
    arguments.insert("x-expires".into(), millis(delay + EXPIRY_MARGIN));
    arguments.insert("x-dead-letter-exchange".into(), text(""));
    arguments.insert("x-dead-letter-routing-key".into(), text(group));
    arguments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_runs_from_10_ms_to_a_day_in_steps_of_at_most_half() {
        let grid: Vec<Duration> = grid().collect();
        assert_eq!(grid.first(), Some(&SHORTEST));
        assert_eq!(grid.last(), Some(&LONGEST));
        for pair in grid.windows(2) {
            assert!(pair[0] < pair[1], "{pair:?}");
            assert!(
                pair[1].as_secs_f64() / pair[0].as_secs_f64() <= 1.5,
                "{pair:?}"
            );
        }
        assert_eq!(grid.len(), 50);
    }

    #[test]
    fn a_delay_is_rounded_down_to_the_grid_and_never_exceeds_the_request() {
        let ms = Duration::from_millis;
        assert_eq!(quantise(ms(0)), None);
        assert_eq!(quantise(ms(9)), None);
        assert_eq!(quantise(ms(10)), Some(ms(10)));
        assert_eq!(quantise(ms(99)), Some(ms(70)));
        assert_eq!(quantise(ms(100)), Some(ms(100)));
        assert_eq!(quantise(ms(1_499)), Some(ms(1_000)));
        assert_eq!(quantise(ms(1_500)), Some(ms(1_500)));
        assert_eq!(quantise(Duration::from_secs(300)), Some(ms(300_000)));
        assert_eq!(quantise(Duration::from_secs(299)), Some(ms(200_000)));
        assert_eq!(quantise(Duration::from_secs(7 * 24 * 3600)), Some(LONGEST));
        for requested in (0..2_000_000).step_by(7_919).map(ms) {
            if let Some(delay) = quantise(requested) {
                assert!(delay <= requested, "{delay:?} > {requested:?}");
                assert!(delay.as_secs_f64() * 1.5 > requested.as_secs_f64());
            }
        }
    }

    #[test]
    fn delay_queues_are_named_after_the_group_and_the_delay() {
        assert_eq!(
            queue_name("ferry.shop.inventory", Duration::from_millis(1_500)),
            "ferry.shop.inventory.retry.1500ms"
        );
        assert_eq!(queue_names("g").count(), grid().count());
    }

    #[test]
    fn a_delay_queue_outlives_its_messages_and_returns_them_to_the_group() {
        let arguments = queue_arguments("group", Duration::from_secs(2));
        let get = |name: &str| arguments.inner().get(name).cloned();
        assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(2_000)));
        assert_eq!(get("x-expires"), Some(AMQPValue::LongLongInt(302_000)));
        assert_eq!(
            get("x-dead-letter-routing-key"),
            Some(AMQPValue::LongString("group".into()))
        );
        assert!(RENEW_AFTER < EXPIRY_MARGIN);
    }
}
