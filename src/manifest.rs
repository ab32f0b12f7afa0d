//! Manifests on disk: YAML files and folders of them, read into documents that remember where
//! they came from, then admitted (schema, CEL, decode, Ferry's checks) into a `Catalog`.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;
use serde_json::Value;

use crate::{
    api::{Kind, admission::Admission},
    validate::{
        Catalog, FieldError, ObjectId, SecretCheck, SpecCheck, check_object_name, check_references,
        check_spec, decode,
    },
};

/// Where a document came from: a file and the document's 1-based position in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.document)
    }
}

/// One YAML document.
#[derive(Clone, Debug)]
pub struct Document {
    pub origin: Origin,
    pub value: Value,
}

/// A file that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {document} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        document: usize,
        source: serde_yaml_ng::Error,
    },
    #[error("{path}: no .yaml or .yml files found")]
    Empty { path: PathBuf },
}

/// Reads every document of the given files, and of the `.yaml`/`.yml` files below the given
/// folders (in name order). Empty documents are skipped.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Document>, LoadError> {
    let mut documents = Vec::new();
    for path in paths {
        let files = yaml_files(path)?;
        if files.is_empty() {
            return Err(LoadError::Empty { path: path.clone() });
        }
        for file in files {
            documents.extend(load_file(&file)?);
        }
    }
    Ok(documents)
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    if !path.is_dir() {
        std::fs::metadata(path).map_err(read_error)?;
        return Ok(vec![path.to_owned()]);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_error)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_error)?;
    entries.sort();
    let mut files = Vec::new();
    for entry in entries {
        if entry.is_dir() {
            files.extend(yaml_files(&entry)?);
        } else if entry
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            files.push(entry);
        }
    }
    Ok(files)
}

/// Reads the documents of one file.
pub fn load_file(file: &Path) -> Result<Vec<Document>, LoadError> {
    let text = std::fs::read_to_string(file).map_err(|source| LoadError::Read {
        path: file.to_owned(),
        source,
    })?;
    parse_documents(file, &text)
}

/// Parses a multi-document YAML text; `file` only names it in errors and origins.
pub fn parse_documents(file: &Path, text: &str) -> Result<Vec<Document>, LoadError> {
    let mut documents = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = Value::deserialize(document).map_err(|source| LoadError::Yaml {
            path: file.to_owned(),
            document: number,
            source,
        })?;
        if !value.is_null() {
            documents.push(Document {
                origin: Origin {
                    file: file.to_owned(),
                    document: number,
                },
                value,
            });
        }
    }
    Ok(documents)
}

/// One problem, with everything needed to find it: file, object and field.
#[derive(Clone, Debug)]
pub struct Problem {
    pub origin: Option<Origin>,
    pub object: Option<ObjectId>,
    pub error: FieldError,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        write!(f, "{}", self.error)
    }
}

/// Which check found a problem; an object stops at the first stage that rejects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The CRD schema and its CEL rules (what the API server checks).
    Schema,
    /// Ferry's own decode and spec checks.
    Ferry,
}

/// The outcome of admitting a set of documents.
#[derive(Debug, Default)]
pub struct Admitted {
    pub catalog: Catalog,
    pub problems: Vec<Problem>,
    /// Documents of kinds Ferry does not read (a Deployment in the same folder, say).
    pub ignored: Vec<(Origin, String)>,
    /// Where each admitted object was defined, so later errors can name its file.
    pub origins: Vec<(ObjectId, Origin)>,
}

impl Admitted {
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// Where `object` was defined, if it was admitted.
    pub fn origin_of(&self, object: &ObjectId) -> Option<&Origin> {
        self.origins
            .iter()
            .find(|(seen, _)| seen == object)
            .map(|(_, origin)| origin)
    }
}

/// Admits documents as the API server and then Ferry would: each Ferry object must pass its
/// CRD schema and CEL rules, decode into its type and pass Ferry's checks; then every
/// reference must resolve. Objects without a namespace go into `default_namespace`.
pub fn admit(documents: &[Document], default_namespace: &str, secrets: SecretCheck) -> Admitted {
    let admission = Admission::new();
    let mut admitted = Admitted::default();
    let mut origins: Vec<(ObjectId, Origin)> = Vec::new();
    for document in documents {
        let mut value = document.value.clone();
        if value.pointer("/metadata/namespace").is_none()
            && let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut)
        {
            metadata.insert("namespace".into(), default_namespace.into());
        }
        let id = object_id(&value);
        let mut problem = |error: FieldError| Problem {
            origin: Some(document.origin.clone()),
            object: id.clone(),
            error,
        };
        let (api_version, kind) = (
            value
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            value
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        );
        if api_version.is_empty() || kind.is_empty() {
            let field = if api_version.is_empty() {
                "apiVersion"
            } else {
                "kind"
            };
            admitted
                .problems
                .push(problem(FieldError::new(field, "is required")));
            continue;
        }
        if let Some(id) = &id
            && let Some((_, first)) = origins.iter().find(|(seen, _)| seen == id)
        {
            admitted.problems.push(problem(FieldError::new(
                "metadata.name",
                format!("duplicate object; first defined in {first}"),
            )));
            continue;
        }
        let outcome = match (api_version, kind) {
            ("v1", "Secret") => decode::<Secret>(&value)
                .map(|secret| admitted.catalog.add_secret(&secret))
                .map_err(|e| vec![e]),
            (crate::api::API_VERSION, kind) => match Kind::from_kind_name(kind) {
                Some(kind) => admit_ferry_object(&admission, kind, &value, &mut admitted.catalog)
                    .map_err(|(_, errors)| errors),
                None => Err(vec![FieldError::new(
                    "kind",
                    format!("{kind:?} is not a kind of {api_version}"),
                )]),
            },
            (version, kind)
                if Kind::from_kind_name(kind).is_some() || version.starts_with("ferry.dev/") =>
            {
                Err(vec![FieldError::new(
                    "apiVersion",
                    format!(
                        "{version:?} is not supported; use {:?}",
                        crate::api::API_VERSION
                    ),
                )])
            }
            _ => {
                admitted
                    .ignored
                    .push((document.origin.clone(), format!("{api_version} {kind}")));
                continue;
            }
        };
        match outcome {
            Ok(()) => origins.extend(id.map(|id| (id, document.origin.clone()))),
            Err(errors) => admitted
                .problems
                .extend(errors.into_iter().map(&mut problem)),
        }
    }
    for (id, errors) in check_references(&admitted.catalog, secrets) {
        let origin = origins
            .iter()
            .find(|(seen, _)| *seen == id)
            .map(|(_, origin)| origin.clone());
        admitted
            .problems
            .extend(errors.into_iter().map(|error| Problem {
                origin: origin.clone(),
                object: Some(id.clone()),
                error,
            }));
    }
    admitted.origins = origins;
    admitted
}

fn object_id(value: &Value) -> Option<ObjectId> {
    let text = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Some(ObjectId {
        kind: text("/kind")?,
        namespace: text("/metadata/namespace")?,
        name: text("/metadata/name")?,
    })
}

/// Runs both stages on one Ferry object and adds it to the catalog when both accept it.
pub fn admit_ferry_object(
    admission: &Admission,
    kind: Kind,
    value: &Value,
    catalog: &mut Catalog,
) -> Result<(), (Stage, Vec<FieldError>)> {
    let schema_errors = admission.check(kind, value);
    if !schema_errors.is_empty() {
        return Err((Stage::Schema, schema_errors));
    }
    ferry_check(kind, value, catalog).map_err(|errors| (Stage::Ferry, errors))
}

/// Ferry's own stage alone: decode into the kind's type, check the spec, add to the catalog.
pub fn ferry_check(
    kind: Kind,
    value: &Value,
    catalog: &mut Catalog,
) -> Result<(), Vec<FieldError>> {
    fn typed<T, S>(value: &Value, spec: impl Fn(&T) -> &S) -> Result<T, Vec<FieldError>>
    where
        T: serde::de::DeserializeOwned + kube::Resource,
        S: SpecCheck,
    {
        let object: T = decode(value).map_err(|error| vec![error])?;
        let name = object.meta().name.as_deref().unwrap_or_default();
        let mut errors: Vec<FieldError> = check_object_name(name).into_iter().collect();
        errors.extend(check_spec(spec(&object)));
        if errors.is_empty() {
            Ok(object)
        } else {
            Err(errors)
        }
    }
    match kind {
        Kind::OutboxSource => {
            catalog.add_outbox_source(typed(value, |o: &crate::api::OutboxSource| &o.spec)?)
        }
        Kind::BrokerTopic => {
            catalog.add_broker_topic(typed(value, |o: &crate::api::BrokerTopic| &o.spec)?)
        }
        Kind::RetryPolicy => {
            catalog.add_retry_policy(typed(value, |o: &crate::api::RetryPolicy| &o.spec)?)
        }
        Kind::DeadLetterQueue => {
            catalog.add_dead_letter_queue(typed(value, |o: &crate::api::DeadLetterQueue| &o.spec)?)
        }
        Kind::Consumer => catalog.add_consumer(typed(value, |o: &crate::api::Consumer| &o.spec)?),
    }
    Ok(())
}
