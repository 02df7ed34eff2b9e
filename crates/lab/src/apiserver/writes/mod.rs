//! The one way objects are written. Every writer (a client's request, a controller, the
//! bootstrap) names what it writes with a [`Target`] and goes through the same admission: the
//! type checked against the target, the namespace placed, the shape decoded, defaults applied,
//! rules validated, server-owned metadata stamped or carried over, ClusterIPs allocated. Deletes
//! release what the object held and empty a namespace before removing it.

mod admission;
mod deletion;
pub mod mutating_webhooks;
pub mod pod_admission;

use kube::core::DynamicObject;
use serde_json::Value;

use super::resources::Resource;
use super::routing::Target;
use super::state::ApiState;
use super::status::ApiError;
use super::store::{Change, StoredObject};

pub use deletion::{DeleteOptions, PROTECTED_NAMESPACES, delete};

/// Creates `object` (a JSON object, as sent) at `target`; `dry_run` checks everything and stores
/// nothing.
pub fn create(
    state: &ApiState,
    target: &Target,
    object: Value,
    dry_run: bool,
) -> Result<StoredObject, ApiError> {
    let kind = target.kind();
    let admitted = admission::admit_new(state, target, object)?;
    let name = admitted.object.metadata.name.clone().unwrap_or_default();
    let result = state.store.change(
        target.resource,
        target.namespace(),
        &name,
        dry_run,
        |current| match current {
            Some(_) => Err(ApiError::already_exists(kind.group, kind.plural, &name)),
            None => Ok(Change::Put(Box::new(admitted.object))),
        },
    );
    if result.is_err() || dry_run {
        admitted.allocations.release(state);
    }
    Ok(result?.current.expect("a put leaves an object"))
}

/// Creates `object` unless an object of its name exists already; `None` when one did.
pub fn create_if_absent(
    state: &ApiState,
    target: &Target,
    object: Value,
) -> Result<Option<StoredObject>, ApiError> {
    let name = object["metadata"]["name"].as_str().unwrap_or("");
    if state
        .store
        .get(target.resource, target.namespace(), name)
        .is_some()
    {
        return Ok(None);
    }
    match create(state, target, object, false) {
        Ok(stored) => Ok(Some(stored)),
        // Another writer got there between the look and the create.
        Err(error) if error.reason == "AlreadyExists" => Ok(None),
        Err(error) => Err(error),
    }
}

/// Replaces the object at `target` (which names it) with what `make` builds from the stored one:
/// a PUT's body, a patched copy, a controller's update. With `target.subresource` `status`, only
/// the status is taken. An unchanged object is not written again.
pub fn replace(
    state: &ApiState,
    target: &Target,
    dry_run: bool,
    make: impl FnOnce(&StoredObject) -> Result<Value, ApiError>,
) -> Result<StoredObject, ApiError> {
    let kind = target.kind();
    let name = target.name.clone().unwrap_or_default();
    let outcome = state.store.change(
        target.resource,
        target.namespace(),
        &name,
        dry_run,
        |current| {
            let current = current.ok_or_else(|| not_found(kind, &name))?;
            admission::admit_replacement(state, target, current, make(current)?, dry_run)
        },
    )?;
    Ok(outcome.current.expect("a replacement leaves an object"))
}

/// Changes the stored object at `target` with `edit`, which returns whether it changed anything,
/// then admits the result as [`replace`] does: the way controllers and the kubelet update what
/// they own.
pub fn update(
    state: &ApiState,
    target: &Target,
    edit: impl FnOnce(&mut DynamicObject) -> bool,
) -> Result<StoredObject, ApiError> {
    let kind = target.kind();
    let name = target.name.clone().unwrap_or_default();
    let outcome = state.store.change(
        target.resource,
        target.namespace(),
        &name,
        false,
        |current| {
            let current = current.ok_or_else(|| not_found(kind, &name))?;
            let mut object = (*current.object).clone();
            if !edit(&mut object) {
                return Ok(Change::Keep);
            }
            let object = serde_json::to_value(&object).map_err(|error| {
                ApiError::internal(format!("cannot encode the updated object: {error}"))
            })?;
            admission::admit_replacement(state, target, current, object, false)
        },
    )?;
    Ok(outcome.current.expect("an update leaves an object"))
}

pub(super) fn not_found(kind: &Resource, name: &str) -> ApiError {
    ApiError::not_found(kind.group, kind.plural, name)
}
