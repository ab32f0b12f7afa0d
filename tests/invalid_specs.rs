//! Each invalid manifest in `tests/fixtures/invalid` is rejected twice, independently: by the
//! generated CRD schema with its CEL rules (what the API server does) and by Ferry's own
//! validate step (what standalone mode and the operator do). Both errors must name the field
//! given in the fixture's `# field:` line.

use std::path::PathBuf;

use ferry::{
    api::{Kind, admission::Admission},
    manifest::{self, ferry_check},
    validate::{Catalog, FieldError},
};

struct Case {
    file: PathBuf,
    field: String,
    value: serde_json::Value,
}

fn cases() -> Vec<Case> {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .expect("fixtures folder")
        .map(|entry| entry.expect("fixture entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).expect("fixture readable");
            let field = text
                .lines()
                .find_map(|line| line.strip_prefix("# field: "))
                .unwrap_or_else(|| panic!("{} has no '# field:' line", file.display()))
                .to_owned();
            let mut documents = manifest::parse_documents(&file, &text).expect("fixture is YAML");
            assert_eq!(
                documents.len(),
                1,
                "{}: one object per fixture",
                file.display()
            );
            Case {
                file,
                field,
                value: documents.remove(0).value,
            }
        })
        .collect()
}

/// An error names `field` when its path is the field, lies inside it, or is the field's parent
/// with the field's name in the message (serde reports an unknown field that way).
fn names_field(error: &FieldError, field: &str) -> bool {
    let last = field
        .rsplit(['.', '['])
        .next()
        .unwrap_or(field)
        .trim_end_matches(']');
    error.field == field
        || error.field.starts_with(&format!("{field}."))
        || error.field.starts_with(&format!("{field}["))
        || (field.starts_with(&error.field) && error.message.contains(last))
}

fn kind_of(case: &Case) -> Kind {
    let kind = case.value["kind"].as_str().unwrap_or_default();
    Kind::from_kind_name(kind)
        .unwrap_or_else(|| panic!("{}: unknown kind {kind}", case.file.display()))
}

#[test]
fn there_are_at_least_twenty_invalid_fixtures_covering_every_kind() {
    let cases = cases();
    assert!(cases.len() >= 20, "only {} fixtures", cases.len());
    let kinds: std::collections::BTreeSet<Kind> = cases.iter().map(kind_of).collect();
    assert_eq!(kinds.len(), Kind::ALL.len());
}

#[test]
fn the_crd_schema_rejects_every_invalid_fixture_naming_the_field() {
    let admission = Admission::new();
    let mut failures = Vec::new();
    for case in cases() {
        let errors = admission.check(kind_of(&case), &case.value);
        if !errors.iter().any(|error| names_field(error, &case.field)) {
            failures.push(format!(
                "{}: expected an error on {}, got {errors:?}",
                case.file.display(),
                case.field
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn ferry_validation_rejects_every_invalid_fixture_naming_the_field() {
    let mut failures = Vec::new();
    for case in cases() {
        let mut catalog = Catalog::default();
        match ferry_check(kind_of(&case), &case.value, &mut catalog) {
            Ok(()) => failures.push(format!("{}: accepted", case.file.display())),
            Err(errors) if !errors.iter().any(|error| names_field(error, &case.field)) => failures
                .push(format!(
                    "{}: expected an error on {}, got {errors:?}",
                    case.file.display(),
                    case.field
                )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_fixture_becomes_valid_without_its_mistake_so_the_test_checks_one_thing() {
    // Each fixture is built from a valid base by one change; the bases themselves must pass.
    let admission = Admission::new();
    let bases = [
        (
            Kind::OutboxSource,
            "database: {engine: postgres, connection: {secretRef: {name: db}}}\n  routes: [{name: all, topicRef: {name: orders}}]",
        ),
        (
            Kind::BrokerTopic,
            "broker: rabbitmq\n  connection: {secretRef: {name: rabbitmq}}",
        ),
        (Kind::RetryPolicy, "{}"),
        (
            Kind::DeadLetterQueue,
            "store: {database: {engine: postgres, connection: {secretRef: {name: db}}}}",
        ),
        (
            Kind::Consumer,
            "topicRef: {name: orders}\n  sink: {url: 'http://inventory:8080/events'}",
        ),
    ];
    for (kind, spec) in bases {
        let text = format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: base, namespace: shop}}\nspec:\n  {spec}\n"
        );
        let value = manifest::parse_documents(std::path::Path::new("base"), &text)
            .expect("base YAML")
            .remove(0)
            .value;
        assert_eq!(
            admission.check(kind, &value),
            vec![],
            "{kind} base rejected by the schema"
        );
        assert_eq!(
            ferry_check(kind, &value, &mut Catalog::default()),
            Ok(()),
            "{kind} base rejected by Ferry"
        );
    }
}
