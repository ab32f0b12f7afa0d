//! The `ferry.dev/spec-hash` annotation every child carries: a hash of the child as built, so
//! that the apply step can tell an unchanged child from a changed one without a write.

use kube::Resource;
use serde::Serialize;

use super::names::short_hash;

/// The child annotation holding `spec_hash` of the child as built (without this annotation).
pub const SPEC_HASH_ANNOTATION: &str = "ferry.dev/spec-hash";
/// Hex digits of the spec hash.
const SPEC_HASH_LEN: usize = 16;

/// `object` with `ferry.dev/spec-hash` set to a short SHA-256 of the whole object as built:
/// serialized to JSON with every object's keys sorted, and without the annotation itself.
/// Any change of what the builders give, in any field, changes it.
pub fn with_spec_hash<K: Resource + Serialize>(mut object: K) -> K {
    let annotations = &mut object.meta_mut().annotations;
    if let Some(map) = annotations.as_mut() {
        map.remove(SPEC_HASH_ANNOTATION);
        if map.is_empty() {
            *annotations = None;
        }
    }
    let hash = spec_hash(&object);
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(SPEC_HASH_ANNOTATION.to_owned(), hash);
    object
}

/// The hash `with_spec_hash` stores. A k8s-openapi object always serializes (string keys only);
/// should it ever not, the hash is of nothing and the child is applied on every pass.
fn spec_hash(object: &impl Serialize) -> String {
    let bytes = serde_json::to_value(object)
        .and_then(|mut value| {
            // `serde_json` keeps insertion order in this crate; sort for a stable form.
            value.sort_all_objects();
            serde_json::to_vec(&value)
        })
        .unwrap_or_default();
    short_hash(&bytes, SPEC_HASH_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::collections::BTreeMap;

    fn config_map(data: &str) -> ConfigMap {
        ConfigMap {
            data: Some(BTreeMap::from([("k".to_owned(), data.to_owned())])),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn the_hash_changes_with_any_field_and_ignores_its_own_annotation() {
        let first = with_spec_hash(config_map("a"));
        let again = with_spec_hash(first.clone());
        assert_eq!(first, again, "stamping twice gives the same object");
        let other = with_spec_hash(config_map("b"));
        let hash = |object: &ConfigMap| {
            object.metadata.annotations.clone().unwrap_or_default()[SPEC_HASH_ANNOTATION].clone()
        };
        assert_ne!(hash(&first), hash(&other));
        assert_eq!(hash(&first).len(), SPEC_HASH_LEN);
    }
}
