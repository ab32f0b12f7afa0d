//! PostgreSQL over TLS: a private cluster that rejects loopback clients without TLS, reached with
//! sqlx's `sslmode` and `sslrootcert` URL parameters. The relay's outbox and its `sql` queue are
//! both in that cluster, so every connection the relay makes goes through TLS.

use ferry::api::DatabaseEngine;
use sqlx::{Connection, PgConnection};

use crate::{
    harness::{
        ORDERS, OUTBOX, PASSWORD, Relay, Trust, UNKNOWN_ISSUER, commit_orders, manifests, wait_for,
    },
    support::servers::{
        postgres::PrivatePostgres,
        tls::{ServerTls, authority},
    },
};

const QUEUE: &str = "tls_orders";

/// Messages in the `sql` queue (0 before the relay creates its table).
async fn queued(url: &str) -> Option<u64> {
    let mut connection = PgConnection::connect(url).await.ok()?;
    let count: Result<i64, _> =
        sqlx::query_scalar("SELECT count(*) FROM ferry_queue WHERE queue = $1")
            .bind(QUEUE)
            .fetch_one(&mut connection)
            .await;
    let _ = connection.close().await;
    Some(count.map_or(0, |count| count.unsigned_abs()))
}

#[tokio::test]
async fn a_relay_reaches_a_tls_only_postgres_with_its_authority_and_is_refused_otherwise() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let tls = ServerTls::generate(dir.path());
    let stranger = authority(dir.path(), "other-ca");
    let postgres = PrivatePostgres::launch_with_tls(&tls)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    // Trust authentication: the password is never asked for, but it is in the Secret's URL
    // like any other, and must stay out of the relay's status and log.
    let base = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{}/ferry",
        postgres.port()
    );
    let url = |query: &str| format!("{base}?{query}");
    let verified = url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        tls.ca.display()
    ));

    ferry::outbox::migrate::migrate(DatabaseEngine::Postgres, &verified, OUTBOX)
        .await
        .expect("migrate the outbox over TLS");
    let mut connection = PgConnection::connect(&verified)
        .await
        .expect("connect over TLS");
    commit_orders(&mut connection).await;
    connection.close().await.expect("close");

    let sql_topic = serde_json::json!({"broker": "sql", "sql": {"queue": QUEUE}});
    let relay_at = |database: &str, trust| {
        let manifests = manifests("postgres", database, database, sql_topic.clone());
        Relay::start(dir.path(), &manifests, trust)
    };

    // Without TLS the server itself refuses (pg_hba.conf's `hostnossl ... reject`).
    let plain = relay_at(&url("sslmode=disable"), Trust::System);
    plain
        .assert_refused("databaseConnected", "no encryption")
        .await;
    drop(plain);

    // Verifying with no authority given, or the wrong one, the relay refuses the certificate:
    // sqlx trusts only the roots compiled into it (webpki-roots) and `sslrootcert`, not
    // `SSL_CERT_FILE`, which is set here to show that it does not help.
    for query in [
        "sslmode=verify-full".to_owned(),
        format!("sslmode=verify-full&sslrootcert={}", stranger.display()),
    ] {
        let refused = relay_at(&url(&query), Trust::Authority(&tls.ca));
        refused
            .assert_refused("databaseConnected", UNKNOWN_ISSUER)
            .await;
    }
    assert_eq!(queued(&verified).await, Some(0));

    let trusting = relay_at(&verified, Trust::System);
    let messages = wait_for(
        async || queued(&verified).await,
        |&messages| messages == Some(ORDERS),
    )
    .await;
    assert_eq!(messages, Some(ORDERS), "{}", trusting.report().await);
    trusting.assert_keeps_secrets().await;
}
