//! Builds a workload's config from validated objects: follows references, fills defaults.

use std::collections::BTreeMap;

use super::{
    consumer::{ConsumerConfig, ConsumerIdentity, IdempotencyConfig, SinkConfig},
    relay::{
        CaptureConfig, CleanupConfig, DatabaseConfig, DeadLetterConfig, HttpConfig, RelayConfig,
        RouteConfig, SourceIdentity, TransactionalConfig,
    },
    secret::SecretSource,
    topic::{NatsTarget, RabbitMqTarget, RedisTarget, SqlTarget, TopicConfig, TopicTarget},
};
use crate::{
    api::{
        BrokerKind, BrokerTopic, DatabaseEngine, Duration, ObjectRef, SecretKeyRef,
        broker_topic::{DEFAULT_KEY_TEMPLATE, ExchangeType, NatsStorage, RabbitMqTopic, SqlTopic},
        consumer::DEFAULT_IDEMPOTENCY_TABLE,
        dead_letter_queue::DEFAULT_DEAD_LETTER_TABLE,
        outbox_source::CleanupMode,
        retry_policy::RetryPolicySpec,
    },
    validate::{Catalog, FieldError, FieldPath},
};

/// Default retention of published rows with `cleanup.mode: Mark`.
pub const DEFAULT_MARK_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The environment variable the operator maps a Secret key to: `FERRY_SECRET_<NAME>_<KEY>`.
pub fn env_var_for(secret: &SecretKeyRef) -> String {
    let clean = |text: &str| {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    format!(
        "FERRY_SECRET_{}_{}",
        clean(&secret.name),
        clean(&secret.key)
    )
}

/// Secrets read from the environment, as the operator's pods get them.
pub fn secret_from_env(secret: &SecretKeyRef) -> SecretSource {
    SecretSource::Env(env_var_for(secret))
}

struct Resolver<'a> {
    catalog: &'a Catalog,
    namespace: &'a str,
    secret: &'a dyn Fn(&SecretKeyRef) -> SecretSource,
    errors: Vec<FieldError>,
}

impl Resolver<'_> {
    fn topic(&mut self, path: &FieldPath, name: &str) -> Option<TopicConfig> {
        let Some(topic) = self
            .catalog
            .broker_topics
            .get(&(self.namespace.to_owned(), name.to_owned()))
        else {
            self.errors.push(path.error(format!(
                "BrokerTopic {name:?} not found in namespace {:?}",
                self.namespace
            )));
            return None;
        };
        match topic_config(topic, self.secret) {
            Ok(config) => Some(config),
            Err(message) => {
                self.errors
                    .push(path.error(format!("BrokerTopic {name:?}: {message}")));
                None
            }
        }
    }
}

impl Resolver<'_> {
    /// The policy `reference` names, or the defaults when there is none.
    fn retry_policy(&mut self, path: &FieldPath, reference: Option<&ObjectRef>) -> RetryPolicySpec {
        let Some(reference) = reference else {
            return RetryPolicySpec::default();
        };
        match self
            .catalog
            .retry_policies
            .get(&(self.namespace.to_owned(), reference.name.clone()))
        {
            Some(policy) => policy.spec.clone(),
            None => {
                self.errors.push(
                    path.child("retryPolicyRef")
                        .child("name")
                        .error(format!("RetryPolicy {:?} not found", reference.name)),
                );
                RetryPolicySpec::default()
            }
        }
    }

    /// The store of the DeadLetterQueue `reference` names.
    fn dead_letter(
        &mut self,
        path: &FieldPath,
        reference: Option<&ObjectRef>,
    ) -> Option<DeadLetterConfig> {
        let reference = reference?;
        let dlq_path = path.child("deadLetterQueueRef").child("name");
        let Some(queue) = self
            .catalog
            .dead_letter_queues
            .get(&(self.namespace.to_owned(), reference.name.clone()))
        else {
            self.errors
                .push(dlq_path.error(format!("DeadLetterQueue {:?} not found", reference.name)));
            return None;
        };
        match (&queue.spec.store.database, &queue.spec.store.topic_ref) {
            (Some(database), _) => Some(DeadLetterConfig::Database(DatabaseConfig {
                engine: database.engine,
                url: (self.secret)(&database.connection.secret_ref),
                table: database
                    .table
                    .clone()
                    .unwrap_or_else(|| DEFAULT_DEAD_LETTER_TABLE.to_owned()),
            })),
            (None, Some(topic)) => self
                .topic(&dlq_path, &topic.name)
                .map(DeadLetterConfig::Topic),
            (None, None) => None,
        }
    }
}

/// The relay config of the OutboxSource `namespace/name`, resolved against `catalog`.
pub fn resolve_relay(
    catalog: &Catalog,
    namespace: &str,
    name: &str,
    secret: &dyn Fn(&SecretKeyRef) -> SecretSource,
) -> Result<RelayConfig, Vec<FieldError>> {
    let key = (namespace.to_owned(), name.to_owned());
    let source = catalog.outbox_sources.get(&key).ok_or_else(|| {
        vec![FieldError::new(
            "",
            format!("OutboxSource {namespace}/{name} not found"),
        )]
    })?;
    let spec = &source.spec;
    let path = FieldPath::root("spec");
    let mut resolver = Resolver {
        catalog,
        namespace,
        secret,
        errors: Vec::new(),
    };

    let mut topics = BTreeMap::new();
    let mut routes = Vec::new();
    for (index, route) in spec.routes.iter().enumerate() {
        let topic_path = path
            .child("routes")
            .index(index)
            .child("topicRef")
            .child("name");
        if let Some(topic) = resolver.topic(&topic_path, &route.topic_ref.name) {
            topics.insert(route.topic_ref.name.clone(), topic);
        }
        routes.push(RouteConfig {
            name: route.name.clone(),
            aggregate_type: route.matches.aggregate_type.clone(),
            event_type: route.matches.event_type.clone(),
            topic: route.topic_ref.name.clone(),
            routing_key: route.routing_key.clone(),
        });
    }

    let retry = resolver.retry_policy(&path, spec.retry_policy_ref.as_ref());
    let dead_letter = resolver.dead_letter(&path, spec.dead_letter_queue_ref.as_ref());

    if !resolver.errors.is_empty() {
        return Err(resolver.errors);
    }
    Ok(RelayConfig {
        source: SourceIdentity {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
        database: DatabaseConfig {
            engine: spec.database.engine,
            url: secret(&spec.database.connection.secret_ref),
            table: spec.database.table.clone(),
        },
        capture: CaptureConfig {
            poll_interval: spec.capture.poll_interval,
            batch_size: spec.capture.batch_size.max(1) as u32,
            max_message_bytes: spec.capture.max_message_bytes.max(1024) as u32,
            notify: spec
                .capture
                .notify
                .unwrap_or(spec.database.engine == DatabaseEngine::Postgres),
            workers: 2,
        },
        ordering: spec.ordering,
        cleanup: CleanupConfig {
            mode: spec.cleanup.mode,
            retention: match spec.cleanup.mode {
                CleanupMode::Mark => spec.cleanup.retention.unwrap_or(DEFAULT_MARK_RETENTION),
                CleanupMode::Delete => Duration::from_secs(0),
            },
            purge_batch_size: spec.cleanup.purge_batch_size.max(1) as u32,
        },
        routes,
        topics,
        retry,
        dead_letter,
        http: HttpConfig::default(),
        transactional: spec
            .transactional_messages
            .as_ref()
            .filter(|api| api.enabled)
            .map(|api| TransactionalConfig {
                listen: std::net::SocketAddr::from((
                    [0, 0, 0, 0],
                    api.port.clamp(1, 65_535) as u16,
                )),
                token: secret(&api.token_secret_ref),
                check_back_url: api.check_back.url.clone(),
                first_check_delay: api.check_back.first_check_delay,
                check_interval: api.check_back.interval,
                max_checks: api.check_back.max_checks.max(1) as u32,
                check_timeout: api.check_back.timeout,
                max_request_bytes: spec.capture.max_message_bytes.max(1024) as u32,
                retention: api.retention,
            }),
    })
}

/// The consumer config of the Consumer `namespace/name`, resolved against `catalog`.
pub fn resolve_consumer(
    catalog: &Catalog,
    namespace: &str,
    name: &str,
    secret: &dyn Fn(&SecretKeyRef) -> SecretSource,
) -> Result<ConsumerConfig, Vec<FieldError>> {
    let key = (namespace.to_owned(), name.to_owned());
    let consumer = catalog.consumers.get(&key).ok_or_else(|| {
        vec![FieldError::new(
            "",
            format!("Consumer {namespace}/{name} not found"),
        )]
    })?;
    let spec = &consumer.spec;
    let path = FieldPath::root("spec");
    let mut resolver = Resolver {
        catalog,
        namespace,
        secret,
        errors: Vec::new(),
    };
    let topic = resolver.topic(&path.child("topicRef").child("name"), &spec.topic_ref.name);
    let retry = resolver.retry_policy(&path, spec.retry_policy_ref.as_ref());
    let dead_letter = resolver.dead_letter(&path, spec.dead_letter_queue_ref.as_ref());
    let idempotency = spec.idempotency.as_ref().and_then(|idempotency| {
        match (&idempotency.database, &idempotency.redis) {
            (Some(database), _) => Some(IdempotencyConfig::Database {
                database: DatabaseConfig {
                    engine: database.engine,
                    url: secret(&database.connection.secret_ref),
                    table: database
                        .table
                        .clone()
                        .unwrap_or_else(|| DEFAULT_IDEMPOTENCY_TABLE.to_owned()),
                },
                window: idempotency.window,
            }),
            (None, Some(redis)) => Some(IdempotencyConfig::Redis {
                url: secret(&redis.connection.secret_ref),
                key_prefix: redis.key_prefix.clone(),
                window: idempotency.window,
            }),
            (None, None) => None,
        }
    });
    let (Some(topic), true) = (topic, resolver.errors.is_empty()) else {
        return Err(resolver.errors);
    };
    Ok(ConsumerConfig {
        consumer: ConsumerIdentity {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
        topic,
        event_types: spec
            .filter
            .as_ref()
            .map(|filter| filter.event_types.clone())
            .unwrap_or_default(),
        sink: SinkConfig {
            url: spec.sink.url.clone(),
            timeout: spec.sink.timeout.unwrap_or(retry.attempt_timeout),
        },
        concurrency: spec.concurrency.max(1) as u32,
        ordering: spec.ordering,
        idempotency,
        retry,
        dead_letter,
        http: HttpConfig::default(),
        ack_timeout: None,
    })
}

/// The NATS stream name a BrokerTopic gets by default: `orders-v2` -> `ORDERS_V2`.
pub fn default_stream_name(topic: &str) -> String {
    topic
        .chars()
        .map(|c| {
            if c == '-' || c == '.' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

/// A BrokerTopic with every default filled in.
pub fn topic_config(
    topic: &BrokerTopic,
    secret: &dyn Fn(&SecretKeyRef) -> SecretSource,
) -> Result<TopicConfig, String> {
    let name = topic.metadata.name.clone().unwrap_or_default();
    let spec = &topic.spec;
    let target = match spec.broker {
        BrokerKind::Rabbitmq => {
            let rabbitmq = spec.rabbitmq.clone().unwrap_or(RabbitMqTopic {
                exchange: None,
                exchange_type: ExchangeType::Topic,
                routing_key: DEFAULT_KEY_TEMPLATE.to_owned(),
            });
            TopicTarget::Rabbitmq(RabbitMqTarget {
                exchange: rabbitmq.exchange.unwrap_or_else(|| name.clone()),
                exchange_type: rabbitmq.exchange_type,
                routing_key: rabbitmq.routing_key,
            })
        }
        BrokerKind::Nats => {
            let nats = spec.nats.clone();
            let subject = nats
                .as_ref()
                .and_then(|n| n.subject.clone())
                .unwrap_or_else(|| format!("{name}.{DEFAULT_KEY_TEMPLATE}"));
            let subjects = match nats
                .as_ref()
                .map(|n| n.subjects.clone())
                .filter(|s| !s.is_empty())
            {
                Some(subjects) => subjects,
                None => vec![default_stream_subject(&subject)?],
            };
            TopicTarget::Nats(NatsTarget {
                stream: nats
                    .as_ref()
                    .and_then(|n| n.stream.clone())
                    .unwrap_or_else(|| default_stream_name(&name)),
                subjects,
                subject,
                replicas: nats.as_ref().map_or(1, |n| n.replicas),
                duplicate_window: nats
                    .as_ref()
                    .map_or(Duration::from_secs(120), |n| n.duplicate_window),
                max_age: nats.as_ref().and_then(|n| n.max_age),
                storage: nats.as_ref().map_or(NatsStorage::File, |n| n.storage),
            })
        }
        BrokerKind::Redis => TopicTarget::Redis(RedisTarget {
            stream: spec
                .redis
                .as_ref()
                .and_then(|r| r.stream.clone())
                .unwrap_or_else(|| name.clone()),
            max_length: spec.redis.as_ref().and_then(|r| r.max_length),
        }),
        BrokerKind::Sql => {
            let sql = spec.sql.clone().unwrap_or(SqlTopic {
                table: crate::api::broker_topic::DEFAULT_QUEUE_TABLE.to_owned(),
                queue: None,
            });
            TopicTarget::Sql(SqlTarget {
                table: sql.table,
                queue: sql.queue.unwrap_or_else(|| name.clone()),
            })
        }
    };
    Ok(TopicConfig {
        name,
        url: secret(&spec.connection.secret_ref),
        provision: spec.provision,
        target,
    })
}

/// The stream subject that covers a publish subject template: its literal leading tokens
/// followed by `>` (`orders.{eventType}` -> `orders.>`).
fn default_stream_subject(template: &str) -> Result<String, String> {
    let literal: Vec<&str> = template
        .split('.')
        .take_while(|token| !token.contains('{'))
        .collect();
    if literal.is_empty() {
        return Err(format!(
            "nats.subject {template:?} starts with a placeholder: set nats.subjects to the stream's subjects"
        ));
    }
    Ok(format!("{}.>", literal.join(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_subjects_cover_the_literal_prefix() {
        assert_eq!(
            default_stream_subject("orders.{aggregateType}.{eventType}"),
            Ok("orders.>".into())
        );
        assert_eq!(
            default_stream_subject("shop.orders.{eventType}"),
            Ok("shop.orders.>".into())
        );
        assert!(default_stream_subject("{eventType}").is_err());
    }

    #[test]
    fn env_var_names_are_shell_safe() {
        let secret = SecretKeyRef {
            name: "orders-db.v2".into(),
            key: "url".into(),
        };
        assert_eq!(env_var_for(&secret), "FERRY_SECRET_ORDERS_DB_V2_URL");
        assert_eq!(default_stream_name("orders-v2"), "ORDERS_V2");
    }
}
