//! The kubelet, played by the test: it runs a Deployment the operator applied to the in-memory
//! API as a real `ferry` process (the container's args, the ConfigMap mounted as the config
//! file, each `secretKeyRef` resolved from the Secret), marks the Deployment available once the
//! process answers `/readyz`, and routes the status probe's requests for the Deployment's
//! Service to the process.
//!
//! One departure from a pod: `http.listen` in the config is rewritten to a free loopback port,
//! since every process shares this machine's network.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use ferry::operator::{
    api::MemoryApi,
    build::CONFIG_FILE,
    probe::{ProbeError, ProbeTarget, StatusProbe},
};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentCondition, DeploymentStatus},
        core::v1::{ConfigMap, Container, Secret, Service},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use serde::de::DeserializeOwned;
use tokio::process::{Child, Command};

use crate::{
    eventually,
    support::{TempDir, free_port},
};

/// How long a process may take to answer `/readyz` (connect to its database and broker).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The status probe of the test: the request for a Service goes to the process the kubelet
/// runs behind it. A Service with no process behind it is refused, as in a cluster.
pub struct RoutedProbe {
    /// (namespace, Service) -> the process's address.
    routes: Mutex<BTreeMap<(String, String), SocketAddr>>,
    client: reqwest::Client,
}

impl RoutedProbe {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .expect("an HTTP client");
        Self {
            routes: Mutex::default(),
            client,
        }
    }

    fn routes(&self) -> MutexGuard<'_, BTreeMap<(String, String), SocketAddr>> {
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn route(&self, namespace: &str, service: &str, address: SocketAddr) {
        self.routes()
            .insert((namespace.to_owned(), service.to_owned()), address);
    }
}

#[async_trait]
impl StatusProbe for RoutedProbe {
    async fn fetch(&self, target: &ProbeTarget) -> Result<Vec<u8>, ProbeError> {
        let address = self
            .routes()
            .get(&(target.namespace.clone(), target.service.clone()))
            .copied();
        let Some(address) = address else {
            return Err(ProbeError(format!(
                "GET {}: connection refused (no process behind the Service)",
                target.url()
            )));
        };
        let fail = |error: reqwest::Error| ProbeError(format!("GET {}: {error}", target.url()));
        let response = self
            .client
            .get(format!("http://{address}/status"))
            .send()
            .await
            .map_err(fail)?;
        if !response.status().is_success() {
            return Err(ProbeError(format!(
                "GET {}: HTTP {}",
                target.url(),
                response.status()
            )));
        }
        Ok(response.bytes().await.map_err(fail)?.to_vec())
    }
}

/// One process the kubelet runs.
struct Pod {
    deployment: String,
    log: PathBuf,
    child: Child,
}

pub struct Kubelet {
    api: Arc<MemoryApi>,
    probe: Arc<RoutedProbe>,
    dir: TempDir,
    pods: Vec<Pod>,
}

fn object<T: DeserializeOwned>(api: &MemoryApi, kind: &str, namespace: &str, name: &str) -> T {
    let value = api
        .get(kind, namespace, name)
        .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} in the API"));
    serde_json::from_value(value).unwrap_or_else(|error| panic!("{kind} {name}: {error}"))
}

/// The last lines of a log, for a failure message.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Kubelet {
    pub fn new(api: Arc<MemoryApi>, probe: Arc<RoutedProbe>) -> Self {
        Self {
            api,
            probe,
            dir: TempDir::new("kubelet").expect("a temporary directory"),
            pods: Vec::new(),
        }
    }

    /// Runs one pod of Deployment `namespace/name` as the kubelet would, waits until it is
    /// ready, routes its Service to it and reports the Deployment available.
    pub async fn run(&mut self, namespace: &str, name: &str) {
        let deployment: Deployment = object(&self.api, "Deployment", namespace, name);
        let template = deployment
            .spec
            .as_ref()
            .map(|spec| spec.template.clone())
            .expect("a pod template");
        let pod = template.spec.clone().expect("a pod spec");
        let [container]: [Container; 1] = pod.containers.clone().try_into().expect("one container");

        // The ConfigMap volume, mounted where the container reads it: here a directory of the
        // test's own, with `http.listen` moved to a free loopback port.
        let pod_dir = self.dir.path().join(name);
        std::fs::create_dir_all(&pod_dir).expect("the pod's directory");
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find_map(|volume| Some((volume.name.clone(), volume.config_map.clone()?.name)))
            .expect("a ConfigMap volume");
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|mount| mount.name == volume.0)
            .map(|mount| mount.mount_path.clone())
            .expect("the ConfigMap volume is mounted");
        let config_map: ConfigMap = object(&self.api, "ConfigMap", namespace, &volume.1);
        let config = config_map
            .data
            .as_ref()
            .and_then(|data| data.get(CONFIG_FILE))
            .expect("the ConfigMap holds config.yaml");
        let mut config: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(config).expect("config.yaml is YAML");
        let port = free_port().expect("a free port");
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        config["http"]["listen"] = serde_yaml_ng::Value::String(address.to_string());
        std::fs::write(
            pod_dir.join(CONFIG_FILE),
            serde_yaml_ng::to_string(&config).expect("config.yaml renders"),
        )
        .expect("write config.yaml");

        // The container's args, its mount path replaced by the pod's directory.
        let args: Vec<String> = container
            .args
            .iter()
            .flatten()
            .map(|arg| match arg.strip_prefix(&mount) {
                Some(rest) => format!("{}{rest}", pod_dir.display()),
                None => arg.clone(),
            })
            .collect();
        // The environment: only what the container spec gives, each Secret key resolved.
        let env: Vec<(String, String)> = container
            .env
            .iter()
            .flatten()
            .map(|var| {
                let value = match (&var.value, &var.value_from) {
                    (Some(value), _) => value.clone(),
                    (None, Some(from)) => {
                        let key = from.secret_key_ref.as_ref().expect("a secretKeyRef");
                        self.secret_value(namespace, &key.name, &key.key)
                    }
                    (None, None) => String::new(),
                };
                (var.name.clone(), value)
            })
            .collect();

        let log = pod_dir.join("log");
        let out = std::fs::File::create(&log).expect("create the log");
        let err = out.try_clone().expect("the log again");
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .args(&args)
            .env_clear()
            .envs(env)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("run ferry {args:?}: {error}"));
        self.pods.push(Pod {
            deployment: name.to_owned(),
            log: log.clone(),
            child,
        });

        // The readiness probe of the container, until it passes.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client");
        let readyz = format!("http://{address}/readyz");
        eventually(&format!("{name} to be ready"), START_DEADLINE, async || {
            self.check_alive();
            match client.get(&readyz).send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("/readyz answers {}", response.status())),
                Err(error) => Err(format!("/readyz: {error}\n{}", tail(&log))),
            }
        })
        .await;

        for service in self.services_selecting(namespace, &template.metadata) {
            self.probe.route(namespace, &service, address);
        }
        self.mark_available(namespace, &deployment);
    }

    /// The value of key `key` of Secret `namespace/name`.
    fn secret_value(&self, namespace: &str, name: &str, key: &str) -> String {
        let secret: Secret = object(&self.api, "Secret", namespace, name);
        let from_string = secret
            .string_data
            .as_ref()
            .and_then(|data| data.get(key))
            .cloned();
        let from_data = || {
            secret
                .data
                .as_ref()
                .and_then(|data| data.get(key))
                .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
        };
        from_string
            .or_else(from_data)
            .unwrap_or_else(|| panic!("Secret {namespace}/{name} has no key {key}"))
    }

    /// The Services whose selector the pod's labels match.
    fn services_selecting(
        &self,
        namespace: &str,
        pod: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    ) -> Vec<String> {
        let labels = pod
            .as_ref()
            .and_then(|meta| meta.labels.clone())
            .unwrap_or_default();
        self.api
            .objects("Service", namespace)
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Service>(value).ok())
            .filter(|service| {
                let selector = service
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.selector.clone())
                    .unwrap_or_default();
                !selector.is_empty()
                    && selector
                        .iter()
                        .all(|(key, value)| labels.get(key) == Some(value))
            })
            .filter_map(|service| service.metadata.name)
            .collect()
    }

    /// Reports every replica of the Deployment ready and available, as the Deployment
    /// controller would once its pods pass their readiness probes.
    fn mark_available(&self, namespace: &str, deployment: &Deployment) {
        let replicas = deployment
            .spec
            .as_ref()
            .and_then(|spec| spec.replicas)
            .unwrap_or(1);
        let status = DeploymentStatus {
            observed_generation: deployment.metadata.generation,
            replicas: Some(replicas),
            ready_replicas: Some(replicas),
            available_replicas: Some(replicas),
            updated_replicas: Some(replicas),
            conditions: Some(vec![DeploymentCondition {
                type_: "Available".to_owned(),
                status: "True".to_owned(),
                reason: Some("MinimumReplicasAvailable".to_owned()),
                last_transition_time: Some(Time(Timestamp::now())),
                ..DeploymentCondition::default()
            }]),
            ..DeploymentStatus::default()
        };
        let name = deployment.metadata.name.as_deref().unwrap_or_default();
        self.api.set_deployment_status(namespace, name, &status);
    }

    /// Fails the test, with the log, when a process it runs has exited.
    pub fn check_alive(&mut self) {
        for pod in &mut self.pods {
            if let Ok(Some(status)) = pod.child.try_wait() {
                panic!("{} exited ({status}):\n{}", pod.deployment, tail(&pod.log));
            }
        }
    }

    /// Kills every process and waits for it.
    pub async fn stop(mut self) {
        for pod in &mut self.pods {
            let _ = pod.child.kill().await;
        }
    }
}
