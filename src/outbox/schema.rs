//! The outbox table's DDL per engine: what `ferry outbox migrate` applies and what the docs show
//! for services that write rows with their own driver.
//!
//! Columns, in every engine:
//! - `seq`: the publish order. PostgreSQL assigns it in a trigger *after* taking a per-key
//!   transaction lock, so within one aggregate id, `seq` order is commit order.
//! - `id`: the message id (a UUID), `ce-id` and the idempotency key downstream; unique.
//! - `aggregate_type`, `aggregate_id` (the ordering key), `event_type`.
//! - `payload`: a JSON document; `headers`: a JSON object of string values (`traceparent`...).
//! - `created_at`; and the relay's own `published_at`, `failed_at`, `failure`.

use crate::api::DatabaseEngine;

/// The schema version these statements create; recorded in `ferry_schema_versions`.
pub const OUTBOX_SCHEMA_VERSION: i32 = 1;

/// A table name split into its optional schema and its bare name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName {
    pub qualified: String,
    pub bare: String,
}

impl TableName {
    /// The name is validated by the API (`[A-Za-z_][A-Za-z0-9_]*`, optionally `schema.table`),
    /// so it can be written into SQL as it is.
    pub fn new(qualified: &str) -> Self {
        let bare = qualified.rsplit('.').next().unwrap_or(qualified).to_owned();
        Self {
            qualified: qualified.to_owned(),
            bare,
        }
    }

    /// A related object's name in the same schema: `app.ferry_outbox` + `_seq` -> `app.ferry_outbox_seq`.
    pub fn sibling(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.qualified)
    }

    /// The PostgreSQL NOTIFY channel of this table.
    pub fn channel(&self) -> String {
        format!("ferry_{}", self.qualified.replace('.', "_")).to_ascii_lowercase()
    }
}

/// Statements that create the outbox table and its helpers; each is idempotent.
pub fn outbox_ddl(engine: DatabaseEngine, table: &str) -> Vec<String> {
    let t = TableName::new(table);
    match engine {
        DatabaseEngine::Postgres => postgres_ddl(&t),
        DatabaseEngine::Mysql => mysql_ddl(&t),
        DatabaseEngine::Sqlite => sqlite_ddl(&t),
    }
}

fn postgres_ddl(t: &TableName) -> Vec<String> {
    let (q, bare, seq, channel) = (&t.qualified, &t.bare, t.sibling("_seq"), t.channel());
    let lock_fn = t.sibling("_before_insert");
    let notify_fn = t.sibling("_notify");
    vec![
        format!("CREATE SEQUENCE IF NOT EXISTS {seq}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {q} (
    seq            BIGINT PRIMARY KEY,
    id             UUID NOT NULL UNIQUE,
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    payload        JSONB NOT NULL,
    headers        JSONB,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at   TIMESTAMPTZ,
    failed_at      TIMESTAMPTZ,
    failure        TEXT
)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {bare}_pending ON {q} (seq) WHERE published_at IS NULL AND failed_at IS NULL"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {bare}_pending_key ON {q} (aggregate_id, seq) WHERE published_at IS NULL AND failed_at IS NULL"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {bare}_published ON {q} (published_at) WHERE published_at IS NOT NULL"
        ),
        // The lock makes writers of one aggregate take `seq` in the order they will commit:
        // a second writer waits for the first one's commit before it gets its number.
        format!(
            "CREATE OR REPLACE FUNCTION {lock_fn}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('{q}'), hashtext(NEW.aggregate_id));
    NEW.seq := nextval('{seq}');
    RETURN NEW;
END
$$"
        ),
        format!("DROP TRIGGER IF EXISTS {bare}_before_insert ON {q}"),
        format!(
            "CREATE TRIGGER {bare}_before_insert BEFORE INSERT ON {q} FOR EACH ROW EXECUTE FUNCTION {lock_fn}()"
        ),
        // One notification per statement; PostgreSQL delivers it at commit and folds repeats.
        format!(
            "CREATE OR REPLACE FUNCTION {notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$$"
        ),
        format!("DROP TRIGGER IF EXISTS {bare}_notify ON {q}"),
        format!(
            "CREATE TRIGGER {bare}_notify AFTER INSERT ON {q} FOR EACH STATEMENT EXECUTE FUNCTION {notify_fn}()"
        ),
    ]
}

fn mysql_ddl(t: &TableName) -> Vec<String> {
    let (q, bare) = (&t.qualified, &t.bare);
    vec![format!(
        "CREATE TABLE IF NOT EXISTS {q} (
    seq            BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id             CHAR(36) NOT NULL,
    aggregate_type VARCHAR(255) NOT NULL,
    aggregate_id   VARCHAR(255) NOT NULL,
    event_type     VARCHAR(255) NOT NULL,
    payload        LONGTEXT NOT NULL,
    headers        TEXT NULL,
    created_at     TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    published_at   TIMESTAMP(6) NULL DEFAULT NULL,
    failed_at      TIMESTAMP(6) NULL DEFAULT NULL,
    failure        TEXT NULL,
    UNIQUE KEY {bare}_id (id),
    KEY {bare}_pending (published_at, failed_at, seq),
    KEY {bare}_pending_key (aggregate_id, published_at, failed_at, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    )]
}

fn sqlite_ddl(t: &TableName) -> Vec<String> {
    let (q, bare) = (&t.qualified, &t.bare);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {q} (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    payload        TEXT NOT NULL,
    headers        TEXT,
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    published_at   TEXT,
    failed_at      TEXT,
    failure        TEXT
)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {bare}_pending ON {bare} (seq) WHERE published_at IS NULL AND failed_at IS NULL"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {bare}_pending_key ON {bare} (aggregate_id, seq) WHERE published_at IS NULL AND failed_at IS NULL"
        ),
    ]
}

/// Records which schema version a table has, so later versions can migrate it.
pub fn version_table_ddl(engine: DatabaseEngine) -> String {
    let time = match engine {
        DatabaseEngine::Postgres => "TIMESTAMPTZ NOT NULL DEFAULT now()",
        DatabaseEngine::Mysql => "TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
        DatabaseEngine::Sqlite => "TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
    };
    format!(
        "CREATE TABLE IF NOT EXISTS ferry_schema_versions (
    table_name VARCHAR(255) NOT NULL PRIMARY KEY,
    kind       VARCHAR(64) NOT NULL,
    version    INTEGER NOT NULL,
    applied_at {time}
)"
    )
}
