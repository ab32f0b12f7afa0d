//! Ferry's own validation, shared by the operator and standalone mode: decode a manifest into its
//! typed spec, check what the types cannot say, and resolve references between objects.
//!
//! The CRD schemas make the API server reject most of the same mistakes; this step exists so
//! that standalone mode (no API server) and an operator facing objects stored under an older
//! schema refuse them too, with the same field names.

mod references;
mod spec;

use std::fmt;

use serde::de::DeserializeOwned;

pub use references::{Catalog, ObjectId, SecretCheck, check_references};
pub use spec::{SpecCheck, check_spec, check_table_name};

/// One problem with one field of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field, as a path from the object's root: `spec.routes[0].topicRef.name`.
    pub field: String,
    /// What is wrong, in words a person can act on.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Decodes a whole object (`apiVersion`, `kind`, `metadata`, `spec`) into its Rust type, naming
/// the field that does not fit: an unknown field, a wrong type, a value outside an enum, a
/// malformed duration, a missing required field.
pub fn decode<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { String::new() } else { path };
        FieldError::new(field, error.into_inner().to_string())
    })
}

/// The API server's rule for `metadata.name`: a DNS subdomain of at most 253 characters.
pub fn check_object_name(name: &str) -> Option<FieldError> {
    let valid = name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    match (name.is_empty(), valid) {
        (true, _) => Some(FieldError::new("metadata.name", "is required")),
        (false, true) => None,
        (false, false) => Some(FieldError::new(
            "metadata.name",
            format!(
                "{name:?} is not a valid name: at most 253 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
            ),
        )),
    }
}

/// Joins field path segments the way Kubernetes prints them.
pub struct FieldPath(String);

impl FieldPath {
    pub fn root(name: &str) -> Self {
        Self(name.to_owned())
    }

    pub fn child(&self, name: &str) -> Self {
        Self(format!("{}.{name}", self.0))
    }

    pub fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// The path as written: `spec.routes[0].topicRef.name`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn error(&self, message: impl Into<String>) -> FieldError {
        FieldError::new(self.0.clone(), message)
    }
}
