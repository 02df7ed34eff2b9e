//! Resource types, Istio's resource names, and the encoded resources handed to streams.

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The types this server generates, in the order a full push sends them (clusters before the
/// endpoints they name, listeners before the routes they name: make before break).
pub const PUSH_ORDER: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// The short names `proxy-status` prints.
pub fn short_name(type_url: &str) -> &'static str {
    match type_url {
        LISTENER => "LDS",
        ROUTE => "RDS",
        CLUSTER => "CDS",
        ENDPOINT => "EDS",
        _ => "unknown",
    }
}

/// LDS and CDS subscriptions without names mean "everything" (the wildcard).
pub fn wildcard_by_default(type_url: &str) -> bool {
    matches!(type_url, LISTENER | CLUSTER)
}

/// One generated resource, encoded once and shared by every stream that is sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub name: Arc<str>,
    /// A hash of the encoded resource: equal versions mean equal content.
    pub version: u64,
    pub body: Any,
}

impl Resource {
    pub fn new<M: Message + Name>(name: impl Into<Arc<str>>, message: &M) -> Arc<Resource> {
        let body = Any {
            type_url: M::type_url(),
            value: message.encode_to_vec(),
        };
        let mut hasher = DefaultHasher::new();
        body.value.hash(&mut hasher);
        Arc::new(Resource {
            name: name.into(),
            version: hasher.finish(),
            body,
        })
    }

    pub fn version_text(&self) -> String {
        format!("{:016x}", self.version)
    }
}

/// `outbound|<port>||<fqdn>`: a sidecar's or proxyless client's cluster for a service port.
pub fn outbound_cluster(port: u16, fqdn: &str) -> String {
    format!("outbound|{port}||{fqdn}")
}

/// `inbound|<port>||`: a sidecar's cluster for its own workload's port.
pub fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}||")
}

/// `outbound_.<port>_._.<fqdn>`: the SNI a sidecar sends to another network's gateway, and the
/// router's cluster name for it (an empty subset is `_`).
pub fn sni_cluster(port: u16, fqdn: &str) -> String {
    format!("outbound_.{port}_._.{fqdn}")
}

/// The service FQDN and port a cluster or listener name refers to, in any of the forms above.
pub fn parse_service_name(name: &str) -> Option<(u16, &str)> {
    if let Some(rest) = name.strip_prefix("outbound|") {
        let (port, rest) = rest.split_once('|')?;
        let (_subset, fqdn) = rest.split_once('|')?;
        return Some((port.parse().ok()?, fqdn));
    }
    if let Some(rest) = name.strip_prefix("outbound_.") {
        let (port, rest) = rest.split_once("_.")?;
        let (_subset, fqdn) = rest.split_once("_.")?;
        return Some((port.parse().ok()?, fqdn));
    }
    None
}

/// A readable rendering of a resource for debug output (prost's `Debug` form of the message).
pub fn describe(type_url: &str, resource: &Resource) -> String {
    use envoy_types::pb::envoy::config::{
        cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
        route::v3::RouteConfiguration,
    };
    let bytes = resource.body.value.as_slice();
    let decoded = match type_url {
        LISTENER => Listener::decode(bytes).map(|m| format!("{m:?}")),
        ROUTE => RouteConfiguration::decode(bytes).map(|m| format!("{m:?}")),
        CLUSTER => Cluster::decode(bytes).map(|m| format!("{m:?}")),
        ENDPOINT => ClusterLoadAssignment::decode(bytes).map(|m| format!("{m:?}")),
        other => return format!("<{} bytes of {other}>", bytes.len()),
    };
    decoded.unwrap_or_else(|error| format!("<undecodable: {error}>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let fqdn = "helloworld.sample.svc.cluster.local";
        assert_eq!(
            outbound_cluster(5000, fqdn),
            "outbound|5000||helloworld.sample.svc.cluster.local"
        );
        assert_eq!(
            sni_cluster(5000, fqdn),
            "outbound_.5000_._.helloworld.sample.svc.cluster.local"
        );
        assert_eq!(
            parse_service_name(&outbound_cluster(5000, fqdn)),
            Some((5000, fqdn))
        );
        assert_eq!(
            parse_service_name(&sni_cluster(5000, fqdn)),
            Some((5000, fqdn))
        );
        assert_eq!(parse_service_name("inbound|5000||"), None);
        assert_eq!(parse_service_name("outbound|x||a"), None);
    }

    #[test]
    fn equal_content_has_equal_versions() {
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        let a = ClusterLoadAssignment {
            cluster_name: "a".into(),
            ..Default::default()
        };
        let b = ClusterLoadAssignment {
            cluster_name: "b".into(),
            ..Default::default()
        };
        assert_eq!(
            Resource::new("x", &a).version,
            Resource::new("y", &a).version
        );
        assert_ne!(
            Resource::new("x", &a).version,
            Resource::new("x", &b).version
        );
        assert_eq!(Resource::new("x", &a).body.type_url, ENDPOINT);
    }
}
