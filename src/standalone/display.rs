//! What `ferry run` prints: a table of the workloads it started, then one status line per
//! workload, redrawn in place on a terminal and printed every few seconds otherwise.

use std::{fmt::Write as _, io::IsTerminal, time::Duration};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::{Pipelines, Reading, Workload};
use crate::validate::ObjectId;

/// The longest last error a status line shows.
const ERROR_EXCERPT: usize = 100;

/// `KIND NAME ROUTE ENDPOINTS`, one row per workload, then the suspended objects.
pub fn start_table(pipelines: &Pipelines, suspended: &[ObjectId]) -> String {
    let rows: Vec<[String; 4]> = pipelines
        .running
        .iter()
        .map(|running| {
            [
                running.workload.role().to_owned(),
                running.workload.name(),
                running.workload.route(),
                format!("http://{}/status", running.address),
            ]
        })
        .collect();
    let header = [
        "WORKLOAD".to_owned(),
        "NAME".to_owned(),
        "ROUTE".to_owned(),
        "STATUS ENDPOINT".to_owned(),
    ];
    let mut widths = [0; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:w0$}   {:w1$}   {:w2$}   {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        let _ = writeln!(table, "{}", line.trim_end());
    }
    for object in suspended {
        let _ = writeln!(table, "{object}: suspended (spec.suspend), not started");
    }
    table
}

/// One workload's figures: `relay shop/orders Ready published 120 pending 0 ...`.
pub fn status_line(workload: &Workload, reading: &Reading, name_width: usize) -> String {
    let known = |figure: Option<u64>| figure.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let known_i = |figure: Option<i64>| figure.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let (ready, figures, error) = match reading {
        Reading::Relay(relay) => (
            relay.ready,
            format!(
                "published {}  pending {}  oldest {}  dead-lettered {}",
                known(relay.published_total),
                known_i(relay.pending_rows),
                relay
                    .oldest_pending_age_seconds
                    .map_or_else(|| "-".to_owned(), |age| format!("{age}s")),
                known(relay.dead_lettered_total),
            ),
            relay.last_error.as_ref(),
        ),
        Reading::Consumer(consumer) => (
            consumer.ready,
            format!(
                "delivered {}  retried {}  dead-lettered {}  deduplicated {}  lag {}",
                known(consumer.delivered_total),
                known(consumer.retried_total),
                known(consumer.dead_lettered_total),
                known(consumer.deduplicated_total),
                known_i(consumer.lag_messages),
            ),
            consumer.last_error.as_ref(),
        ),
    };
    let state = if ready == Some(true) {
        "Ready"
    } else {
        "NotReady"
    };
    let mut line = format!(
        "{:8} {:name_width$}  {state:8}  {figures}",
        workload.role(),
        workload.name()
    );
    if ready != Some(true)
        && let Some(error) = error
    {
        let excerpt: String = error.message.chars().take(ERROR_EXCERPT).collect();
        let _ = write!(line, "  last error ({}): {excerpt}", error.category);
    }
    line
}

fn name_width(pipelines: &Pipelines) -> usize {
    pipelines
        .running
        .iter()
        .map(|running| running.workload.name().chars().count())
        .max()
        .unwrap_or(0)
}

/// Shows every workload's status line until `stop`: on a terminal one line each, redrawn twice
/// a second; otherwise all of them every `every`. Returns after `stop` is cancelled.
pub async fn follow(pipelines: &Pipelines, every: Duration, stop: &CancellationToken) {
    let width = name_width(pipelines);
    let lines = || {
        pipelines
            .running
            .iter()
            .map(|running| status_line(&running.workload, &running.reading(), width))
    };
    if !std::io::stderr().is_terminal() {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            for line in lines() {
                println!("{line}");
            }
        }
    }
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let spinners: Vec<ProgressBar> = pipelines
        .running
        .iter()
        .map(|_| bars.add(ProgressBar::new_spinner().with_style(style.clone())))
        .collect();
    crate::telemetry::show_logs_above(&bars);
    loop {
        for (spinner, line) in spinners.iter().zip(lines()) {
            spinner.set_message(line);
            spinner.tick();
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    for spinner in &spinners {
        spinner.finish_and_clear();
    }
    crate::telemetry::clear_progress_bars();
}

/// The final status lines, after every workload has stopped.
pub fn final_lines(finals: &[(Workload, Reading, Result<(), String>)]) -> Vec<String> {
    let width = finals
        .iter()
        .map(|(workload, _, _)| workload.name().chars().count())
        .max()
        .unwrap_or(0);
    finals
        .iter()
        .map(|(workload, reading, _)| status_line(workload, reading, width))
        .collect()
}
