//! The operator's build step: what each example turns into (golden files under
//! `tests/golden/operator/`, rewritten with `FERRY_UPDATE_GOLDEN=1`), and the promises the
//! children keep whatever the spec: no secret values, restricted pod security, a config hash
//! that follows the config, suspend, the disruption budget, names within 63 characters.

#[path = "operator_build/fixtures.rs"]
mod fixtures;
#[path = "operator_build/golden.rs"]
mod golden;

use ferry::operator::build::{BuildError, ChildKind, Component, Workload};

use fixtures::*;

#[test]
fn every_example_renders_the_children_in_its_golden_file() {
    let catalog = examples();
    let dir = golden::dir("operator");
    let mut rendered = Vec::new();
    for (namespace, name) in catalog.outbox_sources.keys() {
        rendered.push((
            format!("OutboxSource {namespace}/{name}"),
            relay_children(&catalog, namespace, name),
        ));
    }
    for (namespace, name) in catalog.consumers.keys() {
        rendered.push((
            format!("Consumer {namespace}/{name}"),
            consumer_children(&catalog, namespace, name),
        ));
    }
    assert!(
        rendered.len() >= 3,
        "the examples define a relay and two consumers"
    );

    let mut problems = Vec::new();
    let mut expected = Vec::new();
    for (what, children) in &rendered {
        let meta = &children.deployment.metadata;
        let file = dir.join(format!(
            "{}.{}.yaml",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        ));
        let text = format!(
            "# The children of the example {what}, rendered by tests/operator_build.rs.\n\
             # FERRY_UPDATE_GOLDEN=1 cargo nextest run --test operator_build rewrites this file.\n{}",
            render(children)
        );
        if let Err(problem) = golden::check(&file, &text) {
            problems.push(problem);
        }
        expected.push(file);
    }
    for stale in golden::stale(&dir, "yaml", &expected) {
        problems.push(format!(
            "{} matches no example any more; FERRY_UPDATE_GOLDEN=1 deletes it",
            stale.display()
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn no_secret_value_appears_in_any_child() {
    let catalog = canary();
    for children in [
        relay_children(&catalog, "canary", "app"),
        consumer_children(&catalog, "canary", "app"),
    ] {
        let text = render(&children);
        assert!(!text.contains("CANARY"), "a secret value leaked:\n{text}");
        assert!(!text.contains("5ecret"), "a secret value leaked:\n{text}");
        // The base64 form of the `data` Secret, in case anything copied it as it is stored.
        assert!(!text.contains("cmVkaXM6Ly86Q0FOQVJZ"), "{text}");
        let config = config_yaml(&children);
        assert!(config.contains("FERRY_SECRET_"), "{config}");
    }
}

#[test]
fn every_secret_variable_the_config_names_comes_from_a_secret_key_ref() {
    let catalog = canary();
    let children = relay_children(&catalog, "canary", "app");
    let env = pod(&children).containers[0].env.clone().unwrap_or_default();
    let refs: Vec<(String, String, String)> = env
        .iter()
        .map(|var| {
            let secret = var
                .value_from
                .as_ref()
                .and_then(|from| from.secret_key_ref.as_ref())
                .expect("every variable comes from a Secret key");
            assert!(var.value.is_none(), "{var:?}");
            (var.name.clone(), secret.name.clone(), secret.key.clone())
        })
        .collect();
    assert_eq!(
        refs,
        [
            // The outbox database and the dead-letter table share one Secret key: one variable.
            (
                "FERRY_SECRET_APP_DB_URL".into(),
                "app-db".into(),
                "url".into()
            ),
            (
                "FERRY_SECRET_BROKER_AMQP".into(),
                "broker".into(),
                "amqp".into()
            ),
        ]
    );
    let config = config_yaml(&children);
    for (variable, _, _) in &refs {
        assert!(config.contains(&format!("env: {variable}")), "{config}");
    }

    let children = consumer_children(&catalog, "canary", "app");
    let env = pod(&children).containers[0].env.clone().unwrap_or_default();
    let names: Vec<&str> = env.iter().map(|var| var.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "FERRY_SECRET_APP_DB_URL",
            "FERRY_SECRET_BROKER_AMQP",
            "FERRY_SECRET_DEDUP_URL"
        ]
    );
}

#[test]
fn pods_meet_the_restricted_pod_security_standard() {
    let catalog = examples();
    for children in [
        relay_children(&catalog, "shop", "orders"),
        consumer_children(&catalog, "shop", "inventory"),
    ] {
        let pod = pod(&children);
        // Host namespaces and ports.
        assert_ne!(pod.host_network, Some(true));
        assert_ne!(pod.host_pid, Some(true));
        assert_ne!(pod.host_ipc, Some(true));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let pod_security = pod.security_context.as_ref().expect("pod securityContext");
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert!(pod_security.run_as_user.is_some_and(|uid| uid != 0));
        assert_eq!(
            pod_security
                .seccomp_profile
                .as_ref()
                .map(|profile| profile.type_.as_str()),
            Some("RuntimeDefault")
        );
        // Only volume types the restricted profile allows.
        for volume in pod.volumes.iter().flatten() {
            assert!(
                volume.config_map.is_some() || volume.empty_dir.is_some(),
                "{volume:?}"
            );
        }
        assert!(pod.init_containers.is_none() && pod.ephemeral_containers.is_none());
        for container in &pod.containers {
            let security = container
                .security_context
                .as_ref()
                .expect("securityContext");
            assert_eq!(security.allow_privilege_escalation, Some(false));
            assert_ne!(security.privileged, Some(true));
            assert_eq!(security.read_only_root_filesystem, Some(true));
            assert_ne!(security.run_as_non_root, Some(false));
            assert_ne!(security.run_as_user, Some(0));
            let capabilities = security.capabilities.as_ref().expect("capabilities");
            assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
            assert!(capabilities.add.as_ref().is_none_or(Vec::is_empty));
            assert!(security.seccomp_profile.as_ref().is_none_or(|profile| {
                profile.type_ == "RuntimeDefault" || profile.type_ == "Localhost"
            }));
            for port in container.ports.iter().flatten() {
                assert!(port.host_port.is_none(), "{port:?}");
            }
            // Every writable path is a volume: the config is mounted read-only.
            let mounts = container.volume_mounts.clone().unwrap_or_default();
            let config = mounts.iter().find(|mount| mount.name == "config");
            assert_eq!(config.and_then(|mount| mount.read_only), Some(true));
        }
    }
}

#[test]
fn the_pod_runs_the_workload_subcommand_with_probes_on_its_http_port() {
    let catalog = examples();
    for (children, subcommand) in [
        (relay_children(&catalog, "shop", "orders"), "relay"),
        (consumer_children(&catalog, "shop", "inventory"), "consumer"),
    ] {
        let container = &pod(&children).containers[0];
        assert_eq!(container.image.as_deref(), Some(IMAGE));
        assert_eq!(
            container.args.as_deref(),
            Some(
                &[
                    subcommand.to_owned(),
                    "--config".into(),
                    "/etc/ferry/config.yaml".into()
                ][..]
            )
        );
        let config = config_yaml(&children);
        assert!(config.contains("listen: 0.0.0.0:8080"), "{config}");
        let ports = container.ports.clone().unwrap_or_default();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].container_port),
            (Some("http"), 8080)
        );
        let path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
            probe
                .as_ref()
                .and_then(|probe| probe.http_get.as_ref())
                .and_then(|get| get.path.clone())
        };
        assert_eq!(path(&container.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(path(&container.readiness_probe).as_deref(), Some("/readyz"));
        let service = children.service.spec.as_ref().expect("Service spec");
        assert_eq!(service.type_.as_deref(), Some("ClusterIP"));
        let service_ports = service.ports.clone().unwrap_or_default();
        assert_eq!(
            (service_ports[0].name.as_deref(), service_ports[0].port),
            (Some("http"), 8080)
        );
    }
}

#[test]
fn the_spec_image_overrides_the_default_image() {
    let mut catalog = examples();
    let mut inventory = consumer(&catalog, "shop", "inventory").clone();
    inventory.spec.workload.image = Some("registry.example/ferry:custom".into());
    catalog.add_consumer(inventory);
    let children = consumer_children(&catalog, "shop", "inventory");
    assert_eq!(
        pod(&children).containers[0].image.as_deref(),
        Some("registry.example/ferry:custom")
    );
}

#[test]
fn config_hash_changes_when_the_config_changes_and_not_otherwise() {
    let mut catalog = examples();
    let before = relay_children(&catalog, "shop", "orders");
    let again = relay_children(&catalog, "shop", "orders");
    assert_eq!(
        render(&before),
        render(&again),
        "rebuilding is byte-identical"
    );

    // Replicas, image and resources are not config: the pods roll (or scale) for them anyway.
    let mut orders = source(&catalog, "shop", "orders").clone();
    orders.spec.relay.replicas = 5;
    orders.spec.relay.image = Some("registry.example/ferry:other".into());
    catalog.add_outbox_source(orders);
    let rescaled = relay_children(&catalog, "shop", "orders");
    assert_eq!(config_hash(&rescaled), config_hash(&before));

    // A referenced RetryPolicy changes the resolved config, so the hash.
    let mut retries = catalog.retry_policies[&key("shop", "publish-retries")].clone();
    retries.spec.max_attempts = 7;
    catalog.add_retry_policy(retries);
    let changed = relay_children(&catalog, "shop", "orders");
    assert_ne!(config_yaml(&changed), config_yaml(&before));
    assert_ne!(config_hash(&changed), config_hash(&before));
    assert_eq!(config_hash(&changed).len(), 16);
}

#[test]
fn suspend_gives_zero_replicas_and_no_disruption_budget() {
    let mut catalog = examples();
    let mut orders = source(&catalog, "shop", "orders").clone();
    assert_eq!(orders.spec.relay.replicas, 2);
    orders.spec.suspend = true;
    catalog.add_outbox_source(orders);
    let children = relay_children(&catalog, "shop", "orders");
    assert_eq!(replicas(&children), Some(0));
    assert!(children.pdb.is_none());

    let mut inventory = consumer(&catalog, "shop", "inventory").clone();
    inventory.spec.suspend = true;
    catalog.add_consumer(inventory);
    assert_eq!(
        replicas(&consumer_children(&catalog, "shop", "inventory")),
        Some(0)
    );
}

#[test]
fn disruption_budget_exists_only_with_more_than_one_replica() {
    let mut catalog = examples();
    for (count, budget) in [(0, false), (1, false), (2, true), (3, true)] {
        let mut orders = source(&catalog, "shop", "orders").clone();
        orders.spec.relay.replicas = count;
        catalog.add_outbox_source(orders);
        let children = relay_children(&catalog, "shop", "orders");
        assert_eq!(replicas(&children), Some(count));
        assert_eq!(children.pdb.is_some(), budget, "replicas {count}");
        let wanted: Vec<ChildKind> = children.wanted().iter().map(|child| child.kind).collect();
        assert_eq!(
            wanted.contains(&ChildKind::PodDisruptionBudget),
            budget,
            "{wanted:?}"
        );
        if let Some(pdb) = &children.pdb {
            let spec = pdb.spec.as_ref().expect("PDB spec");
            assert_eq!(
                spec.max_unavailable,
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
            );
            assert_eq!(
                spec.selector.as_ref().and_then(|s| s.match_labels.clone()),
                children
                    .deployment
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.match_labels.clone())
            );
        }
    }
}

#[test]
fn long_names_are_truncated_within_63_characters_deterministically() {
    let mut catalog = examples();
    let long_name = format!("orders-{}", "very-long-service-name-".repeat(10));
    let long_name = long_name.trim_end_matches('-').to_owned();
    let other_name = format!("{long_name}-2");
    for name in [&long_name, &other_name] {
        let mut orders = source(&catalog, "shop", "orders").clone();
        orders.metadata.name = Some(name.clone());
        catalog.add_outbox_source(orders);
    }
    let children = relay_children(&catalog, "shop", &long_name);
    let names: Vec<String> = children
        .wanted()
        .into_iter()
        .map(|child| child.name)
        .collect();
    let name = names[0].clone();
    assert!(name.len() <= 63, "{name} has {} characters", name.len());
    assert!(
        name.starts_with("orders-very-long") && name.ends_with("-relay"),
        "{name}"
    );
    assert!(names.iter().all(|each| *each == name), "{names:?}");
    for labels in [
        children
            .deployment
            .metadata
            .labels
            .clone()
            .unwrap_or_default(),
        children
            .service
            .spec
            .clone()
            .and_then(|s| s.selector)
            .unwrap_or_default(),
    ] {
        for value in labels.values() {
            assert!(value.len() <= 63, "label value {value} is too long");
        }
    }

    let again = relay_children(&catalog, "shop", &long_name);
    assert_eq!(
        render(&again),
        render(&children),
        "the same name every time"
    );
    let other = relay_children(&catalog, "shop", &other_name);
    let other_name = other.deployment.metadata.name.clone().unwrap_or_default();
    assert!(other_name.len() <= 63);
    assert_ne!(other_name, name, "two resources never share children");
}

#[test]
fn every_child_has_a_controller_owner_reference_to_its_resource() {
    let catalog = examples();
    let children = consumer_children(&catalog, "shop", "inventory");
    let mut metas = vec![
        &children.config_map.metadata,
        &children.deployment.metadata,
        &children.service.metadata,
    ];
    metas.extend(children.pdb.iter().map(|pdb| &pdb.metadata));
    assert_eq!(metas.len(), 4);
    for meta in metas {
        let owners = meta.owner_references.clone().unwrap_or_default();
        assert_eq!(owners.len(), 1, "{meta:?}");
        let owner = &owners[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str()
            ),
            ("ferry.dev/v1alpha1", "Consumer", "inventory", UID)
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(labels["app.kubernetes.io/component"], "consumer");
        assert_eq!(labels["app.kubernetes.io/instance"], "inventory");
        assert_eq!(labels["ferry.dev/consumer"], "inventory");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "ferry-operator");
    }
}

#[test]
fn a_missing_reference_is_a_build_error_naming_the_field() {
    let mut catalog = examples();
    catalog
        .retry_policies
        .remove(&key("shop", "inventory-retries"));
    let error = Workload::consumer(consumer(&catalog, "shop", "inventory"), &catalog, IMAGE)
        .expect_err("the policy is gone");
    assert!(matches!(error, BuildError::Unresolved(_)), "{error:?}");
    assert_eq!(error.category(), "unresolved_reference");
    assert!(
        error.to_string().contains("spec.retryPolicyRef.name"),
        "{error}"
    );
}

#[test]
fn a_resource_without_a_uid_cannot_own_children() {
    let mut catalog = examples();
    let mut orders = source(&catalog, "shop", "orders").clone();
    orders.metadata.uid = None;
    catalog.add_outbox_source(orders.clone());
    let error = Workload::relay(&orders, &catalog, IMAGE).expect_err("no uid");
    assert!(
        matches!(error, BuildError::MissingMetadata("uid")),
        "{error:?}"
    );
}

#[test]
fn relay_and_consumer_of_the_same_name_get_different_children() {
    let catalog = canary();
    let relay =
        Workload::relay(source(&catalog, "canary", "app"), &catalog, IMAGE).expect("relay builds");
    let consumer = Workload::consumer(consumer(&catalog, "canary", "app"), &catalog, IMAGE)
        .expect("consumer builds");
    assert_eq!(relay.component, Component::Relay);
    assert_eq!(relay.child_name(), "app-relay");
    assert_eq!(consumer.child_name(), "app-consumer");
    assert_ne!(relay.selector_labels(), consumer.selector_labels());
}

#[test]
fn transactional_messages_add_the_api_port_and_the_token_variable_and_nothing_otherwise() {
    let mut catalog = examples();
    let without = relay_children(&catalog, "shop", "orders");
    let mut orders = source(&catalog, "shop", "orders").clone();
    orders.spec.transactional_messages = Some(
        serde_json::from_value(serde_json::json!({
            "enabled": true,
            "port": 8081,
            "tokenSecretRef": {"name": "orders-api", "key": "token"},
            "checkBack": {"url": "http://orders.shop:8080/ferry/check-back"},
        }))
        .expect("a transactionalMessages section"),
    );
    catalog.add_outbox_source(orders.clone());
    let with = relay_children(&catalog, "shop", "orders");

    let ports = |children: &ferry::operator::build::Children| {
        let container: Vec<(String, i32)> = pod(children).containers[0]
            .ports
            .iter()
            .flatten()
            .map(|port| (port.name.clone().unwrap_or_default(), port.container_port))
            .collect();
        let service: Vec<(String, i32)> = children
            .service
            .spec
            .iter()
            .flat_map(|spec| spec.ports.iter().flatten())
            .map(|port| (port.name.clone().unwrap_or_default(), port.port))
            .collect();
        (container, service)
    };
    assert_eq!(ports(&without).0, [("http".to_owned(), 8080)]);
    assert_eq!(
        ports(&with),
        (
            vec![("http".to_owned(), 8080), ("tx-api".to_owned(), 8081)],
            vec![("http".to_owned(), 8080), ("tx-api".to_owned(), 8081)]
        )
    );
    let env = pod(&with).containers[0].env.clone().unwrap_or_default();
    let token = env
        .iter()
        .find(|var| var.name == "FERRY_SECRET_ORDERS_API_TOKEN")
        .and_then(|var| var.value_from.as_ref())
        .and_then(|from| from.secret_key_ref.as_ref())
        .expect("the token comes from its Secret key");
    assert_eq!(
        (token.name.as_str(), token.key.as_str()),
        ("orders-api", "token")
    );
    let config = config_yaml(&with);
    assert!(
        config.contains("env: FERRY_SECRET_ORDERS_API_TOKEN")
            && config.contains("checkBackUrl: http://orders.shop:8080/ferry/check-back"),
        "{config}"
    );

    // Written but not enabled: the relay is what it was without it.
    orders
        .spec
        .transactional_messages
        .as_mut()
        .expect("set above")
        .enabled = false;
    catalog.add_outbox_source(orders);
    assert_eq!(
        config_yaml(&relay_children(&catalog, "shop", "orders")),
        config_yaml(&without)
    );
}
