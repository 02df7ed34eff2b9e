//! Routers (east-west gateways in `sni-dnat` mode): for every service port exposed by an
//! `AUTO_PASSTHROUGH` server of a Gateway that selects the router, a cluster named by the SNI
//! `outbound_.<port>_._.<fqdn>` whose endpoints are the local ones (the router's
//! `REQUESTED_NETWORK_VIEW`), and a listener per server port choosing the cluster by SNI;
//! `PASSTHROUGH` servers forward what their VirtualServices' `tls` routes say. A server exposing
//! `*.global` also takes `outbound_.<port>_._.<name>.<namespace>.global` for the service
//! `<name>.<namespace>`, as Istio 1.6's multicluster gateways did for replicated control planes.

use super::common::{eds_cluster, tcp_proxy_filter};
use super::sidecar::routable_ports;
use crate::envoy::{any, socket_address};
use crate::proxy::ProxyInfo;
use crate::resources::{Resource, outbound_cluster, sni_cluster};
use causeway_model::{DefinedBy, MeshSnapshot};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, FilterChainMatch, Listener, ListenerFilter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

const AUTO_PASSTHROUGH: &str = "AUTO_PASSTHROUGH";
const PASSTHROUGH: &str = "PASSTHROUGH";

/// One filter chain of a router listener: TLS with one of `server_names` (any, when empty) goes
/// to `cluster`, bytes untouched.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Chain {
    server_names: Vec<String>,
    cluster: String,
}

/// Listener port to its chains: every service port an `AUTO_PASSTHROUGH` server exposes (by SNI
/// `outbound_.<port>_._.<fqdn>`), and the `tls` routes of VirtualServices bound to `PASSTHROUGH`
/// servers (`expose-istiod.yaml`: 15012 and 15017 to istiod).
fn chains(snapshot: &MeshSnapshot, proxy: &ProxyInfo) -> BTreeMap<u16, Vec<Chain>> {
    let mut by_port: BTreeMap<u16, Vec<Chain>> = BTreeMap::new();
    for gateway in snapshot
        .istio_gateways
        .iter()
        .filter(|g| g.selects(&proxy.labels))
    {
        for server in &gateway.servers {
            let chains = by_port.entry(server.port).or_default();
            match server.tls_mode.as_deref() {
                Some(AUTO_PASSTHROUGH) => {
                    for service in snapshot.services.values() {
                        if server.exposes(&gateway.namespace, &service.namespace, &service.fqdn) {
                            for port in routable_ports(service) {
                                let sni = sni_cluster(port.port, &service.fqdn);
                                chains.push(Chain {
                                    server_names: vec![sni.clone()],
                                    cluster: sni,
                                });
                            }
                        }
                        // Istio 1.6's multicluster gateways: `<name>.<namespace>.global` (a
                        // ServiceEntry host in the other mesh) is this mesh's service, when the
                        // server exposes `*.global` (its EnvoyFilter rewrote the SNI so).
                        if service.defined_by != DefinedBy::Kubernetes {
                            continue;
                        }
                        let global = format!("{}.{}.global", service.name, service.namespace);
                        if server.exposes(&gateway.namespace, &service.namespace, &global) {
                            for port in routable_ports(service) {
                                chains.push(Chain {
                                    server_names: vec![sni_cluster(port.port, &global)],
                                    cluster: sni_cluster(port.port, &service.fqdn),
                                });
                            }
                        }
                    }
                }
                Some(PASSTHROUGH) => {
                    for route in snapshot.tls_routes.iter().filter(|r| r.binds(gateway)) {
                        if route.port.is_some_and(|port| port != server.port) {
                            continue;
                        }
                        let Some(service) =
                            snapshot.resolve_host(&route.destination_host, Some(&route.namespace))
                        else {
                            continue;
                        };
                        let port = route
                            .destination_port
                            .or_else(|| (service.ports.len() == 1).then(|| service.ports[0].port));
                        let Some(port) = port.filter(|port| service.port(*port).is_some()) else {
                            continue;
                        };
                        chains.push(Chain {
                            server_names: route
                                .sni_hosts
                                .iter()
                                .filter(|h| *h != "*")
                                .cloned()
                                .collect(),
                            cluster: outbound_cluster(port, &service.fqdn),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    by_port.retain(|_, chains| {
        chains.sort();
        chains.dedup();
        !chains.is_empty()
    });
    by_port
}

pub fn clusters(snapshot: &MeshSnapshot, proxy: &ProxyInfo) -> Vec<Arc<Resource>> {
    let mut names: Vec<String> = chains(snapshot, proxy)
        .into_values()
        .flatten()
        .map(|chain| chain.cluster)
        .collect();
    names.sort();
    names.dedup();
    names
        .iter()
        .map(|name| Resource::new(name.as_str(), &eds_cluster(name)))
        .collect()
}

pub fn listeners(snapshot: &MeshSnapshot, proxy: &ProxyInfo) -> Vec<Arc<Resource>> {
    chains(snapshot, proxy)
        .into_iter()
        .map(|(listener_port, chains)| {
            let filter_chains = chains
                .iter()
                .map(|chain| FilterChain {
                    name: chain.cluster.clone(),
                    filter_chain_match: Some(FilterChainMatch {
                        server_names: chain.server_names.clone(),
                        ..FilterChainMatch::default()
                    }),
                    filters: vec![tcp_proxy_filter(&chain.cluster)],
                    ..FilterChain::default()
                })
                .collect();
            let listener = Listener {
                name: format!("0.0.0.0_{listener_port}"),
                address: Some(socket_address(
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    listener_port,
                )),
                traffic_direction: TrafficDirection::Outbound as i32,
                listener_filters: vec![ListenerFilter {
                    name: "envoy.filters.listener.tls_inspector".into(),
                    config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                        &TlsInspector::default(),
                    ))),
                    ..ListenerFilter::default()
                }],
                filter_chains,
                ..Listener::default()
            };
            Resource::new(listener.name.clone(), &listener)
        })
        .collect()
}
