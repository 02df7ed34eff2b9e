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
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
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
            pod_spec(&mut object["spec"]);
            if object["status"]["phase"].is_null() {
                object["status"]["phase"] = json!("Pending");
            }
            if object["status"]["qosClass"].is_null() {
                object["status"]["qosClass"] = json!(qos_class(&object["spec"]));
            }
        }
        ("apps", "ReplicaSet") => {
            let spec = &mut object["spec"];
            if spec["replicas"].is_null() {
                spec["replicas"] = json!(1);
            }
            pod_spec(&mut spec["template"]["spec"]);
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
            } else if spec["strategy"]["type"].is_null() {
                spec["strategy"]["type"] = json!("RollingUpdate");
            }
            if spec["strategy"]["type"] == "RollingUpdate" {
                let rolling = &mut spec["strategy"]["rollingUpdate"];
                for field in ["maxSurge", "maxUnavailable"] {
                    if rolling[field].is_null() {
                        rolling[field] = json!("25%");
                    }
                }
            }
            pod_spec(&mut spec["template"]["spec"]);
        }
        _ => {}
    }
}

/// Sets `field` to `value` when it is absent.
fn default(object: &mut Value, field: &str, value: Value) {
    if object[field].is_null() {
        object[field] = value;
    }
}

/// A pod spec's defaults (a pod's, or a template's), as the API server fills them in, so that
/// `kubectl get -o yaml` and `describe` show what they show on Kubernetes.
fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default(spec, "serviceAccountName", json!("default"));
    let account = spec["serviceAccountName"].clone();
    default(spec, "serviceAccount", account);
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    default(spec, "enableServiceLinks", json!(true));
    default(spec, "priority", json!(0));
    for list in ["initContainers", "containers"] {
        for container in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            default(
                container,
                "terminationMessagePath",
                json!("/dev/termination-log"),
            );
            default(container, "terminationMessagePolicy", json!("File"));
            default(container, "resources", json!({}));
            let image = container["image"].as_str().unwrap_or("");
            let tag = image
                .rsplit('/')
                .next()
                .and_then(|last| last.split_once(':'))
                .map(|(_, tag)| tag);
            let pull = if tag.is_none_or(|tag| tag == "latest") && !image.contains('@') {
                "Always"
            } else {
                "IfNotPresent"
            };
            default(container, "imagePullPolicy", json!(pull));
            for port in container
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                default(port, "protocol", json!("TCP"));
            }
        }
    }
}

/// The pod's quality of service class, from its containers' requests and limits.
fn qos_class(spec: &Value) -> &'static str {
    let containers = spec["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let resources = |container: &Value, kind: &str| {
        container["resources"][kind]
            .as_object()
            .is_some_and(|map| !map.is_empty())
    };
    if containers
        .iter()
        .all(|container| !resources(container, "requests") && !resources(container, "limits"))
    {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|container| {
        ["cpu", "memory"].iter().all(|resource| {
            let limit = &container["resources"]["limits"][*resource];
            let request = &container["resources"]["requests"][*resource];
            !limit.is_null() && (request.is_null() || request == limit)
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::test_objects::{object, resource};

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
