//! What the injector works from, read from the two ConfigMaps install writes (as istiod and
//! `istioctl kube-inject --injectConfigMapName --meshConfigMapName` read them): the injector's
//! `values` (JSON) and `config` (YAML), and the mesh config's `mesh` (YAML).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: {reason}")]
    Malformed { origin: String, reason: String },
    #[error("cannot read ConfigMap {namespace}/{name}: {source}")]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("ConfigMap {namespace}/{name} does not exist; install writes it (`causeway install`)")]
    Missing { namespace: String, name: String },
}

fn malformed(origin: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Malformed {
        origin: origin.to_owned(),
        reason: reason.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InjectionConfig {
    pub image: String,
    pub cluster_id: String,
    pub network: String,
    pub mesh_id: String,
    pub istio_namespace: String,
    pub revision: String,
    /// `host:port` of discovery for xDS and certificates.
    pub discovery_address: String,
    pub trust_domain: String,
    pub proxy: ProxyDefaults,
    pub access_log_file: String,
    pub access_log_format: String,
    pub access_log_encoding: String,
    /// `meshConfig.defaultConfig`, the pod's `PROXY_CONFIG` before its own annotation.
    pub default_config: Map<String, Value>,
    /// `policy: enabled`: namespaces selected by the webhook are injected unless a pod opts out.
    pub policy_enabled: bool,
    pub never_inject: Vec<LabelSelector>,
    pub always_inject: Vec<LabelSelector>,
    pub injected_annotations: BTreeMap<String, String>,
    pub default_templates: Vec<String>,
    /// The CNI plugin captures traffic (`istio_cni.enabled` or `pilot.cni.enabled`): no init
    /// container, annotations for the plugin instead.
    pub cni: bool,
}

/// `values.global.proxy` and friends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyDefaults {
    pub include_ip_ranges: String,
    pub exclude_ip_ranges: String,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub exclude_outbound_ports: String,
    pub hold_application_until_proxy_starts: bool,
    pub log_level: String,
    pub concurrency: u64,
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn flag(value: Option<&Value>) -> Option<bool> {
    let value = value?;
    value
        .as_bool()
        .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
}

fn pointer<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    value.pointer(path).filter(|value| !value.is_null())
}

impl InjectionConfig {
    /// `values` is the injector ConfigMap's `values` (JSON), `config` its `config` (YAML), and
    /// `mesh` the mesh ConfigMap's `mesh` (YAML). Each is named in errors by its origin.
    pub fn parse(
        values: (&str, &str),
        config: (&str, &str),
        mesh: (&str, &str),
    ) -> Result<InjectionConfig, ConfigError> {
        let (values_origin, values) = values;
        let values: Value = serde_json::from_str(values)
            .map_err(|error| malformed(values_origin, format!("not JSON: {error}")))?;
        let (config_origin, config) = config;
        let config: Value = if config.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            serde_saphyr::from_str(config)
                .map_err(|error| malformed(config_origin, format!("not YAML: {error}")))?
        };
        let (mesh_origin, mesh) = mesh;
        let mesh: Value = if mesh.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            serde_saphyr::from_str(mesh)
                .map_err(|error| malformed(mesh_origin, format!("not YAML: {error}")))?
        };
        let istio_namespace = text(pointer(&values, "/global/istioNamespace"))
            .unwrap_or_else(|| "istio-system".into());
        let revision = text(pointer(&values, "/revision"))
            .filter(|revision| !revision.is_empty())
            .unwrap_or_else(|| "default".into());
        let default_discovery = if revision == "default" {
            format!("istiod.{istio_namespace}.svc:15012")
        } else {
            format!("istiod-{revision}.{istio_namespace}.svc:15012")
        };
        let default_config = match pointer(&mesh, "/defaultConfig") {
            Some(Value::Object(map)) => map.clone(),
            None => Map::new(),
            Some(_) => return Err(malformed(mesh_origin, "defaultConfig must be a map")),
        };
        let selectors = |key: &str| -> Result<Vec<LabelSelector>, ConfigError> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(list) => serde_json::from_value(list.clone()).map_err(|error| {
                    malformed(
                        config_origin,
                        format!("{key} is not a list of label selectors: {error}"),
                    )
                }),
            }
        };
        let injected_annotations = match config.get("injectedAnnotations") {
            Some(Value::Object(map)) => map
                .iter()
                .filter_map(|(key, value)| Some((key.clone(), text(Some(value))?)))
                .collect(),
            None | Some(Value::Null) => BTreeMap::new(),
            Some(_) => {
                return Err(malformed(
                    config_origin,
                    "injectedAnnotations must be a map",
                ));
            }
        };
        let default_templates = match config.get("defaultTemplates") {
            Some(Value::Array(names)) => names
                .iter()
                .filter_map(|name| name.as_str().map(str::to_owned))
                .collect(),
            _ => vec!["sidecar".to_owned()],
        };
        let proxy = |key: &str| pointer(&values, &format!("/global/proxy/{key}"));
        Ok(InjectionConfig {
            image: text(proxy("image")).unwrap_or_else(|| "causeway".into()),
            cluster_id: text(pointer(&values, "/global/multiCluster/clusterName"))
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "Kubernetes".into()),
            network: text(pointer(&values, "/global/network")).unwrap_or_default(),
            mesh_id: text(pointer(&values, "/global/meshID")).unwrap_or_default(),
            discovery_address: text(default_config.get("discoveryAddress"))
                .unwrap_or(default_discovery),
            trust_domain: text(pointer(&mesh, "/trustDomain"))
                .unwrap_or_else(|| "cluster.local".into()),
            istio_namespace,
            revision,
            proxy: ProxyDefaults {
                include_ip_ranges: text(proxy("includeIPRanges")).unwrap_or_else(|| "*".into()),
                exclude_ip_ranges: text(proxy("excludeIPRanges")).unwrap_or_default(),
                include_inbound_ports: text(proxy("includeInboundPorts"))
                    .unwrap_or_else(|| "*".into()),
                exclude_inbound_ports: text(proxy("excludeInboundPorts")).unwrap_or_default(),
                exclude_outbound_ports: text(proxy("excludeOutboundPorts")).unwrap_or_default(),
                hold_application_until_proxy_starts: flag(
                    default_config.get("holdApplicationUntilProxyStarts"),
                )
                .or_else(|| flag(proxy("holdApplicationUntilProxyStarts")))
                .unwrap_or(true),
                log_level: text(proxy("logLevel")).unwrap_or_else(|| "warning".into()),
                concurrency: default_config
                    .get("concurrency")
                    .and_then(Value::as_u64)
                    .unwrap_or(2),
            },
            access_log_file: text(pointer(&mesh, "/accessLogFile")).unwrap_or_default(),
            access_log_format: text(pointer(&mesh, "/accessLogFormat")).unwrap_or_default(),
            access_log_encoding: text(pointer(&mesh, "/accessLogEncoding"))
                .unwrap_or_else(|| "TEXT".into()),
            default_config,
            policy_enabled: config.get("policy").and_then(Value::as_str) != Some("disabled"),
            never_inject: selectors("neverInjectSelector")?,
            always_inject: selectors("alwaysInjectSelector")?,
            injected_annotations,
            default_templates,
            cni: flag(pointer(&values, "/istio_cni/enabled"))
                .or_else(|| flag(pointer(&values, "/pilot/cni/enabled")))
                .unwrap_or(false),
        })
    }
}

impl InjectionConfig {
    /// From the injector ConfigMap `injector` and the mesh ConfigMap `mesh` in `namespace`, as
    /// istiod and `istioctl kube-inject --injectConfigMapName --meshConfigMapName` read them.
    pub async fn from_cluster(
        client: &kube::Client,
        namespace: &str,
        injector: &str,
        mesh: &str,
    ) -> Result<InjectionConfig, ConfigError> {
        let maps = kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(
            client.clone(),
            namespace,
        );
        let get = |name: &str| {
            let maps = maps.clone();
            let name = name.to_owned();
            async move {
                maps.get_opt(&name)
                    .await
                    .map_err(|source| ConfigError::Read {
                        namespace: namespace.to_owned(),
                        name: name.clone(),
                        source: Box::new(source),
                    })?
                    .ok_or_else(|| ConfigError::Missing {
                        namespace: namespace.to_owned(),
                        name,
                    })
            }
        };
        let injector = get(injector).await?;
        let mesh = get(mesh).await?;
        InjectionConfig::from_config_maps(&injector, &mesh)
    }

    /// From the injector ConfigMap (`values`, `config`) and the mesh ConfigMap (`mesh`).
    pub fn from_config_maps(
        injector: &k8s_openapi::api::core::v1::ConfigMap,
        mesh: &k8s_openapi::api::core::v1::ConfigMap,
    ) -> Result<InjectionConfig, ConfigError> {
        let describe = |map: &k8s_openapi::api::core::v1::ConfigMap| {
            format!(
                "ConfigMap {}/{}",
                map.metadata.namespace.as_deref().unwrap_or(""),
                map.metadata.name.as_deref().unwrap_or("")
            )
        };
        let key = |map: &k8s_openapi::api::core::v1::ConfigMap, key: &str, required: bool| match map
            .data
            .as_ref()
            .and_then(|data| data.get(key))
        {
            Some(text) => Ok(text.clone()),
            None if !required => Ok(String::new()),
            None => Err(malformed(&describe(map), format!("has no `{key}` key"))),
        };
        let values = key(injector, "values", true)?;
        let config = key(injector, "config", false)?;
        let mesh_text = key(mesh, "mesh", false)?;
        let injector_name = describe(injector);
        let mesh_name = describe(mesh);
        InjectionConfig::parse(
            (&format!("{injector_name} key values"), &values),
            (&format!("{injector_name} key config"), &config),
            (&format!("{mesh_name} key mesh"), &mesh_text),
        )
    }
}
