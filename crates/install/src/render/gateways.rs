//! `components.ingressGateways`: each enabled east-west gateway is a Deployment running
//! `causeway proxy router` and a Service (a LoadBalancer unless told otherwise) with the given
//! ports, labelled as the IstioOperator says so that `expose-*.yaml` Gateways select it.

use super::{Component, Rendered, install_labels, revisioned};
use crate::settings::{Gateway, Settings};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use serde_json::{Map, Value, json};

pub fn render(settings: &Settings) -> Vec<Rendered> {
    settings
        .gateways
        .iter()
        .flat_map(|gateway| render_one(settings, gateway))
        .collect()
}

fn render_one(settings: &Settings, gateway: &Gateway) -> Vec<Rendered> {
    let component = Component::IngressGateways;
    let mut labels = install_labels(settings, component);
    labels.extend(
        gateway
            .labels
            .iter()
            .map(|(key, value)| (key.clone(), Value::String(value.clone()))),
    );
    let account = format!("{}-service-account", gateway.name);
    vec![
        Rendered::typed::<ServiceAccount>(
            component,
            json!({"metadata": {"name": account, "namespace": gateway.namespace, "labels": labels}}),
        ),
        deployment(settings, gateway, &account, &labels),
        Rendered::typed::<Service>(
            component,
            json!({
                "metadata": {"name": gateway.name, "namespace": gateway.namespace, "labels": labels},
                "spec": {"type": gateway.service_type, "selector": gateway.labels, "ports": gateway.ports},
            }),
        ),
    ]
}

fn deployment(
    settings: &Settings,
    gateway: &Gateway,
    account: &str,
    labels: &Map<String, Value>,
) -> Rendered {
    let field = |path: &str| json!({"fieldRef": {"apiVersion": "v1", "fieldPath": path}});
    let discovery = format!(
        "{}.{}.svc:15012",
        revisioned("istiod", settings),
        settings.namespace
    );
    let mut env = vec![
        json!({"name": "DISCOVERY_ADDRESS", "value": discovery}),
        json!({"name": "POD_NAME", "valueFrom": field("metadata.name")}),
        json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}),
        json!({"name": "INSTANCE_IP", "valueFrom": field("status.podIP")}),
        json!({"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")}),
        json!({"name": "ISTIO_META_CLUSTER_ID", "value": settings.identity.cluster_name}),
        json!({"name": "ISTIO_META_NETWORK", "value": settings.identity.network}),
        json!({"name": "ISTIO_META_MESH_ID", "value": settings.identity.mesh_id}),
        json!({"name": "TRUST_DOMAIN", "value": settings.identity.trust_domain}),
        json!({"name": "ISTIO_META_WORKLOAD_NAME", "value": gateway.name}),
        json!({"name": "ISTIO_METAJSON_LABELS", "value": serde_json::to_string(&gateway.labels).expect("labels serialize")}),
    ];
    // The access log as meshConfig says, the same variables the injector gives sidecars.
    let mesh_text = |field: &str| settings.mesh_config.get(field).and_then(Value::as_str);
    if let Some(file) = mesh_text("accessLogFile").filter(|file| !file.is_empty()) {
        env.push(json!({"name": "ACCESS_LOG_FILE", "value": file}));
        env.push(json!({"name": "ACCESS_LOG_ENCODING", "value": mesh_text("accessLogEncoding").unwrap_or("TEXT")}));
        if let Some(format) = mesh_text("accessLogFormat").filter(|format| !format.is_empty()) {
            env.push(json!({"name": "ACCESS_LOG_FORMAT", "value": format}));
        }
    }
    for variable in &gateway.env {
        env.retain(|existing| existing["name"] != variable.name.as_str());
        env.push(serde_json::to_value(variable).expect("an EnvVar serializes"));
    }
    let container_ports: Vec<Value> = gateway
        .ports
        .iter()
        .map(|port| {
            let target = match &port.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(target)) => {
                    *target
                }
                _ => port.port,
            };
            json!({"containerPort": target, "protocol": "TCP"})
        })
        .collect();
    let mut pod_labels = Map::new();
    pod_labels.extend(
        gateway
            .labels
            .iter()
            .map(|(key, value)| (key.clone(), Value::String(value.clone()))),
    );
    pod_labels.insert("sidecar.istio.io/inject".into(), "false".into());
    pod_labels.insert(
        "service.istio.io/canonical-name".into(),
        gateway.name.clone().into(),
    );
    Rendered::typed::<Deployment>(
        Component::IngressGateways,
        json!({
            "metadata": {"name": gateway.name, "namespace": gateway.namespace, "labels": labels},
            "spec": {
                "replicas": gateway.replicas,
                "selector": {"matchLabels": gateway.labels},
                "strategy": {"rollingUpdate": {"maxSurge": "100%", "maxUnavailable": "25%"}},
                "template": {
                    "metadata": {
                        "labels": pod_labels,
                        "annotations": {"sidecar.istio.io/inject": "false", "prometheus.io/port": "15020", "prometheus.io/scrape": "true", "prometheus.io/path": "/stats/prometheus"},
                    },
                    "spec": {
                        "serviceAccountName": account,
                        "containers": [{
                            "name": "istio-proxy",
                            "image": settings.image,
                            "args": ["proxy", "router"],
                            "env": env,
                            "ports": container_ports,
                            "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 1, "timeoutSeconds": 3, "failureThreshold": 30},
                            "volumeMounts": [
                                {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio", "readOnly": true},
                                {"name": "istio-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
                            ],
                        }],
                        "volumes": [
                            {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
                            {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
                        ],
                    },
                },
            },
        }),
    )
}
