//! Names and labels of a workload's children: deterministic, within Kubernetes' length limits.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::Component;

/// The longest Service name (a DNS-1035 label) and the longest label value.
pub const MAX_NAME_LEN: usize = 63;
/// Hex digits of the hash that keeps a shortened name unique.
const NAME_HASH_LEN: usize = 8;

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of `app.kubernetes.io/name` on every child.
pub const APP_NAME: &str = "ferry";
/// The value of `app.kubernetes.io/managed-by` on every child.
pub const MANAGER: &str = "ferry-operator";

/// The first `len` hex digits of the SHA-256 of `bytes`.
pub fn short_hash(bytes: &[u8], len: usize) -> String {
    let mut hex: String = Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    hex.truncate(len);
    hex
}

/// The name every child of a workload shares: `<resource>-relay` or `<resource>-consumer`.
///
/// It must be a DNS-1035 label (a Service name): at most 63 characters of `[a-z0-9-]`, starting
/// with a letter. A resource name that does not give one (too long, a `.`, a leading digit) is
/// cleaned and shortened instead, with a hash of the full name so that two resources never share
/// a child: `<cleaned prefix>-<8 hex digits>-<component>`.
pub fn child_name(resource: &str, component: Component) -> String {
    let suffix = component.as_str();
    let plain = format!("{resource}-{suffix}");
    if plain.len() <= MAX_NAME_LEN && is_dns_label(&plain) {
        return plain;
    }
    let mut cleaned: String = resource
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if !cleaned.starts_with(|c: char| c.is_ascii_lowercase()) {
        cleaned.insert_str(0, "ferry-");
    }
    let room = MAX_NAME_LEN - NAME_HASH_LEN - suffix.len() - 2;
    cleaned.truncate(room);
    let prefix = cleaned.trim_end_matches('-');
    let hash = short_hash(resource.as_bytes(), NAME_HASH_LEN);
    format!("{prefix}-{hash}-{suffix}")
}

/// `name` as a label value: unchanged when it fits in 63 characters, else its first characters
/// and a hash of the whole name. (Resource names are DNS subdomains, whose characters are all
/// allowed in label values; only the length can be too much.)
pub fn label_value(name: &str) -> String {
    if name.len() <= MAX_NAME_LEN {
        return name.to_owned();
    }
    let prefix: String = name
        .chars()
        .take(MAX_NAME_LEN - NAME_HASH_LEN - 1)
        .collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    format!("{prefix}-{}", short_hash(name.as_bytes(), NAME_HASH_LEN))
}

fn is_dns_label(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The labels that select a workload's pods. They never change for a given resource, since a
/// Deployment's selector cannot change.
pub fn selector_labels(component: Component, resource: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_COMPONENT.to_owned(), component.as_str().to_owned()),
        (LABEL_INSTANCE.to_owned(), label_value(resource)),
    ])
}

/// The labels of every child and of the pods: the selector labels, who manages them, and
/// `ferry.dev/<kind>: <resource>` naming the resource they belong to.
pub fn labels(component: Component, resource: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(component, resource);
    labels.insert(LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned());
    labels.insert(component.parent_label().to_owned(), label_value(resource));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept_as_they_are() {
        assert_eq!(child_name("orders", Component::Relay), "orders-relay");
        assert_eq!(
            child_name("inventory", Component::Consumer),
            "inventory-consumer"
        );
        assert_eq!(label_value("orders"), "orders");
    }

    #[test]
    fn names_that_are_not_dns_labels_are_cleaned_and_hashed() {
        let dotted = child_name("orders.v2", Component::Relay);
        assert!(dotted.starts_with("orders-v2-") && dotted.ends_with("-relay"));
        assert_ne!(dotted, child_name("orders-v2", Component::Relay));
        let digit = child_name("2fa", Component::Consumer);
        assert!(digit.starts_with("ferry-2fa-"), "{digit}");
        for name in [dotted, digit] {
            assert!(is_dns_label(&name) && name.len() <= MAX_NAME_LEN, "{name}");
        }
    }

    #[test]
    fn long_label_values_keep_a_prefix_and_a_hash() {
        let long = format!("{}.{}", "a".repeat(60), "b".repeat(60));
        let value = label_value(&long);
        assert_eq!(value.len(), MAX_NAME_LEN);
        assert!(value.starts_with(&"a".repeat(54)));
        assert_ne!(
            value,
            label_value(&format!("{}.{}", "a".repeat(60), "c".repeat(60)))
        );
    }
}
