//! What the proxy routes by: the Envoy listeners, clusters and endpoints discovery sends,
//! translated into lookup tables ([`ProxyConfig`]). Every connection reads one immutable
//! snapshot; a new one replaces it whole when xDS changes.

mod translate;

pub use translate::{ResourceError, XdsResources};

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How Envoy names the port's protocol in listener and cluster metadata (`HTTP`, `TCP`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortProtocol {
    Http,
    Http2,
    Grpc,
    /// Declared TCP, TLS or HTTPS: bytes are never parsed.
    Opaque,
    /// Not declared: sniffed.
    Unknown,
}

impl PortProtocol {
    pub fn from_metadata(value: &str) -> PortProtocol {
        match value.to_ascii_uppercase().as_str() {
            "HTTP" | "HTTP1" => PortProtocol::Http,
            "HTTP2" => PortProtocol::Http2,
            "GRPC" | "GRPC-WEB" => PortProtocol::Grpc,
            "TCP" | "TLS" | "HTTPS" | "MONGO" | "MYSQL" | "REDIS" => PortProtocol::Opaque,
            _ => PortProtocol::Unknown,
        }
    }

    /// Whether the first bytes are worth looking at for HTTP.
    pub fn sniffed(self) -> bool {
        self != PortProtocol::Opaque
    }
}

/// A service VIP and port the outbound listener knows (`<vip>_<port>` listeners).
#[derive(Clone, Debug, PartialEq)]
pub struct OutboundService {
    pub hostname: String,
    pub cluster: Arc<str>,
    pub protocol: PortProtocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadBalancing {
    /// Smooth weighted round robin over the EDS weights.
    RoundRobin,
    /// The less loaded of two endpoints picked at random (Envoy's default choice count).
    LeastRequest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterKind {
    /// Endpoints arrive separately, by EDS.
    Eds,
    /// Endpoints are part of the cluster.
    Static,
    /// Connections go where they were going (Passthrough clusters).
    OriginalDestination,
    /// Endpoints are names the proxy resolves (STRICT_DNS; see [`crate::dns_clusters`]).
    Dns,
}

/// A STRICT_DNS endpoint before resolution: every address `host` resolves to becomes an
/// endpoint like `endpoint`, on `port`.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedEndpoint {
    pub host: String,
    pub port: u16,
    /// Everything but the address (which is `0.0.0.0:port` here).
    pub endpoint: UpstreamEndpoint,
}

/// How a STRICT_DNS cluster finds its endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsResolution {
    pub targets: Vec<NamedEndpoint>,
    /// How often names are resolved again (Envoy's `dns_refresh_rate`).
    pub refresh: Duration,
    /// Whether a record's TTL decides instead (`respect_dns_ttl`).
    pub respect_ttl: bool,
}

/// Istio mutual TLS towards the endpoints labelled `tlsMode: istio`.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamTls {
    /// The SNI to send: gateways route by it (`outbound_.<port>_._.<fqdn>`).
    pub sni: String,
    /// SPIFFE IDs the server may present; empty means any identity of the mesh's trust domain.
    pub identities: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamEndpoint {
    pub address: SocketAddr,
    pub weight: u32,
    /// The endpoint has a sidecar (`tlsMode: istio`): talk mTLS to it.
    pub mtls: bool,
    /// The address is another network's gateway.
    pub via_gateway: bool,
    /// Where the endpoint runs, for metrics (`istio` metadata).
    pub cluster: String,
    pub network: String,
    pub identity: Option<String>,
    /// Istio's `workload` metadata: who serves there, for metrics.
    pub workload: Option<EndpointWorkload>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointWorkload {
    pub name: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
}

impl EndpointWorkload {
    /// Parses `<workload>;<namespace>;<canonical name>;<canonical revision>;<cluster>`.
    pub fn parse(text: &str) -> Option<EndpointWorkload> {
        let mut parts = text.split(';');
        let name = parts.next().filter(|n| !n.is_empty())?.to_owned();
        let namespace = parts.next().unwrap_or_default().to_owned();
        let app = parts.next().unwrap_or_default().to_owned();
        let version = parts.next().unwrap_or_default().to_owned();
        Some(EndpointWorkload {
            name,
            namespace,
            app,
            version,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamCluster {
    pub name: Arc<str>,
    pub kind: ClusterKind,
    pub load_balancing: LoadBalancing,
    pub connect_timeout: Duration,
    pub tls: Option<UpstreamTls>,
    /// The service the cluster is for (`istio` metadata `hostname`), when it is one.
    pub service: Option<String>,
    pub protocol: PortProtocol,
    pub endpoints: Arc<[UpstreamEndpoint]>,
    /// For [`ClusterKind::Dns`]: what to resolve; `endpoints` holds the last answers.
    pub dns: Option<Arc<DnsResolution>>,
}

/// What the inbound listener does with connections to one workload port.
#[derive(Clone, Debug, PartialEq)]
pub struct InboundPort {
    pub cluster: Arc<str>,
    /// A chain for TLS exists: mTLS is terminated.
    pub mtls: bool,
    /// A chain for plaintext exists (PERMISSIVE); without it plaintext is refused (STRICT).
    pub plaintext: bool,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct InboundPolicy {
    pub ports: HashMap<u16, InboundPort>,
    /// Ports without a chain of their own (`virtualInbound-catchall`).
    pub other_ports: Option<InboundPort>,
}

impl InboundPolicy {
    pub fn for_port(&self, port: u16) -> Option<&InboundPort> {
        self.ports.get(&port).or(self.other_ports.as_ref())
    }
}

/// One router listener port: SNI to cluster (gateways in `sni-dnat` mode).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SniRoutes {
    pub by_name: HashMap<String, Arc<str>>,
    /// A chain without server names: anything else goes there.
    pub any: Option<Arc<str>>,
}

impl SniRoutes {
    pub fn route(&self, sni: Option<&str>) -> Option<&Arc<str>> {
        sni.and_then(|name| self.by_name.get(name))
            .or(self.any.as_ref())
    }
}

/// Everything a proxy routes by, at one moment.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ProxyConfig {
    pub outbound: HashMap<SocketAddr, OutboundService>,
    /// Where captured outbound connections to unknown destinations go.
    pub outbound_fallback: Option<Arc<str>>,
    pub inbound: InboundPolicy,
    pub clusters: HashMap<Arc<str>, UpstreamCluster>,
    /// Mesh host names (every alias of every service) to their VIPs, for the DNS proxy.
    pub names: BTreeMap<String, Vec<IpAddr>>,
    /// Router listeners by port.
    pub sni_routes: BTreeMap<u16, SniRoutes>,
}

impl ProxyConfig {
    pub fn cluster(&self, name: &str) -> Option<&UpstreamCluster> {
        self.clusters.get(name)
    }

    /// The outbound route for a captured connection's original destination.
    pub fn outbound_route(&self, destination: SocketAddr) -> Option<&OutboundService> {
        self.outbound.get(&destination)
    }
}
