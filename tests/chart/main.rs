//! Tests of the Helm chart in `charts/ferry`: it lints, rejects invalid values, renders only
//! fields the Kubernetes types know, runs the operator with restricted pod security, and grants
//! least-privilege RBAC.
//!
//! They run a real helm: `$HELM` if set, else `helm` on `PATH`, else `.cache/helm/helm` (which
//! `.ci/install-helm` installs). Without one they fail and say so; they never skip.
//! `$FERRY_CHART_DIR` points them at another copy of the chart (default: `charts/ferry`).

mod calls;
mod helm;
mod render;
mod round_trip;

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use k8s_openapi::{
    Resource,
    api::{
        apps::v1::Deployment,
        core::v1::{Container, Probe, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use helm::*;
use render::*;
use round_trip::*;

// ---------------------------------------------------------------------------------------------
// Helpers for assertions
// ---------------------------------------------------------------------------------------------

fn operator_container(deployment: &Deployment) -> Container {
    let containers = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .map(|pod| pod.containers.clone())
        .unwrap_or_default();
    assert_eq!(containers.len(), 1, "the operator pod has one container");
    containers.into_iter().next().unwrap_or_default()
}

fn args(deployment: &Deployment) -> Vec<String> {
    operator_container(deployment).args.unwrap_or_default()
}

/// The value following `flag` in `args`, if the flag is there.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let position = args.iter().position(|arg| arg == flag)?;
    args.get(position + 1).map(String::as_str)
}

fn app_version() -> String {
    let path = chart_dir().join("Chart.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let chart: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    chart
        .get("appVersion")
        .and_then(serde_yaml_ng::Value::as_str)
        .unwrap_or_else(|| panic!("{} has no appVersion", path.display()))
        .to_owned()
}

fn operator_service_account() -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: RELEASE.into(),
        namespace: Some(NAMESPACE.into()),
        api_group: None,
    }
}

fn http_get(probe: Option<&Probe>) -> (Option<String>, IntOrString) {
    let action = probe
        .and_then(|probe| probe.http_get.clone())
        .expect("the probe is an HTTP GET");
    (action.path, action.port)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn chart_passes_helm_lint_and_strict_lint() {
    for flags in [&[][..], &["--strict"][..]] {
        let (ok, report) = lint(flags);
        assert!(ok, "{report}");
    }
}

#[test]
fn chart_lint_rejects_an_unknown_log_format_and_unknown_keys() {
    for (set, culprit) in [
        ("logFormat=xml", "logFormat"),
        ("unknownKey=1", "unknownKey"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("service.typo=1", "typo"),
    ] {
        let (ok, report) = lint(&["--set", set]);
        assert!(!ok, "helm lint accepted --set {set}:\n{report}");
        assert!(
            report.contains(culprit),
            "helm lint rejected --set {set} without naming {culprit}:\n{report}"
        );
    }
}

#[test]
fn chart_renders_only_known_fields_of_kubernetes_types() {
    let mut problems = Vec::new();
    for render in Render::all() {
        assert!(
            render.docs.iter().any(Doc::is::<Deployment>),
            "values {:?}: no Deployment rendered",
            render.sets
        );
        for doc in &render.docs {
            for problem in round_trip_problems(doc) {
                problems.push(format!("values {:?}: {problem}", render.sets));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn round_trip_check_reports_misspelt_fields_but_not_harmless_differences() {
    // The check above proves something only if it catches a typo and nothing else: an empty
    // map or a null may be dropped, and a port may be a number or a name.
    let yaml = r#"
apiVersion: v1
kind: Service
metadata:
  name: x
  annotations: {}
  lables: {a: b}
spec:
  selector:
  ports:
    - port: 80
      targetPort: 8080
      protocl: TCP
    - port: 81
      targetPort: http
"#;
    let docs = parse_documents(yaml, "inline");
    let problems: Vec<String> = docs.iter().flat_map(round_trip_problems).collect();
    assert_eq!(
        problems,
        [
            "Service x: unknown field .metadata.lables",
            "Service x: unknown field .spec.ports[0].protocl",
        ]
    );
}

#[test]
fn chart_deployment_runs_restricted_with_health_probes_on_the_http_port() {
    let render = Render::new(&[]);
    let deployment: Deployment = render.only();
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.clone())
        .expect("the Deployment has a pod spec");

    assert_eq!(pod.automount_service_account_token, Some(true));
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    assert_eq!(pod.service_account_name.as_deref(), Some(RELEASE));

    let security = pod.security_context.expect("a pod securityContext");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.run_as_user, Some(65532));
    assert_eq!(security.run_as_group, Some(65532));
    assert_eq!(security.fs_group, Some(65532));
    assert_eq!(
        security.seccomp_profile.map(|profile| profile.type_),
        Some("RuntimeDefault".to_owned())
    );

    let container = operator_container(&deployment);
    let security = container
        .security_context
        .clone()
        .expect("a container securityContext");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.run_as_non_root, Some(true));
    assert_ne!(security.privileged, Some(true));
    let dropped = security
        .capabilities
        .as_ref()
        .and_then(|capabilities| capabilities.drop.clone())
        .unwrap_or_default();
    assert_eq!(dropped, ["ALL"]);
    let added = security
        .capabilities
        .and_then(|capabilities| capabilities.add)
        .unwrap_or_default();
    assert!(added.is_empty(), "capabilities added: {added:?}");

    let ports = container.ports.clone().unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|port| port.name.as_deref() == Some("http") && port.container_port == 8080),
        "no container port named http on 8080: {ports:?}"
    );
    let http = IntOrString::String("http".into());
    assert_eq!(
        http_get(container.liveness_probe.as_ref()),
        (Some("/healthz".into()), http.clone())
    );
    assert_eq!(
        http_get(container.readiness_probe.as_ref()),
        (Some("/readyz".into()), http.clone())
    );

    for (name, field_path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let from_field = container
            .env
            .iter()
            .flatten()
            .find(|var| var.name == name)
            .and_then(|var| var.value_from.clone())
            .and_then(|source| source.field_ref)
            .map(|selector| selector.field_path);
        assert_eq!(from_field.as_deref(), Some(field_path), "env {name}");
    }

    let service: Service = render.only();
    let service_ports = service.spec.and_then(|spec| spec.ports).unwrap_or_default();
    assert!(
        service_ports
            .iter()
            .any(|port| port.name.as_deref() == Some("http")
                && port.port == 8080
                && port.target_port == Some(http.clone())),
        "the Service exposes no port http -> http on 8080: {service_ports:?}"
    );
}

#[test]
fn chart_deployment_args_follow_the_values() {
    let image = format!("ghcr.io/ferry-dev/ferry:{}", app_version());
    let defaults = args(&Render::new(&[]).only());
    assert_eq!(
        defaults,
        [
            "operator",
            "--log-format",
            "json",
            "--log-level",
            "info",
            "--metrics-port",
            "8080",
            "--workload-image",
            image.as_str(),
        ]
    );

    let namespaced = args(&Render::new(&["watchNamespaces={shop,billing}"]).only());
    assert_eq!(
        flag_value(&namespaced, "--namespaces"),
        Some("shop,billing")
    );
    assert!(
        !namespaced
            .iter()
            .any(|arg| arg.starts_with("--leader-election"))
    );

    let single = args(&Render::new(&["leaderElection.enabled=false", "logFormat=text"]).only());
    assert!(
        single.iter().any(|arg| arg == "--leader-election=false"),
        "{single:?}"
    );
    assert_eq!(flag_value(&single, "--log-format"), Some("text"));
    assert_eq!(flag_value(&single, "--namespaces"), None);

    let custom = args(
        &Render::new(&[
            "workloadImage=registry.example/ferry-workload:1",
            "metrics.port=9090",
        ])
        .only(),
    );
    assert_eq!(
        flag_value(&custom, "--workload-image"),
        Some("registry.example/ferry-workload:1")
    );
    assert_eq!(flag_value(&custom, "--metrics-port"), Some("9090"));
}

#[test]
fn chart_rbac_has_no_wildcards_and_secrets_are_read_only() {
    let allowed_verbs = BTreeSet::from([
        "get", "list", "watch", "create", "patch", "update", "delete",
    ]);
    let read_only = BTreeSet::from(["get", "list", "watch"]);
    for render in Render::all() {
        let grants = render.grants();
        assert!(
            !grants.is_empty(),
            "values {:?}: no RBAC rules",
            render.sets
        );
        for grant in &grants {
            let rule = &grant.rule;
            let lists = [
                ("apiGroups", rule.api_groups.as_deref().unwrap_or_default()),
                ("resources", rule.resources.as_deref().unwrap_or_default()),
                ("verbs", rule.verbs.as_slice()),
                (
                    "resourceNames",
                    rule.resource_names.as_deref().unwrap_or_default(),
                ),
            ];
            for (field, items) in lists {
                assert!(
                    !items.iter().any(|item| item.contains('*')),
                    "values {:?}: {:?} has a wildcard in {field}: {rule:?}",
                    render.sets,
                    grant.holder
                );
            }
            assert!(
                rule.non_resource_urls.is_none(),
                "values {:?}: {:?} grants non-resource URLs",
                render.sets,
                grant.holder
            );
            let verbs = grant.verbs();
            assert!(
                verbs.is_subset(&allowed_verbs),
                "values {:?}: {:?} grants verbs beyond {allowed_verbs:?}: {verbs:?}",
                render.sets,
                grant.holder
            );
            if grant.names_resource("secrets") {
                assert!(
                    verbs.is_subset(&read_only),
                    "values {:?}: {:?} may write secrets: {verbs:?}",
                    render.sets,
                    grant.holder
                );
            }
        }
        assert!(
            grants.iter().any(|grant| grant.names_resource("secrets")),
            "values {:?}: the operator cannot read the Secrets it watches",
            render.sets
        );
    }
}

#[test]
fn chart_grants_patch_on_the_status_of_the_workload_kinds_and_nothing_else_there() {
    for render in Render::all() {
        let grants = render.grants();
        for kind in ["brokertopics", "retrypolicies", "deadletterqueues"] {
            let status = format!("{kind}/status");
            assert!(
                !grants
                    .iter()
                    .any(|grant| grant.grants("ferry.dev", &status)),
                "values {:?}: the operator writes no status of {kind}",
                render.sets
            );
        }
        for kind in ["outboxsources", "consumers"] {
            let status = format!("{kind}/status");
            let on_status: Vec<&Grant> = grants
                .iter()
                .filter(|grant| grant.grants("ferry.dev", &status))
                .collect();
            assert!(
                on_status
                    .iter()
                    .any(|grant| grant.verbs().contains("patch")),
                "values {:?}: no rule lets the operator apply the status of {kind}",
                render.sets
            );
            for grant in on_status {
                assert_eq!(
                    grant.verbs(),
                    BTreeSet::from(["patch"]),
                    "values {:?}: the status step only patches {status}",
                    render.sets
                );
            }
        }
    }
}

#[test]
fn chart_watch_namespaces_grant_a_role_per_namespace_and_nothing_cluster_wide() {
    let namespaced = Render::new(&["watchNamespaces={shop,billing}"]);
    assert!(
        namespaced.objects::<ClusterRole>().is_empty(),
        "a ClusterRole is rendered although only shop and billing are watched"
    );
    assert!(namespaced.objects::<ClusterRoleBinding>().is_empty());
    let grants = namespaced.grants();
    for namespace in ["shop", "billing"] {
        let in_namespace: Vec<&Grant> = grants
            .iter()
            .filter(|grant| grant.holder.namespace.as_deref() == Some(namespace))
            .collect();
        for (group, resource) in [
            ("ferry.dev", "consumers"),
            ("ferry.dev", "outboxsources/status"),
            ("apps", "deployments"),
            ("", "secrets"),
            ("events.k8s.io", "events"),
        ] {
            assert!(
                in_namespace
                    .iter()
                    .any(|grant| grant.grants(group, resource)),
                "no Role in {namespace} grants {group}/{resource}"
            );
        }
        let bound = namespaced
            .objects::<RoleBinding>()
            .into_iter()
            .any(|binding| {
                binding.metadata.namespace.as_deref() == Some(namespace)
                    && binding.role_ref.kind == Role::KIND
                    && binding.subjects.unwrap_or_default() == [operator_service_account()]
            });
        assert!(
            bound,
            "no RoleBinding in {namespace} binds a Role to the operator"
        );
    }
    assert!(
        !grants.iter().any(|grant| {
            grant.grants("apps", "deployments")
                && !matches!(grant.holder.namespace.as_deref(), Some("shop" | "billing"))
        }),
        "deployments are granted outside the watched namespaces: {grants:#?}"
    );

    // Without watchNamespaces the same permissions are granted cluster-wide.
    let everywhere = Render::new(&[]);
    let grants = everywhere.grants();
    assert!(grants.iter().any(|grant| {
        grant.holder.kind == ClusterRole::KIND && grant.grants("apps", "deployments")
    }));
    assert!(
        grants
            .iter()
            .all(|grant| matches!(grant.holder.namespace.as_deref(), None | Some(NAMESPACE))),
        "a Role outside the release namespace is rendered without watchNamespaces"
    );
    let binding: ClusterRoleBinding = everywhere.only();
    assert_eq!(
        binding.subjects.unwrap_or_default(),
        [operator_service_account()]
    );
}

#[test]
fn chart_leases_are_granted_only_by_a_role_in_the_release_namespace() {
    for render in Render::all() {
        let lease_grants: Vec<Grant> = render
            .grants()
            .into_iter()
            .filter(|grant| grant.names_resource("leases"))
            .collect();
        let leader_election = !render
            .sets
            .iter()
            .any(|set| set == "leaderElection.enabled=false");
        if !leader_election {
            assert!(
                lease_grants.is_empty(),
                "values {:?}: leases granted without leader election: {lease_grants:#?}",
                render.sets
            );
            continue;
        }
        assert_eq!(
            lease_grants.len(),
            1,
            "values {:?}: {lease_grants:#?}",
            render.sets
        );
        let grant = &lease_grants[0];
        assert_eq!(grant.holder.kind, Role::KIND, "leases granted cluster-wide");
        assert_eq!(grant.holder.namespace.as_deref(), Some(NAMESPACE));
        assert_eq!(grant.verbs(), BTreeSet::from(["get", "create", "update"]));
        let bound = render.objects::<RoleBinding>().into_iter().any(|binding| {
            binding.metadata.namespace.as_deref() == Some(NAMESPACE)
                && binding.role_ref.kind == Role::KIND
                && binding.role_ref.name == grant.holder.name
                && binding.subjects.unwrap_or_default() == [operator_service_account()]
        });
        assert!(
            bound,
            "values {:?}: the lease Role is not bound to the operator",
            render.sets
        );
    }
}

#[test]
fn chart_bindings_reference_rendered_roles_and_the_operator_service_account() {
    for render in Render::all() {
        let account: ServiceAccount = render.only();
        assert_eq!(account.metadata.name.as_deref(), Some(RELEASE));
        assert_eq!(account.metadata.namespace.as_deref(), Some(NAMESPACE));

        let roles: BTreeSet<Holder> = render
            .grants()
            .into_iter()
            .map(|grant| grant.holder)
            .collect();
        let cluster_bindings = render
            .objects::<ClusterRoleBinding>()
            .into_iter()
            .map(|binding| (None, binding.role_ref, binding.subjects));
        let bindings = render.objects::<RoleBinding>().into_iter().map(|binding| {
            (
                binding.metadata.namespace,
                binding.role_ref,
                binding.subjects,
            )
        });
        for (namespace, role_ref, subjects) in cluster_bindings.chain(bindings) {
            assert_eq!(role_ref.api_group, "rbac.authorization.k8s.io");
            let target = Holder {
                kind: if role_ref.kind == ClusterRole::KIND {
                    ClusterRole::KIND
                } else {
                    Role::KIND
                },
                namespace: if role_ref.kind == ClusterRole::KIND {
                    None
                } else {
                    namespace
                },
                name: role_ref.name.clone(),
            };
            assert!(
                roles.contains(&target),
                "values {:?}: a binding refers to {target:?}, which is not rendered",
                render.sets
            );
            assert_eq!(subjects.unwrap_or_default(), [operator_service_account()]);
        }
    }
}

#[test]
fn chart_ships_every_generated_crd_as_namespaced_ferry_dev_kinds() {
    // charts/ferry/crds/ is generated from the Rust types (`ferry crd`): it must hold the CRD
    // of every kind, and the chart must render exactly those.
    let crd_dir = chart_dir().join("crds");
    let entries = std::fs::read_dir(&crd_dir).unwrap_or_else(|e| {
        panic!(
            "cannot list {} (generate it with `ferry crd`): {e}",
            crd_dir.display()
        )
    });
    let mut shipped = BTreeSet::new();
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if matches!(
            path.extension().and_then(OsStr::to_str),
            Some("yaml" | "yml")
        ) {
            shipped.extend(crd_names_in(&path));
        }
    }
    let expected: BTreeSet<String> = FERRY_PLURALS
        .iter()
        .map(|plural| format!("{plural}.ferry.dev"))
        .collect();
    assert_eq!(shipped, expected, "CRDs in {}", crd_dir.display());

    for render in Render::all() {
        let crds = render.objects::<CustomResourceDefinition>();
        let mut rendered = BTreeSet::new();
        for crd in &crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let spec = &crd.spec;
            assert_eq!(spec.group, "ferry.dev", "{name}");
            assert_eq!(spec.scope, "Namespaced", "{name}");
            assert!(
                FERRY_PLURALS.contains(&spec.names.plural.as_str()),
                "{name}: unexpected plural {}",
                spec.names.plural
            );
            assert_eq!(name, format!("{}.ferry.dev", spec.names.plural));
            assert!(
                spec.names.categories.iter().flatten().any(|c| c == "ferry"),
                "{name} is not in category ferry, so `kubectl get ferry` misses it"
            );
            rendered.insert(name);
        }
        assert_eq!(crds.len(), rendered.len(), "a CRD is rendered twice");
        assert_eq!(
            rendered,
            shipped,
            "values {:?}: rendered CRDs differ from the files in {}",
            render.sets,
            crd_dir.display()
        );
    }
}

fn crd_names_in(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_documents(&text, &path.display().to_string())
        .into_iter()
        .filter(|doc| doc.is::<CustomResourceDefinition>())
        .map(|doc| doc.name)
        .collect()
}

#[test]
fn chart_service_monitor_is_opt_in_and_scrapes_the_http_port() {
    let has_monitor = |render: &Render| render.docs.iter().any(|doc| doc.kind == "ServiceMonitor");
    assert!(
        !has_monitor(&Render::new(&[])),
        "a ServiceMonitor is rendered by default"
    );

    let render = Render::new(&["metrics.serviceMonitor.enabled=true"]);
    let monitor = render
        .docs
        .iter()
        .find(|doc| doc.kind == "ServiceMonitor")
        .expect("a ServiceMonitor when metrics.serviceMonitor.enabled");
    assert_eq!(monitor.api_version, "monitoring.coreos.com/v1");
    assert_eq!(monitor.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(
        monitor.value.pointer("/spec/endpoints/0/port"),
        Some(&Value::from("http"))
    );
    assert_eq!(
        monitor.value.pointer("/spec/endpoints/0/path"),
        Some(&Value::from("/metrics"))
    );
    let service: Service = render.only();
    let service_labels = service.metadata.labels.unwrap_or_default();
    let selector = monitor
        .value
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .expect("the ServiceMonitor selects by matchLabels");
    for (key, value) in selector {
        assert_eq!(
            service_labels
                .get(key)
                .map(|v| Value::from(v.as_str()))
                .as_ref(),
            Some(value),
            "the ServiceMonitor's selector {key} does not match the Service"
        );
    }

    let without_service = template(&[
        "metrics.serviceMonitor.enabled=true",
        "service.enabled=false",
    ]);
    assert!(
        without_service.is_err(),
        "a ServiceMonitor without its Service was rendered"
    );
}

#[test]
fn chart_refuses_several_replicas_without_leader_election() {
    let rendered = template(&["replicaCount=2", "leaderElection.enabled=false"]);
    assert!(
        rendered.is_err(),
        "two replicas without leader election were rendered: both would reconcile and write"
    );
    let elected: Deployment = Render::new(&["replicaCount=2"]).only();
    assert_eq!(elected.spec.and_then(|spec| spec.replicas), Some(2));
}

/// Permissions the chart grants that the run below sends no request for, each with the reason
/// the operator needs it.
const GRANTED_WITHOUT_A_REQUEST: &[(&str, &str, &str, &str)] = &[
    (
        "events.k8s.io",
        "events",
        "patch",
        "the event recorder patches a repeated event into a series instead of creating it again",
    ),
    (
        "coordination.k8s.io",
        "leases",
        "update",
        "renewing and releasing the Lease; the run may end before the first renewal",
    ),
    (
        "ferry.dev",
        "outboxsources/finalizers",
        "update",
        "no request: admission checks it for blockOwnerDeletion on the children's owner references",
    ),
    (
        "ferry.dev",
        "consumers/finalizers",
        "update",
        "no request: admission checks it for blockOwnerDeletion on the children's owner references",
    ),
];

/// The chart's RBAC (default values: cluster-wide) against the requests `ferry operator` sends
/// while it reconciles the orders example, elects itself leader, deletes a child it no longer
/// wants and stops: every request is granted, and nothing is granted that no request needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_grants_exactly_what_the_operator_calls() {
    let owned = |(group, resource, verb): (&str, &str, &str)| {
        (group.to_owned(), resource.to_owned(), verb.to_owned())
    };
    let signs: BTreeSet<calls::Permission> = [
        ("ferry.dev", "outboxsources", "watch"),
        ("ferry.dev", "outboxsources/status", "patch"),
        ("ferry.dev", "consumers/status", "patch"),
        ("apps", "deployments", "patch"),
        ("", "configmaps", "delete"),
        ("apps", "deployments", "delete"),
        ("policy", "poddisruptionbudgets", "delete"),
        ("coordination.k8s.io", "leases", "create"),
        ("events.k8s.io", "events", "create"),
    ]
    .into_iter()
    .map(owned)
    .collect();
    let used = calls::operator_calls(&signs).await;
    let unseen: Vec<&calls::Permission> = signs.difference(&used).collect();
    assert!(
        unseen.is_empty(),
        "the operator did not get far enough to send {unseen:?}; it sent {used:#?}"
    );
    let granted: BTreeSet<calls::Permission> = Render::new(&[])
        .grants()
        .iter()
        .flat_map(|grant| {
            let rule = &grant.rule;
            let groups = rule.api_groups.clone().unwrap_or_default();
            let resources = rule.resources.clone().unwrap_or_default();
            groups.into_iter().flat_map(move |group| {
                let verbs = rule.verbs.clone();
                resources.clone().into_iter().flat_map(move |resource| {
                    let group = group.clone();
                    verbs
                        .clone()
                        .into_iter()
                        .map(move |verb| (group.clone(), resource.clone(), verb))
                })
            })
        })
        .collect();
    // A server-side apply of an object that does not exist yet is authorized as create.
    let applied: Vec<calls::Permission> = used
        .iter()
        .filter(|(_, resource, verb)| verb == "patch" && !resource.contains('/'))
        .map(|(group, resource, _)| (group.clone(), resource.clone(), "create".to_owned()))
        .collect();
    let used: BTreeSet<calls::Permission> = used.into_iter().chain(applied).collect();
    let not_granted: Vec<&calls::Permission> = used.difference(&granted).collect();
    assert!(
        not_granted.is_empty(),
        "the operator calls what the chart does not grant: {not_granted:#?}"
    );
    let never_used: Vec<&calls::Permission> = granted
        .difference(&used)
        .filter(|(group, resource, verb)| {
            !GRANTED_WITHOUT_A_REQUEST
                .iter()
                .any(|(g, r, v, _)| g == group && r == resource && v == verb)
        })
        .collect();
    assert!(
        never_used.is_empty(),
        "the chart grants what the operator never calls: {never_used:#?}"
    );
}
