//! Kubernetes' protobuf request bodies (`application/vnd.kubernetes.protobuf`), which recent
//! `kubectl create namespace|secret|configmap|serviceaccount|token` send. They are turned into the
//! same JSON objects a JSON client would have sent; responses are always JSON (kubectl accepts it).

use std::collections::BTreeMap;

use base64::Engine;
use k8s_pb::api::authentication::v1 as authentication;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{Map, Value, json};

use super::status::ApiError;

/// The four bytes every Kubernetes protobuf body starts with.
const MAGIC: &[u8] = b"k8s\0";

fn strings(map: &BTreeMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(key, value)| (key.clone(), json!(value)))
            .collect(),
    )
}

fn bytes(map: &BTreeMap<String, Vec<u8>>) -> Value {
    Value::Object(
        map.iter()
            .map(|(key, value)| {
                (
                    key.clone(),
                    json!(base64::engine::general_purpose::STANDARD.encode(value)),
                )
            })
            .collect(),
    )
}

fn insert(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), value);
    }
}

fn metadata(meta: Option<&meta::ObjectMeta>) -> Value {
    let mut out = Map::new();
    let Some(meta) = meta else {
        return Value::Object(out);
    };
    insert(&mut out, "name", meta.name.clone().map(Value::String));
    insert(
        &mut out,
        "generateName",
        meta.generate_name.clone().map(Value::String),
    );
    insert(
        &mut out,
        "namespace",
        meta.namespace.clone().map(Value::String),
    );
    insert(
        &mut out,
        "resourceVersion",
        meta.resource_version
            .clone()
            .filter(|rv| !rv.is_empty())
            .map(Value::String),
    );
    if !meta.labels.is_empty() {
        out.insert(
            "labels".into(),
            strings(&meta.labels.clone().into_iter().collect()),
        );
    }
    if !meta.annotations.is_empty() {
        out.insert(
            "annotations".into(),
            strings(&meta.annotations.clone().into_iter().collect()),
        );
    }
    if !meta.finalizers.is_empty() {
        out.insert("finalizers".into(), json!(meta.finalizers));
    }
    if !meta.owner_references.is_empty() {
        let owners: Vec<Value> = meta
            .owner_references
            .iter()
            .map(|owner| {
                json!({"apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name, "uid": owner.uid,
                       "controller": owner.controller, "blockOwnerDeletion": owner.block_owner_deletion})
            })
            .collect();
        out.insert("ownerReferences".into(), json!(owners));
    }
    Value::Object(out)
}

fn decode_as<T: Message + Default>(raw: &[u8], kind: &str) -> Result<T, ApiError> {
    T::decode(raw).map_err(|error| {
        ApiError::bad_request(format!("the protobuf body is not a valid {kind}: {error}"))
    })
}

/// Decodes a protobuf body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| {
        ApiError::bad_request(
            "the protobuf body does not start with the Kubernetes magic bytes (k8s\\0)",
        )
    })?;
    let unknown = Unknown::decode(envelope).map_err(|error| {
        ApiError::bad_request(format!("the protobuf envelope is not valid: {error}"))
    })?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let namespace: core::Namespace = decode_as(&raw, &kind)?;
            let finalizers = namespace
                .spec
                .map(|spec| spec.finalizers)
                .unwrap_or_default();
            json!({"metadata": metadata(namespace.metadata.as_ref()), "spec": {"finalizers": finalizers}})
        }
        ("v1", "Secret") => {
            let secret: core::Secret = decode_as(&raw, &kind)?;
            let mut object = json!({"metadata": metadata(secret.metadata.as_ref())});
            if !secret.data.is_empty() {
                object["data"] = bytes(&secret.data.into_iter().collect());
            }
            if !secret.string_data.is_empty() {
                object["stringData"] = strings(&secret.string_data.into_iter().collect());
            }
            if let Some(secret_type) = secret.r#type.filter(|secret_type| !secret_type.is_empty()) {
                object["type"] = json!(secret_type);
            }
            if let Some(immutable) = secret.immutable {
                object["immutable"] = json!(immutable);
            }
            object
        }
        ("v1", "ConfigMap") => {
            let config_map: core::ConfigMap = decode_as(&raw, &kind)?;
            let mut object = json!({"metadata": metadata(config_map.metadata.as_ref())});
            if !config_map.data.is_empty() {
                object["data"] = strings(&config_map.data.into_iter().collect());
            }
            if !config_map.binary_data.is_empty() {
                object["binaryData"] = bytes(&config_map.binary_data.into_iter().collect());
            }
            if let Some(immutable) = config_map.immutable {
                object["immutable"] = json!(immutable);
            }
            object
        }
        ("v1", "ServiceAccount") => {
            let account: core::ServiceAccount = decode_as(&raw, &kind)?;
            let mut object = json!({"metadata": metadata(account.metadata.as_ref())});
            if !account.image_pull_secrets.is_empty() {
                object["imagePullSecrets"] = account
                    .image_pull_secrets
                    .iter()
                    .map(|reference| json!({"name": reference.name}))
                    .collect();
            }
            if let Some(automount) = account.automount_service_account_token {
                object["automountServiceAccountToken"] = json!(automount);
            }
            object
        }
        ("authentication.k8s.io/v1", "TokenRequest") => {
            let request: authentication::TokenRequest = decode_as(&raw, &kind)?;
            let spec = request.spec.unwrap_or_default();
            let mut spec_json = json!({"audiences": spec.audiences});
            if let Some(seconds) = spec.expiration_seconds {
                spec_json["expirationSeconds"] = json!(seconds);
            }
            if let Some(bound) = spec.bound_object_ref {
                spec_json["boundObjectRef"] = json!({"kind": bound.kind, "apiVersion": bound.api_version, "name": bound.name, "uid": bound.u_id});
            }
            json!({"metadata": metadata(request.metadata.as_ref()), "spec": spec_json})
        }
        _ => {
            return Err(ApiError::unsupported_media_type(&format!(
                "application/vnd.kubernetes.protobuf for {api_version} {kind}: the lab API server reads protobuf only for \
                 Namespace, Secret, ConfigMap, ServiceAccount and TokenRequest; send JSON (kubectl apply -f does)"
            )));
        }
    };
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }

    #[test]
    fn a_secret_from_kubectl_create_secret_generic_becomes_json() {
        let secret = core::Secret {
            metadata: Some(meta::ObjectMeta {
                name: Some("cacerts".into()),
                namespace: Some("istio-system".into()),
                ..Default::default()
            }),
            data: [("ca-cert.pem".to_owned(), b"PEM".to_vec())]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let object = decode(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(object["metadata"]["name"], "cacerts");
        assert_eq!(object["data"]["ca-cert.pem"], "UEVN");
        assert_eq!(object["kind"], "Secret");
    }

    #[test]
    fn bodies_that_are_not_kubernetes_protobuf_are_refused() {
        assert_eq!(decode(b"{}").unwrap_err().code, 400);
        assert_eq!(decode(b"k8s\0\xff\xff").unwrap_err().code, 400);
        let error = decode(&envelope("apps/v1", "Deployment", Vec::new())).unwrap_err();
        assert_eq!(error.code, 415);
    }
}
