//! Istio's `ServiceEntry` (`networking.istio.io` v1, v1beta1, v1alpha3): services the mesh knows
//! from configuration instead of a cluster's Service objects, such as another mesh's service
//! behind its gateway (`httpbin.bar.global`) or an API outside the mesh.
//!
//! Each exact host becomes a mesh [`Service`] with the entry's ports. `MESH_INTERNAL` endpoints
//! are reached with Istio mTLS, `MESH_EXTERNAL` ones as they are. With `resolution: STATIC` the
//! entry's IP endpoints become the service's [`Endpoint`]s (with their `weight`, `network` and
//! `locality`, so ones on another network are reached through its gateway); with `resolution:
//! DNS` the proxies resolve the endpoints' names (or, without endpoints, the host itself) as
//! Envoy's STRICT_DNS clusters do ([`DnsEndpoint`]). The address a proxy sends the host's
//! traffic to (and its DNS proxy answers with) is the entry's first `addresses` entry, else one
//! allocated as for a service that exists only in another cluster.
//!
//! `exportTo` limits which namespaces' proxies see the entry's hosts (`.` is the entry's own
//! namespace, `*` every namespace, `~` none).
//!
//! `workloadSelector` makes the WorkloadEntries and pods of the entry's namespace with those
//! labels its endpoints (pods of every cluster).
//!
//! `resolution: NONE` with `addresses`: connections to the address keep their destination, named
//! after the entry in telemetry and access logs.
//!
//! A wildcard host (`*.example.com`) with an address is a service like an exact one: the DNS
//! proxy answers every name under it with the address.
//!
//! Not followed yet, and said so where they are read: wildcard hosts without an address, address
//! ranges, and
//! `resolution: NONE` without addresses (such traffic passes through to where the application
//! sent it, as to any unknown destination).

use crate::endpoint::{DnsEndpoint, Endpoint, EndpointPort, Locality, TlsMode};
use crate::service::{ClusterService, DefinedBy, Protocol, Service, ServicePort};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

/// `spec.location`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

/// `spec.resolution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
}

/// One of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryPort {
    pub port: ServicePort,
    /// `targetPort`: where endpoints listen when they do not say.
    pub target_port: Option<u16>,
}

/// Where an endpoint is: an IP address, or (with `resolution: DNS`) a name to resolve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum EntryAddress {
    Ip(IpAddr),
    Name(String),
}

/// One of `spec.endpoints` (a WorkloadEntry's spec).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryEndpoint {
    pub address: EntryAddress,
    /// Relative share of traffic; 1 when the entry leaves it out (or says 0, "unset").
    pub weight: u32,
    /// Port name to the endpoint's port.
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub network: String,
    pub locality: Locality,
    /// `serviceAccount`: the workload's identity is `spiffe://<trust domain>/ns/<ns>/sa/<it>`.
    pub service_account: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    /// Exact hosts and wildcards (`*.example.com`); see [`ServiceEntry::routed_hosts`].
    pub hosts: Vec<String>,
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<EntryPort>,
    pub location: Location,
    pub resolution: Resolution,
    pub endpoints: Vec<EntryEndpoint>,
    /// `workloadSelector.labels`: the entry's endpoints are the WorkloadEntries and pods of its
    /// namespace with these labels.
    pub workload_selector: Option<BTreeMap<String, String>>,
    /// `exportTo` with `.` resolved; `None`: every namespace.
    pub exported_to: Option<BTreeSet<String>>,
    /// What the entry asks for that is not followed yet, one sentence each.
    pub unsupported: Vec<String>,
}

/// A ServiceEntry that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ServiceEntry {namespace}/{name}: {field}: {problem}")]
pub struct ServiceEntryError {
    pub namespace: String,
    pub name: String,
    pub field: String,
    pub problem: String,
}

fn text<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}

fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn port_number(value: &Value) -> Option<u16> {
    value
        .as_u64()
        .and_then(|number| u16::try_from(number).ok())
        .filter(|number| *number > 0)
}

impl ServiceEntry {
    /// Reads `spec` of the ServiceEntry `namespace/name`; every problem names its field.
    pub fn from_spec(
        namespace: &str,
        name: &str,
        spec: &Value,
    ) -> Result<ServiceEntry, ServiceEntryError> {
        let fail = |field: &str, problem: String| ServiceEntryError {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            field: field.to_owned(),
            problem,
        };
        let mut unsupported = Vec::new();
        let mut hosts = Vec::new();
        let listed = spec.get("hosts").and_then(Value::as_array);
        for (index, host) in listed.into_iter().flatten().enumerate() {
            let Some(host) = host.as_str().filter(|host| !host.is_empty()) else {
                return Err(fail(
                    &format!("spec.hosts[{index}]"),
                    "must be a host name".into(),
                ));
            };
            let exact = host.strip_prefix("*.").unwrap_or(host);
            if host != "*" && (exact.contains('*') || !is_host_name(exact)) {
                return Err(fail(
                    &format!("spec.hosts[{index}]"),
                    format!("{host:?} is neither a host name nor a wildcard such as *.example.com"),
                ));
            }
            hosts.push(host.to_ascii_lowercase());
        }
        if listed.is_none_or(|hosts| hosts.is_empty()) {
            return Err(fail("spec.hosts", "at least one host is required".into()));
        }
        let mut addresses = Vec::new();
        for (index, address) in spec
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let text = address.as_str().unwrap_or_default();
            // A CIDR of one address is an address; wider ranges match no single VIP.
            let plain = text
                .strip_suffix("/32")
                .or_else(|| text.strip_suffix("/128"))
                .unwrap_or(text);
            match plain.parse::<IpAddr>() {
                Ok(address) => addresses.push(address),
                Err(_) if text.contains('/') => {
                    unsupported.push(format!("address range {text} is not matched yet"))
                }
                Err(_) => {
                    return Err(fail(
                        &format!("spec.addresses[{index}]"),
                        format!("{text:?} is not an IP address or CIDR"),
                    ));
                }
            }
        }
        let mut ports = Vec::new();
        for (index, port) in spec
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let field = format!("spec.ports[{index}]");
            let number = port.get("number").and_then(port_number).ok_or_else(|| {
                fail(
                    &format!("{field}.number"),
                    "must be a port (1-65535)".into(),
                )
            })?;
            let port_name = text(port, "name").unwrap_or_default().to_owned();
            if port_name.is_empty() {
                return Err(fail(
                    &format!("{field}.name"),
                    "every port needs a name".into(),
                ));
            }
            let protocol = Protocol::detect(text(port, "protocol"), &port_name, "TCP");
            let target_port = match port.get("targetPort") {
                None | Some(Value::Null) => None,
                Some(value) => Some(port_number(value).ok_or_else(|| {
                    fail(
                        &format!("{field}.targetPort"),
                        "must be a port (1-65535)".into(),
                    )
                })?),
            };
            ports.push(EntryPort {
                port: ServicePort {
                    name: port_name,
                    port: number,
                    protocol,
                },
                target_port,
            });
        }
        let location = match text(spec, "location").unwrap_or("MESH_EXTERNAL") {
            "MESH_EXTERNAL" => Location::MeshExternal,
            "MESH_INTERNAL" => Location::MeshInternal,
            other => {
                return Err(fail(
                    "spec.location",
                    format!("{other:?} is neither MESH_EXTERNAL nor MESH_INTERNAL"),
                ));
            }
        };
        let resolution = match text(spec, "resolution").unwrap_or("NONE") {
            "NONE" => Resolution::None,
            "STATIC" => Resolution::Static,
            "DNS" => Resolution::Dns,
            "DNS_ROUND_ROBIN" => Resolution::DnsRoundRobin,
            other => {
                return Err(fail(
                    "spec.resolution",
                    format!("{other:?} is none of NONE, STATIC, DNS, DNS_ROUND_ROBIN"),
                ));
            }
        };
        if resolution == Resolution::None
            && spec
                .get("endpoints")
                .and_then(Value::as_array)
                .is_some_and(|listed| !listed.is_empty())
        {
            return Err(fail(
                "spec.endpoints",
                "an entry with resolution NONE has no endpoints: connections go where they were sent".into(),
            ));
        }
        let mut endpoints = Vec::new();
        for (index, endpoint) in spec
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let names_allowed = matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin);
            match parse_workload(endpoint, &format!("spec.endpoints[{index}]"), names_allowed) {
                Ok(Workload::Usable(endpoint)) => endpoints.push(endpoint),
                Ok(Workload::Unsupported(sentence)) => unsupported.push(sentence),
                Err(FieldProblem { field, problem }) => return Err(fail(&field, problem)),
            }
        }
        let workload_selector = match spec.get("workloadSelector") {
            None | Some(Value::Null) => None,
            Some(selector) => {
                let labels = string_map(selector.get("labels"));
                if !endpoints.is_empty() {
                    return Err(fail(
                        "spec.workloadSelector",
                        "an entry lists endpoints or selects workloads, not both".into(),
                    ));
                }
                Some(labels)
            }
        };
        let mut exported_to = Some(BTreeSet::new());
        let listed = spec.get("exportTo").and_then(Value::as_array);
        for (index, to) in listed.into_iter().flatten().enumerate() {
            match to.as_str().unwrap_or_default() {
                "*" => exported_to = None,
                "~" => {}
                "." => {
                    if let Some(namespaces) = &mut exported_to {
                        namespaces.insert(namespace.to_owned());
                    }
                }
                other if is_host_name(other) && !other.contains('.') => {
                    if let Some(namespaces) = &mut exported_to {
                        namespaces.insert(other.to_ascii_lowercase());
                    }
                }
                other => {
                    return Err(fail(
                        &format!("spec.exportTo[{index}]"),
                        format!("{other:?} is none of `*`, `.`, `~` or a namespace name"),
                    ));
                }
            }
        }
        if listed.is_none_or(|listed| listed.is_empty()) {
            exported_to = None;
        }
        let wildcards = hosts.iter().filter(|host| host.starts_with('*'));
        for wildcard in wildcards {
            if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
                && endpoints.is_empty()
            {
                return Err(fail(
                    "spec.hosts",
                    format!(
                        "wildcard host {wildcard:?} cannot be resolved: with resolution DNS it needs endpoints"
                    ),
                ));
            }
            if addresses.is_empty() {
                unsupported.push(format!(
                    "wildcard host {wildcard:?} without an address: its traffic passes through as any unknown destination's"
                ));
            }
        }
        if resolution == Resolution::None && addresses.is_empty() {
            unsupported.push(
                "resolution NONE without addresses: its traffic passes through as any unknown destination's, without the entry's name".into(),
            );
        }
        Ok(ServiceEntry {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            hosts,
            addresses,
            ports,
            location,
            resolution,
            endpoints,
            workload_selector,
            exported_to,
            unsupported,
        })
    }

    /// Whether the entry defines mesh services: it does unless it has `resolution: NONE` and no
    /// address to recognise its traffic by (then the traffic passes through like any other).
    pub fn routed(&self) -> bool {
        !self.hosts.is_empty()
            && !self.ports.is_empty()
            && (self.resolution != Resolution::None || !self.addresses.is_empty())
    }

    /// The hosts that become mesh services: every exact one, and wildcards when the entry has an
    /// address to recognise their traffic by (proxies then answer DNS for any name under the
    /// wildcard with it). No host when the entry is not [`ServiceEntry::routed`].
    pub fn routed_hosts(&self) -> impl Iterator<Item = &String> {
        let routed = self.routed();
        self.hosts
            .iter()
            .filter(move |host| routed && (!host.starts_with('*') || !self.addresses.is_empty()))
    }

    /// The mesh service of `host`, defined in `cluster` (the config cluster), with `auto_vip`
    /// as its address unless the entry gives one.
    pub fn service(&self, host: &str, cluster: &str, auto_vip: Ipv4Addr) -> Service {
        let ports: Vec<ServicePort> = self.ports.iter().map(|port| port.port.clone()).collect();
        let address = self.addresses.first().copied();
        let auto_vip = match address {
            Some(IpAddr::V4(v4)) => v4,
            _ => auto_vip,
        };
        let local = ClusterService {
            cluster: cluster.to_owned(),
            cluster_ip: Some(address.unwrap_or(IpAddr::V4(auto_vip))),
            ports: ports.clone(),
            selector: None,
            labels: BTreeMap::new(),
            external_addresses: Vec::new(),
        };
        Service {
            fqdn: host.to_owned(),
            name: host.to_owned(),
            namespace: self.namespace.clone(),
            ports,
            clusters: [(cluster.to_owned(), local)].into(),
            auto_vip,
            defined_by: DefinedBy::ServiceEntry(self.location),
            dns_endpoints: self.dns_endpoints(host),
            exported_to: self.exported_to.clone(),
            passthrough: self.resolution == Resolution::None,
        }
    }

    /// How its endpoints are reached unless they say: mTLS inside the mesh, plain outside.
    pub fn tls_mode(&self) -> TlsMode {
        match self.location {
            Location::MeshInternal => TlsMode::Istio,
            Location::MeshExternal => TlsMode::Disabled,
        }
    }

    /// Each service port's name and the port `endpoint` (`None`: a selected pod) serves it on: the endpoint's own, else
    /// `targetPort`, else the service port.
    pub fn ports_for(&self, endpoint: Option<&EntryEndpoint>) -> Vec<EndpointPort> {
        self.ports
            .iter()
            .map(|port| EndpointPort {
                name: port.port.name.clone(),
                port: endpoint
                    .and_then(|endpoint| endpoint.ports.get(&port.port.name).copied())
                    .or(port.target_port)
                    .unwrap_or(port.port.port),
            })
            .collect()
    }

    /// What proxies resolve for `host` when the entry's resolution is DNS: its endpoints (IP
    /// ones included, as Envoy's STRICT_DNS takes them), or the host itself without endpoints.
    fn dns_endpoints(&self, host: &str) -> Vec<DnsEndpoint> {
        if !matches!(self.resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
            return Vec::new();
        }
        if self.endpoints.is_empty() {
            return vec![DnsEndpoint {
                host: host.to_owned(),
                ports: self.ports_for(None),
                weight: 1,
                locality: Locality::default(),
                network: String::new(),
                labels: BTreeMap::new(),
                tls_mode: self.tls_mode(),
            }];
        }
        self.endpoints
            .iter()
            .map(|endpoint| DnsEndpoint {
                host: match &endpoint.address {
                    EntryAddress::Ip(ip) => ip.to_string(),
                    EntryAddress::Name(name) => name.clone(),
                },
                ports: self.ports_for(Some(endpoint)),
                weight: endpoint.weight,
                locality: endpoint.locality.clone(),
                network: endpoint.network.clone(),
                labels: endpoint.labels.clone(),
                tls_mode: self.tls_mode(),
            })
            .collect()
    }

    /// The IP endpoints it lists, for every host of the entry, as seen from `cluster` (the
    /// config cluster); none when the entry's resolution is DNS (see
    /// [`Service::dns_endpoints`]). Selected workloads come from [`ServiceEntry::selects`].
    pub fn endpoints(&self, cluster: &str, trust_domain: &str) -> Vec<Endpoint> {
        if matches!(self.resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
            return Vec::new();
        }
        self.endpoints
            .iter()
            .filter_map(|endpoint| self.workload_endpoint(endpoint, cluster, trust_domain))
            .collect()
    }

    /// Whether a workload of `namespace` with `labels` is one of the entry's endpoints by its
    /// `workloadSelector` (which picks from the entry's own namespace only).
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.workload_selector.as_ref().is_some_and(|selector| {
            namespace == self.namespace
                && selector
                    .iter()
                    .all(|(key, value)| labels.get(key) == Some(value))
        })
    }

    /// `workload` (a listed endpoint or a selected WorkloadEntry, of the entry's namespace) as
    /// an endpoint of the entry; `None` for a name, which only DNS resolution uses. A
    /// `security.istio.io/tlsMode` label overrides what the entry's location implies.
    pub fn workload_endpoint(
        &self,
        workload: &EntryEndpoint,
        cluster: &str,
        trust_domain: &str,
    ) -> Option<Endpoint> {
        let EntryAddress::Ip(address) = workload.address else {
            return None;
        };
        let tls_mode = match workload.labels.get(TLS_MODE_LABEL) {
            Some(mode) => TlsMode::from_label(Some(mode)),
            None => self.tls_mode(),
        };
        Some(Endpoint {
            cluster: cluster.to_owned(),
            network: workload.network.clone(),
            address,
            ports: self.ports_for(Some(workload)),
            locality: workload.locality.clone(),
            identity: workload.service_account.as_ref().map(|account| {
                format!("spiffe://{trust_domain}/ns/{}/sa/{account}", self.namespace)
            }),
            labels: workload.labels.clone(),
            ready: true,
            tls_mode,
            pod: None,
            weight: workload.weight,
        })
    }
}

const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// A workload's address, ports, labels, network, locality, weight and service account: a
/// ServiceEntry endpoint or a WorkloadEntry's spec (the same message in Istio's API).
pub(crate) enum Workload {
    Usable(EntryEndpoint),
    /// Valid, but not something the mesh can use; the sentence says why.
    Unsupported(String),
}

/// What is wrong, and in which field.
pub(crate) struct FieldProblem {
    pub field: String,
    pub problem: String,
}

/// Reads one workload at `field`; `names_allowed`: its address may be a host name (DNS).
pub(crate) fn parse_workload(
    value: &Value,
    field: &str,
    names_allowed: bool,
) -> Result<Workload, FieldProblem> {
    let fail = |suffix: &str, problem: String| FieldProblem {
        field: format!("{field}.{suffix}"),
        problem,
    };
    let text_address = text(value, "address").unwrap_or_default();
    let address = if let Ok(ip) = text_address.parse::<IpAddr>() {
        EntryAddress::Ip(ip)
    } else if text_address.is_empty() {
        return Err(fail("address", "is required".into()));
    } else if text_address.starts_with("unix://") {
        return Ok(Workload::Unsupported(format!(
            "endpoint {text_address:?}: Unix domain socket endpoints are not used"
        )));
    } else if names_allowed {
        if !is_host_name(text_address) {
            return Err(fail(
                "address",
                format!("{text_address:?} is neither an IP address nor a host name"),
            ));
        }
        EntryAddress::Name(text_address.to_ascii_lowercase())
    } else {
        return Err(fail(
            "address",
            format!(
                "{text_address:?} is not an IP address; endpoints given by name need `resolution: DNS`"
            ),
        ));
    };
    let mut ports = BTreeMap::new();
    if let Some(map) = value.get("ports").and_then(Value::as_object) {
        for (port_name, number) in map {
            let number = port_number(number).ok_or_else(|| {
                fail(
                    &format!("ports.{port_name}"),
                    "must be a port (1-65535)".into(),
                )
            })?;
            ports.insert(port_name.clone(), number);
        }
    }
    let weight = match value.get("weight") {
        None | Some(Value::Null) => 1,
        Some(weight) => weight
            .as_u64()
            .and_then(|weight| u32::try_from(weight).ok())
            .ok_or_else(|| {
                fail(
                    "weight",
                    format!("{weight} is not a weight (0 to 4294967295)"),
                )
            })?
            .max(1),
    };
    Ok(Workload::Usable(EntryEndpoint {
        address,
        weight,
        ports,
        labels: string_map(value.get("labels")),
        network: text(value, "network").unwrap_or_default().to_owned(),
        locality: Locality::parse(text(value, "locality").unwrap_or_default()),
        service_account: text(value, "serviceAccount")
            .filter(|account| !account.is_empty())
            .map(str::to_owned),
    }))
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn is_host_name(text: &str) -> bool {
    let text = text.strip_suffix('.').unwrap_or(text);
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Seed 002's entry: cluster2's service behind its gateway, from cluster1.
    fn seed_entry() -> Value {
        json!({
            "hosts": ["httpbin.bar.global"],
            "location": "MESH_INTERNAL",
            "ports": [{"name": "http1", "number": 8000, "protocol": "http"}],
            "resolution": "DNS",
            "addresses": ["240.0.0.2"],
            "endpoints": [{"address": "172.18.12.0", "ports": {"http1": 15443}}],
        })
    }

    #[test]
    fn the_seeds_entry_becomes_a_service_behind_the_other_clusters_gateway() {
        let entry = ServiceEntry::from_spec("foo", "httpbin-bar", &seed_entry()).unwrap();
        assert!(entry.routed());
        assert!(entry.unsupported.is_empty(), "{:?}", entry.unsupported);
        let service = entry.service(
            "httpbin.bar.global",
            "cluster01",
            Ipv4Addr::new(240, 240, 0, 9),
        );
        assert_eq!(service.fqdn, "httpbin.bar.global");
        assert_eq!(
            service.vip_for("cluster01"),
            Some("240.0.0.2".parse().unwrap())
        );
        assert_eq!(
            service.vip_for("cluster02"),
            Some("240.0.0.2".parse().unwrap())
        );
        assert_eq!(service.host_aliases(Some("foo")), ["httpbin.bar.global"]);
        assert_eq!(service.ports[0].protocol, Protocol::Http);
        // `resolution: DNS` with an IP endpoint: a STRICT_DNS cluster of that address, as Istio
        // makes it.
        assert!(entry.endpoints("cluster01", "cluster.local").is_empty());
        let endpoints = &service.dns_endpoints;
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].host, "172.18.12.0");
        assert_eq!(endpoints[0].port_for("http1"), Some(15443));
        assert_eq!(endpoints[0].tls_mode, TlsMode::Istio);
        assert_eq!(endpoints[0].network, "", "reachable from every network");
    }

    #[test]
    fn external_entries_are_plaintext_and_get_an_allocated_address_without_one() {
        let entry = ServiceEntry::from_spec(
            "sample",
            "plain",
            &json!({
                "hosts": ["httpbin.external.example", "*.example"],
                "ports": [{"name": "http", "number": 8000, "targetPort": 80}],
                "resolution": "STATIC",
                "endpoints": [{"address": "10.10.0.9"}, {"address": "10.10.0.10", "ports": {"http": 8080}, "network": "network1"}],
            }),
        )
        .unwrap();
        assert_eq!(entry.location, Location::MeshExternal);
        assert_eq!(entry.hosts, ["httpbin.external.example", "*.example"]);
        let routed: Vec<&String> = entry.routed_hosts().collect();
        assert_eq!(
            routed,
            ["httpbin.external.example"],
            "no address for the wildcard"
        );
        assert_eq!(entry.unsupported.len(), 1, "{:?}", entry.unsupported);
        assert!(entry.unsupported[0].contains("wildcard host \"*.example\" without an address"));
        let service = entry.service(
            "httpbin.external.example",
            "cluster01",
            Ipv4Addr::new(240, 240, 0, 3),
        );
        assert_eq!(
            service.vip_for("cluster01"),
            Some("240.240.0.3".parse().unwrap())
        );
        assert_eq!(
            service.defined_by,
            DefinedBy::ServiceEntry(Location::MeshExternal)
        );
        let ports: Vec<Option<u16>> = entry
            .endpoints("cluster01", "cluster.local")
            .iter()
            .map(|endpoint| endpoint.port_for("http"))
            .collect();
        assert_eq!(
            ports,
            [Some(80), Some(8080)],
            "targetPort, then the endpoint's own"
        );
        assert!(
            entry
                .endpoints("cluster01", "cluster.local")
                .iter()
                .all(|e| e.tls_mode == TlsMode::Disabled)
        );
    }

    #[test]
    fn what_is_not_followed_is_named_and_bad_fields_are_refused() {
        let partly = ServiceEntry::from_spec(
            "sample",
            "partly",
            &json!({
                "hosts": ["api.example.com", "*.example.com"], "ports": [{"name": "https", "number": 443}],
                "resolution": "NONE", "exportTo": ["."], "addresses": ["10.0.0.0/24"],
            }),
        )
        .unwrap();
        assert!(!partly.routed());
        let socket = ServiceEntry::from_spec(
            "sample",
            "socket",
            &json!({
                "hosts": ["api.example.com"], "ports": [{"name": "https", "number": 443}],
                "resolution": "STATIC", "endpoints": [{"address": "unix:///var/run/api.sock"}],
            }),
        )
        .unwrap();
        let said = [partly.unsupported, socket.unsupported].concat().join("\n");
        for words in [
            "resolution NONE without addresses",
            "address range 10.0.0.0/24",
            "wildcard host \"*.example.com\" without an address",
            "Unix domain socket",
        ] {
            assert!(said.contains(words), "{words}: {said}");
        }
        let cases = [
            (
                json!({"ports": [{"name": "http", "number": 80}]}),
                "spec.hosts: at least one host",
            ),
            (
                json!({"hosts": ["a"], "ports": [{"name": "http", "number": 0}]}),
                "spec.ports[0].number",
            ),
            (
                json!({"hosts": ["a"], "ports": [{"number": 80}]}),
                "spec.ports[0].name",
            ),
            (
                json!({"hosts": ["a"], "location": "INSIDE"}),
                "spec.location: \"INSIDE\"",
            ),
            (
                json!({"hosts": ["a"], "resolution": "MAGIC"}),
                "spec.resolution: \"MAGIC\"",
            ),
            (
                json!({"hosts": ["a"], "addresses": ["two"]}),
                "spec.addresses[0]: \"two\"",
            ),
            (
                json!({"hosts": ["a"], "resolution": "STATIC", "endpoints": [{"ports": {"http": 80}}]}),
                "spec.endpoints[0].address",
            ),
            (
                json!({"hosts": ["a"], "resolution": "STATIC", "endpoints": [{"address": "10.0.0.1", "ports": {"http": 99999}}]}),
                "spec.endpoints[0].ports.http",
            ),
            (
                json!({"hosts": ["a"], "resolution": "STATIC", "endpoints": [{"address": "api.example.com"}]}),
                "spec.endpoints[0].address: \"api.example.com\" is not an IP address; endpoints given by name need `resolution: DNS`",
            ),
            (
                json!({"hosts": ["a"], "resolution": "DNS", "endpoints": [{"address": "bad name!"}]}),
                "spec.endpoints[0].address: \"bad name!\" is neither",
            ),
            (
                json!({"hosts": ["a"], "resolution": "NONE", "endpoints": [{"address": "10.0.0.1"}]}),
                "spec.endpoints: an entry with resolution NONE has no endpoints",
            ),
            (
                json!({"hosts": ["a.*.example"]}),
                "spec.hosts[0]: \"a.*.example\" is neither a host name nor a wildcard",
            ),
            (
                json!({"hosts": ["*.example"], "resolution": "DNS"}),
                "wildcard host \"*.example\" cannot be resolved",
            ),
            (
                json!({"hosts": ["a"], "exportTo": ["team a"]}),
                "spec.exportTo[0]: \"team a\" is none of",
            ),
            (
                json!({"hosts": ["a"], "resolution": "STATIC", "endpoints": [{"address": "10.0.0.1", "weight": -2}]}),
                "spec.endpoints[0].weight: -2 is not a weight",
            ),
        ];
        for (spec, message) in cases {
            let error = ServiceEntry::from_spec("ns", "bad", &spec)
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("ServiceEntry ns/bad: "), "{error}");
            assert!(error.contains(message), "{message}: {error}");
        }
    }

    #[test]
    fn dns_entries_leave_resolution_to_the_proxies() {
        let entry = ServiceEntry::from_spec(
            "sample",
            "by-name",
            &json!({
                "hosts": ["api.outside.example", "other.outside.example"],
                "ports": [{"name": "http", "number": 8000, "targetPort": 80}],
                "resolution": "DNS",
                "location": "MESH_INTERNAL",
                "endpoints": [
                    {"address": "HTTPBIN.outside.svc.cluster.local", "weight": 3, "locality": "r1/z1"},
                    {"address": "10.10.0.9", "ports": {"http": 8080}},
                ],
            }),
        )
        .unwrap();
        assert!(entry.unsupported.is_empty(), "{:?}", entry.unsupported);
        assert!(
            entry.endpoints("cluster01", "cluster.local").is_empty(),
            "no IP endpoints of its own"
        );
        let service = entry.service(
            "api.outside.example",
            "cluster01",
            Ipv4Addr::new(240, 240, 0, 4),
        );
        let found: Vec<(&str, Option<u16>, u32, TlsMode)> = service
            .dns_endpoints
            .iter()
            .map(|e| (e.host.as_str(), e.port_for("http"), e.weight, e.tls_mode))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "httpbin.outside.svc.cluster.local",
                    Some(80),
                    3,
                    TlsMode::Istio
                ),
                ("10.10.0.9", Some(8080), 1, TlsMode::Istio),
            ]
        );
        assert_eq!(service.dns_endpoints[0].locality, Locality::parse("r1/z1"));

        // Without endpoints each host resolves itself.
        let alone = ServiceEntry::from_spec(
            "sample",
            "alone",
            &json!({"hosts": ["a.example", "b.example"], "ports": [{"name": "tls", "number": 443}], "resolution": "DNS"}),
        )
        .unwrap();
        let service = alone.service("b.example", "cluster01", Ipv4Addr::new(240, 240, 0, 5));
        assert_eq!(service.dns_endpoints.len(), 1);
        assert_eq!(service.dns_endpoints[0].host, "b.example");
        assert_eq!(service.dns_endpoints[0].port_for("tls"), Some(443));
        assert_eq!(service.dns_endpoints[0].tls_mode, TlsMode::Disabled);
    }

    #[test]
    fn static_endpoints_keep_their_weight_and_unset_means_one() {
        let entry = ServiceEntry::from_spec(
            "sample",
            "weighted",
            &json!({
                "hosts": ["w.example"], "ports": [{"name": "http", "number": 80}], "resolution": "STATIC",
                "endpoints": [{"address": "10.0.0.1", "weight": 9}, {"address": "10.0.0.2", "weight": 0}, {"address": "10.0.0.3"}],
            }),
        )
        .unwrap();
        let weights: Vec<u32> = entry
            .endpoints("c1", "cluster.local")
            .iter()
            .map(|e| e.weight)
            .collect();
        assert_eq!(weights, [9, 1, 1]);
        let service = entry.service("w.example", "c1", Ipv4Addr::new(240, 240, 0, 6));
        assert!(service.dns_endpoints.is_empty());
    }

    #[test]
    fn export_to_names_the_namespaces_whose_proxies_see_the_entry() {
        /// Which client namespaces (`None`: a proxy without one) see the entry.
        type Seen<'a> = &'a [(Option<&'a str>, bool)];
        let table: [(Value, Seen); 5] = [
            (
                json!(null),
                &[(Some("foo"), true), (Some("bar"), true), (None, true)],
            ),
            (json!(["*"]), &[(Some("bar"), true)]),
            (
                json!(["."]),
                &[(Some("foo"), true), (Some("bar"), false), (None, false)],
            ),
            (
                json!([".", "bar"]),
                &[
                    (Some("foo"), true),
                    (Some("bar"), true),
                    (Some("baz"), false),
                ],
            ),
            (json!(["~"]), &[(Some("foo"), false), (Some("bar"), false)]),
        ];
        for (export_to, expected) in table {
            let mut spec = json!({"hosts": ["e.example"], "ports": [{"name": "http", "number": 80}], "resolution": "STATIC"});
            if !export_to.is_null() {
                spec["exportTo"] = export_to.clone();
            }
            let entry = ServiceEntry::from_spec("foo", "e", &spec).unwrap();
            assert!(entry.unsupported.is_empty(), "{:?}", entry.unsupported);
            let service = entry.service("e.example", "c1", Ipv4Addr::new(240, 240, 0, 1));
            for (namespace, visible) in expected {
                assert_eq!(
                    service.visible_to(*namespace),
                    *visible,
                    "{export_to} to {namespace:?}"
                );
            }
        }
    }

    #[test]
    fn resolution_none_with_an_address_names_traffic_that_keeps_its_destination() {
        let entry = ServiceEntry::from_spec(
            "sample",
            "db",
            &json!({"hosts": ["db.example"], "addresses": ["10.40.0.9/32"], "resolution": "NONE",
                    "ports": [{"name": "tcp", "number": 5432, "protocol": "TCP"}]}),
        )
        .unwrap();
        assert!(entry.routed());
        assert!(entry.unsupported.is_empty(), "{:?}", entry.unsupported);
        let service = entry.service("db.example", "c1", Ipv4Addr::new(240, 240, 0, 2));
        assert!(service.passthrough);
        assert_eq!(service.vip_for("c1"), Some("10.40.0.9".parse().unwrap()));
        assert!(entry.endpoints("c1", "cluster.local").is_empty());
        assert!(service.dns_endpoints.is_empty());
    }

    #[test]
    fn a_wildcard_with_an_address_is_routed_like_an_exact_host() {
        let entry = ServiceEntry::from_spec(
            "sample",
            "apis",
            &json!({"hosts": ["*.apis.example"], "addresses": ["240.0.0.20"], "resolution": "NONE",
                    "ports": [{"name": "https", "number": 443, "protocol": "TLS"}]}),
        )
        .unwrap();
        assert!(entry.unsupported.is_empty(), "{:?}", entry.unsupported);
        let routed: Vec<&String> = entry.routed_hosts().collect();
        assert_eq!(routed, ["*.apis.example"]);
        let service = entry.service("*.apis.example", "c1", Ipv4Addr::new(240, 240, 0, 2));
        assert_eq!(service.vip_for("c1"), Some("240.0.0.20".parse().unwrap()));
        assert_eq!(service.host_aliases(Some("sample")), ["*.apis.example"]);
    }
}
