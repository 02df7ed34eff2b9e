//! Small constructors for the Envoy messages every generator needs.

use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, Metadata, SocketAddress, address,
    config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
};
use envoy_types::pb::google::protobuf::{Any, Duration, Struct, Value, value::Kind};
use prost::{Message, Name};
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::LazyLock;

/// prost encodes protobuf maps (`Struct` fields, filter metadata) in `HashMap` iteration order.
/// Maps built with one shared hasher state and the same insertions iterate alike, so equal
/// resources encode to equal bytes, and a resource's version (a hash of its bytes) is stable.
static MAP_STATE: LazyLock<RandomState> = LazyLock::new(RandomState::new);

pub fn stable_map<K: Hash + Eq, V>(entries: impl IntoIterator<Item = (K, V)>) -> HashMap<K, V> {
    let mut map = HashMap::with_hasher(MAP_STATE.clone());
    map.extend(entries);
    map
}

/// A `Struct` of string-keyed values, with a stable encoding.
pub fn fields<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Struct {
    Struct {
        fields: stable_map(
            entries
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value)),
        ),
    }
}

pub fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

pub fn socket_address(ip: IpAddr, port: u16) -> Address {
    named_socket_address(&ip.to_string(), port)
}

/// A socket address by host name (a STRICT_DNS endpoint), or by IP address written as text.
pub fn named_socket_address(host: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..SocketAddress::default()
        })),
    }
}

/// "Get this from the same ADS stream."
pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..ConfigSource::default()
    }
}

pub fn seconds(seconds: i64) -> Duration {
    Duration { seconds, nanos: 0 }
}

pub fn string_value(text: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(text.into())),
    }
}

pub fn list_value(items: impl IntoIterator<Item = Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(
            envoy_types::pb::google::protobuf::ListValue {
                values: items.into_iter().collect(),
            },
        )),
    }
}

pub fn bool_value(value: bool) -> Value {
    Value {
        kind: Some(Kind::BoolValue(value)),
    }
}

/// Metadata with one struct per filter name.
pub fn metadata<'a>(
    entries: impl IntoIterator<Item = (&'a str, Vec<(&'a str, Value)>)>,
) -> Metadata {
    Metadata {
        filter_metadata: stable_map(
            entries
                .into_iter()
                .map(|(filter, entries)| (filter.to_owned(), fields(entries))),
        ),
        ..Metadata::default()
    }
}
