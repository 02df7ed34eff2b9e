//! Who this proxy is, in the shape Istio's injector describes a pod (`POD_NAME`,
//! `POD_NAMESPACE`, `INSTANCE_IP`, `SERVICE_ACCOUNT`, `ISTIO_META_*`), and the Envoy `Node` that
//! tells discovery so.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Sidecar,
    /// An east-west gateway (`ISTIO_META_ROUTER_MODE=sni-dnat`).
    Router,
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub role: Role,
    pub pod_name: String,
    pub namespace: String,
    pub ip: IpAddr,
    pub service_account: String,
    pub cluster_id: String,
    pub network: String,
    pub mesh_id: String,
    pub trust_domain: String,
    pub domain_suffix: String,
    pub labels: BTreeMap<String, String>,
    /// The Deployment (or other owner) name, for metrics' `workload` labels.
    pub workload_name: String,
    /// Networks a router hands endpoints out for (`ISTIO_META_REQUESTED_NETWORK_VIEW`).
    pub requested_network_view: Vec<String>,
}

fn text(value: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(value.to_owned())),
    }
}

impl Workload {
    /// Istio's node ID: `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`.
    pub fn node_id(&self) -> String {
        let kind = match self.role {
            Role::Sidecar => "sidecar",
            Role::Router => "router",
        };
        format!(
            "{kind}~{}~{}.{}~{}.svc.{}",
            self.ip, self.pod_name, self.namespace, self.namespace, self.domain_suffix
        )
    }

    pub fn node(&self) -> Node {
        let mut fields: HashMap<String, Value> = [
            ("CLUSTER_ID", self.cluster_id.as_str()),
            ("NETWORK", self.network.as_str()),
            ("NAMESPACE", self.namespace.as_str()),
            ("SERVICE_ACCOUNT", self.service_account.as_str()),
            ("WORKLOAD_NAME", self.workload_name.as_str()),
            ("MESH_ID", self.mesh_id.as_str()),
            ("NAME", self.pod_name.as_str()),
            ("ISTIO_VERSION", env!("CARGO_PKG_VERSION")),
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| (key.to_owned(), text(value)))
        .collect();
        fields.insert("INSTANCE_IPS".into(), text(&self.ip.to_string()));
        if self.role == Role::Router {
            fields.insert("ROUTER_MODE".into(), text("sni-dnat"));
        }
        if !self.requested_network_view.is_empty() {
            fields.insert(
                "REQUESTED_NETWORK_VIEW".into(),
                text(&self.requested_network_view.join(",")),
            );
        }
        let labels = Struct {
            fields: self
                .labels
                .iter()
                .map(|(key, value)| (key.clone(), text(value)))
                .collect(),
        };
        fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        Node {
            id: self.node_id(),
            cluster: format!("{}.{}", self.workload_name_or_pod(), self.namespace),
            metadata: Some(Struct { fields }),
            user_agent_name: "causeway".into(),
            ..Node::default()
        }
    }

    fn workload_name_or_pod(&self) -> &str {
        if self.workload_name.is_empty() {
            &self.pod_name
        } else {
            &self.workload_name
        }
    }

    /// The workload name for metrics: the owner's name, else the pod name without the
    /// ReplicaSet and pod suffixes (`helloworld-v1-5d8f9c7b6-x2k4p` → `helloworld-v1`).
    pub fn canonical_workload(&self) -> String {
        if self.workload_name.is_empty() {
            causeway_model::workload_of_pod(&self.pod_name).to_owned()
        } else {
            self.workload_name.clone()
        }
    }

    /// DNS search domains a pod in this namespace has (kubelet's defaults).
    pub fn search_domains(&self) -> Vec<String> {
        vec![
            format!("{}.svc.{}", self.namespace, self.domain_suffix),
            format!("svc.{}", self.domain_suffix),
            self.domain_suffix.clone(),
        ]
    }
}

/// Pod labels from the downward API file (`/etc/istio/pod/labels`: `key="value"` lines).
pub fn parse_labels_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: `{line}` is not `key=\"value\"`", number + 1))?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        labels.insert(key.trim().to_owned(), value.replace("\\\"", "\""));
    }
    Ok(labels)
}

#[cfg(test)]
impl Workload {
    /// The sample `sleep` pod in `sample` on cluster01, for unit tests.
    pub(crate) fn sleep_for_tests() -> Workload {
        Workload {
            role: Role::Sidecar,
            pod_name: "sleep-5d8f9c7b6-x2k4p".into(),
            namespace: "sample".into(),
            ip: "10.10.0.9".parse().unwrap(),
            service_account: "sleep".into(),
            cluster_id: "cluster01".into(),
            network: "network1".into(),
            mesh_id: "mesh1".into(),
            trust_domain: "cluster.local".into(),
            domain_suffix: "cluster.local".into(),
            labels: [("app".to_owned(), "sleep".to_owned())].into(),
            workload_name: String::new(),
            requested_network_view: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload::sleep_for_tests()
    }

    #[test]
    fn discovery_reads_the_node_as_istios_agent_writes_it() {
        let workload = workload();
        let info = causeway_xds::proxy::ProxyInfo::from_node(&workload.node(), "elsewhere");
        assert_eq!(info.kind, causeway_xds::proxy::ProxyKind::Sidecar);
        assert_eq!(
            info.id,
            "sidecar~10.10.0.9~sleep-5d8f9c7b6-x2k4p.sample~sample.svc.cluster.local"
        );
        assert_eq!(info.cluster, "cluster01");
        assert_eq!(info.network, "network1");
        assert_eq!(info.namespace.as_deref(), Some("sample"));
        assert_eq!(info.ip, Some(workload.ip));
        assert_eq!(info.labels, workload.labels);

        let router = Workload {
            role: Role::Router,
            requested_network_view: vec!["network2".into()],
            ..workload
        };
        let info = causeway_xds::proxy::ProxyInfo::from_node(&router.node(), "elsewhere");
        assert_eq!(info.kind, causeway_xds::proxy::ProxyKind::Router);
        assert_eq!(info.router_networks(), ["network2"]);
    }

    #[test]
    fn the_workload_name_drops_replica_set_and_pod_suffixes() {
        assert_eq!(workload().canonical_workload(), "sleep");
        let bare = Workload {
            pod_name: "helloworld".into(),
            ..workload()
        };
        assert_eq!(bare.canonical_workload(), "helloworld");
        let named = Workload {
            workload_name: "sleep-v2".into(),
            ..workload()
        };
        assert_eq!(named.canonical_workload(), "sleep-v2");
    }

    #[test]
    fn downward_api_labels_parse_and_bad_lines_are_named() {
        let labels = parse_labels_file("app=\"helloworld\"\nversion=\"v1\"\n\n").unwrap();
        assert_eq!(labels.get("version").map(String::as_str), Some("v1"));
        let error = parse_labels_file("app=\"x\"\nbroken").unwrap_err();
        assert_eq!(error, "line 2: `broken` is not `key=\"value\"`");
    }
}
