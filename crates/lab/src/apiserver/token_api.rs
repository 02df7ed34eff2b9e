//! The token endpoints: TokenRequest (`serviceaccounts/<name>/token`), which issues this
//! cluster's service-account JWTs, and TokenReview, which checks them for other components (the
//! control plane authenticates proxies with it).

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::auth::authenticate;
use super::body::parse_body;
use super::http::{Body, value_response};
use super::metadata::timestamp;
use super::resources::{RESOURCES, id_of};
use super::routing::Target;
use super::state::ApiState;
use super::status::{self, ApiError};
use super::tokens::{Binding, Claims, ObjectRef};

/// Kubernetes' bounds on `expirationSeconds`. Like a kube-apiserver without
/// `--service-account-max-token-expiration`, the lab does not cap lifetimes further: remote secrets
/// carry long-lived tokens.
const MAX_TOKEN_SECONDS: i64 = 1 << 32;
const MIN_TOKEN_SECONDS: i64 = 600;

pub fn token_request(
    shared: &ApiState,
    target: &Target,
    body: &[u8],
    content_type: &str,
) -> Result<Response<Body>, ApiError> {
    let namespace = target.namespace().to_owned();
    let account_name = target.name.clone().unwrap_or_default();
    let request = parse_body(body, content_type)?;
    if request["kind"]
        .as_str()
        .is_some_and(|kind| kind != "TokenRequest")
    {
        return Err(ApiError::bad_request(format!(
            "the token subresource takes a TokenRequest, not a {}",
            request["kind"]
        )));
    }
    let account = shared
        .store
        .get(id_of("", "ServiceAccount"), &namespace, &account_name)
        .ok_or_else(|| ApiError::not_found("", "serviceaccounts", &account_name))?;
    let spec = &request["spec"];
    let invalid_request = |field: &str, message: String| {
        ApiError::invalid(
            "TokenRequest",
            "authentication.k8s.io",
            &account_name,
            vec![status::Cause::new(field, message)],
        )
    };
    let audiences: Vec<String> = match spec["audiences"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => vec![super::tokens::ISSUER.to_owned()],
    };
    let lifetime = spec["expirationSeconds"].as_i64().unwrap_or(3600);
    if lifetime < MIN_TOKEN_SECONDS {
        return Err(invalid_request(
            "spec.expirationSeconds",
            "Invalid value: may not specify a duration less than 10 minutes".into(),
        ));
    }
    if lifetime > MAX_TOKEN_SECONDS {
        return Err(invalid_request(
            "spec.expirationSeconds",
            "Invalid value: may not specify a duration larger than 2^32 seconds".into(),
        ));
    }
    let mut binding = Binding {
        namespace: namespace.clone(),
        serviceaccount: ObjectRef {
            name: account_name.clone(),
            uid: account.uid().to_owned(),
        },
        pod: None,
        secret: None,
    };
    let bound = &spec["boundObjectRef"];
    if bound.is_object() {
        let bound_kind = bound["kind"].as_str().unwrap_or("");
        let bound_name = bound["name"].as_str().unwrap_or("");
        let (resource, slot) = match bound_kind {
            "Pod" => (id_of("", "Pod"), &mut binding.pod),
            "Secret" => (id_of("", "Secret"), &mut binding.secret),
            other => {
                return Err(invalid_request(
                    "spec.boundObjectRef.kind",
                    format!("Unsupported value: {other:?}: supported values: \"Pod\", \"Secret\""),
                ));
            }
        };
        let object = shared
            .store
            .get(resource, &namespace, bound_name)
            .ok_or_else(|| ApiError::not_found("", RESOURCES[resource].plural, bound_name))?;
        let uid = object.uid().to_owned();
        if let Some(wanted) = bound["uid"].as_str().filter(|wanted| !wanted.is_empty())
            && wanted != uid
        {
            return Err(ApiError::conflict(
                "",
                RESOURCES[resource].plural,
                bound_name,
                &format!(
                    "the UID in the bound object reference ({wanted}) does not match the UID in record ({uid}); the object might have been deleted and then recreated"
                ),
            ));
        }
        *slot = Some(ObjectRef {
            name: bound_name.to_owned(),
            uid,
        });
    }
    let now = time::OffsetDateTime::now_utc();
    let claims = Claims::new(binding, audiences.clone(), now.unix_timestamp(), lifetime);
    let token = shared.tokens.sign(&claims);
    let expires = timestamp(now + time::Duration::seconds(lifetime));
    let mut response_spec = spec.clone();
    if !response_spec.is_object() {
        response_spec = json!({});
    }
    response_spec["audiences"] = json!(audiences);
    response_spec["expirationSeconds"] = json!(lifetime);
    Ok(value_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": account_name, "namespace": namespace, "creationTimestamp": timestamp(now)},
            "spec": response_spec,
            "status": {"token": token, "expirationTimestamp": expires},
        }),
    ))
}

pub fn token_review(
    shared: &ApiState,
    body: &[u8],
    content_type: &str,
) -> Result<Response<Body>, ApiError> {
    let review = parse_body(body, content_type)?;
    if review["kind"]
        .as_str()
        .is_some_and(|kind| kind != "TokenReview")
    {
        return Err(ApiError::bad_request(format!(
            "tokenreviews take a TokenReview, not a {}",
            review["kind"]
        )));
    }
    if !review["spec"].is_object() {
        return Err(ApiError::bad_request(
            "a TokenReview's spec must be an object with a token",
        ));
    }
    let token = review["spec"]["token"].as_str().unwrap_or("");
    if token.is_empty() {
        return Err(ApiError::invalid(
            "TokenReview",
            "authentication.k8s.io",
            "",
            vec![status::Cause::new("spec.token", "Required value")],
        ));
    }
    let audiences: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let status = match authenticate(shared, token, &audiences) {
        Ok((user, matched)) => json!({
            "authenticated": true,
            "user": {"username": user.username, "uid": user.uid, "groups": user.groups, "extra": user.extra},
            "audiences": matched,
        }),
        Err(reason) => json!({"authenticated": false, "error": reason, "user": {}}),
    };
    let mut spec = review["spec"].clone();
    if let Some(spec) = spec.as_object_mut() {
        spec.insert("token".into(), json!(token));
    }
    Ok(value_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        }),
    ))
}
