//! `ferry bench`: relay and consumer throughput against the raw broker client as a ceiling, and
//! end-to-end latency from COMMIT to a consumer, all against the real servers on this machine;
//! and the operator's reconcilers over many resources in the in-memory API.
//!
//! Every run works on names of its own (outbox table, exchange and queue, stream, stream key,
//! consumer group, idempotency table or key prefix) and removes them at the end, also after a
//! failure, so runs can share the servers with tests.

mod child;
mod consumer;
mod destination;
mod half;
mod latency;
mod operator;
mod readers;
mod relay;
mod report;
mod setup;
mod stats;

use std::process::ExitCode;

pub use operator::{OperatorBenchArgs, OperatorResult};

use crate::{broker::BrokerError, message::Unpublishable};

/// The database every benchmark uses unless told otherwise: the shared test server.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/ferry_test";
/// The Redis server an idempotency store uses unless told otherwise: the shared test server.
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The broker a benchmark publishes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerArg {
    Rabbitmq,
    Nats,
    Redis,
}

impl BrokerArg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rabbitmq => "rabbitmq",
            Self::Nats => "nats",
            Self::Redis => "redis",
        }
    }

    /// The `--broker-url` given, else the local server of this broker.
    pub fn url(self, given: Option<&str>) -> String {
        given.unwrap_or(self.default_url()).to_owned()
    }

    /// The local server of this broker.
    pub fn default_url(self) -> &'static str {
        match self {
            Self::Rabbitmq => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Self::Nats => "nats://127.0.0.1:4222",
            Self::Redis => "redis://127.0.0.1:6379",
        }
    }
}

/// `ferry bench relay`.
#[derive(Debug, clap::Args)]
pub struct RelayBenchArgs {
    /// The broker to publish to.
    #[arg(long, value_enum)]
    pub broker: BrokerArg,
    /// Rows pre-filled into the outbox, and messages the raw client publishes.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Distinct ordering keys (aggregate ids), assigned round-robin.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Approximate size of each JSON payload.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// The PostgreSQL database holding the benchmark's outbox table.
    #[arg(long, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// The broker's URL [default: the local server of `--broker`].
    #[arg(long)]
    pub broker_url: Option<String>,
    /// The relay's `capture.batchSize`.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// The relay's `capture.workers`.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: u32,
    /// Leave the pre-filled table without planner statistics, as right after a bulk load,
    /// instead of running ANALYZE as autovacuum would have on a long-lived outbox.
    #[arg(long)]
    pub skip_analyze: bool,
}

/// `ferry bench latency`.
#[derive(Debug, clap::Args)]
pub struct LatencyBenchArgs {
    /// The broker to publish to.
    #[arg(long, value_enum)]
    pub broker: BrokerArg,
    /// Orders committed per second, evenly spaced.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// How long orders are committed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Distinct ordering keys (customers), assigned round-robin.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Approximate size of each JSON payload.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// The PostgreSQL database holding the benchmark's outbox and orders tables.
    #[arg(long, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// The broker's URL [default: the local server of `--broker`].
    #[arg(long)]
    pub broker_url: Option<String>,
    /// The relay's `capture.batchSize`.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// The relay's `capture.workers`.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: u32,
}

/// `ferry bench half`.
#[derive(Debug, clap::Args)]
pub struct HalfBenchArgs {
    /// The broker the relay publishes to.
    #[arg(long, value_enum)]
    pub broker: BrokerArg,
    /// Producers committing business transactions at the same time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub producers: u32,
    /// Seconds of producing per mode, split in two alternating phases.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Approximate size of each JSON payload.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// The PostgreSQL database holding the benchmark's tables.
    #[arg(long, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// The broker's URL [default: the local server of `--broker`].
    #[arg(long)]
    pub broker_url: Option<String>,
}

/// The idempotency store of `ferry bench consumer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DedupArg {
    /// A table in the PostgreSQL database of `--database-url`.
    Postgres,
    /// Keys in the Redis server of `--redis-url`.
    Redis,
}

impl DedupArg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Redis => "redis",
        }
    }
}

/// How the benchmark's consumer orders deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OrderingArg {
    /// Any order, the Consumer default.
    None,
    /// One message per key at a time, in order.
    PerKey,
}

/// `ferry bench consumer`.
#[derive(Debug, clap::Args)]
pub struct ConsumerBenchArgs {
    /// The broker the messages wait in.
    #[arg(long, value_enum)]
    pub broker: BrokerArg,
    /// Where the consumer records delivered message ids.
    #[arg(long, value_enum, default_value_t = DedupArg::Postgres)]
    pub dedup: DedupArg,
    /// Messages published before the clock starts, for each of the raw client and the consumer.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Distinct ordering keys (aggregate ids), assigned round-robin.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Approximate size of each JSON payload.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// The consumer's `concurrency`: messages at the sink at the same time. The default, 64,
    /// keeps about as many messages moving as the raw client has in flight (its prefetch is
    /// 4 x concurrency); a Consumer's own default is 8.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// The consumer's `ordering` [default: none, the Consumer default].
    #[arg(long, value_enum, default_value_t = OrderingArg::None)]
    pub ordering: OrderingArg,
    /// The broker's URL [default: the local server of `--broker`].
    #[arg(long)]
    pub broker_url: Option<String>,
    /// The PostgreSQL database of `--dedup postgres`.
    #[arg(long, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// The Redis server of `--dedup redis`.
    #[arg(long, default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
}

/// Why a benchmark could not produce a result (a missed target is not one of these).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("rabbitmq: {0}")]
    Rabbitmq(#[from] lapin::Error),
    #[error("nats: {0}")]
    Nats(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("a benchmark row cannot become a message: {0}")]
    Envelope(#[from] Unpublishable),
    #[error("relay process: {0}")]
    Relay(String),
    #[error("consumer process: {0}")]
    Consumer(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Check(String),
}

impl BenchError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    fn nats(error: impl std::fmt::Display) -> Self {
        Self::Nats(error.to_string())
    }
}

/// `ferry bench relay`: see `docs/benchmarks.md`.
pub async fn relay_throughput(args: RelayBenchArgs) -> anyhow::Result<ExitCode> {
    relay::run(args).await
}

/// `ferry bench latency`: see `docs/benchmarks.md`.
pub async fn commit_to_consumer_latency(args: LatencyBenchArgs) -> anyhow::Result<ExitCode> {
    latency::run(args).await
}

/// `ferry bench consumer`: see `docs/benchmarks.md`.
pub async fn consumer_throughput(args: ConsumerBenchArgs) -> anyhow::Result<ExitCode> {
    consumer::run(args).await
}

/// `ferry bench half`: see `docs/benchmarks.md`.
pub async fn half_messages(args: HalfBenchArgs) -> anyhow::Result<ExitCode> {
    half::run(args).await
}

/// `ferry bench operator`: see `docs/benchmarks.md`.
pub async fn operator_reconcile(args: OperatorBenchArgs) -> anyhow::Result<ExitCode> {
    operator::run(args).await
}
