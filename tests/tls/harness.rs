//! What every TLS test does: commit orders to an outbox, plan a relay from manifests as
//! `ferry run` does, run `ferry relay` with or without trust in the test's authority, and read
//! what it says in `/status` and in its log.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ferry::{
    api::DatabaseEngine,
    outbox::producer::{NewEvent, OutboxConnection, enqueue},
    standalone::{self, WorkloadConfig},
};
use serde_json::{Value, json};
use sqlx::{Connection, SqliteConnection};
use tokio::{
    process::{Child, Command},
    time::{Instant, sleep},
};

use crate::support::{free_port, try_http_get};

/// Events committed to each test's outbox.
pub const ORDERS: u64 = 5;
pub const OUTBOX: &str = "ferry_outbox";
/// The password in the URLs: it must show up in neither `/status` nor the relay's log.
pub const PASSWORD: &str = "tls-test-password-5Nq8";
/// How rustls refuses a certificate signed by an authority it does not trust, as every client
/// here reports it (lower-cased, as `Relay::assert_refused` compares).
pub const UNKNOWN_ISSUER: &str = "invalid peer certificate: unknownissuer";
/// How long a relay gets to report a refusal or deliver every event.
const DEADLINE: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Variables through which a client could find trust or TLS settings outside the URL: each run
/// sets only what the test means to give it.
const TRUST_VARIABLES: [&str; 5] = [
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
];

/// Commits `ORDERS` events of one order through `connection`.
pub async fn commit_orders<C: OutboxConnection + ?Sized>(connection: &mut C) {
    for n in 0..ORDERS {
        let event = NewEvent::json("Order", "order-1", "order.created", &json!({ "n": n }))
            .expect("an event");
        enqueue(connection, OUTBOX, &event)
            .await
            .expect("enqueue an order");
    }
}

/// An SQLite outbox in `dir` holding `ORDERS` committed events: its URL.
pub async fn sqlite_outbox(dir: &Path) -> String {
    let url = format!("sqlite:{}", dir.join("outbox.db").display());
    ferry::outbox::migrate::migrate(DatabaseEngine::Sqlite, &url, OUTBOX)
        .await
        .expect("migrate the SQLite outbox");
    let mut connection = SqliteConnection::connect(&url)
        .await
        .expect("open the SQLite outbox");
    commit_orders(&mut connection).await;
    url
}

/// The manifests of a relay from an outbox (`engine`, at `database`) to one BrokerTopic whose
/// connection URL is `broker`; `topic` is the rest of the topic's spec (`broker` and its
/// section). Both URLs come from Secrets, as on a cluster.
pub fn manifests(engine: &str, database: &str, broker: &str, topic: Value) -> Vec<Value> {
    let mut spec =
        json!({ "connection": { "secretRef": { "name": "broker" } }, "provision": true });
    if let (Some(spec), Value::Object(topic)) = (spec.as_object_mut(), topic) {
        spec.extend(topic);
    }
    vec![
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
               "stringData": {"url": database}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "broker"},
               "stringData": {"url": broker}}),
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "BrokerTopic",
               "metadata": {"name": "orders"}, "spec": spec}),
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "OutboxSource", "metadata": {"name": "orders"},
               "spec": {"database": {"engine": engine, "connection": {"secretRef": {"name": "db"}}},
                        "capture": {"pollInterval": "100ms"},
                        "routes": [{"name": "all", "match": {"aggregateType": "Order"},
                                    "topicRef": {"name": "orders"}}]}}),
    ]
}

/// The certificate authorities a relay trusts: `System` leaves it the machine's roots, which
/// do not include the test's authority.
#[derive(Clone, Copy)]
pub enum Trust<'a> {
    System,
    /// `SSL_CERT_FILE` names this file.
    Authority(&'a Path),
}

/// A `ferry relay` process, killed when dropped.
pub struct Relay {
    address: SocketAddr,
    log: PathBuf,
    _process: Child,
}

impl Relay {
    /// Plans `manifests` and runs the relay they describe, on an endpoint port of its own so
    /// that it never answers for an earlier relay; its output goes to a log file in `dir`.
    pub fn start(dir: &Path, manifests: &[Value], trust: Trust<'_>) -> Self {
        let documents = crate::support::documents("tls.yaml", manifests.iter().cloned());
        let plan =
            standalone::plan_documents(&documents, "default", |_| {}).expect("the manifests");
        let Some(WorkloadConfig::Relay(mut config)) = plan
            .workloads
            .first()
            .map(|workload| workload.config.clone())
        else {
            panic!("the manifests plan no relay first: {:?}", plan.workloads);
        };
        let port = free_port().expect("a free port");
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], port));
        let path = dir.join(format!("relay-{port}.yaml"));
        let yaml = ferry::config::to_yaml(&*config).expect("the relay config as YAML");
        std::fs::write(&path, yaml).expect("write the relay config");
        let log = dir.join(format!("relay-{port}.log"));
        let output = std::fs::File::create(&log).expect("create the relay log");
        let errors = output.try_clone().expect("the relay log");

        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .args(["relay", "--config"])
            .arg(&path)
            .env("RUST_LOG", "ferry=warn")
            .stdout(output)
            .stderr(errors)
            .kill_on_drop(true);
        for variable in TRUST_VARIABLES {
            command.env_remove(variable);
        }
        if let Trust::Authority(file) = trust {
            command.env("SSL_CERT_FILE", file);
        }
        Self {
            address: config.http.listen,
            log,
            _process: command.spawn().expect("spawn ferry relay"),
        }
    }

    /// `/status`, or `Null` while the relay does not answer yet.
    pub async fn status(&self) -> Value {
        try_http_get(self.address, "/status")
            .await
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
            .unwrap_or(Value::Null)
    }

    /// The relay's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the relay to report an error, and checks that it is the refusal expected:
    /// `side` (`databaseConnected` or `brokerConnected`) is false and the error's message
    /// contains `reason` (lower-case).
    pub async fn assert_refused(&self, side: &str, reason: &str) {
        let status = wait_for(
            async || self.status().await,
            |status| status["lastError"].is_object(),
        )
        .await;
        let message = status["lastError"]["message"].as_str().unwrap_or_default();
        assert!(
            status[side] == false && message.to_lowercase().contains(reason),
            "the relay must report {side} false and an error with {reason:?}; /status:\n{status:#}\n\
             relay log ({}):\n{}",
            self.log.display(),
            self.log()
        );
        self.assert_keeps_secrets().await;
    }

    /// Neither `/status` nor the log holds the URLs' password.
    pub async fn assert_keeps_secrets(&self) {
        let status = self.status().await.to_string();
        assert!(
            !status.contains(PASSWORD),
            "/status shows the password: {status}"
        );
        assert!(
            !self.log().contains(PASSWORD),
            "the relay log ({}) shows the password",
            self.log.display()
        );
    }

    /// A failure message for a relay that did not deliver: its status and its log.
    pub async fn report(&self) -> String {
        format!(
            "/status:\n{:#}\nrelay log ({}):\n{}",
            self.status().await,
            self.log.display(),
            self.log()
        )
    }
}

/// Probes until `done` holds for the result or the deadline passes; the last result either way.
pub async fn wait_for<T>(mut probe: impl AsyncFnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let value = probe().await;
        if done(&value) || Instant::now() > deadline {
            return value;
        }
        sleep(POLL_INTERVAL).await;
    }
}
