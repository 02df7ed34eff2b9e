//! Sidecars: outbound clusters per service port (EDS, Istio mTLS to endpoints labelled
//! `tlsMode=istio`), inbound clusters for the workload's own ports, and the listeners that map a
//! service VIP and port to its cluster (`virtualOutbound` on 15001, `virtualInbound` on 15006).

use super::ServiceResourceCache;
use super::common::{eds_cluster, tcp_proxy_filter};
use super::endpoints::dns_load_assignment;
use crate::envoy::{any, fields, list_value, metadata, seconds, socket_address, string_value};
use crate::proxy::ProxyInfo;
use crate::resources::{
    Resource, inbound_cluster, outbound_cluster, parse_service_name, sni_cluster,
};
use causeway_model::{MeshSnapshot, MtlsMode, Protocol, Service, ServicePort, WorkloadMtls};
use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{
        ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, LbPolicy, TransportSocketMatch,
    },
};
use envoy_types::pb::envoy::config::core::v3::{
    TrafficDirection, TransportSocket, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, FilterChainMatch, Listener, ListenerFilter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, UpstreamTlsContext,
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value, Value, value::Kind};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
/// Istio's mesh default `dnsRefreshRate`; records' TTLs shorten it.
const DNS_REFRESH_SECONDS: i64 = 60;
/// The SDS names Istio's proxies resolve locally: the workload certificate and the mesh roots.
const WORKLOAD_CERTIFICATE: &str = "default";
const ROOT_CERTIFICATES: &str = "ROOTCA";

/// The service ports a sidecar routes: everything but UDP.
pub fn routable_ports(service: &Service) -> impl Iterator<Item = &ServicePort> {
    service
        .ports
        .iter()
        .filter(|port| port.protocol != Protocol::Udp)
}

fn istio_tls_context(identities: &BTreeSet<&str>) -> CommonTlsContext {
    let sds = |name: &str| SdsSecretConfig {
        name: name.to_owned(),
        ..SdsSecretConfig::default()
    };
    let san_matchers = identities
        .iter()
        .map(|identity| SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact((*identity).to_owned())),
                ..StringMatcher::default()
            }),
            ..SubjectAltNameMatcher::default()
        })
        .collect();
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_CERTIFICATE)],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: san_matchers,
                    ..CertificateValidationContext::default()
                }),
                validation_context_sds_secret_config: Some(sds(ROOT_CERTIFICATES)),
                ..CombinedCertificateValidationContext::default()
            },
        )),
        alpn_protocols: vec!["istio-peer-exchange".into(), "istio".into()],
        ..CommonTlsContext::default()
    }
}

fn transport_socket<M: prost::Message + prost::Name>(name: &str, config: &M) -> TransportSocket {
    TransportSocket {
        name: name.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(config))),
    }
}

fn outbound_cluster_for(service: &Service, port: &ServicePort, snapshot: &MeshSnapshot) -> Cluster {
    let name = outbound_cluster(port.port, &service.fqdn);
    let service_metadata = metadata([(
        "istio",
        vec![
            ("hostname", string_value(&service.fqdn)),
            ("name", string_value(&service.name)),
            ("namespace", string_value(&service.namespace)),
            ("protocol", string_value(port.protocol.as_str())),
        ],
    )]);
    if service.passthrough {
        // `resolution: NONE`: Istio's ORIGINAL_DST cluster for the entry's port, named for it,
        // with no TLS to choose: connections go on as they were sent.
        return Cluster {
            metadata: Some(service_metadata),
            ..original_destination_cluster(&name)
        };
    }
    let identities: BTreeSet<&str> = snapshot
        .endpoints_of(&service.fqdn)
        .iter()
        .filter_map(|e| e.identity.as_deref())
        .collect();
    let upstream = UpstreamTlsContext {
        common_tls_context: Some(istio_tls_context(&identities)),
        // Gateways route on it; sidecars ignore it.
        sni: sni_cluster(port.port, &service.fqdn),
        ..UpstreamTlsContext::default()
    };
    let tls_mode = |mode: &str| Some(fields([("tlsMode", string_value(mode))]));
    let cluster = Cluster {
        transport_socket_matches: vec![
            TransportSocketMatch {
                name: "tlsMode-istio".into(),
                r#match: tls_mode("istio"),
                transport_socket: Some(transport_socket("envoy.transport_sockets.tls", &upstream)),
            },
            TransportSocketMatch {
                name: "tlsMode-disabled".into(),
                r#match: Some(fields([])),
                transport_socket: Some(transport_socket(
                    "envoy.transport_sockets.raw_buffer",
                    &RawBuffer {},
                )),
            },
        ],
        metadata: Some(service_metadata),
        ..eds_cluster(&name)
    };
    if service.dns_endpoints.is_empty() {
        return cluster;
    }
    // Istio's clusters for `resolution: DNS`: the proxy resolves the names itself, again when
    // their records expire. These fields are deprecated in favour of the `envoy.clusters.dns`
    // extension, but they are what istiod sends, so every proxy Istio ships reads them.
    #[allow(deprecated)]
    Cluster {
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)),
        eds_cluster_config: None,
        load_assignment: Some(dns_load_assignment(&name, service, &port.name)),
        dns_refresh_rate: Some(seconds(DNS_REFRESH_SECONDS)),
        respect_dns_ttl: true,
        dns_lookup_family: DnsLookupFamily::V4Only as i32,
        ..cluster
    }
}

/// The workload ports behind every service port the proxy's own workload serves, each with the
/// services that send traffic to it.
fn inbound_ports<'s>(
    snapshot: &'s MeshSnapshot,
    proxy: &'s ProxyInfo,
) -> BTreeMap<u16, Vec<&'s Service>> {
    let Some(namespace) = proxy.namespace.as_deref() else {
        return BTreeMap::new();
    };
    let mut ports: BTreeMap<u16, Vec<&Service>> = BTreeMap::new();
    for service in snapshot.services_selecting(&proxy.cluster, namespace, &proxy.labels) {
        let own_endpoint = snapshot
            .endpoints_of(&service.fqdn)
            .iter()
            .find(|e| e.cluster == proxy.cluster && Some(e.address) == proxy.ip);
        for port in routable_ports(service) {
            let target = own_endpoint
                .and_then(|e| e.port_for(&port.name))
                .unwrap_or(port.port);
            let services = ports.entry(target).or_default();
            if !services.iter().any(|s| s.fqdn == service.fqdn) {
                services.push(service);
            }
        }
    }
    ports
}

fn static_cluster(name: &str, address: Option<(IpAddr, u16)>) -> Cluster {
    let endpoints = address
        .map(|(ip, port)| LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket_address(ip, port)),
                    ..Endpoint::default()
                })),
                load_balancing_weight: Some(UInt32Value { value: 1 }),
                ..LbEndpoint::default()
            }],
            ..LocalityLbEndpoints::default()
        })
        .into_iter()
        .collect();
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(seconds(10)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints,
            ..ClusterLoadAssignment::default()
        }),
        ..Cluster::default()
    }
}

fn original_destination_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(seconds(10)),
        ..Cluster::default()
    }
}

/// Whether the shared cluster `resource` is for a service `proxy` must not see (`exportTo`).
pub fn hidden_from(snapshot: &MeshSnapshot, proxy: &ProxyInfo, resource: &Resource) -> bool {
    parse_service_name(&resource.name)
        .and_then(|(_, fqdn)| snapshot.services.get(fqdn))
        .is_some_and(|service| !service.visible_to(proxy.namespace.as_deref()))
}

/// The clusters every sidecar gets: one per service port, plus the passthrough and blackhole
/// clusters. The same for all sidecars of a snapshot (the generator shares one list; services
/// exported to some namespaces only are left out per proxy with [`hidden_from`]).
pub fn shared_clusters(
    snapshot: &MeshSnapshot,
    cache: &ServiceResourceCache,
) -> Vec<Arc<Resource>> {
    let mut resources = Vec::new();
    let mut cache = cache.lock();
    for service in snapshot.services.values() {
        let endpoints = snapshot.endpoints.get(&service.fqdn);
        for port in routable_ports(service) {
            let name = outbound_cluster(port.port, &service.fqdn);
            resources.push(cache.get_or_build(name.clone(), service, endpoints, || {
                Resource::new(name, &outbound_cluster_for(service, port, snapshot))
            }));
        }
    }
    drop(cache);
    for cluster in [
        original_destination_cluster(PASSTHROUGH_CLUSTER),
        original_destination_cluster(INBOUND_PASSTHROUGH_CLUSTER),
        static_cluster(BLACKHOLE_CLUSTER, None),
    ] {
        resources.push(Resource::new(cluster.name.clone(), &cluster));
    }
    resources
}

/// The proxy's own clusters: `inbound|<port>||` for each port its workload serves, with the
/// services behind it in `istio.services` (`host`, `name`, `namespace`), as Istio marks them
/// for the destination side's metrics.
pub fn workload_clusters(snapshot: &MeshSnapshot, proxy: &ProxyInfo) -> Vec<Arc<Resource>> {
    let workload = proxy.ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    inbound_ports(snapshot, proxy)
        .into_iter()
        .map(|(port, services)| {
            let mut cluster = static_cluster(&inbound_cluster(port), Some((workload, port)));
            let services = services.iter().map(|service| Value {
                kind: Some(Kind::StructValue(fields([
                    ("host", string_value(&service.fqdn)),
                    ("name", string_value(&service.name)),
                    ("namespace", string_value(&service.namespace)),
                ]))),
            });
            cluster.metadata = Some(metadata([(
                "istio",
                vec![("services", list_value(services))],
            )]));
            Resource::new(cluster.name.clone(), &cluster)
        })
        .collect()
}

fn unspecified() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..ListenerFilter::default()
    }
}

/// The filter chains of one port (or, with `port` `None`, of every other port) for its
/// PeerAuthentication mode: a TLS chain terminating mesh mTLS unless DISABLE, a plaintext chain
/// unless STRICT.
fn inbound_chains(port: Option<u16>, cluster: &str, mode: MtlsMode) -> Vec<FilterChain> {
    let downstream = DownstreamTlsContext {
        common_tls_context: Some(istio_tls_context(&BTreeSet::new())),
        require_client_certificate: Some(BoolValue { value: true }),
        ..DownstreamTlsContext::default()
    };
    let chain_match = |transport: &str| FilterChainMatch {
        destination_port: port.map(|port| UInt32Value {
            value: u32::from(port),
        }),
        transport_protocol: transport.to_owned(),
        ..FilterChainMatch::default()
    };
    let name = port.map_or_else(
        || "virtualInbound-catchall".to_owned(),
        |_| cluster.to_owned(),
    );
    let mut chains = Vec::new();
    if mode != MtlsMode::Disable {
        chains.push(FilterChain {
            name: format!("{name}-mtls"),
            filter_chain_match: Some(chain_match("tls")),
            filters: vec![tcp_proxy_filter(cluster)],
            transport_socket: Some(transport_socket("envoy.transport_sockets.tls", &downstream)),
            ..FilterChain::default()
        });
    }
    if mode != MtlsMode::Strict {
        chains.push(FilterChain {
            name: format!("{name}-plaintext"),
            filter_chain_match: Some(chain_match("")),
            filters: vec![tcp_proxy_filter(cluster)],
            ..FilterChain::default()
        });
    }
    chains
}

fn inbound_listener(ports: &BTreeSet<u16>, mtls: &WorkloadMtls) -> Listener {
    let mut chains = Vec::new();
    for port in ports {
        chains.extend(inbound_chains(
            Some(*port),
            &inbound_cluster(*port),
            mtls.for_port(*port),
        ));
    }
    // Ports with a port-level mode but no service still get their own chains.
    for (port, mode) in &mtls.ports {
        if !ports.contains(port) {
            chains.extend(inbound_chains(
                Some(*port),
                INBOUND_PASSTHROUGH_CLUSTER,
                *mode,
            ));
        }
    }
    chains.extend(inbound_chains(
        None,
        INBOUND_PASSTHROUGH_CLUSTER,
        mtls.default,
    ));
    Listener {
        name: "virtualInbound".into(),
        address: Some(socket_address(unspecified(), INBOUND_PORT)),
        traffic_direction: TrafficDirection::Inbound as i32,
        listener_filters: vec![tls_inspector()],
        filter_chains: chains,
        use_original_dst: Some(BoolValue { value: true }),
        ..Listener::default()
    }
}

/// The PeerAuthentication modes of the proxy's workload.
fn proxy_mtls(snapshot: &MeshSnapshot, proxy: &ProxyInfo) -> WorkloadMtls {
    causeway_model::workload_mtls(
        &snapshot.peer_authentications,
        &snapshot.root_namespace,
        proxy.namespace.as_deref().unwrap_or_default(),
        &proxy.labels,
    )
}

fn outbound_service_listener(
    service: &Service,
    port: &ServicePort,
    vip: IpAddr,
    proxy: &ProxyInfo,
) -> Listener {
    let aliases = service.host_aliases(proxy.namespace.as_deref());
    Listener {
        name: format!("{vip}_{}", port.port),
        address: Some(socket_address(vip, port.port)),
        traffic_direction: TrafficDirection::Outbound as i32,
        // Reached through virtualOutbound's original destination, never bound itself.
        bind_to_port: Some(BoolValue { value: false }),
        filter_chains: vec![FilterChain {
            filters: vec![tcp_proxy_filter(&outbound_cluster(
                port.port,
                &service.fqdn,
            ))],
            ..FilterChain::default()
        }],
        metadata: Some(metadata([(
            "istio",
            vec![
                ("hostname", string_value(&service.fqdn)),
                ("aliases", list_value(aliases.into_iter().map(string_value))),
                ("protocol", string_value(port.protocol.as_str())),
            ],
        )])),
        ..Listener::default()
    }
}

pub fn listeners(
    snapshot: &MeshSnapshot,
    proxy: &ProxyInfo,
    cache: &ServiceResourceCache,
) -> Vec<Arc<Resource>> {
    let outbound = Listener {
        name: "virtualOutbound".into(),
        address: Some(socket_address(unspecified(), OUTBOUND_PORT)),
        traffic_direction: TrafficDirection::Outbound as i32,
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: vec![FilterChain {
            name: "virtualOutbound-catchall-tcp".into(),
            filters: vec![tcp_proxy_filter(PASSTHROUGH_CLUSTER)],
            ..FilterChain::default()
        }],
        ..Listener::default()
    };
    let mut resources = vec![
        Resource::new(outbound.name.clone(), &outbound),
        Resource::new(
            "virtualInbound",
            &inbound_listener(
                &inbound_ports(snapshot, proxy).into_keys().collect(),
                &proxy_mtls(snapshot, proxy),
            ),
        ),
    ];
    let mut cache = cache.lock();
    let namespace = proxy.namespace.as_deref().unwrap_or_default();
    for service in snapshot.services.values() {
        let Some(vip) = service.vip_for(&proxy.cluster) else {
            continue;
        };
        if !service.visible_to(proxy.namespace.as_deref()) {
            continue;
        }
        for port in routable_ports(service) {
            let name = format!("{vip}_{}", port.port);
            // The address depends on the proxy's cluster, the aliases on its namespace.
            let key = format!("{name}|{}|{namespace}", proxy.cluster);
            resources.push(cache.get_or_build(key, service, None, || {
                Resource::new(name, &outbound_service_listener(service, port, vip, proxy))
            }));
        }
    }
    resources
}
