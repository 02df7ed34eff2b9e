//! Request paths to what they name: a discovery document, or objects of one kind (in a namespace,
//! by name, with a subresource).

use serde_json::Value;

use super::discovery;
use super::resources::{RESOURCES, Resource, ResourceId, find};
use super::status::ApiError;

/// A request for objects of one kind.
pub struct Target {
    pub resource: ResourceId,
    pub version: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    /// The object `namespace/name` of a kind, at its preferred version.
    pub fn object(resource: ResourceId, namespace: &str, name: &str) -> Self {
        Self {
            resource,
            version: RESOURCES[resource].preferred_version().to_owned(),
            namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
            name: Some(name.to_owned()),
            subresource: None,
        }
    }

    /// The status of the object `namespace/name`.
    pub fn status(resource: ResourceId, namespace: &str, name: &str) -> Self {
        Self {
            subresource: Some("status".to_owned()),
            ..Self::object(resource, namespace, name)
        }
    }

    /// The objects of a kind in `namespace` (where new ones are created), or cluster-wide.
    pub fn collection(resource: ResourceId, namespace: &str) -> Self {
        Self {
            name: None,
            ..Self::object(resource, namespace, "")
        }
    }

    pub fn kind(&self) -> &'static Resource {
        &RESOURCES[self.resource]
    }

    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }
}

pub enum Route {
    Document(Value),
    Objects(Target),
}

pub fn route(path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|segment| !segment.is_empty())
        .collect();
    let not_found = || ApiError::path_not_found(path);
    let (group, version, rest) = match segments.as_slice() {
        ["version"] => return Ok(Route::Document(discovery::version())),
        ["apis"] => return Ok(Route::Document(discovery::group_list())),
        ["openapi", "v3"] => return Ok(Route::Document(discovery::openapi_root())),
        ["openapi", "v3", rest @ ..] => {
            return discovery::openapi_group_version(&rest.join("/"))
                .map(Route::Document)
                .ok_or_else(not_found);
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group] => {
            return discovery::group(group)
                .map(Route::Document)
                .ok_or_else(not_found);
        }
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    if rest.is_empty() {
        return discovery::resource_list(group, version)
            .map(Route::Document)
            .ok_or_else(not_found);
    }
    let (namespace, rest) = match rest {
        ["namespaces", namespace, plural, rest @ ..]
            if !matches!(*plural, "status" | "finalize") || !rest.is_empty() =>
        {
            (Some((*namespace).to_owned()), {
                let mut all = vec![*plural];
                all.extend_from_slice(rest);
                all
            })
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, subresource] => (*plural, Some(*name), Some(*subresource)),
        _ => return Err(not_found()),
    };
    let resource = find(group, version, plural).ok_or_else(not_found)?;
    let kind = &RESOURCES[resource];
    if namespace.is_some() && !kind.namespaced {
        return Err(not_found());
    }
    // A namespaced object is named inside its namespace.
    if namespace.is_none() && kind.namespaced && name.is_some() {
        return Err(not_found());
    }
    if let Some(subresource) = subresource {
        let known = (subresource == "status" && kind.has_status)
            || (subresource == "token" && kind.kind == "ServiceAccount")
            || (subresource == "scale" && matches!(kind.kind, "Deployment" | "ReplicaSet"))
            || (kind.kind == "Pod"
                && kind.group.is_empty()
                && matches!(subresource, "exec" | "log" | "attach" | "portforward"));
        if !known {
            return Err(not_found());
        }
    }
    Ok(Route::Objects(Target {
        resource,
        version: version.to_owned(),
        namespace,
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target {
        match route(path).unwrap() {
            Route::Objects(target) => target,
            Route::Document(_) => panic!("{path} is a document"),
        }
    }

    #[test]
    fn paths_route_to_kinds_namespaces_names_and_subresources() {
        let pods = target("/api/v1/namespaces/sample/pods/p1/status");
        assert_eq!(pods.kind().kind, "Pod");
        assert_eq!(pods.namespace.as_deref(), Some("sample"));
        assert_eq!(pods.name.as_deref(), Some("p1"));
        assert_eq!(pods.subresource.as_deref(), Some("status"));
        let namespace_status = target("/api/v1/namespaces/sample/status");
        assert_eq!(namespace_status.kind().kind, "Namespace");
        assert_eq!(namespace_status.name.as_deref(), Some("sample"));
        let gateways =
            target("/apis/networking.istio.io/v1alpha3/namespaces/istio-system/gateways");
        assert_eq!(gateways.kind().kind, "Gateway");
        assert_eq!(gateways.version, "v1alpha3");
        assert!(route("/api/v1/namespaces/a/nodes").is_err());
        assert!(route("/api/v1/pods/x/exec").is_err());
        assert!(route("/api/v1/pods/x").is_err());
        let exec = target("/api/v1/namespaces/sample/pods/sleep-1/exec");
        assert_eq!(exec.subresource.as_deref(), Some("exec"));
        assert!(route("/api/v1/namespaces/sample/services/x/exec").is_err());
        assert!(route("/apis/apps/v1/widgets").is_err());
    }
}
