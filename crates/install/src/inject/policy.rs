//! Whether a pod gets a proxy, decided as istiod's injector decides after the webhook's selectors
//! have matched: explicit opt-outs first, then the injector config's never/always selectors, then
//! its policy.

use super::config::InjectionConfig;
use k8s_openapi::api::core::v1::Pod;
use kube::core::{Selector, SelectorExt};
use std::collections::BTreeMap;

pub const INJECT: &str = "sidecar.istio.io/inject";
pub const STATUS: &str = "sidecar.istio.io/status";

/// Namespaces Istio never injects into.
const IGNORED_NAMESPACES: &[&str] = &[
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Inject,
    Skip(String),
}

fn explicit(pod: &Pod) -> Option<bool> {
    let metadata = &pod.metadata;
    let from = |map: &Option<BTreeMap<String, String>>| {
        map.as_ref().and_then(|map| map.get(INJECT)).map(|value| {
            matches!(
                value.to_ascii_lowercase().as_str(),
                "true" | "y" | "yes" | "on"
            )
        })
    };
    // The label wins over the annotation, as in Istio.
    from(&metadata.labels).or_else(|| from(&metadata.annotations))
}

fn matches_any(
    selectors: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector],
    labels: &BTreeMap<String, String>,
) -> bool {
    selectors.iter().any(|selector| {
        Selector::try_from(selector.clone()).is_ok_and(|selector| selector.matches(labels))
    })
}

pub fn decide(pod: &Pod, namespace: &str, config: &InjectionConfig) -> Decision {
    let spec = pod.spec.as_ref();
    if spec.and_then(|spec| spec.host_network).unwrap_or(false) {
        return Decision::Skip("the pod uses the host's network".into());
    }
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Decision::Skip(format!("namespace {namespace} is never injected"));
    }
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|annotations| annotations.contains_key(STATUS))
    {
        return Decision::Skip("the pod already has a proxy (sidecar.istio.io/status)".into());
    }
    match explicit(pod) {
        Some(false) => return Decision::Skip(format!("the pod opts out ({INJECT}: false)")),
        Some(true) => return Decision::Inject,
        None => {}
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if matches_any(&config.never_inject, &labels) {
        return Decision::Skip("the pod matches the injector's neverInjectSelector".into());
    }
    if matches_any(&config.always_inject, &labels) {
        return Decision::Inject;
    }
    if config.policy_enabled {
        Decision::Inject
    } else {
        Decision::Skip(format!(
            "the injector's policy is disabled and the pod does not ask ({INJECT}: true)"
        ))
    }
}
