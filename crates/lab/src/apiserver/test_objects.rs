//! Shorthands for the API server's unit tests: a kind from the table, an object from JSON.

use kube::api::DynamicObject;
use serde_json::Value;

use super::resources::{RESOURCES, Resource, id_of};

/// The kind `kind` of API group `group` (`""` for the core group); panics if it is not served.
pub fn resource(group: &str, kind: &str) -> &'static Resource {
    &RESOURCES[id_of(group, kind)]
}

/// An object from JSON; panics if the JSON is not an object with metadata.
pub fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}
