//! `ferry bench relay`: the relay's throughput draining a pre-filled outbox, against the raw
//! client publishing the very same messages with the same confirmations, and its peak memory.

use std::{
    fmt::Write as _,
    io::Write as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use sqlx::{PgPool, postgres::PgPoolOptions};

use super::{
    BenchError, BrokerArg, RelayBenchArgs,
    child::RelayProcess,
    destination::{Destination, clean_up},
    report::{RATIO_TARGET, Throughput},
    setup::{self, BROKER_ENV, RelayShape},
    stats::{RelayBreakdown, rate},
};
use crate::{
    config::{RelayConfig, SecretSource},
    message::{Envelope, OutboxEvent, envelope},
    relay::Router,
};

/// What one run measured, and what it found wrong on the way.
struct Measured {
    result: Throughput,
    details: String,
    problems: Vec<String>,
}

pub async fn run(args: RelayBenchArgs) -> anyhow::Result<ExitCode> {
    let broker_url = args.broker.url(args.broker_url.as_deref());
    let suffix = setup::unique_suffix();
    let table = format!("bench_outbox_{suffix}");
    let raw = Destination::new(args.broker, &broker_url, &suffix, "raw");
    let relayed = Destination::new(args.broker, &broker_url, &suffix, "rel");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.database_url)
        .await
        .context("connecting to the benchmark database")?;

    // Ctrl-C drops the run (and with it the relay child), then cleans up like any failure.
    let measured = tokio::select! {
        measured = measure(&args, &pool, &table, &raw, &relayed, &suffix) => measured,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Check("interrupted".into())),
    };
    clean_up(&args.database_url, &table, None, &[&raw, &relayed]).await;
    pool.close().await;
    let measured = measured?;

    let mut out = std::io::stdout().lock();
    write!(out, "{}", measured.result.table())?;
    writeln!(out, "{}", measured.result.verdict())?;
    write!(out, "{}", measured.details)?;
    if measured.problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &measured.problems {
        writeln!(out, "FAILED: {problem}")?;
    }
    Ok(ExitCode::FAILURE)
}

async fn measure(
    args: &RelayBenchArgs,
    pool: &PgPool,
    table: &str,
    raw: &Destination,
    relayed: &Destination,
    suffix: &str,
) -> Result<Measured, BenchError> {
    let messages = args.messages;
    let mut details = String::new();
    let mut problems = Vec::new();

    setup::create_outbox(&args.database_url, table).await?;
    tracing::info!(table, messages, keys = args.keys, "pre-filling the outbox");
    let started = Instant::now();
    setup::prefill(pool, table, messages, args.keys, args.payload_bytes).await?;
    let fill = started.elapsed();
    if !args.skip_analyze {
        setup::analyze(pool, table).await?;
    }
    let _ = writeln!(
        details,
        "prefill: {messages} rows in {:.2} s ({:.0} rows/s), {} keys, {}",
        fill.as_secs_f64(),
        rate(messages, fill),
        args.keys,
        if args.skip_analyze {
            "no planner statistics (--skip-analyze)"
        } else {
            "then ANALYZE"
        }
    );

    let shape = RelayShape {
        batch_size: args.batch_size,
        workers: args.workers,
        listen: setup::free_loopback()?,
    };

    // The ceiling: the rows the relay will read, encoded by the relay's own router and
    // envelope code before the clock starts, then only the raw client's publish is timed.
    let raw_config = setup::relay_config(
        table,
        raw.topic(SecretSource::Value(raw.url().to_owned())),
        &shape,
    );
    let events = setup::read_events(pool, table).await?;
    let started = Instant::now();
    let envelopes = envelopes_of(&raw_config, &events)?;
    let encode = started.elapsed();
    drop(events);
    let mean_size = envelopes.iter().map(Envelope::size).sum::<usize>() / envelopes.len().max(1);
    raw.prepare().await?;
    tracing::info!(destination = %raw.name, "publishing with the raw client");
    let started = Instant::now();
    raw.publish_raw(&envelopes).await?;
    let raw_time = started.elapsed();
    drop(envelopes);
    let raw_count = raw.count().await?;
    if raw_count != messages {
        problems.push(format!(
            "the raw destination holds {raw_count} messages, not {messages}"
        ));
    }
    let _ = writeln!(
        details,
        "raw: {messages} messages of {mean_size} bytes (headers + body) in {:.2} s; encoding them \
         (the relay's router and CloudEvents envelope, untimed) took {:.1} us per message",
        raw_time.as_secs_f64(),
        encode.as_secs_f64() * 1e6 / messages as f64
    );

    // The relay, from spawn until `/status` counts every row as published.
    relayed.prepare().await?;
    let config = setup::relay_config(
        table,
        relayed.topic(SecretSource::Env(BROKER_ENV.into())),
        &shape,
    );
    tracing::info!(destination = %relayed.name, batch_size = args.batch_size, workers = args.workers, "running the relay");
    let spawned = Instant::now();
    let mut relay = RelayProcess::spawn(
        &config,
        &args.database_url,
        relayed.url(),
        &format!("ferry-bench-{suffix}"),
    )?;
    let progress = relay.wait_published(messages).await?;
    let relay_time = progress.done_at.duration_since(spawned);
    let peak_rss_kib = relay.peak_rss_kib()?;
    let breakdown = match relay.metrics().await {
        Ok(text) => RelayBreakdown::from_metrics(&text),
        Err(error) => {
            tracing::warn!(%error, "cannot read the relay's metrics");
            None
        }
    };
    relay.stop().await?;
    details.push_str(&relay_details(
        messages,
        relay_time,
        progress.ready_at.map(|ready| ready.duration_since(spawned)),
        breakdown,
        args.workers,
    ));

    let left = setup::count_rows(pool, table).await?;
    if left != 0 {
        problems.push(format!(
            "{left} rows are still in the outbox after the relay stopped"
        ));
    }
    let delivered = relayed.count().await?;
    if delivered != messages {
        problems.push(format!(
            "the relay's destination holds {delivered} messages, not {messages}"
        ));
    }

    Ok(Measured {
        result: Throughput {
            broker: args.broker.as_str(),
            messages,
            raw_rate: rate(messages, raw_time),
            relay_rate: rate(messages, relay_time),
            peak_rss_mib: peak_rss_kib as f64 / 1024.0,
            ratio_target: match args.broker {
                BrokerArg::Rabbitmq | BrokerArg::Nats => Some(RATIO_TARGET),
                BrokerArg::Redis => None,
            },
        },
        details,
        problems,
    })
}

/// The envelopes the relay would publish for `events` with `config`: same router, same
/// CloudEvents encoding, same `ce-source`.
fn envelopes_of(config: &RelayConfig, events: &[OutboxEvent]) -> Result<Vec<Envelope>, BenchError> {
    let router = Router::new(config);
    let source = config.source.cloud_event_source();
    events
        .iter()
        .map(|event| {
            let routing_key = router
                .route(event)
                .map(|destination| destination.routing_key)
                .unwrap_or_default();
            envelope(event, &source, routing_key).map_err(BenchError::from)
        })
        .collect()
}

/// Where the relay's time went, from its own histograms: batches, their mean size, and the
/// time from sending each batch to its last confirm, summed (workers overlap, so the share is
/// of `workers` x wall time).
fn relay_details(
    messages: u64,
    elapsed: Duration,
    ready_after: Option<Duration>,
    breakdown: Option<RelayBreakdown>,
    workers: u32,
) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "relay: {messages} messages in {:.2} s from spawn",
        elapsed.as_secs_f64()
    );
    if let Some(ready) = ready_after {
        let _ = write!(
            out,
            " (ready after {:.0} ms; {:.0} msgs/s from ready)",
            ready.as_secs_f64() * 1000.0,
            rate(messages, elapsed.saturating_sub(ready))
        );
    }
    out.push('\n');
    if let Some(b) = breakdown {
        let worker_time = elapsed.as_secs_f64() * f64::from(workers);
        let _ = writeln!(
            out,
            "relay batches: {:.0} of {:.0} rows on average; send-to-last-confirm {:.2} s summed, {:.0}% of {workers} workers x wall time",
            b.batches,
            b.mean_batch,
            b.publish_seconds,
            if worker_time > 0.0 {
                100.0 * b.publish_seconds / worker_time
            } else {
                0.0
            }
        );
    }
    out
}
