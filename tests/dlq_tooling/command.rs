//! `ferry dlq` through its command-line definitions and `run_to`, on SQLite: the commands
//! share the library paths the engine tests above cover, so one engine is enough here.

use clap::Parser;
use ferry::{
    api::DatabaseEngine,
    dlq::command::{DlqCommand, EXIT_TIMED_OUT, run_to},
};

use super::{BILLING, Fixture, INVENTORY, fill, letter, on};
use crate::support::TempDir;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: DlqCommand,
}

fn parse<S: AsRef<str>>(args: &[S]) -> Result<DlqCommand, clap::Error> {
    Cli::try_parse_from(std::iter::once("dlq").chain(args.iter().map(AsRef::as_ref)))
        .map(|cli| cli.command)
}

async fn run<S: AsRef<str>>(args: &[S]) -> (Result<std::process::ExitCode, String>, String) {
    let command = parse(args).unwrap_or_else(|error| panic!("{error}"));
    let mut out = Vec::new();
    let result = run_to(command, &mut out)
        .await
        .map_err(|error| format!("{error:#}"));
    (result, String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn command_lists_shows_groups_and_discards() {
    on(DatabaseEngine::Sqlite, async |f: &Fixture| {
        let s = fill(f).await;
        let connection = ["--url", f.url.as_str(), "--table", f.table.as_str()];
        let with = |extra: &[&str]| -> Vec<String> {
            let mut args = vec![extra[0].to_owned()];
            args.extend(connection.iter().map(|arg| arg.to_string()));
            args.extend(extra[1..].iter().map(|arg| arg.to_string()));
            args
        };

        let (result, text) = run(&with(&["list", "--origin", BILLING])).await;
        assert!(result.is_ok(), "{result:?}");
        assert!(text.starts_with("SEQ  ORIGIN"), "{text}");
        assert_eq!(text.lines().count(), 6, "{text}");
        assert!(text.contains("HTTP 422: bad \"iban\""), "{text}");

        let (result, text) = run(&with(&["list", "-o", "json", "--event-type", "order.*"])).await;
        assert!(result.is_ok(), "{result:?}");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        let ids: Vec<&str> = json
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|letter| letter["message_id"].as_str())
            .collect();
        assert_eq!(ids, ["a1", "a2", "a3", "b1"]);

        let (result, text) = run(&with(&["show", "a2"])).await;
        assert!(result.is_ok(), "{result:?}");
        for expected in [
            "Dead letter",
            "HTTP 500: order \"o-2\" failed",
            "x-tenant: acme ✓",
            "\"note\": \"ünïcödé\"",
            "dead_lettered",
        ] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
        let seq = s[1].to_string();
        let (result, text) = run(&with(&["show", &seq, "-o", "json"])).await;
        assert!(result.is_ok(), "{result:?}");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["message_id"], "a2");
        assert_eq!(json["body"]["order"], "a2");
        assert_eq!(json["history"][0]["action"], "dead_lettered");

        let (result, _) = run(&with(&["show", "nope"])).await;
        let message = result.err().unwrap_or_default();
        assert!(
            message.contains("no dead letter has seq or message id \"nope\""),
            "{message}"
        );

        let (result, text) = run(&with(&["stats"])).await;
        assert!(result.is_ok(), "{result:?}");
        assert!(text.contains("8 dead letters in 7 groups"), "{text}");

        let (result, _) = run(&with(&["discard"])).await;
        let message = result.err().unwrap_or_default();
        assert!(
            message.contains("discard needs an explicit selection"),
            "{message}"
        );
        let (result, text) = run(&with(&[
            "discard", "--id", "a1", "--by", "dana", "--note", "dup",
        ]))
        .await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(text.trim(), "Discarded 1 dead letter.");
        let (result, text) = run(&with(&["purge", "--older-than", "30d"])).await;
        assert!(result.is_ok(), "{result:?}");
        assert!(text.starts_with("Purged 0 dead letters"), "{text}");
    })
    .await;
}

#[tokio::test]
async fn command_replay_refuses_outbox_letters_and_times_out_without_a_consumer() {
    on(DatabaseEngine::Sqlite, async |f: &Fixture| {
        f.put(&letter(
            "outboxsource/shop/orders",
            "r1",
            "order.created",
            "unroutable",
            0,
        ))
        .await;
        f.put(&letter(INVENTORY, "k1", "order.created", "HTTP 500", 1))
            .await;
        let base = [
            "replay",
            "--url",
            f.url.as_str(),
            "--table",
            f.table.as_str(),
        ];
        let args = |extra: &[&'static str]| [&base[..], extra].concat();

        let (result, _) = run(&args(&["--all"])).await;
        let message = result.err().unwrap_or_default();
        assert!(
            message.contains("replay refused") && message.contains("outboxsource/shop/orders: 1"),
            "{message}"
        );
        let (result, text) = run(&args(&["--origin", INVENTORY, "--timeout", "1s"])).await;
        assert_eq!(
            result,
            Ok(std::process::ExitCode::from(EXIT_TIMED_OUT)),
            "{text}"
        );
        assert!(
            text.contains("Timed out with 1 dead letter not delivered yet"),
            "{text}"
        );
        let (result, text) = run(&args(&[
            "--origin",
            INVENTORY,
            "--status",
            "replay_requested",
            "--no-wait",
        ]))
        .await;
        assert!(result.is_ok(), "{result:?}");
        assert!(
            text.starts_with("Nothing to replay"),
            "already requested: {text}"
        );
    })
    .await;
}

#[tokio::test]
async fn command_rejects_bad_values_naming_the_flag() {
    let url = "sqlite:/nonexistent/dir/dlq.db";
    for (args, flag) in [
        (
            vec!["list", "--url", url, "--since", "yesterday"],
            "--since",
        ),
        (vec!["list", "--url", url, "--until", "2h ago"], "--until"),
        (
            vec!["list", "--url", url, "--fingerprint", "xyz"],
            "--fingerprint",
        ),
        (vec!["list", "--url", url, "--table", "bad-name"], "--table"),
        (vec!["list", "--url", url, "--limit", "0"], "--limit"),
        (
            vec!["list", "--url", url, "--status", "pending"],
            "--status",
        ),
        (vec!["list", "--url", url, "--origin", ""], "--origin"),
        (
            vec!["purge", "--url", url, "--older-than", "30"],
            "--older-than",
        ),
        (
            vec!["replay", "--url", url, "--all", "--timeout", "soon"],
            "--timeout",
        ),
    ] {
        let error = parse(&args)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains(flag), "{args:?}: {error}");
    }
    let (result, _) = run(&["list", "--url", "http://user:secret@host/db"]).await;
    let message = result.err().unwrap_or_default();
    assert!(
        message.contains("--url") && !message.contains("secret"),
        "{message}"
    );
    let (result, _) = run(&["list", "--url", url, "--since", "2h", "--until", "3h"]).await;
    let message = result.err().unwrap_or_default();
    assert!(
        message.contains("--since") && message.contains("--until"),
        "{message}"
    );
    let (result, _) = run(&["stats", "--url", url]).await;
    let message = result.err().unwrap_or_default();
    assert!(
        message.starts_with("cannot open the database --url names (sqlite)"),
        "a missing SQLite file is not created: {message}"
    );
}

#[tokio::test]
async fn command_on_a_database_without_the_table_says_so() {
    let dir = TempDir::new("dlq_missing").expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("other.db").display());
    ferry::outbox::sqlite::open_pool(&url)
        .await
        .expect("an empty database");
    let (result, _) = run(&["list", "--url", &url, "--table", "nowhere"]).await;
    let message = result.err().unwrap_or_default();
    assert!(
        message.contains("no dead-letter table \"nowhere\"") && message.contains("--table"),
        "{message}"
    );
}
