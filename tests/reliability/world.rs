//! One scenario's world, isolated from every other: a PostgreSQL cluster (initdb), a broker
//! server and, when the orders service's database is MySQL, a MariaDB server of its own, on
//! free ports; the pipeline's manifests resolved into relay and consumer
//! configs exactly as `ferry run` and the operator resolve them; the relay and the consumer as
//! real `ferry relay` and `ferry consumer` child processes that can be killed and restarted;
//! and the orders service committing a steady load.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ferry::{
    config::{ConsumerConfig, RelayConfig},
    outbox::producer::{NewEvent, enqueue},
    standalone::{self, WorkloadConfig},
};
use serde_json::{Value, json};
use sqlx::{MySqlPool, PgPool, mysql::MySqlPoolOptions, postgres::PgPoolOptions};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::checker::Counts;
use crate::support::{
    free_port,
    servers::{
        PrivateNats, PrivateRedis, mariadb::PrivateMariadb, postgres::PrivatePostgres,
        rabbitmq::PrivateRabbitMq,
    },
};

/// The password in the database URL the workloads are given (the private cluster trusts every
/// local connection, so any password works): it must never appear in a log line or `/status`.
pub const SECRET: &str = "Sekr1t-pw-4c1d";

pub const ORDERS: &str = "orders";
pub const OUTBOX: &str = "ferry_outbox";
pub const DEAD_LETTERS: &str = "ferry_dead_letters";
pub const INBOX: &str = "service_inbox";
pub const LEDGER: &str = "service_ledger";
/// The OutboxSource's `capture.maxMessageBytes`: an oversized row is dead-lettered.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// The broker of a scenario, a private server of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broker {
    Nats,
    Redis,
    Rabbitmq,
    /// The `sql` queue table, in the scenario's PostgreSQL.
    Sql,
}

/// Where the orders service commits its orders with their outbox rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The scenario's PostgreSQL, which also holds everything else.
    Postgres,
    /// A MariaDB server of the scenario's own; the idempotency store, the dead letters and the
    /// receiving service stay in PostgreSQL.
    Mysql,
}

/// What a scenario varies.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub broker: Broker,
    /// The Consumer's `ordering`: per key, or none.
    pub ordered: bool,
    pub source: Source,
}

/// The orders service's database: its orders and its outbox.
#[derive(Clone)]
pub enum SourcePool {
    Postgres(PgPool),
    Mysql(MySqlPool),
}

/// The scenario's broker server.
pub enum BrokerServer {
    Nats(PrivateNats),
    Redis(PrivateRedis),
    Rabbitmq(PrivateRabbitMq),
    /// No server of its own: the queue table is in the scenario's database.
    InDatabase,
}

impl BrokerServer {
    async fn launch(broker: Broker) -> Self {
        match broker {
            Broker::Nats => Self::Nats(PrivateNats::launch().await.expect("a private nats-server")),
            Broker::Redis => Self::Redis(
                PrivateRedis::launch()
                    .await
                    .expect("a private redis-server"),
            ),
            Broker::Rabbitmq => Self::Rabbitmq(
                PrivateRabbitMq::launch()
                    .await
                    .expect("a private RabbitMQ node"),
            ),
            Broker::Sql => Self::InDatabase,
        }
    }

    fn url(&self) -> String {
        match self {
            Self::Nats(server) => server.url(),
            Self::Redis(server) => server.url(),
            Self::Rabbitmq(server) => server.url(),
            Self::InDatabase => String::new(),
        }
    }

    pub async fn stop(&mut self) {
        match self {
            Self::Nats(server) => server.stop().await,
            Self::Redis(server) => server.stop().await,
            Self::Rabbitmq(server) => server.stop().await,
            Self::InDatabase => panic!("the sql queue is in the database: restart that"),
        }
        .expect("stop the broker");
    }

    pub async fn start(&mut self) {
        match self {
            Self::Nats(server) => server.start().await,
            Self::Redis(server) => server.start().await,
            Self::Rabbitmq(server) => server.start().await,
            Self::InDatabase => panic!("the sql queue is in the database: restart that"),
        }
        .expect("start the broker again");
    }
}

pub struct World {
    pub postgres: PrivatePostgres,
    pub broker: BrokerServer,
    /// The scenario's PostgreSQL: everything but a MySQL source's orders and outbox.
    pub pool: PgPool,
    /// The MariaDB server of a MySQL source.
    pub mariadb: Option<PrivateMariadb>,
    pub source: SourcePool,
    pub relay: RelayConfig,
    pub consumer: ConsumerConfig,
    dir: tempfile::TempDir,
}

impl World {
    pub async fn launch(sink_url: &str, shape: Shape) -> Self {
        let postgres = PrivatePostgres::launch()
            .await
            .expect("a private PostgreSQL");
        let broker = BrokerServer::launch(shape.broker).await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&postgres.url())
            .await
            .expect("connect to the private PostgreSQL");
        // With a MySQL source the checker copies the orders here, to compare them with the
        // service's ledger and the dead letters in one database.
        for statement in [
            format!(
                "CREATE TABLE {ORDERS} (seq BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, n INT NOT NULL, \
                 event_id TEXT NOT NULL, poison BOOLEAN NOT NULL)"
            ),
            format!(
                "CREATE TABLE {LEDGER} (seq BIGSERIAL PRIMARY KEY, message_id TEXT NOT NULL, \
                 key TEXT NOT NULL, n INT NOT NULL)"
            ),
        ]
        .into_iter()
        .chain(ferry::consumer::inbox::inbox_ddl(
            ferry::api::DatabaseEngine::Postgres,
            INBOX,
        )) {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&pool)
                .await
                .expect("create the scenario's tables");
        }
        let secret_url = postgres
            .url()
            .replace("postgres@", &format!("postgres:{SECRET}@"));
        let (mariadb, source, source_url) = match shape.source {
            Source::Postgres => {
                ferry::outbox::migrate::migrate(
                    ferry::api::DatabaseEngine::Postgres,
                    &postgres.url(),
                    OUTBOX,
                )
                .await
                .expect("migrate the outbox");
                (None, SourcePool::Postgres(pool.clone()), None)
            }
            Source::Mysql => {
                let (mariadb, pool, url) = launch_mysql_source().await;
                (Some(mariadb), SourcePool::Mysql(pool), Some(url))
            }
        };
        let urls = Urls {
            database: &secret_url,
            source: source_url.as_deref(),
            broker: &broker.url(),
            sink: sink_url,
        };
        let documents = crate::support::documents("reliability.yaml", manifests(&urls, shape));
        let plan = standalone::plan_documents(&documents, "reliability", |_| {})
            .unwrap_or_else(|error| panic!("the scenario's manifests: {error}"));
        let (mut relay, mut consumer) = (None, None);
        for workload in plan.workloads {
            match workload.config {
                WorkloadConfig::Relay(config) => relay = Some(*config),
                WorkloadConfig::Consumer(config) => consumer = Some(*config),
            }
        }
        let mut relay = relay.expect("a relay");
        let mut consumer = consumer.expect("a consumer");
        relay.http.listen = loopback_port();
        consumer.http.listen = loopback_port();
        Self {
            postgres,
            broker,
            pool,
            mariadb,
            source,
            relay,
            consumer,
            dir: tempfile::tempdir().expect("a temporary folder"),
        }
    }

    pub async fn start_relay(&self) -> Workload {
        Workload::start(
            "relay",
            &ferry::config::to_yaml(&self.relay).expect("YAML"),
            self.relay.http.listen,
            self.dir.path(),
        )
        .await
    }

    pub async fn start_consumer(&self) -> Workload {
        Workload::start(
            "consumer",
            &ferry::config::to_yaml(&self.consumer).expect("YAML"),
            self.consumer.http.listen,
            self.dir.path(),
        )
        .await
    }

    /// The checker's counts: with a MySQL source its orders are first copied into PostgreSQL,
    /// and the outbox is counted where it is.
    pub async fn counts(&self) -> Result<Counts, sqlx::Error> {
        let mut counts = match &self.source {
            SourcePool::Postgres(_) => Counts::read(&self.pool).await?,
            SourcePool::Mysql(source) => {
                // Every order, every time: a copy by "seq above the last one" could miss an
                // order whose AUTO_INCREMENT value was taken before a later one's commit.
                let orders: Vec<(i64, String, i32, String, bool)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT seq, `key`, n, event_id, poison FROM {ORDERS}"
                    )))
                    .fetch_all(source)
                    .await?;
                let (mut seqs, mut keys, mut ns, mut ids, mut poison) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for (seq, key, n, id, refused) in orders {
                    seqs.push(seq);
                    keys.push(key);
                    ns.push(n);
                    ids.push(id);
                    poison.push(refused);
                }
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {ORDERS} (seq, key, n, event_id, poison) \
                     SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::bool[]) \
                     ON CONFLICT (seq) DO NOTHING"
                )))
                .bind(seqs)
                .bind(keys)
                .bind(ns)
                .bind(ids)
                .bind(poison)
                .execute(&self.pool)
                .await?;
                Counts::read(&self.pool).await?
            }
        };
        let pending = format!("SELECT COUNT(*) FROM {OUTBOX}");
        counts.outbox_pending = match &self.source {
            SourcePool::Postgres(pool) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(pending))
                    .fetch_one(pool)
                    .await?
            }
            SourcePool::Mysql(pool) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(pending))
                    .fetch_one(pool)
                    .await?
            }
        };
        Ok(counts)
    }
}

/// A private MariaDB with the orders table and the outbox, and a URL with a password for the
/// relay.
async fn launch_mysql_source() -> (PrivateMariadb, MySqlPool, String) {
    let mariadb = PrivateMariadb::launch().await.expect("a private MariaDB");
    let url = mariadb
        .user("ferry", SECRET)
        .await
        .expect("a MariaDB user for the relay");
    let pool = MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&mariadb.url())
        .await
        .expect("connect to the private MariaDB");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {ORDERS} (seq BIGINT AUTO_INCREMENT PRIMARY KEY, `key` VARCHAR(64) NOT NULL, \
         n INT NOT NULL, event_id VARCHAR(64) NOT NULL, poison BOOLEAN NOT NULL)"
    )))
    .execute(&pool)
    .await
    .expect("create the orders table in MariaDB");
    ferry::outbox::migrate::migrate(ferry::api::DatabaseEngine::Mysql, &mariadb.url(), OUTBOX)
        .await
        .expect("migrate the MySQL outbox");
    (mariadb, pool, url)
}

fn loopback_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port().expect("a free port")))
}

/// Where everything is, as the Secrets give it.
struct Urls<'a> {
    /// The scenario's PostgreSQL, with the password.
    database: &'a str,
    /// A MySQL source's database, with the password.
    source: Option<&'a str>,
    broker: &'a str,
    sink: &'a str,
}

/// The pipeline as a user writes it, in the namespace `reliability`.
fn manifests(urls: &Urls<'_>, shape: Shape) -> Vec<Value> {
    let meta = |name: &str| json!({"name": name});
    let db = |table: &str| json!({"engine": "postgres", "connection": {"secretRef": {"name": "db"}}, "table": table});
    let (source, notify) = match urls.source {
        Some(_) => (
            json!({"engine": "mysql", "connection": {"secretRef": {"name": "source-db"}}, "table": OUTBOX}),
            false,
        ),
        None => (db(OUTBOX), true),
    };
    let mut documents = vec![
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta("db"), "stringData": {"url": urls.database}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta("broker"), "stringData": {"url": urls.broker}}),
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "BrokerTopic", "metadata": meta("orders"),
            "spec": match shape.broker {
                Broker::Nats => json!({
                    "broker": "nats", "connection": {"secretRef": {"name": "broker"}}, "provision": true,
                    "nats": {"stream": "ORDERS", "subjects": ["orders.>"],
                             "subject": "orders.{aggregateType}.{eventType}",
                             "storage": "file", "duplicateWindow": "2m"},
                }),
                Broker::Redis => json!({
                    "broker": "redis", "connection": {"secretRef": {"name": "broker"}}, "provision": true,
                    "redis": {"stream": "orders"},
                }),
                Broker::Sql => json!({
                    "broker": "sql", "connection": {"secretRef": {"name": "db"}}, "provision": true,
                    "sql": {"table": "ferry_queue", "queue": "orders"},
                }),
                Broker::Rabbitmq => json!({
                    "broker": "rabbitmq", "connection": {"secretRef": {"name": "broker"}}, "provision": true,
                    "rabbitmq": {"exchange": "orders", "exchangeType": "topic",
                                 "routingKey": "{aggregateType}.{eventType}"},
                }),
            },
        }),
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "RetryPolicy", "metadata": meta("publish"),
            "spec": {"maxAttempts": 1000, "initialBackoff": "50ms", "multiplier": 2, "maxBackoff": "1s", "jitter": "Full"},
        }),
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "RetryPolicy", "metadata": meta("deliver"),
            "spec": {"maxAttempts": 30, "initialBackoff": "20ms", "multiplier": 2, "maxBackoff": "500ms",
                     "jitter": "Full", "attemptTimeout": "5s"},
        }),
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "DeadLetterQueue", "metadata": meta("dead-letters"),
            "spec": {"store": {"database": db(DEAD_LETTERS)}},
        }),
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "OutboxSource", "metadata": meta("orders"),
            "spec": {
                "database": source,
                "capture": {"pollInterval": "200ms", "batchSize": 100, "notify": notify,
                            "maxMessageBytes": MAX_MESSAGE_BYTES},
                "ordering": "PerKey",
                "cleanup": {"mode": "Delete"},
                "routes": [{"name": "orders", "match": {"aggregateType": "Order"}, "topicRef": {"name": "orders"}}],
                "retryPolicyRef": {"name": "publish"},
                "deadLetterQueueRef": {"name": "dead-letters"},
            },
        }),
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Consumer", "metadata": meta("service"),
            "spec": {
                "topicRef": {"name": "orders"},
                "sink": {"url": urls.sink, "timeout": "5s"},
                "concurrency": 8,
                "ordering": if shape.ordered { "PerKey" } else { "None" },
                "idempotency": {"database": db("ferry_processed"), "window": "24h"},
                "retryPolicyRef": {"name": "deliver"},
                "deadLetterQueueRef": {"name": "dead-letters"},
            },
        }),
    ];
    if let Some(url) = urls.source {
        documents.push(json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta("source-db"), "stringData": {"url": url}}));
    }
    documents
}

/// `ferry relay` or `ferry consumer` as a child process.
pub struct Workload {
    role: &'static str,
    config: PathBuf,
    /// Standard output and error of every process of this workload, appended.
    log: PathBuf,
    address: SocketAddr,
    child: Child,
    pub kills: u32,
}

impl Workload {
    async fn start(
        role: &'static str,
        yaml: &str,
        address: SocketAddr,
        dir: &std::path::Path,
    ) -> Self {
        let config = dir.join(format!("{role}.yaml"));
        std::fs::write(&config, yaml).expect("write the config");
        let log = dir.join(format!("{role}.log"));
        let child = spawn(role, &config, &log);
        let workload = Self {
            role,
            config,
            log,
            address,
            child,
            kills: 0,
        };
        workload.wait_until_serving().await;
        workload
    }

    async fn wait_until_serving(&self) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(self.address).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} did not serve {} within 10 s", self.role, self.address);
    }

    /// SIGKILL, then a new process with the same config.
    pub async fn kill_and_restart(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reap the killed process");
        self.kills += 1;
        self.child = spawn(self.role, &self.config, &self.log);
        self.wait_until_serving().await;
    }

    /// Everything its processes wrote.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its `/status` document, as text (empty while it does not answer).
    pub async fn status(&self) -> String {
        crate::support::try_http_get(self.address, "/status")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The process's peak resident memory so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = self
            .child
            .id()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// SIGTERM, and the exit status once it has finished its in-flight work.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within 30 s of SIGTERM", self.role))
            .expect("wait for the process")
    }
}

fn spawn(role: &str, config: &std::path::Path, log: &std::path::Path) -> Child {
    let append = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the workload's log")
    };
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg(role)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "ferry=info")
        .stdout(append())
        .stderr(append())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("spawn ferry {role}: {error}"))
}

/// What a committed row is made to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Row {
    Good,
    /// The service refuses it (422).
    Poison,
    /// No route matches its aggregate type: the relay dead-letters it.
    Unroutable,
    /// Larger than `maxMessageBytes`: the relay dead-letters it.
    Oversized,
    /// A payload that is not JSON: the relay dead-letters it. Only where the outbox column is
    /// text (MySQL); PostgreSQL's `jsonb` refuses it at the producer's INSERT.
    NotJson,
}

impl Row {
    /// Every `poison_every`-th row is poison, and two rows in each 250 are malformed (three
    /// with `text_payloads`).
    fn of(number: u64, poison_every: u64, text_payloads: bool) -> Self {
        match number % 250 {
            124 => Self::Unroutable,
            249 => Self::Oversized,
            187 if text_payloads => Self::NotJson,
            _ if poison_every > 0 && number % poison_every == poison_every - 1 => Self::Poison,
            _ => Self::Good,
        }
    }
}

/// The orders service: commits orders over `keys` keys, each with its outbox event in one
/// transaction, one every `interval`; every `poison_every`-th is one the service will refuse,
/// and a few are rows the relay cannot publish (no route, too large). All but the good ones are
/// marked `poison`: they must end in the dead-letter table, and nothing else may.
pub struct Load {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<u64>,
}

impl Load {
    pub fn start(pool: SourcePool, keys: usize, interval: Duration, poison_every: u64) -> Self {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut next = vec![0_i32; keys];
            let mut committed = 0_u64;
            let mut ticker = tokio::time::interval(interval);
            while !stopped.is_cancelled() {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.cancelled() => break,
                }
                let index = (committed as usize) % keys;
                let key = format!("key-{index}");
                let n = next[index];
                let row = Row::of(
                    committed,
                    poison_every,
                    matches!(pool, SourcePool::Mysql(_)),
                );
                let event_id = uuid::Uuid::now_v7();
                let done = match commit(&pool, &key, n, row, event_id).await {
                    Ok(()) => true,
                    // A commit whose answer was lost (the server went down meanwhile) may have
                    // happened: retrying blindly would commit the order twice.
                    Err(_) => committed_after_all(&pool, event_id).await,
                };
                if done {
                    next[index] += 1;
                    committed += 1;
                }
            }
            committed
        });
        Self { stop, task }
    }

    /// Stops the load; how many orders committed.
    pub async fn stop(self) -> u64 {
        self.stop.cancel();
        self.task.await.expect("the load task")
    }
}

/// Whether the order of `event_id` is in the database, asked until the database answers.
async fn committed_after_all(pool: &SourcePool, event_id: uuid::Uuid) -> bool {
    let id = event_id.to_string();
    for _ in 0..600 {
        let found: Result<i64, sqlx::Error> = match pool {
            SourcePool::Postgres(pool) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {ORDERS} WHERE event_id = $1"
                )))
                .bind(&id)
                .fetch_one(pool)
                .await
            }
            SourcePool::Mysql(pool) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {ORDERS} WHERE event_id = ?"
                )))
                .bind(&id)
                .fetch_one(pool)
                .await
            }
        };
        if let Ok(found) = found {
            return found > 0;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the database never answered whether order {event_id} committed");
}

async fn commit(
    pool: &SourcePool,
    key: &str,
    n: i32,
    row: Row,
    event_id: uuid::Uuid,
) -> Result<(), sqlx::Error> {
    let poison = row != Row::Good;
    let aggregate = if row == Row::Unroutable {
        "Unknown"
    } else {
        "Order"
    };
    let padding = if row == Row::Oversized {
        "x".repeat(MAX_MESSAGE_BYTES * 2)
    } else {
        String::new()
    };
    let payload = json!({"key": key, "n": n, "poison": row == Row::Poison, "padding": padding});
    let mut event = NewEvent::json(aggregate, key, "order.created", &payload)
        .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    event.id = event_id;
    if row == Row::NotJson {
        event.payload = format!("{{\"key\": \"{key}\", \"n\": {n}, truncated");
    }
    // The same transaction on either engine: only the pool type and the placeholders differ.
    macro_rules! order_with_event {
        ($pool:expr, $insert:expr) => {{
            let mut tx = $pool.begin().await?;
            sqlx::query(sqlx::AssertSqlSafe($insert))
                .bind(key)
                .bind(n)
                .bind(event.id.to_string())
                .bind(poison)
                .execute(&mut *tx)
                .await?;
            enqueue(&mut *tx, OUTBOX, &event).await?;
            tx.commit().await
        }};
    }
    match pool {
        SourcePool::Postgres(pool) => order_with_event!(
            pool,
            format!("INSERT INTO {ORDERS} (key, n, event_id, poison) VALUES ($1, $2, $3, $4)")
        ),
        SourcePool::Mysql(pool) => order_with_event!(
            pool,
            format!("INSERT INTO {ORDERS} (`key`, n, event_id, poison) VALUES (?, ?, ?, ?)")
        ),
    }
}
