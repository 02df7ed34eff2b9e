//! EDS: ClusterLoadAssignments through the split-horizon view, cached across streams.

use crate::envoy::{metadata, named_socket_address, socket_address, string_value};
use crate::resources::{Resource, parse_service_name};
use causeway_model::split_horizon::{View, VisibleEndpoint, visible_endpoints};
use causeway_model::{MeshSnapshot, NetworkGateway, Service, ServiceEndpoints};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// The ClusterLoadAssignment for `cluster_name`, or `None` when the name is not a service port
/// cluster. A known name without endpoints gets an empty assignment (the service has none now).
pub fn load_assignment(
    cluster_name: &str,
    snapshot: &MeshSnapshot,
    view: View<'_>,
) -> Option<ClusterLoadAssignment> {
    let (port_number, fqdn) = parse_service_name(cluster_name)?;
    let service = snapshot.services.get(fqdn);
    let port = service.and_then(|s| s.port(port_number));
    let visible = match port {
        Some(port) => visible_endpoints(
            snapshot.endpoints_of(fqdn),
            port,
            view,
            &snapshot.network_gateways,
        ),
        None => Vec::new(),
    };
    Some(ClusterLoadAssignment {
        cluster_name: cluster_name.to_owned(),
        endpoints: by_locality(visible.iter().map(|e| (e.locality, lb_endpoint(e)))),
        ..ClusterLoadAssignment::default()
    })
}

/// Endpoints grouped by locality, each group weighted by the sum of its endpoints' weights.
fn by_locality<'l>(
    endpoints: impl IntoIterator<Item = (&'l causeway_model::Locality, LbEndpoint)>,
) -> Vec<LocalityLbEndpoints> {
    let mut groups: BTreeMap<&causeway_model::Locality, Vec<LbEndpoint>> = BTreeMap::new();
    for (locality, endpoint) in endpoints {
        groups.entry(locality).or_default().push(endpoint);
    }
    groups
        .into_iter()
        .map(|(locality, lb_endpoints)| LocalityLbEndpoints {
            locality: Some(Locality {
                region: locality.region.clone(),
                zone: locality.zone.clone(),
                sub_zone: locality.subzone.clone(),
            }),
            // gRPC ignores localities without a weight.
            load_balancing_weight: Some(UInt32Value {
                value: lb_endpoints
                    .iter()
                    .filter_map(|e| e.load_balancing_weight.as_ref())
                    .map(|w| w.value)
                    .sum::<u32>()
                    .max(1),
            }),
            lb_endpoints,
            ..LocalityLbEndpoints::default()
        })
        .collect()
}

fn lb_endpoint(endpoint: &VisibleEndpoint<'_>) -> LbEndpoint {
    let mut istio = vec![
        ("network", string_value(endpoint.network)),
        ("cluster", string_value(endpoint.cluster)),
    ];
    if let Some(identity) = endpoint.identity {
        istio.push(("identity", string_value(identity)));
    }
    if let Some(workload) = endpoint.source.and_then(|e| e.workload_metadata()) {
        istio.push(("workload", string_value(&workload)));
    }
    if endpoint.via_gateway {
        istio.push(("gateway", crate::envoy::bool_value(true)));
    }
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(endpoint.address, endpoint.port)),
            ..Endpoint::default()
        })),
        health_status: HealthStatus::Healthy as i32,
        load_balancing_weight: Some(UInt32Value {
            value: endpoint.weight,
        }),
        metadata: Some(metadata([
            (
                "envoy.transport_socket_match",
                vec![("tlsMode", string_value(endpoint.tls_mode.as_str()))],
            ),
            ("istio", istio),
        ])),
    }
}

/// The inline assignment of a STRICT_DNS cluster (a ServiceEntry with `resolution: DNS`): one
/// endpoint per name to resolve, by locality, for the service port `port_number`. The proxy
/// turns each into as many endpoints as the name has addresses.
pub fn dns_load_assignment(
    cluster_name: &str,
    service: &Service,
    port_name: &str,
) -> ClusterLoadAssignment {
    let endpoints = service.dns_endpoints.iter().filter_map(|endpoint| {
        let port = endpoint.port_for(port_name)?;
        let mut istio = Vec::new();
        if !endpoint.network.is_empty() {
            istio.push(("network", string_value(&endpoint.network)));
        }
        let lb_endpoint = LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(named_socket_address(&endpoint.host, port)),
                hostname: endpoint.host.clone(),
                ..Endpoint::default()
            })),
            health_status: HealthStatus::Healthy as i32,
            load_balancing_weight: Some(UInt32Value {
                value: endpoint.weight.max(1),
            }),
            metadata: Some(metadata([
                (
                    "envoy.transport_socket_match",
                    vec![("tlsMode", string_value(endpoint.tls_mode.as_str()))],
                ),
                ("istio", istio),
            ])),
        };
        Some((&endpoint.locality, lb_endpoint))
    });
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_owned(),
        endpoints: by_locality(endpoints),
        ..ClusterLoadAssignment::default()
    }
}

/// What an assignment was computed from; equal inputs give an equal assignment.
struct CachedAssignment {
    service: Option<Arc<Service>>,
    endpoints: Option<Arc<ServiceEndpoints>>,
    gateways: Arc<Vec<NetworkGateway>>,
    resource: Arc<Resource>,
}

/// Assignments shared by every stream with the same view: a thousand sidecars on one network
/// get the very same encoded bytes, computed once per change.
#[derive(Default)]
pub struct EndpointCache {
    entries: Mutex<HashMap<(String, String), CachedAssignment>>,
}

fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl EndpointCache {
    pub fn get(
        &self,
        cluster_name: &str,
        snapshot: &MeshSnapshot,
        view: View<'_>,
    ) -> Option<Arc<Resource>> {
        let (_, fqdn) = parse_service_name(cluster_name)?;
        let service = snapshot.services.get(fqdn).cloned();
        let endpoints = snapshot.endpoints.get(fqdn).cloned();
        let view_key = match view {
            View::Network(network) => format!("n:{network}"),
            View::Router(networks) => format!("r:{}", networks.join(",")),
        };
        let key = (cluster_name.to_owned(), view_key);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = entries.get(&key)
            && same(&cached.service, &service)
            && same(&cached.endpoints, &endpoints)
            && Arc::ptr_eq(&cached.gateways, &snapshot.network_gateways)
        {
            return Some(cached.resource.clone());
        }
        let assignment = load_assignment(cluster_name, snapshot, view)?;
        let resource = Resource::new(cluster_name, &assignment);
        entries.insert(
            key,
            CachedAssignment {
                service,
                endpoints,
                gateways: snapshot.network_gateways.clone(),
                resource: resource.clone(),
            },
        );
        Some(resource)
    }

    /// Drops entries of services that no longer exist.
    pub fn retain_existing(&self, snapshot: &MeshSnapshot) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(name, _), _| {
            parse_service_name(name).is_some_and(|(_, fqdn)| snapshot.services.contains_key(fqdn))
        });
    }
}
