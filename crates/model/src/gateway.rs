//! Network gateways (how another network is entered) and Istio `Gateway` objects (what a router
//! exposes).

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// An east-west gateway of a network: a Service labelled `topology.istio.io/network=<network>`,
/// reached at its LoadBalancer address on port 15443 or `networking.istio.io/gatewayPort`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct NetworkGateway {
    pub network: String,
    pub cluster: String,
    pub address: IpAddr,
    pub port: u16,
    /// `<namespace>/<name>` of the Service.
    pub service: String,
}

/// One `servers[]` entry of a `networking.istio.io` Gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayServer {
    pub port: u16,
    pub port_name: String,
    pub protocol: String,
    pub hosts: Vec<String>,
    /// `tls.mode` (`AUTO_PASSTHROUGH`, `PASSTHROUGH`, `SIMPLE`, `ISTIO_MUTUAL`, ...).
    pub tls_mode: Option<String>,
}

impl GatewayServer {
    /// Whether this server exposes `fqdn` of `namespace`. Hosts are `[namespace/]dnsName`, where
    /// the namespace is `*`, `.` (the Gateway's own) or a name, and `dnsName` may start with `*`.
    pub fn exposes(&self, gateway_namespace: &str, namespace: &str, fqdn: &str) -> bool {
        self.hosts.iter().any(|host| {
            let (scope, dns_name) = match host.split_once('/') {
                Some((scope, dns_name)) => (scope, dns_name),
                None => ("*", host.as_str()),
            };
            let in_scope = match scope {
                "*" => true,
                "." => namespace == gateway_namespace,
                name => namespace == name,
            };
            in_scope && host_matches(dns_name, fqdn)
        })
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IstioGateway {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    pub servers: Vec<GatewayServer>,
}

impl IstioGateway {
    /// Whether a router with `labels` runs this Gateway. Istio matches the selector against
    /// gateway pods in every namespace (`PILOT_SCOPE_GATEWAY_TO_NAMESPACE=false`).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
    }
}

/// One `tls` route of a VirtualService bound to Gateways: TLS arriving on a gateway port with
/// one of `sni_hosts` goes, still encrypted, to `destination_host` (`expose-istiod.yaml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsRoute {
    /// The VirtualService's namespace: short gateway and host names are relative to it.
    pub namespace: String,
    pub name: String,
    /// As written: `<gateway>` (same namespace) or `<namespace>/<gateway>`.
    pub gateways: Vec<String>,
    pub port: Option<u16>,
    pub sni_hosts: Vec<String>,
    pub destination_host: String,
    pub destination_port: Option<u16>,
}

impl TlsRoute {
    pub fn binds(&self, gateway: &IstioGateway) -> bool {
        self.gateways
            .iter()
            .any(|written| match written.split_once('/') {
                Some((namespace, name)) => namespace == gateway.namespace && name == gateway.name,
                None => self.namespace == gateway.namespace && *written == gateway.name,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(hosts: &[&str]) -> GatewayServer {
        GatewayServer {
            port: 15443,
            port_name: "tls".into(),
            protocol: "TLS".into(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            tls_mode: Some("AUTO_PASSTHROUGH".into()),
        }
    }

    #[test]
    fn hosts_match_with_wildcards_and_namespace_scopes() {
        let fqdn = "helloworld.sample.svc.cluster.local";
        assert!(server(&["*.local"]).exposes("istio-system", "sample", fqdn));
        assert!(server(&["*"]).exposes("istio-system", "sample", fqdn));
        assert!(server(&[fqdn]).exposes("istio-system", "sample", fqdn));
        assert!(!server(&["*.global"]).exposes("istio-system", "sample", fqdn));
        assert!(server(&["sample/*"]).exposes("istio-system", "sample", fqdn));
        assert!(!server(&["other/*"]).exposes("istio-system", "sample", fqdn));
        assert!(!server(&["./*"]).exposes("istio-system", "sample", fqdn));
        assert!(server(&["./*"]).exposes("sample", "sample", fqdn));
    }

    #[test]
    fn tls_routes_bind_gateways_by_name_in_their_namespace_or_qualified() {
        let gateway = IstioGateway {
            namespace: "istio-system".into(),
            name: "istiod-gateway".into(),
            selector: BTreeMap::new(),
            servers: vec![],
        };
        let mut route = TlsRoute {
            namespace: "istio-system".into(),
            name: "istiod-vs".into(),
            gateways: vec!["istiod-gateway".into()],
            port: Some(15012),
            sni_hosts: vec!["*".into()],
            destination_host: "istiod.istio-system.svc.cluster.local".into(),
            destination_port: Some(15012),
        };
        assert!(route.binds(&gateway));
        route.namespace = "other".into();
        assert!(!route.binds(&gateway));
        route.gateways = vec!["istio-system/istiod-gateway".into()];
        assert!(route.binds(&gateway));
    }

    #[test]
    fn a_gateway_selects_routers_by_label() {
        let gateway = IstioGateway {
            namespace: "istio-system".into(),
            name: "cross-network-gateway".into(),
            selector: [("istio".to_owned(), "eastwestgateway".to_owned())].into(),
            servers: vec![],
        };
        let mut labels: BTreeMap<String, String> =
            [("istio".to_owned(), "eastwestgateway".to_owned())].into();
        assert!(gateway.selects(&labels));
        labels.insert("istio".into(), "ingressgateway".into());
        assert!(!gateway.selects(&labels));
    }
}
