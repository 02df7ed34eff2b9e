//! Who a request is: the admin token from the kubeconfig, or a service-account token this
//! cluster signed whose service account (and bound pod or secret) still exist.

use http::{Request, header};
use serde_json::json;

use super::resources::id_of;
use super::state::ApiState;
use super::tokens;

/// Who a request or a TokenReview authenticated as.
#[derive(Debug, Clone)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Checks a bearer token: the admin token, or a service-account token this cluster signed whose
/// service account (and bound pod or secret) still exist. `audiences` empty means the API
/// server's own audience.
pub fn authenticate(
    state: &ApiState,
    token: &str,
    audiences: &[String],
) -> Result<(UserInfo, Vec<String>), String> {
    let audiences: Vec<String> = if audiences.is_empty() {
        vec![tokens::ISSUER.to_owned()]
    } else {
        audiences.to_vec()
    };
    if constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) {
        if !audiences.iter().any(|audience| audience == tokens::ISSUER) {
            return Err("the admin token is only valid for the API server's own audience".into());
        }
        let user = UserInfo {
            username: "kubernetes-admin".into(),
            uid: String::new(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            extra: serde_json::Map::new(),
        };
        return Ok((user, vec![tokens::ISSUER.to_owned()]));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = state
        .tokens
        .verify(token, &audiences, now)
        .map_err(|rejection| rejection.to_string())?;
    let binding = &claims.kubernetes;
    let exists = |kind: &str, name: &str, uid: &str| -> Result<(), String> {
        let found = state.store.get(id_of("", kind), &binding.namespace, name);
        match found {
            Some(object) if object.uid() == uid => Ok(()),
            Some(_) => Err(format!(
                "the {kind} {}/{name} the token is bound to was deleted and recreated",
                binding.namespace
            )),
            None => Err(format!(
                "the {kind} {}/{name} the token is bound to no longer exists",
                binding.namespace
            )),
        }
    };
    exists(
        "ServiceAccount",
        &binding.serviceaccount.name,
        &binding.serviceaccount.uid,
    )?;
    let mut extra = serde_json::Map::new();
    if let Some(pod) = &binding.pod {
        exists("Pod", &pod.name, &pod.uid)?;
        extra.insert(
            "authentication.kubernetes.io/pod-name".into(),
            json!([pod.name]),
        );
        extra.insert(
            "authentication.kubernetes.io/pod-uid".into(),
            json!([pod.uid]),
        );
    }
    if let Some(secret) = &binding.secret {
        exists("Secret", &secret.name, &secret.uid)?;
    }
    extra.insert(
        "authentication.kubernetes.io/credential-id".into(),
        json!([format!("JTI={}", claims.jti)]),
    );
    let matched = claims
        .aud
        .iter()
        .filter(|audience| audiences.contains(audience))
        .cloned()
        .collect();
    let user = UserInfo {
        username: claims.sub.clone(),
        uid: binding.serviceaccount.uid.clone(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", binding.namespace),
            "system:authenticated".into(),
        ],
        extra,
    };
    Ok((user, matched))
}

fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The bearer token of a request's `Authorization` header.
pub fn bearer_token<B>(request: &Request<B>) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
