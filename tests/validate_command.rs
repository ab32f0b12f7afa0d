//! `ferry validate` and `ferry crd` as a user runs them: exit codes and what they print.

use std::process::Command;

fn ferry(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("ferry runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn validate_accepts_the_examples_and_counts_them() {
    let (ok, stdout, stderr) = ferry(&["validate", "-f", "examples/orders", "--check-secrets"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("7 Ferry objects valid, 3 Secrets read"),
        "{stdout}"
    );
}

#[test]
fn validate_fails_and_names_file_object_and_field() {
    let (ok, stdout, _) = ferry(&[
        "validate",
        "-f",
        "tests/fixtures/invalid/outbox-notify-on-mysql.yaml",
    ]);
    assert!(!ok);
    assert!(
        stdout.contains("tests/fixtures/invalid/outbox-notify-on-mysql.yaml (document 1): OutboxSource shop/outbox-notify-on-mysql: spec.capture.notify:"),
        "{stdout}"
    );
    assert!(stdout.contains("1 problem found"), "{stdout}");
}

#[test]
fn validate_reports_a_missing_file_by_name() {
    let (ok, _, stderr) = ferry(&["validate", "-f", "no/such/file.yaml"]);
    assert!(!ok);
    assert!(
        stderr.contains("no/such/file.yaml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn validate_reports_broken_yaml_with_file_and_document() {
    let dir = std::env::temp_dir().join(format!("ferry-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("broken.yaml");
    std::fs::write(&file, "kind: A\n---\nkey: [unclosed\n").expect("write");
    let (ok, _, stderr) = ferry(&["validate", "-f", file.to_str().expect("utf-8 path")]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(!ok);
    assert!(
        stderr.contains("broken.yaml: document 2 is not valid YAML"),
        "{stderr}"
    );
}

#[test]
fn crd_prints_all_five_definitions() {
    let (ok, stdout, stderr) = ferry(&["crd"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches("kind: CustomResourceDefinition").count(), 5);
    for plural in [
        "outboxsources",
        "brokertopics",
        "retrypolicies",
        "deadletterqueues",
        "consumers",
    ] {
        assert!(
            stdout.contains(&format!("name: {plural}.ferry.dev")),
            "{plural}"
        );
    }
}
