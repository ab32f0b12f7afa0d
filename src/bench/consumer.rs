//! `ferry bench consumer`: the consumer's throughput delivering a backlog to a sink that
//! answers at once, with its idempotency store on, against the raw broker client reading and
//! acknowledging a copy of the same messages with the same guarantee; and its peak memory.

mod process;
mod raw;
mod report;
mod setup;
mod sink;

use std::{
    fmt::Write as _,
    io::Write as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use super::{
    BenchError, ConsumerBenchArgs, DedupArg,
    destination::Destination,
    setup::{BROKER_ENV, DATABASE_ENV, free_loopback, unique_suffix},
    stats::rate,
};
use process::ConsumerProcess;
use report::{ConsumerBreakdown, ConsumerThroughput, ratio_target};
use setup::{Group, Names, REDIS_ENV};
use sink::{Sink, SinkCounts};

/// What one run measured, and what it found wrong on the way.
struct Measured {
    result: ConsumerThroughput,
    details: String,
    problems: Vec<String>,
}

/// Everything a run works on, named before anything is created so that all of it can be
/// removed whatever step fails.
struct Run {
    names: Names,
    raw: Destination,
    delivered: Destination,
    raw_group: Group,
    consumer_group: Group,
    config: crate::config::ConsumerConfig,
}

pub async fn run(args: ConsumerBenchArgs) -> anyhow::Result<ExitCode> {
    let broker_url = args.broker.url(args.broker_url.as_deref());
    let sink = Sink::start().await?;
    let run = plan(&args, &broker_url, &sink.url)?;

    // Ctrl-C drops the run (and with it the consumer child), then cleans up like any failure.
    let measured = tokio::select! {
        measured = measure(&args, &run, &sink) => measured,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Check("interrupted".into())),
    };
    clean_up(&args, &run).await;
    sink.stop().await;
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

/// Names, destinations ("raw" and "con": tags of one length, so both copies of a message have
/// the same size), the consumer config and both groups. Creates nothing yet.
fn plan(args: &ConsumerBenchArgs, broker_url: &str, sink_url: &str) -> Result<Run, BenchError> {
    let names = Names::new(unique_suffix());
    let mut raw = Destination::new(args.broker, broker_url, &names.suffix, "raw");
    let mut delivered = Destination::new(args.broker, broker_url, &names.suffix, "con");
    let listen = free_loopback()?;
    let config = setup::consumer_config(
        args,
        &names,
        names.identity("con"),
        &delivered,
        sink_url,
        listen,
    );
    // The raw group has the consumer's shape (same prefetch), on its own destination.
    let raw_config =
        setup::consumer_config(args, &names, names.identity("raw"), &raw, sink_url, listen);
    let raw_group = setup::group_of(&raw_config, &raw);
    let consumer_group = setup::group_of(&config, &delivered);
    // RabbitMQ: the group's queue is the one to count and remove, not the `-all` queue.
    raw.queue = Some(raw_group.queue());
    delivered.queue = Some(consumer_group.queue());
    Ok(Run {
        names,
        raw,
        delivered,
        raw_group,
        consumer_group,
        config,
    })
}

async fn measure(args: &ConsumerBenchArgs, run: &Run, sink: &Sink) -> Result<Measured, BenchError> {
    let messages = args.messages;
    let mut details = String::new();
    let mut problems = Vec::new();
    let _ = writeln!(details, "{}", shape(args, run));

    // The backlog: both groups exist first, then the same messages go to each destination.
    run.raw_group.prepare().await?;
    run.consumer_group.prepare().await?;
    let events = setup::events(messages, args.keys, args.payload_bytes);
    tracing::info!(messages, keys = args.keys, "publishing the backlog twice");
    let started = Instant::now();
    let size = setup::publish(&run.raw, &events, &run.names.suffix).await?;
    let raw_publish = started.elapsed();
    let started = Instant::now();
    setup::publish(&run.delivered, &events, &run.names.suffix).await?;
    let consumer_publish = started.elapsed();
    drop(events);
    for destination in [&run.raw, &run.delivered] {
        let held = destination.count().await?;
        if held != messages {
            return Err(BenchError::Check(format!(
                "{} holds {held} messages after publishing, not {messages}",
                destination.name
            )));
        }
    }
    let _ = writeln!(
        details,
        "backlog: {messages} messages of {size} bytes (headers + body), {} keys, published \
         with Ferry's publisher to each destination ({:.2} s and {:.2} s, untimed)",
        args.keys,
        raw_publish.as_secs_f64(),
        consumer_publish.as_secs_f64()
    );

    // The ceiling.
    tracing::info!(destination = %run.raw.name, "draining with the raw client");
    let raw_time = raw::drain(&run.raw_group, run.raw.url(), messages).await?;
    let raw_lag = run.raw_group.lag().await?;
    if raw_lag.messages != 0 {
        problems.push(format!(
            "the raw client's group still has {} unacknowledged messages",
            raw_lag.messages
        ));
    }
    let _ = writeln!(
        details,
        "raw: {messages} messages received and acknowledged in {:.2} s ({})",
        raw_time.as_secs_f64(),
        raw_method(args)
    );

    // The consumer, from spawn until `/status` counts every message as delivered.
    let env = [
        (BROKER_ENV, run.delivered.url()),
        (DATABASE_ENV, args.database_url.as_str()),
        (REDIS_ENV, args.redis_url.as_str()),
    ];
    tracing::info!(destination = %run.delivered.name, concurrency = args.concurrency, "running the consumer");
    let spawned = Instant::now();
    let mut consumer = ConsumerProcess::spawn(
        &run.config,
        &env,
        &format!("ferry-bench-{}", run.names.suffix),
    )?;
    tracing::info!(pid = consumer.pid(), "consumer started");
    let progress = consumer.wait_delivered(messages).await?;
    let consumer_time = progress.done_at.duration_since(spawned);
    let ready_after = progress.ready_at.map(|ready| ready.duration_since(spawned));
    let peak_rss_kib = consumer.peak_rss_kib()?;
    let cpu = consumer.cpu_time()?;
    let breakdown = match consumer.metrics().await {
        Ok(text) => ConsumerBreakdown::from_metrics(&text),
        Err(error) => {
            tracing::warn!(%error, "cannot read the consumer's metrics");
            None
        }
    };
    consumer.stop().await?;
    let counts = sink.counts();
    let status = &progress.status;
    let _ = writeln!(
        details,
        "consumer: {messages} messages delivered in {:.2} s from spawn{}; deduplicated {}, \
         retried {}; CPU {:.2} s (user + system), {:.0}% of one core",
        consumer_time.as_secs_f64(),
        ready_after.map_or(String::new(), |ready| format!(
            " (ready after {:.0} ms; {:.0} msgs/s from ready)",
            ready.as_secs_f64() * 1000.0,
            rate(messages, consumer_time.saturating_sub(ready))
        )),
        status["deduplicatedTotal"],
        status["retriedTotal"],
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / consumer_time.as_secs_f64().max(f64::EPSILON)
    );
    let busy_time = consumer_time.saturating_sub(ready_after.unwrap_or_default());
    details.push_str(&sink_details(
        counts,
        breakdown,
        args.concurrency,
        busy_time,
    ));

    check_consumer(args, run, counts, &mut problems, &mut details).await?;
    Ok(Measured {
        result: ConsumerThroughput {
            broker: args.broker.as_str(),
            dedup: args.dedup.as_str(),
            messages,
            raw_rate: rate(messages, raw_time),
            consumer_rate: rate(messages, consumer_time),
            peak_rss_mib: peak_rss_kib as f64 / 1024.0,
            ratio_target: ratio_target(args.broker, args.dedup),
        },
        details,
        problems,
    })
}

/// After the consumer stopped: the sink saw every message once, the group has nothing left,
/// and the idempotency store recorded every delivery.
async fn check_consumer(
    args: &ConsumerBenchArgs,
    run: &Run,
    counts: SinkCounts,
    problems: &mut Vec<String>,
    details: &mut String,
) -> Result<(), BenchError> {
    let messages = args.messages;
    if counts.distinct != messages || counts.unkeyed != 0 {
        problems.push(format!(
            "the sink saw {} distinct message ids (and {} requests without one), not {messages}",
            counts.distinct, counts.unkeyed
        ));
    }
    let lag = run.consumer_group.lag().await?;
    if lag.messages != 0 {
        problems.push(format!(
            "the consumer's group still has {} unacknowledged messages after it stopped",
            lag.messages
        ));
    }
    let records = setup::dedup_records(args, &run.names).await?;
    if records != messages {
        problems.push(format!(
            "the idempotency store holds {records} done records, not {messages}"
        ));
    }
    let _ = writeln!(
        details,
        "dedup: {records} done records in {}; its round trips are not in the consumer's /metrics",
        match args.dedup {
            DedupArg::Postgres => format!("table {}", run.names.table),
            DedupArg::Redis => format!("keys {}*", run.names.key_prefix),
        }
    );
    Ok(())
}

/// The settings the numbers depend on.
fn shape(args: &ConsumerBenchArgs, run: &Run) -> String {
    format!(
        "consumer: concurrency {}{}, prefetch {}, ordering {:?}, idempotency store {}, no \
         dead-letter queue; sink: an in-process HTTP server answering 200 at once",
        args.concurrency,
        if args.concurrency == 8 {
            " (the Consumer default)"
        } else {
            " (a Consumer's default is 8)"
        },
        run.consumer_group.subscription.prefetch,
        run.config.ordering,
        match args.dedup {
            DedupArg::Postgres => "PostgreSQL",
            DedupArg::Redis => "Redis",
        }
    )
}

fn raw_method(args: &ConsumerBenchArgs) -> &'static str {
    match args.broker {
        super::BrokerArg::Rabbitmq => {
            "basic.consume on the group's quorum queue, same prefetch, one basic.ack per message"
        }
        super::BrokerArg::Nats => {
            "the group's durable pull consumer, same pull batch, each ack confirmed by the \
             server, up to prefetch in flight"
        }
        super::BrokerArg::Redis => "XREADGROUP COUNT prefetch, then one XACK for the ids read",
    }
}

/// The sink's side: requests and duplicates, and the time the consumer spent waiting for the
/// sink as a share of its delivery slots (concurrency x time from ready). The rest of each
/// slot's time goes to the idempotency claim and record, the broker ack, and scheduling.
fn sink_details(
    counts: SinkCounts,
    breakdown: Option<ConsumerBreakdown>,
    concurrency: u32,
    busy: Duration,
) -> String {
    let mut out = format!(
        "sink: {} requests ({} duplicates), {:.0} body bytes each",
        counts.requests,
        counts.duplicates(),
        counts.body_bytes as f64 / counts.requests.max(1) as f64
    );
    if let Some(b) = breakdown {
        let slots = busy.as_secs_f64() * f64::from(concurrency);
        let _ = write!(
            out,
            "; {:.3} ms mean as the consumer timed it; {:.2} s summed, {:.0}% of {concurrency} \
             delivery slots x time from ready (the rest: the `done` record and waiting for it)",
            b.mean_sink_millis(),
            b.sink_seconds,
            if slots > 0.0 {
                100.0 * b.sink_seconds / slots
            } else {
                0.0
            }
        );
    }
    out.push('\n');
    if let Some(b) = breakdown {
        for (what, stats) in [
            ("idempotency claim", b.claim),
            ("idempotency done record", b.complete),
            ("broker ack", b.ack),
        ] {
            if let Some(stats) = stats {
                let _ = writeln!(out, "{what}: {}", stats.describe());
            }
        }
    }
    out
}

/// Removes the destinations (with the groups' queues, streams and their durable consumers,
/// stream keys), what the groups left beside them, and the idempotency records. Failures are
/// logged, not raised, so that every step gets its turn.
async fn clean_up(args: &ConsumerBenchArgs, run: &Run) {
    for (destination, group) in [
        (&run.raw, &run.raw_group),
        (&run.delivered, &run.consumer_group),
    ] {
        if let Err(error) = destination.remove().await {
            tracing::warn!(%error, destination = %destination.name, "cannot remove a benchmark destination");
        }
        setup::remove_group_leftovers(
            args.broker,
            destination.url(),
            &destination.name,
            &group.subscription.group,
        )
        .await;
    }
    setup::remove_dedup(args, &run.names).await;
}
