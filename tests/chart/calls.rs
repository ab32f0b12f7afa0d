//! The API calls the operator really makes: `ferry operator` runs as a child process against a
//! recording stand-in for the API server (its kubeconfig points there) that serves the orders
//! example, and every request it sends is written down as (API group, resource, verb). The
//! chart's RBAC is then compared with that list, both ways.

use std::{
    collections::BTreeSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{Method, StatusCode, Uri, header},
    response::Response,
};
use serde_json::{Value, json};

/// One permission the operator used: API group ("" for the core group), resource (with
/// `/subresource`), verb.
pub(crate) type Permission = (String, String, String);

/// What the stand-in serves: the orders example's objects, in the namespace `shop`.
struct Server {
    /// What a GET finds: the example, and what the operator created or replaced since.
    objects: Mutex<Vec<Value>>,
    calls: Mutex<BTreeSet<Permission>>,
}

/// The path of a namespaced or cluster-wide request, taken apart.
struct Target {
    group: String,
    version: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn target(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (String::new(), (*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => ((*group).to_owned(), (*version).to_owned(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
            (Some((*namespace).to_owned()), rest)
        }
        rest => (None, rest),
    };
    let owned = |part: Option<&&str>| part.map(|text| (*text).to_owned());
    Some(Target {
        group,
        version,
        namespace,
        resource: owned(rest.first())?,
        name: owned(rest.get(1)),
        subresource: owned(rest.get(2)),
    })
}

/// The plural resource name of an object, as the API server names its collection.
fn plural(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or_default().to_lowercase();
    if kind.ends_with('y') {
        format!("{}ies", kind.trim_end_matches('y'))
    } else {
        format!("{kind}s")
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

async fn answer(
    State(server): State<Arc<Server>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let Some(target) = target(uri.path()) else {
        return not_found();
    };
    let query = uri.query().unwrap_or_default();
    let watch = query
        .split('&')
        .any(|pair| pair == "watch=true" || pair == "watch=1");
    let verb = match (&method, &target.name) {
        (&Method::GET, None) if watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, _) => "delete",
        _ => "other",
    };
    let resource = match &target.subresource {
        Some(sub) => format!("{}/{sub}", target.resource),
        None => target.resource.clone(),
    };
    if let Ok(mut calls) = server.calls.lock() {
        calls.insert((target.group.clone(), resource, verb.to_owned()));
    }
    let api_version = if target.group.is_empty() {
        target.version.clone()
    } else {
        format!("{}/{}", target.group, target.version)
    };
    let here = |object: &&Value| {
        plural(object) == target.resource
            && object["apiVersion"] == api_version.as_str()
            && target
                .namespace
                .as_deref()
                .is_none_or(|namespace| object["metadata"]["namespace"] == namespace)
    };
    let objects = server
        .objects
        .lock()
        .map(|objects| objects.clone())
        .unwrap_or_default();
    match verb {
        // Open, and quiet, until the operator stops.
        "watch" => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(futures::stream::pending::<
                Result<Bytes, Infallible>,
            >()))
            .unwrap_or_default(),
        "list" => {
            let items: Vec<Value> = if query.contains("labelSelector") {
                stale_child(&target, query, &objects).into_iter().collect()
            } else {
                objects.iter().filter(here).cloned().collect()
            };
            json_response(
                StatusCode::OK,
                &json!({"apiVersion": api_version, "kind": "List",
                        "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        "get" | "patch" => {
            let name = target.name.as_deref().unwrap_or_default();
            let found = objects
                .iter()
                .filter(here)
                .find(|object| object["metadata"]["name"] == name);
            match (found, verb) {
                (Some(object), _) => json_response(StatusCode::OK, object),
                (None, "patch") => echo(&body),
                _ => not_found(),
            }
        }
        "create" | "update" => {
            let stored = stored(&body);
            if let Ok(mut objects) = server.objects.lock() {
                let same = |object: &Value| {
                    object["kind"] == stored["kind"]
                        && object["metadata"]["namespace"] == stored["metadata"]["namespace"]
                        && object["metadata"]["name"] == stored["metadata"]["name"]
                };
                objects.retain(|object| !same(object));
                objects.push(stored.clone());
            }
            json_response(StatusCode::OK, &stored)
        }
        "delete" => json_response(
            StatusCode::OK,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
        ),
        _ => not_found(),
    }
}

/// The body sent, as the stored object (with the fields the server would add).
fn stored(body: &Bytes) -> Value {
    let mut object: Value = serde_json::from_slice(body).unwrap_or_else(|_| json!({}));
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("resourceVersion".into(), "2".into());
        metadata.insert("uid".into(), "00000000-0000-0000-0000-000000000002".into());
    }
    object
}

fn echo(body: &Bytes) -> Response {
    json_response(StatusCode::OK, &stored(body))
}

/// For a list of a resource's children (by its labels): one child the operator owns but no
/// longer wants, so that it deletes it.
fn stale_child(target: &Target, query: &str, objects: &[Value]) -> Option<Value> {
    let selector = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("labelSelector="))?;
    let selector = url::form_urlencoded::parse(format!("s={selector}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())?;
    let labels: serde_json::Map<String, Value> = selector
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), Value::from(value)))
        .collect();
    // The parent: `ferry.dev/<kind>: <name>` among the labels.
    let parent = labels.iter().find_map(|(key, name)| {
        let kind = key.strip_prefix("ferry.dev/")?;
        objects.iter().find(|object| {
            object["kind"].as_str().map(str::to_lowercase).as_deref() == Some(kind)
                && object["metadata"]["name"] == *name
                && object["metadata"]["namespace"]
                    == target.namespace.as_deref().unwrap_or_default()
        })
    })?;
    Some(json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": "left-over-child", "namespace": target.namespace,
                     "labels": labels, "resourceVersion": "1",
                     "uid": "00000000-0000-0000-0000-000000000001",
                     "ownerReferences": [{
                         "apiVersion": parent["apiVersion"], "kind": parent["kind"],
                         "name": parent["metadata"]["name"], "uid": parent["metadata"]["uid"],
                         "controller": true, "blockOwnerDeletion": true,
                     }]},
    }))
}

/// The orders example as the API server would hold it, and a Consumer whose topic does not
/// exist (the operator publishes a Warning event about it).
fn example_objects() -> Vec<Value> {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/orders");
    let mut documents = ferry::manifest::load(&[folder]).expect("the orders example");
    let mut broken = documents
        .iter()
        .find(|document| document.value["kind"] == "Consumer")
        .expect("the example's Consumer")
        .clone();
    broken.value["metadata"]["name"] = "broken".into();
    broken.value["spec"]["topicRef"]["name"] = "no-such-topic".into();
    documents.push(broken);
    documents
        .into_iter()
        .enumerate()
        .map(|(index, document)| {
            let mut object = document.value;
            let metadata = &mut object["metadata"];
            metadata["uid"] = format!("00000000-0000-0000-0001-{index:012}").into();
            metadata["resourceVersion"] = "1".into();
            metadata["generation"] = 1.into();
            object
        })
        .collect()
}

/// Runs `ferry operator` (with leader election) against the stand-in until it has sent every
/// request of `signs` (at most 60 s), two seconds more, then stops it with SIGTERM, and returns
/// every permission its requests needed.
pub(crate) async fn operator_calls(signs: &BTreeSet<Permission>) -> BTreeSet<Permission> {
    let server = Arc::new(Server {
        objects: Mutex::new(example_objects()),
        calls: Mutex::new(BTreeSet::new()),
    });
    let router = Router::new().fallback(answer).with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the stand-in API server");
    let address: SocketAddr = listener.local_addr().expect("its address");
    let serving = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });

    let dir = tempfile::tempdir().expect("a temporary folder");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: stand-in\n\
             clusters: [{{name: stand-in, cluster: {{server: 'http://{address}'}}}}]\n\
             users: [{{name: nobody, user: {{}}}}]\n\
             contexts: [{{name: stand-in, context: {{cluster: stand-in, user: nobody, namespace: ferry-system}}}}]\n"
        ),
    )
    .expect("write the kubeconfig");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["operator", "--metrics-address", &metrics.to_string()])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "ferry-system")
        .env("POD_NAME", "ferry-operator-0")
        .env("RUST_LOG", "ferry=warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start ferry operator");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let seen = server
            .calls
            .lock()
            .map(|calls| calls.clone())
            .unwrap_or_default();
        if signs.is_subset(&seen) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(pid) = operator.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), operator.wait()).await;
    serving.abort();
    server
        .calls
        .lock()
        .map(|calls| calls.clone())
        .unwrap_or_default()
}
