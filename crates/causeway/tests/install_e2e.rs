//! Installing the mesh into a lab cluster as the seeds install Istio, judged with a real
//! `kubectl`: `causeway install` with a topology file, `kubectl rollout status` of istiod, plain
//! `kubectl apply` of the samples into a labelled namespace giving 2/2 pods whose requests cross
//! both sidecars (their access logs say so), opt-outs, `kube-inject`, uninstall leaving the
//! cluster as it was, and bad inputs refused with the input named. These need root, as CI has.

mod fixtures;

use std::collections::BTreeSet;
use std::time::Duration;

use fixtures::lab::{TestLab, eventually, printed, sample, samples, topology};

const C1: &str = "kind-cluster01";
const WAIT: Duration = Duration::from_secs(30);

/// Every object of the kinds install makes, as `kind/name` lines with their namespace.
fn objects(lab: &TestLab) -> BTreeSet<String> {
    let kinds = "serviceaccounts,configmaps,deployments,services,endpoints,roles,rolebindings";
    let namespaced = lab.ok(
        C1,
        &["get", kinds, "-A", "-o", "jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}"],
    );
    let cluster = lab.ok(
        C1,
        &[
            "get",
            "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,namespaces",
            "-o",
            "name",
        ],
    );
    namespaced
        .lines()
        .chain(cluster.lines())
        .map(str::to_owned)
        .collect()
}

fn ready_containers(lab: &TestLab, namespace: &str, pod: &str) -> String {
    lab.ok(
        C1,
        &[
            "get",
            "pod",
            "-n",
            namespace,
            pod,
            "-o",
            "jsonpath={range .status.containerStatuses[*]}{.name}={.ready} {end}",
        ],
    )
}

/// The pod address of cluster01's discovery: `remotePilotAddress` on a flat network.
fn istiod_pod_ip(lab: &TestLab) -> String {
    lab.ok(
        C1,
        &[
            "get",
            "pod",
            "-n",
            "istio-system",
            "-l",
            "app=istiod",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ],
    )
}

fn curl(lab: &TestLab, namespace: &str, pod: &str, url: &str) -> Result<String, String> {
    let output = lab.exec(
        C1,
        namespace,
        pod,
        "sleep",
        &["curl", "-sS", "--max-time", "3", url],
    );
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(printed(&output))
    }
}

#[test]
fn installed_mesh_injects_labelled_namespaces_and_uninstall_leaves_the_cluster_as_it_was() {
    let lab = TestLab::new();
    lab.create("cluster01-kind.yaml");
    // As the guides do: the namespace first (install keeps a namespace that exists), then the
    // plugged-in CA, an intermediate of a shared root, as the `cacerts` Secret.
    lab.ok(C1, &["create", "namespace", "istio-system"]);
    let certs = lab.directory.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let certs_dir = certs.to_str().unwrap();
    for step in [["root-ca"], ["cluster01-cacerts"]] {
        let made = lab.causeway(&[
            "certs",
            step[0],
            "--dir",
            certs_dir,
            "--key-type",
            "ecdsa-p256",
        ]);
        assert!(made.status.success(), "{}", printed(&made));
    }
    lab.create_cacerts_secret(C1, &certs.join("cluster01"));
    let before = objects(&lab);

    let file = topology("multi-primary/cluster01.yaml");
    let installed = lab.causeway(&["install", "-y", "-f", &file, "--context", C1]);
    let text = printed(&installed);
    assert!(installed.status.success(), "{text}");
    for line in [
        "✔ Istio core installed",
        "✔ Istiod installed",
        "✔ Installation complete",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    assert!(
        text.contains("istio-ingressgateway is not installed"),
        "the default profile's gateway is named: {text}"
    );
    lab.ok(
        C1,
        &[
            "rollout",
            "status",
            "deploy/istiod",
            "-n",
            "istio-system",
            "--timeout=60s",
        ],
    );
    let after_install = objects(&lab);
    for expected in [
        "Deployment/istio-system/istiod",
        "Service/istio-system/istiod",
        "ConfigMap/istio-system/istio",
        "ConfigMap/istio-system/istio-sidecar-injector",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/istio-sidecar-injector",
    ] {
        assert!(
            after_install.contains(expected),
            "{expected} not installed: {after_install:?}"
        );
    }
    // Discovery signs with the mounted intermediate: what pods trust is the shared root.
    let logs = lab.ok(C1, &["logs", "-n", "istio-system", "deploy/istiod"]);
    assert!(
        logs.contains("origin=cacerts directory /etc/cacerts"),
        "discovery reads the mounted cacerts: {logs}"
    );
    let root = std::fs::read_to_string(certs.join("root-cert.pem")).unwrap();
    let published = lab.eventually_printed(
        "the published roots",
        WAIT,
        C1,
        &[
            "get",
            "configmap",
            "istio-ca-root-cert",
            "-n",
            "default",
            "-o",
            "jsonpath={.data.root-cert\\.pem}",
        ],
    );
    assert_eq!(published.trim(), root.trim());
    let again = lab.causeway(&["install", "-y", "-f", &file, "--context", C1]);
    assert!(again.status.success(), "install twice: {}", printed(&again));
    assert_eq!(
        objects(&lab),
        after_install,
        "a second install changes nothing"
    );
    lab.eventually_printed(
        "discovery to set the webhook's caBundle",
        WAIT,
        C1,
        &[
            "get",
            "mutatingwebhookconfiguration",
            "istio-sidecar-injector",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ],
    );

    // The seeds' steps: label, plain kubectl apply, wait.
    lab.ok(C1, &["create", "namespace", "sample"]);
    lab.ok(
        C1,
        &["label", "namespace", "sample", "istio-injection=enabled"],
    );
    lab.apply(C1, "sample", &sample("helloworld.yaml"));
    lab.apply(C1, "sample", &sample("sleep.yaml"));
    lab.ok(
        C1,
        &[
            "run",
            "plain",
            "-n",
            "sample",
            "--image=curlimages/curl",
            "--annotations=sidecar.istio.io/inject=false",
            "--command",
            "--",
            "sleep",
            "infinity",
        ],
    );
    lab.wait_ready(C1, "sample", "app=sleep");
    lab.wait_ready(C1, "sample", "app=helloworld");
    lab.ok(
        C1,
        &[
            "wait",
            "-n",
            "sample",
            "--for=condition=Ready",
            "pods",
            "-l",
            "topology.istio.io/network=network1",
            "--timeout=60s",
        ],
    );
    let sleep = lab.pod(C1, "sample", "app=sleep");
    assert_eq!(
        ready_containers(&lab, "sample", &sleep),
        "istio-proxy=true sleep=true "
    );
    let init = lab.ok(
        C1,
        &[
            "get",
            "pod",
            "-n",
            "sample",
            &sleep,
            "-o",
            "jsonpath={.spec.initContainers[*].name}",
        ],
    );
    assert_eq!(init, "istio-init");
    let plain = lab.ok(
        C1,
        &[
            "get",
            "pod",
            "-n",
            "sample",
            "plain",
            "-o",
            "jsonpath={.spec.containers[*].name}",
        ],
    );
    assert_eq!(plain, "plain", "an opted-out pod gets no sidecar");

    // The seeds' verification, through both sidecars.
    let mut versions = BTreeSet::new();
    for _ in 0..10 {
        let answer = curl(&lab, "sample", &sleep, "helloworld.sample:5000/hello").unwrap();
        assert!(answer.starts_with("Hello version: v"), "{answer}");
        versions.insert(answer[..17].to_owned());
    }
    assert!(!versions.is_empty());
    let outbound = eventually("the client sidecar's access log", WAIT, || {
        let log = lab.ok(C1, &["logs", "-n", "sample", &sleep, "-c", "istio-proxy"]);
        log.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|entry| {
                entry["upstream_cluster"] == "outbound|5000||helloworld.sample.svc.cluster.local"
            })
            .ok_or(log)
    });
    // accessLogEncoding JSON: Envoy's json_format writes the code as a number.
    assert_eq!(outbound["response_code"], 200);
    assert_eq!(outbound["path"], "/hello");
    let server = lab.pod(C1, "sample", "app=helloworld");
    let inbound = eventually("a server sidecar's access log", WAIT, || {
        let log = lab.ok(
            C1,
            &[
                "logs",
                "-n",
                "sample",
                "-l",
                "app=helloworld",
                "-c",
                "istio-proxy",
                "--tail=-1",
            ],
        );
        log.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|entry| entry["upstream_cluster"] == "inbound|5000||")
            .ok_or(format!("{server}: {log}"))
    });
    assert_eq!(
        inbound["requested_server_name"], "outbound_.5000_._.helloworld.sample.svc.cluster.local",
        "mTLS between the sidecars"
    );

    // Deleting one of two httpbin pods while requests are in flight loses none of them: its
    // sidecar stops taking connections and drains while the application answers what it
    // has, and the client's sidecar sends new requests to the other pod. POSTs, because a
    // proxy may not send one again after a broken connection: each must be answered where it
    // first went.
    lab.apply(C1, "sample", &sample("httpbin.yaml"));
    lab.ok(
        C1,
        &["scale", "-n", "sample", "deploy/httpbin", "--replicas=2"],
    );
    eventually("two httpbin pods", WAIT, || {
        let names = lab.ok(
            C1,
            &[
                "get",
                "pods",
                "-n",
                "sample",
                "-l",
                "app=httpbin",
                "-o",
                "name",
            ],
        );
        (names.lines().count() == 2).then_some(()).ok_or(names)
    });
    lab.wait_ready(C1, "sample", "app=httpbin");
    let victim = lab.pod(C1, "sample", "app=httpbin");
    const CLIENTS: usize = 4;
    const REQUESTS_EACH: usize = 12;
    let load = format!(
        "for c in $(seq 1 {CLIENTS}); do (for i in $(seq 1 {REQUESTS_EACH}); do curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 8 -X POST -d order=$c-$i httpbin.sample:8000/delay/0.4; done) & done; wait"
    );
    let (codes, deleted) = std::thread::scope(|scope| {
        let client = scope.spawn(|| lab.exec(C1, "sample", &sleep, "sleep", &["sh", "-c", &load]));
        std::thread::sleep(Duration::from_millis(1500));
        let deleted = lab.kubectl(
            C1,
            &["delete", "pod", "-n", "sample", &victim, "--timeout=60s"],
        );
        (client.join().expect("the load thread"), deleted)
    });
    assert!(deleted.status.success(), "{}", printed(&deleted));
    assert!(codes.status.success(), "{}", printed(&codes));
    let codes = String::from_utf8_lossy(&codes.stdout).into_owned();
    let total = CLIENTS * REQUESTS_EACH;
    assert_eq!(codes.lines().count(), total, "{codes}");
    let failed: Vec<&str> = codes.lines().filter(|code| *code != "200").collect();
    assert!(
        failed.is_empty(),
        "{} of {total} requests failed while {victim} was deleted: {failed:?}",
        failed.len()
    );

    // kube-inject into a namespace without the label.
    lab.ok(C1, &["create", "namespace", "manual"]);
    let injected = lab.causeway(&[
        "kube-inject",
        "-f",
        samples().join("sleep.yaml").to_str().unwrap(),
        "--context",
        C1,
    ]);
    assert!(injected.status.success(), "{}", printed(&injected));
    lab.apply(C1, "manual", &String::from_utf8(injected.stdout).unwrap());
    lab.wait_ready(C1, "manual", "app=sleep");
    let manual = lab.pod(C1, "manual", "app=sleep");
    assert_eq!(
        ready_containers(&lab, "manual", &manual),
        "istio-proxy=true sleep=true "
    );
    let answer = curl(&lab, "manual", &manual, "helloworld.sample:5000/hello").unwrap();
    assert!(answer.starts_with("Hello version: v"), "{answer}");

    // Uninstall: what install made goes, users' namespaces and workloads stay.
    let removed = lab.causeway(&["uninstall", "-y", "--purge", "--context", C1]);
    assert!(removed.status.success(), "{}", printed(&removed));
    assert!(
        printed(&removed).contains("✔ Uninstall complete"),
        "{}",
        printed(&removed)
    );
    let users = [
        "/sample/",
        "/manual/",
        "namespace/sample",
        "namespace/manual",
    ];
    // Discovery's root-certificate ConfigMaps stay, as Istio's do.
    let left: BTreeSet<String> = objects(&lab)
        .into_iter()
        .filter(|object| !users.iter().any(|user| object.contains(user)))
        .filter(|object| !object.ends_with("/istio-ca-root-cert"))
        .collect();
    assert_eq!(
        left, before,
        "uninstall --purge leaves the cluster as it was before install"
    );
    assert_eq!(
        ready_containers(&lab, "sample", &sleep),
        "istio-proxy=true sleep=true ",
        "workloads stay"
    );
    let twice = lab.causeway(&["uninstall", "-y", "--purge", "--context", C1]);
    assert!(twice.status.success());
    assert!(
        printed(&twice).contains("Nothing to remove"),
        "{}",
        printed(&twice)
    );
}

#[test]
fn failures_name_the_input_the_object_or_the_webhook() {
    let lab = TestLab::new();
    let refused = |args: &[&str], expected: &str| {
        let output = lab.causeway(args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let text = printed(&output);
        assert!(text.contains(expected), "{args:?}: {text}");
    };
    let helloworld = samples().join("helloworld.yaml").display().to_string();
    refused(
        &["manifest", "generate", "-f", &helloworld],
        "helloworld.yaml: document 1 is a v1 Service, not an IstioOperator",
    );
    refused(
        &["manifest", "generate", "--set", "profile=bogus"],
        "profile \"bogus\" does not exist",
    );
    refused(
        &["manifest", "generate", "--set", "values.global.meshId=x"],
        "values.global.meshId is not a setting Causeway knows",
    );
    refused(
        &[
            "manifest",
            "generate",
            "--set",
            "values.pilot.replicaCount=many",
        ],
        "values.pilot.replicaCount: expected a whole number",
    );
    let remote = topology("primary-remote/cluster02.yaml");
    refused(
        &["manifest", "generate", "-f", &remote],
        "unexpanded shell variable",
    );

    let unreachable = lab.state_dir().with_file_name("unreachable-kubeconfig");
    std::fs::write(
        &unreachable,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}\ncontexts:\n- name: gone\n  context: {cluster: gone, user: gone}\nusers:\n- name: gone\n  user: {token: x}\ncurrent-context: gone\n",
    )
    .unwrap();
    let file = topology("multi-primary/cluster01.yaml");
    refused(
        &[
            "install",
            "-y",
            "-f",
            &file,
            "--kubeconfig",
            unreachable.to_str().unwrap(),
        ],
        "cannot reach the cluster of context \"gone\" at https://127.0.0.1:1/",
    );

    lab.create("cluster01-kind.yaml");
    // Too short a wait: the step and the Deployment are named, and what is left is said.
    let hurried = lab.causeway(&[
        "install",
        "-y",
        "-f",
        &file,
        "--context",
        C1,
        "--readiness-timeout",
        "1ms",
    ]);
    let text = printed(&hurried);
    assert!(!hurried.status.success(), "{text}");
    assert!(
        text.contains(
            "✘ Istiod encountered an error: Deployment istio-system/istiod is not available after"
        ),
        "{text}"
    );
    assert!(
        text.contains("installation incomplete (created so far:")
            && text.contains("causeway uninstall --purge"),
        "{text}"
    );
    let finished = lab.causeway(&["install", "-y", "-f", &file, "--context", C1]);
    assert!(finished.status.success(), "{}", printed(&finished));

    // The remote profile's selector-less istiod Service routes to remotePilotAddress (here the
    // primary's discovery pod, as on a flat network) through the mirrored EndpointSlice.
    let istiod_ip = istiod_pod_ip(&lab);
    let remote_address = format!("values.global.remotePilotAddress={istiod_ip}");
    let remote = lab.causeway(&[
        "install",
        "-y",
        "--context",
        C1,
        "--set",
        "profile=remote",
        "--set",
        &remote_address,
        "--set",
        "namespace=istio-remote",
        "--set",
        "revision=remote",
    ]);
    assert!(remote.status.success(), "{}", printed(&remote));
    let mirrored = eventually("the mirrored EndpointSlice", WAIT, || {
        let address = lab.ok(
            C1,
            &[
                "get",
                "endpointslices",
                "-n",
                "istio-remote",
                "-l",
                "kubernetes.io/service-name=istiod-remote",
                "-o",
                "jsonpath={.items[0].endpoints[0].addresses[0]}",
            ],
        );
        if address.is_empty() {
            Err("none yet".to_owned())
        } else {
            Ok(address)
        }
    });
    assert_eq!(mirrored, istiod_ip);
    lab.ok(C1, &["create", "namespace", "probe"]);
    lab.apply(C1, "probe", &sample("sleep.yaml"));
    lab.wait_ready(C1, "probe", "app=sleep");
    let prober = lab.pod(C1, "probe", "app=sleep");
    let code = eventually(
        "a TLS answer through the remote istiod Service",
        WAIT,
        || {
            let output = lab.exec(
                C1,
                "probe",
                &prober,
                "sleep",
                &[
                    "curl",
                    "-sk",
                    "--max-time",
                    "3",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "https://istiod-remote.istio-remote.svc:15012/",
                ],
            );
            let code = String::from_utf8_lossy(&output.stdout).into_owned();
            if code.is_empty() || code == "000" {
                Err(printed(&output))
            } else {
                Ok(code)
            }
        },
    );
    assert_ne!(code, "000");

    // A webhook without a server: failurePolicy Fail refuses the pod, Ignore lets it in bare.
    lab.ok(C1, &["create", "namespace", "sample"]);
    lab.ok(
        C1,
        &["label", "namespace", "sample", "istio-injection=enabled"],
    );
    lab.ok(
        C1,
        &[
            "scale",
            "deploy/istiod",
            "-n",
            "istio-system",
            "--replicas=0",
        ],
    );
    eventually("istiod's endpoints to go", WAIT, || {
        let output = lab.kubectl(
            C1,
            &[
                "run",
                "refused",
                "-n",
                "sample",
                "--image=curlimages/curl",
                "--command",
                "--",
                "sleep",
                "infinity",
            ],
        );
        let text = printed(&output);
        if !output.status.success()
            && text.contains("failed calling webhook \"namespace.sidecar-injector.istio.io\"")
        {
            Ok(())
        } else {
            if output.status.success() {
                lab.ok(
                    C1,
                    &["delete", "pod", "refused", "-n", "sample", "--wait=false"],
                );
            }
            Err(text)
        }
    });
    let patch = r#"[{"op": "replace", "path": "/webhooks/2/failurePolicy", "value": "Ignore"}]"#;
    lab.ok(
        C1,
        &[
            "patch",
            "mutatingwebhookconfiguration",
            "istio-sidecar-injector",
            "--type=json",
            "-p",
            patch,
        ],
    );
    lab.ok(
        C1,
        &[
            "run",
            "bare",
            "-n",
            "sample",
            "--image=curlimages/curl",
            "--command",
            "--",
            "sleep",
            "infinity",
        ],
    );
    let containers = lab.ok(
        C1,
        &[
            "get",
            "pod",
            "bare",
            "-n",
            "sample",
            "-o",
            "jsonpath={.spec.containers[*].name}",
        ],
    );
    assert_eq!(containers, "bare");
}

/// Seed 003's Istio resource for the East cluster, as the seed pipes it to `kubectl apply`.
const SAIL_ISTIO: &str = "apiVersion: sailoperator.io/v1alpha1
kind: Istio
metadata:
  name: default
spec:
  version: v1.24.1
  namespace: istio-system
  values:
    global:
      meshID: mesh1
      multiCluster:
        clusterName: cluster1
      network: network1
";

const SAIL_CNI: &str = "apiVersion: sailoperator.io/v1
kind: IstioCNI
metadata:
  name: default
spec:
  version: v1.24.1
  namespace: istio-cni
";

#[test]
fn the_sail_operator_reconciles_the_seeds_istio_resource_into_a_working_mesh() {
    let lab = TestLab::new();
    lab.create("cluster01-kind.yaml");
    let installed = lab.causeway(&["install-operator", "--context", C1]);
    assert!(installed.status.success(), "{}", printed(&installed));
    assert!(
        printed(&installed).contains("✔ Sail operator installed"),
        "{}",
        printed(&installed)
    );
    lab.ok(C1, &["get", "crd", "istios.sailoperator.io"]);
    lab.ok(C1, &["create", "namespace", "istio-system"]);
    lab.apply(C1, "default", SAIL_CNI);
    lab.apply(C1, "default", SAIL_ISTIO);
    // The seed's wait.
    lab.ok(
        C1,
        &[
            "wait",
            "--for",
            "condition=Ready",
            "istio/default",
            "--timeout=3m",
        ],
    );
    lab.ok(
        C1,
        &[
            "wait",
            "--for",
            "condition=Ready",
            "istiocni/default",
            "--timeout=60s",
        ],
    );
    let listed = lab.ok(C1, &["get", "istio"]);
    assert!(
        listed.contains("Healthy") && listed.contains("v1.24.1"),
        "{listed}"
    );
    let owner = lab.ok(
        C1,
        &[
            "get",
            "deploy",
            "istiod",
            "-n",
            "istio-system",
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
        ],
    );
    assert_eq!(owner, "Istio/default");

    // The mesh works as after `causeway install`.
    lab.ok(C1, &["create", "namespace", "sample"]);
    lab.ok(
        C1,
        &["label", "namespace", "sample", "istio-injection=enabled"],
    );
    lab.apply(C1, "sample", &sample("helloworld.yaml"));
    lab.apply(C1, "sample", &sample("sleep.yaml"));
    lab.wait_ready(C1, "sample", "app=sleep");
    lab.wait_ready(C1, "sample", "app=helloworld");
    let sleep = lab.pod(C1, "sample", "app=sleep");
    assert_eq!(
        ready_containers(&lab, "sample", &sleep),
        "istio-proxy=true sleep=true "
    );
    let answer = curl(&lab, "sample", &sleep, "helloworld.sample:5000/hello").unwrap();
    assert!(answer.starts_with("Hello version: v"), "{answer}");
    // With the IstioCNI there, the plugin captures: no init container, and the request still
    // went through the sidecar.
    lab.ok(
        C1,
        &["get", "configmap", "istio-cni-config", "-n", "istio-cni"],
    );
    let pod_spec = lab.ok(
        C1,
        &[
            "get",
            "pod",
            "-n",
            "sample",
            &sleep,
            "-o",
            "jsonpath={.spec.initContainers[*].name}|{.metadata.annotations.traffic\\.sidecar\\.istio\\.io/excludeInboundPorts}",
        ],
    );
    assert_eq!(pod_spec, "|15090,15021,15020");
    let stats = lab.exec(
        C1,
        "sample",
        &sleep,
        "istio-proxy",
        &["curl", "-s", "http://127.0.0.1:15090/stats/prometheus"],
    );
    let stats = String::from_utf8_lossy(&stats.stdout).into_owned();
    assert!(
        stats
            .lines()
            .any(|line| line.starts_with("istio_requests_total")
                && line.contains("destination_service=\"helloworld.sample.svc.cluster.local\"")),
        "the sidecar counted the request: {stats}"
    );

    // Without the IstioCNI, the Istio is applied again and new pods bring their own capture.
    lab.ok(C1, &["delete", "istiocni", "default"]);
    eventually("the injector to leave the CNI plugin", WAIT, || {
        let values = lab.ok(
            C1,
            &[
                "get",
                "configmap",
                "istio-sidecar-injector",
                "-n",
                "istio-system",
                "-o",
                "jsonpath={.data.values}",
            ],
        );
        if values.contains("istio_cni") {
            Err(values)
        } else {
            Ok(())
        }
    });
    lab.ok(C1, &["rollout", "restart", "deploy/sleep", "-n", "sample"]);
    lab.ok(
        C1,
        &[
            "rollout",
            "status",
            "deploy/sleep",
            "-n",
            "sample",
            "--timeout=60s",
        ],
    );
    // The old pod drains for a while; the restarted one is the only one left after.
    let restarted = eventually("the old sleep pod to go", WAIT, || {
        let names = lab.ok(
            C1,
            &[
                "get",
                "pods",
                "-n",
                "sample",
                "-l",
                "app=sleep",
                "-o",
                "name",
            ],
        );
        match names.lines().collect::<Vec<_>>().as_slice() {
            [only] => Ok(only.trim_start_matches("pod/").to_owned()),
            _ => Err(names),
        }
    });
    let init = lab.ok(
        C1,
        &[
            "get",
            "pod",
            "-n",
            "sample",
            &restarted,
            "-o",
            "jsonpath={.spec.initContainers[*].name}",
        ],
    );
    assert_eq!(init, "istio-init");

    // A wrong resource is reported in its status, by field.
    lab.apply(
        C1,
        "default",
        "apiVersion: sailoperator.io/v1\nkind: Istio\nmetadata:\n  name: broken\nspec:\n  profile: galaxy\n",
    );
    let message = eventually("the broken Istio's status", WAIT, || {
        let message = lab.ok(
            C1,
            &[
                "get",
                "istio",
                "broken",
                "-o",
                "jsonpath={.status.state}: {.status.conditions[?(@.type==\"Reconciled\")].message}",
            ],
        );
        if message.starts_with("ReconcileError") {
            Ok(message)
        } else {
            Err(message)
        }
    });
    assert!(message.contains("galaxy"), "{message}");

    // Deleting the Istio removes what it made; the namespace and the workloads stay.
    lab.ok(C1, &["delete", "istio", "default", "broken"]);
    eventually("istiod and the webhook to go", WAIT, || {
        let left = lab.ok(
            C1,
            &[
                "get",
                "deploy,svc,mutatingwebhookconfiguration",
                "-n",
                "istio-system",
                "-o",
                "name",
            ],
        );
        if left.is_empty() { Ok(()) } else { Err(left) }
    });
    lab.ok(C1, &["get", "namespace", "istio-system"]);
    assert_eq!(
        ready_containers(&lab, "sample", &restarted),
        "istio-proxy=true sleep=true "
    );
}

/// The seeds' primary-remote steps on a flat network: the remote cluster's pods get their sidecar
/// from the primary's discovery, through the remote `istiod` Service (whose endpoints are the
/// primary's discovery pod) and a webhook whose `caBundle` that discovery keeps once the remote
/// `istio-system` names it; the sidecar then gets its configuration and certificate from there.
#[test]
fn a_remote_clusters_pods_get_their_sidecar_from_the_primarys_discovery() {
    const C2: &str = "kind-cluster02";
    let lab = TestLab::new();
    lab.create("cluster01-kind.yaml");
    lab.create("cluster02-kind.yaml");
    let connected = lab.causeway(&["lab", "connect", "cluster01", "cluster02"]);
    assert!(connected.status.success(), "{}", printed(&connected));
    let primary = lab.causeway(&[
        "install",
        "-y",
        "-f",
        &topology("primary-remote/cluster01.yaml"),
        "--context",
        C1,
    ]);
    assert!(primary.status.success(), "{}", printed(&primary));
    let discovery_address = istiod_pod_ip(&lab);

    lab.ok(C2, &["create", "namespace", "istio-system"]);
    lab.ok(
        C2,
        &[
            "annotate",
            "namespace",
            "istio-system",
            "topology.istio.io/controlPlaneClusters=cluster01",
        ],
    );
    let remote_file = lab.directory.path().join("cluster02.yaml");
    std::fs::write(
        &remote_file,
        std::fs::read_to_string(topology("primary-remote/cluster02.yaml"))
            .unwrap()
            .replace("${DISCOVERY_ADDRESS}", &discovery_address),
    )
    .unwrap();
    let remote = lab.causeway(&[
        "install",
        "-y",
        "-f",
        remote_file.to_str().unwrap(),
        "--context",
        C2,
    ]);
    assert!(remote.status.success(), "{}", printed(&remote));
    assert!(
        printed(&remote).contains("✔ Istiod remote installed"),
        "{}",
        printed(&remote)
    );
    let secret = lab.causeway(&[
        "create-remote-secret",
        "--context",
        C2,
        "--name",
        "cluster02",
    ]);
    assert!(secret.status.success(), "{}", printed(&secret));
    lab.apply(
        C1,
        "istio-system",
        &String::from_utf8(secret.stdout).unwrap(),
    );
    lab.eventually_printed(
        "the primary to set the remote webhook's caBundle",
        WAIT,
        C2,
        &[
            "get",
            "mutatingwebhookconfiguration",
            "istio-sidecar-injector",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ],
    );

    lab.ok(C2, &["create", "namespace", "sample"]);
    lab.ok(
        C2,
        &["label", "namespace", "sample", "istio-injection=enabled"],
    );
    lab.apply(C2, "sample", &sample("sleep.yaml"));
    let sleep = eventually("an injected sleep pod in cluster02", WAIT, || {
        let names = lab.ok(
            C2,
            &[
                "get",
                "pods",
                "-n",
                "sample",
                "-l",
                "app=sleep",
                "-o",
                "name",
            ],
        );
        names
            .lines()
            .next()
            .map(|name| name.trim_start_matches("pod/").to_owned())
            .ok_or(names)
    });
    lab.wait_ready(C2, "sample", "app=sleep");
    let containers = lab.ok(
        C2,
        &[
            "get",
            "pod",
            "-n",
            "sample",
            &sleep,
            "-o",
            "jsonpath={range .status.containerStatuses[*]}{.name}={.ready} {end}|{.metadata.labels.topology\\.istio\\.io/network}",
        ],
    );
    assert_eq!(containers, "istio-proxy=true sleep=true |network1");
    let env = lab.ok(
        C2,
        &[
            "get",
            "pod",
            "-n",
            "sample",
            &sleep,
            "-o",
            "jsonpath={.spec.containers[?(@.name==\"istio-proxy\")].env[?(@.name==\"ISTIO_META_CLUSTER_ID\")].value}",
        ],
    );
    assert_eq!(
        env, "cluster02",
        "the injection path names the remote cluster"
    );
}
