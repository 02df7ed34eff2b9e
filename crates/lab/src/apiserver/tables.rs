//! Server-side printing: `kubectl get` asks for a `meta.k8s.io/v1` Table and prints its rows, so
//! the columns here are what `kubectl get` shows (the same ones a real cluster shows).

use kube::core::DynamicObject;
use serde_json::{Value, json};

use super::resources::Resource;

fn age(object: &DynamicObject, now: time::OffsetDateTime) -> String {
    let Some(created) = &object.metadata.creation_timestamp else {
        return "<unknown>".into();
    };
    let seconds = (now.unix_timestamp() - created.0.as_second()).max(0);
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7200 => format!("{}m", seconds / 60),
        7200..172_800 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

fn count(value: &Value) -> usize {
    value.as_object().map_or(0, serde_json::Map::len)
}

fn service_ports(spec: &Value) -> String {
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|port| {
            let protocol = port["protocol"].as_str().unwrap_or("TCP");
            match port["nodePort"].as_u64() {
                Some(node_port) => format!("{}:{node_port}/{protocol}", port["port"]),
                None => format!("{}/{protocol}", port["port"]),
            }
        })
        .collect();
    if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    }
}

fn endpoints(object: &Value) -> String {
    let mut addresses = Vec::new();
    for subset in object["subsets"].as_array().into_iter().flatten() {
        for address in subset["addresses"].as_array().into_iter().flatten() {
            for port in subset["ports"].as_array().into_iter().flatten() {
                addresses.push(format!("{}:{}", text(&address["ip"]), port["port"]));
            }
        }
    }
    if addresses.is_empty() {
        "<none>".into()
    } else {
        addresses.join(",")
    }
}

/// Column names and each object's cells (before AGE, which every kind ends with).
fn columns(resource: &Resource) -> &'static [&'static str] {
    match (resource.group, resource.kind) {
        ("", "Namespace") => &["Status"],
        ("", "Service") => &["Type", "Cluster-IP", "External-IP", "Port(s)"],
        ("", "Pod") => &["Ready", "Status", "Restarts"],
        ("", "Secret") => &["Type", "Data"],
        ("", "ConfigMap") => &["Data"],
        ("", "ServiceAccount") => &["Secrets"],
        ("", "Endpoints") => &["Endpoints"],
        ("", "Node") => &["Status", "Roles"],
        ("apps", "Deployment") => &["Ready", "Up-to-date", "Available"],
        ("discovery.k8s.io", "EndpointSlice") => &["AddressType", "Ports", "Endpoints"],
        _ => &[],
    }
}

fn cells(resource: &Resource, object: &Value) -> Vec<String> {
    let spec = &object["spec"];
    let status = &object["status"];
    match (resource.group, resource.kind) {
        ("", "Namespace") => vec![text(&status["phase"])],
        ("", "Service") => {
            let external = status["loadBalancer"]["ingress"]
                .as_array()
                .and_then(|ingress| ingress.first())
                .map(|ingress| text(&ingress["ip"]))
                .or_else(|| match spec["type"].as_str() {
                    Some("LoadBalancer") => Some("<pending>".into()),
                    Some("ExternalName") => spec["externalName"].as_str().map(str::to_owned),
                    _ => None,
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                text(&spec["type"]),
                text(&spec["clusterIP"]),
                external,
                service_ports(spec),
            ]
        }
        ("", "Pod") => {
            let containers = spec["containers"].as_array().map_or(0, Vec::len);
            let statuses = status["containerStatuses"].as_array();
            let ready = statuses.map_or(0, |statuses| {
                statuses
                    .iter()
                    .filter(|status| status["ready"] == true)
                    .count()
            });
            let restarts: u64 = statuses.map_or(0, |statuses| {
                statuses
                    .iter()
                    .filter_map(|status| status["restartCount"].as_u64())
                    .sum()
            });
            vec![
                format!("{ready}/{containers}"),
                text(&status["phase"]),
                restarts.to_string(),
            ]
        }
        ("", "Secret") => vec![text(&object["type"]), count(&object["data"]).to_string()],
        ("", "ConfigMap") => {
            vec![(count(&object["data"]) + count(&object["binaryData"])).to_string()]
        }
        ("", "ServiceAccount") => {
            vec![object["secrets"].as_array().map_or(0, Vec::len).to_string()]
        }
        ("", "Endpoints") => vec![endpoints(object)],
        ("", "Node") => vec!["Ready".into(), "control-plane".into()],
        ("apps", "Deployment") => vec![
            format!(
                "{}/{}",
                status["readyReplicas"].as_u64().unwrap_or(0),
                spec["replicas"].as_u64().unwrap_or(0)
            ),
            status["updatedReplicas"].as_u64().unwrap_or(0).to_string(),
            status["availableReplicas"]
                .as_u64()
                .unwrap_or(0)
                .to_string(),
        ],
        ("discovery.k8s.io", "EndpointSlice") => {
            let ports: Vec<String> = object["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|port| text(&port["port"]))
                .collect();
            let addresses: Vec<String> = object["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|endpoint| {
                    endpoint["addresses"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .map(|address| text(&address))
                .collect();
            vec![
                text(&object["addressType"]),
                if ports.is_empty() {
                    "<unset>".into()
                } else {
                    ports.join(",")
                },
                if addresses.is_empty() {
                    "<unset>".into()
                } else {
                    addresses.join(",")
                },
            ]
        }
        _ => Vec::new(),
    }
}

/// A Table of `objects`, each row carrying its full object (`includeObject=Object`).
pub fn table(
    resource: &Resource,
    objects: &[DynamicObject],
    resource_version: u64,
    continue_token: Option<&str>,
) -> Value {
    let now = time::OffsetDateTime::now_utc();
    let mut definitions = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}),
    ];
    for column in columns(resource) {
        definitions.push(json!({"name": column, "type": "string", "format": "", "description": column, "priority": 0}));
    }
    definitions.push(
        json!({"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}),
    );
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut row = vec![object.metadata.name.clone().unwrap_or_default()];
            row.extend(cells(resource, &object.data));
            row.push(age(object, now));
            json!({"cells": row, "object": object})
        })
        .collect();
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// Whether the client asked for a Table (`kubectl get` does).
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{RESOURCES, id_of};

    #[test]
    fn services_print_like_kubectl_shows_them() {
        let service: DynamicObject = serde_json::from_value(json!({"metadata": {"name": "helloworld", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.11.0.7", "ports": [{"port": 5000, "protocol": "TCP"}]}})).unwrap();
        let table = table(&RESOURCES[id_of("", "Service")], &[service], 9, None);
        assert_eq!(
            table["rows"][0]["cells"].as_array().unwrap()[..5],
            json!(["helloworld", "ClusterIP", "10.11.0.7", "<none>", "5000/TCP"])
                .as_array()
                .unwrap()[..]
        );
        assert_eq!(table["columnDefinitions"].as_array().unwrap().len(), 6);
    }

    #[test]
    fn table_requests_are_recognised() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
