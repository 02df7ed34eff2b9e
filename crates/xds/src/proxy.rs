//! Who is on the other end of a stream, from the Envoy `Node` it sends: its kind, cluster,
//! network, namespace and labels (Istio's node metadata).

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ProxyKind {
    /// A sidecar next to a workload (node ID `sidecar~...`).
    Sidecar,
    /// An east-west gateway in `sni-dnat` mode (`router~...` or `ROUTER_MODE`).
    Router,
    /// A proxyless gRPC client (`GENERATOR=grpc`, or a gRPC library's user agent).
    Grpc,
}

impl ProxyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Sidecar => "sidecar",
            ProxyKind::Router => "router",
            ProxyKind::Grpc => "grpc",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProxyInfo {
    pub id: String,
    pub kind: ProxyKind,
    pub cluster: String,
    pub network: String,
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub ip: Option<IpAddr>,
    /// Networks a router serves (`REQUESTED_NETWORK_VIEW`); empty means its own.
    pub requested_network_view: Vec<String>,
    pub istio_version: String,
}

fn text(metadata: Option<&Struct>, key: &str) -> Option<String> {
    match metadata?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(value) if !value.is_empty() => Some(value.clone()),
        _ => None,
    }
}

fn labels(metadata: Option<&Struct>) -> BTreeMap<String, String> {
    let Some(Value {
        kind: Some(Kind::StructValue(labels)),
    }) = metadata.and_then(|m| m.fields.get("LABELS"))
    else {
        return BTreeMap::new();
    };
    labels
        .fields
        .iter()
        .filter_map(|(key, value)| match &value.kind {
            Some(Kind::StringValue(value)) => Some((key.clone(), value.clone())),
            _ => None,
        })
        .collect()
}

impl ProxyInfo {
    /// `default_cluster`: the control plane's own cluster, for proxies that do not say.
    pub fn from_node(node: &Node, default_cluster: &str) -> ProxyInfo {
        let metadata = node.metadata.as_ref();
        // Istio's node ID: <type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>
        let parts: Vec<&str> = node.id.split('~').collect();
        let router_mode = text(metadata, "ROUTER_MODE");
        let grpc = text(metadata, "GENERATOR").as_deref() == Some("grpc")
            || node
                .user_agent_name
                .to_ascii_lowercase()
                .starts_with("grpc");
        let kind = if parts.first() == Some(&"router") || router_mode.is_some() {
            ProxyKind::Router
        } else if grpc {
            ProxyKind::Grpc
        } else {
            ProxyKind::Sidecar
        };
        let namespace = text(metadata, "NAMESPACE").or_else(|| {
            let pod_and_namespace = parts.get(2)?;
            pod_and_namespace
                .split_once('.')
                .map(|(_, ns)| ns.to_owned())
        });
        let ip = text(metadata, "INSTANCE_IPS")
            .and_then(|ips| ips.split(',').next()?.trim().parse().ok())
            .or_else(|| parts.get(1)?.parse().ok());
        let requested_network_view = text(metadata, "REQUESTED_NETWORK_VIEW")
            .map(|view| {
                view.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        ProxyInfo {
            id: node.id.clone(),
            kind,
            cluster: text(metadata, "CLUSTER_ID").unwrap_or_else(|| default_cluster.to_owned()),
            network: text(metadata, "NETWORK").unwrap_or_default(),
            namespace,
            labels: labels(metadata),
            ip,
            requested_network_view,
            istio_version: text(metadata, "ISTIO_VERSION").unwrap_or_default(),
        }
    }

    /// The networks whose endpoints a router hands out directly.
    pub fn router_networks(&self) -> Vec<String> {
        if self.requested_network_view.is_empty() && !self.network.is_empty() {
            vec![self.network.clone()]
        } else {
            self.requested_network_view.clone()
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn node(id: &str, fields: &[(&str, &str)], labels: &[(&str, &str)]) -> Node {
        let string = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        };
        let mut metadata: std::collections::HashMap<String, Value> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), string(v)))
            .collect();
        if !labels.is_empty() {
            let labels = Struct {
                fields: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), string(v)))
                    .collect(),
            };
            metadata.insert(
                "LABELS".into(),
                Value {
                    kind: Some(Kind::StructValue(labels)),
                },
            );
        }
        Node {
            id: id.to_owned(),
            metadata: Some(Struct { fields: metadata }),
            ..Node::default()
        }
    }

    #[test]
    fn sidecars_routers_and_grpc_clients_are_told_apart() {
        let sidecar = ProxyInfo::from_node(
            &node(
                "sidecar~10.10.0.7~sleep-abc.sample~sample.svc.cluster.local",
                &[("CLUSTER_ID", "cluster01"), ("NETWORK", "network1")],
                &[("app", "sleep")],
            ),
            "default",
        );
        assert_eq!(sidecar.kind, ProxyKind::Sidecar);
        assert_eq!(sidecar.namespace.as_deref(), Some("sample"));
        assert_eq!(sidecar.ip, Some("10.10.0.7".parse().unwrap()));
        assert_eq!(
            (sidecar.cluster.as_str(), sidecar.network.as_str()),
            ("cluster01", "network1")
        );
        assert_eq!(sidecar.labels.get("app").map(String::as_str), Some("sleep"));

        let router = ProxyInfo::from_node(
            &node(
                "router~10.20.0.2~gw.istio-system~istio-system.svc.cluster.local",
                &[
                    ("ROUTER_MODE", "sni-dnat"),
                    ("REQUESTED_NETWORK_VIEW", "network2, network3"),
                    ("NETWORK", "network2"),
                ],
                &[],
            ),
            "default",
        );
        assert_eq!(router.kind, ProxyKind::Router);
        assert_eq!(router.cluster, "default");
        assert_eq!(router.router_networks(), ["network2", "network3"]);

        let mut grpc_node = node("client", &[], &[]);
        grpc_node.user_agent_name = "gRPC Python".into();
        let grpc = ProxyInfo::from_node(&grpc_node, "cluster01");
        assert_eq!(grpc.kind, ProxyKind::Grpc);
        assert_eq!(grpc.namespace, None);
        let generator = ProxyInfo::from_node(
            &node("x", &[("GENERATOR", "grpc"), ("NAMESPACE", "sample")], &[]),
            "c",
        );
        assert_eq!(
            (generator.kind, generator.namespace.as_deref()),
            (ProxyKind::Grpc, Some("sample"))
        );
    }

    #[test]
    fn a_router_without_a_view_serves_its_own_network() {
        let router = ProxyInfo::from_node(
            &node(
                "router~1.2.3.4~a.b~b.svc.cluster.local",
                &[("NETWORK", "n1")],
                &[],
            ),
            "c",
        );
        assert_eq!(router.router_networks(), ["n1"]);
    }
}
