//! Settings → the Kubernetes objects that run Causeway in a cluster, named and labelled as
//! Istio's charts name and label them, so that `kubectl` users find what they expect and
//! uninstall finds exactly what install made.

mod base;
pub mod cni;
mod gateways;
mod istiod;
mod remote;

use crate::settings::Settings;
use kube::api::{ApiResource, DynamicObject};
use kube::core::{GroupVersionKind, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub use base::{READER_ACCOUNT, reader_rules};
pub use istiod::{INJECTOR_CONFIG_MAP, MESH_CONFIG_MAP};

/// Which part of Istio an object belongs to (`operator.istio.io/component`), which is also the
/// step istioctl reports it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Base,
    Pilot,
    IstiodRemote,
    IngressGateways,
    /// The CNI plugin's configuration (`components.cni.enabled`, or an `IstioCNI`).
    Cni,
    /// `causeway install-operator`: the Sail operator's CRDs and Deployment.
    Operator,
}

impl Component {
    pub fn label(self) -> &'static str {
        match self {
            Component::Base => "Base",
            Component::Pilot => "Pilot",
            Component::IstiodRemote => "IstiodRemote",
            Component::IngressGateways => "IngressGateways",
            Component::Cni => "Cni",
            Component::Operator => "Operator",
        }
    }

    /// istioctl's line for the finished step.
    pub fn installed_line(self) -> &'static str {
        match self {
            Component::Base => "Istio core installed",
            Component::Pilot => "Istiod installed",
            Component::IstiodRemote => "Istiod remote installed",
            Component::IngressGateways => "Ingress gateways installed",
            Component::Cni => "CNI installed",
            Component::Operator => "Sail operator installed",
        }
    }

    pub const ALL: [Component; 4] = [
        Component::Base,
        Component::Pilot,
        Component::IstiodRemote,
        Component::IngressGateways,
    ];
}

/// How install treats an object that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Created and updated by install, removed by uninstall.
    Owned,
    /// Created when missing, otherwise left as it is (the `istio-system` namespace, which the
    /// guides create first for `cacerts`).
    CreateIfMissing,
}

/// One object to apply.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub component: Component,
    pub ownership: Ownership,
    pub resource: ApiResource,
    pub namespaced: bool,
    pub object: DynamicObject,
}

impl Rendered {
    /// `value` is checked against the Kubernetes type `K`, so a template mistake fails the
    /// renderer's tests rather than the API server.
    pub(crate) fn typed<K>(component: Component, value: Value) -> Rendered
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Serialize,
        K::Scope: ScopeName,
    {
        let typed: K = serde_json::from_value(value).unwrap_or_else(|error| {
            panic!(
                "the {} template does not fit its type: {error}",
                K::kind(&())
            )
        });
        let object: DynamicObject = serde_json::to_value(&typed)
            .and_then(serde_json::from_value)
            .expect("a typed object is a dynamic object");
        Rendered {
            component,
            ownership: Ownership::Owned,
            resource: ApiResource::erase::<K>(&()),
            namespaced: K::Scope::NAMESPACED,
            object,
        }
    }

    pub fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or("")
    }

    pub fn namespace(&self) -> Option<&str> {
        self.object.metadata.namespace.as_deref()
    }

    pub fn kind(&self) -> &str {
        &self.resource.kind
    }

    pub fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind::gvk(
            &self.resource.group,
            &self.resource.version,
            &self.resource.kind,
        )
    }

    /// `Deployment istio-system/istiod`.
    pub fn describe(&self) -> String {
        match self.namespace() {
            Some(namespace) => format!("{} {namespace}/{}", self.kind(), self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }
}

/// Whether a Kubernetes type lives in a namespace.
pub trait ScopeName {
    const NAMESPACED: bool;
}

impl ScopeName for k8s_openapi::NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl ScopeName for k8s_openapi::ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// The labels Istio's installer puts on everything it makes: uninstall selects on them.
pub const COMPONENT_LABEL: &str = "operator.istio.io/component";
pub const REVISION_LABEL: &str = "istio.io/rev";
pub const OWNER_LABEL: &str = "install.operator.istio.io/owning-resource";

fn install_labels(settings: &Settings, component: Component) -> serde_json::Map<String, Value> {
    let labels = json!({
        OWNER_LABEL: settings.owner,
        "install.operator.istio.io/owning-resource-namespace": settings.namespace,
        COMPONENT_LABEL: component.label(),
        "operator.istio.io/managed": "Reconcile",
        "operator.istio.io/version": env!("CARGO_PKG_VERSION"),
        REVISION_LABEL: settings.revision,
        "release": "istio",
    });
    match labels {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// `istiod` for the default revision, `istiod-canary` for another.
fn revisioned(name: &str, settings: &Settings) -> String {
    if settings.revision == "default" {
        name.to_owned()
    } else {
        format!("{name}-{}", settings.revision)
    }
}

/// Everything for these settings, in the order istioctl applies it.
pub fn render(settings: &Settings) -> Vec<Rendered> {
    let mut objects = Vec::new();
    if settings.base {
        objects.extend(base::render(settings));
    }
    if settings.pilot.is_some() {
        objects.extend(istiod::render(settings));
    }
    if let Some(remote) = &settings.remote {
        objects.extend(remote::render(settings, remote));
    }
    if settings.cni_agent {
        objects.push(cni::config_map(
            &settings.namespace,
            install_labels(settings, Component::Cni),
        ));
    }
    objects.extend(gateways::render(settings));
    objects
}

/// The objects as YAML documents (`manifest generate`).
pub fn to_yaml(objects: &[Rendered]) -> String {
    objects
        .iter()
        .map(|rendered| {
            serde_saphyr::to_string(&rendered.object).expect("an object serializes to YAML")
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests;
