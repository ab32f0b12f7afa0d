//! The `ferry` command line: argument definitions and what each subcommand does.

use std::{
    io::{Write, stdout},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Parser, Subcommand};

use tokio_util::sync::CancellationToken;

use crate::{
    api::DatabaseEngine,
    config, crd, manifest, outbox, relay,
    telemetry::LogFormat,
    validate::{self, FieldError, SecretCheck},
};

/// Reliable messaging pipelines: transactional outbox, relay, idempotent consumers, retries and
/// dead-letter queues.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "FERRY_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log level or filter (`info`, `ferry=debug`); `RUST_LOG` overrides it. Default: `info`,
    /// and `warn` for `ferry demo`, whose own output tells the story.
    #[arg(long, global = true, env = "FERRY_LOG_LEVEL")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log filter: the one given, else the command's default.
    pub fn log_level(&self) -> &str {
        match (&self.log_level, &self.command) {
            (Some(level), _) => level,
            (None, Command::Demo(_)) => "warn",
            (None, _) => "info",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write one file per kind.
    Crd {
        /// Write `ferry.dev_<plural>.yaml` files into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
    },
    /// Check manifests as the API server and the operator would: schema, CEL rules, Ferry's
    /// own checks and references between objects. Exits 1 when anything is wrong.
    Validate {
        /// Files or folders of YAML manifests (folders are read recursively).
        #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Namespace for objects that do not name one.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Also require every Secret a connection names to be among the manifests, with the key.
        #[arg(long)]
        check_secrets: bool,
    },
    /// Run every relay and consumer the manifests describe, in this process and without a
    /// cluster, resolved exactly as the operator resolves them. Connection URLs come from the
    /// Secrets among the manifests, else from FERRY_SECRET_<NAME>_<KEY> variables.
    Run(RunArgs),
    /// Show the whole pattern on an embedded SQLite database, with no servers: orders committed
    /// with their events, relayed, delivered idempotently to a flaky inventory service,
    /// retried, poison events dead-lettered, and a report checked from the databases.
    Demo(crate::demo::DemoArgs),
    /// Run the relay: publish every committed outbox row to its broker topic.
    Relay {
        /// The resolved relay config (YAML), as the operator renders it into a ConfigMap.
        #[arg(long, value_name = "FILE", env = "FERRY_CONFIG")]
        config: PathBuf,
    },
    /// Run a consumer: deliver a topic's messages to a service over HTTP, idempotently, with
    /// retries and a dead-letter queue.
    Consumer {
        /// The resolved consumer config (YAML), as the operator renders it into a ConfigMap.
        #[arg(long, value_name = "FILE", env = "FERRY_CONFIG")]
        config: PathBuf,
    },
    /// Print the resolved config a workload runs with, as the operator renders it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Measure throughput and latency against the real servers, with the raw client as ceiling.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Inspect, replay and discard dead letters in a dead-letter table.
    Dlq {
        #[command(subcommand)]
        command: crate::dlq::command::DlqCommand,
    },
    /// Manage the outbox table.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Run the operator: give each OutboxSource a relay workload and each Consumer a consumer
    /// workload, configured from what they reference.
    Operator(OperatorArgs),
}

/// The flags of `ferry run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Files or folders of YAML manifests (folders are read recursively).
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Namespace for objects that do not name one.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Serve each workload's `/healthz`, `/readyz`, `/metrics` and `/status` from this address
    /// upwards (one port each, in the order of the table printed at start). Without it each
    /// gets a free loopback port.
    #[arg(long, value_name = "ADDRESS")]
    pub listen: Option<std::net::SocketAddr>,
    /// When standard error is not a terminal, print the status lines this often.
    #[arg(long, default_value = "10s")]
    pub status_interval: crate::api::duration::Duration,
    /// First create each OutboxSource's outbox table where it is missing, as `ferry outbox
    /// migrate` does (safe to repeat).
    #[arg(long)]
    pub migrate: bool,
}

/// The flags of `ferry operator` (the chart's spellings are accepted as aliases).
#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    /// Watch this namespace only; repeat it, or separate names with commas, for several.
    /// Without it, every namespace is watched.
    #[arg(
        long = "namespace",
        visible_alias = "namespaces",
        value_name = "NAMESPACE",
        value_delimiter = ',',
        conflicts_with = "all_namespaces"
    )]
    pub namespaces: Vec<String>,
    /// Watch every namespace (the default when no --namespace is given).
    #[arg(long)]
    pub all_namespaces: bool,
    /// The image of the relay and consumer workloads when a resource names none.
    #[arg(
        long = "image",
        visible_alias = "workload-image",
        env = "FERRY_WORKLOAD_IMAGE",
        default_value = concat!("ghcr.io/ferry-dev/ferry:", env!("CARGO_PKG_VERSION"))
    )]
    pub image: String,
    /// Where `/healthz`, `/readyz`, `/metrics` and `/status` are served.
    #[arg(long, default_value = "0.0.0.0:8080", conflicts_with = "metrics_port")]
    pub metrics_address: std::net::SocketAddr,
    /// Serve them on `0.0.0.0:PORT` instead.
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<u16>,
    /// Run the controllers only while holding the `ferry-operator` Lease in the namespace
    /// `POD_NAMESPACE`, so that several replicas are safe (`--leader-election=false`: always).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_election: bool,
}

impl OperatorArgs {
    pub fn options(&self) -> crate::operator::controller::OperatorOptions {
        use crate::operator::{controller::Scope, reconcile::Settings};
        let scope = if self.namespaces.is_empty() {
            Scope::All
        } else {
            let mut namespaces = self.namespaces.clone();
            namespaces.sort();
            namespaces.dedup();
            Scope::Namespaces(namespaces)
        };
        let metrics_address = match self.metrics_port {
            Some(port) => std::net::SocketAddr::from(([0, 0, 0, 0], port)),
            None => self.metrics_address,
        };
        crate::operator::controller::OperatorOptions {
            scope,
            settings: Settings {
                default_image: self.image.clone(),
                probe: std::sync::Arc::new(crate::operator::probe::HttpProbe::new()),
            },
            metrics_address,
            leader_election: self.leader_election,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// The relay config of an OutboxSource: `ferry relay --config` reads it. Connection URLs
    /// are read from environment variables named in the output, never written into it.
    Relay {
        /// Files or folders with the OutboxSource and everything it references.
        #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// The OutboxSource's name.
        name: String,
        /// Its namespace (and the default for objects without one).
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// The consumer config of a Consumer: `ferry consumer --config` reads it. Connection URLs
    /// are read from environment variables named in the output, never written into it.
    Consumer {
        /// Files or folders with the Consumer and everything it references.
        #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// The Consumer's name.
        name: String,
        /// Its namespace (and the default for objects without one).
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Relay throughput from a pre-filled outbox, against the raw client publishing the same
    /// messages with the same confirmations; also the relay's peak memory.
    Relay(crate::bench::RelayBenchArgs),
    /// End-to-end latency from COMMIT to a broker consumer receiving the message, at a fixed rate.
    Latency(crate::bench::LatencyBenchArgs),
    /// Consumer throughput delivering a backlog to a sink with idempotency on, against the raw
    /// client reading and acknowledging the same messages; also the consumer's peak memory.
    Consumer(crate::bench::ConsumerBenchArgs),
    /// Business transactions per second from concurrent producers with transactional (half)
    /// messages through the relay's API, against the same transactions with the outbox table.
    Half(crate::bench::HalfBenchArgs),
    /// The operator's reconcilers over many OutboxSources and Consumers in the in-memory API:
    /// wall time to steady state, API writes of a second pass over unchanged resources (target
    /// 0), and peak memory.
    Operator(crate::bench::OperatorBenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Create the outbox table, its indexes and (PostgreSQL) its triggers; safe to run again.
    Migrate {
        /// The database engine.
        #[arg(long, value_enum)]
        engine: EngineArg,
        /// The database URL.
        #[arg(long, env = "FERRY_DATABASE_URL", hide_env_values = true)]
        url: Option<String>,
        /// The outbox table, optionally `schema.table`.
        #[arg(long, default_value = crate::api::outbox_source::DEFAULT_OUTBOX_TABLE)]
        table: String,
        /// Print the SQL instead of running it.
        #[arg(long)]
        print: bool,
    },
}

/// Engines as command-line values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum EngineArg {
    Postgres,
    Mysql,
    Sqlite,
}

impl From<EngineArg> for DatabaseEngine {
    fn from(engine: EngineArg) -> Self {
        match engine {
            EngineArg::Postgres => DatabaseEngine::Postgres,
            EngineArg::Mysql => DatabaseEngine::Mysql,
            EngineArg::Sqlite => DatabaseEngine::Sqlite,
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crd { output_dir: None } => {
            write!(stdout().lock(), "{}", crd::all_crds_yaml()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crd {
            output_dir: Some(dir),
        } => {
            let mut out = stdout().lock();
            for file in crd::write_crd_files(&dir)? {
                writeln!(out, "wrote {}", dir.join(file.name).display())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            paths,
            namespace,
            check_secrets,
        } => validate(&paths, &namespace, check_secrets),
        Command::Relay { config } => run_relay(&config).await,
        Command::Run(args) => run_standalone(args).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Config {
            command:
                ConfigCommand::Relay {
                    paths,
                    name,
                    namespace,
                },
        } => render_relay_config(&paths, &name, &namespace),
        Command::Config {
            command:
                ConfigCommand::Consumer {
                    paths,
                    name,
                    namespace,
                },
        } => render_consumer_config(&paths, &name, &namespace),
        Command::Consumer { config } => run_consumer(&config).await,
        Command::Dlq { command } => crate::dlq::command::run(command).await,
        Command::Bench {
            command: BenchCommand::Relay(args),
        } => crate::bench::relay_throughput(args).await,
        Command::Bench {
            command: BenchCommand::Latency(args),
        } => crate::bench::commit_to_consumer_latency(args).await,
        Command::Bench {
            command: BenchCommand::Consumer(args),
        } => crate::bench::consumer_throughput(args).await,
        Command::Bench {
            command: BenchCommand::Operator(args),
        } => crate::bench::operator_reconcile(args).await,
        Command::Bench {
            command: BenchCommand::Half(args),
        } => crate::bench::half_messages(args).await,
        Command::Outbox {
            command:
                OutboxCommand::Migrate {
                    engine,
                    url,
                    table,
                    print,
                },
        } => migrate_outbox(engine.into(), url, &table, print).await,
        Command::Operator(args) => run_operator(&args).await,
    }
}

async fn run_operator(args: &OperatorArgs) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    crate::operator::controller::run(args.options(), shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// The objects of the manifests at `paths`, or every problem with them.
fn admitted_catalog(paths: &[PathBuf], namespace: &str) -> anyhow::Result<validate::Catalog> {
    let documents = manifest::load(paths)?;
    let admitted = manifest::admit(&documents, namespace, SecretCheck::Skip);
    if !admitted.is_valid() {
        for problem in &admitted.problems {
            eprintln!("{problem}");
        }
        anyhow::bail!("the manifests have {} problems", admitted.problems.len());
    }
    Ok(admitted.catalog)
}

fn resolution_error(
    kind: &str,
    namespace: &str,
    name: &str,
    errors: &[FieldError],
) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    anyhow::anyhow!("{kind} {namespace}/{name}: {}", lines.join("; "))
}

/// Prints a resolved config with a header naming the command that reads it and the
/// environment variables its connection URLs come from.
fn print_config<T: serde::Serialize>(
    kind: &str,
    urls: Vec<&config::SecretSource>,
    config: &T,
) -> anyhow::Result<ExitCode> {
    let mut out = stdout().lock();
    writeln!(
        out,
        "# Resolved by `ferry config {kind}` from the manifests; run with `ferry {kind} --config FILE`."
    )?;
    writeln!(
        out,
        "# Connection URLs come from these environment variables:"
    )?;
    let variables: std::collections::BTreeSet<String> =
        urls.into_iter().map(ToString::to_string).collect();
    for variable in variables {
        writeln!(out, "#   {variable}")?;
    }
    write!(out, "{}", config::to_yaml(config)?)?;
    Ok(ExitCode::SUCCESS)
}

fn render_relay_config(paths: &[PathBuf], name: &str, namespace: &str) -> anyhow::Result<ExitCode> {
    let catalog = admitted_catalog(paths, namespace)?;
    let relay = config::resolve_relay(&catalog, namespace, name, &config::secret_from_env)
        .map_err(|errors| resolution_error("OutboxSource", namespace, name, &errors))?;
    print_config("relay", relay.secret_sources(), &relay)
}

fn render_consumer_config(
    paths: &[PathBuf],
    name: &str,
    namespace: &str,
) -> anyhow::Result<ExitCode> {
    let catalog = admitted_catalog(paths, namespace)?;
    let consumer = config::resolve_consumer(&catalog, namespace, name, &config::secret_from_env)
        .map_err(|errors| resolution_error("Consumer", namespace, name, &errors))?;
    print_config("consumer", consumer.secret_sources(), &consumer)
}

async fn run_standalone(args: RunArgs) -> anyhow::Result<ExitCode> {
    use crate::standalone::{Listen, Pipelines, display, load_plan};
    let plan = load_plan(&args.paths, &args.namespace, |_| {})?;
    if args.migrate {
        crate::standalone::migrate_outboxes(&plan).await?;
    }
    let suspended = plan.suspended.clone();
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let pipelines = Pipelines::start(plan, Listen { base: args.listen }, &shutdown).await?;
    print!("{}", display::start_table(&pipelines, &suspended));
    if pipelines.running.is_empty() {
        println!("nothing to run: every object is suspended");
        return Ok(ExitCode::SUCCESS);
    }
    println!("running; Ctrl-C (SIGINT) or SIGTERM stops every workload after its in-flight work");
    display::follow(&pipelines, args.status_interval.as_std(), &shutdown).await;
    let finals = pipelines.wait().await;
    println!("stopped; final figures:");
    for line in display::final_lines(&finals) {
        println!("{line}");
    }
    let failed: Vec<&str> = finals
        .iter()
        .filter_map(|(_, _, outcome)| outcome.as_ref().err().map(String::as_str))
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("{}", failed.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_consumer(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config: config::ConsumerConfig = config::load(path)?;
    let shutdown = CancellationToken::new();
    let consumer = crate::consumer::start(config, shutdown.clone()).await?;
    tokio::spawn(stop_on_signal(shutdown));
    consumer.wait().await.map_err(anyhow::Error::msg)?;
    Ok(ExitCode::SUCCESS)
}

async fn run_relay(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config: config::RelayConfig = config::load(path)?;
    let shutdown = CancellationToken::new();
    let relay = relay::start(config, shutdown.clone()).await?;
    tokio::spawn(stop_on_signal(shutdown));
    relay.wait().await.map_err(anyhow::Error::msg)?;
    Ok(ExitCode::SUCCESS)
}

/// Cancels `shutdown` on SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C).
pub async fn stop_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM: finishing in-flight work"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: finishing in-flight work"),
    }
    shutdown.cancel();
}

async fn migrate_outbox(
    engine: DatabaseEngine,
    url: Option<String>,
    table: &str,
    print: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(problem) = crate::validate::check_table_name(table) {
        anyhow::bail!("--table: {problem}");
    }
    if print {
        let mut out = stdout().lock();
        for statement in outbox::schema::outbox_ddl(engine, table) {
            writeln!(out, "{statement};\n")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let url = url.ok_or_else(|| {
        anyhow::anyhow!("--url (or FERRY_DATABASE_URL) is required unless --print is given")
    })?;
    outbox::migrate::migrate(engine, &url, table)
        .await
        .map_err(|error| anyhow::anyhow!("migrating outbox table {table}: {error}"))?;
    writeln!(
        stdout().lock(),
        "outbox table {table} is ready ({})",
        engine.as_str()
    )?;
    Ok(ExitCode::SUCCESS)
}

fn validate(paths: &[PathBuf], namespace: &str, check_secrets: bool) -> anyhow::Result<ExitCode> {
    let documents = manifest::load(paths)?;
    let secrets = if check_secrets {
        SecretCheck::Check
    } else {
        SecretCheck::Skip
    };
    let admitted = manifest::admit(&documents, namespace, secrets);
    let mut out = stdout().lock();
    for (origin, what) in &admitted.ignored {
        writeln!(out, "{origin}: skipped {what} (not a Ferry object)")?;
    }
    for problem in &admitted.problems {
        writeln!(out, "{problem}")?;
    }
    let catalog = &admitted.catalog;
    let accepted = catalog.outbox_sources.len()
        + catalog.broker_topics.len()
        + catalog.retry_policies.len()
        + catalog.dead_letter_queues.len()
        + catalog.consumers.len();
    if admitted.is_valid() {
        writeln!(
            out,
            "{accepted} Ferry objects valid, {} Secrets read",
            catalog.secrets.len()
        )?;
        Ok(ExitCode::SUCCESS)
    } else {
        let count = admitted.problems.len();
        writeln!(
            out,
            "{count} problem{} found",
            if count == 1 { "" } else { "s" }
        )?;
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::controller::Scope;

    fn operator(args: &[&str]) -> OperatorArgs {
        let cli = Cli::try_parse_from(["ferry", "operator"].iter().chain(args))
            .unwrap_or_else(|error| panic!("{args:?}: {error}"));
        match cli.command {
            Command::Operator(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn operator_accepts_the_flags_the_chart_passes() {
        let args = operator(&[
            "--metrics-port",
            "9090",
            "--workload-image",
            "registry.example/ferry:1",
            "--namespaces",
            "shop,billing",
            "--leader-election=false",
        ]);
        let options = args.options();
        assert_eq!(
            options.scope,
            Scope::Namespaces(vec!["billing".into(), "shop".into()])
        );
        assert_eq!(options.settings.default_image, "registry.example/ferry:1");
        assert_eq!(options.metrics_address.to_string(), "0.0.0.0:9090");
        assert!(!options.leader_election);
        assert!(operator(&[]).options().leader_election);
    }

    #[test]
    fn operator_watches_every_namespace_unless_told_otherwise() {
        assert_eq!(operator(&[]).options().scope, Scope::All);
        assert_eq!(operator(&["--all-namespaces"]).options().scope, Scope::All);
        let repeated = operator(&["--namespace", "a", "--namespace", "b", "--image", "i"]);
        assert_eq!(
            repeated.options().scope,
            Scope::Namespaces(vec!["a".into(), "b".into()])
        );
        assert!(
            Cli::try_parse_from(["ferry", "operator", "--namespace", "a", "--all-namespaces"])
                .is_err()
        );
    }
}
