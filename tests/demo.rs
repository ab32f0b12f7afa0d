//! `ferry demo`, the README's first command: on the embedded SQLite database, with no servers,
//! the report counted from the database must show every order delivered or (the poison ones)
//! dead-lettered, none lost, none applied twice, and the replay after the fix delivering the
//! rest. Also through the binary, whose exit code says whether the invariants held.

mod support;

use clap::Parser;
use ferry::{
    cli::{Cli, Command},
    demo::{self, DemoArgs},
};
use tokio_util::sync::CancellationToken;

use support::TempDir;

fn demo_args(args: &[&str]) -> DemoArgs {
    let cli = Cli::try_parse_from(["ferry", "demo"].iter().chain(args))
        .unwrap_or_else(|error| panic!("{args:?}: {error}"));
    match cli.command {
        Command::Demo(args) => args,
        other => panic!("parsed as {other:?}"),
    }
}

#[tokio::test]
async fn the_demo_keeps_every_promise_and_its_report_says_so() {
    let data = TempDir::new("demo").expect("a temporary folder");
    let data_path = data.path().to_str().expect("a UTF-8 path");
    let args = demo_args(&[
        "--orders",
        "120",
        "--poison",
        "4",
        "--failure-rate",
        "0.3",
        "--rate",
        "1000",
        "--data",
        data_path,
    ]);
    let outcome = demo::run_demo(&args, &CancellationToken::new())
        .await
        .expect("the demo runs");
    let counts = &outcome.counts;
    assert!(outcome.settled_in_time, "{outcome:?}");
    assert_eq!(counts.orders, 120);
    assert_eq!(counts.poison_orders, 4);
    assert_eq!(counts.delivered, 116, "{counts:?}");
    assert_eq!(
        (counts.dead_poison, counts.dead_other),
        (4, 0),
        "{counts:?}"
    );
    assert_eq!(counts.lost, 0);
    assert_eq!(counts.applied_twice, 0);
    assert_eq!(counts.outbox_pending, 0);
    assert_eq!(counts.stock_mismatches, 0);
    assert!(outcome.reported.published >= 120, "{:?}", outcome.reported);
    assert!(
        outcome.reported.retried > 0 && counts.repeats_at_service > 0,
        "a 30% failure rate over 116 orders must cause retries and lost answers: {outcome:?}"
    );
    let replay = outcome
        .replay
        .as_ref()
        .expect("the dead letters were replayed");
    assert_eq!(replay.progress.replayed, 4, "{replay:?}");
    assert_eq!(replay.counts.delivered, 120, "{replay:?}");
    assert_eq!(replay.counts.applied_twice, 0);
    assert!(outcome.holds());
    assert!(
        data.path().join("ferry-demo.db").exists(),
        "the database stays for `ferry dlq`"
    );
}

#[test]
fn the_demo_command_exits_0_and_prints_the_report_and_the_dlq_commands() {
    let data = TempDir::new("demo_cli").expect("a temporary folder");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "demo",
            "--orders",
            "40",
            "--poison",
            "2",
            "--no-replay",
            "--data",
        ])
        .arg(data.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("run ferry demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for line in [
        "orders committed                  40",
        "dead letters                       2   ok",
        "lost                               0   ok",
        "effects applied twice              0   ok",
        "Every invariant holds",
        "ferry dlq replay --url 'sqlite:",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }

    // The printed `ferry dlq` command finds the two dead letters in the kept database.
    let url = format!("sqlite:{}", data.path().join("ferry-demo.db").display());
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["dlq", "list", "--url", &url, "--table", "demo_dead_letters"])
        .output()
        .expect("run ferry dlq list");
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listing}");
    assert_eq!(listing.matches("POISON").count(), 2, "{listing}");
}
