//! The metadata the server owns: uids, timestamps, generations, generated name suffixes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DynamicObject;
use serde_json::Value;

use super::resources::Resource;

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
    use crate::apiserver::test_objects::{object, resource};
    use serde_json::json;

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
