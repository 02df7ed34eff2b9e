//! Which prefixes go where: what a pod routes through its node, and what a node routes to a
//! connected cluster's node. Decisions only; [`super::Node`] and the kubelet apply them.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Addresses that exist only inside proxies (see [`pod_prefixes`]).
const PROXY_ONLY_ADDRESSES: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(240, 0, 0, 0), 4) {
    Ok(net) => net,
    Err(_) => panic!("240.0.0.0/4 is a valid prefix"),
};

/// Where one cluster's addresses live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAddresses {
    pub name: String,
    pub node: Ipv4Addr,
    pub pod_subnet: Ipv4Net,
    pub service_subnet: Ipv4Net,
}

/// The prefixes a pod sends through its node: the lab network and every lab cluster's pod and
/// service subnets. Whether the node forwards to another cluster is the node's decision (its
/// routes, `lab connect`, or the seeds' `ip route add`), as in kind, where pods route everything
/// through their node. Nothing else is routed, so anything outside the lab is unreachable.
///
/// One more prefix: 240.0.0.0/4 (reserved, never routed on any network), where Istio puts
/// addresses that exist only in proxies: ServiceEntry `addresses` such as the seeds'
/// `240.0.0.2` and auto-allocated VIPs (240.240.0.0/16). A sidecar captures connections to them
/// before they leave the pod, but the kernel needs a route to accept the `connect` at all, as a
/// Kubernetes pod's default route gives it; what no sidecar captures dies at the node, which
/// has no route there.
pub fn pod_prefixes(lab_subnet: Ipv4Net, clusters: &[ClusterAddresses]) -> Vec<Ipv4Net> {
    let mut prefixes = vec![lab_subnet, PROXY_ONLY_ADDRESSES];
    for cluster in clusters {
        prefixes.push(cluster.pod_subnet);
        prefixes.push(cluster.service_subnet);
    }
    prefixes.sort();
    prefixes.dedup();
    prefixes
}

/// The routes a node adds to reach a connected cluster: its pod and service subnets through its
/// node, as the seeds' `ip route add 10.20.0.0/16 via <node> dev eth0`.
pub fn routes_to(peer: &ClusterAddresses) -> [(Ipv4Net, Ipv4Addr); 2] {
    [
        (peer.pod_subnet, peer.node),
        (peer.service_subnet, peer.node),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str, node: [u8; 4], pods: &str, services: &str) -> ClusterAddresses {
        ClusterAddresses {
            name: name.into(),
            node: node.into(),
            pod_subnet: pods.parse().unwrap(),
            service_subnet: services.parse().unwrap(),
        }
    }

    #[test]
    fn pods_route_the_lab_and_every_clusters_subnets_and_nothing_else() {
        let clusters = [
            cluster("cluster01", [172, 18, 0, 2], "10.10.0.0/16", "10.11.0.0/16"),
            cluster("cluster02", [172, 18, 0, 3], "10.20.0.0/16", "10.21.0.0/16"),
        ];
        let prefixes: Vec<String> = pod_prefixes("172.18.0.0/16".parse().unwrap(), &clusters)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            prefixes,
            [
                "10.10.0.0/16",
                "10.11.0.0/16",
                "10.20.0.0/16",
                "10.21.0.0/16",
                "172.18.0.0/16",
                "240.0.0.0/4"
            ]
        );
        assert!(
            !pod_prefixes("172.18.0.0/16".parse().unwrap(), &clusters)
                .iter()
                .any(|prefix| prefix.prefix_len() == 0)
        );
    }

    #[test]
    fn a_connection_routes_both_subnets_through_the_peers_node() {
        let peer = cluster("cluster02", [172, 18, 0, 3], "10.20.0.0/16", "10.21.0.0/16");
        let routes = routes_to(&peer);
        assert_eq!(
            routes[0],
            ("10.20.0.0/16".parse().unwrap(), [172, 18, 0, 3].into())
        );
        assert_eq!(
            routes[1],
            ("10.21.0.0/16".parse().unwrap(), [172, 18, 0, 3].into())
        );
    }
}
