//! Deleting objects: preconditions, what a deleted object releases (a Service's cluster IP), and
//! namespaces, which are marked Terminating (so nothing new enters), emptied, then removed. There
//! are no finalizers in the lab, so all of it happens in the delete call.

use serde_json::{Value, json};

use super::super::metadata::now_time;
use super::super::resources::{RESOURCES, id_of};
use super::super::routing::Target;
use super::super::service_ips::cluster_ips;
use super::super::state::ApiState;
use super::super::status::ApiError;
use super::super::store::{Change, StoredObject};

/// Namespaces every cluster needs.
pub const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// A delete's `DeleteOptions`: dry run and preconditions.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub dry_run: bool,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl DeleteOptions {
    /// Options from a request's body (a `DeleteOptions` object, or nothing) and its `dryRun`
    /// query parameter.
    pub fn from_request(body: &[u8], dry_run: bool) -> Result<Self, ApiError> {
        let options: Value = if body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(body).map_err(|error| {
                ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {error}"))
            })?
        };
        let text = |value: &Value| value.as_str().map(str::to_owned);
        Ok(Self {
            dry_run: dry_run
                || options["dryRun"]
                    .as_array()
                    .is_some_and(|modes| modes.iter().any(|mode| mode == "All")),
            uid: text(&options["preconditions"]["uid"]),
            resource_version: text(&options["preconditions"]["resourceVersion"]),
        })
    }

    fn check(&self, target: &Target, current: &StoredObject) -> Result<(), ApiError> {
        let kind = target.kind();
        if let Some(uid) = &self.uid
            && current.uid() != uid
        {
            return Err(ApiError::conflict(
                kind.group,
                kind.plural,
                current.name(),
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    current.uid()
                ),
            ));
        }
        if let Some(version) = &self.resource_version
            && current.revision.to_string() != *version
        {
            return Err(ApiError::conflict(
                kind.group,
                kind.plural,
                current.name(),
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        Ok(())
    }
}

/// Deletes the object `target` names; `None` when there is none.
pub fn delete(
    state: &ApiState,
    target: &Target,
    options: &DeleteOptions,
) -> Result<Option<StoredObject>, ApiError> {
    let kind = target.kind();
    let name = target.name.clone().unwrap_or_default();
    let is_namespace = kind.kind == "Namespace" && kind.group.is_empty();
    if is_namespace && PROTECTED_NAMESPACES.contains(&name.as_str()) {
        return Err(ApiError::forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    let Some(stored) = state.store.get(target.resource, target.namespace(), &name) else {
        return Ok(None);
    };
    // Preconditions first: a refused namespace delete must not have emptied the namespace.
    options.check(target, &stored)?;
    if is_namespace && !options.dry_run {
        terminate_namespace(state, &name)?;
    }
    let outcome = state.store.change(
        target.resource,
        target.namespace(),
        &name,
        options.dry_run,
        |current| match current {
            None => Ok(Change::Keep),
            Some(current) => {
                options.check(target, current)?;
                Ok(Change::Delete)
            }
        },
    )?;
    let deleted = outcome.previous;
    if !options.dry_run
        && let Some(deleted) = &deleted
        && kind.kind == "Service"
        && kind.group.is_empty()
    {
        let mut service_ips = state.service_ips();
        for address in cluster_ips(&deleted.object) {
            service_ips.release(address);
        }
    }
    Ok(deleted)
}

/// Marks a namespace Terminating (no new objects may enter it, see the store), then deletes
/// everything in it.
fn terminate_namespace(state: &ApiState, namespace: &str) -> Result<(), ApiError> {
    // The server owns `deletionTimestamp` and the phase: written here, not through admission,
    // which keeps both as they were.
    let outcome = state
        .store
        .change(id_of("", "Namespace"), "", namespace, false, |current| {
            let Some(current) = current else {
                return Ok(Change::Keep);
            };
            let mut terminating = (*current.object).clone();
            terminating.data["status"]["phase"] = json!("Terminating");
            terminating.metadata.deletion_timestamp = Some(now_time());
            Ok(Change::Put(Box::new(terminating)))
        })?;
    if outcome.current.is_none() {
        return Ok(());
    }
    for (resource, name) in state.store.names_in_namespace(namespace) {
        let target = Target::object(resource, namespace, &name);
        if let Err(error) = delete(state, &target, &DeleteOptions::default()) {
            tracing::warn!(%namespace, kind = RESOURCES[resource].kind, %name, %error, "cannot delete an object of a deleted namespace");
        }
    }
    Ok(())
}
