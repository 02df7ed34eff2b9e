//! Deleting objects: preconditions, what a deleted object releases (a Service's cluster IP),
//! graceful deletion of pods that a kubelet runs (marked with `deletionTimestamp`, removed by the
//! kubelet once their containers stopped), and namespaces, which are marked Terminating (so
//! nothing new enters), emptied, then removed. There are no finalizers in the lab, so a
//! namespace's deletion happens in the delete call.

use serde_json::{Value, json};

use super::super::metadata::now_time;
use super::super::node_ports::node_ports_of;
use super::super::resources::{RESOURCES, id_of};
use super::super::routing::Target;
use super::super::service_ips::cluster_ips;
use super::super::state::ApiState;
use super::super::status::ApiError;
use super::super::store::{Change, StoredObject};
use super::not_found;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Namespaces every cluster needs.
pub const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// A delete's `DeleteOptions`: dry run, preconditions and grace period.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub dry_run: bool,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// For pods: how long the kubelet gives them to stop; `Some(0)` removes the object at once
    /// (`kubectl delete --grace-period=0 --force`). `None`: the pod's own
    /// `terminationGracePeriodSeconds`.
    pub grace_period_seconds: Option<i64>,
}

impl DeleteOptions {
    /// Removes the object at once, whatever its kind.
    pub fn now() -> Self {
        Self {
            grace_period_seconds: Some(0),
            ..Self::default()
        }
    }
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
            grace_period_seconds: options["gracePeriodSeconds"].as_i64(),
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
    if let Some(grace) = graceful_pod_deletion(state, target, &stored, options) {
        return mark_terminating(state, target, options, grace).map(Some);
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
        let mut node_ports = state.node_ports();
        for port in node_ports_of(&deleted.object) {
            node_ports.release(port);
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
    // The namespace is gone in this call: its pods go at once, and their kubelet stops them.
    for (resource, name) in state.store.names_in_namespace(namespace) {
        let target = Target::object(resource, namespace, &name);
        if let Err(error) = delete(state, &target, &DeleteOptions::now()) {
            tracing::warn!(%namespace, kind = RESOURCES[resource].kind, %name, %error, "cannot delete an object of a deleted namespace");
        }
    }
    Ok(())
}

/// The grace period to give a pod that is deleted gracefully: one a kubelet runs (it has a node and
/// the cluster has a kubelet), unless the delete asked for none.
fn graceful_pod_deletion(
    state: &ApiState,
    target: &Target,
    stored: &StoredObject,
    options: &DeleteOptions,
) -> Option<i64> {
    let kind = target.kind();
    if kind.kind != "Pod" || !kind.group.is_empty() || state.pod_runtime.get().is_none() {
        return None;
    }
    let spec = &stored.object.data["spec"];
    if spec["nodeName"].as_str().is_none_or(str::is_empty) {
        return None;
    }
    let grace = options
        .grace_period_seconds
        .or_else(|| spec["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(DEFAULT_GRACE_SECONDS)
        .max(0);
    (grace > 0).then_some(grace)
}

const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Marks a pod for deletion in `grace` seconds, as a kube-apiserver does: `deletionTimestamp`
/// and `deletionGracePeriodSeconds` set (a later delete may only shorten them). The kubelet stops
/// the pod's containers and then removes it.
fn mark_terminating(
    state: &ApiState,
    target: &Target,
    options: &DeleteOptions,
    grace: i64,
) -> Result<StoredObject, ApiError> {
    let name = target.name.clone().unwrap_or_default();
    let outcome = state.store.change(
        target.resource,
        target.namespace(),
        &name,
        options.dry_run,
        |current| {
            let Some(current) = current else {
                return Err(not_found(target.kind(), &name));
            };
            options.check(target, current)?;
            let metadata = &current.object.metadata;
            if metadata
                .deletion_grace_period_seconds
                .is_some_and(|already| already <= grace)
            {
                return Ok(Change::Keep);
            }
            let mut terminating = (*current.object).clone();
            let seconds = time::OffsetDateTime::now_utc().unix_timestamp() + grace;
            terminating.metadata.deletion_timestamp = Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(seconds).expect("a near time is valid"),
            ));
            terminating.metadata.deletion_grace_period_seconds = Some(grace);
            Ok(Change::Put(Box::new(terminating)))
        },
    )?;
    Ok(outcome.current.expect("a marked pod is still stored"))
}
