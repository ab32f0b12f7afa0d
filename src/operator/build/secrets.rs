//! Which Secret key each `FERRY_SECRET_*` environment variable of a workload stands for: the
//! ConfigMap names only the variables, the Deployment maps them to `secretKeyRef`s.

use std::{cell::RefCell, collections::BTreeMap};

use super::BuildError;
use crate::{
    api::SecretKeyRef,
    config::{SecretSource, secret_from_env},
    validate::FieldError,
};

/// Environment variable name -> the Secret key it is read from, in name order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretEnv(BTreeMap<String, SecretKeyRef>);

impl SecretEnv {
    /// The variables in name order, each with its Secret key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SecretKeyRef)> {
        self.0.iter().map(|(name, key)| (name.as_str(), key))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs a resolution that maps Secret keys with `secret_from_env`, and records which key each
    /// variable stands for. Then checks the resolved config against what was recorded: every
    /// secret it reads must be one of those variables (never an inline value or a file), and no
    /// two Secret keys may share a variable. Only the variables the config reads are kept.
    pub fn resolve<T>(
        resolve: impl FnOnce(&dyn Fn(&SecretKeyRef) -> SecretSource) -> Result<T, Vec<FieldError>>,
        sources: impl Fn(&T) -> Vec<&SecretSource>,
    ) -> Result<(T, SecretEnv), BuildError> {
        let seen = RefCell::new(Vec::new());
        let record = |key: &SecretKeyRef| {
            seen.borrow_mut().push(key.clone());
            secret_from_env(key)
        };
        let config = resolve(&record).map_err(BuildError::Unresolved)?;
        let mut recorded = BTreeMap::new();
        for key in seen.into_inner() {
            let variable = crate::config::env_var_for(&key);
            match recorded.get(&variable) {
                Some(first) if *first != key => {
                    return Err(BuildError::SecretEnvClash {
                        variable,
                        first: describe(first),
                        second: describe(&key),
                    });
                }
                Some(_) => {}
                None => {
                    recorded.insert(variable, key);
                }
            }
        }
        let mut env = BTreeMap::new();
        for source in sources(&config) {
            let found = match source {
                SecretSource::Env(variable) => recorded.get_key_value(variable),
                SecretSource::File(_) | SecretSource::Value(_) => None,
            };
            let Some((variable, key)) = found else {
                return Err(BuildError::SecretNotFromEnv {
                    origin: source.to_string(),
                });
            };
            env.insert(variable.clone(), key.clone());
        }
        Ok((config, SecretEnv(env)))
    }
}

fn describe(key: &SecretKeyRef) -> String {
    format!("{}/{}", key.name, key.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    #[test]
    fn keeps_only_the_variables_the_config_reads() {
        let (_, env) = SecretEnv::resolve(
            |secret| Ok(vec![secret(&key("db", "url")), secret(&key("db", "url"))]),
            |config: &Vec<SecretSource>| config.iter().collect(),
        )
        .expect("resolves");
        let variables: Vec<(&str, &SecretKeyRef)> = env.iter().collect();
        assert_eq!(variables, [("FERRY_SECRET_DB_URL", &key("db", "url"))]);
    }

    #[test]
    fn two_secret_keys_with_one_variable_are_refused() {
        let clash = SecretEnv::resolve(
            |secret| Ok(vec![secret(&key("a-b", "url")), secret(&key("a.b", "url"))]),
            |config: &Vec<SecretSource>| config.iter().collect(),
        );
        assert!(
            matches!(clash, Err(BuildError::SecretEnvClash { ref variable, .. }) if variable == "FERRY_SECRET_A_B_URL"),
            "{clash:?}"
        );
    }

    #[test]
    fn an_inline_secret_value_is_refused() {
        let inline = SecretEnv::resolve(
            |_| Ok(vec![SecretSource::Value("postgres://user:pass@db".into())]),
            |config: &Vec<SecretSource>| config.iter().collect(),
        );
        let error = inline.expect_err("an inline value must not reach a ConfigMap");
        assert!(!error.to_string().contains("pass"), "{error}");
    }
}
