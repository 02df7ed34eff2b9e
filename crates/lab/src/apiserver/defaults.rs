//! Defaults Kubernetes fills in on create (and keeps on update) for the kinds the mesh reads.

use kube::core::DynamicObject;
use serde_json::{Value, json};

use super::resources::Resource;

/// Defaults Kubernetes fills in on create (and keeps on update) for the kinds the mesh reads.
pub fn apply_defaults(resource: &Resource, object: &mut DynamicObject) {
    let name = object.metadata.name.clone().unwrap_or_default();
    let metadata = &mut object.metadata;
    let object = &mut object.data;
    match (resource.group, resource.kind) {
        ("", "Namespace") => {
            metadata
                .labels
                .get_or_insert_default()
                .insert("kubernetes.io/metadata.name".into(), name);
            if !object["spec"].is_object() {
                object["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            if object["status"]["phase"].is_null() {
                object["status"] = json!({"phase": "Active"});
            }
        }
        ("", "Service") => {
            let spec = &mut object["spec"];
            if spec["type"].is_null() {
                spec["type"] = json!("ClusterIP");
            }
            if spec["sessionAffinity"].is_null() {
                spec["sessionAffinity"] = json!("None");
            }
            if spec["type"] != "ExternalName" {
                if spec["internalTrafficPolicy"].is_null() {
                    spec["internalTrafficPolicy"] = json!("Cluster");
                }
                if spec["ipFamilies"].is_null() {
                    spec["ipFamilies"] = json!(["IPv4"]);
                }
                if spec["ipFamilyPolicy"].is_null() {
                    spec["ipFamilyPolicy"] = json!("SingleStack");
                }
            }
            if matches!(spec["type"].as_str(), Some("LoadBalancer" | "NodePort"))
                && spec["externalTrafficPolicy"].is_null()
            {
                spec["externalTrafficPolicy"] = json!("Cluster");
            }
            if let Some(ports) = spec["ports"].as_array_mut() {
                for port in ports {
                    if port["protocol"].is_null() {
                        port["protocol"] = json!("TCP");
                    }
                    if port["targetPort"].is_null() {
                        port["targetPort"] = port["port"].clone();
                    }
                }
            }
            if object["status"].is_null() {
                object["status"] = json!({"loadBalancer": {}});
            }
        }
        ("", "Secret") => {
            if object["type"].as_str().is_none_or(str::is_empty) {
                object["type"] = json!("Opaque");
            }
            if let Some(Value::Object(string_data)) = object
                .as_object_mut()
                .and_then(|map| map.remove("stringData"))
            {
                use base64::Engine;
                let data = object
                    .as_object_mut()
                    .expect("an object's fields are a JSON object")
                    .entry("data")
                    .or_insert_with(|| json!({}));
                for (key, value) in string_data {
                    let text = value
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| value.to_string());
                    data[key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
                }
            }
        }
        ("", "Pod") => {
            if object["spec"]["serviceAccountName"].is_null() {
                object["spec"]["serviceAccountName"] = json!("default");
            }
            if object["spec"]["restartPolicy"].is_null() {
                object["spec"]["restartPolicy"] = json!("Always");
            }
            if object["status"]["phase"].is_null() {
                object["status"]["phase"] = json!("Pending");
            }
        }
        ("apps", "Deployment") => {
            let spec = &mut object["spec"];
            if spec["replicas"].is_null() {
                spec["replicas"] = json!(1);
            }
            if spec["revisionHistoryLimit"].is_null() {
                spec["revisionHistoryLimit"] = json!(10);
            }
            if spec["progressDeadlineSeconds"].is_null() {
                spec["progressDeadlineSeconds"] = json!(600);
            }
            if spec["strategy"].is_null() {
                spec["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}});
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{RESOURCES, id_of};

    fn resource(group: &str, kind: &str) -> &'static Resource {
        &RESOURCES[id_of(group, kind)]
    }

    fn object(value: Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn secrets_string_data_becomes_data() {
        let mut secret =
            object(json!({"metadata": {"name": "s"}, "stringData": {"cluster02": "kubeconfig"}}));
        apply_defaults(resource("", "Secret"), &mut secret);
        assert_eq!(secret.data["data"]["cluster02"], "a3ViZWNvbmZpZw==");
        assert!(secret.data.get("stringData").is_none());
        assert_eq!(secret.data["type"], "Opaque");
    }
}
