//! The kubelet harness: the operator reconciles a whole pipeline (Secrets, OutboxSource,
//! BrokerTopic, RetryPolicy, DeadLetterQueue, Consumer) into the in-memory API, and the test
//! plays the kubelet, running the applied Deployments as real `ferry relay` and `ferry
//! consumer` processes against the shared PostgreSQL and RabbitMQ, with exactly the rendered
//! config and Secret references. The statuses the operator writes from those processes'
//! `/status` must follow what really happens: messages flowing, a sink that is down, a poison
//! message.

mod support;

#[path = "operator_pipeline/kubelet.rs"]
mod kubelet;
#[path = "operator_pipeline/pipeline.rs"]
mod pipeline;
#[path = "operator_pipeline/sink.rs"]
mod sink;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use ferry::{
    operator::{
        api::MemoryApi,
        build::{Component, child_name},
        reconcile::{Settings, reconcile_consumer, reconcile_outbox_source},
    },
    outbox::producer::NewEvent,
};
use serde_json::{Value, json};
use tokio::time::Instant;

use kubelet::{Kubelet, RoutedProbe};
use pipeline::{CONSUMER, MAX_LAG, Pipeline, SOURCE};
use sink::Sink;

/// Generous for a loaded machine; the consumer measures its lag every 5 s.
const DEADLINE: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(200);

/// Calls `check` until it returns `Ok`, failing the test with the last `Err` after `limit`.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// The operator's side: the in-memory API and the settings its reconciles use.
struct Operator {
    api: Arc<MemoryApi>,
    settings: Settings,
    namespace: String,
}

impl Operator {
    /// Reconciles the OutboxSource and the Consumer once, as the controller's resync does.
    async fn reconcile(&self) {
        let source = reconcile_outbox_source(&*self.api, &self.namespace, SOURCE, &self.settings)
            .await
            .expect("no API call fails");
        assert!(source.invalid().is_none(), "{:?}", source.invalid());
        let consumer = reconcile_consumer(&*self.api, &self.namespace, CONSUMER, &self.settings)
            .await
            .expect("no API call fails");
        assert!(consumer.invalid().is_none(), "{:?}", consumer.invalid());
    }

    fn status(&self, kind: &str, name: &str) -> Value {
        self.api
            .status(kind, &self.namespace, name)
            .unwrap_or(Value::Null)
    }

    /// `status` of condition `type_` of the resource, `""` when it has none.
    fn condition(&self, kind: &str, name: &str, type_: &str) -> String {
        self.status(kind, name)["conditions"]
            .as_array()
            .and_then(|conditions| conditions.iter().find(|c| c["type"] == type_))
            .and_then(|condition| condition["status"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// The reason of condition `type_` of the resource, `""` when it has none.
    fn reason(&self, kind: &str, name: &str, type_: &str) -> String {
        self.status(kind, name)["conditions"]
            .as_array()
            .and_then(|conditions| conditions.iter().find(|c| c["type"] == type_))
            .and_then(|condition| condition["reason"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// The message of condition `type_` of the resource, `""` when it has none.
    fn message(&self, kind: &str, name: &str, type_: &str) -> String {
        self.status(kind, name)["conditions"]
            .as_array()
            .and_then(|conditions| conditions.iter().find(|c| c["type"] == type_))
            .and_then(|condition| condition["message"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// Changes a stored resource as a user's `kubectl apply` would.
    fn edit(&self, kind: &str, name: &str, change: impl FnOnce(&mut Value)) {
        let mut object = self
            .api
            .get(kind, &self.namespace, name)
            .expect("the resource exists");
        change(&mut object);
        self.api.insert(object);
    }

    /// Reconciles one resource (`SOURCE` is the OutboxSource, anything else the Consumer);
    /// what makes it invalid, if anything.
    async fn reconcile_outcome(&self, name: &str) -> Option<String> {
        let outcome = if name == SOURCE {
            reconcile_outbox_source(&*self.api, &self.namespace, name, &self.settings).await
        } else {
            reconcile_consumer(&*self.api, &self.namespace, name, &self.settings).await
        };
        outcome
            .expect("no API call fails")
            .invalid()
            .map(|error| format!("{error}"))
    }

    /// What the operator decides of every child in the namespace: each Deployment's,
    /// ConfigMap's, Service's and PodDisruptionBudget's name, labels, spec and data (not
    /// the status the kubelet writes).
    fn children(&self) -> Vec<Value> {
        ["Deployment", "ConfigMap", "Service", "PodDisruptionBudget"]
            .into_iter()
            .flat_map(|kind| self.api.objects(kind, &self.namespace))
            .map(|child| {
                json!({
                    "kind": child["kind"], "metadata": {"name": child["metadata"]["name"],
                    "labels": child["metadata"]["labels"]},
                    "spec": child["spec"], "data": child["data"],
                })
            })
            .collect()
    }

    /// Rows waiting in the outbox, as the relay's `/status` reported them.
    fn relay_pending(&self) -> Option<i64> {
        self.status("OutboxSource", SOURCE)["lag"]["messages"].as_i64()
    }

    fn consumer_lag(&self) -> Option<i64> {
        self.status("Consumer", CONSUMER)["lag"]["messages"].as_i64()
    }

    /// Reconciles until `done` holds for the statuses (checking the processes still run).
    async fn until(
        &self,
        kubelet: &mut Kubelet,
        what: &str,
        done: impl Fn(&Operator) -> Result<(), String>,
    ) {
        eventually(what, DEADLINE, async || {
            kubelet.check_alive();
            self.reconcile().await;
            done(self).map_err(|problem| {
                let statuses = json!({
                    "OutboxSource": self.status("OutboxSource", SOURCE),
                    "Consumer": self.status("Consumer", CONSUMER),
                });
                format!("{problem}\n{statuses:#}")
            })
        })
        .await;
    }
}

/// `Ok` when `actual` is `want`, else what it is instead.
fn expect(
    what: &str,
    actual: impl PartialEq<&'static str> + std::fmt::Debug,
    want: &'static str,
) -> Result<(), String> {
    if actual == want {
        Ok(())
    } else {
        Err(format!("{what} is {actual:?}, not {want}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_follow_real_workloads_through_lag_an_outage_and_a_poison_message() {
    let pipeline = Pipeline::new().await;
    let sink = Sink::start().await;
    let api = Arc::new(MemoryApi::new());
    for object in pipeline.manifests(&sink.url()) {
        api.insert(object);
    }
    let probe = Arc::new(RoutedProbe::new());
    let operator = Operator {
        api: api.clone(),
        settings: Settings {
            default_image: "ghcr.io/ferry-dev/ferry:0.1.0".to_owned(),
            probe: probe.clone(),
        },
        namespace: pipeline.namespace.clone(),
    };
    let namespace = pipeline.namespace.as_str();

    // The operator applies the children; the kubelet runs them. The consumer first, so that its
    // queue is bound before the relay publishes.
    operator.reconcile().await;
    let mut kubelet = Kubelet::new(api.clone(), probe);
    kubelet
        .run(namespace, &child_name(CONSUMER, Component::Consumer))
        .await;
    kubelet
        .run(namespace, &child_name(SOURCE, Component::Relay))
        .await;

    // Messages flow: both Ready, the consumer's lag falls to 0, every id reached the sink.
    let first = pipeline.commit(10).await;
    operator
        .until(&mut kubelet, "Ready and no lag after 10 messages", |op| {
            expect(
                "OutboxSource Ready",
                op.condition("OutboxSource", SOURCE, "Ready"),
                "True",
            )?;
            expect(
                "Consumer Ready",
                op.condition("Consumer", CONSUMER, "Ready"),
                "True",
            )?;
            expect(
                "Consumer Lagging",
                op.condition("Consumer", CONSUMER, "Lagging"),
                "False",
            )?;
            let delivered: BTreeSet<String> = sink.accepted().into_keys().collect();
            if first.iter().any(|id| !delivered.contains(id)) {
                return Err(format!("{} of 10 delivered", delivered.len()));
            }
            match (op.consumer_lag(), op.relay_pending()) {
                (Some(0), Some(0)) => Ok(()),
                (consumer, relay) => Err(format!("consumer lag {consumer:?}, relay {relay:?}")),
            }
        })
        .await;
    let accepted = sink.accepted();
    assert_eq!(accepted.len(), first.len(), "{accepted:?}");
    assert!(accepted.values().all(|times| *times == 1), "{accepted:?}");

    // The sink is down: more than lag.maxMessages wait, Lagging turns True, Ready stays True.
    sink.set_down(true);
    let second = pipeline.commit(20).await;
    operator
        .until(&mut kubelet, "Lagging while the sink is down", |op| {
            expect(
                "Consumer Lagging",
                op.condition("Consumer", CONSUMER, "Lagging"),
                "True",
            )?;
            expect(
                "Consumer Ready",
                op.condition("Consumer", CONSUMER, "Ready"),
                "True",
            )
        })
        .await;
    let lag = operator.consumer_lag().unwrap_or_default();
    assert!(
        lag > MAX_LAG,
        "lag {lag} is above lag.maxMessages {MAX_LAG}"
    );
    assert_eq!(
        operator.reason("Consumer", CONSUMER, "Lagging"),
        "MessagesAboveThreshold"
    );
    assert_eq!(
        operator.reason("Consumer", CONSUMER, "Ready"),
        "AvailableWithWarnings"
    );

    // The sink is back: everything is delivered and Lagging returns to False.
    sink.set_down(false);
    operator
        .until(
            &mut kubelet,
            "no longer Lagging once the sink is back",
            |op| {
                expect(
                    "Consumer Lagging",
                    op.condition("Consumer", CONSUMER, "Lagging"),
                    "False",
                )?;
                let accepted = sink.accepted();
                match second
                    .iter()
                    .filter(|id| !accepted.contains_key(*id))
                    .count()
                {
                    0 => Ok(()),
                    missing => Err(format!("{missing} of 20 not delivered")),
                }
            },
        )
        .await;
    let accepted = sink.accepted();
    assert_eq!(accepted.len(), first.len() + second.len(), "{accepted:?}");
    assert!(accepted.values().all(|times| *times == 1), "{accepted:?}");

    // A poison message is dead-lettered at once: DeadLetters turns True (threshold 0).
    let poison = NewEvent::json("Order", "order-poison", "order.created", &json!({"n": -1}))
        .expect("a JSON event");
    sink.poison(&poison.id.to_string());
    pipeline.commit_event(&poison).await;
    operator
        .until(&mut kubelet, "DeadLetters after a poison message", |op| {
            expect(
                "Consumer DeadLetters",
                op.condition("Consumer", CONSUMER, "DeadLetters"),
                "True",
            )?;
            expect(
                "Consumer Ready",
                op.condition("Consumer", CONSUMER, "Ready"),
                "True",
            )
        })
        .await;
    assert_eq!(
        operator.reason("Consumer", CONSUMER, "DeadLetters"),
        "AboveAlertThreshold"
    );
    assert!(
        !sink.accepted().contains_key(&poison.id.to_string()),
        "the poison message was never accepted"
    );

    // Invalid fields while everything runs (an object stored under an older schema is not
    // checked again by the API server): each resource's ReferencesResolved condition names its
    // field, the operator changes no child, and the running workloads keep delivering.
    let children_before = operator.children();
    operator.edit("OutboxSource", SOURCE, |source| {
        source["spec"]["capture"]["batchSize"] = json!(1_000_000);
    });
    operator.edit("Consumer", CONSUMER, |consumer| {
        consumer["spec"]["concurrency"] = json!(0);
    });
    let during = pipeline.commit(5).await;
    eventually("the invalid fields named", DEADLINE, async || {
        kubelet.check_alive();
        let source = operator.reconcile_outcome(SOURCE).await;
        let consumer = operator.reconcile_outcome(CONSUMER).await;
        for (kind, name, outcome, field) in [
            ("OutboxSource", SOURCE, source, "spec.capture.batchSize"),
            ("Consumer", CONSUMER, consumer, "spec.concurrency"),
        ] {
            let said = outcome.unwrap_or_default();
            if !said.contains(field) {
                return Err(format!(
                    "{kind} reconcile said {said:?}, not naming {field}"
                ));
            }
            let message = operator.message(kind, name, "ReferencesResolved");
            expect(
                &format!("{kind} ReferencesResolved"),
                operator.condition(kind, name, "ReferencesResolved"),
                "False",
            )?;
            if operator.reason(kind, name, "ReferencesResolved") != "InvalidSpec"
                || !message.contains(field)
            {
                return Err(format!("{kind} ReferencesResolved says {message:?}"));
            }
        }
        Ok(())
    })
    .await;
    assert_eq!(
        operator.children(),
        children_before,
        "an invalid spec must leave the running workloads' children as they were"
    );
    eventually(
        "delivery to go on with invalid specs",
        DEADLINE,
        async || {
            kubelet.check_alive();
            let accepted = sink.accepted();
            match during
                .iter()
                .filter(|id| !accepted.contains_key(*id))
                .count()
            {
                0 => Ok(()),
                missing => Err(format!(
                    "{missing} of 5 committed with invalid specs not delivered"
                )),
            }
        },
    )
    .await;
    // Fixed again: valid, and still the same children.
    operator.edit("OutboxSource", SOURCE, |source| {
        source["spec"]["capture"]["batchSize"] = json!(100);
    });
    operator.edit("Consumer", CONSUMER, |consumer| {
        consumer["spec"]["concurrency"] = json!(4);
    });
    operator
        .until(&mut kubelet, "valid again once fixed", |op| {
            expect(
                "OutboxSource ReferencesResolved",
                op.condition("OutboxSource", SOURCE, "ReferencesResolved"),
                "True",
            )?;
            expect(
                "Consumer ReferencesResolved",
                op.condition("Consumer", CONSUMER, "ReferencesResolved"),
                "True",
            )
        })
        .await;
    let accepted = sink.accepted();
    assert!(accepted.values().all(|times| *times == 1), "{accepted:?}");

    // Nothing the operator wrote (children, statuses, events) shows the Secret's value.
    let written = format!("{:?}", api.calls());
    assert!(
        written.contains("ApplyStatus") && !written.contains(pipeline::SECRET_PASSWORD),
        "the database password leaked into what the operator wrote"
    );

    // The processes stop before their tables and exchange go (when `pipeline` is dropped).
    kubelet.stop().await;
}
