//! The controllers that make a fresh cluster useful to the mesh, run inside the API server and fed
//! by its change stream: Endpoints and EndpointSlices from Services' selectors and pods' addresses
//! and readiness, a `default` ServiceAccount in every namespace, and tokens for service-account
//! token Secrets.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::objects::{now, stamp_new};
use super::resources::{RESOURCES, ResourceId, id_of};
use super::selectors::selector_map_matches;
use super::state::ApiState;
use super::store::{Change, Event, EventType};
use super::tokens::{Binding, Claims, ObjectRef};
use super::writes::create_if_absent;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const SERVICE_ACCOUNT_TOKEN: &str = "kubernetes.io/service-account-token";
/// Tokens of service-account token Secrets live as long as the Secret (ten years here).
const SECRET_TOKEN_SECONDS: i64 = 10 * 365 * 24 * 3600;

struct Kinds {
    namespaces: ResourceId,
    services: ResourceId,
    pods: ResourceId,
    endpoints: ResourceId,
    slices: ResourceId,
    accounts: ResourceId,
    secrets: ResourceId,
}

impl Kinds {
    fn new() -> Self {
        Self {
            namespaces: id_of("", "Namespace"),
            services: id_of("", "Service"),
            pods: id_of("", "Pod"),
            endpoints: id_of("", "Endpoints"),
            slices: id_of("discovery.k8s.io", "EndpointSlice"),
            accounts: id_of("", "ServiceAccount"),
            secrets: id_of("", "Secret"),
        }
    }
}

/// Subscribes to changes, then brings everything up to date, so that the API server answers its
/// first request with every namespace's default account in place. Returns the loop to run next.
pub fn start(shared: Arc<ApiState>) -> impl std::future::Future<Output = ()> {
    let kinds = Kinds::new();
    let (events, _) = shared.store.subscribe();
    reconcile_everything(&shared, &kinds);
    run(shared, kinds, events)
}

async fn run(shared: Arc<ApiState>, kinds: Kinds, mut events: broadcast::Receiver<Arc<Event>>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            received = events.recv() => match received {
                Ok(event) => on_event(&shared, &kinds, &event),
                Err(broadcast::error::RecvError::Lagged(_)) => reconcile_everything(&shared, &kinds),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

fn reconcile_everything(shared: &ApiState, kinds: &Kinds) {
    for namespace in shared.store.list(kinds.namespaces, None).0 {
        if let Some(name) = namespace.object["metadata"]["name"].as_str() {
            ensure_default_account(shared, kinds, name);
        }
    }
    for service in shared.store.list(kinds.services, None).0 {
        let metadata = &service.object["metadata"];
        reconcile_service(
            shared,
            kinds,
            metadata["namespace"].as_str().unwrap_or(""),
            metadata["name"].as_str().unwrap_or(""),
        );
    }
    for secret in shared.store.list(kinds.secrets, None).0 {
        fill_account_token(shared, kinds, &secret.object);
    }
}

fn on_event(shared: &ApiState, kinds: &Kinds, event: &Event) {
    let resource = event.resource;
    if resource == kinds.namespaces && event.kind == EventType::Added {
        ensure_default_account(shared, kinds, &event.name);
    } else if resource == kinds.services {
        reconcile_service(shared, kinds, &event.namespace, &event.name);
    } else if resource == kinds.pods {
        let labels = |object: &Value| object["metadata"].get("labels").cloned();
        let mut label_sets = vec![labels(&event.object.object)];
        if let Some(previous) = &event.previous {
            label_sets.push(labels(previous));
        }
        for service in shared.store.list(kinds.services, Some(&event.namespace)).0 {
            let Some(selector) = service.object["spec"]["selector"].as_object() else {
                continue;
            };
            if label_sets
                .iter()
                .any(|labels| selector_map_matches(selector, labels.as_ref()))
            {
                let name = service.object["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                reconcile_service(shared, kinds, &event.namespace, &name);
            }
        }
    } else if resource == kinds.secrets && event.kind != EventType::Deleted {
        fill_account_token(shared, kinds, &event.object.object);
    }
}

fn ensure_default_account(shared: &ApiState, kinds: &Kinds, namespace: &str) {
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": namespace}});
    if let Err(error) = create_if_absent(shared, kinds.accounts, namespace, account)
        && shared.store.get(kinds.namespaces, "", namespace).is_some()
    {
        tracing::warn!(%namespace, %error, "cannot create the default service account");
    }
}

/// A pod that can back a Service: it has an address and has not finished or started deleting.
fn pod_address(pod: &Value) -> Option<&str> {
    let status = &pod["status"];
    if matches!(status["phase"].as_str(), Some("Succeeded" | "Failed"))
        || !pod["metadata"]["deletionTimestamp"].is_null()
    {
        return None;
    }
    status["podIP"]
        .as_str()
        .filter(|address| !address.is_empty())
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|condition| condition["type"] == "Ready" && condition["status"] == "True")
}

/// The container port a Service port's `targetPort` names on this pod, if any.
fn resolve_target_port(pod: &Value, service_port: &Value) -> Option<u64> {
    match &service_port["targetPort"] {
        Value::Number(number) => number.as_u64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|container| container["ports"].as_array().cloned().unwrap_or_default())
            .find(|port| port["name"].as_str() == Some(name.as_str()))
            .and_then(|port| port["containerPort"].as_u64()),
        Value::Null => service_port["port"].as_u64(),
        _ => None,
    }
}

type PortSet = Vec<(String, u64, String, Option<String>)>;

/// Pods grouped by how they resolve the Service's ports (usually one group).
fn group_pods<'a>(service: &Value, pods: &'a [Arc<Value>]) -> BTreeMap<PortSet, Vec<&'a Value>> {
    let mut groups: BTreeMap<PortSet, Vec<&Value>> = BTreeMap::new();
    let ports = service["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for pod in pods {
        let resolved: PortSet = ports
            .iter()
            .filter_map(|port| {
                resolve_target_port(pod, port).map(|number| {
                    (
                        port["name"].as_str().unwrap_or("").to_owned(),
                        number,
                        port["protocol"].as_str().unwrap_or("TCP").to_owned(),
                        port["appProtocol"].as_str().map(str::to_owned),
                    )
                })
            })
            .collect();
        if !resolved.is_empty() || ports.is_empty() {
            groups.entry(resolved).or_default().push(pod);
        }
    }
    for members in groups.values_mut() {
        members.sort_by_key(|pod| pod_address(pod).unwrap_or("").to_owned());
    }
    groups
}

fn port_json(ports: &PortSet) -> Vec<Value> {
    ports
        .iter()
        .map(|(name, port, protocol, app_protocol)| {
            let mut value = json!({"name": name, "port": port, "protocol": protocol});
            if let Some(app_protocol) = app_protocol {
                value["appProtocol"] = json!(app_protocol);
            }
            value
        })
        .collect()
}

fn target_ref(pod: &Value) -> Value {
    let metadata = &pod["metadata"];
    json!({"kind": "Pod", "namespace": metadata["namespace"], "name": metadata["name"], "uid": metadata["uid"]})
}

fn reconcile_service(shared: &ApiState, kinds: &Kinds, namespace: &str, name: &str) {
    let service = shared.store.get(kinds.services, namespace, name);
    let Some(service) = service else {
        delete_owned(shared, kinds.endpoints, namespace, |object| {
            object["metadata"]["name"] == name
        });
        delete_owned(shared, kinds.slices, namespace, |object| {
            object["metadata"]["labels"][SERVICE_NAME_LABEL] == name
                && object["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY
        });
        return;
    };
    let service = &service.object;
    let Some(selector) = service["spec"]["selector"]
        .as_object()
        .filter(|selector| !selector.is_empty())
    else {
        return;
    };
    let pods: Vec<Arc<Value>> = shared
        .store
        .list(kinds.pods, Some(namespace))
        .0
        .into_iter()
        .map(|pod| pod.object)
        .filter(|pod| {
            pod_address(pod).is_some()
                && selector_map_matches(selector, pod["metadata"].get("labels"))
        })
        .collect();
    let groups = group_pods(service, &pods);
    let mut labels = service["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();

    let subsets: Vec<Value> = groups
        .iter()
        .filter(|(ports, _)| !ports.is_empty())
        .map(|(ports, members)| {
            let address = |pod: &&Value| {
                let mut address = json!({"ip": pod_address(pod), "targetRef": target_ref(pod)});
                if let Some(node) = pod["spec"]["nodeName"].as_str() {
                    address["nodeName"] = json!(node);
                }
                address
            };
            let ready: Vec<Value> = members
                .iter()
                .filter(|pod| pod_ready(pod))
                .map(address)
                .collect();
            let not_ready: Vec<Value> = members
                .iter()
                .filter(|pod| !pod_ready(pod))
                .map(address)
                .collect();
            let mut subset = json!({"ports": port_json(ports)});
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            subset
        })
        .collect();
    let endpoints = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "subsets": subsets,
    });
    write_owned(shared, kinds.endpoints, endpoints, &["subsets"]);

    labels.insert(SERVICE_NAME_LABEL.into(), json!(name));
    labels.insert(MANAGED_BY_LABEL.into(), json!(MANAGED_BY));
    let owner = json!([{"apiVersion": "v1", "kind": "Service", "name": name, "uid": service["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]);
    let mut wanted = Vec::new();
    // One slice per port set and per hundred endpoints, as Kubernetes' controller cuts them;
    // a Service without endpoints still gets an empty slice.
    let slices: Vec<(PortSet, Vec<&Value>)> = if groups.is_empty() {
        vec![(Vec::new(), Vec::new())]
    } else {
        groups
            .into_iter()
            .flat_map(|(ports, members)| {
                members
                    .chunks(MAX_ENDPOINTS_PER_SLICE)
                    .map(|chunk| (ports.clone(), chunk.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    for (index, (ports, members)) in slices.iter().enumerate() {
        let slice_name = slice_name(
            name,
            service["metadata"]["uid"].as_str().unwrap_or(""),
            index,
        );
        let endpoints: Vec<Value> = members
            .iter()
            .map(|pod| {
                let ready = pod_ready(pod);
                let mut endpoint = json!({
                    "addresses": [pod_address(pod)],
                    "conditions": {"ready": ready, "serving": ready, "terminating": false},
                    "targetRef": target_ref(pod),
                });
                if let Some(node) = pod["spec"]["nodeName"].as_str() {
                    endpoint["nodeName"] = json!(node);
                }
                endpoint
            })
            .collect();
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": slice_name, "namespace": namespace, "labels": labels, "ownerReferences": owner},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": port_json(ports),
        });
        write_owned(
            shared,
            kinds.slices,
            slice,
            &["addressType", "endpoints", "ports"],
        );
        wanted.push(slice_name);
    }
    delete_owned(shared, kinds.slices, namespace, |object| {
        object["metadata"]["labels"][SERVICE_NAME_LABEL] == name
            && object["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY
            && !wanted
                .iter()
                .any(|wanted| object["metadata"]["name"] == wanted.as_str())
    });
}

fn slice_name(service: &str, uid: &str, index: usize) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("{uid}/{index}").as_bytes(),
    );
    let bytes: [u8; 5] = digest.as_ref()[..5]
        .try_into()
        .expect("SHA-256 is longer than 5 bytes");
    let prefix: String = service.chars().take(57).collect();
    format!("{prefix}-{}", super::objects::name_suffix(&bytes))
}

/// Writes a controller-owned object when its labels, owners or `fields` differ from what is
/// stored.
fn write_owned(shared: &ApiState, resource: ResourceId, mut desired: Value, fields: &[&str]) {
    let kind = &RESOURCES[resource];
    let namespace = desired["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let name = desired["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let result = shared
        .store
        .change(resource, &namespace, &name, false, |current| {
            let Some(current) = current else {
                stamp_new(&mut desired, kind);
                return Ok(Change::Put(desired));
            };
            let same = ["labels", "ownerReferences"].iter().all(|field| {
                current.object["metadata"].get(*field) == desired["metadata"].get(*field)
            }) && fields
                .iter()
                .all(|field| current.object.get(*field) == desired.get(*field));
            if same {
                return Ok(Change::Keep);
            }
            let mut updated = (*current.object).clone();
            for field in ["labels", "ownerReferences"] {
                updated["metadata"][field] = desired["metadata"][field].clone();
            }
            for field in fields {
                updated[*field] = desired[*field].clone();
            }
            Ok(Change::Put(updated))
        });
    if let Err(error) = result {
        tracing::warn!(kind = kind.kind, %namespace, %name, %error, "cannot write a controller-owned object");
    }
}

fn delete_owned(
    shared: &ApiState,
    resource: ResourceId,
    namespace: &str,
    doomed: impl Fn(&Value) -> bool,
) {
    for object in shared.store.list(resource, Some(namespace)).0 {
        if !doomed(&object.object) {
            continue;
        }
        let name = object.object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if let Err(error) = shared
            .store
            .change(resource, namespace, &name, false, |_| Ok(Change::Delete))
        {
            tracing::warn!(%namespace, %name, %error, "cannot delete a controller-owned object");
        }
    }
}

/// Fills in `data.token` (and `ca.crt`, `namespace`) of a `kubernetes.io/service-account-token`
/// Secret, as Kubernetes' token controller does.
fn fill_account_token(shared: &ApiState, kinds: &Kinds, secret: &Value) {
    use base64::Engine;
    if secret["type"] != SERVICE_ACCOUNT_TOKEN || !secret["data"]["token"].is_null() {
        return;
    }
    let metadata = &secret["metadata"];
    let namespace = metadata["namespace"].as_str().unwrap_or("").to_owned();
    let name = metadata["name"].as_str().unwrap_or("").to_owned();
    let Some(account_name) = metadata["annotations"]["kubernetes.io/service-account.name"].as_str()
    else {
        return;
    };
    let Some(account) = shared.store.get(kinds.accounts, &namespace, account_name) else {
        tracing::info!(%namespace, secret = %name, account = account_name, "the service account of a token secret does not exist yet");
        return;
    };
    let account_uid = account.object["metadata"]["uid"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let binding = Binding {
        namespace: namespace.clone(),
        serviceaccount: ObjectRef {
            name: account_name.to_owned(),
            uid: account_uid.clone(),
        },
        pod: None,
        secret: Some(ObjectRef {
            name: name.clone(),
            uid: metadata["uid"].as_str().unwrap_or("").to_owned(),
        }),
    };
    let issued_at = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = shared.tokens.sign(&Claims::new(
        binding,
        vec![super::tokens::ISSUER.to_owned()],
        issued_at,
        SECRET_TOKEN_SECONDS,
    ));
    let encode = |text: &str| json!(base64::engine::general_purpose::STANDARD.encode(text));
    let ca = shared.ca_pem.clone();
    let result = shared
        .store
        .change(kinds.secrets, &namespace, &name, false, |current| {
            let Some(current) = current else {
                return Ok(Change::Keep);
            };
            if !current.object["data"]["token"].is_null() {
                return Ok(Change::Keep);
            }
            let mut updated = (*current.object).clone();
            let data = updated
                .as_object_mut()
                .expect("stored objects are objects")
                .entry("data")
                .or_insert_with(|| json!({}));
            data["token"] = encode(&token);
            data["ca.crt"] = encode(&ca);
            data["namespace"] = encode(&namespace);
            updated["metadata"]["annotations"]["kubernetes.io/service-account.uid"] =
                json!(account_uid);
            updated["metadata"]["annotations"]["causeway.dev/token-issued"] = json!(now());
            Ok(Change::Put(updated))
        });
    if let Err(error) = result {
        tracing::warn!(%namespace, secret = %name, %error, "cannot fill in a service-account token");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let pod =
            json!({"spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]}});
        assert_eq!(
            resolve_target_port(&pod, &json!({"port": 80, "targetPort": "http"})),
            Some(8080)
        );
        assert_eq!(
            resolve_target_port(&pod, &json!({"port": 80, "targetPort": "grpc"})),
            None
        );
        assert_eq!(
            resolve_target_port(&pod, &json!({"port": 80, "targetPort": 9090})),
            Some(9090)
        );
    }

    #[test]
    fn finished_or_addressless_pods_back_nothing() {
        assert_eq!(
            pod_address(&json!({"status": {"podIP": "10.10.0.5", "phase": "Running"}})),
            Some("10.10.0.5")
        );
        assert_eq!(
            pod_address(&json!({"status": {"podIP": "10.10.0.5", "phase": "Failed"}})),
            None
        );
        assert_eq!(pod_address(&json!({"status": {"phase": "Pending"}})), None);
    }

    #[test]
    fn slice_names_are_stable_and_fit_a_dns_label() {
        let long = "a".repeat(63);
        assert_eq!(slice_name(&long, "u", 0), slice_name(&long, "u", 0));
        assert_ne!(slice_name("s", "u", 0), slice_name("s", "u", 1));
        assert!(slice_name(&long, "u", 0).len() <= 63);
    }
}
