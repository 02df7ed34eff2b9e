//! Errors as the Kubernetes API reports them: a `Status` object with an HTTP code and a reason
//! that clients (`kubectl`, kube-rs) know how to read.

use http::StatusCode;
use serde_json::{Value, json};

/// One field that failed validation, reported in `Status.details.causes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A request the API server refuses, with everything the `Status` object needs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    /// Boxed: most errors have none, and a small error keeps every `Result` small.
    pub details: Option<Box<Details>>,
}

/// `Status.details`: what the error is about.
#[derive(Debug, Clone, Default)]
pub struct Details {
    /// The resource's plural, as Kubernetes reports it (or the kind, for `Invalid`).
    pub kind: Option<String>,
    pub group: Option<String>,
    pub name: Option<String>,
    pub causes: Vec<Cause>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, group: &str, plural: &str, name: &str) -> Self {
        self.details = Some(Box::new(Details {
            kind: Some(plural.to_owned()),
            group: (!group.is_empty()).then(|| group.to_owned()),
            name: Some(name.to_owned()),
            causes: Vec::new(),
        }));
        self
    }

    /// `<plural>[.<group>] "<name>"`, the way Kubernetes names an object in messages.
    fn qualified(group: &str, plural: &str) -> String {
        if group.is_empty() {
            plural.to_owned()
        } else {
            format!("{plural}.{group}")
        }
    }

    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        let what = Self::qualified(group, plural);
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{what} \"{name}\" not found"),
        )
        .about(group, plural, name)
    }

    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        let what = Self::qualified(group, plural);
        Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{what} \"{name}\" already exists"),
        )
        .about(group, plural, name)
    }

    pub fn conflict(group: &str, plural: &str, name: &str, why: &str) -> Self {
        let what = Self::qualified(group, plural);
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Operation cannot be fulfilled on {what} \"{name}\": {why}"),
        )
        .about(group, plural, name)
    }

    /// 422: the object is well-formed but breaks a rule; each broken rule is a cause.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list = causes
            .iter()
            .map(|cause| format!("{}: {}", cause.field, cause.message))
            .collect::<Vec<_>>()
            .join(", ");
        let what = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{what} \"{name}\" is invalid: {list}"),
        );
        error.details = Some(Box::new(Details {
            kind: Some(kind.to_owned()),
            group: (!group.is_empty()).then(|| group.to_owned()),
            name: Some(name.to_owned()),
            causes,
        }));
        error
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}); send application/json or application/yaml"
            ),
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    pub fn path_not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// The `Status` object sent as the response body (or inside a watch `ERROR` event).
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(about) = &self.details {
            let mut details = json!({});
            if let Some(name) = &about.name {
                details["name"] = json!(name);
            }
            if let Some(group) = &about.group {
                details["group"] = json!(group);
            }
            if let Some(kind) = &about.kind {
                details["kind"] = json!(kind);
            }
            if !about.causes.is_empty() {
                details["causes"] = about
                    .causes
                    .iter()
                    .map(|cause| {
                        json!({"reason": "FieldValueInvalid", "message": cause.message, "field": cause.field})
                    })
                    .collect();
            }
            status["details"] = details;
        }
        status
    }
}

/// The `Status` a successful delete answers with.
pub fn deleted(group: &str, plural: &str, name: &str, uid: &str) -> Value {
    let mut details = json!({"name": name, "kind": plural, "uid": uid});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_reads_like_kubernetes() {
        let status = ApiError::not_found("apps", "deployments", "web").to_status();
        assert_eq!(status["message"], "deployments.apps \"web\" not found");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["code"], 404);
        assert_eq!(status["details"]["group"], "apps");
    }

    #[test]
    fn invalid_lists_every_cause() {
        let error = ApiError::invalid(
            "Service",
            "",
            "x",
            vec![
                Cause::new("metadata.name", "bad"),
                Cause::new("spec.ports", "empty"),
            ],
        );
        assert_eq!(
            error.message,
            "Service \"x\" is invalid: metadata.name: bad, spec.ports: empty"
        );
        assert_eq!(
            error.to_status()["details"]["causes"][1]["field"],
            "spec.ports"
        );
    }
}
