//! Services, keyed by FQDN and merged across the clusters that define them.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

/// The application protocol of a service port, by Istio's rules: `appProtocol` first, else the
/// port name's prefix before `-` (`http-web`, `grpc`, `tcp-db`), else TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
    Udp,
}

impl Protocol {
    pub fn detect(app_protocol: Option<&str>, port_name: &str, transport: &str) -> Protocol {
        if transport.eq_ignore_ascii_case("UDP") {
            return Protocol::Udp;
        }
        if let Some(protocol) = app_protocol.and_then(Self::from_name) {
            return protocol;
        }
        let prefix = port_name.split('-').next().unwrap_or_default();
        Self::from_name(prefix).unwrap_or(Protocol::Tcp)
    }

    fn from_name(name: &str) -> Option<Protocol> {
        Some(match name.to_ascii_lowercase().as_str() {
            "http" | "http1" => Protocol::Http,
            "http2" | "h2c" | "kubernetes.io/h2c" => Protocol::Http2,
            "grpc" | "grpc-web" => Protocol::Grpc,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" | "mongo" | "mysql" | "redis" => Protocol::Tcp,
            _ => return None,
        })
    }

    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// A service as one cluster defines it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterService {
    pub cluster: String,
    /// `None` for headless services.
    pub cluster_ip: Option<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `None` when the service has no selector (its endpoints are managed by hand).
    pub selector: Option<BTreeMap<String, String>>,
    pub labels: BTreeMap<String, String>,
    /// LoadBalancer ingress addresses and `spec.externalIPs`: where a network gateway is reached.
    pub external_addresses: Vec<IpAddr>,
}

impl ClusterService {
    /// Whether a workload with `labels` in this service's namespace is one of its endpoints.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.selector {
            Some(selector) if !selector.is_empty() => selector
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value)),
            _ => false,
        }
    }
}

/// Where a mesh service comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum DefinedBy {
    /// Kubernetes Services of the same namespace and name, merged across clusters.
    #[default]
    Kubernetes,
    /// A ServiceEntry host, with the entry's `location`.
    ServiceEntry(crate::service_entry::Location),
}

/// A mesh service: every cluster's Service of the same namespace and name, or a ServiceEntry
/// host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    /// `<name>.<namespace>.svc.<domain suffix>`.
    pub fqdn: String,
    pub name: String,
    pub namespace: String,
    /// The union of every cluster's ports, by port number; the first cluster (by ID) names them.
    pub ports: Vec<ServicePort>,
    pub clusters: BTreeMap<String, ClusterService>,
    /// The address used by proxies in clusters that do not define the service (see [`crate::vip`]).
    pub auto_vip: Ipv4Addr,
    pub defined_by: DefinedBy,
    /// For a ServiceEntry with `resolution: DNS`, the names the proxies resolve for endpoints
    /// (the mesh's endpoint list for the service stays empty). Empty otherwise.
    pub dns_endpoints: Vec<crate::endpoint::DnsEndpoint>,
    /// The namespaces whose proxies see the service (a ServiceEntry's `exportTo`); `None`: every
    /// namespace.
    pub exported_to: Option<BTreeSet<String>>,
    /// A ServiceEntry with `resolution: NONE`: connections to its address keep the destination
    /// the application chose (Envoy's ORIGINAL_DST); the entry names them for telemetry.
    pub passthrough: bool,
}

impl Service {
    pub fn fqdn(name: &str, namespace: &str, domain_suffix: &str) -> String {
        format!("{name}.{namespace}.svc.{domain_suffix}")
    }

    /// The address a proxy in `cluster` sends this service's traffic to: that cluster's ClusterIP
    /// when it defines the service, else the auto-allocated VIP. `None` for a service that is
    /// headless wherever it is defined.
    pub fn vip_for(&self, cluster: &str) -> Option<IpAddr> {
        if let DefinedBy::ServiceEntry(_) = self.defined_by {
            // An entry's address is the same in every cluster.
            return self.clusters.values().find_map(|local| local.cluster_ip);
        }
        match self.clusters.get(cluster) {
            Some(local) => local.cluster_ip,
            None if self.clusters.values().all(|c| c.cluster_ip.is_none()) => None,
            None => Some(IpAddr::V4(self.auto_vip)),
        }
    }

    /// Whether proxies in `namespace` see this service.
    pub fn visible_to(&self, namespace: Option<&str>) -> bool {
        match &self.exported_to {
            None => true,
            Some(namespaces) => namespace.is_some_and(|namespace| namespaces.contains(namespace)),
        }
    }

    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|port| port.port == number)
    }

    /// Merges the per-cluster definitions into [`Service::ports`].
    pub fn merged_ports(clusters: &BTreeMap<String, ClusterService>) -> Vec<ServicePort> {
        let mut by_number: BTreeMap<u16, ServicePort> = BTreeMap::new();
        for cluster in clusters.values() {
            for port in &cluster.ports {
                by_number.entry(port.port).or_insert_with(|| port.clone());
            }
        }
        by_number.into_values().collect()
    }

    /// The host names a client in `namespace` may use for this service, most specific first:
    /// the FQDN, `name.ns.svc`, `name.ns`, and `name` itself for clients in the same namespace.
    /// A ServiceEntry host has no short forms: it is written as the entry names it.
    pub fn host_aliases(&self, client_namespace: Option<&str>) -> Vec<String> {
        if self.defined_by != DefinedBy::Kubernetes {
            return vec![self.fqdn.clone()];
        }
        let mut hosts = vec![
            self.fqdn.clone(),
            format!("{}.{}.svc", self.name, self.namespace),
            format!("{}.{}", self.name, self.namespace),
        ];
        if client_namespace == Some(self.namespace.as_str()) {
            hosts.push(self.name.clone());
        }
        hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_follows_app_protocol_then_port_name() {
        assert_eq!(
            Protocol::detect(Some("grpc"), "tcp-x", "TCP"),
            Protocol::Grpc
        );
        assert_eq!(Protocol::detect(None, "http-web", "TCP"), Protocol::Http);
        assert_eq!(Protocol::detect(None, "http", "TCP"), Protocol::Http);
        assert_eq!(Protocol::detect(None, "grpc", "TCP"), Protocol::Grpc);
        assert_eq!(Protocol::detect(None, "web", "TCP"), Protocol::Tcp);
        assert_eq!(
            Protocol::detect(Some("unknown"), "tls", "TCP"),
            Protocol::Tls
        );
        assert_eq!(Protocol::detect(None, "dns", "UDP"), Protocol::Udp);
    }

    fn cluster_service(cluster: &str, ip: Option<&str>, ports: &[(&str, u16)]) -> ClusterService {
        ClusterService {
            cluster: cluster.into(),
            cluster_ip: ip.map(|ip| ip.parse().unwrap()),
            ports: ports
                .iter()
                .map(|(name, port)| ServicePort {
                    name: (*name).into(),
                    port: *port,
                    protocol: Protocol::detect(None, name, "TCP"),
                })
                .collect(),
            selector: Some([("app".to_owned(), "helloworld".to_owned())].into()),
            labels: BTreeMap::new(),
            external_addresses: vec![],
        }
    }

    #[test]
    fn vip_is_the_local_cluster_ip_else_the_auto_vip() {
        let clusters: BTreeMap<_, _> = [(
            "cluster02".to_owned(),
            cluster_service("cluster02", Some("10.2.0.10"), &[("http", 5000)]),
        )]
        .into();
        let service = Service {
            fqdn: Service::fqdn("helloworld", "sample", "cluster.local"),
            name: "helloworld".into(),
            namespace: "sample".into(),
            ports: Service::merged_ports(&clusters),
            clusters,
            auto_vip: Ipv4Addr::new(240, 240, 0, 7),
            defined_by: DefinedBy::Kubernetes,
            dns_endpoints: Vec::new(),
            exported_to: None,
            passthrough: false,
        };
        assert_eq!(
            service.vip_for("cluster02"),
            Some("10.2.0.10".parse().unwrap())
        );
        assert_eq!(
            service.vip_for("cluster01"),
            Some("240.240.0.7".parse().unwrap())
        );
        assert_eq!(service.fqdn, "helloworld.sample.svc.cluster.local");
        assert_eq!(
            service.host_aliases(Some("sample")),
            [
                "helloworld.sample.svc.cluster.local",
                "helloworld.sample.svc",
                "helloworld.sample",
                "helloworld"
            ]
        );
        assert_eq!(service.host_aliases(Some("other")).len(), 3);
    }

    #[test]
    fn merged_ports_take_the_union_by_number() {
        let clusters: BTreeMap<_, _> = [
            (
                "a".to_owned(),
                cluster_service("a", Some("10.1.0.1"), &[("http", 5000)]),
            ),
            (
                "b".to_owned(),
                cluster_service("b", Some("10.2.0.1"), &[("http-alt", 5000), ("grpc", 7070)]),
            ),
        ]
        .into();
        let ports = Service::merged_ports(&clusters);
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].name, "http");
        assert_eq!(ports[1].protocol, Protocol::Grpc);
    }

    #[test]
    fn an_empty_or_missing_selector_selects_nothing() {
        let mut service = cluster_service("a", None, &[]);
        let labels = [("app".to_owned(), "helloworld".to_owned())].into();
        assert!(service.selects(&labels));
        service.selector = Some(BTreeMap::new());
        assert!(!service.selects(&labels));
        service.selector = None;
        assert!(!service.selects(&labels));
    }
}
