//! Whether an object may be stored: its type matches the URL it was sent to, its fields have their
//! Kubernetes types, and it keeps the kind's rules (names, labels, Service ports, Deployment
//! selectors...).

use kube::core::DynamicObject;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::resources::Resource;
use super::status::{ApiError, Cause};

/// Checks `apiVersion` and `kind` against the URL the object was sent to, filling them in when
/// absent.
pub fn check_type(resource: &Resource, version: &str, object: &mut Value) -> Result<(), ApiError> {
    let expected_version = resource.api_version(version);
    let map = object.as_object_mut().expect("parse_body returns objects");
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("kind".into(), json!(resource.kind));
        }
        Some(kind) if kind == resource.kind => {}
        Some(kind) => {
            return Err(ApiError::bad_request(format!(
                "the object is a {kind}, but it was sent to the {} endpoint; send it to its own \
                 kind's URL",
                resource.plural
            )));
        }
    }
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("apiVersion".into(), json!(expected_version));
        }
        Some(api_version) => {
            let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
            let sent_version = api_version.rsplit('/').next().unwrap_or("");
            if group != resource.group || !resource.versions.contains(&sent_version) {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({api_version}) does not match the expected API \
                     version ({expected_version})"
                )));
            }
        }
    }
    if !map.get("metadata").is_none_or(Value::is_object) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    map.entry("metadata").or_insert_with(|| json!({}));
    Ok(())
}

fn typed<T: DeserializeOwned>(resource: &Resource, object: &Value) -> Result<(), ApiError> {
    serde_json::from_value::<T>(object.clone())
        .map(|_| ())
        .map_err(|error| {
            ApiError::bad_request(format!(
                "{} in version {:?} cannot be handled as a {}: {error}",
                resource.kind,
                resource.preferred_version(),
                resource.kind
            ))
        })
}

/// Decodes a built-in kind into its Kubernetes type, so that a field of the wrong type is refused
/// as the real API server refuses it.
pub fn check_shape(resource: &Resource, object: &Value) -> Result<(), ApiError> {
    use k8s_openapi::api::{
        admissionregistration::v1 as admission, apps::v1 as apps, coordination::v1 as coordination,
        core::v1 as core, discovery::v1 as discovery, rbac::v1 as rbac,
    };
    match (resource.group, resource.kind) {
        ("", "Namespace") => typed::<core::Namespace>(resource, object),
        ("", "Service") => typed::<core::Service>(resource, object),
        ("", "Endpoints") => typed::<core::Endpoints>(resource, object),
        ("", "Pod") => typed::<core::Pod>(resource, object),
        ("", "Secret") => typed::<core::Secret>(resource, object),
        ("", "ConfigMap") => typed::<core::ConfigMap>(resource, object),
        ("", "ServiceAccount") => typed::<core::ServiceAccount>(resource, object),
        ("", "Event") => typed::<core::Event>(resource, object),
        ("", "Node") => typed::<core::Node>(resource, object),
        ("apps", "Deployment") => typed::<apps::Deployment>(resource, object),
        ("apps", "ReplicaSet") => typed::<apps::ReplicaSet>(resource, object),
        ("discovery.k8s.io", "EndpointSlice") => {
            typed::<discovery::EndpointSlice>(resource, object)
        }
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration") => {
            typed::<admission::MutatingWebhookConfiguration>(resource, object)
        }
        ("coordination.k8s.io", "Lease") => typed::<coordination::Lease>(resource, object),
        ("rbac.authorization.k8s.io", "Role") => typed::<rbac::Role>(resource, object),
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            typed::<rbac::RoleBinding>(resource, object)
        }
        ("rbac.authorization.k8s.io", "ClusterRole") => {
            typed::<rbac::ClusterRole>(resource, object)
        }
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            typed::<rbac::ClusterRoleBinding>(resource, object)
        }
        _ => match object.get("spec") {
            Some(spec) if !spec.is_object() => Err(ApiError::bad_request(format!(
                "{} spec must be an object",
                resource.kind
            ))),
            _ => Ok(()),
        },
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

fn is_qualified_name_part(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

fn check_qualified_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns_subdomain(prefix)
    {
        return Err(format!("{key:?}: the prefix must be a DNS subdomain"));
    }
    if !is_qualified_name_part(name) {
        return Err(format!(
            "{key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must \
             start and end with an alphanumeric character (at most 63 characters)"
        ));
    }
    Ok(())
}

fn name_causes(resource: &Resource, name: &str) -> Option<Cause> {
    let valid = match resource.kind {
        "Namespace" => is_dns_label(name),
        "Service" => is_dns_label(name) && name.as_bytes()[0].is_ascii_lowercase(),
        "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding" | "Event" => {
            !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%'])
        }
        _ => is_dns_subdomain(name),
    };
    (!valid).then(|| {
        Cause::new(
            "metadata.name",
            format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 name must consist of lower case \
                 alphanumeric characters, '-' or '.', and must start and end with an alphanumeric \
                 character"
            ),
        )
    })
}

/// Rule violations of an object about to be stored (422 causes).
pub fn validate(resource: &Resource, object: &DynamicObject) -> Vec<Cause> {
    let mut causes = Vec::new();
    let metadata = &object.metadata;
    let name = metadata.name.as_deref().unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::new(
            "metadata.name",
            "Required value: name or generateName is required",
        ));
    } else if let Some(cause) = name_causes(resource, name) {
        causes.push(cause);
    }
    if let Some(labels) = &metadata.labels {
        for (key, value) in labels {
            if let Err(why) = check_qualified_key(key) {
                causes.push(Cause::new(
                    "metadata.labels",
                    format!("Invalid value: {why}"),
                ));
            }
            if !value.is_empty() && !is_qualified_name_part(value) {
                causes.push(Cause::new(
                    "metadata.labels",
                    format!("Invalid value: {value:?}: a label value must be 63 characters or less, alphanumeric, '-', '_' or '.'"),
                ));
            }
        }
    }
    if let Some(annotations) = &metadata.annotations {
        let mut total = 0;
        for (key, value) in annotations {
            if let Err(why) = check_qualified_key(key) {
                causes.push(Cause::new(
                    "metadata.annotations",
                    format!("Invalid value: {why}"),
                ));
            }
            total += key.len() + value.len();
        }
        if total > 256 * 1024 {
            causes.push(Cause::new(
                "metadata.annotations",
                "Too long: must have at most 262144 bytes",
            ));
        }
    }
    match (resource.group, resource.kind) {
        ("", "ConfigMap") | ("", "Secret") => {
            for field in ["data", "binaryData", "stringData"] {
                for key in object
                    .data
                    .get(field)
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(Map::keys)
                {
                    let valid = !key.is_empty()
                        && key.len() <= 253
                        && key.bytes().all(|byte| {
                            byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')
                        });
                    if !valid {
                        causes.push(Cause::new(
                            format!("{field}[{key}]"),
                            "Invalid value: a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                        ));
                    }
                }
            }
        }
        ("", "Service") => causes.extend(validate_service(&object.data["spec"])),
        ("apps", "Deployment") => {
            let selector = &object.data["spec"]["selector"]["matchLabels"];
            let labels = &object.data["spec"]["template"]["metadata"]["labels"];
            match selector.as_object() {
                None => causes.push(Cause::new("spec.selector", "Required value")),
                Some(selector) => {
                    if selector
                        .iter()
                        .any(|(key, value)| labels.get(key) != Some(value))
                    {
                        causes.push(Cause::new(
                            "spec.template.metadata.labels",
                            "Invalid value: `selector` does not match template `labels`",
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    causes
}

fn validate_service(spec: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let service_type = spec["type"].as_str().unwrap_or("ClusterIP");
    if !matches!(
        service_type,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(Cause::new(
            "spec.type",
            format!("Unsupported value: {service_type:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        ));
    }
    let ports = spec["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let headless = spec["clusterIP"].as_str() == Some("None");
    if ports.is_empty() && !headless && service_type != "ExternalName" {
        causes.push(Cause::new("spec.ports", "Required value"));
    }
    let mut names = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        let number = port["port"].as_u64().unwrap_or(0);
        if !(1..=65535).contains(&number) {
            causes.push(Cause::new(
                format!("spec.ports[{index}].port"),
                format!(
                    "Invalid value: {}: must be between 1 and 65535, inclusive",
                    port["port"]
                ),
            ));
        }
        let name = port["name"].as_str().unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::new(
                format!("spec.ports[{index}].name"),
                "Required value",
            ));
        }
        if !name.is_empty() && names.contains(&name) {
            causes.push(Cause::new(
                format!("spec.ports[{index}].name"),
                format!("Duplicate value: {name:?}"),
            ));
        }
        names.push(name);
    }
    causes
}

/// A checked body (see [`check_type`]) as an object with typed metadata. Metadata of the wrong
/// shape (a label that is not a string, say) is a bad request, as on a real API server.
pub fn into_object(resource: &Resource, value: Value) -> Result<DynamicObject, ApiError> {
    serde_json::from_value(value).map_err(|error| {
        ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {error}",
            resource.kind,
            resource.preferred_version(),
            resource.kind
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::test_objects::{object, resource};

    #[test]
    fn names_labels_and_service_ports_are_validated() {
        let service = object(
            json!({"metadata": {"name": "Bad_Name", "labels": {"ok/app": "v", "-bad": "x"}},
            "spec": {"ports": [{"port": 80}, {"port": 70000, "name": "b"}]}}),
        );
        let fields: Vec<String> = validate(resource("", "Service"), &service)
            .into_iter()
            .map(|cause| cause.field)
            .collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "metadata.labels",
                "spec.ports[0].name",
                "spec.ports[1].port"
            ]
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_is_a_bad_request() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": "nope"}});
        let error = check_shape(resource("", "Pod"), &pod).unwrap_err();
        assert_eq!(error.code, 400);
        assert!(
            error.message.contains("cannot be handled as a Pod"),
            "{}",
            error.message
        );
    }
}
