//! The SQL in `docs/outbox.md` is exactly what `ferry outbox migrate` runs.

use ferry::{api::DatabaseEngine, outbox::schema::outbox_ddl};

#[test]
fn the_documented_outbox_sql_matches_the_migration() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/outbox.md"))
        .expect("docs/outbox.md");
    for engine in [
        DatabaseEngine::Postgres,
        DatabaseEngine::Mysql,
        DatabaseEngine::Sqlite,
    ] {
        let sql = outbox_ddl(engine, "ferry_outbox")
            .iter()
            .map(|s| format!("{s};"))
            .collect::<Vec<_>>()
            .join("\n\n");
        assert!(
            doc.contains(&sql),
            "docs/outbox.md is missing the current {} DDL; regenerate it with `ferry outbox migrate --engine {} --print`:\n{sql}",
            engine.as_str(),
            engine.as_str()
        );
    }
}
