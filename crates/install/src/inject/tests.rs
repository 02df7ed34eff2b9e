use super::*;
use serde_json::Value;

use crate::test_samples::sample_text as sample;

fn config_for(sets: &[&str]) -> InjectionConfig {
    crate::test_samples::sample_injection_config(
        "topologies/multi-primary-multi-network/cluster01.yaml",
        sets,
    )
}

/// The pod template of the first Deployment in a sample, as a pod.
fn pod_of(path: &str, deployment: &str) -> Pod {
    let documents: Vec<Value> = serde_saphyr::from_str_multiple(&sample(path)).unwrap();
    let template = documents
        .iter()
        .find(|document| {
            document["kind"] == "Deployment" && document["metadata"]["name"] == deployment
        })
        .unwrap()["spec"]["template"]
        .clone();
    let mut pod: Pod = serde_json::from_value(template).unwrap();
    pod.metadata.generate_name = Some(format!("{deployment}-5b75657f75-"));
    pod
}

fn injected(outcome: Outcome) -> Pod {
    match outcome {
        Outcome::Injected(pod) => *pod,
        Outcome::Skipped(reason) => panic!("skipped: {reason}"),
    }
}

fn env_of(pod: &Pod, container: &str) -> std::collections::BTreeMap<String, Value> {
    let container = pod
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == container)
        .unwrap();
    container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|variable| {
            let value = match (variable.value, variable.value_from) {
                (Some(value), _) => Value::String(value),
                (None, Some(from)) => serde_json::to_value(from).unwrap(),
                (None, None) => Value::Null,
            };
            (variable.name, value)
        })
        .collect()
}

#[test]
fn a_sample_pod_gets_the_init_container_the_proxy_and_istios_labels() {
    let config = config_for(&[]);
    let pod = pod_of("sleep.yaml", "sleep");
    let result = injected(inject(&pod, "sample", &config, &Target::default()).unwrap());
    let spec = result.spec.as_ref().unwrap();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["istio-proxy", "sleep"],
        "held until the proxy starts: the proxy first"
    );
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.name, "istio-init");
    assert_eq!(init.image.as_deref(), Some("causeway"));
    assert_eq!(
        init.args.clone().unwrap(),
        [
            "proxy",
            "init",
            "-p",
            "15001",
            "-z",
            "15006",
            "-b",
            "*",
            "-d",
            "15090,15021,15020"
        ]
    );
    let proxy = &spec.containers[0];
    assert_eq!(
        proxy.args.clone().unwrap(),
        ["proxy", "sidecar", "--concurrency", "2"]
    );
    assert_eq!(
        proxy
            .lifecycle
            .as_ref()
            .unwrap()
            .post_start
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap()
            .command
            .clone()
            .unwrap(),
        ["causeway", "proxy", "wait", "--timeout", "60s"]
    );
    assert_eq!(
        proxy
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz/ready")
    );
    let env = env_of(&result, "istio-proxy");
    assert_eq!(env["ISTIO_META_CLUSTER_ID"], "cluster01");
    assert_eq!(env["ISTIO_META_NETWORK"], "network1");
    assert_eq!(env["ISTIO_META_MESH_ID"], "mesh1");
    assert_eq!(env["DISCOVERY_ADDRESS"], "istiod.istio-system.svc:15012");
    assert_eq!(env["CA_ADDR"], "istiod.istio-system.svc:15012");
    assert_eq!(env["ACCESS_LOG_FILE"], "/dev/stdout");
    assert_eq!(env["ACCESS_LOG_ENCODING"], "JSON");
    assert!(
        env["ACCESS_LOG_FORMAT"]
            .as_str()
            .unwrap()
            .contains("%UPSTREAM_CLUSTER%")
    );
    assert_eq!(env["POD_NAME"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(env["INSTANCE_IP"]["fieldRef"]["fieldPath"], "status.podIP");
    assert_eq!(
        env["SERVICE_ACCOUNT"]["fieldRef"]["fieldPath"],
        "spec.serviceAccountName"
    );
    assert_eq!(env["ISTIO_META_APP_CONTAINERS"], "sleep");
    let proxy_config: Value = serde_json::from_str(env["PROXY_CONFIG"].as_str().unwrap()).unwrap();
    assert_eq!(
        proxy_config["discoveryAddress"],
        "istiod.istio-system.svc:15012"
    );
    let volumes: Vec<&str> = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    for volume in ["istio-token", "istiod-ca-cert", "istio-podinfo"] {
        assert!(volumes.contains(&volume), "{volume} in {volumes:?}");
    }
    let token = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "istio-token")
        .unwrap();
    let source = &token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0];
    assert_eq!(
        source
            .service_account_token
            .as_ref()
            .unwrap()
            .audience
            .as_deref(),
        Some("istio-ca")
    );
    let ca = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "istiod-ca-cert")
        .unwrap();
    assert_eq!(ca.config_map.as_ref().unwrap().name, "istio-ca-root-cert");
    let labels = result.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["security.istio.io/tlsMode"], "istio");
    assert_eq!(labels["service.istio.io/canonical-name"], "sleep");
    assert_eq!(labels["service.istio.io/canonical-revision"], "latest");
    assert_eq!(labels["topology.istio.io/network"], "network1");
    let annotations = result.metadata.annotations.as_ref().unwrap();
    let status: Value = serde_json::from_str(&annotations[STATUS]).unwrap();
    assert_eq!(status["containers"], serde_json::json!(["istio-proxy"]));
    assert_eq!(status["initContainers"], serde_json::json!(["istio-init"]));
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "sleep"
    );

    // Injecting twice changes nothing.
    assert!(matches!(
        inject(&result, "sample", &config, &Target::default()).unwrap(),
        Outcome::Skipped(_)
    ));
}

#[test]
fn the_webhook_patch_turns_the_original_into_the_injected_pod() {
    let config = config_for(&[]);
    let pod = pod_of("helloworld.yaml", "helloworld-v1");
    let result = injected(inject(&pod, "sample", &config, &Target::default()).unwrap());
    let patch = patch(&pod, &result);
    let mut patched = serde_json::to_value(&pod).unwrap();
    json_patch::patch(&mut patched, &patch).unwrap();
    assert_eq!(patched, serde_json::to_value(&result).unwrap());
    let labels = result.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["service.istio.io/canonical-name"], "helloworld");
    assert_eq!(labels["service.istio.io/canonical-revision"], "v1");
}

#[test]
fn opt_outs_and_odd_pods_are_left_alone_with_a_reason() {
    let config = config_for(&[]);
    let base = pod_of("sleep.yaml", "sleep");
    let mut annotated = base.clone();
    annotated
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(INJECT.into(), "false".into());
    let mut labelled = base.clone();
    labelled
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(INJECT.into(), "false".into());
    let mut host = base.clone();
    host.spec.as_mut().unwrap().host_network = Some(true);
    for (pod, namespace, reason) in [
        (&annotated, "sample", "opts out"),
        (&labelled, "sample", "opts out"),
        (&host, "sample", "host's network"),
        (&base, "kube-system", "never injected"),
    ] {
        match inject(pod, namespace, &config, &Target::default()).unwrap() {
            Outcome::Skipped(text) => assert!(text.contains(reason), "{text}"),
            Outcome::Injected(_) => panic!("{reason}: injected"),
        }
    }
}

#[test]
fn annotations_tune_capture_and_the_proxy() {
    let config =
        config_for(&["meshConfig.defaultConfig.proxyMetadata.ISTIO_META_DNS_CAPTURE=true"]);
    let mut pod = pod_of("sleep.yaml", "sleep");
    let annotations = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(
        "traffic.sidecar.istio.io/excludeOutboundPorts".into(),
        "3306, 6379".into(),
    );
    annotations.insert(
        "traffic.sidecar.istio.io/includeInboundPorts".into(),
        "5000".into(),
    );
    annotations.insert(
        "traffic.sidecar.istio.io/excludeOutboundIPRanges".into(),
        "10.0.0.0/8".into(),
    );
    annotations.insert("proxy.istio.io/config".into(), "holdApplicationUntilProxyStarts: false\nconcurrency: 1\nproxyMetadata:\n  EXIT_ON_ZERO_ACTIVE_CONNECTIONS: 'true'\n".into());
    let result = injected(inject(&pod, "sample", &config, &Target::default()).unwrap());
    let spec = result.spec.as_ref().unwrap();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["sleep", "istio-proxy"]);
    assert!(spec.containers[1].lifecycle.is_none());
    assert_eq!(
        spec.containers[1].args.clone().unwrap(),
        ["proxy", "sidecar", "--concurrency", "1"]
    );
    let args = spec.init_containers.as_ref().unwrap()[0]
        .args
        .clone()
        .unwrap();
    assert_eq!(
        args,
        [
            "proxy",
            "init",
            "-p",
            "15001",
            "-z",
            "15006",
            "-b",
            "5000",
            "-d",
            "15090,15021,15020",
            "-o",
            "3306, 6379",
            "-x",
            "10.0.0.0/8",
            "--capture-dns"
        ]
    );
    let env = env_of(&result, "istio-proxy");
    assert_eq!(env["ISTIO_META_DNS_CAPTURE"], "true");
    assert_eq!(env["EXIT_ON_ZERO_ACTIVE_CONNECTIONS"], "true");

    let mut bad = pod_of("sleep.yaml", "sleep");
    bad.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("proxy.istio.io/config".into(), "[1, 2".into());
    let error = inject(&bad, "sample", &config, &Target::default())
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("annotation proxy.istio.io/config: not YAML"),
        "{error}"
    );
    let mut unknown = pod_of("sleep.yaml", "sleep");
    unknown
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("inject.istio.io/templates".into(), "grpc-agent".into());
    let error = inject(&unknown, "sample", &config, &Target::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("\"grpc-agent\" does not exist"), "{error}");
}

#[test]
fn the_injection_path_names_cluster_and_network() {
    for (path, expected) in [
        ("/inject", Some(Target::default())),
        ("/inject/", Some(Target::default())),
        (
            "/inject/cluster/cluster02/net/network2",
            Some(Target {
                cluster: Some("cluster02".into()),
                network: Some("network2".into()),
            }),
        ),
        (
            "/inject/net/network2",
            Some(Target {
                cluster: None,
                network: Some("network2".into()),
            }),
        ),
        ("/inject/cluster", None),
        ("/inject/planet/x", None),
        ("/mutate", None),
    ] {
        assert_eq!(Target::from_path(path).ok(), expected, "{path}");
    }
    let config = config_for(&[]);
    let target = Target::from_path("/inject/cluster/cluster02/net/network2").unwrap();
    let result =
        injected(inject(&pod_of("sleep.yaml", "sleep"), "sample", &config, &target).unwrap());
    let env = env_of(&result, "istio-proxy");
    assert_eq!(env["ISTIO_META_CLUSTER_ID"], "cluster02");
    assert_eq!(env["ISTIO_META_NETWORK"], "network2");
    assert_eq!(
        result.metadata.labels.as_ref().unwrap()["topology.istio.io/network"],
        "network2"
    );
}

#[test]
fn the_gateway_template_turns_istio_proxy_into_the_router() {
    let config = config_for(&[]);
    let pod = pod_of("sail/east-west-gateway-net1.yaml", "istio-eastwestgateway");
    let result = injected(inject(&pod, "istio-system", &config, &Target::default()).unwrap());
    let spec = result.spec.as_ref().unwrap();
    assert!(spec.init_containers.is_none(), "a gateway captures nothing");
    let [proxy] = spec.containers.as_slice() else {
        panic!("one container")
    };
    assert_eq!(proxy.image.as_deref(), Some("causeway"));
    assert_eq!(proxy.args.clone().unwrap(), ["proxy", "router"]);
    let env = env_of(&result, "istio-proxy");
    assert_eq!(env["ISTIO_META_REQUESTED_NETWORK_VIEW"], "network1");
    assert_eq!(env["ISTIO_META_NETWORK"], "network1");
    let mounts: Vec<&str> = proxy
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert!(
        mounts.contains(&"ingressgateway-certs") && mounts.contains(&"istio-token"),
        "{mounts:?}"
    );
    assert!(
        !result
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key("security.istio.io/tlsMode")
    );
}

#[test]
fn with_the_cni_plugin_a_pod_gets_annotations_instead_of_an_init_container() {
    for set in [
        "values.istio_cni.enabled=true",
        "values.pilot.cni.enabled=true",
        "components.cni.enabled=true",
    ] {
        let config = config_for(&[set]);
        assert!(config.cni, "{set}");
        let mut pod = pod_of("sleep.yaml", "sleep");
        pod.metadata.annotations = Some(
            [(
                "traffic.sidecar.istio.io/excludeOutboundPorts".to_owned(),
                "5432".to_owned(),
            )]
            .into(),
        );
        let result = injected(inject(&pod, "sample", &config, &Target::default()).unwrap());
        let spec = result.spec.as_ref().unwrap();
        assert!(
            spec.init_containers.as_ref().is_none_or(Vec::is_empty),
            "{set}: {:?}",
            spec.init_containers
        );
        let annotations = result.metadata.annotations.as_ref().unwrap();
        for (key, value) in [
            ("sidecar.istio.io/interceptionMode", "REDIRECT"),
            ("traffic.sidecar.istio.io/includeInboundPorts", "*"),
            (
                "traffic.sidecar.istio.io/excludeInboundPorts",
                "15090,15021,15020",
            ),
            ("traffic.sidecar.istio.io/includeOutboundIPRanges", "*"),
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "5432"),
        ] {
            assert_eq!(
                annotations.get(key).map(String::as_str),
                Some(value),
                "{set}: {key}"
            );
        }
        let status: Value = serde_json::from_str(&annotations["sidecar.istio.io/status"]).unwrap();
        assert_eq!(status["initContainers"], serde_json::json!([]), "{set}");
    }
}
