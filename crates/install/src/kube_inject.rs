//! `kube-inject`: every workload in a manifest (multi-document YAML, `List`s included) gets the
//! proxy in its pod template; everything else passes through unchanged.

use crate::inject::{InjectError, InjectionConfig, Outcome, Target, inject};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum KubeInjectError {
    #[error("{origin}: not valid YAML: {reason}")]
    Yaml { origin: String, reason: String },
    #[error("{origin}: document {document} ({object}): {reason}")]
    Object {
        origin: String,
        document: usize,
        object: String,
        reason: String,
    },
}

/// JSON pointers to the pod template of each workload kind.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController"
        | "DeploymentConfig" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        "Pod" => Some(""),
        _ => None,
    }
}

fn describe(object: &Value) -> String {
    format!(
        "{} {}",
        object["kind"].as_str().unwrap_or("object"),
        object["metadata"]["name"].as_str().unwrap_or("<unnamed>")
    )
}

/// Injects one object in place; `List`s item by item.
fn inject_object(object: &mut Value, config: &InjectionConfig) -> Result<(), String> {
    let kind = object["kind"].as_str().unwrap_or("").to_owned();
    if kind == "List" || kind.ends_with("List") {
        if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                inject_object(item, config)
                    .map_err(|reason| format!("{}: {reason}", describe(item)))?;
            }
        }
        return Ok(());
    }
    let Some(pointer) = template_pointer(&kind) else {
        return Ok(());
    };
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let Some(template) = object.pointer_mut(pointer) else {
        return Err("has no pod template".into());
    };
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": template.get("metadata").cloned().unwrap_or(Value::Null),
        "spec": template.get("spec").cloned().unwrap_or(Value::Null),
    }))
    .map_err(|error| format!("the pod template is not a valid pod: {error}"))?;
    if kind != "Pod" && pod.metadata.generate_name.is_none() {
        pod.metadata.generate_name = Some(format!("{name}-"));
    }
    let injected = match inject(&pod, &namespace, config, &Target::default())
        .map_err(|error: InjectError| error.to_string())?
    {
        Outcome::Injected(injected) => injected,
        Outcome::Skipped(_) => return Ok(()),
    };
    let mut injected = serde_json::to_value(&*injected).expect("a pod serializes");
    if kind != "Pod"
        && let Some(metadata) = injected.get_mut("metadata").and_then(Value::as_object_mut)
    {
        metadata.remove("generateName");
    }
    for part in ["metadata", "spec"] {
        if let Some(value) = injected.get(part) {
            template[part] = value.clone();
        }
    }
    Ok(())
}

/// The manifest `text` (named `origin` in errors) with its workloads injected, as YAML documents.
pub fn kube_inject(
    origin: &str,
    text: &str,
    config: &InjectionConfig,
) -> Result<String, KubeInjectError> {
    let documents: Vec<Value> =
        serde_saphyr::from_str_multiple(text).map_err(|error| KubeInjectError::Yaml {
            origin: origin.to_owned(),
            reason: error.to_string(),
        })?;
    let mut out = Vec::new();
    for (index, mut document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        inject_object(&mut document, config).map_err(|reason| KubeInjectError::Object {
            origin: origin.to_owned(),
            document: index + 1,
            object: describe(&document),
            reason,
        })?;
        out.push(serde_saphyr::to_string(&document).expect("a document serializes"));
    }
    Ok(out.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_samples::sample_text as sample;

    fn config() -> InjectionConfig {
        crate::test_samples::sample_injection_config("topologies/multi-primary/cluster01.yaml", &[])
    }

    fn documents(text: &str) -> Vec<Value> {
        serde_saphyr::from_str_multiple(text).unwrap()
    }

    fn containers(template: &Value) -> Vec<String> {
        template["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn workloads_are_injected_and_everything_else_passes_through() {
        let original = sample("sleep.yaml");
        let output = kube_inject("sleep.yaml", &original, &config()).unwrap();
        let before = documents(&original);
        let after = documents(&output);
        assert_eq!(before.len(), after.len());
        for (before, after) in before.iter().zip(&after) {
            if before["kind"] == "Deployment" {
                let template = &after["spec"]["template"];
                assert_eq!(containers(template), ["istio-proxy", "sleep"]);
                assert_eq!(template["spec"]["initContainers"][0]["name"], "istio-init");
                assert!(template["metadata"].get("generateName").is_none());
                assert_eq!(
                    template["metadata"]["labels"]["security.istio.io/tlsMode"],
                    "istio"
                );
                assert_eq!(after["spec"]["selector"], before["spec"]["selector"]);
            } else {
                assert_eq!(before, after, "{} passes through", before["kind"]);
            }
        }
    }

    #[test]
    fn lists_pods_and_opt_outs() {
        let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: sample}
  spec: {containers: [{name: app, image: curlimages/curl}]}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: b}
  spec:
    selector: {matchLabels: {app: b}}
    template:
      metadata:
        labels: {app: b}
        annotations: {sidecar.istio.io/inject: "false"}
      spec: {containers: [{name: app, image: curlimages/curl}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data: {k: v}
"#;
        let output = documents(&kube_inject("list.yaml", text, &config()).unwrap());
        assert_eq!(output.len(), 2);
        let items = output[0]["items"].as_array().unwrap();
        assert_eq!(containers(&items[0]), ["istio-proxy", "app"]);
        assert_eq!(
            containers(&items[1]["spec"]["template"]),
            ["app"],
            "opted out"
        );
        assert_eq!(output[1]["data"]["k"], "v");
    }

    #[test]
    fn broken_documents_are_named() {
        let error = kube_inject("x.yaml", "a: [", &config())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("x.yaml: not valid YAML"), "{error}");
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: broken}\nspec: {template: {spec: {containers: 5}}}\n";
        let error = kube_inject("x.yaml", text, &config())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "x.yaml: document 2 (Deployment broken): the pod template is not a valid pod"
            ),
            "{error}"
        );
    }
}
