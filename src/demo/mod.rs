//! `ferry demo`: the whole pattern on one machine with no servers. An orders service commits
//! orders with their outbox events; the quickstart pipelines (`examples/quickstart`) relay them
//! through a queue table and deliver them to an inventory service that fails on purpose; the
//! report then checks from the databases that nothing was lost or applied twice.

mod inventory;
pub mod quickstart;
mod report;
mod store;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::{
    dlq::{self, query::Selection, replay::ReplayProgress, table::TableStore},
    standalone::{self, Listen, Pipelines, Reading},
};
use quickstart::{Broker, Database};
pub use report::{Counts, Reported};
use store::{DemoDb, Order};

/// The SKUs ordered (the poison orders use `inventory::POISON_SKU`).
const SKUS: [&str; 5] = ["BOOK-1", "LAMP-2", "MUG-3", "PEN-4", "SOCK-5"];

/// The flags of `ferry demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Orders to commit.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub orders: u32,
    /// Of those, orders the inventory service can never reserve: they end in the dead-letter
    /// queue after the retry policy's last attempt.
    #[arg(long, default_value_t = 3)]
    pub poison: u32,
    /// The share of requests the inventory service fails on purpose (half before reserving,
    /// half after, as if its answer were lost); each message at most twice.
    #[arg(long, default_value_t = 0.2, value_parser = failure_rate)]
    pub failure_rate: f64,
    /// Orders committed per second.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// The folder for the SQLite database (kept afterwards, so `ferry dlq` can look at it).
    /// Default: a new folder under the system's temporary folder.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Where the orders topic lives: the queue table in the demo's database (no server), or a
    /// server you run.
    #[arg(long, value_enum, default_value = "sql")]
    pub broker: Broker,
    /// The broker's URL. Default: the broker's standard port on 127.0.0.1 (guest/guest for
    /// RabbitMQ).
    #[arg(long, env = "FERRY_DEMO_BROKER_URL", hide_env_values = true)]
    pub broker_url: Option<String>,
    /// The database of the orders, the outbox and the rest.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub database: Database,
    /// The database's URL. Default: a file in the data folder (sqlite), or
    /// postgres://postgres@127.0.0.1:5432/postgres. The demo drops and recreates its own
    /// tables there (all named demo_*).
    #[arg(long, env = "FERRY_DEMO_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Leave the dead letters waiting instead of fixing the inventory service and replaying
    /// them at the end.
    #[arg(long)]
    pub no_replay: bool,
    /// Give up waiting for every order to settle (and for the replay) after this long.
    #[arg(long, default_value = "120s")]
    pub timeout: crate::api::duration::Duration,
}

fn failure_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=0.9).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is outside 0 to 0.9"))
    }
}

impl DemoArgs {
    fn broker_url(&self) -> Option<String> {
        let default = match self.broker {
            Broker::Sql => return None,
            Broker::Rabbitmq => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Broker::Nats => "nats://127.0.0.1:4222",
            Broker::Redis => "redis://127.0.0.1:6379",
        };
        Some(
            self.broker_url
                .clone()
                .unwrap_or_else(|| default.to_owned()),
        )
    }

    fn database_url(&self, data: &Path) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| match self.database {
                Database::Sqlite => format!("sqlite:{}", data.join("ferry-demo.db").display()),
                Database::Postgres => "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
            })
    }
}

/// What a finished demo found.
#[derive(Debug)]
pub struct Outcome {
    /// Counted once every order had settled, before the replay.
    pub counts: Counts,
    pub reported: Reported,
    pub database_url: String,
    /// Whether every order settled before the timeout (or an interruption).
    pub settled_in_time: bool,
    pub replay: Option<Replayed>,
}

/// The dead letters' replay after the fix.
#[derive(Debug)]
pub struct Replayed {
    pub progress: ReplayProgress,
    /// Counted after the replay: every order should now be delivered, none applied twice.
    pub counts: Counts,
}

impl Replayed {
    pub fn holds(&self) -> bool {
        self.progress.all_replayed()
            && self.counts.delivered == self.counts.orders
            && self.counts.applied_twice == 0
            && self.counts.stock_mismatches == 0
    }
}

impl Outcome {
    pub fn holds(&self) -> bool {
        self.settled_in_time
            && self.counts.broken_invariants().is_empty()
            && self.replay.as_ref().is_none_or(Replayed::holds)
    }
}

/// `ferry demo`: runs the demo, prints the report and the `ferry dlq` commands; exit code 0
/// only when every invariant holds.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let interrupted = CancellationToken::new();
    tokio::spawn(crate::cli::stop_on_signal(interrupted.clone()));
    let outcome = run_demo(&args, &interrupted).await?;
    print!("{}", report::render(&outcome.counts, &outcome.reported));
    let broken = outcome.counts.broken_invariants();
    if !outcome.settled_in_time {
        println!(
            "\nNot every order settled before the timeout or the interruption; the counts are as found."
        );
    }
    if broken.is_empty() && outcome.settled_in_time {
        println!(
            "\nEvery invariant holds: nothing lost, nothing applied twice, and only the poison orders dead-lettered."
        );
    } else {
        for problem in &broken {
            println!("BROKEN: {problem}");
        }
    }
    if let Some(replay) = &outcome.replay {
        let progress = &replay.progress;
        println!(
            "\nThen the inventory service was fixed (it now carries the POISON items) and the dead letters replayed:"
        );
        println!(
            "  replayed {} of {} ({} failed again); delivered now {} of {} orders; applied twice {}: {}",
            progress.replayed,
            progress.total(),
            progress.failed_again,
            replay.counts.delivered,
            replay.counts.orders,
            replay.counts.applied_twice,
            if replay.holds() { "ok" } else { "FAILED" }
        );
    }
    print_next_steps(&outcome);
    Ok(if outcome.holds() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_next_steps(outcome: &Outcome) {
    let url = &outcome.database_url;
    let table = quickstart::DEAD_LETTER_TABLE;
    let origin = format!("consumer/default/{}", quickstart::CONSUMER);
    if outcome.replay.is_some() {
        println!(
            "\nThe dead letters stay in {table} with their history (failures, replay request, replay):"
        );
        println!("  ferry dlq list --url '{url}' --table {table} --status any");
        println!("  ferry dlq show --url '{url}' --table {table} --seq 1");
    } else {
        println!(
            "\nThe dead letters wait in {table}. Look at them, and replay them once the cause is fixed:"
        );
        println!("  ferry dlq stats  --url '{url}' --table {table}");
        println!("  ferry dlq list   --url '{url}' --table {table} --origin {origin}");
        println!("  ferry dlq show   --url '{url}' --table {table} --seq <SEQ>");
        println!(
            "  ferry dlq replay --url '{url}' --table {table} --origin {origin}   # taken up by the consumer of that origin when it runs"
        );
    }
}

/// Runs the demo to the end (every order settled), the timeout, or `interrupted`.
pub async fn run_demo(args: &DemoArgs, interrupted: &CancellationToken) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        args.poison <= args.orders,
        "--poison {} is more than --orders {}",
        args.poison,
        args.orders
    );
    let data = prepare_data_folder(args)?;
    let database_url = args.database_url(&data);
    let db = DemoDb::connect(args.database, &database_url)
        .await
        .map_err(|error| {
            anyhow::anyhow!("the demo database ({}): {error}", args.database.engine())
        })?;
    db.reset(&database_url)
        .await
        .map_err(|error| anyhow::anyhow!("creating the demo tables: {error}"))?;
    db.stock(&SKUS).await?;

    let inventory = inventory::start(db.clone(), args.failure_rate).await?;
    let tally = inventory.tally.clone();
    let sink_url = format!("http://{}{}", inventory.address, inventory::PATH);

    let mut documents = quickstart::documents()?;
    quickstart::adapt(&mut documents, &sink_url, args.database, args.broker);
    let broker_url = args.broker_url();
    let plan = standalone::plan_documents(&documents, "default", |secrets| {
        secrets.set(
            "default",
            quickstart::DATABASE_SECRET,
            "url",
            database_url.clone(),
        );
        if let Some(url) = &broker_url {
            secrets.set("default", quickstart::BROKER_SECRET, "url", url.clone());
        }
    })?;
    println!(
        "Ferry demo: {} orders ({} poison) into {} ({}), broker {}, inventory service at {sink_url} failing {:.0}% of requests on purpose",
        args.orders,
        args.poison,
        args.database.engine(),
        match args.database {
            Database::Sqlite => data.display().to_string(),
            Database::Postgres => "the database given".to_owned(),
        },
        format!("{:?}", args.broker).to_lowercase(),
        args.failure_rate * 100.0,
    );
    println!("The pipelines are the manifests of examples/quickstart:");

    let stop_workloads = CancellationToken::new();
    let pipelines = Pipelines::start(plan, Listen { base: None }, &stop_workloads).await?;
    print!("{}", standalone::display::start_table(&pipelines, &[]));

    // A RabbitMQ topic exchange drops what no queue is bound to yet (the relay dead-letters it
    // as unroutable), so the orders wait until the consumer has declared and bound its queue.
    wait_until_ready(
        &pipelines,
        Instant::now() + args.timeout.as_std(),
        interrupted,
    )
    .await?;
    let progress = Progress::new(u64::from(args.orders));
    let producer_stop = interrupted.child_token();
    let producer = tokio::spawn(produce(
        db.clone(),
        args.orders,
        args.poison,
        args.rate,
        progress.committed.clone(),
        producer_stop.clone(),
    ));
    let deadline = Instant::now() + args.timeout.as_std();
    let origin = format!("consumer/default/{}", quickstart::CONSUMER);
    let mut settled_in_time = false;
    loop {
        let counts = Counts::gather(&db).await.ok();
        progress.show(&figures(&pipelines), counts.as_ref(), &tally);
        let produced = producer.is_finished();
        if let Some(counts) = &counts
            && produced
            && counts.delivered + counts.dead_poison + counts.dead_other >= counts.orders
        {
            settled_in_time = true;
            break;
        }
        if interrupted.is_cancelled() || Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = interrupted.cancelled() => {}
        }
    }
    producer_stop.cancel();
    let produced = producer.await?;
    progress.finish();
    let counts = Counts::gather(&db).await;
    let replay = match &counts {
        Ok(counts)
            if !args.no_replay
                && settled_in_time
                && counts.dead_poison + counts.dead_other > 0
                && !interrupted.is_cancelled() =>
        {
            inventory.carry_poison_items();
            let progress = replay_dead_letters(
                args.database,
                &database_url,
                &origin,
                deadline.saturating_duration_since(Instant::now()),
            )
            .await?;
            Some(Replayed {
                progress,
                counts: Counts::gather(&db).await?,
            })
        }
        _ => None,
    };
    stop_workloads.cancel();
    let finals = pipelines.wait().await;
    inventory.stop().await;
    if let Err(error) = produced {
        anyhow::bail!("the orders service failed: {error}");
    }
    let counts = counts?;
    for (workload, _, outcome) in &finals {
        if let Err(error) = outcome {
            anyhow::bail!("{} {}: {error}", workload.role(), workload.name());
        }
    }
    let totals = Totals::of(finals.into_iter().map(|(_, reading, _)| reading));
    let reported = Reported {
        published: totals.published,
        retried: totals.retried,
        deduplicated_by_consumer: totals.deduplicated,
        requests_at_service: tally.requests.load(Ordering::Relaxed),
    };
    db.close().await;
    println!();
    Ok(Outcome {
        counts,
        reported,
        database_url,
        settled_in_time,
        replay,
    })
}

/// Asks for every waiting dead letter of `origin` to be replayed, as `ferry dlq replay` does,
/// and waits until the running consumer has delivered them (or `timeout`).
async fn replay_dead_letters(
    database: Database,
    url: &str,
    origin: &str,
    timeout: Duration,
) -> anyhow::Result<ReplayProgress> {
    let engine = match database {
        Database::Sqlite => crate::api::DatabaseEngine::Sqlite,
        Database::Postgres => crate::api::DatabaseEngine::Postgres,
    };
    let store = TableStore::connect_existing(engine, url, quickstart::DEAD_LETTER_TABLE).await?;
    let selection = Selection {
        origin: Some(origin.to_owned()),
        ..Selection::waiting()
    };
    let request = dlq::replay::request(
        &store,
        &selection,
        "ferry demo",
        Some("the inventory service now carries the POISON items"),
    )
    .await?;
    let bar = ProgressBar::new(request.letters).with_style(bar_style());
    bar.set_prefix("replayed");
    let progress = dlq::replay::watch(
        &store,
        &request.id,
        Duration::from_millis(200),
        Some(timeout),
        |progress| bar.set_position(progress.replayed),
    )
    .await?;
    bar.abandon();
    Ok(progress)
}

/// Waits until every workload reports ready: connected to its database and broker, and (a
/// consumer) subscribed.
async fn wait_until_ready(
    pipelines: &Pipelines,
    deadline: Instant,
    interrupted: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let waiting = pipelines.not_ready();
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline || interrupted.is_cancelled() {
            anyhow::bail!(
                "not ready before the timeout: {} (is the broker or database running?)",
                waiting.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The data folder: the one given (an earlier demo's database in it is replaced), or a new
/// temporary one that is kept.
fn prepare_data_folder(args: &DemoArgs) -> anyhow::Result<PathBuf> {
    let folder = match &args.data {
        Some(folder) => {
            std::fs::create_dir_all(folder)
                .map_err(|error| anyhow::anyhow!("--data {}: {error}", folder.display()))?;
            folder.clone()
        }
        None => tempfile::Builder::new()
            .prefix("ferry-demo-")
            .tempdir()?
            .keep(),
    };
    if args.database == Database::Sqlite && args.database_url.is_none() {
        for suffix in ["", "-wal", "-shm"] {
            let file = folder.join(format!("ferry-demo.db{suffix}"));
            match std::fs::remove_file(&file) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    anyhow::bail!("cannot replace {}: {error}", file.display())
                }
                _ => {}
            }
        }
    }
    Ok(folder)
}

/// The orders service: commits `count` orders at `rate` per second, the poison ones spread
/// evenly among them.
async fn produce(
    db: DemoDb,
    count: u32,
    poison: u32,
    rate: u32,
    committed: ProgressBar,
    stop: CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let spacing = count.checked_div(poison).unwrap_or(u32::MAX);
    for index in 0..count {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return Ok(()),
        }
        let is_poison = poison > 0 && index % spacing == spacing / 2 && index / spacing < poison;
        let order = Order {
            order_id: format!("order-{:06}", index + 1),
            sku: if is_poison {
                format!("{}-{}", inventory::POISON_SKU, index + 1)
            } else {
                SKUS[index as usize % SKUS.len()].to_owned()
            },
            quantity: 1 + (index % 3) as i32,
        };
        db.place_order(&order, is_poison).await?;
        committed.inc(1);
    }
    Ok(())
}

/// What the relay and the consumer report now.
fn figures(pipelines: &Pipelines) -> Totals {
    Totals::of(
        pipelines
            .running
            .iter()
            .map(crate::standalone::Running::reading),
    )
}

/// The workloads' own figures the demo shows, summed over relays and consumers.
#[derive(Debug, Default)]
struct Totals {
    published: u64,
    retried: u64,
    dead_lettered: u64,
    deduplicated: u64,
}

impl Totals {
    fn of(readings: impl IntoIterator<Item = Reading>) -> Self {
        let mut totals = Self::default();
        for reading in readings {
            match reading {
                Reading::Relay(relay) => totals.published += relay.published_total.unwrap_or(0),
                Reading::Consumer(consumer) => {
                    totals.retried += consumer.retried_total.unwrap_or(0);
                    totals.dead_lettered += consumer.dead_lettered_total.unwrap_or(0);
                    totals.deduplicated += consumer.deduplicated_total.unwrap_or(0);
                }
            }
        }
        totals
    }
}

/// The look of the demo's progress bars.
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos:>7}/{len}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// The progress bars: committed, published, settled, and a line of what went wrong on purpose.
struct Progress {
    bars: MultiProgress,
    committed: ProgressBar,
    published: ProgressBar,
    settled: ProgressBar,
    notes: ProgressBar,
}

impl Progress {
    fn new(orders: u64) -> Self {
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = bar_style();
        let bar = |prefix: &'static str| {
            bars.add(
                ProgressBar::new(orders)
                    .with_style(style.clone())
                    .with_prefix(prefix),
            )
        };
        let (committed, published, settled) = (bar("committed"), bar("published"), bar("settled"));
        let notes = bars.add(ProgressBar::new_spinner());
        crate::telemetry::show_logs_above(&bars);
        Self {
            bars,
            committed,
            published,
            settled,
            notes,
        }
    }

    fn show(&self, totals: &Totals, counts: Option<&Counts>, tally: &Arc<inventory::Tally>) {
        let Totals {
            published,
            retried,
            dead_lettered,
            ..
        } = totals;
        self.published
            .set_position((*published).min(self.published.length().unwrap_or(0)));
        if let Some(counts) = counts {
            self.settled
                .set_position((counts.delivered + counts.dead_poison + counts.dead_other) as u64);
        }
        self.notes.set_message(format!(
            "retries {retried}, dead letters {dead_lettered}, injected failures {} before and {} after the reservation, poison refusals {}",
            tally.failed_before.load(Ordering::Relaxed),
            tally.failed_after.load(Ordering::Relaxed),
            tally.poison_refusals.load(Ordering::Relaxed),
        ));
    }

    fn finish(&self) {
        for bar in [&self.committed, &self.published, &self.settled, &self.notes] {
            bar.abandon();
        }
        let _ = self.bars.clear();
        crate::telemetry::clear_progress_bars();
    }
}
