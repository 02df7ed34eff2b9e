//! Kubernetes' endpointslicemirroring controller: a Service without a selector whose Endpoints
//! were written by hand (the remote profile's `istiod`, pointing at the primary's discovery) gets
//! EndpointSlices mirroring them, one per subset, so that kube-proxy and the cluster DNS, which
//! read slices, route to those addresses.

use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints, Service};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::super::state::ApiState;
use super::endpoints::{MANAGED_BY_LABEL, SERVICE_NAME_LABEL, is_slice_of};
use super::{Kinds, delete_owned, write_owned};

const MANAGED_BY: &str = "endpointslicemirroring-controller.k8s.io";

/// The mirrored slices of `endpoints` for `service`: one per subset with addresses.
fn mirror(service: &str, endpoints: &Endpoints, uid: &str) -> Vec<EndpointSlice> {
    let namespace = endpoints.metadata.namespace.clone();
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Endpoints".into(),
        name: service.to_owned(),
        uid: uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut labels = endpoints.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), service.to_owned());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let endpoint = |address: &EndpointAddress, ready: bool| Endpoint {
        addresses: vec![address.ip.clone()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        node_name: address.node_name.clone(),
        target_ref: address.target_ref.clone(),
        ..Endpoint::default()
    };
    endpoints
        .subsets
        .iter()
        .flatten()
        .enumerate()
        .map(|(index, subset)| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{service}-mirror-{index}")),
                namespace: namespace.clone(),
                labels: Some(labels.clone()),
                owner_references: Some(vec![owner.clone()]),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: subset
                .addresses
                .iter()
                .flatten()
                .map(|address| endpoint(address, true))
                .chain(
                    subset
                        .not_ready_addresses
                        .iter()
                        .flatten()
                        .map(|address| endpoint(address, false)),
                )
                .collect(),
            ports: Some(
                subset
                    .ports
                    .iter()
                    .flatten()
                    .map(|port| SlicePort {
                        name: port.name.clone(),
                        port: Some(port.port),
                        protocol: port.protocol.clone(),
                        app_protocol: port.app_protocol.clone(),
                    })
                    .collect(),
            ),
        })
        .collect()
}

/// Brings the mirrored slices of Service `name` in line with its Endpoints.
pub(super) fn reconcile(state: &ApiState, kinds: &Kinds, namespace: &str, name: &str) {
    let selectorless = state
        .store
        .get(kinds.services, namespace, name)
        .and_then(|stored| stored.decode::<Service>().ok())
        .is_some_and(|service| {
            service
                .spec
                .and_then(|spec| spec.selector)
                .is_none_or(|selector| selector.is_empty())
        });
    let stored = state.store.get(kinds.endpoints, namespace, name);
    let wanted: Vec<EndpointSlice> = match (&stored, selectorless) {
        (Some(stored), true) => match stored.decode::<Endpoints>() {
            Ok(endpoints) => mirror(name, &endpoints, stored.uid()),
            Err(_) => Vec::new(),
        },
        _ => Vec::new(),
    };
    for slice in &wanted {
        write_owned(
            state,
            kinds.slices,
            slice,
            &["addressType", "endpoints", "ports"],
        );
    }
    delete_owned(state, kinds.slices, namespace, |object| {
        is_slice_of(object, name, MANAGED_BY)
            && !wanted
                .iter()
                .any(|slice| slice.metadata.name.as_deref() == Some(object.name()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_subset_becomes_a_slice_with_ready_and_not_ready_addresses() {
        let endpoints: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "istiod", "namespace": "istio-system", "labels": {"app": "istiod"}},
            "subsets": [
                {"addresses": [{"ip": "172.18.11.1"}], "notReadyAddresses": [{"ip": "172.18.11.2"}],
                 "ports": [{"name": "https-dns", "port": 15012, "protocol": "TCP"}, {"name": "https-webhook", "port": 15017, "protocol": "TCP"}]},
                {"addresses": [{"ip": "172.18.12.1"}], "ports": [{"name": "grpc-xds", "port": 15010}]},
            ],
        }))
        .unwrap();
        let slices = mirror("istiod", &endpoints, "uid-1");
        assert_eq!(slices.len(), 2);
        let first = &slices[0];
        assert_eq!(first.metadata.name.as_deref(), Some("istiod-mirror-0"));
        let labels = first.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "istiod");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels["app"], "istiod");
        let addresses: Vec<(&str, Option<bool>)> = first
            .endpoints
            .iter()
            .map(|endpoint| {
                (
                    endpoint.addresses[0].as_str(),
                    endpoint.conditions.as_ref().unwrap().ready,
                )
            })
            .collect();
        assert_eq!(
            addresses,
            [("172.18.11.1", Some(true)), ("172.18.11.2", Some(false))]
        );
        let ports: Vec<Option<i32>> = first
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|port| port.port)
            .collect();
        assert_eq!(ports, [Some(15012), Some(15017)]);
        assert_eq!(
            first.metadata.owner_references.as_ref().unwrap()[0].kind,
            "Endpoints"
        );
        assert_eq!(slices[1].endpoints[0].addresses[0], "172.18.12.1");
        assert!(mirror("istiod", &Endpoints::default(), "uid").is_empty());
    }
}
