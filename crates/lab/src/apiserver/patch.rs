//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and Kubernetes' strategic merge
//! patch, which `kubectl apply`, `label` and `annotate` send for built-in kinds.

use serde_json::{Map, Value};

use super::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" => Err(ApiError::unsupported_media_type(
                "application/apply-patch+yaml: server-side apply is not supported by the lab API \
                 server; use client-side `kubectl apply` (the default)",
            )),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// Applies `patch` to `target` (a whole object of `kind`).
pub fn apply(
    patch_type: PatchType,
    kind: &str,
    target: &Value,
    patch: &[u8],
) -> Result<Value, ApiError> {
    let patch: Value = serde_json::from_slice(patch)
        .map_err(|error| ApiError::bad_request(format!("the patch is not valid JSON: {error}")))?;
    let mut result = target.clone();
    match patch_type {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(&mut result, &patch);
        }
        PatchType::Json => {
            let operations: json_patch::Patch = serde_json::from_value(patch).map_err(|error| {
                ApiError::bad_request(format!(
                    "the JSON patch is not a list of operations: {error}"
                ))
            })?;
            json_patch::patch(&mut result, &operations).map_err(|error| {
                ApiError::invalid_patch(format!("the JSON patch cannot be applied: {error}"))
            })?;
        }
        PatchType::Strategic => {
            let Value::Object(patch) = patch else {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            };
            let Value::Object(map) = &mut result else {
                return Err(ApiError::internal("the stored object is not a JSON object"));
            };
            merge_map(map, &patch, kind, &mut Vec::new())?;
        }
    }
    Ok(result)
}

impl ApiError {
    /// 422 for a patch that does not fit the object (a JSON patch `test` that fails, a path that
    /// does not exist).
    pub fn invalid_patch(message: String) -> Self {
        let mut error = Self::bad_request(message);
        error.code = http::StatusCode::UNPROCESSABLE_ENTITY;
        error.reason = "Invalid";
        error
    }
}

/// How a list field is merged, from the `patchStrategy`/`patchMergeKey` tags of the Kubernetes Go
/// types.
#[derive(Debug, PartialEq, Eq)]
enum ListStrategy {
    Replace,
    MergeByKey(&'static str),
    MergePrimitives,
}

const CONTAINER_LISTS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];

fn list_strategy(kind: &str, path: &[String]) -> ListStrategy {
    let Some(field) = path.last() else {
        return ListStrategy::Replace;
    };
    let parent = path.len().checked_sub(2).map(|index| path[index].as_str());
    match field.as_str() {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets" => ListStrategy::MergeByKey("name"),
        "ports" if parent.is_some_and(|parent| CONTAINER_LISTS.contains(&parent)) => {
            ListStrategy::MergeByKey("containerPort")
        }
        "ports" if kind == "Service" && path.len() == 2 && path[0] == "spec" => {
            ListStrategy::MergeByKey("port")
        }
        "env" => ListStrategy::MergeByKey("name"),
        "volumeMounts" => ListStrategy::MergeByKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeByKey("devicePath"),
        "conditions" if parent == Some("status") => ListStrategy::MergeByKey("type"),
        "addresses" if kind == "Node" && parent == Some("status") => {
            ListStrategy::MergeByKey("type")
        }
        "ownerReferences" if parent == Some("metadata") => ListStrategy::MergeByKey("uid"),
        "finalizers" if parent == Some("metadata") => ListStrategy::MergePrimitives,
        "hostAliases" => ListStrategy::MergeByKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeByKey("topologyKey"),
        _ => ListStrategy::Replace,
    }
}

const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// A value from a patch with its directives removed, for where it replaces rather than merges.
fn without_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(key, _)| !key.starts_with('$'))
                .map(|(key, value)| (key.clone(), without_directives(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_directives).collect()),
        other => other.clone(),
    }
}

fn merge_map(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    kind: &str,
    path: &mut Vec<String>,
) -> Result<(), ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            if let Value::Object(replacement) = without_directives(&Value::Object(patch.clone())) {
                *original = replacement;
            }
            return Ok(());
        }
        Some("delete") => {
            original.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown $patch directive {other:?} at {}",
                path.join(".")
            )));
        }
    }
    let mut orders = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER) {
            orders.push((field.to_owned(), value));
            continue;
        }
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            if let (Some(Value::Array(items)), Value::Array(removed)) =
                (original.get_mut(field), value)
            {
                items.retain(|item| !removed.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                original.remove(key);
            }
            Value::Object(patch_map) => {
                if patch_map.get("$patch").and_then(Value::as_str) == Some("delete") {
                    original.remove(key);
                    continue;
                }
                path.push(key.clone());
                match original.get_mut(key) {
                    Some(Value::Object(original_map)) => {
                        merge_map(original_map, patch_map, kind, path)?
                    }
                    _ => {
                        let mut fresh = Map::new();
                        merge_map(&mut fresh, patch_map, kind, path)?;
                        original.insert(key.clone(), Value::Object(fresh));
                    }
                }
                path.pop();
            }
            Value::Array(patch_items) => {
                path.push(key.clone());
                let merged = merge_list(original.get(key), patch_items, kind, path)?;
                path.pop();
                original.insert(key.clone(), merged);
            }
            other => {
                original.insert(key.clone(), other.clone());
            }
        }
    }
    if let Some(Value::Array(keys)) = patch.get("$retainKeys") {
        original.retain(|key, _| keys.iter().any(|retained| retained.as_str() == Some(key)));
    }
    for (field, order) in orders {
        path.push(field.clone());
        let strategy = list_strategy(kind, path);
        path.pop();
        if let (Some(Value::Array(items)), Value::Array(order)) = (original.get_mut(&field), order)
        {
            reorder(items, order, &strategy);
        }
    }
    Ok(())
}

fn merge_list(
    original: Option<&Value>,
    patch_items: &[Value],
    kind: &str,
    path: &mut Vec<String>,
) -> Result<Value, ApiError> {
    let strategy = list_strategy(kind, path);
    let replace_whole = patch_items
        .iter()
        .any(|item| item.get("$patch").and_then(Value::as_str) == Some("replace"));
    let original_items = match original {
        Some(Value::Array(items)) if !replace_whole => items.clone(),
        _ => Vec::new(),
    };
    match strategy {
        ListStrategy::Replace => Ok(without_directives(&Value::Array(
            patch_items
                .iter()
                .filter(|item| item.get("$patch").is_none())
                .cloned()
                .collect(),
        ))),
        ListStrategy::MergePrimitives => {
            let mut items = original_items;
            for item in patch_items {
                if !items.contains(item) {
                    items.push(item.clone());
                }
            }
            Ok(Value::Array(items))
        }
        ListStrategy::MergeByKey(merge_key) => {
            let mut items = original_items;
            for item in patch_items {
                let Value::Object(patch_map) = item else {
                    return Err(ApiError::bad_request(format!(
                        "{} must be a list of objects (merged by {merge_key})",
                        path.join(".")
                    )));
                };
                let directive = patch_map.get("$patch").and_then(Value::as_str);
                if directive == Some("replace") {
                    continue;
                }
                let Some(key_value) = patch_map.get(merge_key) else {
                    return Err(ApiError::bad_request(format!(
                        "an element of {} has no {merge_key}, the key it is merged by",
                        path.join(".")
                    )));
                };
                let position = items
                    .iter()
                    .position(|existing| existing.get(merge_key) == Some(key_value));
                match (directive, position) {
                    (Some("delete"), Some(index)) => {
                        items.remove(index);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(index)) => {
                        if let Value::Object(existing) = &mut items[index] {
                            merge_map(existing, patch_map, kind, path)?;
                        }
                    }
                    (_, None) => items.push(without_directives(item)),
                }
            }
            Ok(Value::Array(items))
        }
    }
}

/// Puts the elements named in `order` first, in that order (`$setElementOrder`).
fn reorder(items: &mut Vec<Value>, order: &[Value], strategy: &ListStrategy) {
    let identity = |item: &Value| -> Value {
        match strategy {
            ListStrategy::MergeByKey(key) => item.get(*key).cloned().unwrap_or(Value::Null),
            _ => item.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(&identity).collect();
    let mut ordered = Vec::with_capacity(items.len());
    for want in &wanted {
        if let Some(index) = items.iter().position(|item| &identity(item) == want) {
            ordered.push(items.remove(index));
        }
    }
    ordered.append(items);
    *items = ordered;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strategic(kind: &str, target: Value, patch: Value) -> Value {
        apply(
            PatchType::Strategic,
            kind,
            &target,
            patch.to_string().as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let deployment = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]},
            {"name": "side", "image": "s:1"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
            "containers": [{"name": "app", "image": "a:2", "env": [{"name": "B", "value": "2"}], "ports": [{"containerPort": 80, "name": "http"}]}]
        }}}});
        let result = strategic("Deployment", deployment, patch);
        let containers = &result["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["name"], "side");
        assert_eq!(containers[1]["image"], "a:2");
        assert_eq!(containers[1]["env"].as_array().unwrap().len(), 2);
        assert_eq!(
            containers[1]["ports"],
            json!([{"containerPort": 80, "name": "http"}])
        );
    }

    #[test]
    fn service_ports_merge_by_port_and_delete_directives_remove() {
        let service = json!({"spec": {"ports": [{"port": 5000, "name": "http"}, {"port": 6000}], "selector": {"app": "a"}}});
        let patch = json!({"spec": {"ports": [{"port": 6000, "$patch": "delete"}, {"port": 7000}], "selector": {"app": null, "b": "c"}}});
        let result = strategic("Service", service, patch);
        assert_eq!(
            result["spec"]["ports"],
            json!([{"port": 5000, "name": "http"}, {"port": 7000}])
        );
        assert_eq!(result["spec"]["selector"], json!({"b": "c"}));
    }

    #[test]
    fn lists_without_a_strategy_are_replaced_and_finalizers_unioned() {
        let pod =
            json!({"metadata": {"finalizers": ["a"]}, "spec": {"tolerations": [{"key": "x"}]}});
        let patch =
            json!({"metadata": {"finalizers": ["b"]}, "spec": {"tolerations": [{"key": "y"}]}});
        let result = strategic("Pod", pod, patch);
        assert_eq!(result["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(result["spec"]["tolerations"], json!([{"key": "y"}]));
    }

    #[test]
    fn retain_keys_and_replace_directives() {
        let deployment = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let result = strategic("Deployment", deployment, patch);
        assert_eq!(result["spec"]["strategy"], json!({"type": "Recreate"}));
        let patch = json!({"spec": {"$patch": "replace", "replicas": 2}});
        let result = strategic("Deployment", result, patch);
        assert_eq!(result["spec"], json!({"replicas": 2}));
    }

    #[test]
    fn hostile_strategic_patches_are_refused_or_applied_never_panic() {
        let pod = json!({"metadata": {"name": "p", "finalizers": "not-a-list"}, "spec": {"containers": [{"name": "a"}, 7]}});
        let patches = [
            json!({"spec": {"containers": [1, 2]}}),
            json!({"spec": {"containers": [{"image": "no-name"}]}}),
            json!({"spec": {"$patch": "explode"}}),
            json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}], "$setElementOrder/containers": "x"}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"], "finalizers": ["y"]}}),
            json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "b"}]}}),
            json!({"spec": {"$retainKeys": "nope", "containers": null}}),
        ];
        for patch in patches {
            let _ = apply(
                PatchType::Strategic,
                "Pod",
                &pod,
                patch.to_string().as_bytes(),
            );
        }
        let error = apply(
            PatchType::Strategic,
            "Pod",
            &pod,
            br#"{"spec": {"containers": [{"image": "x"}]}}"#,
        )
        .unwrap_err();
        assert!(error.message.contains("has no name"), "{}", error.message);
        let replaced = apply(
            PatchType::Strategic,
            "Pod",
            &pod,
            br#"{"spec": {"containers": [{"$patch": "replace"}, {"name": "b"}]}}"#,
        )
        .unwrap();
        assert_eq!(replaced["spec"]["containers"], json!([{"name": "b"}]));
    }

    #[test]
    fn merge_and_json_patches_and_their_errors() {
        let object = json!({"metadata": {"labels": {"a": "1"}}});
        let merged = apply(
            PatchType::Merge,
            "Namespace",
            &object,
            br#"{"metadata":{"labels":{"istio-injection":"enabled","a":null}}}"#,
        )
        .unwrap();
        assert_eq!(
            merged["metadata"]["labels"],
            json!({"istio-injection": "enabled"})
        );
        let patched = apply(
            PatchType::Json,
            "Namespace",
            &object,
            br#"[{"op":"add","path":"/metadata/labels/b","value":"2"}]"#,
        )
        .unwrap();
        assert_eq!(patched["metadata"]["labels"]["b"], "2");
        let error = apply(
            PatchType::Json,
            "Namespace",
            &object,
            br#"[{"op":"remove","path":"/spec/x"}]"#,
        )
        .unwrap_err();
        assert_eq!(error.code, 422);
        let error = apply(PatchType::Merge, "Namespace", &object, b"{not json").unwrap_err();
        assert_eq!(error.code, 400);
    }
}
