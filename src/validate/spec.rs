//! Per-kind checks of a decoded spec: ranges, name patterns, cross-field rules and templates.

use std::{collections::HashSet, sync::LazyLock};

use regex::Regex;

use super::{FieldError, FieldPath};
use crate::api::{
    broker_topic::{BrokerTopicSpec, NatsTopic, RabbitMqTopic, RedisTopic, SqlTopic},
    common::{
        Connection, DatabaseEngine, DatabaseTable, LagThresholds, OBJECT_NAME_PATTERN, ObjectRef,
        SECRET_KEY_PATTERN, SecretKeyRef, TABLE_NAME_PATTERN, WorkloadSpec,
    },
    consumer::{ConsumerSpec, HttpSink, Idempotency},
    dead_letter_queue::DeadLetterQueueSpec,
    duration::Duration,
    outbox_source::{CleanupMode, OutboxSourceSpec, RouteMatch, TransactionalMessages},
    retry_policy::{HTTP_STATUS_PATTERN, RetryPolicySpec},
};

/// The placeholders a routing-key or subject template may use.
pub const TEMPLATE_PLACEHOLDERS: [&str; 3] = ["aggregateType", "aggregateId", "eventType"];

/// A spec that can check itself; `errors` collects every problem, not just the first.
pub trait SpecCheck {
    fn check(&self, spec: &FieldPath, errors: &mut Vec<FieldError>);
}

/// Checks a decoded spec, returning every problem found with its field path under `spec`.
pub fn check_spec(spec: &impl SpecCheck) -> Vec<FieldError> {
    let mut errors = Vec::new();
    spec.check(&FieldPath::root("spec"), &mut errors);
    errors
}

fn pattern(source: &str) -> Regex {
    Regex::new(source)
        .unwrap_or_else(|error| panic!("built-in pattern {source:?} must compile: {error}"))
}

static OBJECT_NAME: LazyLock<Regex> = LazyLock::new(|| pattern(OBJECT_NAME_PATTERN));
static TABLE_NAME: LazyLock<Regex> = LazyLock::new(|| pattern(TABLE_NAME_PATTERN));
static SECRET_KEY: LazyLock<Regex> = LazyLock::new(|| pattern(SECRET_KEY_PATTERN));
static HTTP_STATUS: LazyLock<Regex> = LazyLock::new(|| pattern(HTTP_STATUS_PATTERN));
static ROUTE_NAME: LazyLock<Regex> = LazyLock::new(|| pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"));
static NATS_STREAM: LazyLock<Regex> = LazyLock::new(|| pattern(r"^[^.*>\s]+$"));
static NO_WHITESPACE: LazyLock<Regex> = LazyLock::new(|| pattern(r"^[^\s]+$"));

fn in_range<T: PartialOrd + std::fmt::Display>(
    path: &FieldPath,
    value: T,
    min: T,
    max: Option<T>,
    errors: &mut Vec<FieldError>,
) {
    if value < min {
        errors.push(path.error(format!("must be at least {min} (got {value})")));
    } else if let Some(max) = max.filter(|max| value > *max) {
        errors.push(path.error(format!("must be at most {max} (got {value})")));
    }
}

fn length(path: &FieldPath, value: &str, min: usize, max: usize, errors: &mut Vec<FieldError>) {
    let len = value.chars().count();
    if len < min {
        errors.push(path.error(if min == 1 {
            "must not be empty".to_owned()
        } else {
            format!("must be at least {min} characters")
        }));
    } else if len > max {
        errors.push(path.error(format!("must be at most {max} characters (got {len})")));
    }
}

fn matches(path: &FieldPath, value: &str, regex: &Regex, what: &str, errors: &mut Vec<FieldError>) {
    if !regex.is_match(value) {
        errors.push(path.error(format!("{value:?} is not {what}")));
    }
}

fn positive(path: &FieldPath, value: Duration, errors: &mut Vec<FieldError>) {
    if value.is_zero() {
        errors.push(path.error("must be greater than zero"));
    }
}

fn at_least(path: &FieldPath, value: Duration, min: Duration, errors: &mut Vec<FieldError>) {
    if value < min {
        errors.push(path.error(format!("must be at least {min} (got {value})")));
    }
}

fn object_ref(path: &FieldPath, reference: &ObjectRef, errors: &mut Vec<FieldError>) {
    let path = path.child("name");
    length(&path, &reference.name, 1, 253, errors);
    if !reference.name.is_empty() {
        matches(
            &path,
            &reference.name,
            &OBJECT_NAME,
            "a valid object name (lower-case letters, digits, '-' and '.')",
            errors,
        );
    }
}

fn connection(path: &FieldPath, connection: &Connection, errors: &mut Vec<FieldError>) {
    secret_key_ref(&path.child("secretRef"), &connection.secret_ref, errors);
}

fn secret_key_ref(secret: &FieldPath, key: &SecretKeyRef, errors: &mut Vec<FieldError>) {
    let name = secret.child("name");
    length(&name, &key.name, 1, 253, errors);
    if !key.name.is_empty() {
        matches(
            &name,
            &key.name,
            &OBJECT_NAME,
            "a valid Secret name",
            errors,
        );
    }
    matches(
        &secret.child("key"),
        &key.key,
        &SECRET_KEY,
        "a valid Secret key",
        errors,
    );
}

/// The API's rule for table names, for command-line arguments that bypass the API.
pub fn check_table_name(table: &str) -> Option<String> {
    (!TABLE_NAME.is_match(table)).then(|| {
        format!(
            "{table:?} is not a table name (letters, digits and '_', optionally 'schema.table')"
        )
    })
}

fn table_name(path: &FieldPath, table: &str, errors: &mut Vec<FieldError>) {
    matches(
        path,
        table,
        &TABLE_NAME,
        "a table name (letters, digits and '_', optionally 'schema.table')",
        errors,
    );
}

fn database_table(path: &FieldPath, database: &DatabaseTable, errors: &mut Vec<FieldError>) {
    connection(&path.child("connection"), &database.connection, errors);
    if let Some(table) = &database.table {
        table_name(&path.child("table"), table, errors);
    }
}

fn workload(path: &FieldPath, workload: &WorkloadSpec, errors: &mut Vec<FieldError>) {
    in_range(
        &path.child("replicas"),
        workload.replicas,
        0,
        Some(64),
        errors,
    );
    if let Some(image) = &workload.image {
        length(&path.child("image"), image, 1, 512, errors);
    }
}

fn lag(path: &FieldPath, lag: &LagThresholds, errors: &mut Vec<FieldError>) {
    if let Some(max) = lag.max_messages {
        in_range(&path.child("maxMessages"), max, 1, None, errors);
    }
    if let Some(age) = lag.max_age {
        positive(&path.child("maxAge"), age, errors);
    }
}

/// Checks a routing-key or subject template: balanced braces around known placeholders only.
pub fn template(path: &FieldPath, template: &str, errors: &mut Vec<FieldError>) {
    length(path, template, 1, 255, errors);
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            errors.push(path.error(format!("{template:?} has a '}}' without a matching '{{'")));
            return;
        }
        let Some(close) = rest[open..].find('}') else {
            errors.push(path.error(format!("{template:?} has a '{{' without a matching '}}'")));
            return;
        };
        let placeholder = &rest[open + 1..open + close];
        if !TEMPLATE_PLACEHOLDERS.contains(&placeholder) {
            errors.push(path.error(format!(
                "unknown placeholder {{{placeholder}}} in {template:?}; use {{aggregateType}}, {{aggregateId}} or {{eventType}}"
            )));
        }
        rest = &rest[open + close + 1..];
    }
}

impl SpecCheck for OutboxSourceSpec {
    fn check(&self, spec: &FieldPath, errors: &mut Vec<FieldError>) {
        let database = spec.child("database");
        connection(
            &database.child("connection"),
            &self.database.connection,
            errors,
        );
        table_name(&database.child("table"), &self.database.table, errors);

        let capture = spec.child("capture");
        let poll = capture.child("pollInterval");
        at_least(
            &poll,
            self.capture.poll_interval,
            Duration::from_millis(10),
            errors,
        );
        if self.capture.poll_interval > Duration::from_secs(3600) {
            errors.push(poll.error(format!(
                "must be at most 1h (got {})",
                self.capture.poll_interval
            )));
        }
        in_range(
            &capture.child("batchSize"),
            self.capture.batch_size,
            1,
            Some(10_000),
            errors,
        );
        if self.capture.notify == Some(true) && self.database.engine != DatabaseEngine::Postgres {
            errors.push(capture.child("notify").error(format!(
                "needs a postgres database: {} has no notifications (leave it unset and tune pollInterval)",
                self.database.engine.as_str()
            )));
        }

        let cleanup = spec.child("cleanup");
        if self.cleanup.mode == CleanupMode::Delete && self.cleanup.retention.is_some() {
            errors.push(
                cleanup
                    .child("retention")
                    .error("applies only when mode is Mark"),
            );
        }
        in_range(
            &cleanup.child("purgeBatchSize"),
            self.cleanup.purge_batch_size,
            1,
            Some(100_000),
            errors,
        );

        let routes = spec.child("routes");
        in_range(&routes, self.routes.len(), 1, Some(64), errors);
        let mut names = HashSet::new();
        let mut catch_all: Option<&str> = None;
        for (index, route) in self.routes.iter().enumerate() {
            let path = routes.index(index);
            let name = path.child("name");
            length(&name, &route.name, 1, 63, errors);
            if !route.name.is_empty() {
                matches(
                    &name,
                    &route.name,
                    &ROUTE_NAME,
                    "a valid route name (lower-case letters, digits and '-')",
                    errors,
                );
            }
            if !names.insert(route.name.as_str()) {
                errors.push(name.error(format!("duplicate route name {:?}", route.name)));
            }
            route_match(&path.child("match"), &route.matches, errors);
            object_ref(&path.child("topicRef"), &route.topic_ref, errors);
            if let Some(key) = &route.routing_key {
                template(&path.child("routingKey"), key, errors);
            }
            if let Some(earlier) = catch_all {
                errors.push(path.error(format!(
                    "route {:?} can never match: route {earlier:?} before it matches every row",
                    route.name
                )));
            } else if route.matches == RouteMatch::default() {
                catch_all = Some(&route.name);
            }
        }

        if let Some(reference) = &self.retry_policy_ref {
            object_ref(&spec.child("retryPolicyRef"), reference, errors);
        }
        if let Some(reference) = &self.dead_letter_queue_ref {
            object_ref(&spec.child("deadLetterQueueRef"), reference, errors);
        }
        workload(&spec.child("relay"), &self.relay, errors);
        if self.database.engine == DatabaseEngine::Sqlite && self.relay.replicas > 1 {
            errors.push(spec.child("relay").child("replicas").error(format!(
                "a sqlite outbox has one writer at a time: must be 0 or 1 (got {})",
                self.relay.replicas
            )));
        }
        if let Some(thresholds) = &self.lag {
            lag(&spec.child("lag"), thresholds, errors);
        }
        if let Some(transactional) = &self.transactional_messages {
            transactional_messages(&spec.child("transactionalMessages"), transactional, errors);
        }
    }
}

fn transactional_messages(
    path: &FieldPath,
    transactional: &TransactionalMessages,
    errors: &mut Vec<FieldError>,
) {
    let port = path.child("port");
    in_range(&port, transactional.port, 1, Some(65_535), errors);
    if transactional.port == 8080 {
        errors.push(port.error("8080 is the relay's status port; pick another"));
    }
    secret_key_ref(
        &path.child("tokenSecretRef"),
        &transactional.token_secret_ref,
        errors,
    );
    let check_back = path.child("checkBack");
    http_url(
        &check_back.child("url"),
        &transactional.check_back.url,
        errors,
    );
    let timing = &transactional.check_back;
    for (field, value) in [
        ("firstCheckDelay", timing.first_check_delay),
        ("interval", timing.interval),
        ("timeout", timing.timeout),
    ] {
        positive(&check_back.child(field), value, errors);
    }
    positive(&path.child("retention"), transactional.retention, errors);
    in_range(
        &check_back.child("maxChecks"),
        transactional.check_back.max_checks,
        1,
        Some(1000),
        errors,
    );
}

fn route_match(path: &FieldPath, route: &RouteMatch, errors: &mut Vec<FieldError>) {
    if let Some(aggregate) = &route.aggregate_type {
        length(&path.child("aggregateType"), aggregate, 1, 255, errors);
    }
    if let Some(event) = &route.event_type {
        length(&path.child("eventType"), event, 1, 255, errors);
    }
}

impl SpecCheck for BrokerTopicSpec {
    fn check(&self, spec: &FieldPath, errors: &mut Vec<FieldError>) {
        let broker = self.broker.as_str();
        connection(&spec.child("connection"), &self.connection, errors);
        let sections = [
            ("rabbitmq", self.rabbitmq.is_some()),
            ("nats", self.nats.is_some()),
            ("redis", self.redis.is_some()),
            ("sql", self.sql.is_some()),
        ];
        for (section, present) in sections {
            if present && section != broker {
                errors.push(spec.child(section).error(format!(
                    "{section} settings are only allowed when broker is {section} (broker is {broker})"
                )));
            }
        }
        if let Some(rabbitmq) = &self.rabbitmq {
            rabbitmq_topic(&spec.child("rabbitmq"), rabbitmq, errors);
        }
        if let Some(nats) = &self.nats {
            nats_topic(&spec.child("nats"), nats, errors);
        }
        if let Some(redis) = &self.redis {
            redis_topic(&spec.child("redis"), redis, errors);
        }
        if let Some(sql) = &self.sql {
            sql_topic(&spec.child("sql"), sql, errors);
        }
    }
}

fn rabbitmq_topic(path: &FieldPath, topic: &RabbitMqTopic, errors: &mut Vec<FieldError>) {
    if let Some(exchange) = &topic.exchange {
        length(&path.child("exchange"), exchange, 1, 255, errors);
    }
    template(&path.child("routingKey"), &topic.routing_key, errors);
}

fn nats_topic(path: &FieldPath, topic: &NatsTopic, errors: &mut Vec<FieldError>) {
    if let Some(stream) = &topic.stream {
        let stream_path = path.child("stream");
        length(&stream_path, stream, 1, 255, errors);
        if !stream.is_empty() {
            matches(
                &stream_path,
                stream,
                &NATS_STREAM,
                "a valid stream name (no spaces, '.', '*' or '>')",
                errors,
            );
        }
    }
    let subjects = path.child("subjects");
    in_range(&subjects, topic.subjects.len(), 0, Some(32), errors);
    for (index, subject) in topic.subjects.iter().enumerate() {
        let subject_path = subjects.index(index);
        length(&subject_path, subject, 1, 255, errors);
        if !subject.is_empty() {
            matches(
                &subject_path,
                subject,
                &NO_WHITESPACE,
                "a valid subject (no spaces)",
                errors,
            );
        }
    }
    if let Some(subject) = &topic.subject {
        template(&path.child("subject"), subject, errors);
    }
    in_range(&path.child("replicas"), topic.replicas, 1, Some(5), errors);
    let window = path.child("duplicateWindow");
    if topic.duplicate_window.is_zero() {
        errors.push(
            window.error("must be greater than zero: it is what removes re-published messages"),
        );
    }
}

fn redis_topic(path: &FieldPath, topic: &RedisTopic, errors: &mut Vec<FieldError>) {
    if let Some(stream) = &topic.stream {
        length(&path.child("stream"), stream, 1, 512, errors);
    }
    if let Some(max) = topic.max_length {
        in_range(&path.child("maxLength"), max, 1, None, errors);
    }
}

fn sql_topic(path: &FieldPath, topic: &SqlTopic, errors: &mut Vec<FieldError>) {
    table_name(&path.child("table"), &topic.table, errors);
    if let Some(queue) = &topic.queue {
        length(&path.child("queue"), queue, 1, 255, errors);
    }
}

impl SpecCheck for RetryPolicySpec {
    fn check(&self, spec: &FieldPath, errors: &mut Vec<FieldError>) {
        in_range(
            &spec.child("maxAttempts"),
            self.max_attempts,
            1,
            Some(1000),
            errors,
        );
        let initial = spec.child("initialBackoff");
        positive(&initial, self.initial_backoff, errors);
        if self.initial_backoff > self.max_backoff {
            errors.push(initial.error(format!(
                "initialBackoff must not exceed maxBackoff ({} > {})",
                self.initial_backoff, self.max_backoff
            )));
        }
        let multiplier = spec.child("multiplier");
        if !self.multiplier.is_finite() {
            errors.push(multiplier.error("must be a finite number"));
        } else {
            in_range(&multiplier, self.multiplier, 1.0, Some(10.0), errors);
        }
        positive(&spec.child("attemptTimeout"), self.attempt_timeout, errors);
        let statuses = spec.child("retryOn").child("httpStatuses");
        in_range(
            &statuses,
            self.retry_on.http_statuses.len(),
            0,
            Some(100),
            errors,
        );
        for (index, status) in self.retry_on.http_statuses.iter().enumerate() {
            let path = statuses.index(index);
            if !HTTP_STATUS.is_match(status) {
                errors.push(path.error(format!(
                    "{status:?} is not an HTTP status (\"503\") or class (\"5xx\")"
                )));
            } else if status.starts_with('2') {
                errors.push(path.error(format!("{status} is a success and cannot be retried")));
            }
        }
    }
}

impl SpecCheck for DeadLetterQueueSpec {
    fn check(&self, spec: &FieldPath, errors: &mut Vec<FieldError>) {
        let store = spec.child("store");
        match (&self.store.database, &self.store.topic_ref) {
            (Some(database), None) => database_table(&store.child("database"), database, errors),
            (None, Some(topic)) => object_ref(&store.child("topicRef"), topic, errors),
            (Some(_), Some(_)) => errors
                .push(store.error("set exactly one of store.database or store.topicRef, not both")),
            (None, None) => {
                errors.push(store.error("set exactly one of store.database or store.topicRef"))
            }
        }
        at_least(
            &spec.child("retention"),
            self.retention,
            Duration::from_secs(3600),
            errors,
        );
        if let Some(alert) = &self.alert {
            in_range(
                &spec.child("alert").child("depthThreshold"),
                alert.depth_threshold,
                0,
                None,
                errors,
            );
        }
    }
}

impl SpecCheck for ConsumerSpec {
    fn check(&self, spec: &FieldPath, errors: &mut Vec<FieldError>) {
        object_ref(&spec.child("topicRef"), &self.topic_ref, errors);
        if let Some(filter) = &self.filter {
            let types = spec.child("filter").child("eventTypes");
            in_range(&types, filter.event_types.len(), 0, Some(64), errors);
            for (index, event_type) in filter.event_types.iter().enumerate() {
                length(&types.index(index), event_type, 1, 255, errors);
            }
        }
        sink(&spec.child("sink"), &self.sink, errors);
        in_range(
            &spec.child("concurrency"),
            self.concurrency,
            1,
            Some(1024),
            errors,
        );
        if let Some(idempotency) = &self.idempotency {
            idempotency_store(&spec.child("idempotency"), idempotency, errors);
        }
        if let Some(reference) = &self.retry_policy_ref {
            object_ref(&spec.child("retryPolicyRef"), reference, errors);
        }
        if let Some(reference) = &self.dead_letter_queue_ref {
            object_ref(&spec.child("deadLetterQueueRef"), reference, errors);
        }
        workload(&spec.child("workload"), &self.workload, errors);
        if let Some(thresholds) = &self.lag {
            lag(&spec.child("lag"), thresholds, errors);
        }
    }
}

fn http_url(url_path: &FieldPath, text: &str, errors: &mut Vec<FieldError>) {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
        Ok(url) => errors.push(url_path.error(format!(
            "{text:?} must be an http:// or https:// URL with a host (got scheme {:?})",
            url.scheme()
        ))),
        Err(error) => errors.push(url_path.error(format!("{text:?} is not a URL: {error}"))),
    }
}

fn sink(path: &FieldPath, sink: &HttpSink, errors: &mut Vec<FieldError>) {
    http_url(&path.child("url"), &sink.url, errors);
    if let Some(timeout) = sink.timeout {
        positive(&path.child("timeout"), timeout, errors);
    }
}

fn idempotency_store(path: &FieldPath, idempotency: &Idempotency, errors: &mut Vec<FieldError>) {
    match (&idempotency.database, &idempotency.redis) {
        (Some(database), None) => database_table(&path.child("database"), database, errors),
        (None, Some(redis)) => {
            connection(
                &path.child("redis").child("connection"),
                &redis.connection,
                errors,
            );
            length(
                &path.child("redis").child("keyPrefix"),
                &redis.key_prefix,
                1,
                128,
                errors,
            );
        }
        (Some(_), Some(_)) => errors.push(
            path.error("set exactly one of idempotency.database or idempotency.redis, not both"),
        ),
        (None, None) => {
            errors.push(path.error("set exactly one of idempotency.database or idempotency.redis"))
        }
    }
    at_least(
        &path.child("window"),
        idempotency.window,
        Duration::from_secs(60),
        errors,
    );
}
