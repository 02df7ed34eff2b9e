//! Split-horizon EDS: the endpoints of one service port as a proxy on one network sees them.
//!
//! Endpoints on the viewer's network are used directly. Endpoints on another network are reached
//! through that network's east-west gateways: they are replaced by the gateways, weighted by the
//! endpoints each stands for (their summed weights), and a network without a gateway contributes nothing. Routers
//! (`ROUTER_MODE=sni-dnat`) see only the endpoints inside their `REQUESTED_NETWORK_VIEW`, as they
//! are: they are the door into that network, never a hop out of it.

use crate::endpoint::{Endpoint, Locality, TlsMode};
use crate::gateway::NetworkGateway;
use crate::service::ServicePort;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Whose eyes the endpoints are seen through.
#[derive(Clone, Copy, Debug)]
pub enum View<'a> {
    /// A sidecar or proxyless client on this network (empty: the network is unknown, and every
    /// endpoint counts as local, as in Istio).
    Network(&'a str),
    /// A router serving these networks; endpoints elsewhere are left out.
    Router(&'a [String]),
}

/// One entry of a ClusterLoadAssignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisibleEndpoint<'a> {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub cluster: &'a str,
    pub network: &'a str,
    pub locality: &'a Locality,
    pub tls_mode: TlsMode,
    pub identity: Option<&'a str>,
    /// Stands for the endpoints of another network behind this gateway address.
    pub via_gateway: bool,
    /// The endpoint itself (not for gateway stand-ins).
    pub source: Option<&'a Endpoint>,
}

static NO_LOCALITY: Locality = Locality {
    region: String::new(),
    zone: String::new(),
    subzone: String::new(),
};

fn same_network(viewer: &str, endpoint: &str) -> bool {
    viewer.is_empty() || endpoint.is_empty() || viewer == endpoint
}

/// The ready endpoints serving `port`, as `view` sees them, in a stable order.
pub fn visible_endpoints<'a>(
    endpoints: &'a [Endpoint],
    port: &ServicePort,
    view: View<'_>,
    gateways: &'a [NetworkGateway],
) -> Vec<VisibleEndpoint<'a>> {
    let mut visible = Vec::new();
    let mut behind_gateways: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for endpoint in endpoints.iter().filter(|endpoint| endpoint.ready) {
        let Some(target_port) = endpoint.port_for(&port.name) else {
            continue;
        };
        let local = match view {
            View::Network(network) => same_network(network, &endpoint.network),
            View::Router(networks) => {
                networks.is_empty() || networks.iter().any(|n| same_network(n, &endpoint.network))
            }
        };
        if local {
            visible.push(VisibleEndpoint {
                address: endpoint.address,
                port: target_port,
                weight: endpoint.weight.max(1),
                cluster: &endpoint.cluster,
                network: &endpoint.network,
                locality: &endpoint.locality,
                tls_mode: endpoint.tls_mode,
                identity: endpoint.identity.as_deref(),
                via_gateway: false,
                source: Some(endpoint),
            });
        } else if matches!(view, View::Network(_)) {
            *behind_gateways
                .entry((endpoint.network.as_str(), endpoint.cluster.as_str()))
                .or_default() += endpoint.weight.max(1);
        }
    }
    for ((network, cluster), count) in behind_gateways {
        let of_network: Vec<&NetworkGateway> =
            gateways.iter().filter(|g| g.network == network).collect();
        // A cluster's own gateways are preferred; any gateway of the network will do otherwise.
        let in_cluster: Vec<&NetworkGateway> = of_network
            .iter()
            .copied()
            .filter(|g| g.cluster == cluster)
            .collect();
        let chosen = if in_cluster.is_empty() {
            of_network
        } else {
            in_cluster
        };
        let shares = chosen.len() as u32;
        for (index, gateway) in chosen.into_iter().enumerate() {
            let share = count / shares + u32::from((index as u32) < count % shares);
            visible.push(VisibleEndpoint {
                address: gateway.address,
                port: gateway.port,
                weight: share.max(1),
                cluster,
                network,
                locality: &NO_LOCALITY,
                tls_mode: TlsMode::Istio,
                identity: None,
                via_gateway: true,
                source: None,
            });
        }
    }
    visible
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointPort;
    use crate::service::Protocol;

    fn endpoint(cluster: &str, network: &str, address: &str, ready: bool) -> Endpoint {
        Endpoint {
            cluster: cluster.into(),
            network: network.into(),
            address: address.parse().unwrap(),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 5000,
            }],
            locality: Locality::default(),
            identity: Some("spiffe://cluster.local/ns/sample/sa/default".into()),
            labels: BTreeMap::new(),
            ready,
            tls_mode: TlsMode::Istio,
            pod: None,
            weight: 1,
        }
    }

    fn gateway(network: &str, cluster: &str, address: &str) -> NetworkGateway {
        NetworkGateway {
            network: network.into(),
            cluster: cluster.into(),
            address: address.parse().unwrap(),
            port: 15443,
            service: "istio-system/istio-eastwestgateway".into(),
        }
    }

    fn http() -> ServicePort {
        ServicePort {
            name: "http".into(),
            port: 5000,
            protocol: Protocol::Http,
        }
    }

    fn mesh() -> Vec<Endpoint> {
        vec![
            endpoint("cluster01", "network1", "10.10.0.5", true),
            endpoint("cluster01", "network1", "10.10.0.6", false),
            endpoint("cluster02", "network2", "10.20.0.5", true),
            endpoint("cluster02", "network2", "10.20.0.6", true),
            endpoint("cluster02", "network2", "10.20.0.7", true),
        ]
    }

    #[test]
    fn other_networks_hide_behind_their_gateway_with_their_weight() {
        let endpoints = mesh();
        let gateways = [gateway("network2", "cluster02", "172.18.255.2")];
        let seen = visible_endpoints(&endpoints, &http(), View::Network("network1"), &gateways);
        assert_eq!(seen.len(), 2, "{seen:#?}");
        assert_eq!(seen[0].address.to_string(), "10.10.0.5");
        assert_eq!(
            (seen[0].port, seen[0].weight, seen[0].via_gateway),
            (5000, 1, false)
        );
        let via = &seen[1];
        assert_eq!(via.address.to_string(), "172.18.255.2");
        assert_eq!((via.port, via.weight, via.via_gateway), (15443, 3, true));
        assert_eq!(
            (via.cluster, via.network, via.tls_mode),
            ("cluster02", "network2", TlsMode::Istio)
        );
    }

    #[test]
    fn endpoint_weights_carry_over_locally_and_add_up_behind_a_gateway() {
        let mut endpoints = mesh();
        endpoints[0].weight = 4;
        endpoints[2].weight = 10;
        let gateways = [gateway("network2", "cluster02", "172.18.255.2")];
        let seen = visible_endpoints(&endpoints, &http(), View::Network("network1"), &gateways);
        let weights: Vec<(String, u32)> = seen
            .iter()
            .map(|e| (e.address.to_string(), e.weight))
            .collect();
        assert_eq!(
            weights,
            [("10.10.0.5".into(), 4), ("172.18.255.2".into(), 12)],
            "10 + 1 + 1 behind the gateway"
        );
    }

    #[test]
    fn a_network_without_a_gateway_contributes_nothing() {
        let endpoints = mesh();
        let seen = visible_endpoints(&endpoints, &http(), View::Network("network1"), &[]);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].cluster, "cluster01");
    }

    #[test]
    fn unknown_networks_are_local() {
        let endpoints = mesh();
        assert_eq!(
            visible_endpoints(&endpoints, &http(), View::Network(""), &[]).len(),
            4
        );
    }

    #[test]
    fn weight_is_shared_across_gateways_and_own_cluster_gateways_win() {
        let endpoints = mesh();
        let gateways = [
            gateway("network2", "cluster02", "172.18.255.2"),
            gateway("network2", "cluster02", "172.18.255.3"),
            gateway("network2", "cluster03", "172.18.255.9"),
        ];
        let seen = visible_endpoints(&endpoints, &http(), View::Network("network1"), &gateways);
        let weights: Vec<(String, u32)> = seen
            .iter()
            .filter(|e| e.via_gateway)
            .map(|e| (e.address.to_string(), e.weight))
            .collect();
        assert_eq!(
            weights,
            [("172.18.255.2".into(), 2), ("172.18.255.3".into(), 1)]
        );
    }

    #[test]
    fn routers_see_only_their_networks_directly() {
        let endpoints = mesh();
        let gateways = [gateway("network1", "cluster01", "172.18.255.1")];
        let view = ["network2".to_owned()];
        let seen = visible_endpoints(&endpoints, &http(), View::Router(&view), &gateways);
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter()
                .all(|e| !e.via_gateway && e.network == "network2")
        );
    }

    #[test]
    fn endpoints_without_the_port_are_skipped() {
        let endpoints = mesh();
        let grpc = ServicePort {
            name: "grpc".into(),
            port: 7070,
            protocol: Protocol::Grpc,
        };
        assert!(visible_endpoints(&endpoints, &grpc, View::Network(""), &[]).is_empty());
    }
}
