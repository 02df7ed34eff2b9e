//! The documents clients read before anything else: `/version`, API discovery, and the slice of
//! OpenAPI v3 that tells `kubectl` the server validates fields itself (so `kubectl apply` works
//! with its default `--validate=strict`).

use serde_json::{Value, json};

use super::resources::{RESOURCES, Storage, group_versions, groups};

pub const KUBERNETES_VERSION: (&str, &str) = ("1", "33");

pub fn version() -> Value {
    json!({
        "major": KUBERNETES_VERSION.0,
        "minor": KUBERNETES_VERSION.1,
        "gitVersion": format!("v{}.{}.0-causeway-{}", KUBERNETES_VERSION.0, KUBERNETES_VERSION.1, env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_document(group: &str) -> Value {
    let versions: Vec<Value> = group_versions(group)
        .into_iter()
        .map(|version| json!({"groupVersion": format!("{group}/{version}"), "version": version}))
        .collect();
    json!({
        "name": group,
        "preferredVersion": versions[0].clone(),
        "versions": versions,
    })
}

pub fn group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups().into_iter().map(group_document).collect::<Vec<_>>(),
    })
}

/// `/apis/<group>`, or `None` for a group this server does not serve.
pub fn group(group: &str) -> Option<Value> {
    groups().contains(&group).then(|| {
        let mut document = group_document(group);
        document["kind"] = json!("APIGroup");
        document["apiVersion"] = json!("v1");
        document
    })
}

/// `kubectl get all` lists the kinds in the `all` category.
fn categories(resource: &super::resources::Resource) -> Vec<&'static str> {
    let mut categories = Vec::new();
    if matches!(
        (resource.group, resource.kind),
        ("", "Pod" | "Service") | ("apps", "Deployment" | "ReplicaSet") | ("autoscaling", _)
    ) {
        categories.push("all");
    }
    if resource.group.ends_with(".istio.io") {
        categories.push("istio-io");
    }
    categories
}

const OBJECT_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `/api/v1` or `/apis/<group>/<version>`, or `None` if nothing is served there.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for resource in RESOURCES
        .iter()
        .filter(|resource| resource.group == group && resource.versions.contains(&version))
    {
        let verbs: &[&str] = match resource.storage {
            Storage::Objects => OBJECT_VERBS,
            Storage::Review => &["create"],
        };
        resources.push(json!({
            "name": resource.plural,
            "singularName": resource.singular,
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": verbs,
            "shortNames": resource.short_names,
            "categories": categories(resource),
        }));
        if resource.has_status {
            resources.push(json!({
                "name": format!("{}/status", resource.plural),
                "singularName": "",
                "namespaced": resource.namespaced,
                "kind": resource.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if matches!(resource.kind, "Deployment" | "ReplicaSet") {
            resources.push(json!({
                "name": format!("{}/scale", resource.plural),
                "singularName": "",
                "namespaced": true,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if resource.kind == "Pod" && resource.group.is_empty() {
            for (subresource, kind, verbs) in [
                ("exec", "PodExecOptions", &["create", "get"][..]),
                ("log", "Pod", &["get"][..]),
                ("proxy", "PodProxyOptions", &["get"][..]),
            ] {
                resources.push(json!({
                    "name": format!("pods/{subresource}"),
                    "singularName": "",
                    "namespaced": true,
                    "kind": kind,
                    "verbs": verbs,
                }));
            }
        }
        if resource.kind == "ServiceAccount" {
            resources.push(json!({
                "name": "serviceaccounts/token",
                "singularName": "",
                "namespaced": true,
                "group": "authentication.k8s.io",
                "version": "v1",
                "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one entry per group-version.
pub fn openapi_root() -> Value {
    let mut paths = serde_json::Map::new();
    let mut add = |group: &str, version: &str| {
        let path = openapi_path(group, version);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", env!("CARGO_PKG_VERSION"))}),
        );
    };
    add("", "v1");
    for group in groups() {
        for version in group_versions(group) {
            add(group, version);
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<api/v1 | apis/group/version>`: the PATCH operation of every kind, with the
/// `fieldValidation` parameter and the kind's group-version-kind, which is what `kubectl` looks for.
pub fn openapi_group_version(path: &str) -> Option<Value> {
    let (group, version) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", version] => ("", *version),
        ["apis", group, version] => (*group, *version),
        _ => return None,
    };
    let mut paths = serde_json::Map::new();
    for resource in RESOURCES
        .iter()
        .filter(|resource| resource.group == group && resource.versions.contains(&version))
    {
        let prefix = format!("/{}", openapi_path(group, version));
        let item = if resource.namespaced {
            format!(
                "{prefix}/namespaces/{{namespace}}/{}/{{name}}",
                resource.plural
            )
        } else {
            format!("{prefix}/{}/{{name}}", resource.plural)
        };
        let gvk = json!({"group": group, "version": version, "kind": resource.kind});
        let parameters = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ]);
        paths.insert(
            item,
            json!({
                "get": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "get"},
                "put": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "put", "parameters": parameters},
                "patch": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "patch", "parameters": parameters},
            }),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", KUBERNETES_VERSION.0, KUBERNETES_VERSION.1)},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_status_and_token_subresources() {
        let core = resource_list("", "v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|resource| resource["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"pods/status"));
        assert!(names.contains(&"serviceaccounts/token"));
        assert!(resource_list("apps", "v2").is_none());
        let reviews = resource_list("authentication.k8s.io", "v1").unwrap();
        assert_eq!(reviews["resources"][0]["verbs"], json!(["create"]));
    }

    #[test]
    fn every_openapi_root_entry_resolves() {
        let root = openapi_root();
        for path in root["paths"].as_object().unwrap().keys() {
            assert!(openapi_group_version(path).is_some(), "{path}");
        }
    }
}
