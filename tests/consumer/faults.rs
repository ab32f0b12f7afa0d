//! Faults: a consumer SIGKILLed under load, a sink that is down for a while, `Retry-After`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ferry::{
    api::{Duration as ApiDuration, Ordering},
    config::ConsumerConfig,
};

use crate::{
    harness::{Broker, Pipeline, Running},
    sink::{Behaviour, Sink},
    support::{TempDir, free_port, sample_envelopes, unique_name},
};

const DEADLINE: Duration = Duration::from_secs(90);

/// `ferry consumer --config FILE` as a real child process.
struct ChildConsumer {
    child: tokio::process::Child,
}

impl ChildConsumer {
    async fn start(config: &ConsumerConfig, dir: &std::path::Path) -> Self {
        let path: PathBuf = dir.join(format!("consumer-{}.yaml", unique_name("c")));
        std::fs::write(&path, ferry::config::to_yaml(config).expect("config YAML"))
            .expect("write config");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["consumer", "--config"])
            .arg(&path)
            .env("RUST_LOG", "ferry=warn")
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ferry consumer");
        let consumer = Self { child };
        wait_ready(config.http.listen).await;
        consumer
    }
}

async fn wait_ready(address: SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = reqwest::get(format!("http://{address}/readyz")).await
            && response.status().is_success()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the consumer at {address} never got ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A consumer killed with SIGKILL while delivering: a second one delivers everything it left,
/// and only messages it had in flight (at most its concurrency) can take effect twice.
pub async fn a_killed_consumers_messages_are_delivered_by_another(broker: Broker) {
    let pipeline = Pipeline::new(broker);
    let sink = Sink::start(Behaviour {
        delay: Duration::from_millis(20),
        ..Behaviour::default()
    })
    .await;
    let dir = TempDir::new("consumer-kill").expect("temp dir");
    let mut config = pipeline.config(&sink.url(), 50, Ordering::None);
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], free_port().expect("free port")));
    let mut first = ChildConsumer::start(&config, dir.path()).await;
    let envelopes = sample_envelopes(300, 30);
    pipeline.publish(&envelopes).await;
    sink.wait_for(DEADLINE, "the first consumer to deliver 60", |sink| {
        sink.delivered().len() >= 60
    })
    .await;
    first.child.start_kill().expect("SIGKILL the consumer");
    let _ = first.child.wait().await;
    let killed_at = sink.delivered().len();
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let second = Running::start(config.clone()).await;
    sink.wait_for(DEADLINE, "every message to take effect", |sink| {
        sink.delivered().len() == envelopes.len()
    })
    .await;
    let twice = sink.applied_twice();
    assert!(
        twice.len() <= config.concurrency as usize,
        "{} effects applied twice (killed after {killed_at}); at most the {} in flight may repeat: {twice:?}",
        twice.len(),
        config.concurrency
    );
    second.stop().await;
    pipeline.cleanup().await;
}

/// A sink that is down (503) for a while: nothing is dead-lettered within the attempts the
/// outage takes, and everything arrives once it is back.
pub async fn a_sink_outage_delays_but_loses_nothing(broker: Broker) {
    let pipeline = Pipeline::new(broker);
    let sink = Sink::start(Behaviour {
        down: true,
        ..Behaviour::default()
    })
    .await;
    let consumer = Running::start(pipeline.config(&sink.url(), 1000, Ordering::PerKey)).await;
    let envelopes = sample_envelopes(50, 5);
    pipeline.publish(&envelopes).await;
    sink.wait_for(DEADLINE, "failed attempts", |sink| {
        sink.requests().len() >= 20
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sink.set(|behaviour| behaviour.down = false);
    sink.wait_for(DEADLINE, "every message to take effect", |sink| {
        sink.delivered().len() == envelopes.len()
    })
    .await;
    assert_eq!(sink.applied_twice(), Vec::<String>::new());
    assert_eq!(pipeline.dead_letters().await, Vec::new());
    consumer.stop().await;
    pipeline.cleanup().await;
}

/// A 429 with `Retry-After: 1` makes the consumer wait a second although its own backoff is
/// shorter, and no longer than the policy's cap.
pub async fn retry_after_is_honoured_up_to_the_cap(broker: Broker) {
    let pipeline = Pipeline::new(broker);
    let sink = Sink::start(Behaviour {
        retry_after: Some(1),
        ..Behaviour::default()
    })
    .await;
    let envelopes = sample_envelopes(1, 1);
    sink.set(|behaviour| {
        behaviour.poison.insert(envelopes[0].id.clone(), 429);
    });
    let mut config = pipeline.config(&sink.url(), 3, Ordering::None);
    config.retry.max_backoff = ApiDuration::from_secs(2);
    let consumer = Running::start(config).await;
    pipeline.publish(&envelopes).await;
    consumer
        .wait_status("the dead letter", |status| status["deadLetteredTotal"] == 1)
        .await;
    let times: Vec<_> = sink.requests().iter().map(|request| request.at).collect();
    assert_eq!(times.len(), 3);
    for pair in times.windows(2) {
        let wait = pair[1] - pair[0];
        assert!(
            wait >= Duration::from_millis(950) && wait < Duration::from_secs(4),
            "waited {wait:?} after a Retry-After of 1 s"
        );
    }
    consumer.stop().await;
    pipeline.cleanup().await;
}

/// The broker (a private server) restarted while the consumer delivers: readiness goes false,
/// the consumer reconnects by itself, everything is delivered, and nothing takes effect twice.
pub async fn a_broker_restart_under_load_loses_nothing(broker: Broker) {
    use crate::support::servers::{PrivateNats, PrivateRedis};
    enum Server {
        Nats(PrivateNats),
        Redis(PrivateRedis),
    }
    let mut server = match broker {
        Broker::Nats => Server::Nats(PrivateNats::launch().await.expect("start nats-server")),
        Broker::Redis => Server::Redis(PrivateRedis::launch().await.expect("start redis-server")),
        other => panic!("no private server for {other:?} in this test"),
    };
    let url = match &server {
        Server::Nats(nats) => nats.url(),
        Server::Redis(redis) => redis.url(),
    };
    let pipeline = Pipeline::at(broker, &url);
    let sink = Sink::start(Behaviour {
        delay: Duration::from_millis(10),
        ..Behaviour::default()
    })
    .await;
    let consumer = Running::start(pipeline.config(&sink.url(), 1000, Ordering::None)).await;
    let envelopes = sample_envelopes(300, 30);
    pipeline.publish(&envelopes).await;
    sink.wait_for(DEADLINE, "some deliveries", |sink| {
        sink.delivered().len() >= 50
    })
    .await;
    match &mut server {
        Server::Nats(nats) => nats.stop().await.expect("stop nats-server"),
        Server::Redis(redis) => redis.stop().await.expect("stop redis-server"),
    }
    consumer
        .wait_status("readiness to turn false", |status| status["ready"] == false)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    match &mut server {
        Server::Nats(nats) => nats.start().await.expect("restart nats-server"),
        Server::Redis(redis) => redis.start().await.expect("restart redis-server"),
    }
    sink.wait_for(DEADLINE, "every message to take effect", |sink| {
        sink.delivered().len() == envelopes.len()
    })
    .await;
    consumer
        .wait_status("readiness again", |status| status["ready"] == true)
        .await;
    assert_eq!(
        sink.applied_twice(),
        Vec::<String>::new(),
        "effects applied twice"
    );
    consumer.stop().await;
    pipeline.cleanup().await;
}
