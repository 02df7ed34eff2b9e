//! The `scale` subresource of Deployments and ReplicaSets (`kubectl scale`, autoscalers): the
//! object seen as an `autoscaling/v1` Scale, whose `spec.replicas` is the object's.

use kube::core::DynamicObject;
use serde_json::{Value, json};

use super::patch::{self, PatchType};
use super::routing::Target;
use super::state::ApiState;
use super::status::{ApiError, Cause};
use super::store::StoredObject;
use super::writes;

/// `matchLabels` as a label selector string, as a Scale's `status.selector` carries it.
fn selector(object: &DynamicObject) -> String {
    object.data["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The object as a Scale.
pub fn scale_of(stored: &StoredObject) -> Value {
    let object = &stored.object;
    let metadata = &object.metadata;
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": metadata.name,
            "namespace": metadata.namespace,
            "uid": metadata.uid,
            "resourceVersion": stored.revision.to_string(),
            "creationTimestamp": metadata.creation_timestamp,
        },
        "spec": {"replicas": object.data["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": object.data["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector(object)},
    })
}

fn main_target(target: &Target) -> Target {
    Target {
        subresource: None,
        ..Target::object(
            target.resource,
            target.namespace(),
            target.name.as_deref().unwrap_or(""),
        )
    }
}

pub fn get(state: &ApiState, target: &Target) -> Result<Value, ApiError> {
    let kind = target.kind();
    let name = target.name.as_deref().unwrap_or("");
    let stored = state
        .store
        .get(target.resource, target.namespace(), name)
        .ok_or_else(|| ApiError::not_found(kind.group, kind.plural, name))?;
    Ok(scale_of(&stored))
}

/// Sets the replicas a new Scale says: sent whole (PUT) or as a patch of the current one.
pub fn change(
    state: &ApiState,
    target: &Target,
    update: ScaleUpdate<'_>,
) -> Result<Value, ApiError> {
    let current = get(state, target)?;
    let new = match update {
        ScaleUpdate::Replace(value) => value,
        ScaleUpdate::Patch(patch_type, body) => patch::apply(patch_type, "Scale", &current, body)?,
    };
    let sent_version = new["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !sent_version.is_empty() && sent_version != current["metadata"]["resourceVersion"] {
        let kind = target.kind();
        return Err(ApiError::conflict(
            kind.group,
            kind.plural,
            target.name.as_deref().unwrap_or(""),
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    let replicas = new["spec"]["replicas"]
        .as_i64()
        .filter(|replicas| *replicas >= 0)
        .ok_or_else(|| {
            ApiError::invalid(
                "Scale",
                "autoscaling",
                target.name.as_deref().unwrap_or(""),
                vec![Cause::new(
                    "spec.replicas",
                    "Invalid value: must be greater than or equal to 0",
                )],
            )
        })?;
    let stored = writes::update(state, &main_target(target), |object| {
        if object.data["spec"]["replicas"].as_i64() == Some(replicas) {
            return false;
        }
        object.data["spec"]["replicas"] = json!(replicas);
        true
    })?;
    Ok(scale_of(&stored))
}

pub enum ScaleUpdate<'a> {
    Replace(Value),
    Patch(PatchType, &'a [u8]),
}
