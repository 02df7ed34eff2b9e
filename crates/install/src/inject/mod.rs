//! The sidecar injector: one pod in, the same pod with Causeway's proxy out, or the reason it is
//! left alone. The webhook, `kube-inject` and the lab all go through [`inject`]; the webhook
//! answers with [`patch`].

mod config;
mod policy;
mod templates;

pub use config::{ConfigError, InjectionConfig, ProxyDefaults};
pub use policy::{Decision, INJECT, STATUS};
pub use templates::{INIT_CONTAINER, PROXY_CONTAINER};

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {key}: {reason}")]
    Annotation { key: String, reason: String },
    #[error("cannot inject: {0}")]
    Conflict(String),
    #[error(
        "injection template {0:?} does not exist; Causeway has `sidecar` and `gateway` (inject.istio.io/templates)"
    )]
    UnknownTemplate(String),
    #[error(
        "{0:?} is not an injection path; use /inject or /inject/cluster/<cluster>/net/<network>"
    )]
    BadPath(String),
}

/// Where the injected proxy belongs, from the webhook's path (`/inject/cluster/c/net/n`, as a
/// remote cluster's webhook URL says); unset parts come from the injector's config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Target {
    pub cluster: Option<String>,
    pub network: Option<String>,
}

impl Target {
    pub fn from_path(path: &str) -> Result<Target, InjectError> {
        let bad = || InjectError::BadPath(path.to_owned());
        let rest = path.strip_prefix("/inject").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').filter(|part| !part.is_empty()).collect();
        let mut target = Target::default();
        let mut pairs = parts.chunks(2);
        for pair in &mut pairs {
            match pair {
                ["cluster", cluster] => target.cluster = Some((*cluster).to_owned()),
                ["net", network] => target.network = Some((*network).to_owned()),
                _ => return Err(bad()),
            }
        }
        Ok(target)
    }
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Injected(Box<Pod>),
    Skipped(String),
}

fn canonical_name(pod: &Pod) -> String {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    labels
        .get("service.istio.io/canonical-name")
        .or_else(|| labels.get("app.kubernetes.io/name"))
        .or_else(|| labels.get("app"))
        .cloned()
        .unwrap_or_else(|| workload_name(pod))
}

/// The owning workload's name from the pod's name or generateName (`helloworld-v1-5b75657f75-`
/// → `helloworld-v1`), as Istio derives it.
fn workload_name(pod: &Pod) -> String {
    let name = pod
        .metadata
        .generate_name
        .clone()
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let trimmed = name.trim_end_matches('-');
    let mut parts: Vec<&str> = trimmed.split('-').collect();
    if parts.len() > 2 && pod.metadata.generate_name.is_some() {
        parts.pop();
    }
    parts.join("-")
}

/// Injects `pod` (in `namespace`) unless the pod or the config says not to.
pub fn inject(
    pod: &Pod,
    namespace: &str,
    config: &InjectionConfig,
    target: &Target,
) -> Result<Outcome, InjectError> {
    if let Decision::Skip(reason) = policy::decide(pod, namespace, config) {
        return Ok(Outcome::Skipped(reason));
    }
    let mut injected = pod.clone();
    let requested = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get("inject.istio.io/templates"))
        .map(|names| {
            names
                .split(',')
                .map(|name| name.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_else(|| config.default_templates.clone());
    let mut added = templates::Injected::default();
    let mut sidecar = false;
    for name in &requested {
        let part = match name.as_str() {
            "sidecar" => {
                sidecar = true;
                templates::sidecar(&mut injected, config, target)?
            }
            "gateway" => templates::gateway(&mut injected, config, target)?,
            other => return Err(InjectError::UnknownTemplate(other.to_owned())),
        };
        added.init_containers.extend(part.init_containers);
        added.containers.extend(part.containers);
        added.default_container = added.default_container.or(part.default_container);
    }
    let network = templates::network(pod, config, target);
    let name = canonical_name(pod);
    let labels = injected
        .metadata
        .labels
        .get_or_insert_with(Default::default);
    if sidecar {
        labels.insert("security.istio.io/tlsMode".into(), "istio".into());
    }
    labels
        .entry("service.istio.io/canonical-name".into())
        .or_insert(name);
    let revision = labels
        .get("app.kubernetes.io/version")
        .or_else(|| labels.get("version"))
        .cloned()
        .unwrap_or_else(|| "latest".into());
    labels
        .entry("service.istio.io/canonical-revision".into())
        .or_insert(revision);
    if !network.is_empty() {
        labels
            .entry("topology.istio.io/network".into())
            .or_insert(network);
    }
    let volumes: Vec<String> = [
        "istio-data",
        "istio-podinfo",
        "istio-token",
        "istiod-ca-cert",
    ]
    .iter()
    .map(|volume| (*volume).to_owned())
    .collect();
    let status = json!({
        "initContainers": added.init_containers,
        "containers": added.containers,
        "volumes": volumes,
        "imagePullSecrets": null,
        "revision": config.revision,
    });
    let annotations = injected
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(STATUS.into(), status.to_string());
    if let Some(container) = added.default_container {
        annotations
            .entry("kubectl.kubernetes.io/default-container".into())
            .or_insert_with(|| container.clone());
        annotations
            .entry("kubectl.kubernetes.io/default-logs-container".into())
            .or_insert(container);
    }
    for (key, value) in &config.injected_annotations {
        annotations.insert(key.clone(), value.clone());
    }
    Ok(Outcome::Injected(Box::new(injected)))
}

/// The JSON patch from `original` to `injected`, as an AdmissionReview response carries it.
pub fn patch(original: &Pod, injected: &Pod) -> json_patch::Patch {
    let from = serde_json::to_value(original).expect("a pod serializes");
    let to = serde_json::to_value(injected).expect("a pod serializes");
    json_patch::diff(&from, &to)
}

#[cfg(test)]
mod tests;
