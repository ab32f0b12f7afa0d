//! The reliability suite: faults injected into real processes (`ferry relay`, `ferry consumer`)
//! and real servers, each scenario on a PostgreSQL cluster and a nats-server of its own, and the
//! promise checked from the data: every committed event delivered or (only the poison ones)
//! dead-lettered, none applied twice, per-key order held where asked for.
//!
//! Each scenario prints its counts (`cargo test --test reliability -- --nocapture` shows them).

mod support;

#[path = "reliability/checker.rs"]
mod checker;
#[path = "reliability/service.rs"]
mod service;
#[path = "reliability/world.rs"]
mod world;

use std::time::Duration;

use rand::{RngExt, seq::SliceRandom};
use tokio::time::Instant;

use checker::Counts;
use service::Service;
use world::{Broker, Load, Shape, Source, Workload, World};

/// Orders over this many keys, one every `LOAD_INTERVAL`, every `POISON_EVERY`-th refused.
const KEYS: usize = 20;
const LOAD_INTERVAL: Duration = Duration::from_millis(5);
const POISON_EVERY: u64 = 47;
/// Orders committed before the first fault.
const WARM_UP_ORDERS: i64 = 100;
/// How long everything may take to settle once the load stops.
const SETTLE: Duration = Duration::from_secs(90);

/// A running scenario: the service, the world, both workloads and the load.
struct Scenario {
    service: Service,
    world: World,
    relay: Workload,
    consumer: Workload,
    load: Load,
    shape: Shape,
}

impl Scenario {
    async fn start(shape: Shape) -> Self {
        let service = Service::start().await;
        let world = World::launch(&service.url(), shape).await;
        service.use_database(world.pool.clone());
        let consumer = world.start_consumer().await;
        // A RabbitMQ exchange drops what no queue is bound to yet: the relay starts once the
        // consumer has subscribed.
        let deadline = Instant::now() + SETTLE;
        while !consumer.status().await.contains("\"ready\":true") {
            assert!(Instant::now() < deadline, "the consumer never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let relay = world.start_relay().await;
        let load = Load::start(world.source.clone(), KEYS, LOAD_INTERVAL, POISON_EVERY);
        // Faults start once the pipeline carries a load: on a busy machine the first seconds
        // can commit little.
        let deadline = Instant::now() + SETTLE;
        while world.counts().await.map_or(0, |counts| counts.committed) < WARM_UP_ORDERS {
            assert!(Instant::now() < deadline, "the load did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            service,
            world,
            relay,
            consumer,
            load,
            shape,
        }
    }

    /// Stops the load, waits until every event has settled, stops both workloads with SIGTERM
    /// (each must exit 0), and checks the promise. Prints the counts either way.
    async fn finish(self, name: &str, faults: &str) -> Counts {
        let committed = self.load.stop().await;
        let statuses = [self.relay.status().await, self.consumer.status().await];
        let deadline = Instant::now() + SETTLE;
        let counts = loop {
            let counts = self.world.counts().await.expect("read the counts");
            if (counts.settled() && counts.outbox_pending == 0) || Instant::now() >= deadline {
                break counts;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let logs = [self.relay.log(), self.consumer.log()];
        let relay_exit = self.relay.stop().await;
        let consumer_exit = self.consumer.stop().await;
        assert!(
            logs[0].contains("relay endpoints listening") && statuses[1].contains("deliveredTotal"),
            "{name}: the workloads' logs and /status were not captured"
        );
        for text in logs.iter().chain(&statuses) {
            assert!(
                !text.contains(world::SECRET),
                "{name}: the database password leaked:\n{text}"
            );
        }
        let last_lines = |log: &str| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        let tally = &self.service.tally;
        println!(
            "{name} [{faults}]: {counts}; service requests {}, repeats closed by its inbox {}, failed on purpose {}",
            tally.requests.load(std::sync::atomic::Ordering::Relaxed),
            tally.repeats.load(std::sync::atomic::Ordering::Relaxed),
            tally
                .failed_on_purpose
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        assert_eq!(counts.committed as u64, committed, "{counts}");
        assert!(
            counts.committed >= WARM_UP_ORDERS && counts.poison > 0,
            "{counts}"
        );
        let broken = counts.broken(self.shape.ordered);
        assert!(
            broken.is_empty(),
            "{name}: {broken:?}\n{counts}\nrelay log:\n{}\nconsumer log:\n{}",
            last_lines(&logs[0]),
            last_lines(&logs[1])
        );
        assert!(
            relay_exit.success(),
            "the relay's exit after SIGTERM: {relay_exit}"
        );
        assert!(
            consumer_exit.success(),
            "the consumer's exit after SIGTERM: {consumer_exit}"
        );
        counts
    }
}

impl Scenario {
    /// Stops the broker for `outage`, then starts it again.
    async fn broker_down(&mut self, outage: Duration) {
        self.world.broker.stop().await;
        tokio::time::sleep(outage).await;
        self.world.broker.start().await;
    }

    /// Stops PostgreSQL (outbox, idempotency store, dead letters, the service's tables) for
    /// `outage`, then starts it again.
    async fn database_down(&mut self, outage: Duration) {
        self.world.postgres.stop().await.expect("stop PostgreSQL");
        tokio::time::sleep(outage).await;
        self.world.postgres.start().await.expect("start PostgreSQL");
    }

    /// Stops the MariaDB server of a MySQL source (orders and outbox) for `outage`, then
    /// starts it again.
    async fn mysql_down(&mut self, outage: Duration) {
        let mariadb = self.world.mariadb.as_mut().expect("a MySQL source");
        mariadb.stop().await.expect("stop MariaDB");
        tokio::time::sleep(outage).await;
        mariadb.start().await.expect("start MariaDB");
    }

    /// The service answers every request 503 for `outage`.
    async fn sink_down(&self, outage: Duration) {
        self.service.set_down(true);
        tokio::time::sleep(outage).await;
        self.service.set_down(false);
    }

    /// The service answers `share` of requests 500 for `stretch`.
    async fn sink_failing(&self, share: f64, stretch: Duration) {
        self.service.fail_randomly(share);
        tokio::time::sleep(stretch).await;
        self.service.fail_randomly(0.0);
    }
}

/// A pause of 200–700 ms between faults.
fn pause() -> Duration {
    Duration::from_millis(rand::rng().random_range(200..700))
}

/// Which workloads a kill scenario kills.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Victims {
    Relay,
    Consumer,
    Both,
}

/// SIGKILLs and restarts `victims` `times` times under load, 200–700 ms apart (both at once
/// for `Both`), with per-key ordering on, then checks.
async fn kill_repeatedly(broker: Broker, victims: Victims, times: u32, name: &str) {
    let mut scenario = Scenario::start(Shape {
        broker,
        ordered: true,
        source: Source::Postgres,
    })
    .await;
    for _ in 0..times {
        tokio::time::sleep(pause()).await;
        let (relay, consumer) = (&mut scenario.relay, &mut scenario.consumer);
        match victims {
            Victims::Relay => relay.kill_and_restart().await,
            Victims::Consumer => consumer.kill_and_restart().await,
            Victims::Both => {
                tokio::join!(relay.kill_and_restart(), consumer.kill_and_restart());
            }
        }
    }
    tokio::time::sleep(pause()).await;
    let faults = format!(
        "{} relay kills, {} consumer kills",
        scenario.relay.kills, scenario.consumer.kills
    );
    scenario.finish(name, &faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_sigkilled_repeatedly_under_load() {
    kill_repeatedly(Broker::Nats, Victims::Relay, 5, "relay SIGKILLed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_sigkilled_repeatedly_under_load() {
    kill_repeatedly(Broker::Nats, Victims::Consumer, 5, "consumer SIGKILLed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_sigkilled_repeatedly_under_load_on_redis() {
    kill_repeatedly(
        Broker::Redis,
        Victims::Consumer,
        5,
        "consumer SIGKILLed, Redis",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_sigkilled_repeatedly_under_load_on_rabbitmq() {
    kill_repeatedly(
        Broker::Rabbitmq,
        Victims::Consumer,
        5,
        "consumer SIGKILLed, RabbitMQ",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_sigkilled_repeatedly_under_load_on_the_sql_queue() {
    kill_repeatedly(
        Broker::Sql,
        Victims::Consumer,
        5,
        "consumer SIGKILLed, sql queue",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_consumer_sigkilled_at_once_under_load() {
    kill_repeatedly(Broker::Nats, Victims::Both, 4, "both SIGKILLed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_failing_a_fifth_of_requests_at_random_with_ordering_off() {
    let scenario = Scenario::start(Shape {
        broker: Broker::Nats,
        ordered: false,
        source: Source::Postgres,
    })
    .await;
    scenario.service.fail_randomly(0.2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    scenario
        .finish(
            "sink 500 at random",
            "20% of requests answered 500, ordering off",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_under_load() {
    for broker in [Broker::Nats, Broker::Redis, Broker::Rabbitmq] {
        let mut scenario = Scenario::start(Shape {
            broker,
            ordered: true,
            source: Source::Postgres,
        })
        .await;
        tokio::time::sleep(pause()).await;
        scenario.broker_down(Duration::from_secs(2)).await;
        tokio::time::sleep(pause()).await;
        scenario
            .finish(
                &format!("{broker:?} restarted"),
                "broker down 2 s under load",
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restarted_under_load() {
    let mut scenario = Scenario::start(Shape {
        broker: Broker::Nats,
        ordered: true,
        source: Source::Postgres,
    })
    .await;
    tokio::time::sleep(pause()).await;
    scenario.database_down(Duration::from_secs(2)).await;
    tokio::time::sleep(pause()).await;
    scenario
        .finish(
            "PostgreSQL restarted",
            "outbox, idempotency, dead-letter and service database down 2 s under load",
        )
        .await;
}

/// The orders and their outbox in MySQL (a MariaDB server of the scenario's own): the relay is
/// SIGKILLed three times and MariaDB restarted once, under load, with per-key ordering on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_outbox_relay_sigkilled_and_database_restarted_under_load() {
    let mut scenario = Scenario::start(Shape {
        broker: Broker::Nats,
        ordered: true,
        source: Source::Mysql,
    })
    .await;
    for _ in 0..3 {
        tokio::time::sleep(pause()).await;
        scenario.relay.kill_and_restart().await;
    }
    tokio::time::sleep(pause()).await;
    scenario.mysql_down(Duration::from_secs(2)).await;
    tokio::time::sleep(pause()).await;
    scenario
        .finish(
            "MySQL outbox",
            "relay SIGKILLed 3 times, MariaDB down 2 s, under load",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_down_for_a_stretch_then_back() {
    let scenario = Scenario::start(Shape {
        broker: Broker::Nats,
        ordered: true,
        source: Source::Postgres,
    })
    .await;
    tokio::time::sleep(pause()).await;
    scenario.sink_down(Duration::from_secs(3)).await;
    tokio::time::sleep(pause()).await;
    scenario
        .finish("sink down", "every request answered 503 for 3 s")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_unreachable_for_longer_than_every_retry_cap() {
    let mut scenario = Scenario::start(Shape {
        broker: Broker::Nats,
        ordered: true,
        source: Source::Postgres,
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The publish policy's cap is 1 s and the delivery policy's 500 ms.
    scenario.database_down(Duration::from_secs(6)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    scenario
        .finish(
            "PostgreSQL unreachable 6 s",
            "every database down 6 s, six times the longest retry cap",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sink_holds_the_concurrency_limit_and_bounded_memory() {
    let scenario = Scenario::start(Shape {
        broker: Broker::Nats,
        ordered: false,
        source: Source::Postgres,
    })
    .await;
    scenario.service.set_delay(Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_secs(4)).await;
    scenario.service.set_delay(Duration::ZERO);
    let peak = scenario.consumer.peak_rss_mib();
    let most = scenario
        .service
        .tally
        .most_in_flight
        .load(std::sync::atomic::Ordering::Relaxed);
    let concurrency = u64::from(scenario.world.consumer.concurrency);
    println!(
        "slow sink: at most {most} requests at once (concurrency {concurrency}), consumer peak RSS {peak:.1} MiB"
    );
    assert!(
        most <= concurrency,
        "{most} requests at once, concurrency {concurrency}"
    );
    // A debug build (what `cargo test` runs) takes more memory than the release build whose
    // 64 MiB target `ferry bench consumer` checks; what matters here is that a backlog waiting
    // on a slow sink does not make it grow.
    assert!(
        peak > 0.0 && peak <= 128.0,
        "consumer peak RSS {peak:.1} MiB"
    );
    scenario
        .finish(
            "slow sink",
            &format!(
                "1.5 s per request for 4 s: at most {most} at once, consumer peak RSS {peak:.1} MiB"
            ),
        )
        .await;
}

/// The faults the soak run injects, each at least once per cycle.
#[derive(Clone, Copy, Debug)]
enum Fault {
    KillRelay,
    KillConsumer,
    RestartBroker,
    RestartDatabase,
    SinkDown,
    SinkFailing,
}

/// A steady load for `FERRY_SOAK_SECONDS` (default 20, so CI stays short) with every kind of
/// fault injected in a random order, cycle after cycle, until the time is up: at least one of
/// each, however short the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_random_faults() {
    let seconds: u64 = std::env::var("FERRY_SOAK_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20);
    let mut scenario = Scenario::start(Shape {
        broker: Broker::Nats,
        ordered: true,
        source: Source::Postgres,
    })
    .await;
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut injected: Vec<Fault> = Vec::new();
    let mut kinds = [
        Fault::KillRelay,
        Fault::KillConsumer,
        Fault::RestartBroker,
        Fault::RestartDatabase,
        Fault::SinkDown,
        Fault::SinkFailing,
    ];
    'soak: loop {
        // A shuffle, so that faults meet each other in different orders.
        kinds.shuffle(&mut rand::rng());
        for fault in kinds {
            if injected.len() >= kinds.len() && Instant::now() >= until {
                break 'soak;
            }
            tokio::time::sleep(pause()).await;
            match fault {
                Fault::KillRelay => scenario.relay.kill_and_restart().await,
                Fault::KillConsumer => scenario.consumer.kill_and_restart().await,
                Fault::RestartBroker => scenario.broker_down(Duration::from_secs(1)).await,
                Fault::RestartDatabase => scenario.database_down(Duration::from_secs(1)).await,
                Fault::SinkDown => scenario.sink_down(Duration::from_secs(1)).await,
                Fault::SinkFailing => scenario.sink_failing(0.5, Duration::from_secs(1)).await,
            }
            injected.push(fault);
        }
    }
    tokio::time::sleep(pause()).await;
    let faults = format!("{seconds} s, {} faults: {injected:?}", injected.len());
    scenario.finish("soak", &faults).await;
}
