//! The Sail operator's way in (seed `003_*`): a `sailoperator.io` `Istio` resource is read as the
//! install input it stands for (its Helm values), the objects rendered from it are owned by it
//! (deleting it removes them, through the garbage collector), and its status carries the
//! conditions `kubectl wait --for condition=Ready istio/default` reads. Also the objects that
//! install the operator itself (`causeway install-operator`). The reconcile loop, which does the
//! I/O, is `causeway operator`; everything it decides is here.

use crate::input::OperatorInput;
use crate::render::{Component, OWNER_LABEL, Ownership, Rendered};
use crate::settings::{Settings, SettingsError, from_input};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use serde_json::{Map, Value, json};

pub const GROUP: &str = "sailoperator.io";
/// Where `causeway install-operator` puts the operator, as Sail's chart does.
pub const OPERATOR_NAMESPACE: &str = "sail-operator";
pub const OPERATOR_NAME: &str = "sail-operator";

/// `sailoperator.io/v1` `Istio` (cluster-scoped).
pub fn istio_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, "v1", "Istio"), "istios")
}

/// `sailoperator.io/v1` `IstioCNI` (cluster-scoped).
pub fn istio_cni_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, "v1", "IstioCNI"), "istiocnis")
}

#[derive(Debug, thiserror::Error)]
pub enum SailError {
    #[error("Istio {name}: spec.{field} must be {expected}; see the sailoperator.io/v1 Istio API")]
    WrongField {
        name: String,
        field: &'static str,
        expected: &'static str,
    },
    #[error("Istio {name}: {source}")]
    Settings {
        name: String,
        #[source]
        source: SettingsError,
    },
}

fn name_of(object: &DynamicObject) -> String {
    object.metadata.name.clone().unwrap_or_default()
}

/// The IstioOperator input an `Istio` stands for: `spec.values` are Helm values, which are an
/// IstioOperator's `spec.values` apart from `meshConfig`, which is the operator's own key. With
/// an `IstioCNI` in the cluster (`cni_installed`), pods are captured by the CNI plugin unless the
/// values say otherwise, as Sail's OpenShift profile sets `pilot.cni.enabled`.
pub fn operator_input(
    istio: &DynamicObject,
    cni_installed: bool,
) -> Result<OperatorInput, SailError> {
    let name = name_of(istio);
    let wrong = |field, expected| SailError::WrongField {
        name: name.clone(),
        field,
        expected,
    };
    let spec = istio.data.get("spec").cloned().unwrap_or(Value::Null);
    let spec = match spec {
        Value::Object(spec) => spec,
        Value::Null => Map::new(),
        _ => return Err(wrong("", "a map")),
    };
    let text = |field: &'static str| match spec.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(wrong(field, "a string")),
    };
    // Any version is served by this build's images; it is reported back in the status.
    text("version")?;
    let mut operator = Map::new();
    operator.insert(
        "namespace".into(),
        Value::String(text("namespace")?.unwrap_or_else(|| "istio-system".into())),
    );
    if let Some(profile) = text("profile")? {
        operator.insert("profile".into(), Value::String(profile));
    }
    match spec.get("values") {
        None | Some(Value::Null) => {}
        Some(Value::Object(values)) => {
            let mut values = values.clone();
            if let Some(mesh_config) = values.remove("meshConfig") {
                operator.insert("meshConfig".into(), mesh_config);
            }
            operator.insert("values".into(), Value::Object(values));
        }
        Some(_) => return Err(wrong("values", "a map of Helm values")),
    }
    if cni_installed {
        let values = operator
            .entry("values")
            .or_insert_with(|| Value::Object(Map::new()));
        if values.pointer("/pilot/cni/enabled").is_none()
            && let Value::Object(values) = values
        {
            let pilot = values
                .entry("pilot")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(pilot) = pilot {
                pilot.insert("cni".into(), json!({"enabled": true}));
            }
        }
    }
    Ok(OperatorInput {
        name: Some(name),
        spec: operator,
    })
}

/// The settings of an `Istio`, with its unknown and unused values listed in `ignored`.
pub fn settings(istio: &DynamicObject, cni_installed: bool) -> Result<Settings, SailError> {
    let input = operator_input(istio, cni_installed)?;
    from_input(input).map_err(|source| SailError::Settings {
        name: name_of(istio),
        source,
    })
}

/// `objects` as the operator applies them: each one it owns names `owner` (an `Istio` or an
/// `IstioCNI`) as its controller, so deleting the owner removes them. A namespace, which the
/// guides create before (for `cacerts`), is left without an owner.
pub fn owned_by(objects: Vec<Rendered>, owner: &DynamicObject) -> Vec<Rendered> {
    let kind = owner
        .types
        .as_ref()
        .map_or("Istio", |types| types.kind.as_str());
    let reference = OwnerReference {
        api_version: format!("{GROUP}/v1"),
        kind: kind.into(),
        name: name_of(owner),
        uid: owner.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    objects
        .into_iter()
        .map(|mut rendered| {
            if rendered.ownership == Ownership::Owned {
                rendered.object.metadata.owner_references = Some(vec![reference.clone()]);
            }
            rendered
        })
        .collect()
}

/// What one reconcile found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The objects could not be rendered or applied, for this reason.
    Failed(String),
    /// Applied; these Deployments are not available yet (`Deployment istio-system/istiod:
    /// 0 of 1 available`).
    Waiting(Vec<String>),
    /// Applied, and every Deployment is available.
    Ready,
}

/// One `status.conditions` entry, as Kubernetes' `metav1.Condition`.
fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: &str,
    previous: &Value,
    now: &str,
) -> Value {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the status does.
    let since = previous["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|condition| condition["type"] == kind && condition["status"] == status)
        .and_then(|condition| condition["lastTransitionTime"].as_str())
        .unwrap_or(now);
    json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    })
}

/// The status of an `Istio` after a reconcile that `observed` this, as Sail writes it:
/// `Reconciled` (the objects are applied), `Ready` (its Deployments are available) and `state`.
/// `previous` is the status before, whose transition times are kept where nothing changed.
pub fn istio_status(
    observed: &Observed,
    generation: Option<i64>,
    version: Option<&str>,
    previous: &Value,
    now: &str,
) -> Value {
    let (reconciled, ready, state) = match observed {
        Observed::Failed(why) => (
            condition("Reconciled", false, "ReconcileError", why, previous, now),
            condition(
                "Ready",
                false,
                "ReconcileError",
                "not reconciled",
                previous,
                now,
            ),
            "ReconcileError",
        ),
        Observed::Waiting(why) => (
            condition("Reconciled", true, "Reconciled", "", previous, now),
            condition(
                "Ready",
                false,
                "IstiodNotReady",
                &why.join("; "),
                previous,
                now,
            ),
            "NotReady",
        ),
        Observed::Ready => (
            condition("Reconciled", true, "Reconciled", "", previous, now),
            condition("Ready", true, "Healthy", "", previous, now),
            "Healthy",
        ),
    };
    let mut status = json!({
        "conditions": [reconciled, ready],
        "state": state,
        "activeRevisionName": "default",
    });
    if let Some(generation) = generation {
        status["observedGeneration"] = json!(generation);
    }
    if let Some(version) = version {
        status["version"] = json!(version);
    }
    status
}

/// The objects of an `IstioCNI`: the plugin's configuration in `spec.namespace` (default
/// `istio-cni`, created when missing), which the lab's nodes read as the plugin installed.
pub fn istio_cni_objects(cni: &DynamicObject) -> Result<Vec<Rendered>, SailError> {
    let name = name_of(cni);
    let namespace = match cni.data.pointer("/spec/namespace") {
        None | Some(Value::Null) => "istio-cni".to_owned(),
        Some(Value::String(namespace)) => namespace.clone(),
        Some(_) => {
            return Err(SailError::WrongField {
                name,
                field: "namespace",
                expected: "a string",
            });
        }
    };
    let mut namespace_object =
        Rendered::typed::<Namespace>(Component::Cni, json!({"metadata": {"name": namespace}}));
    namespace_object.ownership = Ownership::CreateIfMissing;
    let labels = match json!({
        crate::render::COMPONENT_LABEL: Component::Cni.label(),
        OWNER_LABEL: name,
    }) {
        Value::Object(labels) => labels,
        _ => Map::new(),
    };
    let config = crate::render::cni::config_map(&namespace, labels);
    Ok(owned_by(vec![namespace_object, config], cni))
}

/// The status of an `IstioCNI` after a reconcile that `observed` this.
pub fn istio_cni_status(
    observed: &Observed,
    generation: Option<i64>,
    previous: &Value,
    now: &str,
) -> Value {
    let (ok, reason, message, state) = match observed {
        Observed::Failed(why) => (false, "ReconcileError", why.as_str(), "ReconcileError"),
        _ => (
            true,
            "Healthy",
            "the plugin's configuration is installed; pods of meshed namespaces are captured when their network is made",
            "Healthy",
        ),
    };
    let mut status = json!({
        "conditions": [
            condition("Reconciled", ok, if ok { "Reconciled" } else { reason }, message, previous, now),
            condition("Ready", ok, reason, message, previous, now),
        ],
        "state": state,
    });
    if let Some(generation) = generation {
        status["observedGeneration"] = json!(generation);
    }
    status
}

fn operator_labels() -> Value {
    json!({
        "app.kubernetes.io/name": OPERATOR_NAME,
        "app.kubernetes.io/part-of": "causeway",
        crate::render::COMPONENT_LABEL: Component::Operator.label(),
        OWNER_LABEL: OPERATOR_NAME,
    })
}

/// A CRD for one Sail kind: any spec is stored, the status is a subresource, and `kubectl get`
/// shows the state, as Sail's CRDs do.
fn custom_resource_definition(kind: &str, plural: &str, singular: &str) -> Rendered {
    let version = |name: &str, storage: bool| {
        json!({
            "name": name,
            "served": true,
            "storage": storage,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
            }},
            "additionalPrinterColumns": [
                {"name": "Status", "type": "string", "jsonPath": ".status.state"},
                {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
        })
    };
    Rendered::typed::<CustomResourceDefinition>(
        Component::Operator,
        json!({
            "metadata": {"name": format!("{plural}.{GROUP}"), "labels": operator_labels()},
            "spec": {
                "group": GROUP,
                "scope": "Cluster",
                "names": {"kind": kind, "plural": plural, "singular": singular, "listKind": format!("{kind}List")},
                "versions": [version("v1", true), version("v1alpha1", false)],
            },
        }),
    )
}

/// Everything `causeway install-operator` applies: the CRDs, the operator's namespace, account
/// and rights (it installs a control plane, so it may do what install does), and its
/// Deployment running `causeway operator` from `image`.
pub fn operator_objects(image: &str) -> Vec<Rendered> {
    let labels = operator_labels();
    let mut namespace = Rendered::typed::<Namespace>(
        Component::Operator,
        json!({"metadata": {"name": OPERATOR_NAMESPACE}}),
    );
    namespace.ownership = Ownership::CreateIfMissing;
    vec![
        custom_resource_definition("Istio", "istios", "istio"),
        custom_resource_definition("IstioCNI", "istiocnis", "istiocni"),
        namespace,
        Rendered::typed::<ServiceAccount>(
            Component::Operator,
            json!({"metadata": {"name": OPERATOR_NAME, "namespace": OPERATOR_NAMESPACE, "labels": labels}}),
        ),
        Rendered::typed::<ClusterRole>(
            Component::Operator,
            json!({
                "metadata": {"name": OPERATOR_NAME, "labels": labels},
                "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
            }),
        ),
        Rendered::typed::<ClusterRoleBinding>(
            Component::Operator,
            json!({
                "metadata": {"name": OPERATOR_NAME, "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR_NAME},
                "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_NAME, "namespace": OPERATOR_NAMESPACE}],
            }),
        ),
        Rendered::typed::<Deployment>(
            Component::Operator,
            json!({
                "metadata": {"name": OPERATOR_NAME, "namespace": OPERATOR_NAMESPACE, "labels": labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app.kubernetes.io/name": OPERATOR_NAME}},
                    "template": {
                        "metadata": {
                            "labels": {"app.kubernetes.io/name": OPERATOR_NAME},
                            "annotations": {"sidecar.istio.io/inject": "false"},
                        },
                        "spec": {
                            "serviceAccountName": OPERATOR_NAME,
                            "containers": [{
                                "name": OPERATOR_NAME,
                                "image": image,
                                "args": ["operator"],
                                // The port opens once the operator has listed its resources.
                                "readinessProbe": {
                                    "tcpSocket": {"port": 8081},
                                    "periodSeconds": 1,
                                },
                                "ports": [{"containerPort": 8081, "name": "health"}],
                            }],
                        },
                    },
                },
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn istio(spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "sailoperator.io/v1",
            "kind": "Istio",
            "metadata": {"name": "default", "uid": "u-1", "generation": 2},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn the_seeds_istio_resources_read_as_their_install_settings() {
        // 003_*, East: a primary of network1.
        let east = settings(&istio(json!({
            "version": "v1.24.1",
            "namespace": "istio-system",
            "values": {"global": {"meshID": "mesh1", "multiCluster": {"clusterName": "cluster1"}, "network": "network1"}},
        })), false)
        .unwrap();
        assert_eq!(east.owner, "default");
        assert_eq!(east.namespace, "istio-system");
        assert_eq!(east.identity.cluster_name, "cluster1");
        assert_eq!(east.identity.network, "network1");
        assert_eq!(east.identity.mesh_id, "mesh1");
        assert!(east.pilot.is_some());

        // 003_*, West: a remote whose control plane is reached through East's gateway.
        let west = settings(
            &istio(json!({
                "version": "v1.24.1",
                "namespace": "istio-system",
                "profile": "remote",
                "values": {
                    "istiodRemote": {"injectionPath": "/inject/cluster/cluster2/net/network2"},
                    "global": {"remotePilotAddress": "172.18.255.1"},
                },
            })),
            false,
        )
        .unwrap();
        assert!(west.pilot.is_none());
        let remote = west.remote.expect("the remote profile");
        assert_eq!(remote.pilot_address, "172.18.255.1");
        assert_eq!(
            remote.injection,
            crate::Injection::ServicePath("/inject/cluster/cluster2/net/network2".into())
        );

        // meshConfig is a Helm value in Sail and an operator key in istioctl.
        let logged = settings(
            &istio(json!({
                "values": {"meshConfig": {"accessLogFile": "/dev/stdout"}},
            })),
            false,
        )
        .unwrap();
        assert_eq!(logged.namespace, "istio-system");
        assert_eq!(logged.mesh_config["accessLogFile"], "/dev/stdout");
    }

    #[test]
    fn with_an_istio_cni_pods_are_captured_by_the_plugin_unless_the_values_say_otherwise() {
        let plain = settings(&istio(json!({})), false).unwrap();
        assert!(!plain.cni_capture);
        let with_cni = settings(&istio(json!({})), true).unwrap();
        assert!(with_cni.cni_capture);
        assert!(
            !with_cni.cni_agent,
            "the IstioCNI provides the plugin, not the Istio"
        );
        assert_eq!(with_cni.values["istio_cni"]["enabled"], true);
        let refused = settings(
            &istio(json!({"values": {"pilot": {"cni": {"enabled": false}}}})),
            true,
        )
        .unwrap();
        assert!(!refused.cni_capture);

        let cni: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "sailoperator.io/v1",
            "kind": "IstioCNI",
            "metadata": {"name": "default", "uid": "c-1"},
            "spec": {"version": "v1.24.1", "namespace": "istio-cni"},
        }))
        .unwrap();
        let objects = istio_cni_objects(&cni).unwrap();
        let described: Vec<String> = objects.iter().map(Rendered::describe).collect();
        assert_eq!(
            described,
            [
                "Namespace istio-cni",
                "ConfigMap istio-cni/istio-cni-config"
            ]
        );
        let owner = &objects[1]
            .object
            .metadata
            .owner_references
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("IstioCNI", "c-1")
        );
        assert_eq!(
            objects[1].object.metadata.labels.as_ref().unwrap()["k8s-app"],
            "istio-cni-node"
        );
        let status = istio_cni_status(
            &Observed::Ready,
            Some(1),
            &Value::Null,
            "2026-12-07T10:00:00Z",
        );
        assert_eq!(status["state"], "Healthy");
        assert_eq!(status["conditions"][1]["status"], "True");
    }

    #[test]
    fn a_wrong_istio_is_refused_with_the_field_named() {
        let table = [
            (
                json!({"values": "global.meshID=mesh1"}),
                "spec.values must be a map",
            ),
            (json!({"namespace": 7}), "spec.namespace must be a string"),
            (json!({"profile": "galaxy"}), "galaxy"),
            (
                json!({"values": {"global": {"meshID": ["a"]}}}),
                "global.meshID",
            ),
        ];
        for (spec, expected) in table {
            let error = settings(&istio(spec.clone()), false)
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("Istio default: "), "{spec}: {error}");
            assert!(error.contains(expected), "{spec}: {error}");
        }
    }

    #[test]
    fn owned_objects_name_the_istio_and_the_namespace_stays_unowned() {
        let istio = istio(json!({}));
        let objects = owned_by(crate::render(&settings(&istio, false).unwrap()), &istio);
        for rendered in &objects {
            let owners = rendered.object.metadata.owner_references.as_ref();
            if rendered.kind() == "Namespace" {
                assert!(owners.is_none());
                continue;
            }
            let owner =
                &owners.unwrap_or_else(|| panic!("{} has no owner", rendered.describe()))[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
                ("Istio", "default", "u-1")
            );
            assert_eq!(owner.controller, Some(true));
        }
        assert!(objects.iter().any(|object| object.kind() == "Deployment"));
    }

    #[test]
    fn the_status_says_what_kubectl_wait_reads_and_keeps_transition_times() {
        let now = "2026-12-07T10:00:00Z";
        let later = "2026-12-07T10:05:00Z";
        let ready_of = |status: &Value| -> (String, String) {
            let ready = status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|condition| condition["type"] == "Ready")
                .unwrap();
            (
                ready["status"].as_str().unwrap().to_owned(),
                ready["lastTransitionTime"].as_str().unwrap().to_owned(),
            )
        };
        let waiting = Observed::Waiting(vec![
            "Deployment istio-system/istiod: 0 of 1 available".into(),
        ]);
        let table = [
            // observed, state, Reconciled, Ready
            (
                Observed::Failed("cannot create Service istio-system/istiod: forbidden".into()),
                "ReconcileError",
                "False",
                "False",
            ),
            (waiting.clone(), "NotReady", "True", "False"),
            (Observed::Ready, "Healthy", "True", "True"),
        ];
        for (observed, state, reconciled, ready) in table {
            let status = istio_status(&observed, Some(2), Some("v1.24.1"), &Value::Null, now);
            assert_eq!(status["state"], state, "{observed:?}");
            assert_eq!(status["conditions"][0]["type"], "Reconciled");
            assert_eq!(
                status["conditions"][0]["status"], reconciled,
                "{observed:?}"
            );
            assert_eq!(ready_of(&status).0, ready, "{observed:?}");
            assert_eq!(status["observedGeneration"], 2);
            assert_eq!(status["version"], "v1.24.1");
        }
        let first = istio_status(&waiting, Some(2), None, &Value::Null, now);
        assert!(
            first["conditions"][1]["message"]
                .as_str()
                .unwrap()
                .contains("0 of 1 available")
        );
        let still = istio_status(&waiting, Some(2), None, &first, later);
        assert_eq!(ready_of(&still).1, now, "unchanged status keeps its time");
        let became_ready = istio_status(&Observed::Ready, Some(2), None, &still, later);
        assert_eq!(ready_of(&became_ready), ("True".into(), later.into()));
    }

    #[test]
    fn the_operator_objects_are_its_crds_rights_and_deployment() {
        let objects = operator_objects("causeway");
        let kinds: Vec<String> = objects.iter().map(Rendered::describe).collect();
        assert_eq!(
            kinds,
            [
                "CustomResourceDefinition istios.sailoperator.io",
                "CustomResourceDefinition istiocnis.sailoperator.io",
                "Namespace sail-operator",
                "ServiceAccount sail-operator/sail-operator",
                "ClusterRole sail-operator",
                "ClusterRoleBinding sail-operator",
                "Deployment sail-operator/sail-operator",
            ]
        );
        let deployment = &objects[6].object.data["spec"]["template"]["spec"];
        assert_eq!(deployment["containers"][0]["args"], json!(["operator"]));
        assert_eq!(deployment["serviceAccountName"], "sail-operator");
        let crd = &objects[0].object.data["spec"];
        assert_eq!(crd["scope"], "Cluster");
        assert_eq!(crd["versions"][0]["subresources"], json!({"status": {}}));
    }
}
