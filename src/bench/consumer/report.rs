//! The result table and verdict of `ferry bench consumer`, and the numbers the consumer's
//! `/metrics` gives about where its time went.

use super::super::{
    BrokerArg, DedupArg,
    report::{RSS_TARGET_MIB, table},
    stats::metric_value,
};

/// Consumer throughput must reach this share of the raw client's (RabbitMQ and NATS) with the
/// idempotency store in PostgreSQL...
pub const RATIO_TARGET_POSTGRES: f64 = 0.5;
/// ...and this share with it in Redis.
pub const RATIO_TARGET_REDIS: f64 = 0.7;

/// The ratio target for a broker and idempotency store; `None` where none is promised (a
/// Redis stream as the broker).
pub fn ratio_target(broker: BrokerArg, dedup: DedupArg) -> Option<f64> {
    match (broker, dedup) {
        (BrokerArg::Redis, _) => None,
        (_, DedupArg::Postgres) => Some(RATIO_TARGET_POSTGRES),
        (_, DedupArg::Redis) => Some(RATIO_TARGET_REDIS),
    }
}

/// One `ferry bench consumer` result.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerThroughput {
    pub broker: &'static str,
    pub dedup: &'static str,
    pub messages: u64,
    pub raw_rate: f64,
    pub consumer_rate: f64,
    pub peak_rss_mib: f64,
    pub ratio_target: Option<f64>,
}

impl ConsumerThroughput {
    pub fn ratio(&self) -> f64 {
        if self.raw_rate > 0.0 {
            self.consumer_rate / self.raw_rate
        } else {
            0.0
        }
    }

    pub fn table(&self) -> String {
        table(
            &[
                "broker",
                "dedup",
                "messages",
                "raw msgs/s",
                "consumer msgs/s",
                "consumer/raw",
                "consumer peak RSS MiB",
            ],
            &[vec![
                self.broker.to_owned(),
                self.dedup.to_owned(),
                self.messages.to_string(),
                format!("{:.0}", self.raw_rate),
                format!("{:.0}", self.consumer_rate),
                format!("{:.2}", self.ratio()),
                format!("{:.1}", self.peak_rss_mib),
            ]],
        )
    }

    pub fn verdict(&self) -> String {
        let ratio = match self.ratio_target {
            Some(target) => format!(
                "consumer/raw {:.2} >= {target:.2} {}",
                self.ratio(),
                met(self.ratio() >= target)
            ),
            None => format!(
                "consumer/raw {:.2} (no target for {})",
                self.ratio(),
                self.broker
            ),
        };
        format!(
            "verdict: {ratio}; peak RSS {:.1} MiB <= {RSS_TARGET_MIB:.0} MiB {}",
            self.peak_rss_mib,
            met(self.peak_rss_mib <= RSS_TARGET_MIB)
        )
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// What the consumer's own metrics say about a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConsumerBreakdown {
    /// Sink requests the consumer timed.
    pub sink_requests: f64,
    /// Their summed time from sending to the answer.
    pub sink_seconds: f64,
    /// Idempotency store calls: claims and `done` records (absent without a store).
    pub claim: Option<CallStats>,
    pub complete: Option<CallStats>,
    /// Broker acknowledgements, one per message.
    pub ack: Option<CallStats>,
}

/// Calls of one kind: how many, their summed time, and the ids they carried (where batched).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CallStats {
    pub calls: f64,
    pub seconds: f64,
    pub ids: Option<f64>,
}

impl CallStats {
    fn from_metrics(text: &str, histogram: &str, operation: &str, batched: bool) -> Option<Self> {
        let sample = |suffix: &str, name: &str| {
            metric_value(
                text,
                &format!("{name}_{suffix}{{operation=\"{operation}\"}}"),
            )
        };
        Some(Self {
            calls: sample("count", histogram)?,
            seconds: sample("sum", histogram)?,
            ids: if batched {
                sample("sum", "ferry_consumer_idempotency_batch_size")
            } else {
                None
            },
        })
    }

    /// Mean milliseconds per call, and ids per call where batched, as `0.41 ms (7.9 ids)`.
    pub fn describe(&self) -> String {
        let calls = self.calls.max(1.0);
        let mut text = format!("{:.2} ms", 1000.0 * self.seconds / calls);
        if let Some(ids) = self.ids {
            text.push_str(&format!(
                " x {:.0} calls of {:.1} ids",
                self.calls,
                ids / calls
            ));
        }
        text
    }
}

impl ConsumerBreakdown {
    pub fn from_metrics(text: &str) -> Option<Self> {
        let store = "ferry_consumer_idempotency_seconds";
        Some(Self {
            sink_requests: metric_value(text, "ferry_consumer_sink_latency_seconds_count")?,
            sink_seconds: metric_value(text, "ferry_consumer_sink_latency_seconds_sum")?,
            claim: CallStats::from_metrics(text, store, "claim", true),
            complete: CallStats::from_metrics(text, store, "complete", true),
            ack: CallStats::from_metrics(text, "ferry_consumer_settle_seconds", "ack", false),
        })
    }

    pub fn mean_sink_millis(&self) -> f64 {
        if self.sink_requests > 0.0 {
            1000.0 * self.sink_seconds / self.sink_requests
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(consumer_rate: f64, rss: f64, target: Option<f64>) -> ConsumerThroughput {
        ConsumerThroughput {
            broker: "nats",
            dedup: "postgres",
            messages: 100_000,
            raw_rate: 20_000.0,
            consumer_rate,
            peak_rss_mib: rss,
            ratio_target: target,
        }
    }

    #[test]
    fn targets_depend_on_the_idempotency_store_and_none_is_promised_for_redis_streams() {
        assert_eq!(ratio_target(BrokerArg::Nats, DedupArg::Postgres), Some(0.5));
        assert_eq!(
            ratio_target(BrokerArg::Rabbitmq, DedupArg::Redis),
            Some(0.7)
        );
        assert_eq!(ratio_target(BrokerArg::Redis, DedupArg::Postgres), None);
    }

    #[test]
    fn the_table_shows_both_rates_their_ratio_and_memory() {
        let text = result(12_000.0, 30.04, Some(0.5)).table();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(
                "broker     dedup  messages  raw msgs/s  consumer msgs/s  consumer/raw  consumer peak RSS MiB"
            )
        );
        assert_eq!(
            lines.next(),
            Some(
                "nats    postgres    100000       20000            12000          0.60                   30.0"
            )
        );
    }

    #[test]
    fn verdicts_name_each_target() {
        assert_eq!(
            result(12_000.0, 30.0, Some(0.5)).verdict(),
            "verdict: consumer/raw 0.60 >= 0.50 met; peak RSS 30.0 MiB <= 64 MiB met"
        );
        assert_eq!(
            result(12_000.0, 70.0, Some(0.7)).verdict(),
            "verdict: consumer/raw 0.60 >= 0.70 MISSED; peak RSS 70.0 MiB <= 64 MiB MISSED"
        );
        assert!(
            result(12_000.0, 30.0, None)
                .verdict()
                .contains("consumer/raw 0.60 (no target for nats)")
        );
    }

    #[test]
    fn the_breakdown_comes_from_the_sink_latency_histogram() {
        let text = "# TYPE ferry_consumer_sink_latency_seconds histogram\n\
                    ferry_consumer_sink_latency_seconds_sum 50.0\n\
                    ferry_consumer_sink_latency_seconds_count 100000\n";
        let breakdown = ConsumerBreakdown::from_metrics(text).expect("present");
        assert_eq!(breakdown.claim, None);
        assert_eq!(breakdown.sink_requests, 100_000.0);
        assert_eq!(breakdown.mean_sink_millis(), 0.5);
        assert_eq!(ConsumerBreakdown::from_metrics("# EOF\n"), None);
    }
}
