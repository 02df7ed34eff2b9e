//! `/openapi/v2`, for kubectl before 1.29: those versions read it (as gnostic's protobuf) to learn
//! whether the server validates fields itself before `kubectl apply`. The document lists each kind's
//! object path with its PATCH operation, that operation's `x-kubernetes-group-version-kind`, and
//! the `fieldValidation` query parameter; it carries no schemas, as kubectl then validates nothing on
//! its side and leaves it to the server.
//!
//! The messages below are the subset of gnostic's `openapi.v2` protobuf schema the document uses,
//! with its field numbers.

use std::sync::LazyLock;

use prost::Message;

use super::discovery::KUBERNETES_VERSION;
use super::resources::RESOURCES;

/// The media type kube-apiserver answers with (requests may also say `...spec.v2@v1.0+protobuf`).
pub const CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

#[derive(Clone, PartialEq, Message)]
struct Document {
    #[prost(string, tag = "1")]
    swagger: String,
    #[prost(message, optional, tag = "2")]
    info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    paths: Option<Paths>,
}

#[derive(Clone, PartialEq, Message)]
struct Info {
    #[prost(string, tag = "1")]
    title: String,
    #[prost(string, tag = "2")]
    version: String,
}

#[derive(Clone, PartialEq, Message)]
struct Paths {
    #[prost(message, repeated, tag = "2")]
    path: Vec<NamedPathItem>,
}

#[derive(Clone, PartialEq, Message)]
struct NamedPathItem {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<PathItem>,
}

#[derive(Clone, PartialEq, Message)]
struct PathItem {
    #[prost(message, optional, tag = "2")]
    get: Option<Operation>,
    #[prost(message, optional, tag = "3")]
    put: Option<Operation>,
    #[prost(message, optional, tag = "8")]
    patch: Option<Operation>,
}

#[derive(Clone, PartialEq, Message)]
struct Operation {
    #[prost(string, tag = "5")]
    operation_id: String,
    #[prost(message, repeated, tag = "8")]
    parameters: Vec<ParametersItem>,
    #[prost(message, repeated, tag = "13")]
    vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
struct ParametersItem {
    #[prost(message, optional, tag = "1")]
    parameter: Option<Parameter>,
}

#[derive(Clone, PartialEq, Message)]
struct Parameter {
    #[prost(message, optional, tag = "2")]
    non_body_parameter: Option<NonBodyParameter>,
}

#[derive(Clone, PartialEq, Message)]
struct NonBodyParameter {
    #[prost(message, optional, tag = "3")]
    query_parameter_sub_schema: Option<QueryParameterSubSchema>,
}

#[derive(Clone, PartialEq, Message)]
struct QueryParameterSubSchema {
    #[prost(string, tag = "2")]
    r#in: String,
    #[prost(string, tag = "4")]
    name: String,
    #[prost(string, tag = "6")]
    r#type: String,
    #[prost(bool, tag = "20")]
    unique_items: bool,
}

#[derive(Clone, PartialEq, Message)]
struct NamedAny {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
struct AnyValue {
    #[prost(string, tag = "2")]
    yaml: String,
}

fn query_parameter(name: &str) -> ParametersItem {
    ParametersItem {
        parameter: Some(Parameter {
            non_body_parameter: Some(NonBodyParameter {
                query_parameter_sub_schema: Some(QueryParameterSubSchema {
                    r#in: "query".into(),
                    name: name.into(),
                    r#type: "string".into(),
                    unique_items: true,
                }),
            }),
        }),
    }
}

fn operation(id: String, group: &str, version: &str, kind: &str, parameters: bool) -> Operation {
    let gvk = serde_json::json!({"group": group, "version": version, "kind": kind});
    Operation {
        operation_id: id,
        parameters: if parameters {
            vec![
                query_parameter("fieldValidation"),
                query_parameter("dryRun"),
            ]
        } else {
            Vec::new()
        },
        vendor_extension: vec![NamedAny {
            name: "x-kubernetes-group-version-kind".into(),
            value: Some(AnyValue {
                yaml: serde_saphyr::to_string(&gvk).expect("a map of strings serializes"),
            }),
        }],
    }
}

fn build() -> Vec<u8> {
    let mut paths = Vec::new();
    for resource in RESOURCES {
        for version in resource.versions {
            let prefix = if resource.group.is_empty() {
                format!("/api/{version}")
            } else {
                format!("/apis/{}/{version}", resource.group)
            };
            let name = if resource.namespaced {
                format!(
                    "{prefix}/namespaces/{{namespace}}/{}/{{name}}",
                    resource.plural
                )
            } else {
                format!("{prefix}/{}/{{name}}", resource.plural)
            };
            let id = |verb: &str| format!("{verb}{}{}", resource.kind, version);
            paths.push(NamedPathItem {
                name,
                value: Some(PathItem {
                    get: Some(operation(
                        id("read"),
                        resource.group,
                        version,
                        resource.kind,
                        false,
                    )),
                    put: Some(operation(
                        id("replace"),
                        resource.group,
                        version,
                        resource.kind,
                        true,
                    )),
                    patch: Some(operation(
                        id("patch"),
                        resource.group,
                        version,
                        resource.kind,
                        true,
                    )),
                }),
            });
        }
    }
    Document {
        swagger: "2.0".into(),
        info: Some(Info {
            title: "Kubernetes".into(),
            version: format!("v{}.{}.0", KUBERNETES_VERSION.0, KUBERNETES_VERSION.1),
        }),
        paths: Some(Paths { path: paths }),
    }
    .encode_to_vec()
}

/// The encoded document, built once.
pub fn document() -> &'static [u8] {
    static DOCUMENT: LazyLock<Vec<u8>> = LazyLock::new(build);
    &DOCUMENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_patch_operation_with_field_validation_and_its_gvk() {
        let document = Document::decode(document()).unwrap();
        let paths = document.paths.unwrap().path;
        let services = paths
            .iter()
            .find(|path| path.name == "/api/v1/namespaces/{namespace}/services/{name}")
            .unwrap();
        let patch = services.value.as_ref().unwrap().patch.as_ref().unwrap();
        let names: Vec<&str> = patch
            .parameters
            .iter()
            .map(|item| {
                item.parameter
                    .as_ref()
                    .unwrap()
                    .non_body_parameter
                    .as_ref()
                    .unwrap()
                    .query_parameter_sub_schema
                    .as_ref()
                    .unwrap()
                    .name
                    .as_str()
            })
            .collect();
        assert_eq!(names, ["fieldValidation", "dryRun"]);
        let gvk: serde_json::Value =
            serde_saphyr::from_str(&patch.vendor_extension[0].value.as_ref().unwrap().yaml)
                .unwrap();
        assert_eq!(
            gvk,
            serde_json::json!({"group": "", "version": "v1", "kind": "Service"})
        );
        assert!(paths.iter().any(|path| path.name
            == "/apis/networking.istio.io/v1alpha3/namespaces/{namespace}/gateways/{name}"));
    }
}
