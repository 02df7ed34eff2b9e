//! Istio's CNI plugin, as far as Causeway needs one: the `istio-cni-config` ConfigMap its node
//! agent reads. The lab's kubelet takes the ConfigMap's presence as "the plugin is installed on
//! every node" and, for each injected pod whose sidecar relies on it, sets the capture up when it
//! makes the pod's network, from the pod's `traffic.sidecar.istio.io/*` annotations, as the
//! plugin does. There is no node agent to run: the lab stands in for the node.

use super::{Component, Rendered};
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Map, Value, json};

pub const CONFIG_MAP: &str = "istio-cni-config";
/// The label of Istio's CNI node agent, by which the lab finds the plugin's configuration.
pub const AGENT_LABEL: (&str, &str) = ("k8s-app", "istio-cni-node");
/// Where the plugin never captures, as Istio's chart's default.
pub const EXCLUDED_NAMESPACES: [&str; 2] = ["kube-system", "istio-system"];

/// The plugin's configuration in `namespace`, labelled with `labels` and the agent's label.
pub fn config_map(namespace: &str, mut labels: Map<String, Value>) -> Rendered {
    labels.insert(AGENT_LABEL.0.into(), AGENT_LABEL.1.into());
    let network_config = json!({
        "cniVersion": "0.3.1",
        "name": "istio-cni",
        "type": "istio-cni",
        "log_level": "info",
        "kubernetes": {
            "cni_bin_dir": "/opt/cni/bin",
            "exclude_namespaces": EXCLUDED_NAMESPACES,
        },
    });
    Rendered::typed::<ConfigMap>(
        Component::Cni,
        json!({
            "metadata": {"name": CONFIG_MAP, "namespace": namespace, "labels": labels},
            "data": {"cni_network_config": serde_json::to_string_pretty(&network_config).expect("JSON serializes")},
        }),
    )
}
