//! The manifests the demo runs: the files of `examples/quickstart`, built into the binary, and
//! the few changes a run makes to them (the sink's port, and the broker or database the user
//! chose). Connection URLs are not changed here: they are Secret values, set at resolution.

use std::path::Path;

use serde_json::{Value, json};

use crate::manifest::{Document, LoadError, parse_documents};

/// `examples/quickstart`, file by file.
pub const FILES: [(&str, &str); 6] = [
    (
        "examples/quickstart/00-secret.yaml",
        include_str!("../../examples/quickstart/00-secret.yaml"),
    ),
    (
        "examples/quickstart/10-outbox-source.yaml",
        include_str!("../../examples/quickstart/10-outbox-source.yaml"),
    ),
    (
        "examples/quickstart/20-broker-topic.yaml",
        include_str!("../../examples/quickstart/20-broker-topic.yaml"),
    ),
    (
        "examples/quickstart/30-retry-policies.yaml",
        include_str!("../../examples/quickstart/30-retry-policies.yaml"),
    ),
    (
        "examples/quickstart/40-dead-letter-queue.yaml",
        include_str!("../../examples/quickstart/40-dead-letter-queue.yaml"),
    ),
    (
        "examples/quickstart/50-consumer.yaml",
        include_str!("../../examples/quickstart/50-consumer.yaml"),
    ),
];

/// The Secret holding the database URL, and the one the demo adds for a broker's URL.
pub const DATABASE_SECRET: &str = "demo-db";
pub const BROKER_SECRET: &str = "demo-broker";
/// The names the quickstart gives its objects and tables.
pub const SOURCE: &str = "orders";
pub const CONSUMER: &str = "inventory";
pub const OUTBOX_TABLE: &str = "demo_outbox";
pub const QUEUE_TABLE: &str = "demo_queue";
pub const PROCESSED_TABLE: &str = "demo_processed";
pub const DEAD_LETTER_TABLE: &str = "demo_dead_letters";

/// The broker the demo's topic lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Broker {
    /// The queue table in the demo's database (no server).
    Sql,
    /// A RabbitMQ server: the topic exchange `ferry-demo`.
    Rabbitmq,
    /// A NATS server with JetStream: the stream `FERRY_DEMO`.
    Nats,
    /// A Redis server: the stream `ferry-demo`.
    Redis,
}

/// The database of the orders, the outbox and everything else the demo keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Database {
    /// A file in the data folder (no server).
    Sqlite,
    /// A PostgreSQL server: the demo drops and recreates its own `demo_*` tables there.
    Postgres,
}

impl Database {
    pub fn engine(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// The quickstart's documents as written.
pub fn documents() -> Result<Vec<Document>, LoadError> {
    let mut documents = Vec::new();
    for (file, text) in FILES {
        documents.extend(parse_documents(Path::new(file), text)?);
    }
    Ok(documents)
}

/// Points the consumer at `sink_url` and moves the pipeline to `database` and `broker`.
pub fn adapt(documents: &mut [Document], sink_url: &str, database: Database, broker: Broker) {
    for document in documents.iter_mut() {
        let kind = document.value["kind"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let spec = &mut document.value["spec"];
        match kind.as_str() {
            "Consumer" => {
                spec["sink"]["url"] = sink_url.into();
                spec["idempotency"]["database"]["engine"] = database.engine().into();
            }
            "OutboxSource" => spec["database"]["engine"] = database.engine().into(),
            "DeadLetterQueue" => spec["store"]["database"]["engine"] = database.engine().into(),
            "BrokerTopic" if broker != Broker::Sql => *spec = broker_topic_spec(broker),
            _ => {}
        }
    }
}

/// The `orders` topic on a server broker, named so it does not meet a user's own topics.
fn broker_topic_spec(broker: Broker) -> Value {
    let connection = json!({"secretRef": {"name": BROKER_SECRET}});
    match broker {
        Broker::Rabbitmq => json!({
            "broker": "rabbitmq",
            "connection": connection,
            "provision": true,
            "rabbitmq": {
                "exchange": "ferry-demo",
                "exchangeType": "topic",
                "routingKey": "{aggregateType}.{eventType}"
            }
        }),
        Broker::Nats => json!({
            "broker": "nats",
            "connection": connection,
            "provision": true,
            "nats": {
                "stream": "FERRY_DEMO",
                "subjects": ["ferry-demo.>"],
                "subject": "ferry-demo.{aggregateType}.{eventType}",
                "storage": "file",
                "duplicateWindow": "2m"
            }
        }),
        Broker::Redis => json!({
            "broker": "redis",
            "connection": connection,
            "provision": true,
            "redis": {"stream": "ferry-demo", "maxLength": 1_000_000}
        }),
        Broker::Sql => unreachable!("the quickstart's own topic is the sql one"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_files_are_the_quickstart_folder() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");
        let mut on_disk: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let built_in: Vec<String> = FILES
            .iter()
            .map(|(file, _)| file.trim_start_matches("examples/quickstart/").to_owned())
            .collect();
        assert_eq!(on_disk, built_in, "add new quickstart files to FILES");
    }

    #[test]
    fn every_choice_gives_manifests_that_resolve() {
        for broker in [Broker::Sql, Broker::Rabbitmq, Broker::Nats, Broker::Redis] {
            for database in [Database::Sqlite, Database::Postgres] {
                let mut documents = documents().unwrap();
                adapt(&mut documents, "http://127.0.0.1:1/x", database, broker);
                let plan = crate::standalone::plan_documents(&documents, "default", |secrets| {
                    secrets.set(
                        "default",
                        BROKER_SECRET,
                        "url",
                        "nats://127.0.0.1:4222".into(),
                    );
                })
                .unwrap_or_else(|error| panic!("{broker:?} on {database:?}: {error}"));
                assert_eq!(plan.workloads.len(), 2, "{broker:?} on {database:?}");
            }
        }
    }
}
