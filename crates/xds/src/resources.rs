//! Resource types, Istio's resource names, and the encoded resources handed to streams.

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::Resource as DeltaResource;
use envoy_types::pb::google::protobuf::Any;
use prost::encoding::{self, WireType};
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
///
/// It is kept in wire form, as an entry of `DeltaDiscoveryResponse.resources` (field 2: name,
/// version and the resource as an `Any`). That entry ends with its `resource` field, which is
/// also field 2, so its tail is byte for byte an entry of `DiscoveryResponse.resources`. A
/// response of either variant is then a small head plus these shared bytes, never a copy per
/// stream.
#[derive(Clone, PartialEq)]
pub struct Resource {
    pub name: Arc<str>,
    /// A hash of the encoded resource: equal versions mean equal content.
    pub version: u64,
    pub type_url: String,
    delta_entry: Bytes,
    /// Where the `resource` field starts within `delta_entry`.
    sotw_start: usize,
    /// The encoded message (a slice of `delta_entry`).
    value: Bytes,
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resource")
            .field("name", &self.name)
            .field("version", &self.version_text())
            .field("type_url", &self.type_url)
            .field("bytes", &self.value.len())
            .finish()
    }
}

/// A version as clients see it (delta `Resource.version`; parsed back from their
/// `initial_resource_versions`).
fn version_text(version: u64) -> String {
    format!("{version:016x}")
}

/// The field number of `resources` in both `DiscoveryResponse` and `DeltaDiscoveryResponse`,
/// and of `resource` in the delta `Resource` message.
const RESOURCES_FIELD: u32 = 2;

fn put_length_delimited_key(buffer: &mut BytesMut, length: usize) {
    encoding::encode_key(RESOURCES_FIELD, WireType::LengthDelimited, buffer);
    encoding::encode_varint(length as u64, buffer);
}

impl Resource {
    pub fn new<M: Message + Name>(name: impl Into<Arc<str>>, message: &M) -> Arc<Resource> {
        let name: Arc<str> = name.into();
        let type_url = M::type_url();
        let value = message.encode_to_vec();
        let mut hasher = DefaultHasher::new();
        value.hash(&mut hasher);
        let version = hasher.finish();
        let any = Any {
            type_url: type_url.clone(),
            value,
        };
        let any_length = any.encoded_len();
        // The delta entry's own fields: version (1) and name (3); `resource` (2) goes last.
        let head = DeltaResource {
            name: name.to_string(),
            version: version_text(version),
            ..DeltaResource::default()
        };
        let any_field_length = encoding::key_len(RESOURCES_FIELD)
            + encoding::encoded_len_varint(any_length as u64)
            + any_length;
        let entry_length = head.encoded_len() + any_field_length;
        let mut entry = BytesMut::with_capacity(
            encoding::key_len(RESOURCES_FIELD)
                + encoding::encoded_len_varint(entry_length as u64)
                + entry_length,
        );
        put_length_delimited_key(&mut entry, entry_length);
        head.encode_raw(&mut entry);
        let sotw_start = entry.len();
        put_length_delimited_key(&mut entry, any_length);
        any.encode_raw(&mut entry);
        let entry = entry.freeze();
        let value_start = entry.len() - any.value.len();
        Arc::new(Resource {
            name,
            version,
            type_url,
            value: entry.slice(value_start..),
            delta_entry: entry,
            sotw_start,
        })
    }

    pub fn version_text(&self) -> String {
        version_text(self.version)
    }

    /// The encoded message.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The resource as an `Any` (a copy; for debug output and tests).
    pub fn any(&self) -> Any {
        Any {
            type_url: self.type_url.clone(),
            value: self.value.to_vec(),
        }
    }

    /// This resource as one entry of `DiscoveryResponse.resources`, key and length included.
    pub fn sotw_entry(&self) -> Bytes {
        self.delta_entry.slice(self.sotw_start..)
    }

    /// This resource as one entry of `DeltaDiscoveryResponse.resources`, key and length included.
    pub fn delta_entry(&self) -> Bytes {
        self.delta_entry.clone()
    }

    /// The delta entry when `delta`, else the state-of-the-world one.
    pub fn entry(&self, delta: bool) -> Bytes {
        if delta {
            self.delta_entry()
        } else {
            self.sotw_entry()
        }
    }

    /// The length of [`Resource::entry`], without making it.
    pub fn entry_len(&self, delta: bool) -> usize {
        if delta {
            self.delta_entry.len()
        } else {
            self.delta_entry.len() - self.sotw_start
        }
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
    let bytes = resource.value();
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
        assert_eq!(Resource::new("x", &a).type_url, ENDPOINT);
    }

    #[test]
    fn wire_entries_decode_as_both_response_variants() {
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        use envoy_types::pb::envoy::service::discovery::v3::{
            DeltaDiscoveryResponse, DiscoveryResponse,
        };
        let assignment = ClusterLoadAssignment {
            cluster_name: "outbound|80||a.b.svc.cluster.local".into(),
            ..Default::default()
        };
        let resource = Resource::new("outbound|80||a.b.svc.cluster.local", &assignment);
        let sotw = DiscoveryResponse::decode(resource.sotw_entry()).unwrap();
        assert_eq!(sotw.resources, vec![resource.any()]);
        assert_eq!(
            ClusterLoadAssignment::decode(sotw.resources[0].value.as_slice()).unwrap(),
            assignment
        );
        let delta = DeltaDiscoveryResponse::decode(resource.delta_entry()).unwrap();
        assert_eq!(delta.resources.len(), 1);
        assert_eq!(&*delta.resources[0].name, &*resource.name);
        assert_eq!(delta.resources[0].version, resource.version_text());
        assert_eq!(delta.resources[0].resource, Some(resource.any()));
    }
}
