//! What the API server does to an object on its way in: checks it has the right shape and valid
//! names, fills in server-owned metadata, and applies the defaults Kubernetes applies.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DynamicObject;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::resources::Resource;
use super::status::{ApiError, Cause};

/// Five characters of Kubernetes' name-suffix alphabet (no vowels, no look-alikes), one per byte,
/// as in `generateName` names and EndpointSlice names.
pub fn name_suffix(bytes: &[u8; 5]) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    bytes
        .iter()
        .map(|byte| ALPHABET[usize::from(*byte) % ALPHABET.len()] as char)
        .collect()
}

/// `2026-11-22T10:00:00Z`, the format of `metadata.creationTimestamp`.
pub fn timestamp(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

pub fn now() -> String {
    timestamp(time::OffsetDateTime::now_utc())
}

/// Now, whole seconds, as metadata timestamps are kept.
pub fn now_time() -> Time {
    let seconds = time::OffsetDateTime::now_utc().unix_timestamp();
    Time(k8s_openapi::jiff::Timestamp::from_second(seconds).expect("now is a valid time"))
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

/// The body as a JSON object, from JSON or YAML.
pub fn parse_body(body: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let value: Value = match media {
        "" | "application/json" | "*/*" => serde_json::from_slice(body).map_err(|error| {
            ApiError::bad_request(format!("the request body is not valid JSON: {error}"))
        })?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            let text = std::str::from_utf8(body).map_err(|_| {
                ApiError::bad_request("the request body is not UTF-8 text".to_owned())
            })?;
            serde_saphyr::from_str(text).map_err(|error| {
                ApiError::bad_request(format!("the request body is not valid YAML: {error}"))
            })?
        }
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(body)?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a single object (a JSON object), not a list or a scalar",
        ));
    }
    Ok(value)
}

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

/// The addresses in a Service's `spec.clusterIPs` (none for headless Services).
pub fn cluster_ips(service: &DynamicObject) -> impl Iterator<Item = std::net::Ipv4Addr> + '_ {
    service.data["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|address| address.as_str()?.parse().ok())
}

/// The part of an object whose change bumps `metadata.generation`: everything but metadata and
/// status.
fn spec_of(object: &DynamicObject) -> Value {
    let mut copy = object.data.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("status");
    }
    copy
}

/// Fills in the metadata the server owns on create.
pub fn stamp_new(object: &mut DynamicObject, resource: &Resource) {
    let metadata = &mut object.metadata;
    metadata.uid = Some(uuid::Uuid::new_v4().to_string());
    metadata.creation_timestamp = Some(now_time());
    metadata.resource_version = None;
    metadata.deletion_timestamp = None;
    metadata.deletion_grace_period_seconds = None;
    if resource.has_status || object.data.get("spec").is_some() {
        object.metadata.generation = Some(1);
    }
}

/// Carries the server-owned metadata of `old` into its replacement, keeps `.status` when the kind
/// updates status separately, and bumps `generation` when the spec changed.
pub fn carry_over(resource: &Resource, old: &DynamicObject, new: &mut DynamicObject) {
    new.metadata.uid.clone_from(&old.metadata.uid);
    new.metadata
        .creation_timestamp
        .clone_from(&old.metadata.creation_timestamp);
    new.metadata.generation = old.metadata.generation;
    new.metadata
        .deletion_timestamp
        .clone_from(&old.metadata.deletion_timestamp);
    if resource.has_status {
        match old.data.get("status") {
            Some(status) => new.data["status"] = status.clone(),
            None => {
                if let Some(map) = new.data.as_object_mut() {
                    map.remove("status");
                }
            }
        }
    }
    if let Some(generation) = old.metadata.generation
        && spec_of(old) != spec_of(new)
    {
        new.metadata.generation = Some(generation + 1);
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
    fn yaml_and_json_bodies_and_their_errors() {
        let value = parse_body(
            b"kind: Namespace\nmetadata:\n  name: a\n",
            "application/yaml",
        )
        .unwrap();
        assert_eq!(value["metadata"]["name"], "a");
        assert_eq!(parse_body(b"{", "application/json").unwrap_err().code, 400);
        assert_eq!(
            parse_body(b"a: [", "application/yaml").unwrap_err().code,
            400
        );
        assert_eq!(
            parse_body(b"[1]", "application/json").unwrap_err().code,
            400
        );
        assert_eq!(parse_body(b"{}", "text/plain").unwrap_err().code, 415);
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

    #[test]
    fn secrets_string_data_becomes_data() {
        let mut secret =
            object(json!({"metadata": {"name": "s"}, "stringData": {"cluster02": "kubeconfig"}}));
        apply_defaults(resource("", "Secret"), &mut secret);
        assert_eq!(secret.data["data"]["cluster02"], "a3ViZWNvbmZpZw==");
        assert!(secret.data.get("stringData").is_none());
        assert_eq!(secret.data["type"], "Opaque");
    }

    #[test]
    fn generation_moves_only_with_the_spec() {
        let deployments = resource("apps", "Deployment");
        let mut old =
            object(json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}, "status": {"x": 1}}));
        stamp_new(&mut old, deployments);
        let mut relabelled = old.clone();
        relabelled.metadata.labels = Some([("a".to_owned(), "b".to_owned())].into());
        relabelled.data["status"] = json!({"x": 2});
        carry_over(deployments, &old, &mut relabelled);
        assert_eq!(relabelled.metadata.generation, Some(1));
        assert_eq!(relabelled.data["status"]["x"], 1);
        let mut scaled = old.clone();
        scaled.data["spec"]["replicas"] = json!(3);
        carry_over(deployments, &old, &mut scaled);
        assert_eq!(scaled.metadata.generation, Some(2));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_seconds() {
        let at = time::OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
        assert_eq!(timestamp(at), "2026-11-18T11:06:40Z");
    }
}
