//! The install settings as Causeway uses them: the profile's tree with the user's inputs merged
//! on top, checked against the schema, then read into types. Everything the renderer decides
//! from is here; nothing below reads the raw tree.

use crate::input::{InputError, OperatorInput, merge_maps};
use crate::path::TreePath;
use crate::profiles::{PROFILES, profile};
use crate::schema::{self, Ignored, WrongSetting};
use k8s_openapi::api::core::v1::{EnvVar, ServicePort};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("profile {name:?} does not exist; Istio's profiles are {}", PROFILES.join(", "))]
    UnknownProfile { name: String },
    #[error(
        "--set {assignment}: {path} is not a setting Causeway knows (misspelt? the README's Install section lists the settings Causeway reads)"
    )]
    UnknownSetPath { assignment: String, path: String },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Wrong(Vec<WrongSetting>),
}

fn wrong(path: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Wrong(vec![WrongSetting {
        path: path.to_owned(),
        reason: reason.into(),
    }])
}

/// Who the cluster is in the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshIdentity {
    pub cluster_name: String,
    pub network: String,
    pub mesh_id: String,
    pub trust_domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pilot {
    pub replicas: i32,
    /// `values.pilot.env` and `components.pilot.k8s.env`, as the Deployment's environment.
    pub env: BTreeMap<String, String>,
}

/// A remote cluster's pointer to the primary's discovery (`profile: remote`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub pilot_address: String,
    /// Where the API server calls the injector.
    pub injection: Injection,
}

/// How a remote cluster's API server reaches the injector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// Through the cluster's own `istiod` Service (whose endpoints are `remotePilotAddress`) at
    /// this path (`values.istiodRemote.injectionPath`, default `/inject`), as Istio's chart does:
    /// the API server then checks discovery's certificate for `istiod.<namespace>.svc`, which it
    /// carries, where an address in a URL would need an IP SAN.
    ServicePath(String),
    /// `values.istiodRemote.injectionURL`, as given.
    Url(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub env: Vec<EnvVar>,
    pub ports: Vec<ServicePort>,
    pub service_type: String,
    pub replicas: i32,
}

/// What the injector adds to a pod, from `values.global.proxy*` and the mesh config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyValues {
    pub hold_application_until_proxy_starts: bool,
    pub include_ip_ranges: String,
    pub exclude_ip_ranges: String,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub exclude_outbound_ports: String,
    pub log_level: String,
    pub termination_drain_duration: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `install.operator.istio.io/owning-resource`: the IstioOperator's name, else `unknown`.
    pub owner: String,
    pub profile: String,
    /// `istio.io/rev`; `default` when none is given.
    pub revision: String,
    pub namespace: String,
    pub image: String,
    pub identity: MeshIdentity,
    pub base: bool,
    pub pilot: Option<Pilot>,
    pub remote: Option<Remote>,
    pub gateways: Vec<Gateway>,
    pub proxy: ProxyValues,
    pub self_signed: bool,
    /// Pods are captured by the CNI plugin, not an init container (`values.istio_cni.enabled`,
    /// `values.pilot.cni.enabled`, or `components.cni.enabled`).
    pub cni_capture: bool,
    /// This install provides the CNI plugin's configuration (`components.cni.enabled`), as
    /// istioctl installs the node agent.
    pub cni_agent: bool,
    /// The merged `meshConfig`, written to the `istio` ConfigMap.
    pub mesh_config: Map<String, Value>,
    /// The merged `values`, written to the `istio-sidecar-injector` ConfigMap as Istio does.
    pub values: Map<String, Value>,
    /// Settings read but not used, and settings not known: said aloud, never silently dropped.
    pub ignored: Vec<Ignored>,
    /// Gateways of the inputs that are not installed, and why.
    pub skipped: Vec<String>,
}

/// The `meshConfig` fields a gateway's proxy takes its access log from.
const ACCESS_LOG_FIELDS: [&str; 3] = ["accessLogFile", "accessLogFormat", "accessLogEncoding"];

impl Settings {
    /// Gateways installed on their own (no control plane in these settings, as with the seeds'
    /// east-west gateway files) log as the control plane's mesh config says, as Istio's gateways
    /// do: its access-log fields are taken from `mesh` (the `istio` ConfigMap's `mesh` YAML) unless
    /// these settings give their own. True when something was taken.
    pub fn adopt_control_plane_access_log(&mut self, mesh: &str) -> Result<bool, String> {
        if self.pilot.is_some() || self.gateways.is_empty() {
            return Ok(false);
        }
        if ACCESS_LOG_FIELDS
            .iter()
            .any(|field| self.mesh_config.contains_key(*field))
        {
            return Ok(false);
        }
        let mesh: Value = serde_saphyr::from_str(mesh)
            .map_err(|error| format!("the control plane's mesh config is not YAML: {error}"))?;
        let mut adopted = false;
        for field in ACCESS_LOG_FIELDS {
            if let Some(value) = mesh.get(field) {
                self.mesh_config.insert(field.to_owned(), value.clone());
                adopted = true;
            }
        }
        Ok(adopted)
    }
}

/// Reads files (origin, text) and `--set` flags into settings.
pub fn load(files: &[(String, String)], sets: &[String]) -> Result<Settings, SettingsError> {
    let mut input = OperatorInput::default();
    for (origin, text) in files {
        input.add_file(origin, text)?;
    }
    for assignment in sets {
        let path = input.set(assignment)?;
        if !schema::is_known(&path) {
            return Err(SettingsError::UnknownSetPath {
                assignment: assignment.clone(),
                path: path.to_string(),
            });
        }
    }
    from_input(input)
}

pub fn from_input(input: OperatorInput) -> Result<Settings, SettingsError> {
    let user = Value::Object(input.spec);
    let ignored = schema::check(&user).map_err(SettingsError::Wrong)?;
    let profile_name = user
        .get("profile")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let Some(Value::Object(mut tree)) = profile(&profile_name) else {
        return Err(SettingsError::UnknownProfile { name: profile_name });
    };
    if let Value::Object(user) = user {
        merge_maps(&mut tree, user);
    }
    let tree = Tree(Value::Object(tree));
    read(&tree, input.name, profile_name, ignored)
}

/// The merged tree, read by path. Types were checked by the schema, so a reader only converts.
struct Tree(Value);

impl Tree {
    fn get(&self, path: &str) -> Option<&Value> {
        let path = TreePath::parse(path).expect("paths written here are valid");
        let mut node = &self.0;
        for segment in &path.0 {
            let crate::path::Segment::Key(key) = segment else {
                return None;
            };
            node = node.get(key)?;
        }
        (!node.is_null()).then_some(node)
    }

    fn text(&self, path: &str) -> Option<String> {
        self.get(path).and_then(text_of)
    }

    fn flag(&self, path: &str) -> Option<bool> {
        self.get(path).and_then(flag_of)
    }

    fn count(&self, path: &str) -> Option<u64> {
        self.get(path).and_then(|value| {
            value
                .as_u64()
                .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
        })
    }

    fn map(&self, path: &str) -> Map<String, Value> {
        match self.get(path) {
            Some(Value::Object(map)) => map.clone(),
            _ => Map::new(),
        }
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn flag_of(value: &Value) -> Option<bool> {
    value.as_bool().or_else(|| match value.as_str() {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    })
}

fn read(
    tree: &Tree,
    name: Option<String>,
    profile: String,
    ignored: Vec<Ignored>,
) -> Result<Settings, SettingsError> {
    let namespace = tree
        .text("namespace")
        .or_else(|| tree.text("values.global.istioNamespace"))
        .unwrap_or_else(|| "istio-system".into());
    let revision = tree
        .text("revision")
        .filter(|revision| !revision.is_empty())
        .unwrap_or_else(|| "default".into());
    if !is_dns_label(&revision) {
        return Err(wrong(
            "revision",
            format!("{revision:?} is not a DNS label (lower-case letters, digits and '-')"),
        ));
    }
    let hub = tree.text("hub").or_else(|| tree.text("values.global.hub"));
    let tag = tree.text("tag").or_else(|| tree.text("values.global.tag"));
    let image = match (hub, tag) {
        (Some(hub), Some(tag)) => format!("{}/causeway:{tag}", hub.trim_end_matches('/')),
        (Some(hub), None) => format!("{}/causeway", hub.trim_end_matches('/')),
        (None, Some(tag)) => format!("causeway:{tag}"),
        (None, None) => "causeway".into(),
    };
    let identity = MeshIdentity {
        cluster_name: tree
            .text("values.global.multiCluster.clusterName")
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "Kubernetes".into()),
        network: tree.text("values.global.network").unwrap_or_default(),
        mesh_id: tree.text("values.global.meshID").unwrap_or_default(),
        trust_domain: tree
            .text("meshConfig.trustDomain")
            .unwrap_or_else(|| "cluster.local".into()),
    };
    let pilot_enabled = tree.flag("components.pilot.enabled").unwrap_or(false)
        && tree.flag("values.pilot.enabled").unwrap_or(true);
    let pilot = pilot_enabled.then(|| Pilot {
        replicas: tree
            .count("components.pilot.k8s.replicaCount")
            .or_else(|| tree.count("values.pilot.replicaCount"))
            .or_else(|| tree.count("values.pilot.autoscaleMin"))
            .unwrap_or(1)
            .min(i32::MAX as u64) as i32,
        env: pilot_env(tree),
    });
    let remote_enabled = tree
        .flag("components.istiodRemote.enabled")
        .unwrap_or(false)
        || tree.flag("values.istiodRemote.enabled").unwrap_or(false);
    let remote = if remote_enabled {
        let pilot_address = tree
            .text("values.global.remotePilotAddress")
            .unwrap_or_default();
        if pilot_address.is_empty() {
            return Err(wrong(
                "values.global.remotePilotAddress",
                "a remote cluster needs the address of the primary's discovery (istiod): the east-west gateway's EXTERNAL-IP, or istiod's pod IP on a flat network",
            ));
        }
        if pilot_address.contains("${") || pilot_address.starts_with('$') {
            return Err(wrong(
                "values.global.remotePilotAddress",
                format!(
                    "{pilot_address:?} is an unexpanded shell variable; export it first (the seeds set DISCOVERY_ADDRESS from the gateway's EXTERNAL-IP) and pipe the file through envsubst"
                ),
            ));
        }
        let injection = match (
            tree.text("values.istiodRemote.injectionURL"),
            tree.text("values.istiodRemote.injectionPath"),
        ) {
            (Some(url), _) if !url.is_empty() => Injection::Url(url),
            (_, Some(path)) if !path.is_empty() => Injection::ServicePath(path),
            _ => Injection::ServicePath("/inject".into()),
        };
        Some(Remote {
            pilot_address,
            injection,
        })
    } else {
        None
    };
    let (gateways, skipped) = gateways(tree, &namespace, &identity)?;
    let proxy = ProxyValues {
        hold_application_until_proxy_starts: tree
            .flag("meshConfig.defaultConfig.holdApplicationUntilProxyStarts")
            .or_else(|| tree.flag("values.global.proxy.holdApplicationUntilProxyStarts"))
            .unwrap_or(true),
        include_ip_ranges: tree
            .text("values.global.proxy.includeIPRanges")
            .unwrap_or_else(|| "*".into()),
        exclude_ip_ranges: tree
            .text("values.global.proxy.excludeIPRanges")
            .unwrap_or_default(),
        include_inbound_ports: tree
            .text("values.global.proxy.includeInboundPorts")
            .unwrap_or_else(|| "*".into()),
        exclude_inbound_ports: tree
            .text("values.global.proxy.excludeInboundPorts")
            .unwrap_or_default(),
        exclude_outbound_ports: tree
            .text("values.global.proxy.excludeOutboundPorts")
            .unwrap_or_default(),
        log_level: tree
            .text("values.global.proxy.logLevel")
            .unwrap_or_else(|| "warning".into()),
        termination_drain_duration: tree
            .text("meshConfig.defaultConfig.terminationDrainDuration")
            .unwrap_or_else(|| "5s".into()),
    };
    let cni_agent = tree.flag("components.cni.enabled").unwrap_or(false);
    let cni_capture = cni_agent
        || tree.flag("values.istio_cni.enabled").unwrap_or(false)
        || tree.flag("values.pilot.cni.enabled").unwrap_or(false);
    let mut values = tree.map("values");
    if cni_capture {
        // The injector reads it from its values, as Istio's does.
        values.insert("istio_cni".into(), serde_json::json!({"enabled": true}));
    }
    Ok(Settings {
        owner: name.unwrap_or_else(|| "unknown".into()),
        profile,
        revision,
        namespace,
        image,
        identity,
        base: tree.flag("components.base.enabled").unwrap_or(false),
        pilot,
        remote,
        gateways,
        proxy,
        self_signed: tree.flag("values.security.selfSigned").unwrap_or(true),
        cni_capture,
        cni_agent,
        mesh_config: tree.map("meshConfig"),
        values,
        ignored,
        skipped,
    })
}

fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

fn pilot_env(tree: &Tree) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = tree
        .map("values.pilot.env")
        .iter()
        .filter_map(|(name, value)| Some((name.clone(), text_of(value)?)))
        .collect();
    if let Some(Value::Array(items)) = tree.get("components.pilot.k8s.env") {
        for item in items {
            if let (Some(name), Some(value)) = (
                item.get("name").and_then(Value::as_str),
                item.get("value").and_then(text_of),
            ) {
                env.insert(name.to_owned(), value);
            }
        }
    }
    if tree.flag("values.global.externalIstiod").unwrap_or(false) {
        env.entry("EXTERNAL_ISTIOD".into())
            .or_insert_with(|| "true".into());
    }
    env
}

/// Istio's ingress gateway ports, for a gateway that names none.
fn default_gateway_ports() -> Vec<ServicePort> {
    [
        ("status-port", 15021, 15021),
        ("http2", 80, 8080),
        ("https", 443, 8443),
    ]
    .into_iter()
    .map(|(name, port, target)| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(target)),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    })
    .collect()
}

fn gateways(
    tree: &Tree,
    namespace: &str,
    identity: &MeshIdentity,
) -> Result<(Vec<Gateway>, Vec<String>), SettingsError> {
    let Some(Value::Array(items)) = tree.get("components.ingressGateways") else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut gateways = Vec::new();
    let mut skipped = Vec::new();
    let mut errors = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let at = |field: &str| format!("components.ingressGateways[{index}]{field}");
        if !item.get("enabled").and_then(flag_of).unwrap_or(false) {
            continue;
        }
        let Some(name) = item
            .get("name")
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty())
        else {
            errors.push(WrongSetting {
                path: at(".name"),
                reason: "an enabled gateway needs a name".into(),
            });
            continue;
        };
        let k8s = item.get("k8s");
        let env: Vec<EnvVar> = match k8s.and_then(|k8s| k8s.get("env")) {
            None | Some(Value::Null) => Vec::new(),
            Some(env) => match serde_json::from_value(env.clone()) {
                Ok(env) => env,
                Err(error) => {
                    errors.push(WrongSetting {
                        path: at(".k8s.env"),
                        reason: format!("not a list of environment variables ({error})"),
                    });
                    continue;
                }
            },
        };
        let router_mode = env
            .iter()
            .find(|variable| variable.name == "ISTIO_META_ROUTER_MODE")
            .and_then(|variable| variable.value.clone());
        if router_mode.as_deref() != Some("sni-dnat") {
            skipped.push(format!(
                "gateway {name} is not installed: Causeway's router serves east-west gateways (ISTIO_META_ROUTER_MODE=sni-dnat); north-south ingress is not supported yet"
            ));
            continue;
        }
        let ports = match k8s
            .and_then(|k8s| k8s.get("service"))
            .and_then(|service| service.get("ports"))
        {
            None | Some(Value::Null) => default_gateway_ports(),
            Some(ports) => match serde_json::from_value(ports.clone()) {
                Ok(ports) => ports,
                Err(error) => {
                    errors.push(WrongSetting {
                        path: at(".k8s.service.ports"),
                        reason: format!("not a list of Service ports ({error})"),
                    });
                    continue;
                }
            },
        };
        let mut labels: BTreeMap<String, String> = match item.get("label") {
            Some(Value::Object(map)) => map
                .iter()
                .filter_map(|(key, value)| Some((key.clone(), text_of(value)?)))
                .collect(),
            None | Some(Value::Null) => BTreeMap::new(),
            Some(_) => {
                errors.push(WrongSetting {
                    path: at(".label"),
                    reason: "expected a map of labels".into(),
                });
                continue;
            }
        };
        labels
            .entry("app".into())
            .or_insert_with(|| name.to_owned());
        labels
            .entry("istio".into())
            .or_insert_with(|| name.strip_prefix("istio-").unwrap_or(name).to_owned());
        if !identity.network.is_empty() {
            labels
                .entry("topology.istio.io/network".into())
                .or_insert_with(|| identity.network.clone());
        }
        gateways.push(Gateway {
            name: name.to_owned(),
            namespace: item
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or(namespace)
                .to_owned(),
            labels,
            env,
            ports,
            service_type: k8s
                .and_then(|k8s| k8s.get("service"))
                .and_then(|service| service.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("LoadBalancer")
                .to_owned(),
            replicas: k8s
                .and_then(|k8s| k8s.get("replicaCount"))
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .min(i32::MAX as u64) as i32,
        });
    }
    if errors.is_empty() {
        Ok((gateways, skipped))
    } else {
        Err(SettingsError::Wrong(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_samples::sample_file as sample;

    #[test]
    fn a_primary_sample_reads_into_its_identity_and_mesh_config() {
        let settings = load(
            &[sample(
                "topologies/multi-primary-multi-network/cluster02.yaml",
            )],
            &[],
        )
        .unwrap();
        assert_eq!(settings.profile, "default");
        assert_eq!(
            settings.identity,
            MeshIdentity {
                cluster_name: "cluster02".into(),
                network: "network2".into(),
                mesh_id: "mesh1".into(),
                trust_domain: "cluster.local".into(),
            }
        );
        assert_eq!(settings.pilot.as_ref().map(|pilot| pilot.replicas), Some(1));
        assert!(settings.remote.is_none());
        assert!(settings.base);
        assert_eq!(settings.mesh_config["accessLogEncoding"], "JSON");
        assert!(settings.gateways.is_empty());
        assert_eq!(settings.skipped.len(), 1, "{:?}", settings.skipped);
        assert!(settings.skipped[0].contains("istio-ingressgateway"));
        assert_eq!(settings.owner, "unknown");
        assert_eq!(settings.image, "causeway");
    }

    #[test]
    fn a_remote_sample_needs_its_address_and_builds_the_injection_url() {
        let file = sample("topologies/primary-remote-multi-network/cluster02.yaml");
        let error = load(std::slice::from_ref(&file), &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("unexpanded shell variable"), "{error}");
        let expanded = (
            file.0.clone(),
            file.1.replace("${DISCOVERY_ADDRESS}", "172.18.11.1"),
        );
        let settings = load(&[expanded], &[]).unwrap();
        assert!(settings.pilot.is_none());
        assert_eq!(
            settings.remote,
            Some(Remote {
                pilot_address: "172.18.11.1".into(),
                injection: Injection::ServicePath("/inject/cluster/cluster02/net/network2".into()),
            })
        );
        let error = load(&[], &["profile=remote".into()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("values.global.remotePilotAddress: a remote cluster needs"),
            "{error}"
        );
    }

    #[test]
    fn the_eastwest_gateway_file_makes_a_router_gateway() {
        let settings = load(
            &[sample(
                "topologies/eastwest-gateway-cluster01-network1.yaml",
            )],
            &["values.global.tag=1.0".into(), "hub=registry.lab".into()],
        )
        .unwrap();
        assert!(settings.pilot.is_none(), "profile: empty");
        assert!(!settings.base);
        assert_eq!(settings.owner, "eastwest");
        assert_eq!(settings.image, "registry.lab/causeway:1.0");
        let [gateway] = settings.gateways.as_slice() else {
            panic!("one gateway: {:?}", settings.gateways)
        };
        assert_eq!(gateway.name, "istio-eastwestgateway");
        assert_eq!(gateway.labels["istio"], "eastwestgateway");
        assert_eq!(gateway.labels["topology.istio.io/network"], "network1");
        let ports: Vec<i32> = gateway.ports.iter().map(|port| port.port).collect();
        assert_eq!(ports, [15021, 15443, 15012, 15017]);
        assert_eq!(gateway.service_type, "LoadBalancer");
        assert!(
            gateway
                .env
                .iter()
                .any(|variable| variable.name == "ISTIO_META_REQUESTED_NETWORK_VIEW")
        );
    }

    #[test]
    fn sets_reach_settings_and_bad_ones_are_refused_with_their_path() {
        let settings = load(
            &[],
            &[
                "values.pilot.env.EXTERNAL_ISTIOD=true".into(),
                "values.global.proxy.holdApplicationUntilProxyStarts=false".into(),
                "meshConfig.defaultConfig.proxyMetadata.ISTIO_META_DNS_CAPTURE=true".into(),
                "profile=minimal".into(),
                "revision=canary".into(),
            ],
        )
        .unwrap();
        assert_eq!(settings.pilot.unwrap().env["EXTERNAL_ISTIOD"], "true");
        assert!(!settings.proxy.hold_application_until_proxy_starts);
        assert_eq!(settings.revision, "canary");
        assert_eq!(
            settings.mesh_config["defaultConfig"]["proxyMetadata"]["ISTIO_META_DNS_CAPTURE"],
            true
        );
        for (set, expected) in [
            ("profile=nonsense", "profile \"nonsense\" does not exist"),
            (
                "values.global.meshId=x",
                "values.global.meshId is not a setting",
            ),
            (
                "values.global.configCluster=maybe",
                "values.global.configCluster: expected true or false",
            ),
            ("revision=Not_OK", "not a DNS label"),
        ] {
            let error = load(&[], &[set.into()]).unwrap_err().to_string();
            assert!(error.contains(expected), "{set}: {error}");
        }
    }
}
