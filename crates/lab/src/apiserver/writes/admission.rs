//! What an object goes through before it is stored: its type checked against the target, its
//! namespace placed, its shape decoded into typed metadata, the kind's defaults and rules, the
//! metadata the server owns, and the addresses it is given.

use std::net::Ipv4Addr;

use kube::core::DynamicObject;
use serde_json::{Value, json};

use super::super::defaults::apply_defaults;
use super::super::metadata::{carry_over, name_suffix, stamp_new};
use super::super::resources::{Resource, id_of};
use super::super::routing::Target;
use super::super::state::ApiState;
use super::super::status::{ApiError, Cause};
use super::super::store::{Change, StoredObject};
use super::super::validation::{check_shape, check_type, into_object, validate};

/// A new object ready to store, and what was reserved for it (released if it is not stored).
pub struct Admitted {
    pub object: DynamicObject,
    pub allocations: Allocations,
}

/// Addresses reserved for an object on its way in.
#[derive(Default)]
pub struct Allocations {
    cluster_ip: Option<Ipv4Addr>,
}

impl Allocations {
    pub fn release(self, state: &ApiState) {
        if let Some(address) = self.cluster_ip {
            state.service_ips().release(address);
        }
    }
}

pub fn admit_new(
    state: &ApiState,
    target: &Target,
    mut object: Value,
) -> Result<Admitted, ApiError> {
    let kind = target.kind();
    if !object.is_object() {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    }
    check_type(kind, &target.version, &mut object)?;
    place(target, &mut object)?;
    require_namespace(state, target)?;
    let metadata = &mut object["metadata"];
    if metadata["name"].as_str().unwrap_or("").is_empty()
        && let Some(prefix) = metadata["generateName"].as_str()
    {
        metadata["name"] = json!(generated_name(prefix));
    }
    if metadata["resourceVersion"]
        .as_str()
        .is_some_and(|version| !version.is_empty())
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    check_shape(kind, &object)?;
    let mut object = into_object(kind, object)?;
    complete(kind, &mut object)?;
    if kind.kind == "Pod" && kind.group.is_empty() {
        super::pod_admission::admit(state, &mut object)?;
    }
    let allocations = Allocations {
        cluster_ip: allocate_cluster_ip(state, kind, &mut object)?,
    };
    stamp_new(&mut object, kind);
    Ok(Admitted {
        object,
        allocations,
    })
}

/// Checks and completes `new`, the replacement of `current` (a PUT's body, a patched copy, a
/// controller's update). An unchanged object is kept as it is.
pub fn admit_replacement(
    target: &Target,
    current: &StoredObject,
    mut new: Value,
) -> Result<Change, ApiError> {
    let kind = target.kind();
    let name = target.name.as_deref().unwrap_or("");
    if !new.is_object() {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    }
    check_type(kind, &target.version, &mut new)?;
    place(target, &mut new)?;
    // The shape first: the steps below read fields they expect to have their types.
    check_shape(kind, &new)?;
    match new["metadata"]["name"].as_str() {
        Some(sent) if sent != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({sent}) does not match the name on the URL ({name})"
            )));
        }
        None => new["metadata"]["name"] = json!(name),
        Some(_) => {}
    }
    let mut new = into_object(kind, new)?;
    let sent_version = new.metadata.resource_version.as_deref().unwrap_or("");
    if !sent_version.is_empty() && sent_version != current.revision.to_string() {
        return Err(ApiError::conflict(
            kind.group,
            kind.plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if target.subresource.as_deref() == Some("status") {
        let status = new.data.get("status").cloned();
        new = (*current.object).clone();
        match status {
            Some(status) => new.data["status"] = status,
            None => {
                if let Some(fields) = new.data.as_object_mut() {
                    fields.remove("status");
                }
            }
        }
        // The stored object with the sent status is a new object: check its shape too.
        check_shape(kind, &serde_json::to_value(&new).unwrap_or_default())?;
    } else {
        carry_over(kind, &current.object, &mut new);
        keep_cluster_ips(kind, &current.object, &mut new, name)?;
    }
    complete(kind, &mut new)?;
    new.metadata.resource_version = Some(current.revision.to_string());
    if new == *current.object {
        return Ok(Change::Keep);
    }
    Ok(Change::Put(Box::new(new)))
}

/// Puts the object in the target's namespace (or none for cluster-scoped kinds).
fn place(target: &Target, object: &mut Value) -> Result<(), ApiError> {
    let metadata = object["metadata"]
        .as_object_mut()
        .expect("check_type made metadata an object");
    if target.kind().namespaced {
        let namespace = target.namespace().to_owned();
        if namespace.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{} are namespaced: send them to /namespaces/<namespace>/{}",
                target.kind().plural,
                target.kind().plural
            )));
        }
        match metadata.get("namespace").and_then(Value::as_str) {
            Some(sent) if !sent.is_empty() && sent != namespace => {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({sent}) does not match the namespace sent on the request ({namespace})"
                )));
            }
            _ => {
                metadata.insert("namespace".into(), json!(namespace));
            }
        }
    } else {
        metadata.remove("namespace");
    }
    Ok(())
}

fn require_namespace(state: &ApiState, target: &Target) -> Result<(), ApiError> {
    if target.kind().namespaced
        && state
            .store
            .get(id_of("", "Namespace"), "", target.namespace())
            .is_none()
    {
        return Err(ApiError::not_found("", "namespaces", target.namespace()));
    }
    Ok(())
}

fn generated_name(prefix: &str) -> String {
    let mut bytes = [0u8; 5];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system has randomness");
    format!("{prefix}{}", name_suffix(&bytes))
}

/// Applies the kind's defaults, then its rules: the last steps before an object is stored.
fn complete(kind: &Resource, object: &mut DynamicObject) -> Result<(), ApiError> {
    apply_defaults(kind, object);
    let causes = validate(kind, object);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(kind, object, causes))
    }
}

/// A 422 naming the object and what is wrong with it.
fn invalid(kind: &Resource, object: &DynamicObject, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(
        kind.kind,
        kind.group,
        object.metadata.name.as_deref().unwrap_or(""),
        causes,
    )
}

fn is_service(kind: &Resource) -> bool {
    kind.kind == "Service" && kind.group.is_empty()
}

/// Gives a new Service its cluster IP (unless headless or ExternalName).
fn allocate_cluster_ip(
    state: &ApiState,
    kind: &Resource,
    object: &mut DynamicObject,
) -> Result<Option<Ipv4Addr>, ApiError> {
    if !is_service(kind) {
        return Ok(None);
    }
    let spec = &mut object.data["spec"];
    if spec["type"] == "ExternalName" {
        return Ok(None);
    }
    let requested = spec["clusterIP"].as_str().unwrap_or("").to_owned();
    if requested == "None" {
        spec["clusterIPs"] = json!(["None"]);
        return Ok(None);
    }
    let requested = if requested.is_empty() {
        None
    } else {
        Some(requested.parse().map_err(|_| {
            invalid(
                kind,
                object,
                vec![Cause::new(
                    "spec.clusterIP",
                    format!("Invalid value: {requested:?}: must be a valid IPv4 address"),
                )],
            )
        })?)
    };
    let address = state
        .service_ips()
        .allocate(requested)
        .map_err(|cause| invalid(kind, object, vec![cause]))?;
    object.data["spec"]["clusterIP"] = json!(address.to_string());
    object.data["spec"]["clusterIPs"] = json!([address.to_string()]);
    Ok(Some(address))
}

/// A Service's cluster IP is immutable; an update that leaves it out keeps it.
fn keep_cluster_ips(
    kind: &Resource,
    current: &DynamicObject,
    new: &mut DynamicObject,
    name: &str,
) -> Result<(), ApiError> {
    if !is_service(kind) {
        return Ok(());
    }
    for field in ["clusterIP", "clusterIPs"] {
        let old = &current.data["spec"][field];
        let sent = &new.data["spec"][field];
        if sent.is_null() || sent == "" {
            new.data["spec"][field] = old.clone();
        } else if sent != old && !old.is_null() {
            return Err(ApiError::invalid(
                kind.kind,
                kind.group,
                name,
                vec![Cause::new(
                    format!("spec.{field}"),
                    "Invalid value: field is immutable",
                )],
            ));
        }
    }
    Ok(())
}
