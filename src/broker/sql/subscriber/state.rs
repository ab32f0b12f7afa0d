//! The consumer-group state tables kept next to a queue table: their names and their schema.
//!
//! `<table>_groups` holds one row per (group, queue): `done_through`, the `seq` through which
//! every message of the queue is done for the group, plus the PostgreSQL horizon bookkeeping
//! (see the `postgres` module). `<table>_deliveries` holds one row per message the group has
//! started above `done_through`: its attempt count, when it is due, who leases it until when,
//! and whether it is done.

use super::super::{Engine, TableName};

/// PostgreSQL folds longer identifiers to this many bytes, which could make a state table's
/// name collide with the queue table's own.
const MAX_IDENTIFIER: usize = 63;

/// The qualified names of a queue table's state tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StateTables {
    pub groups: String,
    pub deliveries: String,
}

impl StateTables {
    pub fn of(table: &TableName) -> Self {
        Self {
            groups: sibling(table, "_groups"),
            deliveries: sibling(table, "_deliveries"),
        }
    }
}

/// `<name><suffix>` in the queue table's schema. A name too long for that keeps its start
/// and gets a hash of the whole name, so that two long queue-table names sharing a prefix
/// still get state tables of their own.
fn sibling(table: &TableName, suffix: &str) -> String {
    let name = if table.name.len() + suffix.len() <= MAX_IDENTIFIER {
        format!("{}{suffix}", table.name)
    } else {
        let hash = format!("_{:08x}", fnv1a(table.name.as_bytes()));
        // Table names are ASCII (`TableName::parse`), so any byte index is a char boundary.
        let kept = MAX_IDENTIFIER - suffix.len() - hash.len();
        format!("{}{hash}{suffix}", &table.name[..kept])
    };
    match &table.schema {
        Some(schema) => format!("{schema}.{name}"),
        None => name,
    }
}

/// 32-bit FNV-1a: stable across releases and platforms, unlike the standard library's hasher.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

/// The statements that create the state tables when missing. Idempotent (`IF NOT EXISTS`).
pub(super) fn state_schema(engine: Engine, tables: &StateTables) -> Vec<String> {
    let StateTables { groups, deliveries } = tables;
    match engine {
        Engine::Postgres => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {groups} (group_name TEXT NOT NULL, queue TEXT NOT NULL, \
                 done_through BIGINT NOT NULL DEFAULT 0, horizon BIGINT NOT NULL DEFAULT 0, \
                 mark_seq BIGINT, mark_writers TEXT[], \
                 PRIMARY KEY (group_name, queue))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {deliveries} (group_name TEXT NOT NULL, \
                 queue TEXT NOT NULL, seq BIGINT NOT NULL, attempt INTEGER NOT NULL, \
                 due_at TIMESTAMPTZ NOT NULL, leased_by TEXT, leased_until TIMESTAMPTZ, \
                 done BOOLEAN NOT NULL DEFAULT FALSE, PRIMARY KEY (group_name, queue, seq))"
            ),
        ],
        // Times are milliseconds since the Unix epoch: SQLite has no time type, and integers
        // compare and add without parsing.
        Engine::Sqlite => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {groups} (group_name TEXT NOT NULL, queue TEXT NOT NULL, \
                 done_through INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (group_name, queue))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {deliveries} (group_name TEXT NOT NULL, \
                 queue TEXT NOT NULL, seq INTEGER NOT NULL, attempt INTEGER NOT NULL, \
                 due_at INTEGER NOT NULL, leased_by TEXT, leased_until INTEGER, \
                 done INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (group_name, queue, seq))"
            ),
        ],
    }
}

/// Statements that select every column from no row: each fails when its table or a column
/// is missing.
pub(super) fn state_probes(engine: Engine, tables: &StateTables) -> Vec<String> {
    let group_columns = match engine {
        Engine::Postgres => "group_name, queue, done_through, horizon, mark_seq, mark_writers",
        Engine::Sqlite => "group_name, queue, done_through",
    };
    let delivery_columns = "group_name, queue, seq, attempt, due_at, leased_by, leased_until, done";
    vec![
        format!("SELECT {group_columns} FROM {} WHERE 1 = 0", tables.groups),
        format!(
            "SELECT {delivery_columns} FROM {} WHERE 1 = 0",
            tables.deliveries
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_tables_sit_next_to_the_queue_table_in_its_schema() {
        let table = TableName::parse("messaging.ferry_queue").expect("valid");
        assert_eq!(
            StateTables::of(&table),
            StateTables {
                groups: "messaging.ferry_queue_groups".into(),
                deliveries: "messaging.ferry_queue_deliveries".into(),
            }
        );
    }

    #[test]
    fn a_long_queue_table_name_gets_distinct_state_tables_within_the_identifier_limit() {
        let first = TableName::parse(&format!("{}a", "q".repeat(62))).expect("valid");
        let second = TableName::parse(&format!("{}b", "q".repeat(62))).expect("valid");
        let (first, second) = (StateTables::of(&first), StateTables::of(&second));
        for name in [&first.groups, &first.deliveries, &second.groups] {
            assert!(name.len() <= MAX_IDENTIFIER, "{name} is too long");
        }
        assert_ne!(first.deliveries, second.deliveries);
        assert!(first.deliveries.ends_with("_deliveries"));
    }
}
