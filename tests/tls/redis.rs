//! Redis over TLS: `rediss://` to a private redis-server that has no plain port, trusted through
//! `SSL_CERT_FILE`.

use std::{path::Path, process::Stdio};

use tokio::process::{Child, Command};

use crate::{
    harness::{ORDERS, PASSWORD, Relay, Trust, UNKNOWN_ISSUER, manifests, sqlite_outbox, wait_for},
    support::{free_port, servers::tls::ServerTls},
};

/// redis-server with a TLS port only, and a password.
fn tls_redis(dir: &Path, tls: &ServerTls, port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--requirepass", PASSWORD])
        .arg("--tls-cert-file")
        .arg(&tls.cert)
        .arg("--tls-key-file")
        .arg(&tls.key)
        .arg("--tls-ca-cert-file")
        .arg(&tls.ca)
        .args(["--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no", "--dir", "."])
        .current_dir(dir)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-server with TLS")
}

/// `XLEN stream` through redis-cli over TLS; `None` while the server does not answer.
async fn stream_length(tls: &ServerTls, port: u16, stream: &str) -> Option<u64> {
    let output = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(&tls.ca)
        .args(["-p", &port.to_string(), "--no-auth-warning", "-a", PASSWORD])
        .args(["XLEN", stream])
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

#[tokio::test]
async fn a_relay_publishes_to_a_tls_only_redis_it_trusts_and_refuses_one_it_does_not() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let tls = ServerTls::generate(dir.path());
    let port = free_port().expect("a free port");
    let _redis = tls_redis(dir.path(), &tls, port);
    let answers = wait_for(
        async || stream_length(&tls, port, "none").await,
        Option::is_some,
    )
    .await;
    assert!(
        answers.is_some(),
        "the TLS redis-server on port {port} does not answer"
    );

    let database = sqlite_outbox(dir.path()).await;
    let stream = crate::support::unique_name("tls");
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{port}");
    let manifests = manifests(
        "sqlite",
        &database,
        &url,
        serde_json::json!({"broker": "redis", "redis": {"stream": stream}}),
    );

    let untrusting = Relay::start(dir.path(), &manifests, Trust::System);
    untrusting
        .assert_refused("brokerConnected", UNKNOWN_ISSUER)
        .await;
    assert_eq!(stream_length(&tls, port, &stream).await, Some(0));
    drop(untrusting);

    let trusting = Relay::start(dir.path(), &manifests, Trust::Authority(&tls.ca));
    let length = wait_for(
        async || stream_length(&tls, port, &stream).await,
        |&length| length == Some(ORDERS),
    )
    .await;
    assert_eq!(length, Some(ORDERS), "{}", trusting.report().await);
    trusting.assert_keeps_secrets().await;
}
