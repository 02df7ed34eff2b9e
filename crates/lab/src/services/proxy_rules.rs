//! kube-proxy's rules for a node, as `iptables-restore` input: each Service port's ClusterIPs,
//! LoadBalancer addresses and node port lead to one of its ready endpoints, picked at random per
//! connection (equal chances, as kube-proxy's `statistic` cascade gives them); a pod that reaches
//! itself through its Service is masqueraded (hairpin); a Service port without endpoints
//! refuses connections at once. Decisions only: the caller loads the text into the node.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::network::node::{FILTER_CHAIN, POSTROUTING_CHAIN, SERVICES_CHAIN};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub node_port: Option<u16>,
    /// Where its ready endpoints listen.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    /// `namespace/name`, for the rules' comments.
    pub key: String,
    pub cluster_ips: Vec<Ipv4Addr>,
    pub load_balancer_ips: Vec<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
}

/// The destinations a Service port is reached at on this node.
fn destinations(service: &ServiceView, port: &ServicePort, node: Ipv4Addr) -> Vec<(Ipv4Addr, u16)> {
    let mut destinations: Vec<(Ipv4Addr, u16)> = service
        .cluster_ips
        .iter()
        .chain(&service.load_balancer_ips)
        .map(|address| (*address, port.port))
        .collect();
    if let Some(node_port) = port.node_port {
        destinations.push((node, node_port));
    }
    destinations
}

/// The rules of every Service, for `iptables-restore --noflush`: the chains the node made are
/// emptied and filled again in one transaction.
pub fn rules(node: Ipv4Addr, services: &[ServiceView]) -> String {
    let mut nat = String::new();
    let mut filter = String::new();
    let mut hairpins: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for service in services {
        for port in &service.ports {
            let protocol = &port.protocol;
            let comment = format!("\"{}:{}\"", service.key, port.name);
            for (address, destination_port) in destinations(service, port, node) {
                let matching = format!(
                    "-d {address}/32 -p {protocol} -m {protocol} --dport {destination_port} -m comment --comment {comment}"
                );
                if port.endpoints.is_empty() {
                    let _ = writeln!(
                        filter,
                        "-A {FILTER_CHAIN} {matching} -j REJECT --reject-with icmp-port-unreachable"
                    );
                    continue;
                }
                let count = port.endpoints.len();
                for (index, (endpoint, endpoint_port)) in port.endpoints.iter().enumerate() {
                    hairpins.insert(*endpoint);
                    let remaining = count - index;
                    let chance = if remaining > 1 {
                        format!(
                            " -m statistic --mode random --probability {:.11}",
                            1.0 / remaining as f64
                        )
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        nat,
                        "-A {SERVICES_CHAIN} {matching}{chance} -j DNAT --to-destination {endpoint}:{endpoint_port}"
                    );
                }
            }
        }
    }
    let mut postrouting = String::new();
    for endpoint in hairpins {
        let _ = writeln!(
            postrouting,
            "-A {POSTROUTING_CHAIN} -s {endpoint}/32 -d {endpoint}/32 -j MASQUERADE"
        );
    }
    format!(
        "*nat\n:{SERVICES_CHAIN} - [0:0]\n:{POSTROUTING_CHAIN} - [0:0]\n{nat}{postrouting}COMMIT\n*filter\n:{FILTER_CHAIN} - [0:0]\n{filter}COMMIT\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn helloworld(endpoints: Vec<(Ipv4Addr, u16)>) -> ServiceView {
        ServiceView {
            key: "sample/helloworld".into(),
            cluster_ips: vec![Ipv4Addr::new(10, 11, 0, 7)],
            load_balancer_ips: Vec::new(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 5000,
                protocol: "tcp".into(),
                node_port: None,
                endpoints,
            }],
        }
    }

    #[test]
    fn endpoints_get_equal_chances_and_hairpins_are_masqueraded() {
        let service = helloworld(vec![
            (Ipv4Addr::new(10, 10, 0, 5), 5000),
            (Ipv4Addr::new(10, 10, 0, 6), 5000),
            (Ipv4Addr::new(10, 10, 0, 7), 5000),
        ]);
        let text = rules(Ipv4Addr::new(172, 18, 0, 2), &[service]);
        let dnat: Vec<&str> = text.lines().filter(|line| line.contains("DNAT")).collect();
        assert_eq!(dnat.len(), 3);
        assert!(
            dnat[0].contains("--probability 0.33333333333 -j DNAT --to-destination 10.10.0.5:5000"),
            "{}",
            dnat[0]
        );
        assert!(
            dnat[1].contains("--probability 0.50000000000 -j DNAT --to-destination 10.10.0.6:5000"),
            "{}",
            dnat[1]
        );
        assert!(
            dnat[2].ends_with("-j DNAT --to-destination 10.10.0.7:5000")
                && !dnat[2].contains("statistic")
        );
        assert!(dnat.iter().all(|line| {
            line.starts_with("-A CW-SERVICES -d 10.11.0.7/32 -p tcp -m tcp --dport 5000")
        }));
        assert!(text.contains("-A CW-POSTROUTING -s 10.10.0.6/32 -d 10.10.0.6/32 -j MASQUERADE"));
        assert!(!text.contains("REJECT"));
        assert!(text.starts_with("*nat\n:CW-SERVICES - [0:0]\n"));
    }

    #[test]
    fn a_service_without_endpoints_refuses_and_node_ports_and_load_balancers_lead_in() {
        let mut empty = helloworld(Vec::new());
        empty.ports[0].node_port = Some(30123);
        let mut gateway = ServiceView {
            key: "istio-system/istio-eastwestgateway".into(),
            cluster_ips: vec![Ipv4Addr::new(10, 11, 0, 9)],
            load_balancer_ips: vec![Ipv4Addr::new(172, 18, 11, 0)],
            ports: vec![ServicePort {
                name: "tls".into(),
                port: 15443,
                protocol: "tcp".into(),
                node_port: Some(31443),
                endpoints: vec![(Ipv4Addr::new(10, 10, 0, 9), 15443)],
            }],
        };
        gateway.ports[0].protocol = "tcp".into();
        let text = rules(Ipv4Addr::new(172, 18, 0, 2), &[empty, gateway]);
        assert!(text.contains("-A CW-FILTER -d 10.11.0.7/32 -p tcp -m tcp --dport 5000"));
        assert!(text.contains("-A CW-FILTER -d 172.18.0.2/32 -p tcp -m tcp --dport 30123"));
        for destination in [
            "-d 10.11.0.9/32 -p tcp -m tcp --dport 15443",
            "-d 172.18.11.0/32 -p tcp -m tcp --dport 15443",
            "-d 172.18.0.2/32 -p tcp -m tcp --dport 31443",
        ] {
            assert!(
                text.lines().any(|line| line.contains(destination)
                    && line.ends_with("-j DNAT --to-destination 10.10.0.9:15443")),
                "{destination}\n{text}"
            );
        }
    }
}
