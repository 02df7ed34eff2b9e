//! The lab's stand-in for Istio's CNI plugin. On a real node the `istio-cni-node` agent installs
//! a chained CNI plugin, which sets up a meshed pod's traffic capture while the runtime makes the
//! pod's network, before any container runs, so the pod needs no privileged init container. Here
//! the plugin counts as installed on the node while its configuration (the `istio-cni-config`
//! ConfigMap with the agent's label, which install's `components.cni.enabled` or an `IstioCNI`
//! writes) exists in the cluster, and the kubelet runs the same capture, `causeway proxy init`,
//! in the pod's network namespace right after making it. What it captures comes from the pod's
//! annotations, which the injector writes in CNI mode, as the plugin reads them.

use super::super::apiserver::resources::id_of;
use super::super::apiserver::state::ApiState;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use std::collections::BTreeMap;

pub const CONFIG_MAP: &str = "istio-cni-config";
const AGENT_LABEL: (&str, &str) = ("k8s-app", "istio-cni-node");
const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
const PROXY_CONTAINER: &str = "istio-proxy";
const INIT_CONTAINER: &str = "istio-init";
/// The proxy's own ports, never captured inbound.
const PROXY_PORTS: &str = "15090,15021,15020";

/// The installed plugin's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plugin {
    /// Namespaces whose pods are never captured (`kubernetes.exclude_namespaces`).
    pub excluded_namespaces: Vec<String>,
}

/// The plugin, when its configuration is in the cluster.
pub fn installed(state: &ApiState) -> Option<Plugin> {
    let (config_maps, _) = state.store.list(id_of("", "ConfigMap"), None);
    let config = config_maps.iter().find(|stored| {
        stored.name() == CONFIG_MAP
            && stored
                .object
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(AGENT_LABEL.0))
                .is_some_and(|value| value == AGENT_LABEL.1)
    })?;
    let config: ConfigMap = config.decode().ok()?;
    let network = config
        .data
        .as_ref()
        .and_then(|data| data.get("cni_network_config"))
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .unwrap_or_default();
    let excluded_namespaces = network["kubernetes"]["exclude_namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|name| name.as_str().map(str::to_owned))
        .collect();
    Some(Plugin {
        excluded_namespaces,
    })
}

/// The `causeway proxy init` arguments the plugin runs for `pod` (`Ok(None)`: the pod is not
/// for it: not injected, in an excluded namespace, opted out, or captured by its own init
/// container), or why its annotations cannot be followed.
pub fn capture_args(pod: &Pod, plugin: &Plugin) -> Result<Option<Vec<String>>, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    if plugin
        .excluded_namespaces
        .iter()
        .any(|excluded| excluded == namespace)
    {
        return Ok(None);
    }
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(None);
    };
    let proxy = spec
        .containers
        .iter()
        .find(|container| container.name == PROXY_CONTAINER);
    let own_init = spec
        .init_containers
        .iter()
        .flatten()
        .any(|container| container.name == INIT_CONTAINER);
    let (Some(proxy), false, true) = (proxy, own_init, annotations.contains_key(STATUS_ANNOTATION))
    else {
        return Ok(None);
    };
    let annotation = |key: &str| annotations.get(key).map(|value| value.trim());
    let traffic = |key: &str| annotation(&format!("traffic.sidecar.istio.io/{key}"));
    match annotation("sidecar.istio.io/interceptionMode").unwrap_or("REDIRECT") {
        "REDIRECT" => {}
        "NONE" => return Ok(None),
        other => {
            return Err(format!(
                "sidecar.istio.io/interceptionMode {other:?}: only REDIRECT (or NONE) is supported"
            ));
        }
    }
    match traffic("includeOutboundIPRanges") {
        None | Some("*") => {}
        Some(other) => {
            return Err(format!(
                "traffic.sidecar.istio.io/includeOutboundIPRanges {other:?}: only `*` is supported"
            ));
        }
    }
    let mut args: Vec<String> = ["proxy", "init", "-p", "15001", "-z", "15006", "-b"]
        .iter()
        .map(|word| (*word).to_owned())
        .collect();
    args.push(traffic("includeInboundPorts").unwrap_or("*").to_owned());
    args.push("-d".into());
    args.push(match traffic("excludeInboundPorts") {
        Some(ports) if !ports.is_empty() => ports.to_owned(),
        _ => PROXY_PORTS.to_owned(),
    });
    for (flag, key) in [
        ("-o", "excludeOutboundPorts"),
        ("-x", "excludeOutboundIPRanges"),
    ] {
        if let Some(value) = traffic(key).filter(|value| !value.is_empty()) {
            args.push(flag.into());
            args.push(value.to_owned());
        }
    }
    let dns = proxy.env.iter().flatten().any(|variable| {
        variable.name == "ISTIO_META_DNS_CAPTURE" && variable.value.as_deref() == Some("true")
    });
    if dns {
        args.push("--capture-dns".into());
    }
    Ok(Some(args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(namespace: &str, annotations: serde_json::Value, init: bool, dns: bool) -> Pod {
        let mut spec = json!({
            "containers": [
                {"name": "sleep", "image": "curlimages/curl"},
                {"name": "istio-proxy", "image": "causeway", "env": [{"name": "ISTIO_META_DNS_CAPTURE", "value": dns.to_string()}]},
            ],
        });
        if init {
            spec["initContainers"] = json!([{"name": "istio-init", "image": "causeway"}]);
        }
        serde_json::from_value(json!({
            "metadata": {"name": "sleep-1", "namespace": namespace, "annotations": annotations},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn the_plugin_captures_injected_pods_by_their_annotations() {
        let plugin = Plugin {
            excluded_namespaces: vec!["kube-system".into(), "istio-system".into()],
        };
        let injected = json!({
            "sidecar.istio.io/status": "{}",
            "sidecar.istio.io/interceptionMode": "REDIRECT",
            "traffic.sidecar.istio.io/includeInboundPorts": "*",
            "traffic.sidecar.istio.io/excludeInboundPorts": "15090,15021,15020,8081",
            "traffic.sidecar.istio.io/includeOutboundIPRanges": "*",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "",
        });
        let words = |args: Vec<String>| args.join(" ");
        let table: [(Pod, Result<Option<&str>, &str>); 7] = [
            (
                pod("sample", injected.clone(), false, false),
                Ok(Some(
                    "proxy init -p 15001 -z 15006 -b * -d 15090,15021,15020,8081",
                )),
            ),
            (
                pod("sample", injected.clone(), false, true),
                Ok(Some(
                    "proxy init -p 15001 -z 15006 -b * -d 15090,15021,15020,8081 --capture-dns",
                )),
            ),
            (
                pod(
                    "sample",
                    json!({"sidecar.istio.io/status": "{}", "traffic.sidecar.istio.io/excludeOutboundPorts": "5432", "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.96.0.1/32"}),
                    false,
                    false,
                ),
                Ok(Some(
                    "proxy init -p 15001 -z 15006 -b * -d 15090,15021,15020 -o 5432 -x 10.96.0.1/32",
                )),
            ),
            // Captured by its own init container, not injected, in an excluded namespace.
            (pod("sample", injected.clone(), true, false), Ok(None)),
            (pod("sample", json!({}), false, false), Ok(None)),
            (
                pod("istio-system", injected.clone(), false, false),
                Ok(None),
            ),
            (
                pod(
                    "sample",
                    json!({"sidecar.istio.io/status": "{}", "sidecar.istio.io/interceptionMode": "TPROXY"}),
                    false,
                    false,
                ),
                Err("TPROXY"),
            ),
        ];
        for (pod, expected) in table {
            let got = capture_args(&pod, &plugin).map(|args| args.map(words));
            match (got, expected) {
                (Ok(got), Ok(expected)) => {
                    assert_eq!(got.as_deref(), expected, "{:?}", pod.metadata.annotations)
                }
                (Err(error), Err(expected)) => assert!(error.contains(expected), "{error}"),
                (got, expected) => panic!("{got:?}, expected {expected:?}"),
            }
        }
    }
}
