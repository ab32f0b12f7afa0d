//! `ferry bench latency`: the time from a producer's COMMIT returning to a raw consumer of the
//! broker receiving the message, at a fixed commit rate, with the relay running as a child.
//!
//! Both instants come from `std::time::Instant` in this one process, so they are on the same
//! monotonic clock.

use std::{
    fmt::Write as _,
    io::Write as _,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::{task::JoinSet, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    BenchError, LatencyBenchArgs,
    child::{POLL, RelayProcess},
    destination::{Destination, clean_up},
    readers::{self, SharedArrivals},
    report::Latency,
    setup::{self, AGGREGATE_TYPE, BROKER_ENV, EVENT_TYPE, RelayShape, TRACEPARENT},
    stats::{RelayBreakdown, Summary, millis, rate},
};
use crate::outbox::{
    producer::{NewEvent, enqueue},
    trusted,
};

/// Orders committed and awaited before measuring, so that connections, the LISTEN and the
/// consumer are all warm; they are not part of the result.
const WARM_UP: u64 = 20;
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the last commit messages may still arrive; waiting ends as soon as all did.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Producer connections: a COMMIT waits for its WAL flush (about 3.5 ms on this machine), so
/// 1000 orders a second need many transactions in flight, whose flushes PostgreSQL groups.
const PRODUCER_CONNECTIONS: u32 = 32;

pub async fn run(args: LatencyBenchArgs) -> anyhow::Result<ExitCode> {
    let broker_url = args.broker.url(args.broker_url.as_deref());
    let suffix = setup::unique_suffix();
    let orders = format!("bench_orders_{suffix}");
    let pool = PgPoolOptions::new()
        .max_connections(PRODUCER_CONNECTIONS)
        .connect(&args.database_url)
        .await
        .context("connecting to the benchmark database")?;
    let producer = Arc::new(Producer::new(
        pool,
        &format!("bench_outbox_{suffix}"),
        &orders,
        args.keys,
        args.payload_bytes,
    ));
    let destination = Destination::new(args.broker, &broker_url, &suffix, "lat");

    let measured = tokio::select! {
        measured = measure(&args, producer.clone(), &orders, &destination, &suffix) => measured,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Check("interrupted".into())),
    };
    clean_up(
        &args.database_url,
        &producer.outbox,
        Some(&orders),
        &[&destination],
    )
    .await;
    producer.pool.close().await;
    let (result, details, problems) = measured?;

    let mut out = std::io::stdout().lock();
    write!(out, "{}", result.table())?;
    writeln!(out, "{}", result.verdict())?;
    write!(out, "{details}")?;
    if result.lost == 0 && problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    if result.lost > 0 {
        writeln!(
            out,
            "FAILED: {} committed messages never arrived",
            result.lost
        )?;
    }
    for problem in &problems {
        writeln!(out, "FAILED: {problem}")?;
    }
    Ok(ExitCode::FAILURE)
}

/// Commits orders: a business row and its outbox row in one transaction.
struct Producer {
    pool: PgPool,
    outbox: String,
    insert_order: String,
    keys: u64,
    payload_bytes: usize,
}

/// One committed order: its message id, when its first INSERT was sent (the connection
/// acquired and BEGIN done), and when COMMIT returned.
struct Committed {
    id: String,
    began: Instant,
    at: Instant,
}

impl Producer {
    fn new(pool: PgPool, outbox: &str, orders: &str, keys: u64, payload_bytes: usize) -> Self {
        Self {
            pool,
            outbox: outbox.to_owned(),
            insert_order: format!("INSERT INTO {orders} (id, customer, n) VALUES ($1, $2, $3)"),
            keys,
            payload_bytes,
        }
    }

    async fn commit(&self, n: u64) -> Result<Committed, BenchError> {
        let key = setup::key_of(n, self.keys);
        let event = NewEvent {
            id: Uuid::now_v7(),
            aggregate_type: AGGREGATE_TYPE.into(),
            aggregate_id: key.clone(),
            event_type: EVENT_TYPE.into(),
            payload: setup::payload(n, &key, self.payload_bytes),
            headers: [("traceparent".to_owned(), TRACEPARENT.to_owned())].into(),
        };
        let mut tx = self.pool.begin().await?;
        let began = Instant::now();
        sqlx::query(trusted(self.insert_order.as_str()))
            .bind(format!("order-{n}"))
            .bind(&key)
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        enqueue(&mut *tx, &self.outbox, &event).await?;
        tx.commit().await?;
        Ok(Committed {
            id: event.id.to_string(),
            began,
            at: Instant::now(),
        })
    }
}

async fn measure(
    args: &LatencyBenchArgs,
    producer: Arc<Producer>,
    orders: &str,
    destination: &Destination,
    suffix: &str,
) -> Result<(Latency, String, Vec<String>), BenchError> {
    let mut details = String::new();
    let mut problems = Vec::new();
    destination.prepare().await?;
    setup::create_outbox(&args.database_url, &producer.outbox).await?;
    setup::create_orders(&producer.pool, orders).await?;

    let arrivals = SharedArrivals::default();
    let stop_reader = CancellationToken::new();
    // Dropping the token's guard stops the reader however this function ends.
    let _reader_guard = stop_reader.clone().drop_guard();
    let reader = readers::start(destination, arrivals.clone(), stop_reader.clone()).await?;

    let shape = RelayShape {
        batch_size: args.batch_size,
        workers: args.workers,
        listen: setup::free_loopback()?,
    };
    let config = setup::relay_config(
        &producer.outbox,
        destination.topic(crate::config::SecretSource::Env(BROKER_ENV.into())),
        &shape,
    );
    let mut relay = RelayProcess::spawn(
        &config,
        &args.database_url,
        destination.url(),
        &format!("ferry-bench-{suffix}"),
    )?;
    relay.wait_ready().await?;

    let mut warm = Vec::new();
    for n in 0..WARM_UP {
        warm.push(producer.commit(n).await?);
    }
    if !wait_for(&arrivals, &warm, WARM_UP_TIMEOUT).await {
        return Err(BenchError::Check(format!(
            "the {WARM_UP} warm-up messages did not all arrive within {}s",
            WARM_UP_TIMEOUT.as_secs()
        )));
    }

    tracing::info!(rate = args.rate, seconds = args.seconds, destination = %destination.name, "committing orders");
    let (committed, producing) = produce(&producer, args.rate, args.seconds).await?;
    let drained = wait_for(&arrivals, &committed, DRAIN_TIMEOUT).await;
    let peak_rss_kib = relay.peak_rss_kib()?;
    let breakdown = match relay.metrics().await {
        Ok(text) => RelayBreakdown::from_metrics(&text),
        Err(error) => {
            tracing::warn!(%error, "cannot read the relay's metrics");
            None
        }
    };
    stop_reader.cancel();
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => problems.push(format!("the consumer failed: {error}")),
        Err(error) => problems.push(format!("the consumer task failed: {error}")),
    }
    relay.stop().await?;
    let left = setup::count_rows(&producer.pool, &producer.outbox).await?;
    if left != 0 {
        problems.push(format!(
            "{left} rows are still in the outbox after the relay stopped"
        ));
    }

    let (latencies, lost, duplicates) = {
        let arrivals = arrivals
            .lock()
            .map_err(|_| BenchError::Check("the consumer's record is unusable".into()))?;
        let latencies: Vec<Duration> = committed
            .iter()
            .filter_map(|c| {
                arrivals
                    .first
                    .get(&c.id)
                    .map(|got| got.saturating_duration_since(c.at))
            })
            .collect();
        let lost = committed.len() - latencies.len();
        (latencies, lost, arrivals.duplicates)
    };
    let transactions = Summary::of(committed.iter().map(|c| c.at - c.began).collect());
    let _ = writeln!(
        details,
        "producer: {} orders in {:.2} s, one transaction each (business row + outbox row), up to {PRODUCER_CONNECTIONS} at once; tokio interval with MissedTickBehavior::Burst; {WARM_UP} warm-up orders not counted",
        committed.len(),
        producing.as_secs_f64(),
    );
    if let Some(t) = transactions {
        let _ = writeln!(
            details,
            "producer transaction (first INSERT to COMMIT returned): p50 {:.2} ms, p99 {:.2} ms",
            millis(t.p50),
            millis(t.p99)
        );
    }
    if let Some(b) = breakdown {
        let _ = writeln!(
            details,
            "relay: {:.0} batches of {:.1} rows on average (warm-up included); send-to-last-confirm {:.2} ms per batch on average",
            b.batches,
            b.mean_batch,
            if b.batches > 0.0 {
                1000.0 * b.publish_seconds / b.batches
            } else {
                0.0
            }
        );
    }
    let _ = writeln!(
        details,
        "consumer: {duplicates} duplicate deliveries; {}; relay peak RSS {:.1} MiB",
        if drained {
            "everything arrived before the drain timeout".to_owned()
        } else {
            format!("drain stopped after {}s", DRAIN_TIMEOUT.as_secs())
        },
        peak_rss_kib as f64 / 1024.0
    );

    Ok((
        Latency {
            broker: args.broker.as_str(),
            target_rate: args.rate,
            achieved_rate: rate(committed.len() as u64, producing),
            committed: committed.len(),
            lost,
            summary: Summary::of(latencies),
        },
        details,
        problems,
    ))
}

/// Commits `rate` orders a second for `seconds`, each in its own task so that a slow
/// transaction does not delay the next tick. `Burst` keeps the schedule at start + k/rate:
/// tokio's timer has millisecond resolution, and with `Delay` every late wake-up would push
/// all later ticks back and the rate would fall short; with `Burst` the ticks a late wake-up
/// missed fire at once (at 1000/s, a couple of orders together). Returns the commits and the
/// time from the first tick to the last COMMIT returning.
async fn produce(
    producer: &Arc<Producer>,
    rate: u32,
    seconds: u64,
) -> Result<(Vec<Committed>, Duration), BenchError> {
    let total = u64::from(rate) * seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for n in 0..total {
        ticker.tick().await;
        let producer = producer.clone();
        tasks.spawn(async move { producer.commit(WARM_UP + n).await });
    }
    let mut committed = Vec::with_capacity(total as usize);
    while let Some(joined) = tasks.join_next().await {
        let done = joined
            .map_err(|error| BenchError::Check(format!("a producer task failed: {error}")))?;
        committed.push(done?);
    }
    let last = committed.iter().map(|c| c.at).max().unwrap_or(started);
    Ok((committed, last.duration_since(started)))
}

/// Waits until every one of `committed` has arrived; `false` when `timeout` passed first.
async fn wait_for(arrivals: &SharedArrivals, committed: &[Committed], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let all = arrivals
            .lock()
            .is_ok_and(|seen| committed.iter().all(|c| seen.first.contains_key(&c.id)));
        if all {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}
