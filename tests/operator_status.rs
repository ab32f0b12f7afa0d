//! The operator's status step: the conditions and figures an OutboxSource or a Consumer gets
//! from its references, its Deployment, its workload's `/status` and its dead-letter queue;
//! `lastTransitionTime` that moves only when a condition's status does; and a status equal to
//! the stored one (times aside) that is not written again.

#[path = "operator_status/fixtures.rs"]
mod fixtures;
#[path = "operator_status/references.rs"]
mod references;

use ferry::{
    api::{consumer::ConsumerStatus, outbox_source::OutboxSourceStatus, status::condition_type},
    operator::status::{
        CONDITION_TYPES, ConsumerReading, MAX_MESSAGE_BYTES, Probe, RelayReading, compute_status,
        status_changed, status_patch,
    },
};
use serde_json::json;

use fixtures::*;

#[test]
fn ready_when_references_resolve_and_workload_available() {
    let status = compute_status(&healthy_relay());
    let common = &status.common;
    assert_eq!(common.observed_generation, Some(3));
    assert_eq!(ready(common), pair("True", "Available"));
    assert_eq!(
        state(common, condition_type::REFERENCES_RESOLVED),
        pair("True", "Resolved")
    );
    assert_eq!(
        state(common, condition_type::WORKLOAD_AVAILABLE),
        pair("True", "ReplicasAvailable")
    );
    assert_eq!(
        state(common, condition_type::LAGGING),
        pair("False", "WithinThresholds")
    );
    assert_eq!(
        state(common, condition_type::DEAD_LETTERS),
        pair("False", "BelowAlertThreshold")
    );
    assert!(
        common
            .conditions
            .iter()
            .all(|c| c.type_ != condition_type::SUSPENDED),
        "no Suspended condition without suspend"
    );
    for condition in &common.conditions {
        assert_eq!(condition.last_transition_time, t0(), "{}", condition.type_);
        assert_eq!(
            condition.observed_generation,
            Some(3),
            "{}",
            condition.type_
        );
        assert!(!condition.message.is_empty(), "{}", condition.type_);
    }
    let ready_message = &condition(common, condition_type::READY).message;
    assert!(
        ready_message.contains("2 of 2 replicas ready"),
        "{ready_message}"
    );
}

#[test]
fn relay_figures_come_from_the_relay_status_document() {
    let status = compute_status(&healthy_relay());
    let lag = status.lag.expect("lag figures");
    assert_eq!(lag.messages, Some(5));
    assert_eq!(lag.oldest_age_seconds, Some(2));
    assert_eq!(status.published_total, Some(1500));
    assert_eq!(status.dead_lettered_total, Some(1));
    assert_eq!(status.failed_rows, Some(0));
    assert_eq!(status.ready_replicas, Some(2));
    assert_eq!(status.last_error, None);
    let half = status.half_messages.expect("the half-message figures");
    assert_eq!(
        (
            half.waiting,
            half.oldest_waiting_age_seconds,
            half.dead_lettered_kept
        ),
        (Some(2), Some(9), Some(1))
    );
}

#[test]
fn consumer_figures_come_from_the_consumer_status_document() {
    let status: ConsumerStatus = compute_status(&healthy_consumer());
    let lag = status.lag.clone().expect("lag figures");
    assert_eq!(lag.messages, Some(4));
    assert_eq!(lag.oldest_age_seconds, Some(1));
    assert_eq!(status.delivered_total, Some(7));
    assert_eq!(status.retried_total, Some(3));
    assert_eq!(status.dead_lettered_total, Some(1));
    assert_eq!(status.ready_replicas, Some(1));
    let error = status
        .last_error
        .clone()
        .expect("the consumer's last error");
    assert_eq!(error.category, "sink");
    assert_eq!(
        error.message,
        "POST http://billing/events: 503 Service Unavailable"
    );
    assert!(error.at.is_some(), "the time of the error is kept");
    assert_eq!(ready(&status.common), pair("True", "Available"));
}

#[test]
fn status_documents_with_missing_fields_still_parse() {
    let empty: Probe<RelayReading> = Probe::parse(b"{}");
    assert_eq!(empty, Probe::Read(RelayReading::default()));

    // A relay that has not counted its rows yet says null; an older one may lack fields.
    let partial: Probe<RelayReading> =
        Probe::parse(br#"{"pendingRows": null, "publishedTotal": 3, "someNewField": [1]}"#);
    let Probe::Read(reading) = partial else {
        panic!("a partial document is read")
    };
    assert_eq!(reading.pending_rows, None);
    assert_eq!(reading.published_total, Some(3));

    let mut observed = healthy_relay();
    observed.probe = Probe::parse(br#"{"pendingRows": null, "oldestPendingAgeSeconds": null}"#);
    let status = compute_status(&observed);
    assert_eq!(
        state(&status.common, condition_type::LAGGING),
        pair("Unknown", "LagNotReported")
    );
    assert_eq!(ready(&status.common), pair("True", "Available"));
}

#[test]
fn lagging_when_pending_exceeds_max_messages_or_age() {
    let cases = [
        // (pending, oldest age, maxMessages, maxAge, Lagging)
        (
            150,
            10,
            Some(100),
            Some("5m"),
            pair("True", "MessagesAboveThreshold"),
        ),
        (
            50,
            600,
            Some(100),
            Some("5m"),
            pair("True", "AgeAboveThreshold"),
        ),
        (
            150,
            600,
            Some(100),
            Some("5m"),
            pair("True", "MessagesAndAgeAboveThreshold"),
        ),
        (
            100,
            300,
            Some(100),
            Some("5m"),
            pair("False", "WithinThresholds"),
        ),
        (150, 600, None, None, pair("False", "NoThresholds")),
        (150, 10, None, Some("5m"), pair("False", "WithinThresholds")),
    ];
    for (pending, age, max_messages, max_age, expected) in cases {
        let mut observed = healthy_relay();
        observed.probe = read(&relay_status_json(pending, age, 0));
        observed.lag = Some(thresholds(max_messages, max_age));
        let status = compute_status(&observed);
        let lagging = condition(&status.common, condition_type::LAGGING);
        assert_eq!(
            (lagging.status.clone(), lagging.reason.clone()),
            expected,
            "pending {pending}, age {age}s: {}",
            lagging.message
        );
        assert!(
            lagging
                .message
                .contains(&format!("{pending} rows waiting to be published")),
            "{}",
            lagging.message
        );
    }

    let mut observed = healthy_consumer();
    observed.probe = read(&consumer_status_json(500, Some(30)));
    let status = compute_status(&observed);
    let lagging = condition(&status.common, condition_type::LAGGING);
    assert_eq!(lagging.status, "True");
    assert_eq!(lagging.reason, "MessagesAboveThreshold");
    assert!(
        lagging.message.contains("above lag.maxMessages 100"),
        "{}",
        lagging.message
    );
}

#[test]
fn lag_and_dead_letters_are_warnings_named_in_ready() {
    let mut observed = healthy_relay();
    observed.probe = read(&relay_status_json(150, 10, 0));
    observed.dead_letters = Some(dead_letter_queue(Some(11), Some(10)));
    let status = compute_status(&observed);
    assert_eq!(
        state(&status.common, condition_type::LAGGING),
        pair("True", "MessagesAboveThreshold")
    );
    assert_eq!(
        state(&status.common, condition_type::DEAD_LETTERS),
        pair("True", "AboveAlertThreshold")
    );
    assert_eq!(ready(&status.common), pair("True", "AvailableWithWarnings"));
    let message = &condition(&status.common, condition_type::READY).message;
    assert!(
        message.contains("Lagging") && message.contains("DeadLetters"),
        "{message}"
    );
}

#[test]
fn dead_letters_condition_above_alert_threshold() {
    let cases = [
        (
            Some(dead_letter_queue(Some(11), Some(10))),
            pair("True", "AboveAlertThreshold"),
        ),
        (
            Some(dead_letter_queue(Some(10), Some(10))),
            pair("False", "BelowAlertThreshold"),
        ),
        (
            Some(dead_letter_queue(Some(500), None)),
            pair("False", "NoAlertThreshold"),
        ),
        (
            Some(dead_letter_queue(None, Some(10))),
            pair("Unknown", "DepthUnknown"),
        ),
        (None, pair("False", "NoDeadLetterQueue")),
    ];
    for (queue, expected) in cases {
        let mut observed = healthy_consumer();
        observed.dead_letters = queue.clone();
        let status = compute_status(&observed);
        let dead_letters = condition(&status.common, condition_type::DEAD_LETTERS);
        assert_eq!(
            (dead_letters.status.clone(), dead_letters.reason.clone()),
            expected,
            "{queue:?}: {}",
            dead_letters.message
        );
        if queue.is_some() {
            assert!(
                dead_letters.message.contains("orders-dead-letters"),
                "{}",
                dead_letters.message
            );
        }
        assert_eq!(ready(&status.common).0, "True", "{queue:?}");
    }
}

#[test]
fn dead_letters_condition_uses_the_depth_the_workload_counts() {
    let mut observed = healthy_consumer();
    observed.dead_letters = Some(dead_letter_queue(None, Some(10)));
    let mut document = consumer_status_json(4, Some(1));
    document["deadLetterDepth"] = serde_json::json!(12);
    observed.probe = read(&document);
    let status = compute_status(&observed);
    let dead_letters = condition(&status.common, condition_type::DEAD_LETTERS);
    assert_eq!(
        (dead_letters.status.as_str(), dead_letters.reason.as_str()),
        ("True", "AboveAlertThreshold"),
        "{}",
        dead_letters.message
    );
    assert!(
        dead_letters.message.contains("12"),
        "{}",
        dead_letters.message
    );
}

#[test]
fn relay_without_dead_letter_queue_reports_failed_rows() {
    let mut observed = healthy_relay();
    observed.dead_letters = None;
    observed.probe = read(&relay_status_json(5, 2, 3));
    let status = compute_status(&observed);
    let dead_letters = condition(&status.common, condition_type::DEAD_LETTERS);
    assert_eq!(dead_letters.status, "True");
    assert_eq!(dead_letters.reason, "FailedRowsInOutbox");
    assert!(
        dead_letters.message.starts_with("3 rows"),
        "{}",
        dead_letters.message
    );
    assert_eq!(status.failed_rows, Some(3));
}

#[test]
fn suspend_reports_suspended_and_not_ready() {
    let mut observed = healthy_relay();
    observed.suspended = true;
    observed.deployment = Some(deployment_state(deployment(0, 0)));
    observed.probe = Probe::NotProbed;
    let status = compute_status(&observed);
    let common = &status.common;
    assert_eq!(
        state(common, condition_type::SUSPENDED),
        pair("True", "SuspendedBySpec")
    );
    assert_eq!(ready(common), pair("False", "Suspended"));
    assert_eq!(
        state(common, condition_type::WORKLOAD_AVAILABLE),
        pair("False", "Suspended")
    );
    assert_eq!(
        state(common, condition_type::LAGGING),
        pair("Unknown", "Suspended")
    );
    assert!(
        condition(common, condition_type::READY)
            .message
            .contains("rows wait in the outbox"),
        "{}",
        condition(common, condition_type::READY).message
    );
    assert_eq!(status.ready_replicas, Some(0));

    // Resuming drops the Suspended condition.
    let mut resumed = healthy_relay();
    resumed.previous = Some(status);
    let status = compute_status(&resumed);
    assert!(
        status
            .common
            .conditions
            .iter()
            .all(|c| c.type_ != condition_type::SUSPENDED)
    );
    assert_eq!(ready(&status.common), pair("True", "Available"));
}

#[test]
fn replicas_zero_without_suspend_is_not_available() {
    let mut observed = healthy_consumer();
    observed.deployment = Some(deployment_state(deployment(0, 0)));
    let status = compute_status(&observed);
    assert_eq!(ready(&status.common), pair("False", "ScaledToZero"));
}

#[test]
fn progress_deadline_exceeded_makes_workload_unavailable_with_that_reason() {
    let mut stuck = deployment(2, 0);
    stuck["status"]["conditions"] = json!([
        {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
         "message": "Deployment does not have minimum availability."},
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": "ReplicaSet \"orders-relay-6d5f\" has timed out progressing."}
    ]);
    let mut observed = healthy_relay();
    observed.deployment = Some(deployment_state(stuck));
    observed.probe = Probe::Unreachable("connection refused".to_owned());
    let status = compute_status(&observed);
    let available = condition(&status.common, condition_type::WORKLOAD_AVAILABLE);
    assert_eq!(available.status, "False");
    assert_eq!(available.reason, "ProgressDeadlineExceeded");
    assert!(
        available.message.contains("has timed out progressing")
            && available.message.contains("0 of 2 replicas ready"),
        "{}",
        available.message
    );
    assert_eq!(
        ready(&status.common),
        pair("False", "ProgressDeadlineExceeded")
    );
    assert_eq!(status.ready_replicas, Some(0));
}

#[test]
fn workload_availability_follows_the_deployment() {
    let mut unavailable = deployment(1, 0);
    unavailable["status"]["conditions"][0]["message"] =
        json!("Deployment does not have minimum availability.");
    let mut unobserved = deployment(2, 2);
    unobserved["metadata"]["generation"] = json!(5);
    unobserved["status"]
        .as_object_mut()
        .expect("status")
        .remove("conditions");
    unobserved["status"]["observedGeneration"] = json!(4);
    let mut rolling = deployment(2, 2);
    rolling["status"]["updatedReplicas"] = json!(1);
    rolling["status"]["replicas"] = json!(3);

    let cases = [
        (Some(unavailable), pair("False", "ReplicasUnavailable")),
        (Some(unobserved), pair("Unknown", "DeploymentPending")),
        (Some(rolling), pair("True", "RollingOut")),
        (None, pair("False", "DeploymentNotFound")),
    ];
    for (deployment, expected) in cases {
        let mut observed = healthy_relay();
        observed.deployment = deployment.map(deployment_state);
        let status = compute_status(&observed);
        assert_eq!(
            state(&status.common, condition_type::WORKLOAD_AVAILABLE),
            expected
        );
        let expected_ready = match expected.0.as_str() {
            "True" => pair("True", "Available"),
            other => pair(other, &expected.1),
        };
        assert_eq!(ready(&status.common), expected_ready);
    }
}

#[test]
fn transition_time_kept_when_status_unchanged() {
    let first = compute_status(&healthy_relay());
    // Five minutes later the relay has more rows waiting (a new message), still within limits,
    // and the DLQ depth is unknown for a moment (a new status, a new time).
    let mut later = healthy_relay();
    later.now = t1();
    later.probe = read(&relay_status_json(60, 20, 0));
    later.dead_letters = Some(dead_letter_queue(None, Some(10)));
    later.previous = Some(first);
    let second = compute_status(&later);
    let lagging = condition(&second.common, condition_type::LAGGING);
    assert_eq!(lagging.status, "False");
    assert!(lagging.message.contains("60 rows"), "{}", lagging.message);
    assert_eq!(lagging.last_transition_time, t0(), "same status, old time");
    let ready_condition = condition(&second.common, condition_type::READY);
    assert_eq!(ready_condition.last_transition_time, t0());
    let dead_letters = condition(&second.common, condition_type::DEAD_LETTERS);
    assert_eq!(dead_letters.status, "Unknown");
    assert_eq!(dead_letters.last_transition_time, t1(), "False -> Unknown");
}

#[test]
fn transition_time_moves_when_status_flips() {
    let first = compute_status(&healthy_relay());
    let mut lagging = healthy_relay();
    lagging.now = t1();
    lagging.probe = read(&relay_status_json(500, 10, 0));
    lagging.previous = Some(first);
    let second = compute_status(&lagging);
    let condition_now = condition(&second.common, condition_type::LAGGING);
    assert_eq!(condition_now.status, "True");
    assert_eq!(condition_now.last_transition_time, t1());
    assert_eq!(
        condition(&second.common, condition_type::READY).last_transition_time,
        t0(),
        "Ready stays True (a warning), so its time stays"
    );

    let mut recovered = healthy_relay();
    recovered.now = t2();
    recovered.previous = Some(second);
    let third = compute_status(&recovered);
    let condition_now = condition(&third.common, condition_type::LAGGING);
    assert_eq!(condition_now.status, "False");
    assert_eq!(condition_now.last_transition_time, t2());
}

#[test]
fn unchanged_status_is_not_rewritten() {
    let first = compute_status(&healthy_relay());
    assert!(
        status_changed(None, &first),
        "a first status is always written"
    );

    let mut again = healthy_relay();
    again.now = t1();
    again.previous = Some(first.clone());
    let second = compute_status(&again);
    assert!(!status_changed(Some(&first), &second));

    // Times alone do not count: transition times, the time of the last error, the order of
    // conditions, and conditions someone else wrote.
    let mut stored = first.clone();
    for condition in &mut stored.common.conditions {
        condition.last_transition_time = t2();
    }
    stored.common.conditions.reverse();
    let mut foreign = stored.common.conditions[0].clone();
    foreign.type_ = "example.com/Audited".to_owned();
    stored.common.conditions.push(foreign);
    assert!(!status_changed(Some(&stored), &first));

    let consumer = compute_status(&healthy_consumer());
    let mut later_error = consumer.clone();
    if let Some(error) = &mut later_error.last_error {
        error.at = Some(t2());
    }
    assert!(!status_changed(Some(&consumer), &later_error));

    // Anything else does.
    let mut moved = healthy_relay();
    moved.probe = read(&relay_status_json(6, 2, 0));
    assert!(status_changed(Some(&first), &compute_status(&moved)));
    let mut newer = healthy_relay();
    newer.generation = Some(4);
    assert!(status_changed(Some(&first), &compute_status(&newer)));
}

#[test]
fn unreachable_status_endpoint_is_reported_not_fatal() {
    let first = compute_status(&healthy_relay());
    let mut observed = healthy_relay();
    observed.now = t1();
    observed.probe = Probe::from_fetch::<Vec<u8>, _>(Err(
        "GET http://orders-relay.shop.svc:8080/status: connection refused",
    ));
    observed.previous = Some(first.clone());
    let status = compute_status(&observed);
    let lagging = condition(&status.common, condition_type::LAGGING);
    assert_eq!(lagging.status, "Unknown");
    assert_eq!(lagging.reason, "StatusEndpointUnreachable");
    assert_eq!(
        lagging.message,
        "status endpoint unreachable: GET http://orders-relay.shop.svc:8080/status: connection refused"
    );
    assert_eq!(
        ready(&status.common),
        pair("True", "Available"),
        "the pods serve; only the operator cannot see their figures"
    );
    assert!(
        condition(&status.common, condition_type::READY)
            .message
            .contains("status endpoint unreachable"),
    );
    // The figures are the last ones read.
    assert_eq!(status.lag, first.lag);
    assert_eq!(status.published_total, first.published_total);

    let mut garbled = healthy_relay();
    garbled.probe = Probe::parse(b"<html>502 Bad Gateway</html>");
    let status = compute_status(&garbled);
    assert_eq!(
        state(&status.common, condition_type::LAGGING),
        pair("Unknown", "StatusEndpointUnreadable")
    );
    assert_eq!(ready(&status.common).0, "True");
}

#[test]
fn status_patch_is_a_server_side_apply_body_for_the_status_subresource() {
    let status = compute_status(&healthy_relay());
    let patch = status_patch(&status);
    assert_eq!(patch["apiVersion"], "ferry.dev/v1alpha1");
    assert_eq!(patch["kind"], "OutboxSource");
    assert_eq!(
        patch.as_object().map(|o| o.len()),
        Some(3),
        "apiVersion, kind and status only: {patch:#}"
    );
    assert_eq!(patch["status"]["observedGeneration"], 3);
    assert_eq!(patch["status"]["lag"]["messages"], 5);
    assert_eq!(patch["status"]["publishedTotal"], 1500);
    assert_eq!(patch["status"]["readyReplicas"], 2);
    let conditions = patch["status"]["conditions"]
        .as_array()
        .expect("conditions");
    assert_eq!(conditions.len(), 5);
    assert_eq!(conditions[0]["type"], "Ready");
    assert_eq!(conditions[0]["lastTransitionTime"], "2026-11-30T06:00:00Z");
    let round_trip: OutboxSourceStatus =
        serde_json::from_value(patch["status"].clone()).expect("the status reads back");
    assert_eq!(round_trip, status);

    let consumer = status_patch(&compute_status(&healthy_consumer()));
    assert_eq!(consumer["kind"], "Consumer");
    assert_eq!(consumer["status"]["retriedTotal"], 3);
    assert_eq!(consumer["status"]["lastError"]["category"], "sink");
}

#[test]
fn every_condition_written_is_one_the_status_step_owns() {
    let mut observed = healthy_consumer();
    observed.suspended = true;
    let status = compute_status(&observed);
    let types: Vec<&str> = status
        .common
        .conditions
        .iter()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(types.len(), CONDITION_TYPES.len());
    for type_ in types {
        assert!(CONDITION_TYPES.contains(&type_), "{type_}");
    }
}

#[test]
fn long_messages_are_cut() {
    let mut observed = healthy_consumer();
    observed.probe = Probe::<ConsumerReading>::Unreachable("é".repeat(3000));
    let status = compute_status(&observed);
    let message = &condition(&status.common, condition_type::LAGGING).message;
    assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
    assert!(message.ends_with("..."));
}
