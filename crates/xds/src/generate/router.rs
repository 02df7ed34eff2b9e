//! Routers (east-west gateways in `sni-dnat` mode): for every service port exposed by an
//! `AUTO_PASSTHROUGH` server of a Gateway that selects the router, a cluster named by the SNI
//! `outbound_.<port>_._.<fqdn>` whose endpoints are the local ones (the router's
//! `REQUESTED_NETWORK_VIEW`), and a listener per server port choosing the cluster by SNI.

use super::common::{eds_cluster, tcp_proxy_filter};
use super::sidecar::routable_ports;
use crate::envoy::{any, socket_address};
use crate::proxy::ProxyInfo;
use crate::resources::{Resource, sni_cluster};
use causeway_model::{MeshSnapshot, Service, ServicePort};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, FilterChainMatch, Listener, ListenerFilter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

const AUTO_PASSTHROUGH: &str = "AUTO_PASSTHROUGH";

/// Listener port to the service ports it exposes, in FQDN order.
fn exposed<'a>(
    snapshot: &'a MeshSnapshot,
    proxy: &ProxyInfo,
) -> BTreeMap<u16, Vec<(&'a Service, &'a ServicePort)>> {
    let mut by_listener: BTreeMap<u16, Vec<(&Service, &ServicePort)>> = BTreeMap::new();
    for gateway in snapshot
        .istio_gateways
        .iter()
        .filter(|g| g.selects(&proxy.labels))
    {
        for server in &gateway.servers {
            if server.tls_mode.as_deref() != Some(AUTO_PASSTHROUGH) {
                continue;
            }
            let services = by_listener.entry(server.port).or_default();
            for service in snapshot.services.values() {
                if server.exposes(&gateway.namespace, &service.namespace, &service.fqdn) {
                    for port in routable_ports(service) {
                        if !services
                            .iter()
                            .any(|(s, p)| s.fqdn == service.fqdn && p.port == port.port)
                        {
                            services.push((service, port));
                        }
                    }
                }
            }
        }
    }
    by_listener
}

pub fn clusters(snapshot: &MeshSnapshot, proxy: &ProxyInfo) -> Vec<Arc<Resource>> {
    let mut names: Vec<String> = exposed(snapshot, proxy)
        .values()
        .flatten()
        .map(|(service, port)| sni_cluster(port.port, &service.fqdn))
        .collect();
    names.sort();
    names.dedup();
    names
        .iter()
        .map(|name| Resource::new(name.as_str(), &eds_cluster(name)))
        .collect()
}

pub fn listeners(snapshot: &MeshSnapshot, proxy: &ProxyInfo) -> Vec<Arc<Resource>> {
    exposed(snapshot, proxy)
        .into_iter()
        .map(|(listener_port, services)| {
            let filter_chains = services
                .iter()
                .map(|(service, port)| {
                    let sni = sni_cluster(port.port, &service.fqdn);
                    FilterChain {
                        name: sni.clone(),
                        filter_chain_match: Some(FilterChainMatch {
                            server_names: vec![sni.clone()],
                            ..FilterChainMatch::default()
                        }),
                        filters: vec![tcp_proxy_filter(&sni)],
                        ..FilterChain::default()
                    }
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
