//! Envoy resources to routing tables. Each resource is checked on its own, so that one bad
//! resource is rejected (and named in the NACK) while the others are used.

use super::{
    ClusterKind, DnsResolution, InboundPolicy, InboundPort, LoadBalancing, NamedEndpoint,
    OutboundService, PortProtocol, ProxyConfig, SniRoutes, UpstreamCluster, UpstreamEndpoint,
    UpstreamTls,
};
use causeway_xds::resources::{CLUSTER, ENDPOINT, LISTENER, short_name};
use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy},
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, Metadata, TransportSocket, address, socket_address::PortSpecifier,
    transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    UpstreamTlsContext, common_tls_context::ValidationContextType,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{Any, Struct, value::Kind};
use prost::{Message, Name};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A resource the proxy cannot use, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} `{name}`: {reason}")]
pub struct ResourceError {
    pub kind: &'static str,
    pub name: String,
    pub reason: String,
}

fn reject(type_url: &str, name: &str, reason: impl Into<String>) -> ResourceError {
    ResourceError {
        kind: short_name(type_url),
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// What one listener contributes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
enum ListenerRole {
    /// `virtualOutbound`: where unknown destinations go.
    OutboundCatchAll { cluster: String },
    /// `<vip>_<port>`: a service port.
    OutboundService {
        #[serde(skip)]
        destination: SocketAddr,
        #[serde(skip)]
        service: OutboundService,
        cluster: String,
        names: Vec<String>,
    },
    /// `virtualInbound`.
    Inbound {
        #[serde(skip)]
        policy: InboundPolicy,
        ports: BTreeMap<u16, String>,
    },
    /// A router listener: SNI to cluster.
    Router {
        port: u16,
        #[serde(skip)]
        routes: SniRoutes,
        server_names: usize,
    },
}

#[derive(Clone, Debug, Serialize)]
struct Versioned<T> {
    version: String,
    #[serde(flatten)]
    value: T,
}

#[derive(Clone, Debug, Serialize)]
struct ClusterEntry {
    #[serde(skip)]
    cluster: UpstreamCluster,
    kind: &'static str,
    mtls: bool,
}

#[derive(Clone, Debug, Serialize)]
struct AssignmentEntry {
    #[serde(skip)]
    endpoints: Arc<[UpstreamEndpoint]>,
    addresses: Vec<String>,
}

/// The resources last accepted, by type and name, and what each translates to.
#[derive(Clone, Debug, Default, Serialize)]
pub struct XdsResources {
    listeners: BTreeMap<String, Versioned<ListenerRole>>,
    clusters: BTreeMap<String, Versioned<ClusterEntry>>,
    endpoints: BTreeMap<String, Versioned<AssignmentEntry>>,
}

impl XdsResources {
    /// Checks and keeps one resource. On error the previous version (if any) stays.
    pub fn apply(
        &mut self,
        type_url: &str,
        name: &str,
        version: &str,
        resource: &Any,
    ) -> Result<(), ResourceError> {
        if resource.type_url != type_url {
            return Err(reject(
                type_url,
                name,
                format!(
                    "carries a `{}` where a `{type_url}` was expected",
                    resource.type_url
                ),
            ));
        }
        let version = version.to_owned();
        match type_url {
            LISTENER => {
                let listener = decode::<Listener>(type_url, name, resource)?;
                check_name(type_url, name, &listener.name)?;
                let value = listener_role(&listener).map_err(|e| reject(type_url, name, e))?;
                self.listeners
                    .insert(name.to_owned(), Versioned { version, value });
            }
            CLUSTER => {
                let cluster = decode::<Cluster>(type_url, name, resource)?;
                check_name(type_url, name, &cluster.name)?;
                let cluster = upstream_cluster(&cluster).map_err(|e| reject(type_url, name, e))?;
                let value = ClusterEntry {
                    kind: match cluster.kind {
                        ClusterKind::Eds => "EDS",
                        ClusterKind::Static => "STATIC",
                        ClusterKind::OriginalDestination => "ORIGINAL_DST",
                        ClusterKind::Dns => "STRICT_DNS",
                    },
                    mtls: cluster.tls.is_some(),
                    cluster,
                };
                self.clusters
                    .insert(name.to_owned(), Versioned { version, value });
            }
            ENDPOINT => {
                let assignment = decode::<ClusterLoadAssignment>(type_url, name, resource)?;
                check_name(type_url, name, &assignment.cluster_name)?;
                let endpoints =
                    assignment_endpoints(&assignment).map_err(|e| reject(type_url, name, e))?;
                let value = AssignmentEntry {
                    addresses: endpoints.iter().map(|e| e.address.to_string()).collect(),
                    endpoints: endpoints.into(),
                };
                self.endpoints
                    .insert(name.to_owned(), Versioned { version, value });
            }
            other => {
                return Err(reject(
                    other,
                    name,
                    "this proxy does not subscribe to that type",
                ));
            }
        }
        Ok(())
    }

    pub fn remove(&mut self, type_url: &str, name: &str) {
        match type_url {
            LISTENER => {
                self.listeners.remove(name);
            }
            CLUSTER => {
                self.clusters.remove(name);
            }
            ENDPOINT => {
                self.endpoints.remove(name);
            }
            _ => {}
        }
    }

    /// Keeps only `names` of a type (a state-of-the-world response names them all).
    pub fn retain(&mut self, type_url: &str, names: &BTreeSet<String>) {
        match type_url {
            LISTENER => self.listeners.retain(|name, _| names.contains(name)),
            CLUSTER => self.clusters.retain(|name, _| names.contains(name)),
            ENDPOINT => self.endpoints.retain(|name, _| names.contains(name)),
            _ => {}
        }
    }

    /// Name to version, for a delta stream's `initial_resource_versions` after a reconnect.
    pub fn versions(&self, type_url: &str) -> BTreeMap<String, String> {
        fn of<T>(map: &BTreeMap<String, Versioned<T>>) -> BTreeMap<String, String> {
            map.iter()
                .map(|(name, entry)| (name.clone(), entry.version.clone()))
                .collect()
        }
        match type_url {
            LISTENER => of(&self.listeners),
            CLUSTER => of(&self.clusters),
            ENDPOINT => of(&self.endpoints),
            _ => BTreeMap::new(),
        }
    }

    /// The clusters whose endpoints come by EDS: the names to subscribe to.
    pub fn eds_cluster_names(&self) -> BTreeSet<String> {
        self.clusters
            .iter()
            .filter(|(_, entry)| entry.value.cluster.kind == ClusterKind::Eds)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Every EDS cluster has received its endpoints (Envoy's cluster warming).
    pub fn warm(&self) -> bool {
        self.eds_cluster_names()
            .iter()
            .all(|name| self.endpoints.contains_key(name))
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.clusters.is_empty()
    }

    /// The routing tables for the resources held now.
    pub fn build(&self) -> ProxyConfig {
        let mut config = ProxyConfig::default();
        for entry in self.listeners.values() {
            match &entry.value {
                ListenerRole::OutboundCatchAll { cluster } => {
                    config.outbound_fallback = Some(cluster.as_str().into());
                }
                ListenerRole::OutboundService {
                    destination,
                    service,
                    names,
                    ..
                } => {
                    for name in names {
                        let addresses = config.names.entry(name.clone()).or_default();
                        if !addresses.contains(&destination.ip()) {
                            addresses.push(destination.ip());
                        }
                    }
                    config.outbound.insert(*destination, service.clone());
                }
                ListenerRole::Inbound { policy, .. } => config.inbound = policy.clone(),
                ListenerRole::Router { port, routes, .. } => {
                    config.sni_routes.insert(*port, routes.clone());
                }
            }
        }
        for (name, entry) in &self.clusters {
            let mut cluster = entry.value.cluster.clone();
            if cluster.kind == ClusterKind::Eds {
                cluster.endpoints = self
                    .endpoints
                    .get(name)
                    .map(|assignment| assignment.value.endpoints.clone())
                    .unwrap_or_else(|| Arc::from(Vec::new()));
            }
            config.clusters.insert(cluster.name.clone(), cluster);
        }
        config
    }
}

fn decode<M: Message + Default>(
    type_url: &str,
    name: &str,
    resource: &Any,
) -> Result<M, ResourceError> {
    M::decode(resource.value.as_slice())
        .map_err(|error| reject(type_url, name, format!("cannot be decoded: {error}")))
}

fn check_name(type_url: &str, name: &str, inner: &str) -> Result<(), ResourceError> {
    if name != inner {
        return Err(reject(
            type_url,
            name,
            format!("the resource inside is named `{inner}`"),
        ));
    }
    Ok(())
}

fn text_field<'a>(metadata: Option<&'a Metadata>, filter: &str, key: &str) -> Option<&'a str> {
    let value = metadata?.filter_metadata.get(filter)?.fields.get(key)?;
    match value.kind.as_ref()? {
        Kind::StringValue(text) => Some(text),
        _ => None,
    }
}

fn first_inbound_service(metadata: Option<&Metadata>) -> Option<&str> {
    let services = metadata?
        .filter_metadata
        .get("istio")?
        .fields
        .get("services")?;
    let Kind::ListValue(services) = services.kind.as_ref()? else {
        return None;
    };
    services
        .values
        .iter()
        .find_map(|service| match service.kind.as_ref()? {
            Kind::StructValue(service) => struct_text(service, "host"),
            _ => None,
        })
}

fn struct_text<'a>(fields: &'a Struct, key: &str) -> Option<&'a str> {
    match fields.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(text) => Some(text),
        _ => None,
    }
}

fn socket_address(address: Option<&Address>) -> Result<SocketAddr, String> {
    let (host, port) = host_and_port(address)?;
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("`{host}` is not an IP address"))?;
    Ok(SocketAddr::new(ip, port))
}

/// A socket address's host (an IP address, or a name for DNS clusters) and port.
fn host_and_port(address: Option<&Address>) -> Result<(&str, u16), String> {
    let Some(address::Address::SocketAddress(socket)) = address.and_then(|a| a.address.as_ref())
    else {
        return Err("has no socket address".into());
    };
    let host = socket.address.as_str();
    let port = match socket.port_specifier {
        Some(PortSpecifier::PortValue(port)) => {
            u16::try_from(port).map_err(|_| format!("port {port} of {host} is out of range"))?
        }
        _ => return Err(format!("address {host} has no port number")),
    };
    Ok((host, port))
}

/// The cluster a filter chain's TCP proxy sends to. Only the TCP proxy is understood.
fn chain_cluster(chain: &FilterChain) -> Result<Arc<str>, String> {
    let chain_name = if chain.name.is_empty() {
        "(unnamed)"
    } else {
        chain.name.as_str()
    };
    let [only] = chain.filters.as_slice() else {
        return Err(format!(
            "filter chain {chain_name} has {} filters; this proxy runs exactly one `{TCP_PROXY}`",
            chain.filters.len()
        ));
    };
    if only.name != TCP_PROXY {
        return Err(format!(
            "filter chain {chain_name} uses `{}`; this proxy runs only `{TCP_PROXY}`",
            only.name
        ));
    }
    let Some(filter::ConfigType::TypedConfig(config)) = &only.config_type else {
        return Err(format!(
            "filter chain {chain_name}: the TCP proxy has no typed config"
        ));
    };
    if config.type_url != TcpProxy::type_url() {
        return Err(format!(
            "filter chain {chain_name}: the TCP proxy's config is a `{}`",
            config.type_url
        ));
    }
    let proxy = TcpProxy::decode(config.value.as_slice()).map_err(|error| {
        format!("filter chain {chain_name}: the TCP proxy's config cannot be decoded: {error}")
    })?;
    match proxy.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)) if !cluster.is_empty() => {
            Ok(cluster.into())
        }
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(_)) => Err(format!(
            "filter chain {chain_name}: weighted clusters are not supported"
        )),
        _ => Err(format!(
            "filter chain {chain_name}: the TCP proxy names no cluster"
        )),
    }
}

fn listener_role(listener: &Listener) -> Result<ListenerRole, String> {
    let address = socket_address(listener.address.as_ref())?;
    let bound = listener.bind_to_port.as_ref().is_none_or(|b| b.value);
    let original_destination = listener.use_original_dst.as_ref().is_some_and(|b| b.value);
    if listener.filter_chains.is_empty() {
        return Err("has no filter chains".into());
    }
    if !bound {
        // `<vip>_<port>`: reached through the outbound listener's original destination.
        let [chain] = listener.filter_chains.as_slice() else {
            return Err(format!(
                "a service listener needs one filter chain, not {}",
                listener.filter_chains.len()
            ));
        };
        let cluster = chain_cluster(chain)?;
        let istio = listener
            .metadata
            .as_ref()
            .and_then(|m| m.filter_metadata.get("istio"));
        let hostname = istio
            .and_then(|fields| struct_text(fields, "hostname"))
            .unwrap_or_default()
            .to_owned();
        let protocol = istio
            .and_then(|fields| struct_text(fields, "protocol"))
            .map_or(PortProtocol::Unknown, PortProtocol::from_metadata);
        let mut names: Vec<String> = istio
            .and_then(|fields| fields.fields.get("aliases"))
            .and_then(|value| match value.kind.as_ref()? {
                Kind::ListValue(list) => Some(
                    list.values
                        .iter()
                        .filter_map(|v| match v.kind.as_ref()? {
                            Kind::StringValue(text) => Some(text.to_ascii_lowercase()),
                            _ => None,
                        })
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default();
        if !hostname.is_empty() && !names.contains(&hostname) {
            names.push(hostname.to_ascii_lowercase());
        }
        return Ok(ListenerRole::OutboundService {
            destination: address,
            cluster: cluster.to_string(),
            service: OutboundService {
                hostname,
                cluster,
                protocol,
            },
            names,
        });
    }
    let has_server_names = listener.filter_chains.iter().any(|chain| {
        chain
            .filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.server_names.is_empty())
    });
    if has_server_names {
        let mut routes = SniRoutes::default();
        for chain in &listener.filter_chains {
            let cluster = chain_cluster(chain)?;
            let names = chain
                .filter_chain_match
                .as_ref()
                .map(|m| m.server_names.as_slice())
                .unwrap_or_default();
            if names.is_empty() {
                routes.any = Some(cluster.clone());
            }
            for name in names {
                routes
                    .by_name
                    .insert(name.to_ascii_lowercase(), cluster.clone());
            }
        }
        return Ok(ListenerRole::Router {
            port: address.port(),
            server_names: routes.by_name.len(),
            routes,
        });
    }
    if !original_destination {
        // A router listener whose every chain is a catch-all (a PASSTHROUGH server with `*`).
        let [chain] = listener.filter_chains.as_slice() else {
            return Err(
                "a listener without original destination or server names needs one filter chain"
                    .into(),
            );
        };
        return Ok(ListenerRole::Router {
            port: address.port(),
            routes: SniRoutes {
                any: Some(chain_cluster(chain)?),
                ..SniRoutes::default()
            },
            server_names: 0,
        });
    }
    let has_port_matches = listener.filter_chains.iter().any(|chain| {
        chain
            .filter_chain_match
            .as_ref()
            .is_some_and(|m| m.destination_port.is_some())
    });
    let inbound = listener.traffic_direction
        == envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32;
    if !inbound && !has_port_matches {
        let [chain] = listener.filter_chains.as_slice() else {
            return Err("the outbound catch-all listener needs one filter chain".into());
        };
        return Ok(ListenerRole::OutboundCatchAll {
            cluster: chain_cluster(chain)?.to_string(),
        });
    }
    let mut policy = InboundPolicy::default();
    for chain in &listener.filter_chains {
        let cluster = chain_cluster(chain)?;
        let matcher = chain.filter_chain_match.as_ref();
        let tls = chain.transport_socket.as_ref().is_some_and(is_tls);
        let transport = matcher.map_or("", |m| m.transport_protocol.as_str());
        if transport == "tls" && !tls {
            return Err(format!(
                "filter chain {} matches TLS but terminates none; this proxy does not pass TLS through inbound",
                chain.name
            ));
        }
        let entry = match matcher.and_then(|m| m.destination_port.as_ref()) {
            Some(port) => {
                let port = u16::try_from(port.value)
                    .map_err(|_| format!("filter chain {}: port out of range", chain.name))?;
                policy
                    .ports
                    .entry(port)
                    .or_insert_with(|| InboundPort::closed(cluster.clone()))
            }
            None => policy
                .other_ports
                .get_or_insert_with(|| InboundPort::closed(cluster.clone())),
        };
        if tls {
            entry.mtls = true;
        } else {
            entry.plaintext = true;
        }
    }
    let ports = policy
        .ports
        .iter()
        .map(|(port, p)| (*port, p.mode().to_owned()))
        .collect();
    Ok(ListenerRole::Inbound { policy, ports })
}

impl InboundPort {
    fn closed(cluster: Arc<str>) -> InboundPort {
        InboundPort {
            cluster,
            mtls: false,
            plaintext: false,
        }
    }

    /// The PeerAuthentication mode the chains amount to.
    pub fn mode(&self) -> &'static str {
        match (self.mtls, self.plaintext) {
            (true, true) => "PERMISSIVE",
            (true, false) => "STRICT",
            (false, _) => "DISABLE",
        }
    }
}

fn is_tls(socket: &TransportSocket) -> bool {
    socket.name == TLS_SOCKET
}

fn upstream_tls(socket: &TransportSocket) -> Result<UpstreamTls, String> {
    let Some(transport_socket::ConfigType::TypedConfig(config)) = &socket.config_type else {
        return Err("the TLS transport socket has no typed config".into());
    };
    let context = UpstreamTlsContext::decode(config.value.as_slice())
        .map_err(|error| format!("the upstream TLS context cannot be decoded: {error}"))?;
    let mut identities = Vec::new();
    if let Some(ValidationContextType::CombinedValidationContext(combined)) = context
        .common_tls_context
        .as_ref()
        .and_then(|c| c.validation_context_type.as_ref())
        && let Some(validation) = &combined.default_validation_context
    {
        for matcher in &validation.match_typed_subject_alt_names {
            if matcher.san_type != SanType::Uri as i32 {
                continue;
            }
            if let Some(MatchPattern::Exact(identity)) = matcher
                .matcher
                .as_ref()
                .and_then(|m| m.match_pattern.as_ref())
            {
                identities.push(identity.clone());
            }
        }
    }
    Ok(UpstreamTls {
        sni: context.sni,
        identities,
    })
}

fn upstream_cluster(cluster: &Cluster) -> Result<UpstreamCluster, String> {
    let kind = match cluster.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(kind)) => match DiscoveryType::try_from(kind) {
            Ok(DiscoveryType::Eds) => ClusterKind::Eds,
            Ok(DiscoveryType::Static) => ClusterKind::Static,
            Ok(DiscoveryType::OriginalDst) => ClusterKind::OriginalDestination,
            // A LOGICAL_DNS cluster (one address at a time) is served as STRICT_DNS (every
            // address): the same hosts, balanced instead of pinned.
            Ok(DiscoveryType::StrictDns | DiscoveryType::LogicalDns) => ClusterKind::Dns,
            Err(_) => return Err(format!("unknown discovery type {kind}")),
        },
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err("custom cluster types are not supported".into());
        }
        None => ClusterKind::Static,
    };
    let load_balancing = match LbPolicy::try_from(cluster.lb_policy) {
        Ok(LbPolicy::RoundRobin) => LoadBalancing::RoundRobin,
        Ok(LbPolicy::LeastRequest) => LoadBalancing::LeastRequest,
        Ok(LbPolicy::ClusterProvided) if kind == ClusterKind::OriginalDestination => {
            LoadBalancing::RoundRobin
        }
        Ok(other) => {
            return Err(format!(
                "load balancing policy {} is not supported (ROUND_ROBIN and LEAST_REQUEST are)",
                other.as_str_name()
            ));
        }
        Err(_) => {
            return Err(format!(
                "unknown load balancing policy {}",
                cluster.lb_policy
            ));
        }
    };
    let mut tls = None;
    for candidate in &cluster.transport_socket_matches {
        let istio_match = candidate
            .r#match
            .as_ref()
            .and_then(|m| struct_text(m, "tlsMode"))
            == Some("istio");
        if istio_match
            && let Some(socket) = candidate.transport_socket.as_ref().filter(|s| is_tls(s))
        {
            tls = Some(upstream_tls(socket)?);
        }
    }
    if let Some(socket) = cluster.transport_socket.as_ref().filter(|s| is_tls(s)) {
        tls = Some(upstream_tls(socket)?);
    }
    let endpoints = match (&cluster.load_assignment, kind) {
        (Some(assignment), ClusterKind::Static) => assignment_endpoints(assignment)?,
        _ => Vec::new(),
    };
    let dns = match kind {
        ClusterKind::Dns => Some(Arc::new(dns_resolution(cluster)?)),
        _ => None,
    };
    let connect_timeout = cluster
        .connect_timeout
        .as_ref()
        .and_then(|d| {
            let seconds = u64::try_from(d.seconds).ok()?;
            let nanos = u32::try_from(d.nanos).ok()?;
            Some(Duration::new(seconds, nanos))
        })
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    // Outbound clusters name their service (`istio.hostname`); a workload's inbound clusters
    // list the services behind the port (`istio.services`), the first naming it in metrics.
    let service = text_field(cluster.metadata.as_ref(), "istio", "hostname")
        .or_else(|| first_inbound_service(cluster.metadata.as_ref()))
        .map(str::to_owned);
    let protocol = text_field(cluster.metadata.as_ref(), "istio", "protocol")
        .map_or(PortProtocol::Unknown, PortProtocol::from_metadata);
    Ok(UpstreamCluster {
        name: cluster.name.as_str().into(),
        kind,
        load_balancing,
        connect_timeout,
        tls,
        service,
        protocol,
        endpoints: endpoints.into(),
        dns,
    })
}

/// Envoy's default `dns_refresh_rate`.
const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);

/// A STRICT_DNS cluster's names (its inline assignment) and refresh settings.
#[allow(deprecated)] // the fields istiod sends; see the discovery side.
fn dns_resolution(cluster: &Cluster) -> Result<DnsResolution, String> {
    let assignment = cluster
        .load_assignment
        .as_ref()
        .ok_or("a STRICT_DNS cluster needs a load_assignment naming the hosts to resolve")?;
    let mut targets = Vec::new();
    for lb_endpoint in assignment.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
        let Some(HostIdentifier::Endpoint(endpoint)) = &lb_endpoint.host_identifier else {
            return Err("an endpoint has no address (named endpoints are not supported)".into());
        };
        let (host, port) = host_and_port(endpoint.address.as_ref())
            .map_err(|problem| format!("endpoint {problem}"))?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return Err("an endpoint's socket address has no host name".into());
        }
        let endpoint = upstream_endpoint(lb_endpoint, SocketAddr::from(([0, 0, 0, 0], port)))?;
        targets.push(NamedEndpoint {
            host,
            port,
            endpoint,
        });
    }
    let refresh = cluster
        .dns_refresh_rate
        .as_ref()
        .and_then(|d| u64::try_from(d.seconds).ok())
        .filter(|seconds| *seconds > 0)
        .map_or(DEFAULT_DNS_REFRESH, Duration::from_secs);
    Ok(DnsResolution {
        targets,
        refresh,
        respect_ttl: cluster.respect_dns_ttl,
    })
}

/// One endpoint of an assignment at `address`: its weight, and Istio's metadata on it.
fn upstream_endpoint(
    lb_endpoint: &LbEndpoint,
    address: SocketAddr,
) -> Result<UpstreamEndpoint, String> {
    let weight = lb_endpoint
        .load_balancing_weight
        .as_ref()
        .map_or(1, |w| w.value);
    if weight == 0 {
        return Err(format!(
            "endpoint {address} has weight 0; weights start at 1"
        ));
    }
    let metadata = lb_endpoint.metadata.as_ref();
    let text = |key| {
        text_field(metadata, "istio", key)
            .unwrap_or_default()
            .to_owned()
    };
    let via_gateway = metadata
        .and_then(|m| m.filter_metadata.get("istio"))
        .and_then(|fields| fields.fields.get("gateway"))
        .is_some_and(|value| matches!(value.kind, Some(Kind::BoolValue(true))));
    Ok(UpstreamEndpoint {
        address,
        weight,
        mtls: text_field(metadata, "envoy.transport_socket_match", "tlsMode") == Some("istio"),
        via_gateway,
        cluster: text("cluster"),
        network: text("network"),
        identity: text_field(metadata, "istio", "identity").map(str::to_owned),
        workload: text_field(metadata, "istio", "workload")
            .and_then(super::EndpointWorkload::parse),
    })
}

fn assignment_endpoints(
    assignment: &ClusterLoadAssignment,
) -> Result<Vec<UpstreamEndpoint>, String> {
    let mut endpoints = Vec::new();
    for locality in &assignment.endpoints {
        for lb_endpoint in &locality.lb_endpoints {
            let health =
                HealthStatus::try_from(lb_endpoint.health_status).unwrap_or(HealthStatus::Unknown);
            if matches!(
                health,
                HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout
            ) {
                continue;
            }
            let Some(HostIdentifier::Endpoint(endpoint)) = &lb_endpoint.host_identifier else {
                return Err(
                    "an endpoint has no address (named endpoints are not supported)".into(),
                );
            };
            let address = socket_address(endpoint.address.as_ref())?;
            endpoints.push(upstream_endpoint(lb_endpoint, address)?);
        }
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_model::{
        ClusterService, Endpoint, EndpointPort, Locality, MeshSnapshot, NetworkGateway, Protocol,
        Service, ServiceEndpoints, ServicePort, TlsMode,
    };
    use causeway_xds::generate::{Generator, Wanted};
    use causeway_xds::proxy::{ProxyInfo, ProxyKind};
    use envoy_types::pb::envoy::config::listener::v3::FilterChainMatch;

    const FQDN: &str = "helloworld.sample.svc.cluster.local";

    fn endpoint(cluster: &str, network: &str, ip: &str) -> Endpoint {
        Endpoint {
            cluster: cluster.into(),
            network: network.into(),
            address: ip.parse().unwrap(),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 5000,
            }],
            locality: Locality::default(),
            identity: Some("spiffe://cluster.local/ns/sample/sa/helloworld".into()),
            labels: [("app".to_owned(), "helloworld".to_owned())].into(),
            ready: true,
            tls_mode: TlsMode::Istio,
            pod: None,
            weight: 1,
        }
    }

    /// helloworld in cluster01 (network1) and cluster02 (network2, behind a gateway).
    fn snapshot() -> Arc<MeshSnapshot> {
        let port = ServicePort {
            name: "http".into(),
            port: 5000,
            protocol: Protocol::Http,
        };
        let clusters: BTreeMap<_, _> = ["cluster01", "cluster02"]
            .into_iter()
            .zip(["10.96.0.20", "10.97.0.20"])
            .map(|(cluster, vip)| {
                (
                    cluster.to_owned(),
                    ClusterService {
                        cluster: cluster.into(),
                        cluster_ip: Some(vip.parse().unwrap()),
                        ports: vec![port.clone()],
                        selector: Some([("app".to_owned(), "helloworld".to_owned())].into()),
                        labels: BTreeMap::new(),
                        external_addresses: vec![],
                    },
                )
            })
            .collect();
        let service = Service {
            fqdn: FQDN.into(),
            name: "helloworld".into(),
            namespace: "sample".into(),
            ports: Service::merged_ports(&clusters),
            clusters,
            auto_vip: "240.240.0.1".parse().unwrap(),
            defined_by: causeway_model::DefinedBy::Kubernetes,
            dns_endpoints: Vec::new(),
            exported_to: None,
            passthrough: false,
        };
        let endpoints = ServiceEndpoints {
            endpoints: vec![
                endpoint("cluster01", "network1", "10.10.0.5"),
                endpoint("cluster02", "network2", "10.20.0.5"),
            ],
        };
        Arc::new(MeshSnapshot {
            domain_suffix: "cluster.local".into(),
            services: [(FQDN.to_owned(), Arc::new(service))].into(),
            endpoints: [(FQDN.to_owned(), Arc::new(endpoints))].into(),
            network_gateways: Arc::new(vec![NetworkGateway {
                network: "network2".into(),
                cluster: "cluster02".into(),
                address: "172.18.0.20".parse().unwrap(),
                port: 15443,
                service: "istio-system/istio-eastwestgateway".into(),
            }]),
            ..MeshSnapshot::default()
        })
    }

    /// The mesh of [`snapshot`] plus the ServiceEntry `spec` (of namespace `sample`), its first
    /// host at `auto_vip` unless it has an address.
    fn with_entry(spec: serde_json::Value, auto_vip: &str) -> Arc<MeshSnapshot> {
        let entry = causeway_model::ServiceEntry::from_spec("sample", "entry", &spec).unwrap();
        let host = entry.hosts[0].clone();
        let mut snapshot = (*snapshot()).clone();
        let service = entry.service(&host, "cluster01", auto_vip.parse().unwrap());
        snapshot.services.insert(host.clone(), Arc::new(service));
        let endpoints = entry.endpoints("cluster01", "cluster.local");
        if !endpoints.is_empty() {
            snapshot
                .endpoints
                .insert(host, Arc::new(ServiceEndpoints { endpoints }));
        }
        Arc::new(snapshot)
    }

    fn sidecar(ip: &str, labels: &[(&str, &str)]) -> ProxyInfo {
        ProxyInfo {
            id: format!("sidecar~{ip}~pod.sample~sample.svc.cluster.local"),
            kind: ProxyKind::Sidecar,
            cluster: "cluster01".into(),
            network: "network1".into(),
            namespace: Some("sample".into()),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ip: Some(ip.parse().unwrap()),
            requested_network_view: vec![],
            istio_version: String::new(),
        }
    }

    /// What discovery sends this proxy, as the proxy keeps it.
    fn received(snapshot: &Arc<MeshSnapshot>, proxy: &ProxyInfo) -> XdsResources {
        let generator = Generator::default();
        let mut resources = XdsResources::default();
        for type_url in [CLUSTER, LISTENER] {
            for resource in generator.generate(type_url, snapshot, proxy, Wanted::All) {
                resources
                    .apply(
                        type_url,
                        &resource.name,
                        &resource.version_text(),
                        &resource.any(),
                    )
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        assert!(!resources.warm(), "EDS clusters wait for their endpoints");
        let names: BTreeSet<Arc<str>> = resources
            .eds_cluster_names()
            .into_iter()
            .map(Arc::from)
            .collect();
        for resource in generator.generate(ENDPOINT, snapshot, proxy, Wanted::Named(&names)) {
            resources
                .apply(
                    ENDPOINT,
                    &resource.name,
                    &resource.version_text(),
                    &resource.any(),
                )
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(resources.warm());
        resources
    }

    #[test]
    fn a_static_entrys_endpoint_on_another_network_is_reached_through_its_gateway() {
        let snapshot = with_entry(
            serde_json::json!({
                "hosts": ["vm.sample.example"],
                "location": "MESH_INTERNAL",
                "ports": [{"name": "http", "number": 8000}],
                "resolution": "STATIC",
                "endpoints": [
                    {"address": "10.10.7.1", "network": "network1", "weight": 2},
                    {"address": "10.20.7.1", "network": "network2", "weight": 5},
                ],
            }),
            "240.240.0.8",
        );
        let config = received(&snapshot, &sidecar("10.10.0.9", &[])).build();
        let cluster = config.cluster("outbound|8000||vm.sample.example").unwrap();
        let seen: Vec<(String, u32, bool, bool)> = cluster
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.weight, e.mtls, e.via_gateway))
            .collect();
        assert_eq!(
            seen,
            [
                ("10.10.7.1:8000".to_owned(), 2, true, false),
                ("172.18.0.20:15443".to_owned(), 5, true, true)
            ]
        );
    }

    #[test]
    fn an_entry_exported_to_its_namespace_only_does_not_exist_elsewhere() {
        let host = "private.example";
        let snapshot = with_entry(
            serde_json::json!({
                "hosts": ["private.example"],
                "ports": [{"name": "http", "number": 8000}],
                "resolution": "STATIC",
                "exportTo": ["."],
                "endpoints": [{"address": "10.10.7.2"}],
            }),
            "240.240.0.9",
        );
        let vip: SocketAddr = "240.240.0.9:8000".parse().unwrap();
        let inside = received(&snapshot, &sidecar("10.10.0.9", &[])).build();
        assert!(inside.outbound_route(vip).is_some());
        assert!(inside.cluster("outbound|8000||private.example").is_some());
        assert!(inside.names.contains_key(host));
        let mut elsewhere = sidecar("10.10.0.10", &[]);
        elsewhere.namespace = Some("other".into());
        let outside = received(&snapshot, &elsewhere).build();
        assert!(outside.outbound_route(vip).is_none());
        assert!(outside.cluster("outbound|8000||private.example").is_none());
        assert!(
            !outside.names.contains_key(host),
            "its DNS proxy does not know the name"
        );
        assert!(
            outside
                .cluster("outbound|5000||helloworld.sample.svc.cluster.local")
                .is_some(),
            "other services are still there"
        );
    }

    #[test]
    fn a_resolution_none_entry_routes_its_address_to_the_original_destination() {
        let host = "db.example";
        let snapshot = with_entry(
            serde_json::json!({
                "hosts": ["db.example"],
                "addresses": ["10.40.0.9"],
                "ports": [{"name": "tcp", "number": 5432, "protocol": "TCP"}],
                "resolution": "NONE",
            }),
            "240.240.0.7",
        );
        let config = received(&snapshot, &sidecar("10.10.0.9", &[])).build();
        let route = config
            .outbound_route("10.40.0.9:5432".parse().unwrap())
            .expect("the entry's address is routed");
        assert_eq!(route.hostname, "db.example");
        assert_eq!(route.protocol, PortProtocol::Opaque);
        let cluster = config.cluster(&route.cluster).unwrap();
        assert_eq!(&*cluster.name, "outbound|5432||db.example");
        assert_eq!(cluster.kind, ClusterKind::OriginalDestination);
        assert!(cluster.tls.is_none());
        assert_eq!(
            config.names.get(host),
            Some(&vec!["10.40.0.9".parse().unwrap()])
        );
    }

    #[test]
    fn a_dns_service_entry_becomes_a_cluster_of_names_to_resolve() {
        let snapshot = with_entry(
            serde_json::json!({
                "hosts": ["httpbin.outside.example"],
                "location": "MESH_INTERNAL",
                "ports": [{"name": "http", "number": 8000, "targetPort": 80}],
                "resolution": "DNS",
                "endpoints": [
                    {"address": "httpbin.outside.svc.cluster.local", "weight": 3},
                    {"address": "10.30.0.7", "ports": {"http": 8080}},
                ],
            }),
            "240.240.0.7",
        );
        let config = received(&snapshot, &sidecar("10.10.0.9", &[])).build();
        let route = config
            .outbound_route("240.240.0.7:8000".parse().unwrap())
            .expect("the entry's address is routed");
        let cluster = config.cluster(&route.cluster).unwrap();
        assert_eq!(cluster.kind, ClusterKind::Dns);
        assert!(cluster.endpoints.is_empty(), "nothing resolved yet");
        let dns = cluster.dns.as_ref().expect("names to resolve");
        assert!(dns.respect_ttl);
        assert_eq!(dns.refresh, Duration::from_secs(60));
        let targets: Vec<(&str, u16, u32, bool)> = dns
            .targets
            .iter()
            .map(|t| (t.host.as_str(), t.port, t.endpoint.weight, t.endpoint.mtls))
            .collect();
        assert_eq!(
            targets,
            [
                ("httpbin.outside.svc.cluster.local", 80, 3, true),
                ("10.30.0.7", 8080, 1, true)
            ]
        );
        assert_eq!(
            cluster.tls.as_ref().map(|tls| tls.sni.as_str()),
            Some("outbound_.8000_._.httpbin.outside.example")
        );
    }

    #[test]
    fn a_sidecar_routes_service_vips_to_local_endpoints_and_the_remote_gateway_over_mtls() {
        let config = received(&snapshot(), &sidecar("10.10.0.9", &[("app", "sleep")])).build();
        let vip: SocketAddr = "10.96.0.20:5000".parse().unwrap();
        let route = config.outbound_route(vip).expect("the VIP is routed");
        assert_eq!(
            &*route.cluster,
            "outbound|5000||helloworld.sample.svc.cluster.local"
        );
        assert_eq!(route.protocol, PortProtocol::Http);
        assert!(
            config
                .outbound_route("10.97.0.20:5000".parse().unwrap())
                .is_none(),
            "another cluster's ClusterIP is not this proxy's VIP"
        );

        let cluster = config.cluster(&route.cluster).unwrap();
        assert_eq!(cluster.kind, ClusterKind::Eds);
        assert_eq!(cluster.load_balancing, LoadBalancing::RoundRobin);
        let tls = cluster.tls.as_ref().expect("Istio mTLS");
        assert_eq!(
            tls.sni,
            "outbound_.5000_._.helloworld.sample.svc.cluster.local"
        );
        assert_eq!(
            tls.identities,
            ["spiffe://cluster.local/ns/sample/sa/helloworld"]
        );
        let addresses: Vec<(String, bool, bool)> = cluster
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.mtls, e.via_gateway))
            .collect();
        assert_eq!(
            addresses,
            [
                ("10.10.0.5:5000".to_owned(), true, false),
                ("172.18.0.20:15443".to_owned(), true, true)
            ]
        );
        assert_eq!(cluster.endpoints[1].network, "network2");

        assert_eq!(
            config.outbound_fallback.as_deref(),
            Some("PassthroughCluster")
        );
        let passthrough = config.cluster("PassthroughCluster").unwrap();
        assert_eq!(passthrough.kind, ClusterKind::OriginalDestination);

        for name in [
            "helloworld",
            "helloworld.sample",
            "helloworld.sample.svc",
            "helloworld.sample.svc.cluster.local",
        ] {
            assert_eq!(
                config.names.get(name).map(Vec::as_slice),
                Some(&["10.96.0.20".parse::<IpAddr>().unwrap()][..]),
                "{name}"
            );
        }
    }

    #[test]
    fn a_workload_sidecar_accepts_mtls_and_plaintext_on_its_service_port() {
        let config = received(&snapshot(), &sidecar("10.10.0.5", &[("app", "helloworld")])).build();
        let port = config.inbound.for_port(5000).unwrap();
        assert_eq!(&*port.cluster, "inbound|5000||");
        assert_eq!(port.mode(), "PERMISSIVE");
        let other = config.inbound.for_port(8080).unwrap();
        assert_eq!(&*other.cluster, "InboundPassthroughCluster");
        let workload = config.cluster("inbound|5000||").unwrap();
        assert_eq!(workload.kind, ClusterKind::Static);
        assert_eq!(
            workload.endpoints[0].address,
            "10.10.0.5:5000".parse().unwrap()
        );
        // Discovery's `istio.services` names the service for the destination side's metrics.
        assert_eq!(
            workload.service.as_deref(),
            Some("helloworld.sample.svc.cluster.local")
        );
    }

    #[test]
    fn bad_resources_are_rejected_with_their_name_and_reason_and_the_previous_version_stays() {
        let snapshot = snapshot();
        let proxy = sidecar("10.10.0.9", &[]);
        let mut resources = received(&snapshot, &proxy);
        let before = resources.build();

        let mut listener = Listener {
            name: "10.96.0.20_5000".into(),
            ..Listener::default()
        };
        let error = resources
            .apply(LISTENER, &listener.name, "v2", &any(&listener))
            .unwrap_err();
        assert_eq!(error.kind, "LDS");
        assert!(
            error
                .to_string()
                .contains("`10.96.0.20_5000`: has no socket address"),
            "{error}"
        );

        listener.address = Some(envoy_types::pb::envoy::config::core::v3::Address {
            address: Some(address::Address::SocketAddress(
                envoy_types::pb::envoy::config::core::v3::SocketAddress {
                    address: "10.96.0.20".into(),
                    port_specifier: Some(PortSpecifier::PortValue(5000)),
                    ..Default::default()
                },
            )),
        });
        listener.filter_chains = vec![FilterChain {
            name: "http".into(),
            filter_chain_match: Some(FilterChainMatch::default()),
            filters: vec![envoy_types::pb::envoy::config::listener::v3::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: None,
            }],
            ..FilterChain::default()
        }];
        let error = resources
            .apply(LISTENER, &listener.name, "v2", &any(&listener))
            .unwrap_err();
        assert!(
            error
                .reason
                .contains("runs only `envoy.filters.network.tcp_proxy`"),
            "{error}"
        );

        let wrong_type = Any {
            type_url: CLUSTER.into(),
            value: vec![0xff, 0xff],
        };
        let error = resources
            .apply(CLUSTER, "x", "v2", &wrong_type)
            .unwrap_err();
        assert!(error.reason.starts_with("cannot be decoded"), "{error}");
        let misnamed = Cluster {
            name: "y".into(),
            ..Cluster::default()
        };
        let error = resources
            .apply(CLUSTER, "x", "v2", &any(&misnamed))
            .unwrap_err();
        assert_eq!(error.reason, "the resource inside is named `y`");
        let dns = Cluster {
            name: "dns".into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                DiscoveryType::StrictDns as i32,
            )),
            ..Cluster::default()
        };
        let error = resources
            .apply(CLUSTER, "dns", "v2", &any(&dns))
            .unwrap_err();
        assert!(
            error
                .reason
                .contains("STRICT_DNS cluster needs a load_assignment"),
            "{error}"
        );

        assert_eq!(resources.build(), before, "rejections change nothing");
    }

    #[test]
    fn least_request_is_taken_from_the_cluster_and_zero_weights_are_refused() {
        let mut cluster = causeway_xds_eds_cluster("outbound|80||a.b.svc.cluster.local");
        cluster.lb_policy = LbPolicy::LeastRequest as i32;
        let translated = upstream_cluster(&cluster).unwrap();
        assert_eq!(translated.load_balancing, LoadBalancing::LeastRequest);
        cluster.lb_policy = LbPolicy::Maglev as i32;
        assert!(upstream_cluster(&cluster).unwrap_err().contains("MAGLEV"));

        let generator = Generator::default();
        let snapshot = snapshot();
        let names: BTreeSet<Arc<str>> = [Arc::from(format!("outbound|5000||{FQDN}"))].into();
        let resource = generator
            .generate(
                ENDPOINT,
                &snapshot,
                &sidecar("10.10.0.9", &[]),
                Wanted::Named(&names),
            )
            .remove(0);
        let mut assignment: ClusterLoadAssignment =
            ClusterLoadAssignment::decode(resource.value()).unwrap();
        assignment.endpoints[0].lb_endpoints[0].load_balancing_weight =
            Some(envoy_types::pb::google::protobuf::UInt32Value { value: 0 });
        assert!(
            assignment_endpoints(&assignment)
                .unwrap_err()
                .contains("weight 0")
        );
        assignment.endpoints[0].lb_endpoints[0].load_balancing_weight =
            Some(envoy_types::pb::google::protobuf::UInt32Value { value: 3 });
        assert_eq!(assignment_endpoints(&assignment).unwrap()[0].weight, 3);
    }

    fn causeway_xds_eds_cluster(name: &str) -> Cluster {
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            ..Cluster::default()
        }
    }

    fn any<M: Message + Name>(message: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: message.encode_to_vec(),
        }
    }
}
