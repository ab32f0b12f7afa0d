//! Crashes and outages under load: nothing committed is lost, order per key holds, and
//! duplicates come only from the batch in flight when a relay died.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use ferry::{api::DatabaseEngine, config::RelayConfig};

use crate::{
    arrivals::{Reader, check},
    harness::{InProcessRelay, REDIS, Source, http_get, nats_topic, redis_topic, relay_config},
    support::{
        free_port,
        servers::{PrivateNats, postgres::PrivatePostgres},
        unique_name,
    },
};

/// `ferry relay --config FILE` as a real child process.
struct ChildRelay {
    child: tokio::process::Child,
    address: SocketAddr,
}

impl ChildRelay {
    async fn start(config: &RelayConfig, dir: &std::path::Path) -> Self {
        let path: PathBuf = dir.join(format!("relay-{}.yaml", unique_name("c")));
        std::fs::write(&path, ferry::config::to_yaml(config).expect("config YAML"))
            .expect("write config");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["relay", "--config"])
            .arg(&path)
            .env("RUST_LOG", "ferry=warn")
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ferry relay");
        let relay = Self {
            child,
            address: config.http.listen,
        };
        relay.wait_until_serving().await;
        relay
    }

    async fn wait_until_serving(&self) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(self.address).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the relay did not serve {} within 10s", self.address);
    }

    async fn published(&self) -> u64 {
        let (_, body) = http_get(self.address, "/status").await;
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|s| s["publishedTotal"].as_u64())
            .unwrap_or(0)
    }
}

fn child_config(source: &Source, topic: ferry::config::TopicConfig) -> RelayConfig {
    let mut config = relay_config(source, topic);
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], free_port().expect("free port")));
    config.capture.batch_size = 50;
    config
}

/// Commits orders in the background until stopped; returns what committed, in commit order.
fn steady_load(
    source: Arc<Source>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Vec<(String, String)>> {
    tokio::spawn(async move {
        let mut committed = Vec::new();
        let mut next = 100_000;
        while !stop.is_cancelled() {
            committed.extend(source.commit_orders(next, 20, 10).await);
            next += 20;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        committed
    })
}

#[tokio::test]
async fn a_relay_killed_mid_batch_loses_nothing_and_repeats_only_its_batch_in_flight() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = Arc::new(Source::new(DatabaseEngine::Postgres).await);
    let stream = unique_name("relay-kill");
    let config = child_config(&source, redis_topic(REDIS, &stream));
    let mut committed = source.commit_orders(0, 3000, 10).await;
    let load_stop = tokio_util::sync::CancellationToken::new();
    let load = steady_load(source.clone(), load_stop.clone());

    let mut relay = ChildRelay::start(&config, dir.path()).await;
    while relay.published().await < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.child.start_kill().expect("SIGKILL the relay");
    relay.child.wait().await.expect("reaped");
    let restarted = ChildRelay::start(&config, dir.path()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    load_stop.cancel();
    committed.extend(load.await.expect("load task"));

    let reader = Reader::Redis {
        url: REDIS.into(),
        stream,
    };
    let arrived = reader
        .wait_for(committed.len(), Duration::from_secs(90))
        .await;
    let result = check(&committed, &arrived);
    assert_eq!(result.missing, 0, "{result:?}");
    assert!(result.out_of_order_keys.is_empty(), "{result:?}");
    let in_flight = (config.capture.batch_size * config.capture.workers) as usize;
    assert!(
        result.duplicates <= in_flight,
        "at most the batches in flight may repeat: {result:?}"
    );
    drop(restarted);
}

#[tokio::test]
async fn sigterm_finishes_the_batch_in_flight_and_exits_cleanly_without_duplicates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = Source::new(DatabaseEngine::Postgres).await;
    let stream = unique_name("relay-term");
    let config = child_config(&source, redis_topic(REDIS, &stream));
    let committed = source.commit_orders(0, 3000, 10).await;
    let mut relay = ChildRelay::start(&config, dir.path()).await;
    while relay.published().await < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = relay.child.id().expect("pid");
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("send SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(20), relay.child.wait())
        .await
        .expect("exits within 20s")
        .expect("wait");
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let _restarted = ChildRelay::start(&config, dir.path()).await;
    let reader = Reader::Redis {
        url: REDIS.into(),
        stream,
    };
    let arrived = reader
        .wait_for(committed.len(), Duration::from_secs(60))
        .await;
    let result = check(&committed, &arrived);
    assert_eq!(
        result,
        crate::arrivals::Check {
            missing: 0,
            duplicates: 0,
            out_of_order_keys: vec![]
        }
    );
}

#[tokio::test]
async fn a_broker_restart_under_load_turns_readiness_off_then_everything_arrives_once() {
    let mut nats = PrivateNats::launch().await.expect("private nats");
    let source = Arc::new(Source::new(DatabaseEngine::Postgres).await);
    let stream = unique_name("RESTART").replace('-', "_");
    let mut config = relay_config(&source, nats_topic(&nats.url(), &stream));
    config.capture.batch_size = 50;
    let relay = InProcessRelay::start(config).await;
    let load_stop = tokio_util::sync::CancellationToken::new();
    let load = steady_load(source.clone(), load_stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    nats.stop().await.expect("stop nats");
    let mut saw_unready = false;
    for _ in 0..300 {
        if http_get(relay.address, "/readyz").await.0 == 503 {
            saw_unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.start().await.expect("restart nats");
    tokio::time::sleep(Duration::from_millis(500)).await;
    load_stop.cancel();
    let committed = load.await.expect("load");

    let reader = Reader::Nats {
        url: nats.url(),
        stream,
    };
    let arrived = reader
        .wait_for(committed.len(), Duration::from_secs(60))
        .await;
    let result = check(&committed, &arrived);
    assert!(
        saw_unready,
        "readiness must turn false while the broker is down"
    );
    assert_eq!(result.missing, 0, "{result:?}");
    assert!(result.out_of_order_keys.is_empty(), "{result:?}");
    assert_eq!(
        result.duplicates, 0,
        "JetStream's duplicate window drops re-published batches: {result:?}"
    );
    let start = std::time::Instant::now();
    while http_get(relay.address, "/readyz").await.0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "readiness must come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_database_restart_turns_readiness_off_and_the_relay_resumes_by_itself() {
    let mut postgres = PrivatePostgres::launch().await.expect("private postgres");
    let source = Source::at(DatabaseEngine::Postgres, Some(postgres.url())).await;
    let stream = unique_name("relay-dbdown");
    let mut config = relay_config(&source, redis_topic(REDIS, &stream));
    config.capture.batch_size = 50;
    let relay = InProcessRelay::start(config).await;
    let mut committed = source.commit_orders(0, 200, 10).await;

    postgres.stop().await.expect("stop postgres");
    let mut saw_unready = false;
    for _ in 0..300 {
        if http_get(relay.address, "/readyz").await.0 == 503 {
            saw_unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        saw_unready,
        "readiness must turn false while the database is down"
    );
    let status = relay.status().await;
    assert_eq!(status["lastError"]["category"], "database", "{status}");

    postgres.start().await.expect("restart postgres");
    committed.extend(source.commit_orders(200, 200, 10).await);
    let reader = Reader::Redis {
        url: REDIS.into(),
        stream,
    };
    let arrived = reader
        .wait_for(committed.len(), Duration::from_secs(60))
        .await;
    let result = check(&committed, &arrived);
    assert_eq!(result.missing, 0, "{result:?}");
    assert!(result.out_of_order_keys.is_empty(), "{result:?}");
    let start = std::time::Instant::now();
    while http_get(relay.address, "/readyz").await.0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "readiness must come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.stop().await;
}
