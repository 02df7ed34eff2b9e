//! Istio's `istiod` chart for a primary: discovery's Deployment, Service, account and roles, the
//! mesh config and injector ConfigMaps, and the injection webhook.

use super::{Component, Rendered, install_labels, revisioned};
use crate::input::merge_maps;
use crate::settings::Settings;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::{Map, Value, json};

/// The mesh config (`data.mesh`) and networks (`data.meshNetworks`).
pub const MESH_CONFIG_MAP: &str = "istio";
/// The injector's `values` and `config`, as `kube-inject --injectConfigMapName` reads them.
pub const INJECTOR_CONFIG_MAP: &str = "istio-sidecar-injector";

pub fn render(settings: &Settings) -> Vec<Rendered> {
    let component = Component::Pilot;
    let namespace = &settings.namespace;
    let name = revisioned("istiod", settings);
    let mut labels = install_labels(settings, component);
    labels.insert("app".into(), "istiod".into());
    labels.insert("istio".into(), "pilot".into());
    let cluster_role = format!("{}-clusterrole-{namespace}", revisioned("istiod", settings));
    vec![
        Rendered::typed::<ServiceAccount>(
            component,
            json!({"metadata": {"name": name, "namespace": namespace, "labels": labels}}),
        ),
        Rendered::typed::<ClusterRole>(
            component,
            json!({"metadata": {"name": cluster_role, "labels": labels}, "rules": cluster_rules()}),
        ),
        Rendered::typed::<ClusterRoleBinding>(
            component,
            json!({
                "metadata": {"name": cluster_role, "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            }),
        ),
        Rendered::typed::<Role>(
            component,
            json!({
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "rules": [
                    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "get", "watch", "list", "update", "delete"]},
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["delete"]},
                    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update", "patch", "create"]},
                ],
            }),
        ),
        Rendered::typed::<RoleBinding>(
            component,
            json!({
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            }),
        ),
        mesh_config_map(settings, component),
        injector_config_map(settings, &labels, Component::Pilot),
        deployment(settings, &name, &labels),
        service(settings, &name, &labels),
        webhook(
            settings,
            component,
            json!({"service": {"name": name, "namespace": namespace, "path": "/inject", "port": 443}}),
        ),
    ]
}

fn cluster_rules() -> Value {
    json!([
        {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"], "verbs": ["get", "list", "watch", "update", "patch"]},
        {"apiGroups": ["config.istio.io", "security.istio.io", "networking.istio.io", "authentication.istio.io", "rbac.istio.io", "telemetry.istio.io", "extensions.istio.io"], "resources": ["*"], "verbs": ["get", "watch", "list"]},
        {"apiGroups": ["networking.istio.io"], "resources": ["workloadentries", "workloadentries/status"], "verbs": ["get", "watch", "list", "update", "patch", "create", "delete"]},
        {"apiGroups": [""], "resources": ["pods", "nodes", "services", "namespaces", "endpoints", "secrets"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get", "list", "watch", "update"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]},
    ])
}

/// Istio's defaults under the user's `meshConfig`.
pub fn mesh_config(settings: &Settings) -> Map<String, Value> {
    let Value::Object(mut mesh) = json!({
        "defaultConfig": {
            "discoveryAddress": format!("{}.{}.svc:15012", revisioned("istiod", settings), settings.namespace),
            "meshId": if settings.identity.mesh_id.is_empty() { "cluster.local" } else { settings.identity.mesh_id.as_str() },
            "holdApplicationUntilProxyStarts": settings.proxy.hold_application_until_proxy_starts,
            "terminationDrainDuration": settings.proxy.termination_drain_duration,
            "proxyMetadata": {},
        },
        "rootNamespace": settings.namespace,
        "trustDomain": settings.identity.trust_domain,
        "enablePrometheusMerge": true,
    }) else {
        unreachable!("a JSON object literal")
    };
    merge_maps(&mut mesh, settings.mesh_config.clone());
    mesh
}

fn mesh_config_map(settings: &Settings, component: Component) -> Rendered {
    let mut labels = install_labels(settings, component);
    labels.insert("app".into(), "istiod".into());
    let networks = settings
        .values
        .get("global")
        .and_then(|global| global.get("meshNetworks"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    Rendered::typed::<ConfigMap>(
        component,
        json!({
            "metadata": {"name": revisioned(MESH_CONFIG_MAP, settings), "namespace": settings.namespace, "labels": labels},
            "data": {
                "mesh": serde_saphyr::to_string(&mesh_config(settings)).expect("mesh config serializes"),
                "meshNetworks": serde_saphyr::to_string(&json!({"networks": networks})).expect("networks serialize"),
            },
        }),
    )
}

/// The injector's `values`: the install's `values`, with what the injector needs resolved
/// (the proxy image, identity, revision) so that it never re-derives them.
pub fn injector_values(settings: &Settings) -> Value {
    let mut values = Value::Object(settings.values.clone());
    let resolved = json!({
        "global": {
            "proxy": {"image": settings.image},
            "network": settings.identity.network,
            "meshID": settings.identity.mesh_id,
            "multiCluster": {"clusterName": settings.identity.cluster_name},
            "istioNamespace": settings.namespace,
        },
        "revision": settings.revision,
    });
    if let (Value::Object(values), Value::Object(resolved)) = (&mut values, resolved) {
        merge_maps(values, resolved);
    }
    values
}

/// The injector's ConfigMap: what the webhook and `kube-inject --injectConfigMapName` read.
pub fn injector_config_map(
    settings: &Settings,
    labels: &Map<String, Value>,
    component: Component,
) -> Rendered {
    let webhook = settings
        .values
        .get("sidecarInjectorWebhook")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let pick = |key: &str, default: Value| webhook.get(key).cloned().unwrap_or(default);
    let config = json!({
        "policy": "enabled",
        "alwaysInjectSelector": pick("alwaysInjectSelector", json!([])),
        "neverInjectSelector": pick("neverInjectSelector", json!([])),
        "injectedAnnotations": pick("injectedAnnotations", json!({})),
        "defaultTemplates": pick("defaultTemplates", json!(["sidecar"])),
        "templates": {
            "sidecar": "built in: `causeway proxy init` as the init container and `causeway proxy sidecar` as istio-proxy",
            "gateway": "built in: the istio-proxy container becomes `causeway proxy router`",
        },
    });
    Rendered::typed::<ConfigMap>(
        component,
        json!({
            "metadata": {"name": revisioned(INJECTOR_CONFIG_MAP, settings), "namespace": settings.namespace, "labels": labels},
            "data": {
                "values": serde_json::to_string_pretty(&injector_values(settings)).expect("values serialize"),
                "config": serde_saphyr::to_string(&config).expect("config serializes"),
            },
        }),
    )
}

fn deployment(settings: &Settings, name: &str, labels: &Map<String, Value>) -> Rendered {
    let pilot = settings
        .pilot
        .as_ref()
        .expect("rendered only with pilot enabled");
    let field = |path: &str| json!({"fieldRef": {"apiVersion": "v1", "fieldPath": path}});
    let mut env = vec![
        json!({"name": "REVISION", "value": settings.revision}),
        json!({"name": "POD_NAME", "valueFrom": field("metadata.name")}),
        json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}),
        json!({"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")}),
        json!({"name": "CLUSTER_ID", "value": settings.identity.cluster_name}),
        json!({"name": "NETWORK", "value": settings.identity.network}),
        json!({"name": "MESH_ID", "value": settings.identity.mesh_id}),
        json!({"name": "TRUST_DOMAIN", "value": settings.identity.trust_domain}),
        json!({"name": "JWT_POLICY", "value": "third-party-jwt"}),
        json!({"name": "PILOT_CERT_PROVIDER", "value": "istiod"}),
        json!({"name": "ISTIOD_ADDR", "value": format!("{name}.{}.svc:15012", settings.namespace)}),
    ];
    for (variable, value) in &pilot.env {
        env.retain(|existing| existing["name"] != variable.as_str());
        env.push(json!({"name": variable, "value": value}));
    }
    let selector = json!({"app": "istiod", "istio.io/rev": settings.revision});
    let mut pod_labels = labels.clone();
    pod_labels.insert("sidecar.istio.io/inject".into(), "false".into());
    Rendered::typed::<Deployment>(
        Component::Pilot,
        json!({
            "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
            "spec": {
                "replicas": pilot.replicas,
                "selector": {"matchLabels": selector},
                "strategy": {"rollingUpdate": {"maxSurge": "100%", "maxUnavailable": "25%"}},
                "template": {
                    "metadata": {
                        "labels": pod_labels,
                        "annotations": {"sidecar.istio.io/inject": "false", "prometheus.io/port": "15014", "prometheus.io/scrape": "true"},
                    },
                    "spec": {
                        "serviceAccountName": name,
                        "containers": [{
                            "name": "discovery",
                            "image": settings.image,
                            "args": ["discovery"],
                            "env": env,
                            "ports": [
                                {"containerPort": 15010, "name": "grpc-xds", "protocol": "TCP"},
                                {"containerPort": 15012, "name": "tls-xds", "protocol": "TCP"},
                                {"containerPort": 15014, "name": "http-monitoring", "protocol": "TCP"},
                                {"containerPort": 15017, "name": "https-webhook", "protocol": "TCP"},
                            ],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 15014}, "initialDelaySeconds": 0, "periodSeconds": 1, "timeoutSeconds": 5},
                            "volumeMounts": [
                                {"name": "istio-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
                                {"name": "cacerts", "mountPath": "/etc/cacerts", "readOnly": true},
                                {"name": "istio-kubeconfig", "mountPath": "/var/run/secrets/remote", "readOnly": true},
                            ],
                        }],
                        "volumes": [
                            {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
                            {"name": "cacerts", "secret": {"secretName": "cacerts", "optional": true}},
                            {"name": "istio-kubeconfig", "secret": {"secretName": "istio-kubeconfig", "optional": true}},
                        ],
                    },
                },
            },
        }),
    )
}

fn service(settings: &Settings, name: &str, labels: &Map<String, Value>) -> Rendered {
    Rendered::typed::<Service>(
        Component::Pilot,
        json!({
            "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
            "spec": {
                "selector": {"app": "istiod", "istio.io/rev": settings.revision},
                "ports": discovery_ports(),
            },
        }),
    )
}

/// Discovery's Service ports, also on the remote profile's selector-less `istiod` Service.
pub fn discovery_ports() -> Value {
    json!([
        {"name": "grpc-xds", "port": 15010, "protocol": "TCP"},
        {"name": "https-dns", "port": 15012, "protocol": "TCP"},
        {"name": "https-webhook", "port": 443, "targetPort": 15017, "protocol": "TCP"},
        {"name": "http-monitoring", "port": 15014, "protocol": "TCP"},
    ])
}

/// Istio's injection webhooks: by namespace label (`istio-injection=enabled` or `istio.io/rev`)
/// and by pod label (`sidecar.istio.io/inject=true`), never for pods that opt out.
pub fn webhook(settings: &Settings, component: Component, client_config: Value) -> Rendered {
    let injector = settings.values.get("sidecarInjectorWebhook");
    let reinvocation = injector
        .and_then(|webhook| webhook.get("reinvocationPolicy"))
        .and_then(Value::as_str)
        .unwrap_or("Never");
    let entry = |name: &str, namespace_selector: Value, object_selector: Value| {
        json!({
            "name": name,
            "clientConfig": client_config,
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "timeoutSeconds": 10,
            "reinvocationPolicy": reinvocation,
            "admissionReviewVersions": ["v1beta1", "v1"],
            "namespaceSelector": namespace_selector,
            "objectSelector": object_selector,
        })
    };
    let exists = |key: &str| json!({"key": key, "operator": "DoesNotExist"});
    let is_in = |key: &str, value: &str| json!({"key": key, "operator": "In", "values": [value]});
    let opted_in =
        || json!({"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]});
    let revision = settings.revision.as_str();
    let mut webhooks = vec![
        entry(
            "rev.namespace.sidecar-injector.istio.io",
            json!({"matchExpressions": [is_in("istio.io/rev", revision), exists("istio-injection")]}),
            json!({"matchExpressions": [opted_in()]}),
        ),
        entry(
            "rev.object.sidecar-injector.istio.io",
            json!({"matchExpressions": [exists("istio.io/rev"), exists("istio-injection")]}),
            json!({"matchExpressions": [opted_in(), is_in("istio.io/rev", revision)]}),
        ),
    ];
    if revision == "default" {
        webhooks.push(entry(
            "namespace.sidecar-injector.istio.io",
            json!({"matchExpressions": [is_in("istio-injection", "enabled")]}),
            json!({"matchExpressions": [opted_in()]}),
        ));
        webhooks.push(entry(
            "object.sidecar-injector.istio.io",
            json!({"matchExpressions": [exists("istio-injection"), exists("istio.io/rev")]}),
            json!({"matchExpressions": [is_in("sidecar.istio.io/inject", "true"), exists("istio.io/rev")]}),
        ));
    }
    let mut labels = install_labels(settings, component);
    labels.insert("app".into(), "sidecar-injector".into());
    Rendered::typed::<MutatingWebhookConfiguration>(
        component,
        json!({
            "metadata": {"name": revisioned(INJECTOR_CONFIG_MAP, settings), "labels": labels},
            "webhooks": webhooks,
        }),
    )
}
