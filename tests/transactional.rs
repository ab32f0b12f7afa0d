//! Transactional (half) messages end to end, with the producer's database on PostgreSQL,
//! MariaDB or SQLite (each scenario runs on all three) and the shared Redis: a relay with the
//! API enabled, a producer using Ferry's helpers (marker rows in its own transaction), and a
//! check-back endpoint in the test that answers from the markers, or fails on purpose. Redis
//! streams keep every `XADD`, so a message published twice would show twice. Dead letters go
//! to a PostgreSQL table whatever the source.

#[path = "transactional/source.rs"]
mod source;
mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode};
use ferry::{
    api::DatabaseEngine,
    standalone::{self, WorkloadConfig},
    transactional::producer::{HalfMessages, Outcome},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use source::{POSTGRES, Source};
use support::{free_port, unique_name};

const REDIS: &str = "redis://127.0.0.1:6379";
const TOKEN: &str = "tx-api-t0ken-9f2";
const MAX_CHECKS: u32 = 3;

/// Takes the producer's check-back endpoint down on purpose: `503` while set.
#[derive(Default)]
struct Outage(AtomicBool);

async fn unless_down(
    State(outage): State<Arc<Outage>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if outage.0.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    next.run(request).await
}

/// One test's pipeline: its own outbox, marker, dead-letter tables and stream, a relay in this
/// process, the check-back endpoint, and a client of the API.
struct World {
    source: Arc<Source>,
    /// Where the dead letters are.
    dead_letter_pool: PgPool,
    outbox: String,
    markers: String,
    dead_letters: String,
    stream: String,
    /// The check-back endpoint's switch.
    outage: Arc<Outage>,
    api: HalfMessages,
    api_address: SocketAddr,
    stop: CancellationToken,
    relay: Option<ferry::relay::RunningRelay>,
}

impl World {
    async fn start(engine: DatabaseEngine) -> Self {
        let (source, source_url) = Source::open(engine).await;
        Self::start_on(source, source_url).await
    }

    async fn start_on(source: Source, source_url: String) -> Self {
        let engine = source.engine();
        let source = Arc::new(source);
        let dead_letter_pool = PgPool::connect(POSTGRES).await.expect("PostgreSQL");
        let outbox = unique_name("txo");
        let markers = unique_name("txm");
        let dead_letters = unique_name("txd");
        let stream = unique_name("txs");
        ferry::outbox::migrate::migrate(engine, &source_url, &outbox)
            .await
            .expect("migrate the outbox");
        source.create_markers(&markers).await;
        let outage = Arc::new(Outage::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the check-back endpoint");
        let check_back_url = format!("http://{}/check", listener.local_addr().expect("addr"));
        // The producer's endpoint as Ferry's helper builds it, with a switch in front.
        let router = Router::new()
            .nest_service("/check", source.check_back_router(&markers))
            .layer(axum::middleware::from_fn_with_state(
                outage.clone(),
                unless_down,
            ));
        tokio::spawn(async move { axum::serve(listener, router).await });

        let manifests = [
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"url": source_url}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dead-letter-db"}, "stringData": {"url": POSTGRES}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis"}, "stringData": {"url": REDIS}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tx-api"}, "stringData": {"token": TOKEN}}),
            json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "BrokerTopic", "metadata": {"name": "orders"},
                   "spec": {"broker": "redis", "connection": {"secretRef": {"name": "redis"}}, "provision": true,
                            "redis": {"stream": stream}}}),
            json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "DeadLetterQueue", "metadata": {"name": "dead"},
                   "spec": {"store": {"database": {"engine": "postgres", "connection": {"secretRef": {"name": "dead-letter-db"}},
                                                   "table": dead_letters}}}}),
            json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "OutboxSource", "metadata": {"name": "orders"},
                   "spec": {"database": {"engine": engine.as_str(), "connection": {"secretRef": {"name": "db"}}, "table": outbox},
                            "capture": {"pollInterval": "100ms", "maxMessageBytes": 4096},
                            "routes": [{"name": "all", "topicRef": {"name": "orders"}}],
                            "deadLetterQueueRef": {"name": "dead"},
                            "transactionalMessages": {
                                "enabled": true, "port": 18081,
                                "tokenSecretRef": {"name": "tx-api", "key": "token"},
                                "checkBack": {"url": check_back_url, "firstCheckDelay": "300ms",
                                              "interval": "100ms", "maxChecks": MAX_CHECKS, "timeout": "2s"}}}}),
        ];
        let documents = support::documents("transactional.yaml", manifests);
        let plan =
            standalone::plan_documents(&documents, "default", |_| {}).expect("the manifests");
        let WorkloadConfig::Relay(mut relay) = plan.workloads[0].config.clone() else {
            panic!("a relay");
        };
        relay.http.listen = loopback();
        let api_address = loopback();
        relay
            .transactional
            .as_mut()
            .expect("transactional messages enabled")
            .listen = api_address;
        let stop = CancellationToken::new();
        let running = ferry::relay::start(*relay, stop.clone())
            .await
            .expect("start the relay");
        let api =
            HalfMessages::new(&format!("http://{api_address}"), TOKEN).expect("an API client");
        let world = Self {
            source,
            dead_letter_pool,
            outbox,
            markers,
            dead_letters,
            stream,
            outage,
            api,
            api_address,
            stop,
            relay: Some(running),
        };
        world.wait_for_api().await;
        world
    }

    async fn wait_for_api(&self) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(self.api_address)
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the transactional API never listened on {}",
            self.api_address
        );
    }

    /// Prepares an order event; runs the producer's local transaction with the marker when
    /// `commit_locally`.
    async fn prepare_and_run(&self, commit_locally: bool) -> Uuid {
        let id = self
            .api
            .prepare("Order", "order-1", "order.placed", &json!({"total": 12.5}))
            .await
            .expect("prepare");
        if commit_locally {
            self.source
                .begin_marked(&self.markers, id)
                .await
                .commit()
                .await;
        }
        id
    }

    /// How many stream entries carry `id` as `ce-id`.
    async fn published(&self, id: Uuid) -> usize {
        let client = redis::Client::open(REDIS).expect("redis");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .query_async(&mut connection)
            .await
            .unwrap_or_default();
        entries
            .ids
            .iter()
            .filter(|entry| {
                entry
                    .get::<String>("ce-id")
                    .is_some_and(|ce_id| ce_id == id.to_string())
            })
            .count()
    }

    async fn state(&self, id: Uuid) -> (String, Option<String>, i32) {
        self.source.half_state(&self.outbox, id).await
    }

    /// Waits until `id` has been published at least once (at most 15 s); how many times.
    async fn wait_published(&self, id: Uuid) -> usize {
        for _ in 0..150 {
            let count = self.published(id).await;
            if count > 0 {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        0
    }

    async fn wait_state(&self, id: Uuid, want: &str) -> (String, Option<String>, i32) {
        let mut last = self.state(id).await;
        for _ in 0..150 {
            if last.0 == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = self.state(id).await;
        }
        last
    }

    /// The relay's `/status` section on half messages, once `ready` accepts it (at most 15 s:
    /// the table is counted every 5 s).
    async fn half_status(&self, ready: impl Fn(&Value) -> bool) -> Value {
        let relay = self.relay.as_ref().expect("the relay runs");
        let mut status = Value::Null;
        for _ in 0..150 {
            status = relay.report().status()["halfMessages"].clone();
            if ready(&status) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        status
    }

    async fn metrics(&self) -> String {
        let relay = self.relay.as_ref().expect("the relay runs");
        let (status, body) = support::try_http_get(relay.address, "/metrics")
            .await
            .expect("/metrics answers");
        assert_eq!(status, 200);
        body
    }

    async fn finish(mut self) {
        self.stop.cancel();
        if let Some(relay) = self.relay.take() {
            relay.wait().await.expect("the relay stops cleanly");
        }
        self.source
            .drop_tables(&[
                format!("{}_half", self.outbox),
                self.outbox.clone(),
                self.markers.clone(),
            ])
            .await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {} CASCADE",
            self.dead_letters
        )))
        .execute(&self.dead_letter_pool)
        .await;
        if let Ok(client) = redis::Client::open(REDIS)
            && let Ok(mut connection) = client.get_multiplexed_async_connection().await
        {
            let _: Result<i64, _> = redis::cmd("DEL")
                .arg(&self.stream)
                .query_async(&mut connection)
                .await;
        }
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port().expect("a free port")))
}

async fn a_committed_message_is_delivered_once_and_a_rolled_back_one_never(engine: DatabaseEngine) {
    let world = World::start(engine).await;
    let committed = world.prepare_and_run(true).await;
    world.api.commit(committed).await.expect("commit");
    let rolled_back = world.prepare_and_run(false).await;
    world.api.rollback(rolled_back).await.expect("rollback");

    assert_eq!(world.wait_published(committed).await, 1);
    // Repeats of a decision are answered the same; the other decision is a conflict.
    world.api.commit(committed).await.expect("commit again");
    world
        .api
        .rollback(rolled_back)
        .await
        .expect("rollback again");
    let conflict = world.api.rollback(committed).await.expect_err("a conflict");
    assert!(
        conflict.to_string().contains("409") && conflict.to_string().contains("committed"),
        "{conflict}"
    );
    let conflict = world.api.commit(rolled_back).await.expect_err("a conflict");
    assert!(
        conflict.to_string().contains("409") && conflict.to_string().contains("rolled_back"),
        "{conflict}"
    );
    // Well past the first check: the rolled-back one is never published, and neither
    // decision is changed by a check-back.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(world.published(rolled_back).await, 0);
    assert_eq!(world.published(committed).await, 1);
    assert_eq!(
        world.state(committed).await,
        ("committed".into(), Some("producer".into()), 0)
    );
    assert_eq!(
        world.state(rolled_back).await,
        ("rolled_back".into(), Some("producer".into()), 0)
    );
    // Repeated calls count once; the table holds nothing waiting.
    let status = world.half_status(|status| status["waiting"] == 0).await;
    assert_eq!(
        status,
        json!({"waiting": 0, "oldestWaitingAgeSeconds": 0, "deadLetteredKept": 0,
               "preparedTotal": 2, "committedTotal": 1, "rolledBackTotal": 1,
               "deadLetteredTotal": 0, "failedCheckBacksTotal": 0})
    );
    let metrics = world.metrics().await;
    for line in [
        r#"ferry_relay_half_messages_decided_total{state="committed",by="producer"} 1"#,
        r#"ferry_relay_half_messages_decided_total{state="rolled_back",by="producer"} 1"#,
        "ferry_relay_half_messages_prepared_total 2",
        "ferry_relay_half_messages_waiting 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    world.finish().await;
}

async fn a_producer_that_crashed_after_its_local_commit_is_checked_back_and_delivered(
    engine: DatabaseEngine,
) {
    let world = World::start(engine).await;
    // The local transaction committed, the commit call never came.
    let id = world.prepare_and_run(true).await;
    let state = world.wait_state(id, "committed").await;
    assert_eq!(state, ("committed".into(), Some("check-back".into()), 0));
    assert_eq!(world.wait_published(id).await, 1);
    world.finish().await;
}

async fn a_producer_that_crashed_before_its_local_commit_is_answered_rolled_back(
    engine: DatabaseEngine,
) {
    let world = World::start(engine).await;
    let id = world.prepare_and_run(false).await;
    let state = world.wait_state(id, "rolled_back").await;
    assert_eq!(state, ("rolled_back".into(), Some("check-back".into()), 0));
    // The answer stands: the producer's transaction, should it run late, cannot commit.
    assert!(
        world.source.late_marker_refused(&world.markers, id).await,
        "a late local commit must fail on the marker"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(world.published(id).await, 0);
    world.finish().await;
}

async fn an_unreachable_check_back_is_retried_then_dead_lettered_with_the_reason(
    engine: DatabaseEngine,
) {
    let world = World::start(engine).await;
    world.outage.0.store(true, Ordering::SeqCst);
    let id = world.prepare_and_run(true).await;
    let state = world.wait_state(id, "dead_lettered").await;
    assert_eq!(
        state,
        (
            "dead_lettered".into(),
            Some("max-checks".into()),
            MAX_CHECKS as i32
        )
    );
    let (attempts, reason): (i32, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT attempts, last_error FROM {} WHERE message_id = $1",
        world.dead_letters
    )))
    .bind(id.to_string())
    .fetch_one(&world.dead_letter_pool)
    .await
    .expect("the dead letter");
    assert_eq!(attempts, MAX_CHECKS as i32);
    assert!(
        reason.contains("3 check-backs") && reason.contains("503"),
        "{reason}"
    );
    assert_eq!(world.published(id).await, 0);
    // A decision after that is a conflict, not a late publish.
    let refused = world.api.commit(id).await.expect_err("a conflict");
    assert!(refused.to_string().contains("409"), "{refused}");
    let status = world
        .half_status(|status| status["deadLetteredKept"] == 1)
        .await;
    assert_eq!(status["deadLetteredKept"], 1, "{status}");
    assert_eq!(status["waiting"], 0, "{status}");
    assert_eq!(status["deadLetteredTotal"], 1, "{status}");
    assert_eq!(status["failedCheckBacksTotal"], MAX_CHECKS, "{status}");
    let metrics = world.metrics().await;
    assert!(
        metrics.contains(
            r#"ferry_relay_half_messages_decided_total{state="dead_lettered",by="max-checks"} 1"#
        ),
        "{metrics}"
    );
    world.finish().await;
}

async fn concurrent_duplicate_commits_publish_once(engine: DatabaseEngine) {
    let world = World::start(engine).await;
    let id = world.prepare_and_run(true).await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let api = world.api.clone();
            tokio::spawn(async move { api.commit(id).await })
        })
        .collect();
    for call in calls {
        call.await
            .expect("the task")
            .expect("every commit call succeeds");
    }
    assert_eq!(world.wait_published(id).await, 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(world.published(id).await, 1, "published more than once");
    world.finish().await;
}

async fn a_check_back_waits_for_the_producers_open_transaction(engine: DatabaseEngine) {
    let world = World::start(engine).await;
    let id = Uuid::now_v7();
    let tx = world.source.begin_marked(&world.markers, id).await;
    let source = world.source.clone();
    let markers = world.markers.clone();
    let check = tokio::spawn(async move { source.check_back(&markers, id).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !check.is_finished(),
        "the check-back must wait for the open transaction"
    );
    tx.commit().await;
    let outcome = check.await.expect("the task").expect("the check-back");
    assert_eq!(outcome, Outcome::Committed);
    world.finish().await;
}

async fn bad_requests_are_refused_with_a_status_and_a_message(engine: DatabaseEngine) {
    let world = World::start(engine).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}/v1/half-messages", world.api_address);
    let valid =
        json!({"aggregateType": "Order", "aggregateId": "1", "eventType": "e", "payload": {}});
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("no token", http.post(&base).json(&valid), 401, "Bearer"),
        (
            "a wrong token",
            http.post(&base).bearer_auth("nope").json(&valid),
            401,
            "not valid",
        ),
        (
            "malformed JSON",
            http.post(&base)
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body("{\"aggregateType\": "),
            400,
            "",
        ),
        (
            "a missing field",
            http.post(&base)
                .bearer_auth(TOKEN)
                .json(&json!({"aggregateType": "Order", "payload": {}})),
            422,
            "aggregateId",
        ),
        (
            "an unknown field",
            http.post(&base)
                .bearer_auth(TOKEN)
                .json(&json!({"aggregateType": "Order", "aggregateId": "1", "eventType": "e", "payload": {}, "extra": 1})),
            422,
            "extra",
        ),
        (
            "an empty aggregate type",
            http.post(&base)
                .bearer_auth(TOKEN)
                .json(&json!({"aggregateType": "", "aggregateId": "1", "eventType": "e", "payload": {}})),
            422,
            "aggregateType",
        ),
        (
            "an oversized request",
            http.post(&base)
                .bearer_auth(TOKEN)
                .json(&json!({"aggregateType": "Order", "aggregateId": "1", "eventType": "e", "payload": "x".repeat(8192)})),
            413,
            "",
        ),
        (
            "an id that is not a UUID",
            http.post(format!("{base}/42/commit")).bearer_auth(TOKEN),
            400,
            "UUID",
        ),
        (
            "an unknown id",
            http.post(format!("{base}/{}/commit", Uuid::now_v7()))
                .bearer_auth(TOKEN),
            404,
            "no half message",
        ),
    ];
    for (what, request, status, says) in cases {
        let response = request.send().await.expect("the API answers");
        let code = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(code, status, "{what}: {body}");
        assert!(body.contains(says), "{what}: {body}");
        assert!(!body.contains(TOKEN), "{what}: the token leaked: {body}");
    }
    // None of that stored anything.
    let half = format!("{}_half", world.outbox);
    assert_eq!(world.source.count(&half, None).await, 0);
    world.finish().await;
}

async fn decided_messages_are_purged_after_the_retention_and_the_undecided_kept(
    engine: DatabaseEngine,
) {
    use ferry::transactional::{DecidedBy, Decision, NewHalfMessage, store};
    let (source, url) = Source::open(engine).await;
    let outbox = unique_name("txp");
    ferry::outbox::migrate::migrate(engine, &url, &outbox)
        .await
        .expect("migrate the outbox");
    let store = store::open(engine, &url, &outbox).await.expect("the store");
    store.migrate().await.expect("the half-message table");
    let message: NewHalfMessage = serde_json::from_value(json!({
        "aggregateType": "Order", "aggregateId": "1", "eventType": "order.placed", "payload": {"n": 1}
    }))
    .expect("a message");
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            store
                .prepare(&message, Duration::from_secs(3600))
                .await
                .expect("prepare"),
        );
    }
    store
        .decide(ids[0], Decision::Commit, DecidedBy::Producer)
        .await
        .expect("commit");
    store
        .decide(ids[1], Decision::Rollback, DecidedBy::Producer)
        .await
        .expect("rollback");
    assert!(store.give_up(ids[2], "no answer").await.expect("give up"));

    // Nothing decided before an hour ago: nothing goes.
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(
        store.purge_decided(an_hour_ago, 10).await.expect("purge"),
        0
    );
    // Everything decided by now: the committed and the rolled-back one go, one per batch.
    let soon = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(store.purge_decided(soon, 1).await.expect("purge"), 1);
    assert_eq!(store.purge_decided(soon, 10).await.expect("purge"), 1);
    assert_eq!(store.purge_decided(soon, 10).await.expect("purge"), 0);
    for (id, kept) in [
        (ids[0], false),
        (ids[1], false),
        (ids[2], true),
        (ids[3], true),
    ] {
        assert_eq!(store.state(id).await.is_ok(), kept, "{id}");
    }
    // The committed one's outbox row is the relay's business, not the purge's.
    assert_eq!(source.count(&outbox, Some(ids[0])).await, 1);
    source
        .drop_tables(&[format!("{outbox}_half"), outbox])
        .await;
}

/// The API refuses calls with 503 and a message while the database is down, stores nothing
/// then, and serves again once it is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_503_while_the_database_is_down_and_serves_again_after() {
    use support::servers::postgres::PrivatePostgres;
    let mut server = PrivatePostgres::launch()
        .await
        .expect("a private PostgreSQL");
    let world = World::start_on(Source::postgres_at(&server.url()).await, server.url()).await;
    let before = world.prepare_and_run(true).await;
    world.api.commit(before).await.expect("commit");
    assert_eq!(world.wait_published(before).await, 1);

    server.stop().await.expect("stop PostgreSQL");
    let refused = world
        .api
        .prepare("Order", "order-2", "order.placed", &json!({"total": 1}))
        .await
        .expect_err("no database, no prepare");
    let refused = refused.to_string();
    assert!(
        refused.contains("503") && refused.contains("database"),
        "{refused}"
    );

    server.start().await.expect("start PostgreSQL");
    let mut after = None;
    for _ in 0..150 {
        match world
            .api
            .prepare("Order", "order-2", "order.placed", &json!({"total": 2}))
            .await
        {
            Ok(id) => {
                after = Some(id);
                break;
            }
            Err(error) => {
                assert!(error.to_string().contains("503"), "{error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let after = after.expect("the API serves again once the database is back");
    world
        .source
        .begin_marked(&world.markers, after)
        .await
        .commit()
        .await;
    world
        .api
        .commit(after)
        .await
        .expect("commit after the outage");
    assert_eq!(world.wait_published(after).await, 1);
    // The refused prepare left nothing: the table holds exactly the two messages.
    let half = format!("{}_half", world.outbox);
    assert_eq!(world.source.count(&half, None).await, 2);
    assert_eq!(world.published(before).await, 1);
    world.finish().await;
}

/// Every scenario, once per source engine.
macro_rules! on_every_engine {
    ($($scenario:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                super::$scenario(ferry::api::DatabaseEngine::Postgres).await
            })*
        }
        mod mysql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                super::$scenario(ferry::api::DatabaseEngine::Mysql).await
            })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                super::$scenario(ferry::api::DatabaseEngine::Sqlite).await
            })*
        }
    };
}

on_every_engine!(
    a_committed_message_is_delivered_once_and_a_rolled_back_one_never,
    a_producer_that_crashed_after_its_local_commit_is_checked_back_and_delivered,
    a_producer_that_crashed_before_its_local_commit_is_answered_rolled_back,
    an_unreachable_check_back_is_retried_then_dead_lettered_with_the_reason,
    concurrent_duplicate_commits_publish_once,
    a_check_back_waits_for_the_producers_open_transaction,
    bad_requests_are_refused_with_a_status_and_a_message,
    decided_messages_are_purged_after_the_retention_and_the_undecided_kept,
);
