//! Istio's `base` chart: the control plane's namespace and the read-only account other clusters'
//! control planes use through a remote secret (`istio-reader-service-account`).

use super::{Component, Ownership, Rendered, install_labels};
use crate::settings::Settings;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::{Value, json};

pub const READER_ACCOUNT: &str = "istio-reader-service-account";

/// What a control plane reading this cluster needs: Istio's config, the registry's inputs, and
/// token reviews for its CA.
pub fn reader_rules() -> Value {
    json!([
        {"apiGroups": ["config.istio.io", "security.istio.io", "networking.istio.io", "authentication.istio.io", "rbac.istio.io", "telemetry.istio.io", "extensions.istio.io"], "resources": ["*"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["endpoints", "pods", "services", "nodes", "replicationcontrollers", "namespaces", "secrets"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["networking.istio.io"], "verbs": ["get", "watch", "list"], "resources": ["workloadentries"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ])
}

pub fn render(settings: &Settings) -> Vec<Rendered> {
    let component = Component::Base;
    let namespace = &settings.namespace;
    let mut labels = install_labels(settings, component);
    labels.insert("app".into(), "istio-reader".into());
    let role = format!("istio-reader-clusterrole-{namespace}");
    let mut namespace_object =
        Rendered::typed::<Namespace>(component, json!({"metadata": {"name": namespace}}));
    namespace_object.ownership = Ownership::CreateIfMissing;
    vec![
        namespace_object,
        Rendered::typed::<ServiceAccount>(
            component,
            json!({"metadata": {"name": READER_ACCOUNT, "namespace": namespace, "labels": labels}}),
        ),
        Rendered::typed::<ClusterRole>(
            component,
            json!({"metadata": {"name": role, "labels": labels}, "rules": reader_rules()}),
        ),
        Rendered::typed::<ClusterRoleBinding>(
            component,
            json!({
                "metadata": {"name": role, "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": READER_ACCOUNT, "namespace": namespace}],
            }),
        ),
    ]
}
