//! The ConfigMap holding a workload's resolved config (`config.yaml`): names of environment
//! variables where secrets go, never a secret value.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{Workload, names::short_hash, with_spec_hash};

/// The key of the config in the ConfigMap, and the file name in the pod.
pub const CONFIG_FILE: &str = "config.yaml";
/// Hex digits of the config hash.
const CONFIG_HASH_LEN: usize = 16;

pub fn build_config_map(workload: &Workload) -> ConfigMap {
    with_spec_hash(ConfigMap {
        metadata: workload.child_metadata(),
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_owned(),
            workload.config_yaml.clone(),
        )])),
        ..ConfigMap::default()
    })
}

/// A short SHA-256 (16 hex digits) of the ConfigMap's `data`, keys in order: it changes
/// exactly when what the pods read changes. (The builder never writes `binaryData`.)
pub fn config_hash(config_map: &ConfigMap) -> String {
    let mut bytes = Vec::new();
    for (key, value) in config_map.data.iter().flatten() {
        for part in [key, value] {
            // Length-prefixed, so that no two different maps give the same bytes.
            bytes.extend_from_slice(&(part.len() as u64).to_be_bytes());
            bytes.extend_from_slice(part.as_bytes());
        }
    }
    short_hash(&bytes, CONFIG_HASH_LEN)
}
