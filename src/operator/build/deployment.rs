//! The Deployment that runs `ferry relay` or `ferry consumer` with the ConfigMap's config:
//! secrets as environment variables from Secret keys, probes, and restricted pod security.

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
            EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, PodSecurityContext, PodSpec,
            PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector, SecurityContext, Volume,
            VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{CONFIG_FILE, Workload, config_hash, with_spec_hash};

/// The pod-template annotation holding `config_hash` of the ConfigMap, so that a config change
/// rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "ferry.dev/config-hash";
/// Where the ConfigMap is mounted; the config is `<dir>/config.yaml`.
pub const CONFIG_DIR: &str = "/etc/ferry";
/// The container port (and Service port) name of the HTTP endpoints.
pub const HTTP_PORT_NAME: &str = "http";
/// The container port (and Service port) name of the relay's transactional-message API.
pub const API_PORT_NAME: &str = "tx-api";
/// The user and group the pods run as: not root, the `nonroot` user of distroless images.
pub const RUN_AS_USER: i64 = 65532;

const CONFIG_VOLUME: &str = "config";
const TMP_VOLUME: &str = "tmp";

pub fn build_deployment(workload: &Workload, config_map: &ConfigMap) -> Deployment {
    let config_path = format!("{CONFIG_DIR}/{CONFIG_FILE}");
    let container = Container {
        name: workload.component.as_str().to_owned(),
        image: Some(workload.image.clone()),
        args: Some(vec![
            workload.component.as_str().to_owned(),
            "--config".to_owned(),
            config_path,
        ]),
        env: Some(secret_env(workload)).filter(|env| !env.is_empty()),
        ports: Some(
            workload
                .named_ports()
                .map(|(name, port)| ContainerPort {
                    name: Some(name.to_owned()),
                    container_port: i32::from(port),
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        // Liveness: the process answers at all. Readiness: its database and broker are reachable.
        liveness_probe: Some(http_probe("/healthz", 10)),
        readiness_probe: Some(http_probe("/readyz", 5)),
        resources: workload.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: CONFIG_VOLUME.to_owned(),
                mount_path: CONFIG_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            // The root filesystem is read-only; /tmp is the one writable place (SQLite's
            // temporary files, for one).
            VolumeMount {
                name: TMP_VOLUME.to_owned(),
                mount_path: "/tmp".to_owned(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let pod = PodSpec {
        // The workloads never call the Kubernetes API.
        automount_service_account_token: Some(false),
        // No `<SERVICE>_PORT` variables for every Service in the namespace.
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![container],
        volumes: Some(vec![
            Volume {
                name: CONFIG_VOLUME.to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: workload.child_name(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: TMP_VOLUME.to_owned(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity("16Mi".to_owned())),
                    ..EmptyDirVolumeSource::default()
                }),
                ..Volume::default()
            },
        ]),
        ..PodSpec::default()
    };
    with_spec_hash(Deployment {
        metadata: workload.child_metadata(),
        spec: Some(DeploymentSpec {
            replicas: Some(workload.replicas),
            selector: LabelSelector {
                match_labels: Some(workload.selector_labels()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(workload.labels()),
                    annotations: Some(
                        [(CONFIG_HASH_ANNOTATION.to_owned(), config_hash(config_map))].into(),
                    ),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

/// One `FERRY_SECRET_*` variable per Secret key the config reads, in name order.
fn secret_env(workload: &Workload) -> Vec<EnvVar> {
    workload
        .secret_env
        .iter()
        .map(|(variable, key)| EnvVar {
            name: variable.to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: key.name.clone(),
                    key: key.key.clone(),
                    ..SecretKeySelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        })
        .collect()
}

fn http_probe(path: &str, period_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(HTTP_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}
