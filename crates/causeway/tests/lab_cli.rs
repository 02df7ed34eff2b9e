//! `causeway lab` as a user drives it: clusters from the seeds' kind configs, then a real
//! `kubectl` replaying the seed walkthrough's commands, and an API server killed mid-write.

mod fixtures;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fixtures::lab::{TestLab, kubectl_binary, samples};

use base64::Engine;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};

/// The network namespaces of the seeds' clusters (nodes and pods) on this machine.
fn lab_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with("cluster01-") || name.starts_with("cluster02-"))
                .collect()
        })
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
}

#[test]
fn the_seed_walkthrough_runs_with_a_real_kubectl() {
    let lab = TestLab::new();
    let created = lab.create("cluster01-kind.yaml");
    assert!(
        created.contains("pods 10.10.0.0/16, services 10.11.0.0/16"),
        "{created}"
    );
    lab.create("cluster02-kind.yaml");
    let clusters = String::from_utf8(lab.causeway(&["lab", "get-clusters"]).stdout).unwrap();
    assert_eq!(
        clusters
            .lines()
            .filter(|line| line.contains("running"))
            .count(),
        2,
        "{clusters}"
    );

    let c1 = "kind-cluster01";
    assert_eq!(
        lab.ok(c1, &["create", "namespace", "sample"]).trim(),
        "namespace/sample created"
    );
    lab.ok(
        c1,
        &["label", "namespace", "sample", "istio-injection=enabled"],
    );
    assert_eq!(
        lab.ok(
            c1,
            &[
                "get",
                "namespace",
                "sample",
                "-o",
                "jsonpath={.metadata.labels.istio-injection}"
            ]
        ),
        "enabled"
    );
    lab.ok(c1, &["create", "namespace", "istio-system"]);
    lab.ok(
        c1,
        &[
            "annotate",
            "namespace",
            "istio-system",
            "topology.istio.io/controlPlaneClusters=cluster01",
        ],
    );
    assert_eq!(
        lab.ok(
            c1,
            &[
                "get",
                "namespace",
                "istio-system",
                "-o",
                r"jsonpath={.metadata.annotations.topology\.istio\.io/controlPlaneClusters}"
            ]
        ),
        "cluster01"
    );

    // The cluster's cacerts, made by `causeway certs` and loaded the way the seed does.
    for args in [
        &["certs", "root-ca"][..],
        &["certs", "intermediate", "cluster01"][..],
    ] {
        let output = lab.causeway(args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(
        lab.create_cacerts_secret(c1, &lab.directory.path().join("cluster01"))
            .trim(),
        "secret/cacerts created"
    );
    let stored = lab.ok(
        c1,
        &[
            "get",
            "secret",
            "cacerts",
            "-n",
            "istio-system",
            "-o",
            r"jsonpath={.data.ca-cert\.pem}",
        ],
    );
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(stored)
        .unwrap();
    assert_eq!(
        decoded,
        std::fs::read(lab.directory.path().join("cluster01/ca-cert.pem")).unwrap()
    );

    let helloworld = samples().join("helloworld.yaml");
    let helloworld = helloworld.to_str().unwrap();
    assert_eq!(
        lab.ok(
            c1,
            &[
                "apply",
                "-f",
                helloworld,
                "-l",
                "service=helloworld",
                "-n",
                "sample"
            ]
        )
        .trim(),
        "service/helloworld created"
    );
    assert_eq!(
        lab.ok(
            c1,
            &[
                "apply",
                "-f",
                helloworld,
                "-l",
                "version=v1",
                "-n",
                "sample"
            ]
        )
        .trim(),
        "deployment.apps/helloworld-v1 created"
    );
    assert_eq!(
        lab.ok(
            c1,
            &[
                "apply",
                "-f",
                helloworld,
                "-l",
                "version=v1",
                "-n",
                "sample"
            ]
        )
        .trim(),
        "deployment.apps/helloworld-v1 unchanged"
    );
    let cluster_ip = lab.ok(
        c1,
        &[
            "get",
            "svc",
            "helloworld",
            "-n",
            "sample",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    assert!(cluster_ip.starts_with("10.11."), "{cluster_ip}");
    let listed = lab.ok(c1, &["get", "svc", "-n", "sample"]);
    assert!(
        listed.contains("helloworld")
            && listed.contains("ClusterIP")
            && listed.contains("5000/TCP"),
        "{listed}"
    );

    // A second apply of an edited manifest is a strategic merge patch.
    let scaled = std::fs::read_to_string(samples().join("helloworld.yaml"))
        .unwrap()
        .replace("replicas: 1", "replicas: 3");
    let scaled_path = lab.directory.path().join("helloworld-scaled.yaml");
    std::fs::write(&scaled_path, scaled).unwrap();
    assert_eq!(
        lab.ok(
            c1,
            &[
                "apply",
                "-f",
                scaled_path.to_str().unwrap(),
                "-l",
                "version=v1",
                "-n",
                "sample"
            ]
        )
        .trim(),
        "deployment.apps/helloworld-v1 configured"
    );
    assert_eq!(
        lab.ok(
            c1,
            &[
                "get",
                "deploy",
                "helloworld-v1",
                "-n",
                "sample",
                "-o",
                "jsonpath={.spec.replicas} {.metadata.generation}"
            ]
        ),
        "3 2"
    );

    let expose = samples().join("expose-services.yaml");
    assert_eq!(
        lab.ok(
            c1,
            &[
                "apply",
                "-f",
                expose.to_str().unwrap(),
                "-n",
                "istio-system"
            ]
        )
        .trim(),
        "gateway.networking.istio.io/cross-network-gateway created"
    );
    assert_eq!(
        lab.ok(
            c1,
            &[
                "get",
                "gateway",
                "cross-network-gateway",
                "-n",
                "istio-system",
                "-o",
                "jsonpath={.spec.servers[0].port.number}"
            ]
        ),
        "15443"
    );
    let expose_istiod = samples().join("expose-istiod.yaml");
    let applied = lab.ok(c1, &["apply", "-f", expose_istiod.to_str().unwrap()]);
    assert!(
        applied.contains("gateway.networking.istio.io/istiod-gateway created")
            && applied.contains("virtualservice.networking.istio.io/istiod-vs created"),
        "{applied}"
    );

    // Each cluster allocates from its own service subnet.
    lab.ok("kind-cluster02", &["create", "namespace", "sample"]);
    lab.ok(
        "kind-cluster02",
        &[
            "apply",
            "-f",
            helloworld,
            "-l",
            "service=helloworld",
            "-n",
            "sample",
        ],
    );
    let cluster02_ip = lab.ok(
        "kind-cluster02",
        &[
            "get",
            "svc",
            "helloworld",
            "-n",
            "sample",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    assert!(cluster02_ip.starts_with("10.21."), "{cluster02_ip}");

    let deleted = lab.ok(
        c1,
        &[
            "delete",
            "-f",
            helloworld,
            "-n",
            "sample",
            "--ignore-not-found",
        ],
    );
    assert!(
        deleted.contains("service \"helloworld\" deleted")
            && deleted.contains("deployment.apps \"helloworld-v1\" deleted"),
        "{deleted}"
    );
    let left = lab.kubectl(c1, &["get", "svc,deploy", "-n", "sample"]);
    assert!(
        String::from_utf8_lossy(&left.stderr).contains("No resources found"),
        "{left:?}"
    );
    lab.ok(c1, &["delete", "namespace", "istio-system"]);
    let gone = lab.kubectl(c1, &["get", "secret", "cacerts", "-n", "istio-system"]);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "{gone:?}"
    );
}

#[test]
fn create_cluster_refuses_duplicates_overlaps_and_malformed_configs_and_delete_leaves_nothing() {
    let lab = TestLab::new();
    lab.create("cluster01-kind.yaml");
    let pid = lab.api_server_pid("cluster01");
    assert!(alive(pid));

    let config01 = samples().join("topologies/cluster01-kind.yaml");
    let again = lab.causeway(&[
        "lab",
        "create-cluster",
        "--config",
        config01.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("cluster \"cluster01\" already exists"),
        "{again:?}"
    );

    let overlap = lab.causeway(&[
        "lab",
        "create-cluster",
        "--name",
        "other",
        "--pod-subnet",
        "10.10.128.0/17",
        "--service-subnet",
        "10.50.0.0/16",
    ]);
    assert!(
        String::from_utf8_lossy(&overlap.stderr)
            .contains("overlaps the pod subnet 10.10.0.0/16 of cluster01"),
        "{overlap:?}"
    );

    let broken = lab.directory.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking: [\n",
    )
    .unwrap();
    let malformed = lab.causeway(&[
        "lab",
        "create-cluster",
        "--config",
        broken.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&malformed.stderr).contains("is not a valid kind Cluster config"),
        "{malformed:?}"
    );

    let kubeconfig = std::fs::read_to_string(lab.kubeconfig()).unwrap();
    assert!(
        kubeconfig.contains("current-context: kind-cluster01"),
        "{kubeconfig}"
    );
    let printed = String::from_utf8(lab.causeway(&["lab", "kubeconfig"]).stdout).unwrap();
    assert!(
        printed.contains("name: kind-cluster01") && printed.contains("certificate-authority-data"),
        "{printed}"
    );

    assert!(lab_namespaces().contains(&"cluster01-control-plane".to_owned()));
    let deleted = lab.causeway(&["lab", "delete-cluster", "cluster01"]);
    assert!(deleted.status.success(), "{deleted:?}");
    assert!(!alive(pid), "the API server outlived delete-cluster");
    assert!(lab_namespaces().is_empty(), "{:?}", lab_namespaces());
    assert!(!lab.state_dir().join("clusters/cluster01").exists());
    let kubeconfig = std::fs::read_to_string(lab.kubeconfig()).unwrap();
    assert!(!kubeconfig.contains("cluster01"), "{kubeconfig}");

    // `lab down` removes every cluster, running or stopped.
    lab.create("cluster01-kind.yaml");
    lab.create("cluster02-kind.yaml");
    let pids = [
        lab.api_server_pid("cluster01"),
        lab.api_server_pid("cluster02"),
    ];
    assert!(
        lab.causeway(&["lab", "stop-cluster", "cluster02"])
            .status
            .success()
    );
    let network: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.state_dir().join("lab.json")).unwrap()).unwrap();
    let bridge = network["bridgeNamespace"].as_str().unwrap().to_owned();
    let down = lab.causeway(&["lab", "down"]);
    assert!(down.status.success(), "{down:?}");
    lab.clusters.lock().unwrap().clear();
    assert!(lab_namespaces().is_empty(), "{:?}", lab_namespaces());
    assert!(
        !std::path::Path::new("/run/netns").join(&bridge).exists(),
        "the lab network outlived lab down"
    );
    assert!(
        pids.iter().all(|pid| !alive(*pid)),
        "an API server outlived lab down"
    );
    let listed = lab.causeway(&["lab", "get-clusters"]);
    assert!(
        String::from_utf8_lossy(&listed.stderr).contains("No lab clusters"),
        "{listed:?}"
    );
    let kubeconfig = std::fs::read_to_string(lab.kubeconfig()).unwrap();
    assert!(!kubeconfig.contains("cluster0"), "{kubeconfig}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_killed_mid_write_loses_nothing_it_acknowledged() {
    let lab = TestLab::new();
    lab.create("cluster01-kind.yaml");
    let client = kube_client(&lab).await;
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let api = Api::<ConfigMap>::namespaced(client.clone(), "default");
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for index in 0..5_000 {
                let name = format!("w{writer}-{index}");
                let object: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"payload": "x".repeat(512)}})).unwrap();
                match api.create(&PostParams::default(), &object).await {
                    Ok(_) => {
                        acknowledged.lock().unwrap().insert(name);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = lab.api_server_pid("cluster01");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("writers stop once the server is gone")
            .unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 10,
        "too few writes before the kill ({}) to prove anything",
        acknowledged.len()
    );

    let restarted = lab.causeway(&["lab", "start-cluster", "cluster01"]);
    assert!(restarted.status.success(), "{restarted:?}");
    let client = kube_client(&lab).await;
    let stored: BTreeSet<String> = Api::<ConfigMap>::namespaced(client, "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|object| object.metadata.name)
        .collect();
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes were lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
}

async fn kube_client(lab: &TestLab) -> kube::Client {
    kube_client_for(lab, "kind-cluster01").await
}

async fn kube_client_for(lab: &TestLab, context: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(lab.kubeconfig()).unwrap();
    let options = kube::config::KubeConfigOptions {
        context: Some(context.into()),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_secret_piped_into_kubectl_gives_the_other_cluster_read_access() {
    use std::io::Write;
    let lab = TestLab::new();
    lab.create("cluster01-kind.yaml");
    lab.create("cluster02-kind.yaml");
    let missing = lab.causeway(&[
        "create-remote-secret",
        "--context",
        "kind-cluster02",
        "--name",
        "cluster02",
    ]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("namespace \"istio-system\" does not exist"),
        "{missing:?}"
    );
    for context in ["kind-cluster01", "kind-cluster02"] {
        lab.ok(context, &["create", "namespace", "istio-system"]);
    }

    // For a lab cluster the secret carries the node's address, which what runs in the lab reaches
    // (the seeds rewrite the kubeconfig to the node's docker address for this).
    let in_lab = lab.causeway(&[
        "create-remote-secret",
        "--context",
        "kind-cluster02",
        "--name",
        "cluster02",
    ]);
    assert!(
        in_lab.status.success(),
        "{}",
        String::from_utf8_lossy(&in_lab.stderr)
    );
    let in_lab = embedded_kubeconfig(&in_lab.stdout, "cluster02");
    let node02 = lab.node_address("cluster02");
    assert_eq!(
        in_lab["clusters"][0]["cluster"]["server"],
        format!("https://{node02}:6443")
    );
    let ca = lab.directory.path().join("cluster02-ca.pem");
    std::fs::write(
        &ca,
        base64::engine::general_purpose::STANDARD
            .decode(
                in_lab["clusters"][0]["cluster"]["certificate-authority-data"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap(),
    )
    .unwrap();
    let token = in_lab["users"][0]["user"]["token"].as_str().unwrap();
    let from_cluster01 = lab.causeway(&[
        "lab",
        "node-exec",
        "cluster01",
        "--",
        "curl",
        "-sS",
        "--cacert",
        ca.to_str().unwrap(),
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("https://{node02}:6443/api/v1/namespaces/default/services/kubernetes"),
    ]);
    assert!(
        String::from_utf8_lossy(&from_cluster01.stdout).contains("\"name\":\"kubernetes\""),
        "{from_cluster01:?}"
    );

    // The control plane below runs on the host, so its secret names the host's listener
    // (`--server`): causeway create-remote-secret --context kind-cluster02 --name cluster02
    // --server <host address> | kubectl apply -f - --context kind-cluster01
    let host_server = lab.ok(
        "kind-cluster02",
        &[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    );
    let secret = lab.causeway(&[
        "create-remote-secret",
        "--context",
        "kind-cluster02",
        "--name",
        "cluster02",
        "--server",
        &host_server,
    ]);
    assert!(
        secret.status.success(),
        "{}",
        String::from_utf8_lossy(&secret.stderr)
    );
    let mut apply = Command::new(kubectl_binary())
        .args([
            "apply",
            "-f",
            "-",
            "--context",
            "kind-cluster01",
            "--cache-dir",
        ])
        .arg(lab.directory.path().join("kube-cache"))
        .env("KUBECONFIG", lab.kubeconfig())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(&secret.stdout)
        .unwrap();
    let applied = apply.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&applied.stdout).trim(),
        "secret/istio-remote-secret-cluster02 created"
    );

    let jsonpath = r"jsonpath={.metadata.labels.istio/multiCluster} {.metadata.annotations.networking\.istio\.io/cluster}";
    assert_eq!(
        lab.ok(
            "kind-cluster01",
            &[
                "get",
                "secret",
                "istio-remote-secret-cluster02",
                "-n",
                "istio-system",
                "-o",
                jsonpath
            ]
        ),
        "true cluster02"
    );
    let embedded = lab.ok(
        "kind-cluster01",
        &[
            "get",
            "secret",
            "istio-remote-secret-cluster02",
            "-n",
            "istio-system",
            "-o",
            "jsonpath={.data.cluster02}",
        ],
    );
    let embedded = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(embedded)
            .unwrap(),
    )
    .unwrap();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&embedded).unwrap();
    assert_eq!(kubeconfig.current_context.as_deref(), Some("cluster02"));

    // What the control plane will do with it: read cluster02 as the reader account.
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let reader = kube::Client::try_from(config).unwrap();
    let services = Api::<k8s_openapi::api::core::v1::Service>::all(reader.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        services
            .items
            .iter()
            .any(|service| service.metadata.name.as_deref() == Some("kubernetes"))
    );
    let parsed: serde_json::Value = serde_saphyr::from_str(&embedded).unwrap();
    let token = parsed["users"][0]["user"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let review: k8s_openapi::api::authentication::v1::TokenReview =
        serde_json::from_value(serde_json::json!({"spec": {"token": token}})).unwrap();
    let admin02 = kube_client_for(&lab, "kind-cluster02").await;
    let reviewed = Api::<k8s_openapi::api::authentication::v1::TokenReview>::all(admin02)
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(reviewed.authenticated, Some(true), "{reviewed:?}");
    assert_eq!(
        reviewed.user.unwrap().username.as_deref(),
        Some("system:serviceaccount:istio-system:istio-reader-service-account")
    );
    assert!(
        lab.ok(
            "kind-cluster02",
            &[
                "get",
                "clusterrolebinding",
                "istio-reader-clusterrole-istio-system",
                "-o",
                "name"
            ]
        )
        .contains("istio-reader")
    );

    // The control plane of cluster01 picks the secret up: `remote-clusters` shows cluster02
    // synced, and `proxy-status` shows a connected proxy with its types' states.
    let mut discovery = Discovery::start(&lab);
    let remote_clusters = eventually_output(
        &lab,
        &[
            "remote-clusters",
            "--discovery-address",
            &discovery.monitoring,
        ],
        |out| out.contains("cluster02  istio-system/istio-remote-secret-cluster02  synced"),
    )
    .await;
    let mut lines = remote_clusters.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["NAME", "SECRET", "STATUS"]
    );
    assert!(
        remote_clusters.contains("cluster01  -"),
        "{remote_clusters}"
    );
    let node = causeway_xds::testing::node(
        "sidecar",
        "10.10.0.9",
        "sleep-1",
        "sample",
        &[("CLUSTER_ID", "cluster01")],
        &[],
    );
    let mut proxy =
        causeway_xds::testing::SotwClient::connect(discovery.xds.parse().unwrap(), node).await;
    proxy
        .request(causeway_xds::resources::CLUSTER, &[], "", "", None)
        .await;
    let clusters = proxy.recv().await;
    proxy.ack(&clusters, &[]).await;
    let status = eventually_output(
        &lab,
        &["proxy-status", "--discovery-address", &discovery.monitoring],
        |out| out.contains("SYNCED"),
    )
    .await;
    let row: Vec<&str> = status
        .lines()
        .nth(1)
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        row,
        [
            "sidecar~10.10.0.9~sleep-1.sample~sample.svc.cluster.local",
            "cluster01",
            "sidecar",
            "SYNCED",
            "NOT SENT",
            "NOT SENT",
            "NOT SENT"
        ],
        "{status}"
    );
    discovery.stop();
    let gone = lab.causeway(&[
        "remote-clusters",
        "--discovery-address",
        &discovery.monitoring,
    ]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("is `causeway discovery` running"),
        "{gone:?}"
    );
}

/// The Secret's kubeconfig for `cluster`, from `create-remote-secret`'s output.
fn embedded_kubeconfig(printed: &[u8], cluster: &str) -> serde_json::Value {
    let text = String::from_utf8_lossy(printed);
    let secret: serde_json::Value =
        serde_saphyr::from_str(text.split("\n---").next().unwrap()).unwrap();
    serde_saphyr::from_str(secret["stringData"][cluster].as_str().unwrap()).unwrap()
}

/// `causeway discovery` for cluster01 on loopback ports the system picks.
struct Discovery {
    child: std::process::Child,
    xds: String,
    monitoring: String,
}

impl Discovery {
    fn start(lab: &TestLab) -> Discovery {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_causeway"))
            .args([
                "discovery",
                "--context",
                "kind-cluster01",
                "--cluster-id",
                "cluster01",
                "--network",
                "network1",
                "--debounce",
                "0",
            ])
            .args([
                "--xds-address",
                "127.0.0.1:0",
                "--secure-xds-address",
                "127.0.0.1:0",
                "--monitoring-address",
                "127.0.0.1:0",
                "--webhook-address",
                "127.0.0.1:0",
            ])
            .env("KUBECONFIG", lab.kubeconfig())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let addresses: serde_json::Value = serde_json::from_str(&first)
            .unwrap_or_else(|_| panic!("discovery's first line is its addresses: {first:?}"));
        assert!(
            addresses["ca"].as_str().unwrap().contains("self-signed"),
            "{addresses}"
        );
        Discovery {
            child,
            xds: addresses["xds"].as_str().unwrap().to_owned(),
            monitoring: addresses["monitoring"].as_str().unwrap().to_owned(),
        }
    }

    /// SIGTERM, as Kubernetes stops a pod; discovery must exit cleanly.
    fn stop(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "discovery exited with {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "discovery ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `causeway args` until its output satisfies `done` (10 s at most); returns that output.
async fn eventually_output(lab: &TestLab, args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let output = lab.causeway(args);
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        if output.status.success() && done(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "causeway {args:?} never printed what was expected; last: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
