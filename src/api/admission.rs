//! What the API server would say about an object: the generated CRD schema (types, enums,
//! ranges, patterns, required and unknown fields, list-map keys) and its CEL rules.
//!
//! There is no API server in standalone mode or in tests; this stands in for
//! `kubectl apply --dry-run=server --validate=strict`.

use std::collections::{BTreeMap, HashSet};

use kube_cel::{CompiledSchema, Validator as CelValidator, compile_schema};
use serde_json::{Map, Value};

use super::Kind;
use crate::validate::{FieldError, check_object_name};

/// The schemas of every kind, compiled once.
pub struct Admission {
    kinds: BTreeMap<Kind, KindSchema>,
    cel: CelValidator,
}

struct KindSchema {
    open_api: Value,
    structural: jsonschema::Validator,
    rules: CompiledSchema,
}

impl Admission {
    pub fn new() -> Self {
        let kinds = Kind::ALL
            .into_iter()
            .map(|kind| {
                let open_api = open_api_schema(kind);
                let json_schema = to_strict_json_schema(&open_api);
                let structural = jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft4)
                    .build(&json_schema)
                    .unwrap_or_else(|error| {
                        panic!("generated schema of {kind} must compile: {error}")
                    });
                let rules = compile_schema(&open_api);
                (
                    kind,
                    KindSchema {
                        open_api,
                        structural,
                        rules,
                    },
                )
            })
            .collect();
        Self {
            kinds,
            cel: CelValidator::new(),
        }
    }

    /// Checks one object of `kind`. Returns every problem the API server would report.
    pub fn check(&self, kind: Kind, object: &Value) -> Vec<FieldError> {
        let schema = &self.kinds[&kind];
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut errors: Vec<FieldError> = check_object_name(name).into_iter().collect();
        // apiVersion, kind and metadata are the API server's own; the CRD schema covers the rest.
        let mut body = object.clone();
        if let Some(map) = body.as_object_mut() {
            for key in ["apiVersion", "kind", "metadata"] {
                map.remove(key);
            }
        }
        errors.extend(
            schema
                .structural
                .iter_errors(&body)
                .map(|error| structural_error(&error)),
        );
        errors.extend(list_map_key_errors(&schema.open_api, &body, ""));
        if errors.is_empty() {
            // CEL rules assume a structurally valid object, as on the API server.
            if let Err(failures) = self.cel.validate_compiled(&schema.rules, &body, None) {
                errors.extend(failures.iter().map(|failure| {
                    FieldError::new(failure.field_path.clone(), failure.message.clone())
                }));
            }
        }
        errors
    }
}

impl Default for Admission {
    fn default() -> Self {
        Self::new()
    }
}

fn open_api_schema(kind: Kind) -> Value {
    let crd = kind.crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|validation| validation.open_api_v3_schema.as_ref())
        .unwrap_or_else(|| panic!("the CRD of {kind} must have a schema"));
    serde_json::to_value(schema)
        .unwrap_or_else(|error| panic!("the schema of {kind} must serialize: {error}"))
}

/// Turns the CRD's OpenAPI v3 schema into a JSON Schema with the API server's strictness:
/// `nullable` becomes a `null` type, and objects with known properties reject unknown ones
/// (as `kubectl apply --validate=strict`, the default, does).
fn to_strict_json_schema(schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        let converted = match key.as_str() {
            "properties" => Value::Object(
                value
                    .as_object()
                    .map(|properties| {
                        properties
                            .iter()
                            .map(|(name, prop)| (name.clone(), to_strict_json_schema(prop)))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            "items" | "additionalProperties" if value.is_object() => to_strict_json_schema(value),
            "allOf" | "anyOf" | "oneOf" => Value::Array(
                value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(to_strict_json_schema)
                    .collect(),
            ),
            "not" => to_strict_json_schema(value),
            // Kubernetes extensions and OpenAPI formats the validator does not know are dropped.
            key if key.starts_with("x-kubernetes-") => continue,
            "format" | "nullable" | "description" | "default" | "title" => continue,
            _ => value.clone(),
        };
        out.insert(key.clone(), converted);
    }
    if map.get("nullable") == Some(&Value::Bool(true))
        && let Some(Value::String(kind)) = out.get("type").cloned()
    {
        out.insert("type".into(), serde_json::json!([kind, "null"]));
    }
    let preserves_unknown =
        map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if map.contains_key("properties")
        && !map.contains_key("additionalProperties")
        && !preserves_unknown
    {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    Value::Object(out)
}

/// Converts the validator's error into a field path and a message in the API server's words.
fn structural_error(error: &jsonschema::ValidationError<'_>) -> FieldError {
    use jsonschema::error::ValidationErrorKind as K;
    let base = pointer_to_field(error.instance_path().as_str());
    let join = |name: &str| {
        if base.is_empty() {
            name.to_owned()
        } else {
            format!("{base}.{name}")
        }
    };
    match error.kind() {
        K::AdditionalProperties { unexpected } => FieldError::new(
            join(&unexpected.join(", ")),
            "unknown field (check its spelling and nesting)",
        ),
        K::Required { property } => FieldError::new(
            join(property.as_str().unwrap_or_default()),
            "Required value",
        ),
        K::Minimum { limit } => FieldError::new(
            base,
            format!(
                "must be at least {} (got {})",
                number(limit),
                error.instance()
            ),
        ),
        K::Maximum { limit } => FieldError::new(
            base,
            format!(
                "must be at most {} (got {})",
                number(limit),
                error.instance()
            ),
        ),
        K::Enum { options } => {
            FieldError::new(base, format!("Unsupported value: must be one of {options}"))
        }
        _ => FieldError::new(base, error.to_string()),
    }
}

/// Writes `1.0` as `1`: kube writes integer bounds as floats.
fn number(limit: &Value) -> String {
    match limit.as_f64() {
        Some(value) if value.fract() == 0.0 && value.abs() < 1e15 => format!("{}", value as i64),
        _ => limit.to_string(),
    }
}

/// `/spec/routes/0/name` -> `spec.routes[0].name`.
fn pointer_to_field(pointer: &str) -> String {
    let mut field = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            field.push_str(&format!("[{segment}]"));
        } else {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(&segment);
        }
    }
    field
}

/// `x-kubernetes-list-type: map` lists must not hold two items with the same keys.
fn list_map_key_errors(schema: &Value, value: &Value, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match value {
        Value::Object(object) => {
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, child) in object {
                    if let Some(child_schema) = properties.get(name) {
                        let child_path = if path.is_empty() {
                            name.clone()
                        } else {
                            format!("{path}.{name}")
                        };
                        errors.extend(list_map_key_errors(child_schema, child, &child_path));
                    }
                }
            }
        }
        Value::Array(items) => {
            let item_schema = schema.get("items").unwrap_or(&Value::Null);
            if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
                let keys: Vec<&str> = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let mut seen = HashSet::new();
                for (index, item) in items.iter().enumerate() {
                    let identity: Vec<String> = keys
                        .iter()
                        .map(|key| item.get(*key).map(Value::to_string).unwrap_or_default())
                        .collect();
                    if !seen.insert(identity.clone()) {
                        errors.push(FieldError::new(
                            format!("{path}[{index}]"),
                            format!("Duplicate value: {}", identity.join(", ")),
                        ));
                    }
                }
            }
            for (index, item) in items.iter().enumerate() {
                errors.extend(list_map_key_errors(
                    item_schema,
                    item,
                    &format!("{path}[{index}]"),
                ));
            }
        }
        _ => {}
    }
    errors
}
