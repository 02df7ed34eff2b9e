use super::*;
use crate::settings::load;
use serde_json::Value;

fn sample(path: &str) -> (String, String) {
    let text = crate::test_samples::sample_text(path);
    (
        path.to_owned(),
        text.replace("${DISCOVERY_ADDRESS}", "172.18.11.1"),
    )
}

fn objects(files: &[&str], sets: &[&str]) -> Vec<Rendered> {
    let files: Vec<(String, String)> = files.iter().map(|path| sample(path)).collect();
    let sets: Vec<String> = sets.iter().map(|set| (*set).to_owned()).collect();
    render(&load(&files, &sets).unwrap())
}

fn find(objects: &[Rendered], kind: &str, name: &str) -> Value {
    let found = objects
        .iter()
        .find(|rendered| rendered.kind() == kind && rendered.name() == name)
        .unwrap_or_else(|| {
            let all: Vec<String> = objects.iter().map(Rendered::describe).collect();
            panic!("no {kind} {name} among {all:?}")
        });
    serde_json::to_value(&found.object).unwrap()
}

fn env(container: &Value) -> std::collections::BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|variable| {
            let value = variable
                .get("value")
                .cloned()
                .unwrap_or_else(|| variable["valueFrom"].clone());
            (variable["name"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

#[test]
fn every_sample_file_renders_and_round_trips_through_yaml() {
    for file in [
        "topologies/multi-primary/cluster01.yaml",
        "topologies/multi-primary/cluster02.yaml",
        "topologies/multi-primary-multi-network/cluster01.yaml",
        "topologies/multi-primary-multi-network/cluster02.yaml",
        "topologies/primary-remote/cluster01.yaml",
        "topologies/primary-remote/cluster02.yaml",
        "topologies/primary-remote-multi-network/cluster01.yaml",
        "topologies/primary-remote-multi-network/cluster02.yaml",
        "topologies/eastwest-gateway-cluster01-network1.yaml",
        "topologies/eastwest-gateway-cluster02-network2.yaml",
    ] {
        let rendered = objects(&[file], &[]);
        assert!(!rendered.is_empty(), "{file}");
        let yaml = to_yaml(&rendered);
        let documents: Vec<DynamicObject> = serde_saphyr::from_str_multiple(&yaml).unwrap();
        assert_eq!(documents.len(), rendered.len(), "{file}");
        for (document, original) in documents.iter().zip(&rendered) {
            let types = document.types.as_ref().expect("apiVersion and kind");
            assert_eq!(types.kind, original.kind(), "{file}");
            assert_eq!(
                document.metadata.name, original.object.metadata.name,
                "{file}"
            );
        }
        for object in rendered
            .iter()
            .filter(|object| object.ownership == Ownership::Owned)
        {
            let labels = object.object.metadata.labels.as_ref().unwrap();
            assert_eq!(labels[REVISION_LABEL], "default", "{}", object.describe());
            assert_eq!(
                labels[COMPONENT_LABEL],
                object.component.label(),
                "{}",
                object.describe()
            );
            assert!(labels.contains_key(OWNER_LABEL), "{}", object.describe());
        }
    }
}

#[test]
fn a_primary_gets_discovery_its_service_config_and_webhook() {
    let rendered = objects(
        &["topologies/multi-primary-multi-network/cluster01.yaml"],
        &[],
    );
    let names: Vec<String> = rendered.iter().map(Rendered::describe).collect();
    assert_eq!(
        names,
        [
            "Namespace istio-system",
            "ServiceAccount istio-system/istio-reader-service-account",
            "ClusterRole istio-reader-clusterrole-istio-system",
            "ClusterRoleBinding istio-reader-clusterrole-istio-system",
            "ServiceAccount istio-system/istiod",
            "ClusterRole istiod-clusterrole-istio-system",
            "ClusterRoleBinding istiod-clusterrole-istio-system",
            "Role istio-system/istiod",
            "RoleBinding istio-system/istiod",
            "ConfigMap istio-system/istio",
            "ConfigMap istio-system/istio-sidecar-injector",
            "Deployment istio-system/istiod",
            "Service istio-system/istiod",
            "MutatingWebhookConfiguration istio-sidecar-injector",
        ]
    );
    assert_eq!(rendered[0].ownership, Ownership::CreateIfMissing);

    let deployment = find(&rendered, "Deployment", "istiod");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "causeway");
    assert_eq!(container["args"], serde_json::json!(["discovery"]));
    let variables = env(container);
    assert_eq!(variables["CLUSTER_ID"], "cluster01");
    assert_eq!(variables["NETWORK"], "network1");
    assert_eq!(variables["MESH_ID"], "mesh1");
    assert_eq!(
        variables["POD_NAMESPACE"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], 15014);
    let volumes = &deployment["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes
            .as_array()
            .unwrap()
            .iter()
            .any(|volume| volume["secret"]["secretName"] == "cacerts"
                && volume["secret"]["optional"] == true)
    );
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"],
        "false"
    );
    assert_eq!(deployment["metadata"]["labels"]["app"], "istiod");

    let service = find(&rendered, "Service", "istiod");
    let ports: Vec<(i64, Value)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| {
            (
                port["port"].as_i64().unwrap(),
                port.get("targetPort").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            (15010, Value::Null),
            (15012, Value::Null),
            (443, Value::from(15017)),
            (15014, Value::Null)
        ]
    );
    assert_eq!(service["spec"]["selector"]["app"], "istiod");

    let mesh_map = find(&rendered, "ConfigMap", "istio");
    let mesh: Value = serde_saphyr::from_str(mesh_map["data"]["mesh"].as_str().unwrap()).unwrap();
    assert_eq!(mesh["accessLogFile"], "/dev/stdout");
    assert_eq!(mesh["accessLogEncoding"], "JSON");
    assert!(
        mesh["accessLogFormat"]
            .as_str()
            .unwrap()
            .contains("%UPSTREAM_CLUSTER%")
    );
    assert_eq!(
        mesh["defaultConfig"]["discoveryAddress"],
        "istiod.istio-system.svc:15012"
    );
    assert_eq!(mesh["trustDomain"], "cluster.local");

    let injector = find(&rendered, "ConfigMap", "istio-sidecar-injector");
    let values: Value = serde_json::from_str(injector["data"]["values"].as_str().unwrap()).unwrap();
    assert_eq!(values["global"]["multiCluster"]["clusterName"], "cluster01");
    assert_eq!(values["global"]["network"], "network1");
    assert_eq!(values["global"]["proxy"]["image"], "causeway");
    assert_eq!(values["global"]["logAsJson"], true);
    let config: Value =
        serde_saphyr::from_str(injector["data"]["config"].as_str().unwrap()).unwrap();
    assert_eq!(config["defaultTemplates"], serde_json::json!(["sidecar"]));

    let webhook = find(
        &rendered,
        "MutatingWebhookConfiguration",
        "istio-sidecar-injector",
    );
    let hooks = webhook["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 4);
    let by_namespace = hooks
        .iter()
        .find(|hook| hook["name"] == "namespace.sidecar-injector.istio.io")
        .unwrap();
    assert_eq!(
        by_namespace["namespaceSelector"]["matchExpressions"][0],
        serde_json::json!({"key": "istio-injection", "operator": "In", "values": ["enabled"]})
    );
    assert_eq!(
        by_namespace["objectSelector"]["matchExpressions"][0]["key"],
        "sidecar.istio.io/inject"
    );
    assert_eq!(by_namespace["failurePolicy"], "Fail");
    assert_eq!(by_namespace["clientConfig"]["service"]["path"], "/inject");
    assert_eq!(by_namespace["clientConfig"]["service"]["port"], 443);
    assert!(
        by_namespace["clientConfig"].get("caBundle").is_none(),
        "discovery fills it in"
    );
}

#[test]
fn a_remote_points_its_istiod_service_and_webhook_at_the_primary() {
    let rendered = objects(
        &["topologies/primary-remote-multi-network/cluster02.yaml"],
        &[],
    );
    assert!(rendered.iter().all(|object| object.kind() != "Deployment"));
    // The injector's ConfigMap, as istiod-remote's chart renders it, for `kube-inject
    // --injectConfigMapName` in the remote cluster: the remote's own name and network.
    let injector = find(&rendered, "ConfigMap", "istio-sidecar-injector");
    let values: Value = serde_json::from_str(injector["data"]["values"].as_str().unwrap()).unwrap();
    assert_eq!(values["global"]["multiCluster"]["clusterName"], "cluster02");
    assert_eq!(values["global"]["network"], "network2");
    let service = find(&rendered, "Service", "istiod");
    assert!(service["spec"].get("selector").is_none());
    let endpoints = find(&rendered, "Endpoints", "istiod");
    assert_eq!(endpoints["subsets"][0]["addresses"][0]["ip"], "172.18.11.1");
    let ports: Vec<i64> = endpoints["subsets"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| port["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [15012, 15017]);
    let webhook = find(
        &rendered,
        "MutatingWebhookConfiguration",
        "istio-sidecar-injector",
    );
    assert_eq!(
        webhook["webhooks"][0]["clientConfig"],
        json!({"service": {"name": "istiod", "namespace": "istio-system", "path": "/inject/cluster/cluster02/net/network2", "port": 443}})
    );
    let by_url = objects(
        &["topologies/primary-remote-multi-network/cluster02.yaml"],
        &["values.istiodRemote.injectionURL=https://istiod.example:15017/inject"],
    );
    let webhook = find(
        &by_url,
        "MutatingWebhookConfiguration",
        "istio-sidecar-injector",
    );
    assert_eq!(
        webhook["webhooks"][0]["clientConfig"]["url"],
        "https://istiod.example:15017/inject"
    );
    assert!(
        rendered
            .iter()
            .any(|object| object.name() == "istio-reader-service-account")
    );

    let by_name = objects(
        &["topologies/primary-remote/cluster02.yaml"],
        &["values.global.remotePilotAddress=istiod.example"],
    );
    let service = find(&by_name, "Service", "istiod");
    assert_eq!(service["spec"]["type"], "ExternalName");
    assert_eq!(service["spec"]["externalName"], "istiod.example");
}

#[test]
fn an_eastwest_gateway_runs_the_router_behind_a_load_balancer() {
    let rendered = objects(
        &["topologies/eastwest-gateway-cluster02-network2.yaml"],
        &[],
    );
    let names: Vec<String> = rendered.iter().map(Rendered::describe).collect();
    assert_eq!(
        names,
        [
            "ServiceAccount istio-system/istio-eastwestgateway-service-account",
            "Deployment istio-system/istio-eastwestgateway",
            "Service istio-system/istio-eastwestgateway",
        ]
    );
    let deployment = find(&rendered, "Deployment", "istio-eastwestgateway");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"], serde_json::json!(["proxy", "router"]));
    let variables = env(container);
    assert_eq!(variables["ISTIO_META_ROUTER_MODE"], "sni-dnat");
    assert_eq!(variables["ISTIO_META_REQUESTED_NETWORK_VIEW"], "network2");
    assert_eq!(variables["ISTIO_META_NETWORK"], "network2");
    assert_eq!(variables["ISTIO_META_CLUSTER_ID"], "cluster02");
    assert_eq!(
        variables["DISCOVERY_ADDRESS"],
        "istiod.istio-system.svc:15012"
    );
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(pod_labels["istio"], "eastwestgateway");
    assert_eq!(pod_labels["topology.istio.io/network"], "network2");
    let service = find(&rendered, "Service", "istio-eastwestgateway");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["spec"]["selector"]["istio"], "eastwestgateway");
    assert_eq!(
        service["metadata"]["labels"]["topology.istio.io/network"],
        "network2"
    );
    assert_eq!(service["metadata"]["labels"][OWNER_LABEL], "eastwest");
    let ports: Vec<i64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| port["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [15021, 15443, 15012, 15017]);
}

#[test]
fn a_gateway_installed_alone_logs_as_the_control_planes_mesh_config_says() {
    let gateway_file = sample("topologies/eastwest-gateway-cluster01-network1.yaml");
    let mut settings = load(std::slice::from_ref(&gateway_file), &[]).unwrap();
    let mesh = "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\ntrustDomain: cluster.local\n";
    assert!(settings.adopt_control_plane_access_log(mesh).unwrap());
    let rendered = render(&settings);
    let deployment = find(&rendered, "Deployment", "istio-eastwestgateway");
    let variables = env(&deployment["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(variables["ACCESS_LOG_FILE"], "/dev/stdout");
    assert_eq!(variables["ACCESS_LOG_ENCODING"], "JSON");
    assert!(!variables.contains_key("ACCESS_LOG_FORMAT"));
    // Without a mesh config access log, the gateway logs nothing, as in Istio.
    let mut quiet = load(std::slice::from_ref(&gateway_file), &[]).unwrap();
    assert!(
        !quiet
            .adopt_control_plane_access_log("trustDomain: cluster.local\n")
            .unwrap()
    );
    let rendered = render(&quiet);
    let deployment = find(&rendered, "Deployment", "istio-eastwestgateway");
    assert!(
        !env(&deployment["spec"]["template"]["spec"]["containers"][0])
            .contains_key("ACCESS_LOG_FILE")
    );
    // The gateway's own settings win, a control plane install is left alone, and bad YAML is named.
    let mut own = load(
        std::slice::from_ref(&gateway_file),
        &["meshConfig.accessLogFile=/dev/null".to_owned()],
    )
    .unwrap();
    assert!(!own.adopt_control_plane_access_log(mesh).unwrap());
    let mut primary = load(&[sample("topologies/multi-primary/cluster01.yaml")], &[]).unwrap();
    assert!(!primary.adopt_control_plane_access_log(mesh).unwrap());
    let mut broken = load(&[gateway_file], &[]).unwrap();
    let error = broken
        .adopt_control_plane_access_log("accessLogFile: [")
        .unwrap_err();
    assert!(error.contains("not YAML"), "{error}");
}

#[test]
fn a_revision_renames_discovery_and_keeps_only_revision_webhooks() {
    let rendered = objects(
        &["topologies/multi-primary/cluster01.yaml"],
        &["revision=canary"],
    );
    let deployment = find(&rendered, "Deployment", "istiod-canary");
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"]["istio.io/rev"],
        "canary"
    );
    let webhook = find(
        &rendered,
        "MutatingWebhookConfiguration",
        "istio-sidecar-injector-canary",
    );
    let names: Vec<&str> = webhook["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hook| hook["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "rev.namespace.sidecar-injector.istio.io",
            "rev.object.sidecar-injector.istio.io"
        ]
    );
    find(&rendered, "ConfigMap", "istio-canary");
}

#[test]
fn components_cni_installs_the_plugins_configuration_and_turns_the_injector_to_it() {
    let rendered = objects(
        &["topologies/multi-primary/cluster01.yaml"],
        &["components.cni.enabled=true"],
    );
    let config = find(&rendered, "ConfigMap", "istio-cni-config");
    assert_eq!(config["metadata"]["namespace"], "istio-system");
    assert_eq!(config["metadata"]["labels"]["k8s-app"], "istio-cni-node");
    assert_eq!(
        config["metadata"]["labels"]["operator.istio.io/component"],
        "Cni"
    );
    let network: Value =
        serde_json::from_str(config["data"]["cni_network_config"].as_str().unwrap()).unwrap();
    assert_eq!(network["type"], "istio-cni");
    let injector = find(&rendered, "ConfigMap", "istio-sidecar-injector");
    let values: Value = serde_json::from_str(injector["data"]["values"].as_str().unwrap()).unwrap();
    assert_eq!(values["istio_cni"]["enabled"], true);

    // Capture by the plugin, installed by someone else: no configuration of ours.
    let rendered = objects(
        &["topologies/multi-primary/cluster01.yaml"],
        &["values.istio_cni.enabled=true"],
    );
    assert!(
        rendered
            .iter()
            .all(|object| object.name() != "istio-cni-config")
    );
}
