//! Istio's two injection templates, built in: `sidecar` (an init container that captures the pod's
//! traffic, or with the CNI plugin the annotations it captures by, and the `istio-proxy` container
//! beside the app) and `gateway` (the pod's own
//! `istio-proxy` container, `image: auto`, becomes the router).

use super::config::InjectionConfig;
use super::{InjectError, Target};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Volume};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

pub const PROXY_CONTAINER: &str = "istio-proxy";
pub const INIT_CONTAINER: &str = "istio-init";
/// Ports capture never takes: the proxy's own status, metrics and health ports.
const PROXY_PORTS: &str = "15090,15021,15020";

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("the injection templates fit their types")
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// `meshConfig.defaultConfig` with the pod's `proxy.istio.io/config` on top.
fn proxy_config(pod: &Pod, config: &InjectionConfig) -> Result<Map<String, Value>, InjectError> {
    let mut merged = config.default_config.clone();
    if let Some(text) = annotation(pod, "proxy.istio.io/config") {
        let overlay: Value =
            serde_saphyr::from_str(text).map_err(|error| InjectError::Annotation {
                key: "proxy.istio.io/config".into(),
                reason: format!("not YAML: {error}"),
            })?;
        match overlay {
            Value::Object(overlay) => crate::input::merge_maps(&mut merged, overlay),
            Value::Null => {}
            _ => {
                return Err(InjectError::Annotation {
                    key: "proxy.istio.io/config".into(),
                    reason: "must be a map of ProxyConfig fields".into(),
                });
            }
        }
    }
    Ok(merged)
}

fn proxy_metadata(proxy_config: &Map<String, Value>) -> BTreeMap<String, String> {
    match proxy_config.get("proxyMetadata") {
        Some(Value::Object(map)) => map
            .iter()
            .filter_map(|(key, value)| {
                let text = match value {
                    Value::String(text) => text.clone(),
                    Value::Null => return None,
                    other => other.to_string(),
                };
                Some((key.clone(), text))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn field(path: &str) -> Value {
    json!({"fieldRef": {"apiVersion": "v1", "fieldPath": path}})
}

/// What both templates' proxies are told about themselves and the mesh.
fn common_env(
    pod: &Pod,
    config: &InjectionConfig,
    target: &Target,
    proxy_config: &Map<String, Value>,
) -> Vec<Value> {
    let discovery = proxy_config
        .get("discoveryAddress")
        .and_then(Value::as_str)
        .unwrap_or(&config.discovery_address)
        .to_owned();
    let mut env = vec![
        json!({"name": "JWT_POLICY", "value": "third-party-jwt"}),
        json!({"name": "PILOT_CERT_PROVIDER", "value": "istiod"}),
        json!({"name": "DISCOVERY_ADDRESS", "value": discovery}),
        json!({"name": "CA_ADDR", "value": discovery}),
        json!({"name": "POD_NAME", "valueFrom": field("metadata.name")}),
        json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}),
        json!({"name": "INSTANCE_IP", "valueFrom": field("status.podIP")}),
        json!({"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")}),
        json!({"name": "HOST_IP", "valueFrom": field("status.hostIP")}),
        json!({"name": "ISTIO_META_NODE_NAME", "valueFrom": field("spec.nodeName")}),
        json!({"name": "PROXY_CONFIG", "value": serde_json::to_string(proxy_config).expect("JSON serializes")}),
        json!({"name": "ISTIO_META_CLUSTER_ID", "value": target.cluster.clone().unwrap_or_else(|| config.cluster_id.clone())}),
        json!({"name": "ISTIO_META_NETWORK", "value": network(pod, config, target)}),
        json!({"name": "ISTIO_META_MESH_ID", "value": config.mesh_id}),
        json!({"name": "TRUST_DOMAIN", "value": config.trust_domain}),
        json!({"name": "ISTIO_META_INTERCEPTION_MODE", "value": "REDIRECT"}),
    ];
    if !config.access_log_file.is_empty() {
        env.push(json!({"name": "ACCESS_LOG_FILE", "value": config.access_log_file}));
        env.push(json!({"name": "ACCESS_LOG_ENCODING", "value": config.access_log_encoding}));
        if !config.access_log_format.is_empty() {
            env.push(json!({"name": "ACCESS_LOG_FORMAT", "value": config.access_log_format}));
        }
    }
    for (name, value) in proxy_metadata(proxy_config) {
        env.retain(|existing| existing["name"] != name.as_str());
        env.push(json!({"name": name, "value": value}));
    }
    env
}

/// The pod's network: its own label, else the injection path's, else the install's.
pub fn network(pod: &Pod, config: &InjectionConfig, target: &Target) -> String {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get("topology.istio.io/network").cloned())
        .or_else(|| target.network.clone())
        .unwrap_or_else(|| config.network.clone())
}

fn proxy_volumes() -> Vec<Volume> {
    typed(json!([
        {"name": "istio-data", "emptyDir": {}},
        {"name": "istio-podinfo", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        ]}},
        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
        {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
    ]))
}

fn proxy_mounts() -> Value {
    json!([
        {"name": "istio-data", "mountPath": "/var/lib/istio/data"},
        {"name": "istio-podinfo", "mountPath": "/etc/istio/pod"},
        {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
        {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio"},
    ])
}

fn readiness() -> Value {
    json!({"httpGet": {"path": "/healthz/ready", "port": 15021}, "initialDelaySeconds": 0, "periodSeconds": 1, "timeoutSeconds": 3, "failureThreshold": 30})
}

fn traffic_annotation(pod: &Pod, key: &str, default: &str) -> String {
    annotation(pod, &format!("traffic.sidecar.istio.io/{key}"))
        .unwrap_or(default)
        .trim()
        .to_owned()
}

/// What capture a pod gets, from its `traffic.sidecar.istio.io/*` annotations over the mesh's
/// defaults: the same for the init container's arguments and for the annotations the CNI
/// plugin reads.
struct Capture {
    include_inbound_ports: String,
    /// The proxy's own ports first, then the pod's.
    exclude_inbound_ports: String,
    exclude_outbound_ports: String,
    exclude_outbound_ranges: String,
    dns: bool,
}

fn capture(pod: &Pod, config: &InjectionConfig, dns: bool) -> Result<Capture, InjectError> {
    let include_ranges = traffic_annotation(
        pod,
        "includeOutboundIPRanges",
        &config.proxy.include_ip_ranges,
    );
    if include_ranges != "*" {
        return Err(InjectError::Annotation {
            key: "traffic.sidecar.istio.io/includeOutboundIPRanges".into(),
            reason: format!(
                "{include_ranges:?}: only `*` is supported; exclude ranges with excludeOutboundIPRanges instead"
            ),
        });
    }
    let excluded_inbound = traffic_annotation(
        pod,
        "excludeInboundPorts",
        &config.proxy.exclude_inbound_ports,
    );
    Ok(Capture {
        include_inbound_ports: traffic_annotation(
            pod,
            "includeInboundPorts",
            &config.proxy.include_inbound_ports,
        ),
        exclude_inbound_ports: if excluded_inbound.is_empty() {
            PROXY_PORTS.to_owned()
        } else {
            format!("{PROXY_PORTS},{excluded_inbound}")
        },
        exclude_outbound_ports: traffic_annotation(
            pod,
            "excludeOutboundPorts",
            &config.proxy.exclude_outbound_ports,
        ),
        exclude_outbound_ranges: traffic_annotation(
            pod,
            "excludeOutboundIPRanges",
            &config.proxy.exclude_ip_ranges,
        ),
        dns,
    })
}

impl Capture {
    /// istio-iptables' arguments, as `causeway proxy init` takes them.
    fn init_args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["proxy", "init", "-p", "15001", "-z", "15006"]
            .iter()
            .map(|word| (*word).to_owned())
            .collect();
        args.extend([
            "-b".into(),
            self.include_inbound_ports.clone(),
            "-d".into(),
            self.exclude_inbound_ports.clone(),
        ]);
        if !self.exclude_outbound_ports.is_empty() {
            args.extend(["-o".into(), self.exclude_outbound_ports.clone()]);
        }
        if !self.exclude_outbound_ranges.is_empty() {
            args.extend(["-x".into(), self.exclude_outbound_ranges.clone()]);
        }
        if self.dns {
            args.push("--capture-dns".into());
        }
        args
    }

    /// The annotations Istio's injector writes for its CNI plugin, which sets the same capture up
    /// when the pod's network is made (and reads DNS capture from the proxy's environment).
    fn cni_annotations(&self) -> BTreeMap<String, String> {
        let traffic = |key: &str| format!("traffic.sidecar.istio.io/{key}");
        let mut annotations = BTreeMap::from([
            (
                "sidecar.istio.io/interceptionMode".to_owned(),
                "REDIRECT".to_owned(),
            ),
            (
                traffic("includeInboundPorts"),
                self.include_inbound_ports.clone(),
            ),
            (
                traffic("excludeInboundPorts"),
                self.exclude_inbound_ports.clone(),
            ),
            (traffic("includeOutboundIPRanges"), "*".to_owned()),
            (
                traffic("excludeOutboundIPRanges"),
                self.exclude_outbound_ranges.clone(),
            ),
        ]);
        if !self.exclude_outbound_ports.is_empty() {
            annotations.insert(
                traffic("excludeOutboundPorts"),
                self.exclude_outbound_ports.clone(),
            );
        }
        annotations
    }
}

fn truthy(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::Bool(flag) => Some(*flag),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
}

/// The `sidecar` template.
pub fn sidecar(
    pod: &mut Pod,
    config: &InjectionConfig,
    target: &Target,
) -> Result<Injected, InjectError> {
    let proxy_config = proxy_config(pod, config)?;
    let metadata = proxy_metadata(&proxy_config);
    let capture_dns = metadata
        .get("ISTIO_META_DNS_CAPTURE")
        .is_some_and(|value| value == "true");
    let hold = truthy(proxy_config.get("holdApplicationUntilProxyStarts"))
        .unwrap_or(config.proxy.hold_application_until_proxy_starts);
    let concurrency = proxy_config
        .get("concurrency")
        .and_then(Value::as_u64)
        .unwrap_or(config.proxy.concurrency)
        .max(1);
    let image = annotation(pod, "sidecar.istio.io/proxyImage")
        .unwrap_or(&config.image)
        .to_owned();
    let spec = pod.spec.get_or_insert_with(Default::default);
    let app_containers: Vec<String> = spec
        .containers
        .iter()
        .map(|container| container.name.clone())
        .collect();
    if app_containers.iter().any(|name| name == PROXY_CONTAINER) {
        return Err(InjectError::Conflict(format!(
            "the pod already has a container named {PROXY_CONTAINER}"
        )));
    }
    let mut env = common_env(pod, config, target, &proxy_config);
    env.push(json!({"name": "ISTIO_META_APP_CONTAINERS", "value": app_containers.join(",")}));
    let mut proxy = json!({
        "name": PROXY_CONTAINER,
        "image": image,
        "args": ["proxy", "sidecar", "--concurrency", concurrency.to_string()],
        "env": env,
        "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
        "readinessProbe": readiness(),
        "resources": {"requests": {"cpu": "10m", "memory": "40Mi"}},
        // Root with NET_ADMIN: the proxy's own connections pass the capture by their socket
        // mark, which only NET_ADMIN may set (Istio's proxy passes by its uid, 1337).
        "securityContext": {"allowPrivilegeEscalation": false, "runAsUser": 0, "runAsNonRoot": false, "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}},
        "volumeMounts": proxy_mounts(),
    });
    if hold {
        proxy["lifecycle"] = json!({"postStart": {"exec": {"command": ["causeway", "proxy", "wait", "--timeout", "60s"]}}});
    }
    let proxy: Container = typed(proxy);
    let spec = pod.spec.as_mut().expect("made above");
    if hold {
        spec.containers.insert(0, proxy);
    } else {
        spec.containers.push(proxy);
    }
    let capture = capture(pod, config, capture_dns)?;
    let mut init_containers = Vec::new();
    if config.cni {
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .extend(capture.cni_annotations());
    } else {
        let init: Container = typed(json!({
            "name": INIT_CONTAINER,
            "image": config.image,
            "args": capture.init_args(),
            "securityContext": {"allowPrivilegeEscalation": false, "runAsUser": 0, "runAsNonRoot": false, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}},
            "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}},
        }));
        pod.spec
            .as_mut()
            .expect("made above")
            .init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, init);
        init_containers.push(INIT_CONTAINER.into());
    }
    pod.spec
        .as_mut()
        .expect("made above")
        .volumes
        .get_or_insert_with(Vec::new)
        .extend(proxy_volumes());
    Ok(Injected {
        init_containers,
        containers: vec![PROXY_CONTAINER.into()],
        default_container: app_containers.first().cloned(),
    })
}

/// The `gateway` template: the pod names its `istio-proxy` container; it becomes the router.
pub fn gateway(
    pod: &mut Pod,
    config: &InjectionConfig,
    target: &Target,
) -> Result<Injected, InjectError> {
    let proxy_config = proxy_config(pod, config)?;
    let env = common_env(pod, config, target, &proxy_config);
    let spec = pod.spec.get_or_insert_with(Default::default);
    let container = spec
        .containers
        .iter_mut()
        .find(|container| container.name == PROXY_CONTAINER)
        .ok_or_else(|| InjectError::Conflict(format!("the gateway template needs a container named {PROXY_CONTAINER} (image: auto) in the pod")))?;
    if container
        .image
        .as_deref()
        .is_none_or(|image| image == "auto")
    {
        container.image = Some(config.image.clone());
    }
    container.args = Some(vec!["proxy".into(), "router".into()]);
    let mut merged: Vec<EnvVar> = typed(Value::Array(env));
    for own in container.env.take().unwrap_or_default() {
        merged.retain(|existing| existing.name != own.name);
        merged.push(own);
    }
    container.env = Some(merged);
    if container.readiness_probe.is_none() {
        container.readiness_probe = Some(typed(readiness()));
    }
    let mounts: Vec<k8s_openapi::api::core::v1::VolumeMount> = typed(proxy_mounts());
    let existing = container.volume_mounts.get_or_insert_with(Vec::new);
    for mount in mounts {
        if !existing.iter().any(|have| have.name == mount.name) {
            existing.push(mount);
        }
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for volume in proxy_volumes() {
        if !volumes.iter().any(|have| have.name == volume.name) {
            volumes.push(volume);
        }
    }
    Ok(Injected {
        init_containers: Vec::new(),
        containers: vec![PROXY_CONTAINER.into()],
        default_container: None,
    })
}

/// What a template added, for the `sidecar.istio.io/status` annotation.
#[derive(Debug, Clone, Default)]
pub struct Injected {
    pub init_containers: Vec<String>,
    pub containers: Vec<String>,
    pub default_container: Option<String>,
}
