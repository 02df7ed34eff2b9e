//! Stored objects as a client asked for them: at the API version of the request's URL.

use bytes::Bytes;
use serde_json::{Value, json};

use super::resources::Resource;
use super::store::StoredObject;

/// An object's JSON as served at `version` (only `apiVersion` differs between versions).
pub fn render(stored: &StoredObject, resource: &Resource, version: &str) -> Bytes {
    let api_version = resource.api_version(version);
    if stored.object["apiVersion"].as_str() == Some(api_version.as_str()) {
        return stored.json.clone();
    }
    let mut object = (*stored.object).clone();
    object["apiVersion"] = json!(api_version);
    Bytes::from(serde_json::to_vec(&object).expect("a JSON value always serializes"))
}

pub fn render_value(stored: &StoredObject, resource: &Resource, version: &str) -> Value {
    let mut object = (*stored.object).clone();
    object["apiVersion"] = json!(resource.api_version(version));
    object
}
