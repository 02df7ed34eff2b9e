//! What Kubernetes' ServiceAccount admission does to a new pod: its service account must exist,
//! and unless automounting is off (on the pod or its account) every container gets the
//! `kube-api-access-*` volume at `/var/run/secrets/kubernetes.io/serviceaccount`: a token of the
//! account, the API server's CA and the namespace.

use kube::core::DynamicObject;
use serde_json::{Value, json};

use super::super::metadata::name_suffix;
use super::super::resources::id_of;
use super::super::state::ApiState;
use super::super::status::ApiError;

pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The token lifetime the kubelet asks for, as on Kubernetes.
const TOKEN_SECONDS: i64 = 3607;

pub fn admit(state: &ApiState, pod: &mut DynamicObject) -> Result<(), ApiError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = &mut pod.data["spec"];
    let account_name = spec["serviceAccountName"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let account = state
        .store
        .get(id_of("", "ServiceAccount"), &namespace, &account_name);
    // A namespace's `default` account is made by a controller right after the namespace: a pod
    // created in between is let through rather than refused.
    if account.is_none() && account_name != "default" {
        return Err(ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: error looking up service account \
             {namespace}/{account_name}: serviceaccount \"{account_name}\" not found"
        )));
    }
    let automount = spec["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| {
            account
                .and_then(|account| account.object.data["automountServiceAccountToken"].as_bool())
        })
        .unwrap_or(true);
    if automount {
        mount_api_access(spec);
    }
    Ok(())
}

fn mount_api_access(spec: &mut Value) {
    let mounted = |container: &Value| {
        container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|mount| mount["mountPath"] == SERVICE_ACCOUNT_MOUNT)
    };
    let needs: Vec<bool> = ["initContainers", "containers"]
        .iter()
        .flat_map(|list| spec[*list].as_array().cloned().unwrap_or_default())
        .map(|container| !mounted(&container))
        .collect();
    if !needs.iter().any(|need| *need) {
        return;
    }
    let mut bytes = [0u8; 5];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system has randomness");
    let volume_name = format!("kube-api-access-{}", name_suffix(&bytes));
    let volume = json!({
        "name": volume_name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    });
    match spec["volumes"].as_array_mut() {
        Some(volumes) => volumes.push(volume),
        None => spec["volumes"] = json!([volume]),
    }
    for list in ["initContainers", "containers"] {
        for container in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if mounted(container) {
                continue;
            }
            let mount =
                json!({"name": volume_name, "mountPath": SERVICE_ACCOUNT_MOUNT, "readOnly": true});
            match container["volumeMounts"].as_array_mut() {
                Some(mounts) => mounts.push(mount),
                None => container["volumeMounts"] = json!([mount]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_without_the_mount_gets_the_api_access_volume() {
        let mut spec = json!({"containers": [
            {"name": "a"},
            {"name": "b", "volumeMounts": [{"name": "own", "mountPath": SERVICE_ACCOUNT_MOUNT}]},
        ], "initContainers": [{"name": "init"}]});
        mount_api_access(&mut spec);
        let volume = &spec["volumes"][0];
        let name = volume["name"].as_str().unwrap();
        assert!(
            name.starts_with("kube-api-access-") && name.len() == 21,
            "{name}"
        );
        assert_eq!(
            volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
        assert_eq!(spec["containers"][0]["volumeMounts"][0]["name"], name);
        assert_eq!(spec["containers"][0]["volumeMounts"][0]["readOnly"], true);
        assert_eq!(spec["initContainers"][0]["volumeMounts"][0]["name"], name);
        assert_eq!(
            spec["containers"][1]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_pod_whose_containers_all_mount_the_path_gets_nothing() {
        let mut spec = json!({"containers": [
            {"name": "b", "volumeMounts": [{"name": "own", "mountPath": SERVICE_ACCOUNT_MOUNT}]},
        ]});
        mount_api_access(&mut spec);
        assert!(spec["volumes"].is_null());
    }
}
