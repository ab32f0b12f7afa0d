//! `ferry run -f`: the manifests of a whole pipeline (Secrets included) run as one process
//! against the shared PostgreSQL and RabbitMQ, delivering to a real HTTP sink; and manifests
//! that cannot run are refused with every problem named, before anything starts.

mod support;

#[path = "operator_pipeline/pipeline.rs"]
mod pipeline;
#[path = "operator_pipeline/sink.rs"]
#[allow(
    dead_code,
    reason = "shared with the operator pipeline test, which uses all of it"
)]
mod sink;

use std::{process::Stdio, time::Duration};

use sqlx::{Connection, PgConnection};
use tokio::{io::AsyncReadExt, process::Command, time::Instant};

use pipeline::{POSTGRES, Pipeline};
use sink::Sink;
use support::TempDir;

const DEADLINE: Duration = Duration::from_secs(90);

/// Writes the manifests as one multi-document file (JSON is YAML).
fn write_manifests(dir: &TempDir, documents: &[serde_json::Value]) -> std::path::PathBuf {
    let text: Vec<String> = documents.iter().map(ToString::to_string).collect();
    let path = dir.path().join("pipeline.yaml");
    std::fs::write(&path, text.join("\n---\n")).expect("write the manifests");
    path
}

async fn dead_letters(table: &str) -> i64 {
    let Ok(mut connection) = PgConnection::connect(POSTGRES).await else {
        return -1;
    };
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(&mut connection)
        .await
        .unwrap_or(-1)
}

#[tokio::test]
async fn run_delivers_a_pipeline_from_its_manifests_and_stops_cleanly_on_sigterm() {
    let pipeline = Pipeline::new().await;
    let sink = Sink::start().await;
    let dir = TempDir::new("run").expect("a temporary folder");
    let manifests = write_manifests(&dir, &pipeline.manifests(&sink.url()));

    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "-f"])
        .arg(&manifests)
        .args(["--status-interval", "1s"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start ferry run");

    let poison_event = ferry::outbox::producer::NewEvent::json(
        "Order",
        "order-poison",
        "order.created",
        &serde_json::json!({"poison": true}),
    )
    .expect("a JSON event");
    let poison = poison_event.id.to_string();
    sink.poison(&poison);
    let mut ids = pipeline.commit(20).await;
    ids.push(pipeline.commit_event(&poison_event).await);
    ids.extend(pipeline.commit(19).await);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let accepted = sink.accepted();
        let settled =
            accepted.len() == ids.len() - 1 && dead_letters(&pipeline.dead_letter_table).await == 1;
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every message settled: {} accepted of {}",
            accepted.len(),
            ids.len() - 1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let accepted = sink.accepted();
    for id in ids.iter().filter(|id| **id != poison) {
        assert_eq!(accepted.get(id), Some(&1), "{id} delivered once");
    }

    let pid = child.id().expect("ferry run is running");
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(signalled.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("ferry run stops within 30 s of SIGTERM")
        .expect("wait for ferry run");
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .await
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .await
        .expect("read stderr");
    assert!(status.success(), "exit {status}\n{stdout}\n{stderr}");

    let namespace = &pipeline.namespace;
    assert!(stdout.contains("WORKLOAD"), "the start table:\n{stdout}");
    assert!(
        stdout.contains(&format!("relay      {namespace}/orders")),
        "{stdout}"
    );
    let finals = stdout
        .split("stopped; final figures:")
        .nth(1)
        .unwrap_or_else(|| panic!("no final figures:\n{stdout}"));
    assert!(finals.contains("published 40"), "{finals}");
    assert!(finals.contains("delivered 39"), "{finals}");
    assert!(finals.contains("dead-lettered 1"), "{finals}");
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains("guest:guest") && !output.contains(pipeline::SECRET_PASSWORD),
            "a Secret value leaked into the output:\n{output}"
        );
    }
}

/// Runs `ferry run -f manifests`, which must exit 1; its standard error.
async fn refused(manifests: &std::path::Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "-f"])
        .arg(manifests)
        .env_remove("FERRY_SECRET_RABBITMQ_URL")
        .output()
        .await
        .expect("run ferry run");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}

#[tokio::test]
async fn run_refuses_manifests_it_cannot_run_and_names_every_problem() {
    let dir = TempDir::new("run_invalid").expect("a temporary folder");
    let manifests = dir.path().join("broken.yaml");
    std::fs::write(
        &manifests,
        r#"apiVersion: ferry.dev/v1alpha1
kind: OutboxSource
metadata: {name: orders, namespace: shop}
spec:
  database:
    engine: postgres
    connection: {secretRef: {name: orders-db}}
  capture: {batchSize: 0}
  routes:
    - name: all
      match: {aggregateType: Order}
      topicRef: {name: orders}
---
apiVersion: ferry.dev/v1alpha1
kind: Consumer
metadata: {name: inventory, namespace: shop}
spec:
  topicRef: {name: missing-topic}
  sink: {url: "http://127.0.0.1:1/events"}
"#,
    )
    .expect("write the manifests");
    let stderr = refused(&manifests).await;
    assert!(
        stderr
            .contains("broken.yaml (document 1): OutboxSource shop/orders: spec.capture.batchSize"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was started"), "{stderr}");

    // Valid objects whose references or secrets do not resolve.
    std::fs::write(
        &manifests,
        r#"apiVersion: ferry.dev/v1alpha1
kind: BrokerTopic
metadata: {name: orders, namespace: shop}
spec:
  broker: rabbitmq
  connection: {secretRef: {name: rabbitmq}}
  rabbitmq: {exchange: orders}
---
apiVersion: ferry.dev/v1alpha1
kind: Consumer
metadata: {name: inventory, namespace: shop}
spec:
  topicRef: {name: orders}
  sink: {url: "http://127.0.0.1:1/events"}
"#,
    )
    .expect("write the manifests");
    let stderr = refused(&manifests).await;
    assert!(
        stderr.contains("broken.yaml (document 2): Consumer shop/inventory: spec: Secret shop/rabbitmq (key url) is not among the manifests and FERRY_SECRET_RABBITMQ_URL is not set"),
        "{stderr}"
    );
}
