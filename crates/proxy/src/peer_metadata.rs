//! Istio's HTTP metadata exchange. Between two sidecars (mutual TLS only), each says who it is in
//! `x-envoy-peer-metadata-id` and `x-envoy-peer-metadata` (a base64 protobuf `Struct` with
//! `WORKLOAD_NAME`, `NAMESPACE`, `CLUSTER_ID`, `LABELS`, ... as in the node metadata): the client
//! on its requests, the server on its responses. Each side removes the other's before the
//! application sees them. This is how the server's metrics (`reporter="destination"`) know the
//! source workload, app, version and cluster, which the client's certificate does not say.
//! TCP connections exchange the same metadata in a preface: `tcp_peer_exchange`.

use crate::bootstrap::Workload;
use crate::telemetry::{TrafficLabels, UNKNOWN};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use prost::Message;
use std::collections::BTreeMap;

pub const ID_HEADER: &str = "x-envoy-peer-metadata-id";
pub const METADATA_HEADER: &str = "x-envoy-peer-metadata";

/// Whether a header is one of the exchange's (which never reach an application).
pub fn is_exchange_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(METADATA_HEADER) || name.eq_ignore_ascii_case(ID_HEADER)
}

/// This proxy's own two headers, encoded once.
#[derive(Clone, Debug)]
pub struct OwnMetadata {
    pub id: String,
    pub metadata: String,
    /// Both as HTTP/1 header lines, ready to go into a head.
    pub head_lines: Vec<u8>,
    /// Both as HTTP/2 header values (`None` if the node ID cannot be a header value).
    pub header_values: Option<(http::HeaderValue, http::HeaderValue)>,
    /// Both as the TCP exchange's preface (see `tcp_peer_exchange`).
    pub tcp_preface: Vec<u8>,
}

impl OwnMetadata {
    pub fn of(workload: &Workload) -> OwnMetadata {
        let node = workload.node();
        let mut metadata = node.metadata.unwrap_or_default();
        // Metrics name a workload by its canonical name; the node metadata may not have one.
        metadata.fields.insert(
            "WORKLOAD_NAME".into(),
            envoy_types::pb::google::protobuf::Value {
                kind: Some(Kind::StringValue(workload.canonical_workload())),
            },
        );
        let tcp_preface = crate::tcp_peer_exchange::preface(&metadata, &node.id);
        let metadata = STANDARD.encode(metadata.encode_to_vec());
        let head_lines = format!(
            "{ID_HEADER}: {}\r\n{METADATA_HEADER}: {metadata}\r\n",
            node.id
        )
        .into_bytes();
        let header_values = http::HeaderValue::from_str(&node.id)
            .ok()
            .zip(http::HeaderValue::from_str(&metadata).ok());
        OwnMetadata {
            id: node.id,
            metadata,
            head_lines,
            header_values,
            tcp_preface,
        }
    }
}

/// What a peer says about itself: the fields Istio's metrics use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerWorkload {
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    pub cluster: String,
}

/// A workload's `app` and `version` as Istio's metrics take them from its labels.
pub fn app_and_version(labels: &BTreeMap<String, String>) -> (String, String) {
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|key| labels.get(*key))
            .cloned()
            .unwrap_or_else(|| UNKNOWN.to_owned())
    };
    (
        first(&["app", "app.kubernetes.io/name"]),
        first(&["version", "app.kubernetes.io/version"]),
    )
}

/// The peer in an `x-envoy-peer-metadata` value; `None` when it is not base64 of a `Struct`.
pub fn decode(value: &[u8]) -> Option<PeerWorkload> {
    let bytes = STANDARD.decode(value.trim_ascii()).ok()?;
    let metadata = Struct::decode(bytes.as_slice()).ok()?;
    Some(from_struct(&metadata))
}

/// The peer a node metadata `Struct` describes.
pub fn from_struct(metadata: &Struct) -> PeerWorkload {
    let text = |key: &str| match metadata.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(value) => Some(value.clone()),
        _ => None,
    };
    let labels: BTreeMap<String, String> =
        match metadata.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(labels)) => labels
                .fields
                .iter()
                .filter_map(|(key, value)| match value.kind.as_ref()? {
                    Kind::StringValue(value) => Some((key.clone(), value.clone())),
                    _ => None,
                })
                .collect(),
            _ => BTreeMap::new(),
        };
    let (app, version) = app_and_version(&labels);
    let or_unknown = |value: Option<String>| {
        value
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| UNKNOWN.to_owned())
    };
    PeerWorkload {
        workload: or_unknown(text("WORKLOAD_NAME")),
        namespace: or_unknown(text("NAMESPACE")),
        app,
        version,
        cluster: or_unknown(text("CLUSTER_ID")),
    }
}

impl PeerWorkload {
    /// Fills the peer's side of `labels`: the source for the server's reports; for the client's,
    /// the destination fields that endpoint discovery left unknown.
    pub fn apply(&self, labels: &mut TrafficLabels) {
        if labels.reporter == "destination" {
            labels.source_workload = self.workload.clone();
            labels.source_workload_namespace = self.namespace.clone();
            labels.source_app = self.app.clone();
            labels.source_version = self.version.clone();
            labels.source_cluster = self.cluster.clone();
        } else {
            let fill = |field: &mut String, value: &str| {
                if field == UNKNOWN {
                    *field = value.to_owned();
                }
            };
            fill(&mut labels.destination_workload, &self.workload);
            fill(&mut labels.destination_workload_namespace, &self.namespace);
            fill(&mut labels.destination_app, &self.app);
            fill(&mut labels.destination_version, &self.version);
            fill(&mut labels.destination_cluster, &self.cluster);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleep() -> Workload {
        let mut sleep = Workload::sleep_for_tests();
        sleep.labels.insert("version".into(), "v2".into());
        sleep
    }

    #[test]
    fn what_one_side_sends_the_other_reads_back() {
        let own = OwnMetadata::of(&sleep());
        assert_eq!(
            own.id,
            "sidecar~10.10.0.9~sleep-5d8f9c7b6-x2k4p.sample~sample.svc.cluster.local"
        );
        let lines = String::from_utf8(own.head_lines.clone()).unwrap();
        assert!(lines.starts_with("x-envoy-peer-metadata-id: sidecar~"));
        assert!(lines.ends_with("\r\n"));
        let peer = decode(own.metadata.as_bytes()).expect("our own metadata decodes");
        assert_eq!(
            peer,
            PeerWorkload {
                workload: "sleep".into(),
                namespace: "sample".into(),
                app: "sleep".into(),
                version: "v2".into(),
                cluster: "cluster01".into(),
            }
        );
    }

    #[test]
    fn the_server_learns_the_source_and_the_client_fills_only_what_it_did_not_know() {
        let peer = decode(OwnMetadata::of(&sleep()).metadata.as_bytes()).unwrap();
        let mut server = TrafficLabels::unknown("destination");
        server.source_principal = "spiffe://cluster.local/ns/sample/sa/sleep".into();
        peer.apply(&mut server);
        assert_eq!(server.source_workload, "sleep");
        assert_eq!(server.source_cluster, "cluster01");
        assert_eq!(server.source_version, "v2");
        assert_eq!(
            server.destination_workload, UNKNOWN,
            "its own side is not touched"
        );

        let mut client = TrafficLabels::unknown("source");
        client.destination_workload = "from-eds".into();
        peer.apply(&mut client);
        assert_eq!(client.destination_workload, "from-eds");
        assert_eq!(client.destination_app, "sleep");
        assert_eq!(client.source_workload, UNKNOWN);
    }

    #[test]
    fn garbage_is_not_a_peer() {
        assert_eq!(decode(b"not base64!"), None);
        assert_eq!(decode(STANDARD.encode([0xff, 0xff, 0xff]).as_bytes()), None);
    }
}
