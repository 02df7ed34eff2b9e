//! Endpoints and EndpointSlices from Services' selectors and their pods' addresses and readiness,
//! as Kubernetes' endpoints and endpointslice controllers write them: named target ports resolved
//! per pod, one slice per port set and per hundred endpoints.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::super::metadata::name_suffix;
use super::super::selectors::selector_map_matches;
use super::super::state::ApiState;
use super::super::store::{Event, StoredObject};
use super::{Kinds, delete_owned, write_owned};

pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub(super) const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// A pod changed: every Service whose selector matched it before or after is reconciled.
pub(super) fn on_pod_change(state: &ApiState, kinds: &Kinds, event: &Event) {
    let no_labels = BTreeMap::new();
    let mut label_sets = vec![event.object.object.metadata.labels.as_ref()];
    if let Some(previous) = &event.previous {
        label_sets.push(previous.metadata.labels.as_ref());
    }
    for service in state.store.list(kinds.services, Some(&event.namespace)).0 {
        let Some(selector) = selector_of(&service) else {
            continue;
        };
        if label_sets
            .iter()
            .any(|labels| selector_map_matches(&selector, labels.unwrap_or(&no_labels)))
        {
            reconcile_service(state, kinds, &event.namespace, service.name());
        }
    }
}

fn selector_of(service: &StoredObject) -> Option<BTreeMap<String, String>> {
    let service: Service = service.decode().ok()?;
    service
        .spec?
        .selector
        .filter(|selector| !selector.is_empty())
}

/// A pod that can back a Service: it has an address and has not finished or started deleting.
fn pod_address(pod: &Pod) -> Option<&str> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
        || pod.metadata.deletion_timestamp.is_some()
    {
        return None;
    }
    status
        .pod_ip
        .as_deref()
        .filter(|address| !address.is_empty())
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|condition| condition.type_ == "Ready" && condition.status == "True")
}

/// The container port a Service port's `targetPort` names on this pod, if any.
fn resolve_target_port(pod: &Pod, service_port: &ServicePort) -> Option<i32> {
    match &service_port.target_port {
        Some(IntOrString::Int(number)) => Some(*number),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|container| container.ports.iter().flatten())
            .find(|port| port.name.as_deref() == Some(name.as_str()))
            .map(|port| port.container_port),
        None => Some(service_port.port),
    }
}

/// A Service port as a pod resolves it: name, number, protocol, application protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ResolvedPort {
    name: String,
    port: i32,
    protocol: String,
    app_protocol: Option<String>,
}

type PortSet = Vec<ResolvedPort>;

/// Pods grouped by how they resolve the Service's ports (usually one group), each group ordered
/// by address.
fn group_pods<'a>(ports: &[ServicePort], pods: &'a [Pod]) -> BTreeMap<PortSet, Vec<&'a Pod>> {
    let mut groups: BTreeMap<PortSet, Vec<&Pod>> = BTreeMap::new();
    for pod in pods {
        let resolved: PortSet = ports
            .iter()
            .filter_map(|port| {
                resolve_target_port(pod, port).map(|number| ResolvedPort {
                    name: port.name.clone().unwrap_or_default(),
                    port: number,
                    protocol: port.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                    app_protocol: port.app_protocol.clone(),
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

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".to_owned()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

fn node_name(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|spec| spec.node_name.clone())
}

fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

/// Whether `object` is an EndpointSlice of Service `service` written by controller `manager`.
pub(super) fn is_slice_of(object: &StoredObject, service: &str, manager: &str) -> bool {
    let labels = object.object.metadata.labels.as_ref();
    let label = |key: &str| {
        labels
            .and_then(|labels| labels.get(key))
            .map(String::as_str)
    };
    label(SERVICE_NAME_LABEL) == Some(service) && label(MANAGED_BY_LABEL) == Some(manager)
}

pub(super) fn reconcile_service(state: &ApiState, kinds: &Kinds, namespace: &str, name: &str) {
    let owned_slice = |object: &StoredObject| is_slice_of(object, name, MANAGED_BY);
    let Some(stored) = state.store.get(kinds.services, namespace, name) else {
        delete_owned(state, kinds.endpoints, namespace, |object| {
            object.name() == name
        });
        delete_owned(state, kinds.slices, namespace, owned_slice);
        return;
    };
    let Ok(service) = stored.decode::<Service>() else {
        return;
    };
    let spec = service.spec.clone().unwrap_or_default();
    let Some(selector) = spec.selector.filter(|selector| !selector.is_empty()) else {
        return;
    };
    let no_labels = BTreeMap::new();
    let pods: Vec<Pod> = state
        .store
        .list(kinds.pods, Some(namespace))
        .0
        .iter()
        .filter_map(|pod| pod.decode::<Pod>().ok())
        .filter(|pod| {
            pod_address(pod).is_some()
                && selector_map_matches(
                    &selector,
                    pod.metadata.labels.as_ref().unwrap_or(&no_labels),
                )
        })
        .collect();
    let ports = spec.ports.unwrap_or_default();
    let groups = group_pods(&ports, &pods);
    let mut labels = service.metadata.labels.clone().unwrap_or_default();

    let subsets: Vec<EndpointSubset> = groups
        .iter()
        .filter(|(ports, _)| !ports.is_empty())
        .map(|(ports, members)| {
            let address = |pod: &&Pod| EndpointAddress {
                ip: pod_address(pod).unwrap_or_default().to_owned(),
                node_name: node_name(pod),
                target_ref: Some(target_ref(pod)),
                ..EndpointAddress::default()
            };
            EndpointSubset {
                addresses: non_empty(
                    members
                        .iter()
                        .filter(|pod| pod_ready(pod))
                        .map(address)
                        .collect(),
                ),
                not_ready_addresses: non_empty(
                    members
                        .iter()
                        .filter(|pod| !pod_ready(pod))
                        .map(address)
                        .collect(),
                ),
                ports: Some(
                    ports
                        .iter()
                        .map(|port| EndpointPort {
                            name: Some(port.name.clone()),
                            port: port.port,
                            protocol: Some(port.protocol.clone()),
                            app_protocol: port.app_protocol.clone(),
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    let endpoints = Endpoints {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        subsets: Some(subsets),
    };
    write_owned(state, kinds.endpoints, &endpoints, &["subsets"]);

    labels.insert(SERVICE_NAME_LABEL.into(), name.to_owned());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.to_owned());
    let owner = OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Service".to_owned(),
        name: name.to_owned(),
        uid: stored.uid().to_owned(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    // One slice per port set and per hundred endpoints, as Kubernetes' controller cuts them;
    // a Service without endpoints still gets an empty slice.
    let slices: Vec<(PortSet, Vec<&Pod>)> = if groups.is_empty() {
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
    let mut wanted = Vec::new();
    for (index, (ports, members)) in slices.iter().enumerate() {
        let slice_name = slice_name(name, stored.uid(), index);
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some(slice_name.clone()),
                namespace: Some(namespace.to_owned()),
                labels: Some(labels.clone()),
                owner_references: Some(vec![owner.clone()]),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".to_owned(),
            endpoints: members
                .iter()
                .map(|pod| {
                    let ready = pod_ready(pod);
                    Endpoint {
                        addresses: vec![pod_address(pod).unwrap_or_default().to_owned()],
                        conditions: Some(EndpointConditions {
                            ready: Some(ready),
                            serving: Some(ready),
                            terminating: Some(false),
                        }),
                        node_name: node_name(pod),
                        target_ref: Some(target_ref(pod)),
                        ..Endpoint::default()
                    }
                })
                .collect(),
            ports: Some(
                ports
                    .iter()
                    .map(|port| SlicePort {
                        name: Some(port.name.clone()),
                        port: Some(port.port),
                        protocol: Some(port.protocol.clone()),
                        app_protocol: port.app_protocol.clone(),
                    })
                    .collect(),
            ),
        };
        write_owned(
            state,
            kinds.slices,
            &slice,
            &["addressType", "endpoints", "ports"],
        );
        wanted.push(slice_name);
    }
    delete_owned(state, kinds.slices, namespace, |object| {
        owned_slice(object) && !wanted.iter().any(|wanted| object.name() == wanted)
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
    format!("{prefix}-{}", name_suffix(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn port(value: serde_json::Value) -> ServicePort {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let pod = pod(
            json!({"spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]}}),
        );
        assert_eq!(
            resolve_target_port(&pod, &port(json!({"port": 80, "targetPort": "http"}))),
            Some(8080)
        );
        assert_eq!(
            resolve_target_port(&pod, &port(json!({"port": 80, "targetPort": "grpc"}))),
            None
        );
        assert_eq!(
            resolve_target_port(&pod, &port(json!({"port": 80, "targetPort": 9090}))),
            Some(9090)
        );
    }

    #[test]
    fn finished_or_addressless_pods_back_nothing() {
        assert_eq!(
            pod_address(&pod(
                json!({"status": {"podIP": "10.10.0.5", "phase": "Running"}})
            )),
            Some("10.10.0.5")
        );
        assert_eq!(
            pod_address(&pod(
                json!({"status": {"podIP": "10.10.0.5", "phase": "Failed"}})
            )),
            None
        );
        assert_eq!(
            pod_address(&pod(json!({"status": {"phase": "Pending"}}))),
            None
        );
    }

    #[test]
    fn slice_names_are_stable_and_fit_a_dns_label() {
        let long = "a".repeat(63);
        assert_eq!(slice_name(&long, "u", 0), slice_name(&long, "u", 0));
        assert_ne!(slice_name("s", "u", 0), slice_name("s", "u", 1));
        assert!(slice_name(&long, "u", 0).len() <= 63);
    }
}
