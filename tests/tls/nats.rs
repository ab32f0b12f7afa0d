//! NATS over TLS: a private nats-server that requires TLS of every client, reached with a
//! `tls://` URL and trusted through `SSL_CERT_FILE` (async-nats loads its roots with
//! rustls-native-certs, which reads it).

use async_nats::jetstream;

use crate::{
    harness::{ORDERS, PASSWORD, Relay, Trust, UNKNOWN_ISSUER, manifests, sqlite_outbox, wait_for},
    support::servers::{PrivateNats, tls::ServerTls},
};

const USER: &str = "ferry";
const STREAM: &str = "TLS_ORDERS";

/// Messages in the stream (0 before it exists), read by a client given the authority directly.
async fn stream_messages(tls: &ServerTls, port: u16) -> Option<u64> {
    let client = async_nats::ConnectOptions::with_user_and_password(USER.into(), PASSWORD.into())
        .add_root_certificates(tls.ca.clone())
        .require_tls(true)
        .connect(format!("127.0.0.1:{port}"))
        .await
        .ok()?;
    let messages = match jetstream::new(client.clone()).get_stream(STREAM).await {
        Ok(mut stream) => stream.info().await.ok()?.state.messages,
        Err(_) => 0,
    };
    let _ = client.drain().await;
    Some(messages)
}

#[tokio::test]
async fn a_relay_publishes_to_a_tls_only_nats_it_trusts_and_refuses_one_it_does_not() {
    // The test's own client takes rustls's process-wide provider, as the relay does.
    ferry::telemetry::choose_tls_crypto();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let tls = ServerTls::generate(dir.path());
    let (cert, key) = (
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
    );
    let nats = PrivateNats::launch_with_options(&[
        "--tls",
        "--tlscert",
        &cert,
        "--tlskey",
        &key,
        "--user",
        USER,
        "--pass",
        PASSWORD,
    ])
    .await
    .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        stream_messages(&tls, nats.port()).await,
        Some(0),
        "a client trusting the test's authority must reach the TLS nats-server"
    );

    let database = sqlite_outbox(dir.path()).await;
    let url = format!("tls://{USER}:{PASSWORD}@127.0.0.1:{}", nats.port());
    let manifests = manifests(
        "sqlite",
        &database,
        &url,
        serde_json::json!({"broker": "nats", "nats": {"stream": STREAM}}),
    );

    let untrusting = Relay::start(dir.path(), &manifests, Trust::System);
    untrusting
        .assert_refused("brokerConnected", UNKNOWN_ISSUER)
        .await;
    assert_eq!(stream_messages(&tls, nats.port()).await, Some(0));
    drop(untrusting);

    let trusting = Relay::start(dir.path(), &manifests, Trust::Authority(&tls.ca));
    let messages = wait_for(
        async || stream_messages(&tls, nats.port()).await,
        |&messages| messages == Some(ORDERS),
    )
    .await;
    assert_eq!(messages, Some(ORDERS), "{}", trusting.report().await);
    trusting.assert_keeps_secrets().await;
}
