//! A container's environment, as the kubelet makes it: `env` (values, `$(VAR)` references to
//! earlier ones, and `valueFrom` a field of the pod, a resource, a ConfigMap or a Secret key),
//! `envFrom`, the service links of the pod's namespace (`KUBERNETES_SERVICE_HOST` and friends),
//! `HOSTNAME` and a default `PATH`. A reference to something missing is the container's
//! `CreateContainerConfigError`, with the message the kubelet gives.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the pod runs, for `fieldRef`s the kubelet fills in.
#[derive(Debug, Clone, Default)]
pub struct PodPlacement {
    pub pod_ip: String,
    pub host_ip: String,
    /// The node's capacity, for resource references without a limit.
    pub node_cpus: u32,
    pub node_memory_bytes: u64,
}

/// A Service as an environment variable names it.
#[derive(Debug, Clone)]
pub struct ServiceLink {
    pub name: String,
    pub cluster_ip: String,
    /// `(port name, port, protocol)`, the first one being the Service's main port.
    pub ports: Vec<(Option<String>, i32, String)>,
}

/// Finds the data of ConfigMaps and (decoded) Secrets of the pod's namespace.
pub trait Lookup {
    fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>>;
    fn secret(&self, name: &str) -> Option<BTreeMap<String, String>>;
}

/// The variables the services of the namespace give every container (`enableServiceLinks`), and
/// `kubernetes`'s, which every pod gets.
pub fn service_variables(links: &[ServiceLink]) -> Vec<(String, String)> {
    let mut variables = Vec::new();
    for link in links {
        if link.cluster_ip.is_empty() || link.cluster_ip == "None" {
            continue;
        }
        let prefix = link.name.to_uppercase().replace('-', "_");
        let Some((_, first_port, first_protocol)) = link.ports.first() else {
            continue;
        };
        variables.push((format!("{prefix}_SERVICE_HOST"), link.cluster_ip.clone()));
        variables.push((format!("{prefix}_SERVICE_PORT"), first_port.to_string()));
        for (name, port, _) in &link.ports {
            if let Some(name) = name.as_deref().filter(|name| !name.is_empty()) {
                let name = name.to_uppercase().replace('-', "_");
                variables.push((format!("{prefix}_SERVICE_PORT_{name}"), port.to_string()));
            }
        }
        let protocol = first_protocol.to_lowercase();
        variables.push((
            format!("{prefix}_PORT"),
            format!("{protocol}://{}:{first_port}", link.cluster_ip),
        ));
        for (_, port, protocol) in &link.ports {
            let upper = protocol.to_uppercase();
            let lower = protocol.to_lowercase();
            let base = format!("{prefix}_PORT_{port}_{upper}");
            variables.push((
                base.clone(),
                format!("{lower}://{}:{port}", link.cluster_ip),
            ));
            variables.push((format!("{base}_PROTO"), lower));
            variables.push((format!("{base}_PORT"), port.to_string()));
            variables.push((format!("{base}_ADDR"), link.cluster_ip.clone()));
        }
    }
    variables
}

/// Expands `$(NAME)` with `known` variables, as Kubernetes does in env values, commands and args:
/// `$$` is a literal `$`, and an unknown reference stays as written.
pub fn expand(text: &str, known: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(position) = rest.find('$') {
        out.push_str(&rest[..position]);
        let after = &rest[position + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            out.push('$');
            rest = escaped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match known.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A quantity as a plain number of `unit`s, rounded up (`100m` CPU is 1 with the default
/// divisor; `64Mi` memory is 67108864 bytes).
fn quantity(value: &Quantity, divisor: Option<&Quantity>) -> Option<u64> {
    let parse = |text: &str| -> Option<f64> {
        let text = text.trim();
        let suffixes: [(&str, f64); 12] = [
            ("Ki", 1024.0),
            ("Mi", 1024.0 * 1024.0),
            ("Gi", 1024.0 * 1024.0 * 1024.0),
            ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
            ("m", 0.001),
            ("k", 1e3),
            ("M", 1e6),
            ("G", 1e9),
            ("T", 1e12),
            ("n", 1e-9),
            ("u", 1e-6),
            ("", 1.0),
        ];
        suffixes.iter().find_map(|(suffix, factor)| {
            text.strip_suffix(suffix)
                .and_then(|number| number.parse::<f64>().ok())
                .map(|number| number * factor)
        })
    };
    let amount = parse(&value.0)?;
    let unit = divisor.and_then(|divisor| parse(&divisor.0)).unwrap_or(1.0);
    if unit <= 0.0 {
        return None;
    }
    let scaled = (amount / unit).ceil();
    (scaled >= 0.0 && scaled < u64::MAX as f64).then_some(scaled as u64)
}

/// The environment of `container` in `pod`.
pub fn environment(
    pod: &Pod,
    container: &Container,
    placement: &PodPlacement,
    services: &[ServiceLink],
    lookup: &dyn Lookup,
) -> Result<Vec<(String, String)>, String> {
    let metadata = &pod.metadata;
    let spec = pod.spec.as_ref();
    let namespace = metadata.namespace.clone().unwrap_or_default();
    let pod_name = metadata.name.clone().unwrap_or_default();
    let mut ordered: Vec<(String, String)> = Vec::new();
    let mut known: BTreeMap<String, String> = BTreeMap::new();
    let set = |ordered: &mut Vec<(String, String)>,
               known: &mut BTreeMap<String, String>,
               name: String,
               value: String| {
        ordered.retain(|(existing, _)| *existing != name);
        known.insert(name.clone(), value.clone());
        ordered.push((name, value));
    };
    set(&mut ordered, &mut known, "PATH".into(), DEFAULT_PATH.into());
    set(
        &mut ordered,
        &mut known,
        "HOSTNAME".into(),
        pod_name.clone(),
    );
    let links = spec
        .and_then(|spec| spec.enable_service_links)
        .unwrap_or(true);
    for (name, value) in service_variables(services) {
        let is_kubernetes = name.starts_with("KUBERNETES_");
        if links || is_kubernetes {
            set(&mut ordered, &mut known, name, value);
        }
    }
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (data, what, name, optional) = if let Some(reference) = &source.config_map_ref {
            (
                lookup.config_map(&reference.name),
                "configmap",
                reference.name.clone(),
                reference.optional,
            )
        } else if let Some(reference) = &source.secret_ref {
            (
                lookup.secret(&reference.name),
                "secret",
                reference.name.clone(),
                reference.optional,
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (key, value) in data {
                    set(&mut ordered, &mut known, format!("{prefix}{key}"), value);
                }
            }
            None if optional == Some(true) => {}
            None => return Err(format!("{what} \"{name}\" not found")),
        }
    }
    for variable in container.env.iter().flatten() {
        if let Some(value) = value_of(
            variable, pod, container, placement, lookup, &known, &namespace,
        )? {
            set(&mut ordered, &mut known, variable.name.clone(), value);
        }
    }
    Ok(ordered)
}

fn value_of(
    variable: &EnvVar,
    pod: &Pod,
    container: &Container,
    placement: &PodPlacement,
    lookup: &dyn Lookup,
    known: &BTreeMap<String, String>,
    namespace: &str,
) -> Result<Option<String>, String> {
    let Some(from) = &variable.value_from else {
        return Ok(Some(expand(variable.value.as_deref().unwrap_or(""), known)));
    };
    if let Some(field) = &from.field_ref {
        return field_value(&field.field_path, pod, placement).map(Some);
    }
    if let Some(resource) = &from.resource_field_ref {
        let target = match &resource.container_name {
            Some(name) if !name.is_empty() => pod
                .spec
                .as_ref()
                .and_then(|spec| {
                    spec.containers
                        .iter()
                        .find(|candidate| candidate.name == *name)
                })
                .unwrap_or(container),
            _ => container,
        };
        let resources = target.resources.as_ref();
        let (kind, key) = resource
            .resource
            .split_once('.')
            .ok_or_else(|| format!("unsupported container resource: {}", resource.resource))?;
        let from_spec = match kind {
            "limits" => resources.and_then(|resources| resources.limits.as_ref()),
            "requests" => resources.and_then(|resources| resources.requests.as_ref()),
            _ => None,
        }
        .and_then(|map| map.get(key));
        let value = match (from_spec, key) {
            (Some(quantity_value), _) => quantity(quantity_value, resource.divisor.as_ref()),
            (None, "cpu") => quantity(
                &Quantity(placement.node_cpus.to_string()),
                resource.divisor.as_ref(),
            ),
            (None, "memory") => quantity(
                &Quantity(placement.node_memory_bytes.to_string()),
                resource.divisor.as_ref(),
            ),
            (None, _) => Some(0),
        }
        .ok_or_else(|| {
            format!(
                "cannot read {} of container {}",
                resource.resource, target.name
            )
        })?;
        return Ok(Some(value.to_string()));
    }
    if let Some(reference) = &from.config_map_key_ref {
        return key_value(
            lookup.config_map(&reference.name),
            "configmap",
            "ConfigMap",
            &reference.name,
            &reference.key,
            reference.optional,
            namespace,
        );
    }
    if let Some(reference) = &from.secret_key_ref {
        return key_value(
            lookup.secret(&reference.name),
            "secret",
            "Secret",
            &reference.name,
            &reference.key,
            reference.optional,
            namespace,
        );
    }
    Ok(None)
}

fn key_value(
    data: Option<BTreeMap<String, String>>,
    kind: &str,
    title: &str,
    name: &str,
    key: &str,
    optional: Option<bool>,
    namespace: &str,
) -> Result<Option<String>, String> {
    let optional = optional == Some(true);
    match data {
        None if optional => Ok(None),
        None => Err(format!("{kind} \"{name}\" not found")),
        Some(data) => match data.get(key) {
            Some(value) => Ok(Some(value.clone())),
            None if optional => Ok(None),
            None => Err(format!(
                "couldn't find key {key} in {title} {namespace}/{name}"
            )),
        },
    }
}

/// A `fieldRef` (`metadata.name`, `metadata.labels['app']`, `status.podIP`, ...).
pub fn field_value(path: &str, pod: &Pod, placement: &PodPlacement) -> Result<String, String> {
    let metadata = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_entry = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(
            map.and_then(|map| map.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    if let Some(value) = map_entry("metadata.labels", metadata.labels.as_ref()) {
        return Ok(value);
    }
    if let Some(value) = map_entry("metadata.annotations", metadata.annotations.as_ref()) {
        return Ok(value);
    }
    let text = |value: Option<&String>| value.cloned().unwrap_or_default();
    Ok(match path {
        "metadata.name" => text(metadata.name.as_ref()),
        "metadata.namespace" => text(metadata.namespace.as_ref()),
        "metadata.uid" => text(metadata.uid.as_ref()),
        "metadata.labels" => labels_file(metadata.labels.as_ref()),
        "metadata.annotations" => labels_file(metadata.annotations.as_ref()),
        "spec.nodeName" => text(spec.and_then(|spec| spec.node_name.as_ref())),
        "spec.serviceAccountName" => text(spec.and_then(|spec| spec.service_account_name.as_ref())),
        "status.podIP" | "status.podIPs" => placement.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => placement.host_ip.clone(),
        other => return Err(format!("unsupported fieldPath: {other}")),
    })
}

/// Labels or annotations as the downward API writes them to a file: `key="value"` lines, sorted,
/// values quoted with Go's escaping.
pub fn labels_file(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(key, value)| format!("{key}={}", serde_json::to_string(value).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Data;

    impl Lookup for Data {
        fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>> {
            (name == "settings").then(|| {
                [
                    ("mode".to_owned(), "fast".to_owned()),
                    ("level".to_owned(), "3".to_owned()),
                ]
                .into()
            })
        }

        fn secret(&self, name: &str) -> Option<BTreeMap<String, String>> {
            (name == "credentials").then(|| [("password".to_owned(), "s3cret".to_owned())].into())
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "sleep-1", "namespace": "sample", "uid": "u-1", "labels": {"app": "sleep", "version": "v1"}},
            "spec": {"serviceAccountName": "sleep", "nodeName": "cluster01-control-plane", "containers": [{
                "name": "sleep",
                "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "64Mi"}},
                "env": [
                    {"name": "GREETING", "value": "hello"},
                    {"name": "MESSAGE", "value": "$(GREETING) from $(POD_NAME) $$(GREETING) $(MISSING)"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                    {"name": "ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
                    {"name": "MEMORY", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "credentials", "key": "password"}}},
                    {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x", "optional": true}}},
                ],
                "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
            }]},
        }))
        .unwrap()
    }

    fn placement() -> PodPlacement {
        PodPlacement {
            pod_ip: "10.10.0.5".into(),
            host_ip: "172.18.0.2".into(),
            node_cpus: 2,
            node_memory_bytes: 1 << 30,
        }
    }

    #[test]
    fn every_kind_of_variable_gets_its_value() {
        let pod = pod();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let services = [ServiceLink {
            name: "kubernetes".into(),
            cluster_ip: "10.11.0.1".into(),
            ports: vec![(Some("https".into()), 443, "TCP".into())],
        }];
        let env: BTreeMap<String, String> =
            environment(&pod, container, &placement(), &services, &Data)
                .unwrap()
                .into_iter()
                .collect();
        let expected = [
            ("MESSAGE", "hello from $(POD_NAME) $(GREETING) $(MISSING)"),
            ("POD_NAME", "sleep-1"),
            ("APP", "sleep"),
            ("POD_IP", "10.10.0.5"),
            ("HOST_IP", "172.18.0.2"),
            ("ACCOUNT", "sleep"),
            ("NODE", "cluster01-control-plane"),
            ("CPU", "1"),
            ("MEMORY", "64"),
            ("CPU_LIMIT", "2"),
            ("MODE", "fast"),
            ("PASSWORD", "s3cret"),
            ("CFG_level", "3"),
            ("HOSTNAME", "sleep-1"),
            ("KUBERNETES_SERVICE_HOST", "10.11.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.11.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.11.0.1"),
            ("PATH", DEFAULT_PATH),
        ];
        for (name, value) in expected {
            assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
        }
        assert!(!env.contains_key("OPTIONAL"));
    }

    #[test]
    fn missing_references_are_the_kubelets_errors() {
        let mut pod = pod();
        let container = &mut pod.spec.as_mut().unwrap().containers[0];
        container.env = Some(vec![serde_json::from_value(
            json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "absent"}}}),
        )
        .unwrap()]);
        container.env_from = None;
        let container = container.clone();
        let error = environment(&pod, &container, &placement(), &[], &Data).unwrap_err();
        assert_eq!(
            error,
            "couldn't find key absent in ConfigMap sample/settings"
        );
        let mut other = container.clone();
        other.env =
            Some(vec![serde_json::from_value(
            json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}),
        )
        .unwrap()]);
        assert_eq!(
            environment(&pod, &other, &placement(), &[], &Data).unwrap_err(),
            "secret \"nope\" not found"
        );
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let known: BTreeMap<String, String> = [("A".to_owned(), "1".to_owned())].into();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$-$(", &known), "1-$(B)-$(A)-$-$(");
    }

    #[test]
    fn downward_api_label_files_quote_values() {
        let labels: BTreeMap<String, String> = [
            ("app".to_owned(), "sleep".to_owned()),
            ("b".to_owned(), "x\"y".to_owned()),
        ]
        .into();
        assert_eq!(labels_file(Some(&labels)), "app=\"sleep\"\nb=\"x\\\"y\"");
    }
}
