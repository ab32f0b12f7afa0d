//! Percentiles of measured latencies, rates, and the numbers a relay's `/metrics` gives about
//! where its time went.
//!
//! Percentiles are exact, from all samples sorted (a run has at most some hundred thousand),
//! by the nearest-rank rule: the p-th percentile is the smallest sample that at least p% of
//! samples do not exceed.

use std::time::Duration;

/// The latency distribution of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    /// `None` without samples.
    pub fn of(mut samples: Vec<Duration>) -> Option<Self> {
        samples.sort_unstable();
        Some(Self {
            count: samples.len(),
            p50: percentile(&samples, 50.0)?,
            p90: percentile(&samples, 90.0)?,
            p99: percentile(&samples, 99.0)?,
            max: *samples.last()?,
        })
    }
}

/// The nearest-rank percentile of `sorted` (ascending); `None` when it is empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Messages per second; zero for an empty interval.
pub fn rate(messages: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        messages as f64 / seconds
    } else {
        0.0
    }
}

/// Milliseconds, for printing.
pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The value of an unlabelled sample `name` in Prometheus/OpenMetrics text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (sample, value) = line.split_once(' ')?;
            (sample == name).then(|| value.trim().parse().ok())?
        })
}

/// What the relay's histograms say about a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RelayBreakdown {
    pub batches: f64,
    pub mean_batch: f64,
    /// Summed over batches (and so over workers): sending a batch until its last confirm.
    pub publish_seconds: f64,
}

impl RelayBreakdown {
    pub fn from_metrics(text: &str) -> Option<Self> {
        let batches = metric_value(text, "ferry_relay_batch_size_count")?;
        let rows = metric_value(text, "ferry_relay_batch_size_sum")?;
        Some(Self {
            batches,
            mean_batch: if batches > 0.0 { rows / batches } else { 0.0 },
            publish_seconds: metric_value(text, "ferry_relay_publish_latency_seconds_sum")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles_of_one_to_a_hundred() {
        let sorted = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&sorted, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&sorted, 90.0), Some(Duration::from_millis(90)));
        assert_eq!(percentile(&sorted, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&sorted, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&sorted, 0.0), Some(Duration::from_millis(1)));
    }

    #[test]
    fn a_percentile_is_always_a_sample() {
        let sorted = ms(&[10, 20, 30]);
        assert_eq!(percentile(&sorted, 50.0), Some(Duration::from_millis(20)));
        assert_eq!(percentile(&sorted, 99.0), Some(Duration::from_millis(30)));
        assert_eq!(percentile(&ms(&[7]), 99.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_summary_sorts_its_samples_first() {
        let summary = Summary::of(ms(&[5, 1, 4, 2, 3])).expect("samples");
        assert_eq!(summary.count, 5);
        assert_eq!(summary.p50, Duration::from_millis(3));
        assert_eq!(summary.p99, Duration::from_millis(5));
        assert_eq!(summary.max, Duration::from_millis(5));
        assert_eq!(Summary::of(Vec::new()), None);
    }

    #[test]
    fn rates_are_per_second() {
        assert_eq!(rate(1_000, Duration::from_millis(500)), 2_000.0);
        assert_eq!(rate(1_000, Duration::ZERO), 0.0);
    }

    #[test]
    fn the_breakdown_comes_from_histogram_sums_and_counts() {
        let text = "# HELP ferry_relay_batch_size Rows per claimed batch.\n\
                    # TYPE ferry_relay_batch_size histogram\n\
                    ferry_relay_batch_size_sum 100000.0\n\
                    ferry_relay_batch_size_count 200\n\
                    ferry_relay_batch_size_bucket{le=\"500.0\"} 200\n\
                    ferry_relay_publish_latency_seconds_sum 3.5\n\
                    ferry_relay_publish_latency_seconds_count 200\n";
        let breakdown = RelayBreakdown::from_metrics(text).expect("all present");
        assert_eq!(breakdown.batches, 200.0);
        assert_eq!(breakdown.mean_batch, 500.0);
        assert_eq!(breakdown.publish_seconds, 3.5);
        assert_eq!(RelayBreakdown::from_metrics("# EOF\n"), None);
    }
}
