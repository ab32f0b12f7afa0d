//! The round trip through the typed k8s-openapi objects that exposes unknown fields.

use super::*;

// ---------------------------------------------------------------------------------------------
// Round trip through the typed objects
// ---------------------------------------------------------------------------------------------

/// Problems of a document: a kind this chart should not render, an apiVersion that does not
/// match the kind, a document that does not deserialize, or fields its type does not know.
pub(crate) fn round_trip_problems(doc: &Doc) -> Vec<String> {
    match doc.kind.as_str() {
        "Deployment" => round_trip::<Deployment>(doc),
        "ServiceAccount" => round_trip::<ServiceAccount>(doc),
        "ClusterRole" => round_trip::<ClusterRole>(doc),
        "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(doc),
        "Role" => round_trip::<Role>(doc),
        "RoleBinding" => round_trip::<RoleBinding>(doc),
        "Service" => round_trip::<Service>(doc),
        "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(doc),
        other => vec![format!(
            "{}: kind {other:?} is not one the chart is expected to render",
            doc.label()
        )],
    }
}

/// Deserializes the document into `K` and serializes it back: every path of the original that
/// the round trip lost is a field `K` does not have (a typo, or a field at the wrong level).
pub(crate) fn round_trip<K: Resource + DeserializeOwned + Serialize>(doc: &Doc) -> Vec<String> {
    if doc.api_version != K::API_VERSION {
        return vec![format!(
            "{}: apiVersion {:?}, expected {:?}",
            doc.label(),
            doc.api_version,
            K::API_VERSION
        )];
    }
    let typed: K = match serde_path_to_error::deserialize(doc.value.clone()) {
        Ok(typed) => typed,
        Err(e) => return vec![format!("{}: does not deserialize: {e}", doc.label())],
    };
    let back = match serde_json::to_value(&typed) {
        Ok(back) => back,
        Err(e) => return vec![format!("{}: does not serialize back: {e}", doc.label())],
    };
    let mut lost = Vec::new();
    lost_paths(&doc.value, &back, "", &mut lost);
    lost.into_iter()
        .map(|path| format!("{}: unknown field {path}", doc.label()))
        .collect()
}

/// Collects the paths present in `original` but missing from `round_trip`. Only lost keys and
/// lost list items count: scalars may change representation harmlessly (an int-or-string, a
/// quantity), and a null, `{}` or `[]` may be dropped by the serializer.
pub(crate) fn lost_paths(original: &Value, round_trip: &Value, path: &str, lost: &mut Vec<String>) {
    match (original, round_trip) {
        (Value::Object(original), Value::Object(round_trip)) => {
            for (key, value) in original {
                let path = format!("{path}.{key}");
                match round_trip.get(key) {
                    Some(back) => lost_paths(value, back, &path, lost),
                    None if is_empty(value) => {}
                    None => lost.push(path),
                }
            }
        }
        (Value::Array(original), Value::Array(round_trip)) => {
            for (index, value) in original.iter().enumerate() {
                let path = format!("{path}[{index}]");
                match round_trip.get(index) {
                    Some(back) => lost_paths(value, back, &path, lost),
                    None if is_empty(value) => {}
                    None => lost.push(path),
                }
            }
        }
        (Value::Object(_) | Value::Array(_), _) if !is_empty(original) => {
            lost.push(format!("{path} (became {round_trip})"));
        }
        _ => {}
    }
}

pub(crate) fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}
