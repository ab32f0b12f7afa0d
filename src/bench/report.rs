//! The tables and verdict lines a benchmark prints: plain text, aligned, one line per result,
//! so they can be pasted into `docs/benchmarks.md` as they are.

use super::stats::{Summary, millis};

/// Relay throughput must reach this share of the raw client's (RabbitMQ and NATS).
pub const RATIO_TARGET: f64 = 0.8;
/// The relay's peak resident memory must stay within this.
pub const RSS_TARGET_MIB: f64 = 64.0;
/// End-to-end latency targets.
pub const P50_TARGET_MS: f64 = 5.0;
pub const P99_TARGET_MS: f64 = 25.0;

/// Columns separated by two spaces; the first column left-aligned, numbers right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index == 0 {
                out.push_str(&format!("{cell:<width$}"));
            } else {
                out.push_str(&format!("  {cell:>width$}"));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// One `ferry bench relay` result.
#[derive(Clone, Debug, PartialEq)]
pub struct Throughput {
    pub broker: &'static str,
    pub messages: u64,
    pub raw_rate: f64,
    pub relay_rate: f64,
    pub peak_rss_mib: f64,
    /// `None` where no ratio is promised (Redis).
    pub ratio_target: Option<f64>,
}

impl Throughput {
    pub fn ratio(&self) -> f64 {
        if self.raw_rate > 0.0 {
            self.relay_rate / self.raw_rate
        } else {
            0.0
        }
    }

    pub fn table(&self) -> String {
        table(
            &[
                "broker",
                "messages",
                "raw msgs/s",
                "relay msgs/s",
                "relay/raw",
                "relay peak RSS MiB",
            ],
            &[vec![
                self.broker.to_owned(),
                self.messages.to_string(),
                format!("{:.0}", self.raw_rate),
                format!("{:.0}", self.relay_rate),
                format!("{:.2}", self.ratio()),
                format!("{:.1}", self.peak_rss_mib),
            ]],
        )
    }

    pub fn verdict(&self) -> String {
        let ratio = match self.ratio_target {
            Some(target) => format!(
                "relay/raw {:.2} >= {target:.2} {}",
                self.ratio(),
                met(self.ratio() >= target)
            ),
            None => format!(
                "relay/raw {:.2} (no target for {})",
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

/// One `ferry bench latency` result.
#[derive(Clone, Debug, PartialEq)]
pub struct Latency {
    pub broker: &'static str,
    pub target_rate: u32,
    pub achieved_rate: f64,
    /// Messages committed in the measured period.
    pub committed: usize,
    pub lost: usize,
    pub summary: Option<Summary>,
}

impl Latency {
    pub fn table(&self) -> String {
        let cell = |pick: fn(&Summary) -> std::time::Duration| {
            self.summary
                .as_ref()
                .map_or("-".to_owned(), |s| format!("{:.2}", millis(pick(s))))
        };
        table(
            &[
                "broker",
                "rate/s",
                "achieved/s",
                "messages",
                "lost",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
            ],
            &[vec![
                self.broker.to_owned(),
                self.target_rate.to_string(),
                format!("{:.0}", self.achieved_rate),
                self.committed.to_string(),
                self.lost.to_string(),
                cell(|s| s.p50),
                cell(|s| s.p90),
                cell(|s| s.p99),
                cell(|s| s.max),
            ]],
        )
    }

    pub fn verdict(&self) -> String {
        let lost = format!("lost {} {}", self.lost, met(self.lost == 0));
        let Some(summary) = &self.summary else {
            return format!("verdict: no message arrived; {lost}");
        };
        let (p50, p99) = (millis(summary.p50), millis(summary.p99));
        format!(
            "verdict: p50 {p50:.2} ms <= {P50_TARGET_MS:.0} ms {}; p99 {p99:.2} ms <= {P99_TARGET_MS:.0} ms {}; {lost}",
            met(p50 <= P50_TARGET_MS),
            met(p99 <= P99_TARGET_MS)
        )
    }
}

pub(super) fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn tables_align_columns_to_the_widest_cell() {
        let text = table(
            &["broker", "msgs/s"],
            &[
                vec!["rabbitmq".into(), "12".into()],
                vec!["nats".into(), "123456".into()],
            ],
        );
        assert_eq!(
            text,
            "broker    msgs/s\nrabbitmq      12\nnats      123456\n"
        );
    }

    fn throughput(relay_rate: f64, rss: f64, target: Option<f64>) -> Throughput {
        Throughput {
            broker: "rabbitmq",
            messages: 100_000,
            raw_rate: 20_000.0,
            relay_rate,
            peak_rss_mib: rss,
            ratio_target: target,
        }
    }

    #[test]
    fn the_throughput_table_shows_the_ratio_and_memory() {
        let text = throughput(17_000.0, 21.04, Some(RATIO_TARGET)).table();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("broker    messages  raw msgs/s  relay msgs/s  relay/raw  relay peak RSS MiB")
        );
        assert_eq!(
            lines.next(),
            Some("rabbitmq    100000       20000         17000       0.85                21.0")
        );
    }

    #[test]
    fn throughput_verdicts_name_each_target() {
        assert_eq!(
            throughput(17_000.0, 21.0, Some(RATIO_TARGET)).verdict(),
            "verdict: relay/raw 0.85 >= 0.80 met; peak RSS 21.0 MiB <= 64 MiB met"
        );
        assert_eq!(
            throughput(10_000.0, 80.0, Some(RATIO_TARGET)).verdict(),
            "verdict: relay/raw 0.50 >= 0.80 MISSED; peak RSS 80.0 MiB <= 64 MiB MISSED"
        );
        assert!(
            throughput(10_000.0, 20.0, None)
                .verdict()
                .contains("relay/raw 0.50 (no target for rabbitmq)")
        );
    }

    #[test]
    fn latency_tables_and_verdicts_use_milliseconds() {
        let result = Latency {
            broker: "nats",
            target_rate: 1000,
            achieved_rate: 999.6,
            committed: 10_000,
            lost: 0,
            summary: Some(Summary {
                count: 10_000,
                p50: Duration::from_micros(2_500),
                p90: Duration::from_micros(4_000),
                p99: Duration::from_micros(30_000),
                max: Duration::from_micros(41_250),
            }),
        };
        assert_eq!(
            result.table().lines().nth(1),
            Some("nats      1000        1000     10000     0    2.50    4.00   30.00   41.25")
        );
        assert_eq!(
            result.verdict(),
            "verdict: p50 2.50 ms <= 5 ms met; p99 30.00 ms <= 25 ms MISSED; lost 0 met"
        );
        let nothing = Latency {
            summary: None,
            lost: 3,
            ..result
        };
        assert_eq!(
            nothing.verdict(),
            "verdict: no message arrived; lost 3 MISSED"
        );
        assert!(nothing.table().contains(" -"));
    }
}
