//! Rendered documents: one `Doc` per YAML document, grouped in a `Render`, and RBAC grants.

use super::*;

// ---------------------------------------------------------------------------------------------
// Rendered documents
// ---------------------------------------------------------------------------------------------

/// One YAML document of a rendering, as JSON.
pub(crate) struct Doc {
    pub(crate) api_version: String,
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) namespace: Option<String>,
    pub(crate) value: Value,
}

impl Doc {
    pub(crate) fn from_value(value: Value) -> Doc {
        let text = |pointer: &str| {
            value
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Doc {
            api_version: text("/apiVersion").unwrap_or_default(),
            kind: text("/kind").unwrap_or_default(),
            name: text("/metadata/name").unwrap_or_default(),
            namespace: text("/metadata/namespace"),
            value,
        }
    }

    pub(crate) fn is<K: Resource>(&self) -> bool {
        self.kind == K::KIND && self.api_version == K::API_VERSION
    }

    pub(crate) fn label(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{} {}/{}", self.kind, namespace, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// Splits a multi-document YAML stream, skipping empty documents.
pub(crate) fn parse_documents(yaml: &str, origin: &str) -> Vec<Doc> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .enumerate()
        .filter_map(|(index, document)| {
            let yaml = serde_yaml_ng::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{origin}: document {index} is not valid YAML: {e}"));
            if yaml.is_null() {
                return None;
            }
            let json = serde_json::to_value(&yaml).unwrap_or_else(|e| {
                panic!("{origin}: document {index} cannot be represented as JSON: {e}")
            });
            Some(Doc::from_value(json))
        })
        .collect()
}

/// The output of `helm template` for one set of `--set` values.
pub(crate) struct Render {
    pub(crate) sets: Vec<String>,
    pub(crate) docs: Vec<Doc>,
}

impl Render {
    pub(crate) fn new(sets: &[&str]) -> Render {
        let manifests = template(sets).unwrap_or_else(|report| panic!("{report}"));
        let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
        Render {
            docs: parse_documents(&manifests, &format!("helm template {sets:?}")),
            sets,
        }
    }

    pub(crate) fn all() -> Vec<Render> {
        VALUE_SETS.iter().map(|sets| Render::new(sets)).collect()
    }

    /// Every document of kind `K`, deserialized.
    pub(crate) fn objects<K: Resource + DeserializeOwned>(&self) -> Vec<K> {
        self.docs
            .iter()
            .filter(|doc| doc.is::<K>())
            .map(|doc| {
                serde_json::from_value(doc.value.clone())
                    .unwrap_or_else(|e| panic!("{} (values {:?}): {e}", doc.label(), self.sets))
            })
            .collect()
    }

    pub(crate) fn only<K: Resource + DeserializeOwned>(&self) -> K {
        let mut objects = self.objects::<K>();
        assert_eq!(
            objects.len(),
            1,
            "values {:?}: expected one {}",
            self.sets,
            K::KIND
        );
        objects.remove(0)
    }

    /// Every RBAC rule rendered, with the (Cluster)Role that holds it.
    pub(crate) fn grants(&self) -> Vec<Grant> {
        let cluster = self.objects::<ClusterRole>().into_iter().flat_map(|role| {
            assert!(
                role.aggregation_rule.is_none(),
                "ClusterRole {:?} aggregates other roles",
                role.metadata.name
            );
            let holder = Holder {
                kind: ClusterRole::KIND,
                namespace: None,
                name: role.metadata.name.unwrap_or_default(),
            };
            rules_of(holder, role.rules)
        });
        let namespaced = self.objects::<Role>().into_iter().flat_map(|role| {
            let holder = Holder {
                kind: Role::KIND,
                namespace: role.metadata.namespace,
                name: role.metadata.name.unwrap_or_default(),
            };
            rules_of(holder, role.rules)
        });
        cluster.chain(namespaced).collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Holder {
    pub(crate) kind: &'static str,
    pub(crate) namespace: Option<String>,
    pub(crate) name: String,
}

#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) holder: Holder,
    pub(crate) rule: PolicyRule,
}

impl Grant {
    pub(crate) fn grants(&self, api_group: &str, resource: &str) -> bool {
        let groups = self.rule.api_groups.as_deref().unwrap_or_default();
        let resources = self.rule.resources.as_deref().unwrap_or_default();
        groups.iter().any(|g| g == api_group) && resources.iter().any(|r| r == resource)
    }

    /// Whether the rule names `resource` in any API group.
    pub(crate) fn names_resource(&self, resource: &str) -> bool {
        let resources = self.rule.resources.as_deref().unwrap_or_default();
        resources.iter().any(|r| r == resource)
    }

    pub(crate) fn verbs(&self) -> BTreeSet<&str> {
        self.rule.verbs.iter().map(String::as_str).collect()
    }
}

pub(crate) fn rules_of(holder: Holder, rules: Option<Vec<PolicyRule>>) -> Vec<Grant> {
    rules
        .unwrap_or_default()
        .into_iter()
        .map(|rule| Grant {
            holder: holder.clone(),
            rule,
        })
        .collect()
}
