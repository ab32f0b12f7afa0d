//! `ferry bench half`: business transactions per second from concurrent producers, in one run,
//! two ways: with the outbox table (the business row and the outbox row in one transaction), and
//! with transactional messages (prepare through the relay's API, the business row and the
//! marker in one local transaction, then commit through the API). The relay runs as a child
//! with the API on, publishing both kinds to the broker; every message must arrive.

use std::{
    fmt::Write as _,
    io::Write as _,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use sqlx::{PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

use super::{
    BenchError, HalfBenchArgs,
    child::RelayProcess,
    destination::{Destination, clean_up},
    setup::{self, AGGREGATE_TYPE, BROKER_ENV, EVENT_TYPE, RelayShape},
    stats::{Summary, millis},
};
use crate::{
    api::duration::Duration as ApiDuration,
    config::{SecretSource, TransactionalConfig},
    outbox::{
        producer::{NewEvent, enqueue},
        trusted,
    },
    transactional::producer::{HalfMessages, mark_committed},
};

/// How long the benchmark waits for the broker to hold every message after the last commit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// One way of producing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Outbox,
    Half,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Outbox => "outbox table",
            Self::Half => "half messages",
        }
    }
}

struct Producers {
    pool: PgPool,
    api: HalfMessages,
    outbox: String,
    markers: String,
    insert_order: String,
    payload_bytes: usize,
}

impl Producers {
    /// One business transaction, the chosen way; its latency.
    async fn transact(&self, mode: Mode, n: u64) -> Result<Duration, BenchError> {
        let started = Instant::now();
        let key = setup::key_of(n, 100);
        let payload = setup::payload(n, &key, self.payload_bytes);
        match mode {
            Mode::Outbox => {
                let event = NewEvent {
                    id: Uuid::now_v7(),
                    aggregate_type: AGGREGATE_TYPE.into(),
                    aggregate_id: key.clone(),
                    event_type: EVENT_TYPE.into(),
                    payload,
                    headers: Default::default(),
                };
                let mut tx = self.pool.begin().await?;
                self.insert_order(&mut tx, &event.id.to_string(), &key, n)
                    .await?;
                enqueue(&mut *tx, &self.outbox, &event).await?;
                tx.commit().await?;
            }
            Mode::Half => {
                // Sent as it is, like the outbox mode's payload: parsing it here would charge
                // this mode for work the other does not do.
                let document = serde_json::value::RawValue::from_string(payload)
                    .map_err(|error| BenchError::Check(error.to_string()))?;
                let id = self
                    .api
                    .prepare(AGGREGATE_TYPE, &key, EVENT_TYPE, &document)
                    .await
                    .map_err(|error| BenchError::Relay(error.to_string()))?;
                let mut tx = self.pool.begin().await?;
                self.insert_order(&mut tx, &id.to_string(), &key, n).await?;
                mark_committed(&mut *tx, &self.markers, id).await?;
                tx.commit().await?;
                self.api
                    .commit(id)
                    .await
                    .map_err(|error| BenchError::Relay(error.to_string()))?;
            }
        }
        Ok(started.elapsed())
    }

    async fn insert_order(
        &self,
        tx: &mut sqlx::PgConnection,
        id: &str,
        key: &str,
        n: u64,
    ) -> Result<(), BenchError> {
        sqlx::query(trusted(self.insert_order.as_str()))
            .bind(id)
            .bind(key)
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .execute(tx)
            .await?;
        Ok(())
    }
}

/// What one phase measured.
struct Phase {
    mode: Mode,
    seconds: f64,
    latencies: Vec<Duration>,
}

pub async fn run(args: HalfBenchArgs) -> anyhow::Result<ExitCode> {
    let broker_url = args.broker.url(args.broker_url.as_deref());
    let suffix = setup::unique_suffix();
    let outbox = format!("bench_outbox_{suffix}");
    let orders = format!("bench_orders_{suffix}");
    let markers = format!("bench_markers_{suffix}");
    let pool = PgPoolOptions::new()
        .max_connections(args.producers + 2)
        .connect(&args.database_url)
        .await
        .context("connecting to the benchmark database")?;
    let destination = Destination::new(args.broker, &broker_url, &suffix, "half");
    let measured = tokio::select! {
        measured = measure(&args, &pool, (&outbox, &orders, &markers), &destination, &suffix) => measured,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Check("interrupted".into())),
    };
    for table in [format!("{outbox}_half"), markers.clone()] {
        let dropped = sqlx::query(trusted(format!("DROP TABLE IF EXISTS {table}")))
            .execute(&pool)
            .await;
        if let Err(error) = dropped {
            tracing::warn!(%error, table, "cannot drop a benchmark table");
        }
    }
    clean_up(&args.database_url, &outbox, Some(&orders), &[&destination]).await;
    pool.close().await;
    let (phases, details) = measured?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<14}  {:>9}  {:>12}  {:>6}  {:>8}  {:>8}",
        "mode", "producers", "transactions", "tx/s", "p50 ms", "p99 ms"
    )?;
    for phase in &phases {
        let latency = Summary::of(phase.latencies.clone())
            .ok_or_else(|| BenchError::Check(format!("no {} transaction", phase.mode.as_str())))?;
        writeln!(
            out,
            "{:<14}  {:>9}  {:>12}  {:>6.0}  {:>8.2}  {:>8.2}",
            phase.mode.as_str(),
            args.producers,
            phase.latencies.len(),
            phase.latencies.len() as f64 / phase.seconds,
            millis(latency.p50),
            millis(latency.p99),
        )?;
    }
    let rate = |mode: Mode| {
        phases
            .iter()
            .filter(|phase| phase.mode == mode)
            .map(|phase| phase.latencies.len() as f64 / phase.seconds)
            .sum::<f64>()
    };
    writeln!(
        out,
        "half messages / outbox table: {:.2}",
        rate(Mode::Half) / rate(Mode::Outbox)
    )?;
    write!(out, "{details}")?;
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    args: &HalfBenchArgs,
    pool: &PgPool,
    (outbox, orders, markers): (&str, &str, &str),
    destination: &Destination,
    suffix: &str,
) -> Result<(Vec<Phase>, String), BenchError> {
    destination.prepare().await?;
    setup::create_outbox(&args.database_url, outbox).await?;
    setup::create_orders(pool, orders).await?;
    for statement in
        crate::transactional::producer::marker_ddl(crate::api::DatabaseEngine::Postgres, markers)
    {
        sqlx::query(trusted(statement)).execute(pool).await?;
    }
    let api_listen = setup::free_loopback()?;
    // A token of this run only: the config file sits in the temporary folder for the run.
    let token = Uuid::new_v4().simple().to_string();
    let mut config = setup::relay_config(
        outbox,
        destination.topic(SecretSource::Env(BROKER_ENV.into())),
        &RelayShape {
            batch_size: 500,
            workers: 2,
            listen: setup::free_loopback()?,
        },
    );
    config.transactional = Some(TransactionalConfig {
        listen: api_listen,
        token: SecretSource::Value(token.clone()),
        // Every message is committed: a check-back would be a bug, so none comes in the run.
        check_back_url: "http://127.0.0.1:9/unused".into(),
        first_check_delay: ApiDuration::from_secs(3600),
        check_interval: ApiDuration::from_secs(60),
        max_checks: 1,
        check_timeout: ApiDuration::from_secs(5),
        max_request_bytes: 1024 * 1024,
        retention: ApiDuration::from_secs(3600),
    });
    let mut relay = RelayProcess::spawn(
        &config,
        &args.database_url,
        destination.url(),
        &format!("ferry-bench-{suffix}"),
    )?;
    relay.wait_ready().await?;
    let producers = Arc::new(Producers {
        pool: pool.clone(),
        api: HalfMessages::new(&format!("http://{api_listen}"), &token)
            .map_err(|error| BenchError::Relay(error.to_string()))?,
        outbox: outbox.to_owned(),
        markers: markers.to_owned(),
        insert_order: format!("INSERT INTO {orders} (id, customer, n) VALUES ($1, $2, $3)"),
        payload_bytes: args.payload_bytes,
    });
    wait_for_api(api_listen).await?;

    // Each mode twice, alternating, so that a change in the machine's other load falls on both.
    let mut phases = Vec::new();
    let mut next = 0_u64;
    let phase_time = Duration::from_secs(args.seconds.div_ceil(2).max(1));
    for mode in [Mode::Outbox, Mode::Half, Mode::Outbox, Mode::Half] {
        let phase = run_phase(&producers, mode, args.producers, phase_time, &mut next).await?;
        phases.push(phase);
    }
    let total: usize = phases.iter().map(|phase| phase.latencies.len()).sum();
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut arrived = destination.count().await?;
    while arrived < total as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        arrived = destination.count().await?;
    }
    relay.stop().await?;
    if arrived != total as u64 {
        return Err(BenchError::Check(format!(
            "{total} transactions committed, {arrived} messages at the broker"
        )));
    }
    let mut details = String::new();
    let _ = writeln!(
        details,
        "every one of the {total} messages reached the {} destination; phases of {} s each, alternating",
        args.broker.as_str(),
        phase_time.as_secs()
    );
    let _ = writeln!(
        details,
        "outbox table: BEGIN, INSERT order, INSERT outbox row, COMMIT; half messages: prepare (HTTP), BEGIN, INSERT order, INSERT marker, COMMIT, commit (HTTP)"
    );
    Ok((merge(phases), details))
}

/// Runs `producers` tasks for `time`, each doing one transaction after another.
async fn run_phase(
    producers: &Arc<Producers>,
    mode: Mode,
    concurrency: u32,
    time: Duration,
    next: &mut u64,
) -> Result<Phase, BenchError> {
    let started = Instant::now();
    let until = started + time;
    let first = *next;
    let tasks: Vec<_> = (0..u64::from(concurrency))
        .map(|task| {
            let producers = producers.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = first + task * 1_000_000;
                while Instant::now() < until {
                    latencies.push(producers.transact(mode, n).await?);
                    n += 1;
                }
                Ok::<_, BenchError>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        let done = task
            .await
            .map_err(|error| BenchError::Check(format!("a producer task failed: {error}")))??;
        latencies.extend(done);
    }
    *next = first + u64::from(concurrency) * 1_000_000;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Phase {
        mode,
        seconds,
        latencies,
    })
}

/// The phases of each mode as one: time summed, latencies together.
fn merge(phases: Vec<Phase>) -> Vec<Phase> {
    let mut merged: Vec<Phase> = Vec::new();
    for phase in phases {
        match merged.iter_mut().find(|seen| seen.mode == phase.mode) {
            Some(seen) => {
                seen.seconds += phase.seconds;
                seen.latencies.extend(phase.latencies);
            }
            None => merged.push(phase),
        }
    }
    merged
}

async fn wait_for_api(address: std::net::SocketAddr) -> Result<(), BenchError> {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(BenchError::Relay(format!(
        "the transactional API never listened on {address}"
    )))
}
