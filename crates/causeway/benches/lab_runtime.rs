//! The lab runtime's benchmark: how fast a lab cluster runs workloads and what an idle lab costs.
//!
//! - apply to Ready: the seeds' helloworld (a Service, two Deployments) created through the API,
//!   each pod's time until the API shows it Ready (the kube client stands in for `kubectl apply`,
//!   whose own start-up is not the lab's);
//! - pods started per second: a Deployment of the sleep sample scaled from 0 to N;
//! - memory of an idle two-cluster lab with the samples (helloworld and sleep) deployed in both,
//!   after 15 s without requests (the clusters give their code pages back every 10 s): the
//!   clusters' processes and their pods' processes, RSS and PSS (the processes share the
//!   `causeway` binary, so PSS, which shares its pages out, is the honest total);
//! - a ClusterIP's added latency: HTTP requests on a new connection each from the sleep pod to
//!   helloworld, at its pod address and at its ClusterIP in turn, client and server pinned to
//!   core 0; the median of the pairs' differences, and medians over runs.
//!
//! `cargo bench --bench lab_runtime` measures (`scripts/bench-lab-runtime` builds and runs it);
//! `cargo test --benches` runs it once, small. Prints a table, then one line of JSON. Needs root.

mod lab_support;

use std::process::Command;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use lab_support::{Lab, apply, create_namespace, median, memory, samples, until_ready};

struct Plan {
    ready_runs: usize,
    scale_to: usize,
    latency_runs: usize,
    requests: usize,
    idle: Duration,
}

/// The client run in the sleep pod: `n` pairs of HTTP GETs on a new connection each, one to the
/// pod IP and one to the ClusterIP in turn, so that both see the machine in the same state.
/// Prints, in ns: the pod IP's p50 and p99, the ClusterIP's, and the median of the pairs'
/// differences.
const CLIENT: &str = r"import socket, sys, time
direct, service, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
request = b'GET /hello HTTP/1.1\r\nHost: helloworld\r\nConnection: close\r\n\r\n'
def once(host):
    start = time.perf_counter_ns()
    s = socket.create_connection((host, port))
    s.sendall(request)
    while s.recv(4096):
        pass
    s.close()
    return time.perf_counter_ns() - start
pairs = [(once(direct), once(service)) for _ in range(n)]
def p(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]
ds = [d for d, _ in pairs]
ss = [s for _, s in pairs]
print(p(ds, 0.5), p(ds, 0.99), p(ss, 0.5), p(ss, 0.99), p([s - d for d, s in pairs], 0.5))
";

fn pin(pids: &[u32]) {
    for pid in pids {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", "0", &pid.to_string()])
            .output();
    }
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("the lab runtime benchmark makes network namespaces and needs root");
        std::process::exit(1);
    }
    let plan = if std::env::args().any(|argument| argument == "--bench") {
        Plan {
            ready_runs: 5,
            scale_to: 30,
            latency_runs: 5,
            requests: 1000,
            idle: Duration::from_secs(15),
        }
    } else {
        Plan {
            ready_runs: 1,
            scale_to: 3,
            latency_runs: 1,
            requests: 20,
            idle: Duration::from_secs(1),
        }
    };
    let mut lab = Lab {
        directory: tempfile::tempdir().unwrap(),
        clusters: Vec::new(),
    };
    lab.create("bench-a", "10.110.0.0/16", "10.111.0.0/16");
    lab.create("bench-b", "10.120.0.0/16", "10.121.0.0/16");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let helloworld = std::fs::read_to_string(samples().join("helloworld.yaml")).unwrap();
    let sleep = std::fs::read_to_string(samples().join("sleep.yaml")).unwrap();

    let (per_pod, pods_per_second) = runtime.block_on(async {
        let client = lab.client("bench-a").await;
        let mut per_pod: Vec<f64> = Vec::new();
        for run in 0..plan.ready_runs {
            let namespace = format!("ready-{run}");
            create_namespace(&client, &namespace).await;
            let times = until_ready(
                &client,
                &namespace,
                2,
                apply(&client, &namespace, &helloworld),
            )
            .await;
            per_pod.extend(times.iter().map(|time| time.as_secs_f64() * 1000.0));
            let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
                .delete(&namespace, &Default::default())
                .await;
        }
        create_namespace(&client, "scale").await;
        let scaled = sleep.replace("replicas: 1", "replicas: 0");
        apply(&client, "scale", &scaled).await;
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(client.clone(), "scale");
        let patch = serde_json::json!({"spec": {"replicas": plan.scale_to}});
        let times = until_ready(&client, "scale", plan.scale_to, async {
            deployments
                .patch("sleep", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        })
        .await;
        let slowest = times.iter().max().copied().unwrap_or_default();
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .delete("scale", &Default::default())
            .await;
        (per_pod, plan.scale_to as f64 / slowest.as_secs_f64())
    });
    let ready_p50 = median(&mut per_pod.clone());
    let ready_max = per_pod.iter().copied().fold(0.0, f64::max);

    // The samples in both clusters, then the lab idles.
    runtime.block_on(async {
        for cluster in ["bench-a", "bench-b"] {
            let client = lab.client(cluster).await;
            create_namespace(&client, "sample").await;
            until_ready(&client, "sample", 3, async {
                apply(&client, "sample", &helloworld).await;
                apply(&client, "sample", &sleep).await;
            })
            .await;
        }
    });
    std::thread::sleep(plan.idle);
    let mut clusters_memory = (0, 0);
    let mut pods_memory = (0, 0);
    for cluster in ["bench-a", "bench-b"] {
        let (cluster_pids, pod_pids) = lab.processes(cluster);
        let (rss, pss) = memory(&cluster_pids);
        clusters_memory = (clusters_memory.0 + rss, clusters_memory.1 + pss);
        let (rss, pss) = memory(&pod_pids);
        pods_memory = (pods_memory.0 + rss, pods_memory.1 + pss);
    }
    let total_rss = (clusters_memory.0 + pods_memory.0) as f64 / 1024.0;
    let total_pss = (clusters_memory.1 + pods_memory.1) as f64 / 1024.0;

    // A ClusterIP's added latency, against the pod's own address.
    let context = "kind-bench-a";
    let get = |what: &str| {
        let output = Command::new("kubectl")
            .args(["--context", context, "get", "-n", "sample"])
            .args(what.split(' '))
            .env("KUBECONFIG", lab.kubeconfig())
            .output()
            .expect("kubectl runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let pod_ip = get("pod -l version=v1 -o jsonpath={.items[0].status.podIP}");
    let cluster_ip = get("svc helloworld -o jsonpath={.spec.clusterIP}");
    // Only v1 behind the Service, so that both paths reach the same process.
    Command::new("kubectl")
        .args([
            "--context",
            context,
            "scale",
            "-n",
            "sample",
            "deploy/helloworld-v2",
            "--replicas=0",
        ])
        .env("KUBECONFIG", lab.kubeconfig())
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let (_, pod_pids) = lab.processes("bench-a");
    pin(&pod_pids);
    let mut runs: [Vec<f64>; 5] = Default::default();
    for _ in 0..plan.latency_runs {
        let requests = plan.requests.to_string();
        let output = lab.causeway(&[
            "lab",
            "exec",
            "--context",
            context,
            "-n",
            "sample",
            "deploy/sleep",
            "--",
            "taskset",
            "-c",
            "0",
            "python3",
            "-c",
            CLIENT,
            &pod_ip,
            &cluster_ip,
            "5000",
            &requests,
        ]);
        let text = String::from_utf8_lossy(&output.stdout);
        let numbers: Vec<f64> = text
            .split_whitespace()
            .filter_map(|number| number.parse().ok())
            .collect();
        assert_eq!(numbers.len(), 5, "the client printed {text:?}");
        for (run, number) in runs.iter_mut().zip(numbers) {
            run.push(number / 1000.0);
        }
    }
    let [direct_p50, direct_p99, service_p50, service_p99, added] =
        runs.map(|mut run| median(&mut run));

    println!();
    println!("| lab runtime | value | target |");
    println!("| --- | ---: | ---: |");
    println!(
        "| helloworld applied -> each pod Ready, p50 of {} pods | {ready_p50:.0} ms | < 1000 ms |",
        per_pod.len()
    );
    println!("| same, slowest pod | {ready_max:.0} ms | < 1000 ms |");
    println!(
        "| pods started per second (sleep, 0 -> {}) | {pods_per_second:.1} | |",
        plan.scale_to
    );
    println!(
        "| idle two-cluster lab with the samples, PSS (RSS) | {total_pss:.1} MB ({total_rss:.1} MB) | < 50 MB |"
    );
    println!(
        "|   the two clusters' processes, PSS (RSS) | {:.1} MB ({:.1} MB) | |",
        clusters_memory.1 as f64 / 1024.0,
        clusters_memory.0 as f64 / 1024.0
    );
    println!(
        "|   their six pods' processes, PSS (RSS) | {:.1} MB ({:.1} MB) | |",
        pods_memory.1 as f64 / 1024.0,
        pods_memory.0 as f64 / 1024.0
    );
    println!(
        "| HTTP request on a new connection, pod IP, p50 / p99 | {direct_p50:.0} / {direct_p99:.0} us | |"
    );
    println!(
        "| same, through the ClusterIP, p50 / p99 | {service_p50:.0} / {service_p99:.0} us | |"
    );
    println!(
        "| ClusterIP added, median of paired differences | {added:.0} us ({:.2}x) | |",
        (direct_p50 + added) / direct_p50
    );
    println!(
        "{}",
        serde_json::json!({
            "ready_p50_ms": (ready_p50 * 10.0).round() / 10.0,
            "ready_max_ms": (ready_max * 10.0).round() / 10.0,
            "pods_per_second": (pods_per_second * 10.0).round() / 10.0,
            "idle_lab_pss_mb": (total_pss * 10.0).round() / 10.0,
            "idle_lab_rss_mb": (total_rss * 10.0).round() / 10.0,
            "clusters_pss_mb": (clusters_memory.1 as f64 / 102.4).round() / 10.0,
            "pods_pss_mb": (pods_memory.1 as f64 / 102.4).round() / 10.0,
            "pod_ip_p50_us": direct_p50.round(),
            "cluster_ip_p50_us": service_p50.round(),
            "cluster_ip_added_us": added.round(),
        })
    );
}
