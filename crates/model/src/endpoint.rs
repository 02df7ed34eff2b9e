//! Workload endpoints of a service in one cluster.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// `region/zone/subzone`, from the pod's `istio-locality` label or the
/// `topology.kubernetes.io/{region,zone}` labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// Parses Istio's `region.zone.subzone` label value (also accepted with `/`).
    pub fn parse(text: &str) -> Locality {
        let mut parts = text.split(['.', '/']).map(str::to_owned);
        Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }
}

/// Whether the endpoint's proxy accepts Istio mutual TLS (`security.istio.io/tlsMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TlsMode {
    Istio,
    Disabled,
}

impl TlsMode {
    pub fn from_label(value: Option<&str>) -> TlsMode {
        match value {
            Some("istio") => TlsMode::Istio,
            _ => TlsMode::Disabled,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Istio => "istio",
            TlsMode::Disabled => "disabled",
        }
    }
}

/// An endpoint port, named after the service port it serves (EndpointSlice semantics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointPort {
    pub name: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub cluster: String,
    pub network: String,
    pub address: IpAddr,
    pub ports: Vec<EndpointPort>,
    pub locality: Locality,
    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` of the workload, when known.
    pub identity: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    pub tls_mode: TlsMode,
    /// `<namespace>/<pod name>` when the endpoint is a pod.
    pub pod: Option<String>,
    /// Its share of the service's traffic relative to the others (1 unless a ServiceEntry
    /// endpoint says otherwise).
    pub weight: u32,
}

/// An endpoint the proxy finds by resolving a name (a ServiceEntry with `resolution: DNS`),
/// Envoy's STRICT_DNS: every address the name resolves to is an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsEndpoint {
    /// A host name, or an IP address written as text.
    pub host: String,
    pub ports: Vec<EndpointPort>,
    pub weight: u32,
    pub locality: Locality,
    pub network: String,
    pub labels: BTreeMap<String, String>,
    pub tls_mode: TlsMode,
}

impl DnsEndpoint {
    /// The port this endpoint serves the service port named `port_name` on, if it does.
    pub fn port_for(&self, port_name: &str) -> Option<u16> {
        self.ports
            .iter()
            .find(|port| port.name == port_name)
            .map(|port| port.port)
    }
}

/// A pod's workload (its Deployment's name, as Istio's telemetry names it): the pod name without
/// the ReplicaSet hash and pod suffix (`helloworld-v1-5d8f9c7b6-x2k4p` → `helloworld-v1`).
/// Pods of other owners keep their name.
pub fn workload_of_pod(pod: &str) -> &str {
    let mut parts = pod.rsplitn(3, '-');
    let (Some(suffix), Some(hash), Some(owner)) = (parts.next(), parts.next(), parts.next()) else {
        return pod;
    };
    let alphanumeric = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if suffix.len() == 5
        && (8..=10).contains(&hash.len())
        && alphanumeric(suffix)
        && alphanumeric(hash)
    {
        owner
    } else {
        pod
    }
}

impl Endpoint {
    /// Istio's `workload` endpoint metadata: `<workload>;<namespace>;<app>;<version>;<cluster>`.
    pub fn workload_metadata(&self) -> Option<String> {
        let (namespace, pod) = self.pod.as_deref()?.split_once('/')?;
        let label = |keys: [&str; 2]| {
            keys.iter()
                .find_map(|key| self.labels.get(*key))
                .map_or("", String::as_str)
        };
        Some(format!(
            "{};{namespace};{};{};{}",
            workload_of_pod(pod),
            label(["service.istio.io/canonical-name", "app"]),
            label(["service.istio.io/canonical-revision", "version"]),
            self.cluster
        ))
    }

    /// The endpoint's port for the service port named `service_port_name`. A slice with a single
    /// unnamed port serves a service with a single unnamed port.
    pub fn port_for(&self, service_port_name: &str) -> Option<u16> {
        self.ports
            .iter()
            .find(|port| port.name == service_port_name)
            .map(|port| port.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_are_named_after_their_deployment() {
        assert_eq!(
            workload_of_pod("helloworld-v1-5d8f9c7b6-x2k4p"),
            "helloworld-v1"
        );
        assert_eq!(workload_of_pod("helloworld-v1"), "helloworld-v1");
        assert_eq!(workload_of_pod("web-0"), "web-0");
        assert_eq!(workload_of_pod("a-b-c"), "a-b-c");
    }

    #[test]
    fn locality_parses_istio_and_slash_forms() {
        let locality = Locality::parse("us-east.zone1.sub");
        assert_eq!(
            (
                locality.region.as_str(),
                locality.zone.as_str(),
                locality.subzone.as_str()
            ),
            ("us-east", "zone1", "sub")
        );
        assert_eq!(Locality::parse("eu/z").zone, "z");
        assert_eq!(Locality::parse(""), Locality::default());
    }

    #[test]
    fn tls_mode_needs_the_istio_label_value() {
        assert_eq!(TlsMode::from_label(Some("istio")), TlsMode::Istio);
        assert_eq!(TlsMode::from_label(Some("disabled")), TlsMode::Disabled);
        assert_eq!(TlsMode::from_label(None), TlsMode::Disabled);
    }
}
