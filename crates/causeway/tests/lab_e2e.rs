//! Lab clusters running workloads, judged with a real `kubectl` (and curl, inside the pods): the
//! seeds' samples answer through Services, DNS and `kubectl exec`; pods get their volumes,
//! environment and tokens; workloads scale, roll, crash and go as on Kubernetes; two clusters
//! reach each other's pods only when connected and LoadBalancer addresses always; nothing leaves
//! the lab; and `lab down` after a `kill -9` leaves nothing. These need root, as CI has.

mod fixtures;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use fixtures::lab::{TestLab, eventually, printed, sample};

const WAIT: Duration = Duration::from_secs(30);
const C1: &str = "kind-cluster01";
const C2: &str = "kind-cluster02";

fn lab_data(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/lab")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// Runs `curl -s <url>` in the sleep pod (`kubectl exec -c sleep`), as the seeds' verification
/// does: the body, or what went wrong.
fn curl(lab: &TestLab, context: &str, pod: &str, url: &str) -> Result<String, String> {
    let output = lab.exec(
        context,
        "sample",
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

/// One cluster with the seeds' helloworld (both versions) and sleep, ready.
fn cluster_with_samples(lab: &TestLab, config: &str, context: &str) -> String {
    lab.create(config);
    lab.ok(context, &["create", "namespace", "sample"]);
    lab.apply(context, "sample", &sample("helloworld.yaml"));
    lab.apply(context, "sample", &sample("sleep.yaml"));
    lab.wait_ready(context, "sample", "app=sleep");
    lab.wait_ready(context, "sample", "app=helloworld");
    lab.pod(context, "sample", "app=sleep")
}

#[test]
fn the_seed_samples_answer_through_services_dns_exec_and_logs() {
    let lab = TestLab::new();
    let sleep = cluster_with_samples(&lab, "cluster01-kind.yaml", C1);

    // The seeds' verification: both versions answer through the Service (ClusterIP, DNS with the
    // pod's search path, a connection each balanced at random).
    let mut versions = BTreeSet::new();
    for _ in 0..30 {
        let answer = curl(&lab, C1, &sleep, "helloworld.sample:5000/hello").unwrap();
        assert!(answer.starts_with("Hello version: v"), "{answer}");
        versions.insert(answer[..17].to_owned());
        if versions.len() == 2 {
            break;
        }
    }
    assert_eq!(versions.len(), 2, "only {versions:?} answered");
    for name in [
        "helloworld",
        "helloworld.sample.svc",
        "helloworld.sample.svc.cluster.local",
    ] {
        assert!(
            curl(&lab, C1, &sleep, &format!("{name}:5000/hello"))
                .unwrap()
                .starts_with("Hello version")
        );
    }

    // The pod's own address answers directly, with its own instance.
    let v1 = lab.pod(C1, "sample", "version=v1");
    let v1_ip = lab.ok(
        C1,
        &[
            "get",
            "pod",
            "-n",
            "sample",
            &v1,
            "-o",
            "jsonpath={.status.podIP}",
        ],
    );
    assert!(v1_ip.starts_with("10.10."), "{v1_ip}");
    assert_eq!(
        curl(&lab, C1, &sleep, &format!("{v1_ip}:5000/hello")).unwrap(),
        format!("Hello version: v1, instance: {v1}\n")
    );
    // The API server through the `kubernetes` Service, as a control plane in a pod reaches it.
    let version = lab.exec(
        C1,
        "sample",
        &sleep,
        "sleep",
        &["curl", "-sk", "https://kubernetes.default.svc/version"],
    );
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("\"gitVersion\""),
        "{}",
        printed(&version)
    );
    // Names the cluster does not know, and the world outside, do not resolve.
    let unknown = curl(&lab, C1, &sleep, "nothing-here.sample:5000/").unwrap_err();
    assert!(unknown.contains("Could not resolve host"), "{unknown}");

    // kubectl logs shows the app's log.
    let logs = lab.ok(C1, &["logs", "-n", "sample", &v1]);
    assert!(logs.contains("GET /hello HTTP/1.1\" 200"), "{logs}");
    let last = lab.ok(
        C1,
        &[
            "logs",
            "-n",
            "sample",
            &v1,
            "-c",
            "helloworld",
            "--tail",
            "1",
            "--timestamps",
        ],
    );
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(last.starts_with("20"), "{last}");

    // A failing command's exit code comes back through kubectl exec, and through lab exec.
    let failed = lab.exec(
        C1,
        "sample",
        &sleep,
        "sleep",
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!(failed.status.code(), Some(3), "{}", printed(&failed));
    assert_eq!(String::from_utf8_lossy(&failed.stdout), "out\n");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("err"));
    let through_lab = lab.causeway(&[
        "lab",
        "exec",
        "--context",
        C1,
        "-n",
        "sample",
        "deploy/sleep",
        "--",
        "sh",
        "-c",
        "curl -s helloworld:5000/hello; exit 4",
    ]);
    assert_eq!(
        through_lab.status.code(),
        Some(4),
        "{}",
        printed(&through_lab)
    );
    assert!(String::from_utf8_lossy(&through_lab.stdout).starts_with("Hello version"));

    // What kubectl shows of the pods.
    let pods = lab.ok(C1, &["get", "pods", "-n", "sample", "-o", "wide"]);
    for line in pods.lines().skip(1) {
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(columns[1..3], ["1/1", "Running"], "{pods}");
        assert_eq!(columns[6], "cluster01-control-plane", "{pods}");
    }
}

#[test]
fn pods_get_their_volumes_environment_and_service_account_tokens() {
    let lab = TestLab::new();
    lab.create("cluster01-kind.yaml");
    lab.ok(C1, &["create", "namespace", "sample"]);
    lab.apply(C1, "sample", &lab_data("pod-inputs.yaml"));
    lab.ok(
        C1,
        &[
            "wait",
            "-n",
            "sample",
            "--for=condition=Ready",
            "pod/inputs",
            "--timeout=60s",
        ],
    );
    let run = |script: &str| {
        let output = lab.exec(C1, "sample", "inputs", "main", &["sh", "-c", script]);
        assert!(output.status.success(), "{script}: {}", printed(&output));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let environment: std::collections::BTreeMap<String, String> = run("env")
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let pod_ip = lab.ok(
        C1,
        &[
            "get",
            "pod",
            "-n",
            "sample",
            "inputs",
            "-o",
            "jsonpath={.status.podIP}",
        ],
    );
    let expected = [
        ("PLAIN", "plain-value"),
        ("EXPANDED", "plain-value-expanded"),
        ("POD_NAME", "inputs"),
        ("POD_NAMESPACE", "sample"),
        ("APP_LABEL", "inputs"),
        ("POD_IP", pod_ip.as_str()),
        ("HOST_IP", "172.18.0.2"),
        ("ACCOUNT", "inputs"),
        ("NODE", "cluster01-control-plane"),
        ("CPU_REQUEST", "1"),
        ("MEMORY_LIMIT_MI", "64"),
        ("MODE", "fast"),
        ("PASSWORD", "s3cret"),
        ("CFG_greeting", "hello"),
        ("KUBERNETES_SERVICE_HOST", "10.11.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("HOSTNAME", "inputs"),
    ];
    for (name, value) in expected {
        assert_eq!(
            environment.get(name).map(String::as_str),
            Some(value),
            "{name}"
        );
    }
    // The volumes, at their mount paths; the working directory; the init container's work.
    assert_eq!(run("pwd"), "/scratch");
    assert_eq!(run("cat /scratch/note"), "prepared-by-init");
    assert_eq!(run("cat /etc/settings/mode"), "fast");
    assert_eq!(run("cat /etc/credentials/password"), "s3cret");
    assert_eq!(run("stat -L -c %a /etc/credentials/password"), "440");
    assert_eq!(run("stat -L -c %g /etc/credentials/password"), "1337");
    assert!(run("touch /etc/credentials/x 2>&1 || echo refused").ends_with("refused"));
    assert_eq!(run("cat /etc/podinfo/name"), "inputs");
    assert_eq!(
        run("cat /etc/podinfo/labels"),
        "app=\"inputs\"\nversion=\"v7\""
    );
    // kubectl apply's own annotation comes first.
    assert!(run("cat /etc/podinfo/annotations").ends_with("\npurpose=\"testing\""));
    assert_eq!(run("cat /var/run/secrets/tokens/greeting"), "hello");
    assert_eq!(
        run("cat /var/run/secrets/kubernetes.io/serviceaccount/namespace"),
        "sample"
    );
    assert_eq!(run("hostname"), "inputs");
    assert!(run("cat /etc/hosts").ends_with(&format!("{pod_ip}\tinputs")));
    // The API server's CA, and kube-root-ca.crt, are the cluster's.
    let ca = run("cat /var/run/secrets/kubernetes.io/serviceaccount/ca.crt");
    let kubeconfig = kube::config::Kubeconfig::read_from(lab.kubeconfig()).unwrap();
    let cluster_ca = kubeconfig
        .clusters
        .iter()
        .find(|cluster| cluster.name == C1)
        .unwrap()
        .cluster
        .clone()
        .unwrap()
        .certificate_authority_data
        .unwrap();
    use base64::Engine;
    let cluster_ca = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(cluster_ca)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ca, cluster_ca.trim());
    // The pod's CA lets it call the API with its own token, from inside.
    let whoami = run(
        "curl -sS --cacert /var/run/secrets/kubernetes.io/serviceaccount/ca.crt -H \"Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)\" https://kubernetes.default.svc/api/v1/namespaces/sample/pods/inputs -o /dev/null -w '%{http_code}'",
    );
    assert_eq!(whoami, "200");

    // The cluster's TokenReview accepts both tokens, for their audiences, bound to the pod.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions {
                context: Some(C1.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let reviews: kube::Api<k8s_openapi::api::authentication::v1::TokenReview> =
            kube::Api::all(client);
        for (file, audience) in [
            ("/var/run/secrets/tokens/istio-token", Some("istio-ca")),
            ("/var/run/secrets/kubernetes.io/serviceaccount/token", None),
        ] {
            let token = run(&format!("cat {file}"));
            let mut spec = serde_json::json!({"token": token});
            if let Some(audience) = audience {
                spec["audiences"] = serde_json::json!([audience]);
            }
            let review = serde_json::from_value(serde_json::json!({"spec": spec})).unwrap();
            let status = reviews
                .create(&Default::default(), &review)
                .await
                .unwrap()
                .status
                .unwrap();
            assert_eq!(status.authenticated, Some(true), "{file}: {status:?}");
            let user = status.user.unwrap();
            assert_eq!(
                user.username.as_deref(),
                Some("system:serviceaccount:sample:inputs")
            );
            assert_eq!(
                user.extra.unwrap()["authentication.kubernetes.io/pod-name"],
                ["inputs"]
            );
        }
    });

    // A changed ConfigMap reaches the volume, all at once.
    lab.ok(
        C1,
        &[
            "patch",
            "configmap",
            "settings",
            "-n",
            "sample",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"mode":"slow"}}"#,
        ],
    );
    eventually("the volume to show the new value", WAIT, || {
        let mode = run("cat /etc/settings/mode");
        if mode == "slow" { Ok(()) } else { Err(mode) }
    });
}

#[test]
fn workloads_scale_roll_crash_and_go_as_on_kubernetes() {
    let lab = TestLab::new();
    lab.create("cluster01-kind.yaml");
    lab.ok(C1, &["create", "namespace", "sample"]);
    lab.apply(C1, "sample", &sample("sleep.yaml"));
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
    let running = |selector: &str| -> Result<Vec<String>, String> {
        let listed = lab.ok(
            C1,
            &[
                "get",
                "pods",
                "-n",
                "sample",
                "-l",
                selector,
                "--no-headers",
            ],
        );
        let lines: Vec<String> = listed.lines().map(str::to_owned).collect();
        Ok(lines)
    };

    // Scale up and down; kubectl get pods tells the truth within a second of each change.
    lab.ok(
        C1,
        &["scale", "deploy/sleep", "-n", "sample", "--replicas=3"],
    );
    let started = Instant::now();
    eventually("three running pods", WAIT, || {
        let pods = running("app=sleep")?;
        let ready = pods
            .iter()
            .filter(|pod| pod.contains(" 1/1 ") && pod.contains("Running"))
            .count();
        if ready == 3 {
            Ok(())
        } else {
            Err(pods.join("\n"))
        }
    });
    eprintln!("scaled to 3 ready pods in {:?}", started.elapsed());
    lab.ok(
        C1,
        &[
            "wait",
            "--for=condition=available",
            "deploy/sleep",
            "-n",
            "sample",
            "--timeout=30s",
        ],
    );
    lab.ok(
        C1,
        &["scale", "deploy/sleep", "-n", "sample", "--replicas=1"],
    );
    eventually("one pod left", WAIT, || {
        let pods = running("app=sleep")?;
        if pods.len() == 1 {
            Ok(())
        } else {
            Err(pods.join("\n"))
        }
    });

    // A rolling update replaces the pod; rollout status waits for it.
    let before = lab.pod(C1, "sample", "app=sleep");
    lab.ok(
        C1,
        &["set", "env", "deploy/sleep", "-n", "sample", "ROLLED=yes"],
    );
    let status = lab.ok(
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
    assert!(status.contains("successfully rolled out"), "{status}");
    eventually("the old pod to go", WAIT, || {
        let pods = running("app=sleep")?;
        if pods.len() == 1 && !pods[0].starts_with(&before) {
            Ok(())
        } else {
            Err(pods.join("\n"))
        }
    });
    let after = lab.pod(C1, "sample", "app=sleep");
    let rolled = lab.exec(C1, "sample", &after, "sleep", &["sh", "-c", "echo $ROLLED"]);
    assert_eq!(String::from_utf8_lossy(&rolled.stdout).trim(), "yes");
    let sets = lab.ok(
        C1,
        &[
            "get",
            "rs",
            "-n",
            "sample",
            "-l",
            "app=sleep",
            "--no-headers",
        ],
    );
    assert_eq!(sets.lines().count(), 2, "{sets}");

    // A deleted pod's processes and namespace are gone within its grace period.
    lab.apply(C1, "sample", &lab_data("workloads.yaml"));
    lab.ok(
        C1,
        &[
            "wait",
            "-n",
            "sample",
            "--for=condition=Ready",
            "pod/graceful",
            "--timeout=60s",
        ],
    );
    let uid = lab.ok(
        C1,
        &[
            "get",
            "pod",
            "graceful",
            "-n",
            "sample",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    );
    let namespace = format!(
        "cluster01-pod-{}",
        uid.replace('-', "").chars().take(12).collect::<String>()
    );
    assert!(std::path::Path::new("/run/netns").join(&namespace).exists());
    assert!(process_running("sleep 3599"));
    // It ignores SIGTERM: kubectl delete waits out the grace period, then it is killed.
    let deleted = Instant::now();
    lab.ok(
        C1,
        &[
            "delete",
            "pod",
            "graceful",
            "-n",
            "sample",
            "--grace-period=3",
        ],
    );
    let took = deleted.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(!std::path::Path::new("/run/netns").join(&namespace).exists());
    assert!(!process_running("sleep 3599"));

    // A crashing container restarts with back-off; its last run's log is kept.
    eventually("the crash loop", Duration::from_secs(60), || {
        let status = lab.ok(C1, &["get", "pod", "crasher", "-n", "sample", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].lastState.terminated.exitCode}"]);
        let parts: Vec<&str> = status.split(' ').collect();
        match parts.as_slice() {
            ["CrashLoopBackOff", restarts, "3"] if restarts.parse::<u32>().unwrap_or(0) >= 1 => {
                Ok(())
            }
            _ => Err(status),
        }
    });
    let listed = lab.ok(
        C1,
        &["get", "pod", "crasher", "-n", "sample", "--no-headers"],
    );
    assert!(listed.contains("CrashLoopBackOff"), "{listed}");
    assert_eq!(
        lab.ok(C1, &["logs", "crasher", "-n", "sample", "--previous"]),
        "boom\n"
    );

    // Init containers run first, in order; a readiness probe holds the pod back until it passes.
    let probed = lab.ok(
        C1,
        &[
            "get",
            "pod",
            "probed",
            "-n",
            "sample",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
    );
    assert_eq!(probed, "False");
    assert_eq!(
        lab.ok(C1, &["logs", "probed", "-n", "sample", "-c", "main"]),
        "first second\n"
    );
    lab.ok(
        C1,
        &[
            "exec",
            "-n",
            "sample",
            "probed",
            "-c",
            "main",
            "--",
            "touch",
            "/work/ready",
        ],
    );
    lab.ok(
        C1,
        &[
            "wait",
            "-n",
            "sample",
            "--for=condition=Ready",
            "pod/probed",
            "--timeout=20s",
        ],
    );

    // A pod that runs to completion; kubectl logs -f follows it to its end.
    eventually("the pod to start", WAIT, || {
        let phase = lab.ok(
            C1,
            &[
                "get",
                "pod",
                "once",
                "-n",
                "sample",
                "-o",
                "jsonpath={.status.containerStatuses[0].state}",
            ],
        );
        if phase.contains("running") || phase.contains("terminated") {
            Ok(())
        } else {
            Err(phase)
        }
    });
    let followed = lab.ok(C1, &["logs", "-f", "once", "-n", "sample"]);
    assert_eq!(followed, "line 1\nline 2\nline 3\n");
    eventually("the pod to complete", WAIT, || {
        let phase = lab.ok(
            C1,
            &[
                "get",
                "pod",
                "once",
                "-n",
                "sample",
                "-o",
                "jsonpath={.status.phase}",
            ],
        );
        if phase == "Succeeded" {
            Ok(())
        } else {
            Err(phase)
        }
    });

    // An image the lab cannot run fails the pod, naming the image.
    eventually("the image error", WAIT, || {
        let message = lab.ok(C1, &["get", "pod", "web", "-n", "sample", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}"]);
        if message.starts_with("ErrImagePull") || message.starts_with("ImagePullBackOff") {
            Ok(message)
        } else {
            Err(message)
        }
    });
    let described = lab.ok(C1, &["describe", "pod", "web", "-n", "sample"]);
    assert!(
        described.contains("\"nginx:1.27\" is not available in the lab"),
        "{described}"
    );
}

/// Whether a process whose command line contains `marker` runs on the machine.
fn process_running(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .map(|line| {
                String::from_utf8_lossy(&line)
                    .replace('\0', " ")
                    .contains(marker)
            })
            .unwrap_or(false)
    })
}

#[test]
fn two_clusters_reach_each_others_pods_only_when_connected_and_load_balancers_always() {
    let lab = TestLab::new();
    let sleep = cluster_with_samples(&lab, "cluster01-kind.yaml", C1);
    lab.create("cluster02-kind.yaml");
    lab.ok(C2, &["create", "namespace", "sample"]);
    lab.apply(C2, "sample", &sample("helloworld.yaml"));
    lab.wait_ready(C2, "sample", "app=helloworld");
    // The seeds' metallb pools, applied with kubectl as the guides do.
    for (context, file) in [
        (C1, "topologies/cluster01-lb-pool.yaml"),
        (C2, "topologies/cluster02-lb-pool.yaml"),
    ] {
        let applied = lab.apply(context, "metallb-system", &sample(file));
        assert!(
            applied.contains("ipaddresspool.metallb.io/")
                && applied.contains("l2advertisement.metallb.io/empty"),
            "{applied}"
        );
    }
    lab.ok(
        C2,
        &[
            "expose",
            "deploy/helloworld-v2",
            "-n",
            "sample",
            "--name",
            "hw-lb",
            "--type",
            "LoadBalancer",
            "--port",
            "5000",
        ],
    );
    let address = lab.eventually_printed(
        "a LoadBalancer address",
        WAIT,
        C2,
        &[
            "get",
            "svc",
            "hw-lb",
            "-n",
            "sample",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ],
    );
    assert_eq!(
        address, "172.18.12.0",
        "the first address of the seed's pool"
    );
    let listed = lab.ok(C2, &["get", "svc", "hw-lb", "-n", "sample"]);
    assert!(
        listed.contains("172.18.12.0") && listed.contains("5000:3"),
        "{listed}"
    );

    let v2 = lab.pod(C2, "sample", "version=v2");
    let v2_ip = lab.ok(
        C2,
        &[
            "get",
            "pod",
            &v2,
            "-n",
            "sample",
            "-o",
            "jsonpath={.status.podIP}",
        ],
    );
    let remote_pod = format!("{v2_ip}:5000/hello");
    let load_balanced = format!("{address}:5000/hello");
    // Separate networks: the remote pod does not answer; its LoadBalancer address does.
    let refused = curl(&lab, C1, &sleep, &remote_pod).unwrap_err();
    assert!(
        refused.contains("Couldn't connect") || refused.contains("unreachable"),
        "{refused}"
    );
    assert!(
        curl(&lab, C1, &sleep, &load_balanced)
            .unwrap()
            .starts_with("Hello version: v2")
    );

    // lab connect routes the clusters to each other; disconnect takes it back.
    assert!(
        lab.causeway(&["lab", "connect", "cluster01", "cluster02"])
            .status
            .success()
    );
    let answer = eventually("the remote pod to answer", WAIT, || {
        curl(&lab, C1, &sleep, &remote_pod)
    });
    assert_eq!(answer, format!("Hello version: v2, instance: {v2}\n"));
    let remote_service = lab.ok(
        C2,
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
    assert!(
        curl(&lab, C1, &sleep, &format!("{remote_service}:5000/hello"))
            .unwrap()
            .starts_with("Hello version")
    );
    assert!(
        lab.causeway(&["lab", "disconnect", "cluster01", "cluster02"])
            .status
            .success()
    );
    assert!(curl(&lab, C1, &sleep, &remote_pod).is_err());
    assert!(curl(&lab, C1, &sleep, &load_balanced).is_ok());

    // The seeds' own routes, added in the nodes by hand, do the same.
    let node1 = lab.node_address("cluster01");
    let node2 = lab.node_address("cluster02");
    for (cluster, subnet, via) in [
        ("cluster01", "10.20.0.0/16", &node2),
        ("cluster02", "10.10.0.0/16", &node1),
    ] {
        let added = lab.causeway(&[
            "lab",
            "node-exec",
            cluster,
            "--",
            "ip",
            "route",
            "add",
            subnet,
            "via",
            via,
            "dev",
            "eth0",
        ]);
        assert!(added.status.success(), "{}", printed(&added));
    }
    eventually(
        "the remote pod to answer through the seeds' routes",
        WAIT,
        || curl(&lab, C1, &sleep, &remote_pod),
    );

    // An address pool off the lab network is refused, with an event saying why.
    lab.apply(C2, "metallb-system", "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: home\nspec:\n  addresses: [192.168.7.0/24]\n  autoAssign: false\n");
    lab.ok(
        C2,
        &[
            "expose",
            "deploy/helloworld-v1",
            "-n",
            "sample",
            "--name",
            "hw-home",
            "--type",
            "LoadBalancer",
            "--port",
            "5000",
        ],
    );
    lab.ok(
        C2,
        &[
            "annotate",
            "svc",
            "hw-home",
            "-n",
            "sample",
            "metallb.universe.tf/address-pool=home",
        ],
    );
    let event = eventually("the refusal", WAIT, || {
        let events = lab.ok(
            C2,
            &[
                "get",
                "events",
                "-n",
                "sample",
                "--field-selector",
                "involvedObject.name=hw-home,reason=AllocationFailed",
                "-o",
                "jsonpath={.items[*].message}",
            ],
        );
        if events.contains("outside the lab network") {
            Ok(events)
        } else {
            Err(events)
        }
    });
    assert!(event.contains("192.168.7.0-192.168.7.255"), "{event}");
    assert!(
        lab.ok(C2, &["get", "svc", "hw-home", "-n", "sample"])
            .contains("<pending>")
    );

    // Containment, checked without sending anything: from a pod and from a node, an address
    // outside the lab has no route.
    for destination in ["1.1.1.1", "192.168.1.1", "172.16.0.1"] {
        let from_pod = lab.exec(
            C1,
            "sample",
            &sleep,
            "sleep",
            &["ip", "route", "get", destination],
        );
        assert!(!from_pod.status.success());
        assert!(
            printed(&from_pod).contains("Network is unreachable"),
            "{}",
            printed(&from_pod)
        );
        let from_node = lab.causeway(&[
            "lab",
            "node-exec",
            "cluster02",
            "--",
            "ip",
            "route",
            "get",
            destination,
        ]);
        assert!(
            printed(&from_node).contains("Network is unreachable"),
            "{}",
            printed(&from_node)
        );
    }
}

/// What the host shows of its own network and mounts, and the lab processes running.
fn host_state() -> (String, String, String, Vec<String>) {
    let run = |program: &str, args: &[&str]| {
        let output = Command::new(program).args(args).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let links = run("ip", &["-o", "link", "show"]);
    let routes = run("ip", &["route", "show", "table", "all"]);
    let rules = run("iptables-save", &[])
        .lines()
        .filter(|line| !line.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("cluster0"))
                .collect()
        })
        .unwrap_or_default();
    namespaces.sort();
    (links + &routes, rules, lab_mounts(), namespaces)
}

/// Mounts of the host that belong to the lab's clusters.
fn lab_mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| {
            line.contains("cluster01")
                || line.contains("cluster02")
                || line.contains("causeway-lab-")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn lab_down_after_kill_9_of_everything_leaves_nothing() {
    let before = host_state();
    let lab = TestLab::new();
    let sleep = cluster_with_samples(&lab, "cluster01-kind.yaml", C1);
    lab.create("cluster02-kind.yaml");
    lab.ok(C2, &["create", "namespace", "sample"]);
    lab.apply(C2, "sample", &sample("helloworld.yaml"));
    lab.wait_ready(C2, "sample", "app=helloworld");
    assert!(
        lab.causeway(&["lab", "connect", "cluster01", "cluster02"])
            .status
            .success()
    );
    assert!(curl(&lab, C1, &sleep, "helloworld:5000/hello").is_ok());
    let during = host_state();
    assert!(
        during.3.len() >= 7,
        "two nodes and their pods: {:?}",
        during.3
    );

    // kill -9 of every cluster process; their pods' processes are orphans now.
    for cluster in ["cluster01", "cluster02"] {
        let pid = lab.api_server_pid(cluster);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        process_running("/bin/sleep infinity"),
        "the pods outlive their cluster's process"
    );
    let down = lab.causeway(&["lab", "down"]);
    assert!(down.status.success(), "{}", printed(&down));
    lab.clusters.lock().unwrap().clear();

    let after = host_state();
    assert_eq!(after.3, before.3, "network namespaces left");
    assert_eq!(after.0, before.0, "the host's links and routes changed");
    assert_eq!(after.1, before.1, "the host's iptables rules changed");
    assert_eq!(after.2, before.2, "mounts left");
    assert!(
        !process_running("/bin/sleep infinity"),
        "pod processes left"
    );
    assert!(!process_running("lab app helloworld"), "pod processes left");
}
