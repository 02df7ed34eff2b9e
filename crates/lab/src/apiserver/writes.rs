//! Writes that more than one writer makes: server-made objects, deletions (with what a deletion
//! releases), namespace termination, and ClusterIP allocation.

use serde_json::{Value, json};

use super::objects;
use super::resources::{RESOURCES, Resource, ResourceId, id_of};
use super::state::ApiState;
use super::status::{self, ApiError};
use super::store::{Change, StoredObject};

/// Namespaces every cluster needs.
pub const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// Creates a server-made object unless one of that name exists.
pub fn create_if_absent(
    state: &ApiState,
    resource: usize,
    namespace: &str,
    mut object: serde_json::Value,
) -> Result<(), super::status::ApiError> {
    let kind = &RESOURCES[resource];
    objects::apply_defaults(kind, &mut object);
    objects::stamp_new(&mut object, kind);
    if !namespace.is_empty() {
        object["metadata"]["namespace"] = json!(namespace);
    }
    let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
    state
        .store
        .change(resource, namespace, &name, false, |current| {
            Ok(match current {
                Some(_) => Change::Keep,
                None => Change::Put(object),
            })
        })?;
    Ok(())
}

/// Gives a new Service its cluster IP (unless headless or ExternalName).
pub fn allocate_cluster_ip(
    state: &ApiState,
    kind: &Resource,
    object: &mut Value,
) -> Result<Option<std::net::Ipv4Addr>, ApiError> {
    if kind.kind != "Service" || !kind.group.is_empty() {
        return Ok(None);
    }
    let spec = &mut object["spec"];
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
                vec![status::Cause::new(
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
    object["spec"]["clusterIP"] = json!(address.to_string());
    object["spec"]["clusterIPs"] = json!([address.to_string()]);
    Ok(Some(address))
}

pub fn release_cluster_ip(state: &ApiState, object: &Value) {
    let mut service_ips = state.service_ips();
    for address in objects::cluster_ips(object) {
        service_ips.release(address);
    }
}

/// Deletes one object after `check` accepts it; returns the deleted object, `None` if absent.
pub fn delete_one(
    state: &ApiState,
    resource: ResourceId,
    namespace: &str,
    name: &str,
    dry_run: bool,
    check: impl FnOnce(&StoredObject) -> Result<(), ApiError>,
) -> Result<Option<StoredObject>, ApiError> {
    let outcome = state.store.change(
        resource,
        namespace,
        name,
        dry_run,
        |current| match current {
            None => Ok(Change::Keep),
            Some(current) => {
                check(current)?;
                Ok(Change::Delete)
            }
        },
    )?;
    let deleted = outcome.previous;
    if !dry_run
        && let Some(deleted) = &deleted
        && RESOURCES[resource].kind == "Service"
    {
        release_cluster_ip(state, &deleted.object);
    }
    Ok(deleted)
}

/// Marks a namespace Terminating (no new objects may enter it, see the store), then deletes
/// everything in it. There are no finalizers in the lab, so the namespace itself can go right after.
pub fn terminate_namespace(state: &ApiState, namespace: &str) -> Result<(), ApiError> {
    state
        .store
        .change(id_of("", "Namespace"), "", namespace, false, |current| {
            let Some(current) = current else {
                return Ok(Change::Keep);
            };
            let mut terminating = (*current.object).clone();
            terminating["status"]["phase"] = json!("Terminating");
            terminating["metadata"]["deletionTimestamp"] = json!(objects::now());
            Ok(Change::Put(terminating))
        })?;
    delete_namespace_contents(state, namespace);
    Ok(())
}

fn delete_namespace_contents(state: &ApiState, namespace: &str) {
    for (resource, name) in state.store.names_in_namespace(namespace) {
        if let Err(error) = delete_one(state, resource, namespace, &name, false, |_| Ok(())) {
            tracing::warn!(%namespace, %name, %error, "cannot delete an object of a deleted namespace");
        }
    }
}

/// A 422 naming the object and what is wrong with it.
pub fn invalid(kind: &Resource, object: &Value, causes: Vec<status::Cause>) -> ApiError {
    ApiError::invalid(
        kind.kind,
        kind.group,
        object["metadata"]["name"].as_str().unwrap_or(""),
        causes,
    )
}
