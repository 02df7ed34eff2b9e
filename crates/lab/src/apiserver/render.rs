//! Stored objects as a client asked for them: at the API version of the request's URL.

use bytes::Bytes;
use kube::core::{DynamicObject, TypeMeta};

use super::resources::{RESOURCES, Resource, ResourceId};
use super::store::StoredObject;

/// An object's JSON as served at `version` (only `apiVersion` differs between versions).
pub fn render(stored: &StoredObject, resource: &Resource, version: &str) -> Bytes {
    let api_version = resource.api_version(version);
    if stored
        .object
        .types
        .as_ref()
        .is_some_and(|types| types.api_version == api_version)
    {
        return stored.json.clone();
    }
    Bytes::from(
        serde_json::to_vec(&render_object(stored, resource, version))
            .expect("an object always serializes"),
    )
}

/// The object with the `apiVersion` and `kind` of `version`.
pub fn render_object(stored: &StoredObject, resource: &Resource, version: &str) -> DynamicObject {
    let mut object = (*stored.object).clone();
    object.types = Some(type_meta(resource, version));
    object
}

/// `apiVersion` and `kind` of a kind at one of its versions.
pub fn type_meta(resource: &Resource, version: &str) -> TypeMeta {
    TypeMeta {
        api_version: resource.api_version(version),
        kind: resource.kind.to_owned(),
    }
}

/// `apiVersion` and `kind` of a kind at its preferred version.
pub fn preferred_type_meta(resource: ResourceId) -> TypeMeta {
    let kind = &RESOURCES[resource];
    type_meta(kind, kind.preferred_version())
}
