//! Secret values for standalone mode: read from the `v1 Secret` manifests given to `ferry run`,
//! and otherwise from the environment variable the operator would map the key into.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use crate::{
    api::common::SecretKeyRef,
    config::{SecretSource, env_var_for},
    manifest::{Document, Problem},
    validate::{FieldError, ObjectId, decode},
};

/// Every key of every Secret among the manifests, by (namespace, name).
#[derive(Default)]
pub struct SecretValues {
    values: BTreeMap<(String, String), BTreeMap<String, String>>,
}

/// Never prints a value.
impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.values.keys()).finish()
    }
}

impl SecretValues {
    /// Reads the Secrets among `documents` (`data` base64-decoded, `stringData` as written;
    /// `stringData` wins, as the API server merges it). A value that is not UTF-8 text is a
    /// problem naming the file, the Secret and the key.
    pub fn from_documents(
        documents: &[Document],
        default_namespace: &str,
    ) -> Result<Self, Vec<Problem>> {
        let mut secrets = Self::default();
        let mut problems = Vec::new();
        for document in documents {
            let value = &document.value;
            if value.get("apiVersion").and_then(Value::as_str) != Some("v1")
                || value.get("kind").and_then(Value::as_str) != Some("Secret")
            {
                continue;
            }
            // `ferry run` admits the manifests first, which reports undecodable Secrets.
            let Ok(secret) = decode::<Secret>(value) else {
                continue;
            };
            let namespace = secret
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| default_namespace.to_owned());
            let name = secret.metadata.name.clone().unwrap_or_default();
            let mut keys = BTreeMap::new();
            for (key, bytes) in secret.data.iter().flatten() {
                match String::from_utf8(bytes.0.clone()) {
                    Ok(text) => {
                        keys.insert(key.clone(), text);
                    }
                    Err(_) => problems.push(Problem {
                        origin: Some(document.origin.clone()),
                        object: Some(ObjectId {
                            kind: "Secret".into(),
                            namespace: namespace.clone(),
                            name: name.clone(),
                        }),
                        error: FieldError::new(
                            format!("data.{key}"),
                            "is not UTF-8 text once base64-decoded; a connection URL must be text",
                        ),
                    }),
                }
            }
            for (key, text) in secret.string_data.iter().flatten() {
                keys.insert(key.clone(), text.clone());
            }
            secrets.values.insert((namespace, name), keys);
        }
        if problems.is_empty() {
            Ok(secrets)
        } else {
            Err(problems)
        }
    }

    /// Where a reference's value comes from: the manifest's value when it has the key, else
    /// the environment variable `ferry config` names (`FERRY_SECRET_<NAME>_<KEY>`).
    pub fn source(&self, namespace: &str, secret: &SecretKeyRef) -> SecretSource {
        self.values
            .get(&(namespace.to_owned(), secret.name.clone()))
            .and_then(|keys| keys.get(&secret.key))
            .map_or_else(
                || SecretSource::Env(env_var_for(secret)),
                |value| SecretSource::Value(value.clone()),
            )
    }

    /// Replaces one key's value (the demo points the quickstart's Secrets at its own files).
    pub fn set(&mut self, namespace: &str, name: &str, key: &str, value: String) {
        self.values
            .entry((namespace.to_owned(), name.to_owned()))
            .or_default()
            .insert(key.to_owned(), value);
    }

    /// Every value, so that output can be checked for leaks.
    pub fn all_values(&self) -> impl Iterator<Item = &str> {
        self.values
            .values()
            .flat_map(|keys| keys.values().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::parse_documents;

    const SECRETS: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: db, namespace: shop}
data:
  url: cG9zdGdyZXM6Ly9hcHBAZGIvb3JkZXJz
  other: c2VjcmV0
stringData:
  other: from-string-data
---
apiVersion: v1
kind: Secret
metadata: {name: broker}
stringData:
  url: amqp://guest:guest@127.0.0.1:5672/%2f
---
apiVersion: v1
kind: Secret
metadata: {name: binary, namespace: shop}
data:
  url: //79/Q==
"#;

    fn reference(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    #[test]
    fn values_come_from_data_and_string_data_and_binary_values_are_named() {
        let documents = parse_documents(Path::new("secrets.yaml"), SECRETS).unwrap();
        let problems = SecretValues::from_documents(&documents, "default").unwrap_err();
        assert_eq!(problems.len(), 1);
        let text = problems[0].to_string();
        assert!(
            text.starts_with("secrets.yaml (document 3): Secret shop/binary: data.url"),
            "{text}"
        );

        let secrets = SecretValues::from_documents(&documents[..2], "default").unwrap();
        assert_eq!(
            secrets.source("shop", &reference("db", "url")),
            SecretSource::Value("postgres://app@db/orders".into())
        );
        assert_eq!(
            secrets.source("shop", &reference("db", "other")),
            SecretSource::Value("from-string-data".into())
        );
        assert_eq!(
            secrets.source("default", &reference("broker", "url")),
            SecretSource::Value("amqp://guest:guest@127.0.0.1:5672/%2f".into())
        );
        assert_eq!(
            secrets.source("shop", &reference("broker", "url")),
            SecretSource::Env("FERRY_SECRET_BROKER_URL".into()),
            "a Secret of another namespace is not used"
        );
        assert!(!format!("{secrets:?}").contains("postgres://"));
    }
}
