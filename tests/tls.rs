//! TLS from the Secret's URL: a relay publishes to a private redis-server that only speaks TLS
//! (`rediss://`), trusting the test's own certificate authority through `SSL_CERT_FILE`; without
//! that trust it refuses the server's certificate and says so in `/status`, publishing nothing.

mod support;

use std::{path::Path, process::Stdio, time::Duration};

use ferry::{
    manifest::{Document, Origin},
    outbox::producer::{NewEvent, enqueue},
    standalone::{self, WorkloadConfig},
};
use serde_json::json;
use tokio::process::{Child, Command};

use support::{free_port, unique_name};

/// Runs a command that must succeed.
fn run(program: &str, args: &[&str], dir: &Path) {
    let output = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| panic!("{program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A certificate authority and a server certificate for 127.0.0.1 signed by it.
fn certificates(dir: &Path) {
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=Ferry test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        dir,
    );
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        dir,
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write san.ext");
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
        dir,
    );
}

/// redis-server listening with TLS only.
fn tls_redis(dir: &Path, port: u16) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no", "--dir", "."])
        .current_dir(dir)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-server with TLS")
}

fn stream_length(dir: &Path, port: u16, stream: &str) -> Option<i64> {
    let output = std::process::Command::new("redis-cli")
        .args([
            "--tls",
            "--cacert",
            "ca.pem",
            "-p",
            &port.to_string(),
            "XLEN",
            stream,
        ])
        .current_dir(dir)
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

async fn relay_status(address: std::net::SocketAddr) -> String {
    support::try_http_get(address, "/status")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

#[tokio::test]
async fn a_relay_publishes_to_a_tls_only_redis_it_trusts_and_refuses_one_it_does_not() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    certificates(dir.path());
    let port = free_port().expect("a free port");
    let _redis = tls_redis(dir.path(), port);
    for _ in 0..100 {
        if stream_length(dir.path(), port, "none").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An SQLite outbox with five committed events.
    let database = format!("sqlite:{}", dir.path().join("outbox.db").display());
    ferry::outbox::migrate::migrate(
        ferry::api::DatabaseEngine::Sqlite,
        &database,
        "ferry_outbox",
    )
    .await
    .expect("migrate the outbox");
    let pool = ferry::outbox::sqlite::open_pool(&database)
        .await
        .expect("open the outbox");
    let mut tx = pool.begin().await.expect("begin");
    for n in 0..5 {
        let event = NewEvent::json("Order", "order-1", "order.created", &json!({"n": n}))
            .expect("an event");
        enqueue(&mut *tx, "ferry_outbox", &event)
            .await
            .expect("enqueue");
    }
    tx.commit().await.expect("commit");

    let stream = unique_name("tls");
    let manifests = [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"url": database}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis"},
               "stringData": {"url": format!("rediss://127.0.0.1:{port}")}}),
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "BrokerTopic", "metadata": {"name": "orders"},
               "spec": {"broker": "redis", "connection": {"secretRef": {"name": "redis"}}, "provision": true,
                        "redis": {"stream": stream}}}),
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "OutboxSource", "metadata": {"name": "orders"},
               "spec": {"database": {"engine": "sqlite", "connection": {"secretRef": {"name": "db"}}},
                        "capture": {"pollInterval": "100ms"},
                        "routes": [{"name": "all", "match": {"aggregateType": "Order"}, "topicRef": {"name": "orders"}}]}}),
    ];
    let documents: Vec<Document> = manifests
        .into_iter()
        .enumerate()
        .map(|(index, value)| Document {
            origin: Origin {
                file: "tls.yaml".into(),
                document: index + 1,
            },
            value,
        })
        .collect();
    let plan = standalone::plan_documents(&documents, "default", |_| {}).expect("the manifests");
    let WorkloadConfig::Relay(mut relay) = plan.workloads[0].config.clone() else {
        panic!("a relay");
    };
    relay.http.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let config = dir.path().join("relay.yaml");
    std::fs::write(&config, ferry::config::to_yaml(&*relay).expect("YAML")).expect("write");
    let spawn = |trust: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .args(["relay", "--config"])
            .arg(&config)
            .env("RUST_LOG", "ferry=warn")
            .env_remove("SSL_CERT_DIR")
            .kill_on_drop(true);
        if trust {
            command.env("SSL_CERT_FILE", dir.path().join("ca.pem"));
        } else {
            command.env_remove("SSL_CERT_FILE");
        }
        command.spawn().expect("spawn ferry relay")
    };

    // Without the authority: the certificate is refused, nothing is published.
    let untrusting = spawn(false);
    let mut refused = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        refused = relay_status(relay.http.listen).await;
        if refused.contains("lastError\":{") {
            break;
        }
    }
    assert!(
        refused.contains("\"brokerConnected\":false")
            && refused.to_lowercase().contains("certificate"),
        "an untrusted server certificate must be refused, and said so:\n{refused}"
    );
    assert_eq!(stream_length(dir.path(), port, &stream).unwrap_or(0), 0);
    drop(untrusting);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // With it: all five arrive over TLS.
    let _trusting = spawn(true);
    let mut length = 0;
    for _ in 0..200 {
        length = stream_length(dir.path(), port, &stream).unwrap_or(0);
        if length == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(length, 5, "{}", relay_status(relay.http.listen).await);
}
