//! What the registry keeps of each Kubernetes object: only the fields the mesh uses, parsed once
//! when the watch delivers the object.

use causeway_model::{
    ClusterService, EndpointPort, GatewayServer, IstioGateway, MtlsMode, PeerAuthentication,
    Protocol, ServiceEntry, ServicePort, TlsRoute, WorkloadEntry,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const NETWORK_LABEL: &str = "topology.istio.io/network";
pub const GATEWAY_PORT_LABEL: &str = "networking.istio.io/gatewayPort";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
pub const LOCALITY_LABEL: &str = "istio-locality";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
const DEFAULT_GATEWAY_PORT: u16 = 15443;

/// `(namespace, name)`; cluster-scoped objects have an empty namespace.
pub type ObjectKey = (String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Pod,
    Namespace,
    Gateway,
    VirtualService,
    PeerAuthentication,
    ServiceEntry,
    WorkloadEntry,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::Gateway => "Gateway",
            Kind::VirtualService => "VirtualService",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Service(ServiceRecord),
    EndpointSlice(SliceRecord),
    Pod(PodRecord),
    Namespace(NamespaceRecord),
    Gateway(IstioGateway),
    VirtualService(VirtualServiceRecord),
    PeerAuthentication(PeerAuthentication),
    // Boxed: these are the largest records by far, and the rarest.
    ServiceEntry(Box<ServiceEntry>),
    WorkloadEntry(Box<WorkloadEntry>),
}

impl Record {
    pub fn key(&self) -> ObjectKey {
        match self {
            Record::Service(s) => (s.namespace.clone(), s.name.clone()),
            Record::EndpointSlice(s) => (s.namespace.clone(), s.name.clone()),
            Record::Pod(p) => (p.namespace.clone(), p.name.clone()),
            Record::Namespace(n) => (String::new(), n.name.clone()),
            Record::Gateway(g) => (g.namespace.clone(), g.name.clone()),
            Record::PeerAuthentication(p) => (p.namespace.clone(), p.name.clone()),
            Record::VirtualService(v) => (v.namespace.clone(), v.name.clone()),
            Record::ServiceEntry(e) => (e.namespace.clone(), e.name.clone()),
            Record::WorkloadEntry(e) => (e.namespace.clone(), e.name.clone()),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRecord {
    pub namespace: String,
    pub name: String,
    pub service: ClusterService,
    /// Set when the Service is a network gateway (`topology.istio.io/network`).
    pub gateway_of_network: Option<(String, u16)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SliceEndpoint {
    pub address: IpAddr,
    pub ready: bool,
    /// The pod's name when `targetRef` is a Pod.
    pub pod: Option<String>,
    pub zone: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SliceRecord {
    pub namespace: String,
    pub name: String,
    /// The Service this slice belongs to (`kubernetes.io/service-name`).
    pub service: String,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// `status.podIP`, once it has one (ServiceEntries that select the pod use it).
    pub ip: Option<IpAddr>,
    /// The pod's Ready condition.
    pub ready: bool,
}

/// The parts of a VirtualService the mesh uses today: its `tls` routes.
#[derive(Clone, Debug, PartialEq)]
pub struct VirtualServiceRecord {
    pub namespace: String,
    pub name: String,
    pub tls_routes: Vec<TlsRoute>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NamespaceRecord {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

fn name_of(meta: &kube::api::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

pub fn service_record(cluster: &str, object: &Service) -> ServiceRecord {
    let (namespace, name) = name_of(&object.metadata);
    let labels = object.metadata.labels.clone().unwrap_or_default();
    let spec = object.spec.clone().unwrap_or_default();
    let cluster_ip = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| *ip != "None")
        .and_then(|ip| ip.parse().ok());
    let ports = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|port| {
            let number = u16::try_from(port.port).ok()?;
            let name = port.name.unwrap_or_default();
            let transport = port.protocol.unwrap_or_else(|| "TCP".into());
            Some(ServicePort {
                protocol: Protocol::detect(port.app_protocol.as_deref(), &name, &transport),
                name,
                port: number,
            })
        })
        .collect();
    let mut external_addresses: Vec<IpAddr> = object
        .status
        .as_ref()
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ingress| ingress.ip.as_deref()?.parse().ok())
        .collect();
    external_addresses.extend(
        spec.external_ips
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| ip.parse::<IpAddr>().ok()),
    );
    let gateway_of_network = labels.get(NETWORK_LABEL).map(|network| {
        let port = labels
            .get(GATEWAY_PORT_LABEL)
            .and_then(|port| port.parse().ok())
            .unwrap_or(DEFAULT_GATEWAY_PORT);
        (network.clone(), port)
    });
    ServiceRecord {
        service: ClusterService {
            cluster: cluster.to_owned(),
            cluster_ip,
            ports,
            selector: spec.selector,
            labels,
            external_addresses,
        },
        gateway_of_network,
        namespace,
        name,
    }
}

/// `None` for slices the mesh cannot use: FQDN address types and slices of no Service.
pub fn slice_record(object: &EndpointSlice) -> Option<SliceRecord> {
    if !matches!(object.address_type.as_str(), "IPv4" | "IPv6") {
        return None;
    }
    let (namespace, name) = name_of(&object.metadata);
    let service = object
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    let ports = object
        .ports
        .iter()
        .flatten()
        .filter_map(|port| {
            Some(EndpointPort {
                name: port.name.clone().unwrap_or_default(),
                port: u16::try_from(port.port?).ok()?,
            })
        })
        .collect();
    let endpoints = object
        .endpoints
        .iter()
        .filter_map(|endpoint| {
            let address = endpoint.addresses.first()?.parse().ok()?;
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|target| target.kind.as_deref() == Some("Pod"))
                .and_then(|target| target.name.clone());
            Some(SliceEndpoint {
                address,
                // Kubernetes: a missing condition means ready.
                ready: endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true),
                pod,
                zone: endpoint.zone.clone(),
            })
        })
        .collect();
    Some(SliceRecord {
        namespace,
        name,
        service,
        ports,
        endpoints,
    })
}

pub fn pod_record(object: &Pod) -> PodRecord {
    let (namespace, name) = name_of(&object.metadata);
    let status = object.status.as_ref();
    PodRecord {
        namespace,
        name,
        labels: object.metadata.labels.clone().unwrap_or_default(),
        service_account: object
            .spec
            .as_ref()
            .and_then(|spec| spec.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        ip: status
            .and_then(|status| status.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok()),
        ready: status
            .and_then(|status| status.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|condition| condition.type_ == "Ready" && condition.status == "True"),
    }
}

pub fn namespace_record(object: &Namespace) -> NamespaceRecord {
    NamespaceRecord {
        name: object.metadata.name.clone().unwrap_or_default(),
        labels: object.metadata.labels.clone().unwrap_or_default(),
    }
}

/// A `networking.istio.io` Gateway. Malformed servers are skipped (with the reason logged): the
/// rest of the Gateway still applies, as in Istio's validation-free read path.
pub fn gateway_record(object: &DynamicObject) -> IstioGateway {
    let (namespace, name) = name_of(&object.metadata);
    let spec = object.data.get("spec");
    let selector = spec
        .and_then(|spec| spec.get("selector"))
        .and_then(|selector| serde_json::from_value(selector.clone()).ok())
        .unwrap_or_default();
    let servers = spec
        .and_then(|spec| spec.get("servers"))
        .and_then(|servers| servers.as_array())
        .into_iter()
        .flatten()
        .filter_map(|server| {
            let parsed = gateway_server(server);
            if parsed.is_none() {
                tracing::warn!(gateway = %format!("{namespace}/{name}"), %server, "skipping a Gateway server without a valid port.number");
            }
            parsed
        })
        .collect();
    IstioGateway {
        namespace,
        name,
        selector,
        servers,
    }
}

/// A ServiceEntry, or `None` (with a warning naming the bad field) for one that cannot be used,
/// as Istio's validation would have refused it. What it asks for that is not followed yet is
/// logged once per change.
pub fn service_entry_record(object: &DynamicObject) -> Option<ServiceEntry> {
    let (namespace, name) = name_of(&object.metadata);
    let spec = object.data.get("spec").cloned().unwrap_or_default();
    match ServiceEntry::from_spec(&namespace, &name, &spec) {
        Ok(entry) => {
            for unsupported in &entry.unsupported {
                tracing::warn!(entry = %format!("{namespace}/{name}"), "ServiceEntry: {unsupported}");
            }
            Some(entry)
        }
        Err(error) => {
            tracing::warn!(%error, "ServiceEntry ignored; fix it and apply it again");
            None
        }
    }
}

/// A WorkloadEntry, or `None` (with a warning naming the bad field) for one that cannot be used.
pub fn workload_entry_record(object: &DynamicObject) -> Option<WorkloadEntry> {
    let (namespace, name) = name_of(&object.metadata);
    let spec = object.data.get("spec").cloned().unwrap_or_default();
    WorkloadEntry::from_spec(&namespace, &name, &spec)
        .inspect_err(|error| {
            tracing::warn!(%error, "WorkloadEntry ignored; fix it and apply it again");
        })
        .ok()
}

/// A PeerAuthentication. An unknown mode is taken as UNSET (inherit) with a warning, as
/// Istio's validation would have refused it.
pub fn peer_authentication_record(object: &DynamicObject) -> PeerAuthentication {
    let (namespace, name) = name_of(&object.metadata);
    let spec = object.data.get("spec");
    let mode_of = |value: Option<&serde_json::Value>, what: &str| {
        let text = value
            .and_then(|mtls| mtls.get("mode"))
            .and_then(|mode| mode.as_str())
            .unwrap_or("UNSET");
        MtlsMode::parse(text).unwrap_or_else(|| {
            tracing::warn!(policy = %format!("{namespace}/{name}"), mode = text, what, "unknown mTLS mode (STRICT, PERMISSIVE, DISABLE, UNSET); taken as UNSET");
            MtlsMode::Unset
        })
    };
    let selector = spec
        .and_then(|spec| spec.get("selector"))
        .and_then(|selector| selector.get("matchLabels"))
        .and_then(|labels| serde_json::from_value(labels.clone()).ok());
    let mode = mode_of(spec.and_then(|spec| spec.get("mtls")), "mtls");
    let port_modes = spec
        .and_then(|spec| spec.get("portLevelMtls"))
        .and_then(|ports| ports.as_object())
        .into_iter()
        .flatten()
        .filter_map(|(port, mtls)| {
            let port = port.parse::<u16>().ok()?;
            Some((port, mode_of(Some(mtls), "portLevelMtls")))
        })
        .collect();
    PeerAuthentication {
        namespace,
        name,
        selector,
        mode,
        port_modes,
    }
}

/// One [`TlsRoute`] per `tls[].match[]` (or per `tls[]` without matches), to its first
/// destination. Entries without a destination host are skipped.
pub fn virtual_service_record(object: &DynamicObject) -> VirtualServiceRecord {
    let (namespace, name) = name_of(&object.metadata);
    let spec = object.data.get("spec");
    let strings = |value: Option<&serde_json::Value>| -> Vec<String> {
        value
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let port_of = |value: Option<&serde_json::Value>| {
        value
            .and_then(|v| v.as_u64())
            .and_then(|p| u16::try_from(p).ok())
    };
    let gateways = strings(spec.and_then(|s| s.get("gateways")));
    let mut tls_routes = Vec::new();
    for tls in spec
        .and_then(|s| s.get("tls"))
        .and_then(|t| t.as_array())
        .into_iter()
        .flatten()
    {
        let destination = tls
            .get("route")
            .and_then(|r| r.as_array())
            .and_then(|routes| routes.first())
            .and_then(|route| route.get("destination"));
        let Some(host) = destination
            .and_then(|d| d.get("host"))
            .and_then(|h| h.as_str())
        else {
            tracing::warn!(virtual_service = %format!("{namespace}/{name}"), "skipping a tls route without a destination host");
            continue;
        };
        let destination_port = port_of(
            destination
                .and_then(|d| d.get("port"))
                .and_then(|p| p.get("number")),
        );
        let matches: Vec<&serde_json::Value> = tls
            .get("match")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
            .collect();
        let matches = if matches.is_empty() {
            vec![&serde_json::Value::Null]
        } else {
            matches
        };
        for matched in matches {
            tls_routes.push(TlsRoute {
                namespace: namespace.clone(),
                name: name.clone(),
                gateways: gateways.clone(),
                port: port_of(matched.get("port")),
                sni_hosts: strings(matched.get("sniHosts")),
                destination_host: host.to_owned(),
                destination_port,
            });
        }
    }
    VirtualServiceRecord {
        namespace,
        name,
        tls_routes,
    }
}

fn gateway_server(server: &serde_json::Value) -> Option<GatewayServer> {
    let port = server.get("port")?;
    let text =
        |value: Option<&serde_json::Value>| value.and_then(|v| v.as_str()).map(str::to_owned);
    Some(GatewayServer {
        port: u16::try_from(port.get("number")?.as_u64()?).ok()?,
        port_name: text(port.get("name")).unwrap_or_default(),
        protocol: text(port.get("protocol"))
            .unwrap_or_default()
            .to_ascii_uppercase(),
        hosts: server
            .get("hosts")
            .and_then(|hosts| hosts.as_array())
            .into_iter()
            .flatten()
            .filter_map(|host| host.as_str().map(str::to_owned))
            .collect(),
        tls_mode: text(server.get("tls").and_then(|tls| tls.get("mode"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_gateway_service_is_recognised_with_its_port_and_addresses() {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system",
                         "labels": {"topology.istio.io/network": "network2"}},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.2.0.9",
                     "ports": [{"name": "tls", "port": 15443}, {"name": "status-port", "port": 15021}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "172.18.255.2"}]}}
        }))
        .unwrap();
        let record = service_record("cluster02", &service);
        assert_eq!(record.gateway_of_network, Some(("network2".into(), 15443)));
        assert_eq!(
            record.service.external_addresses,
            ["172.18.255.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(record.service.cluster_ip, Some("10.2.0.9".parse().unwrap()));
        assert_eq!(record.service.ports[0].protocol, Protocol::Tls);
    }

    #[test]
    fn a_headless_service_has_no_cluster_ip_and_gateway_port_can_be_overridden() {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "gw", "namespace": "istio-system",
                         "labels": {"topology.istio.io/network": "n", "networking.istio.io/gatewayPort": "16443"}},
            "spec": {"clusterIP": "None", "externalIPs": ["192.0.2.1"]}
        }))
        .unwrap();
        let record = service_record("c", &service);
        assert_eq!(record.service.cluster_ip, None);
        assert_eq!(record.gateway_of_network, Some(("n".into(), 16443)));
        assert_eq!(record.service.external_addresses.len(), 1);
    }

    #[test]
    fn slices_keep_readiness_pods_and_named_ports() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "helloworld-abcde", "namespace": "sample",
                         "labels": {"kubernetes.io/service-name": "helloworld"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 5000}],
            "endpoints": [
                {"addresses": ["10.10.0.5"], "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "name": "helloworld-v1-x"}},
                {"addresses": ["10.10.0.6"], "conditions": {"ready": false}},
                {"addresses": ["10.10.0.7"]},
                {"addresses": ["not-an-ip"]}
            ]
        }))
        .unwrap();
        let record = slice_record(&slice).unwrap();
        assert_eq!(record.service, "helloworld");
        assert_eq!(
            record.ports,
            [EndpointPort {
                name: "http".into(),
                port: 5000
            }]
        );
        let states: Vec<(bool, Option<&str>)> = record
            .endpoints
            .iter()
            .map(|e| (e.ready, e.pod.as_deref()))
            .collect();
        assert_eq!(
            states,
            [(true, Some("helloworld-v1-x")), (false, None), (true, None)]
        );
    }

    #[test]
    fn fqdn_slices_and_orphans_are_ignored() {
        let fqdn: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "n", "labels": {"kubernetes.io/service-name": "s"}},
            "addressType": "FQDN", "endpoints": []
        }))
        .unwrap();
        assert!(slice_record(&fqdn).is_none());
        let orphan: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "n"}, "addressType": "IPv4", "endpoints": []
        }))
        .unwrap();
        assert!(slice_record(&orphan).is_none());
    }

    #[test]
    fn expose_istiod_tls_routes_are_read() {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
            "metadata": {"name": "istiod-vs", "namespace": "istio-system"},
            "spec": {"hosts": ["*"], "gateways": ["istiod-gateway"],
                     "tls": [
                        {"match": [{"port": 15012, "sniHosts": ["*"]}],
                         "route": [{"destination": {"host": "istiod.istio-system.svc.cluster.local", "port": {"number": 15012}}}]},
                        {"match": [{"port": 15017, "sniHosts": ["*"]}],
                         "route": [{"destination": {"host": "istiod.istio-system.svc.cluster.local", "port": {"number": 443}}}]},
                        {"route": [{"destination": {}}]}
                     ]}
        }))
        .unwrap();
        let record = virtual_service_record(&object);
        assert_eq!(record.tls_routes.len(), 2);
        let webhook = &record.tls_routes[1];
        assert_eq!(
            (webhook.port, webhook.destination_port),
            (Some(15017), Some(443))
        );
        assert_eq!(webhook.gateways, ["istiod-gateway"]);
        assert_eq!(webhook.sni_hosts, ["*"]);
    }

    #[test]
    fn gateway_objects_keep_valid_servers() {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway",
            "metadata": {"name": "cross-network-gateway", "namespace": "istio-system"},
            "spec": {"selector": {"istio": "eastwestgateway"},
                     "servers": [
                        {"port": {"number": 15443, "name": "tls", "protocol": "TLS"},
                         "tls": {"mode": "AUTO_PASSTHROUGH"}, "hosts": ["*.local"]},
                        {"port": {"name": "broken"}, "hosts": ["*"]}
                     ]}
        }))
        .unwrap();
        let gateway = gateway_record(&object);
        assert_eq!(
            gateway.selector.get("istio").map(String::as_str),
            Some("eastwestgateway")
        );
        assert_eq!(gateway.servers.len(), 1);
        assert_eq!(
            gateway.servers[0].tls_mode.as_deref(),
            Some("AUTO_PASSTHROUGH")
        );
        assert_eq!(gateway.servers[0].hosts, ["*.local"]);
    }
}
