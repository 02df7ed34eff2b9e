//! What installing the mesh costs on a lab cluster:
//!
//! - `causeway install` of the multi-primary topology file until istiod is available (the
//!   command's own wall time, uninstalled between runs);
//! - a pod's time from creation until Ready with a sidecar injected by the webhook (a namespace
//!   labelled `istio-injection=enabled`), side by side with the same pod without one (an
//!   unlabelled namespace), created in turn so that both see the machine in the same state;
//! - memory at idle of discovery running as a pod and of one sidecar, beside the sleep
//!   container it serves (RSS, and PSS, which shares the `causeway` binary's pages out).
//!
//! `cargo bench --bench mesh_install` measures (`scripts/bench-install` builds and runs it);
//! `cargo test --benches` runs it once, small. Prints a table, then one line of JSON. Needs root.

mod lab_support;

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use lab_support::{Lab, create_namespace, median, memory, samples, until_ready};

struct Plan {
    installs: usize,
    pods: usize,
    idle: Duration,
}

fn install(lab: &Lab, context: &str) -> Duration {
    let file = samples().join("topologies/multi-primary/cluster01.yaml");
    let started = Instant::now();
    lab.causeway(&[
        "install",
        "-y",
        "-f",
        file.to_str().unwrap(),
        "--context",
        context,
    ]);
    started.elapsed()
}

/// The sleep sample's Deployment, named `name`.
fn sleep_deployment(name: &str) -> k8s_openapi::api::apps::v1::Deployment {
    let text = std::fs::read_to_string(samples().join("sleep.yaml")).unwrap();
    let documents: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&text).unwrap();
    let mut deployment = documents
        .into_iter()
        .find(|document| document["kind"] == "Deployment")
        .unwrap();
    deployment["metadata"]["name"] = name.into();
    for labels in [
        "/spec/selector/matchLabels",
        "/spec/template/metadata/labels",
    ] {
        deployment.pointer_mut(labels).unwrap()["app"] = name.into();
    }
    deployment["spec"]["template"]["spec"]["serviceAccountName"] = "default".into();
    serde_json::from_value(deployment).unwrap()
}

/// The processes of the cluster's pods whose command line has `words` in a row.
fn processes_running(lab: &Lab, cluster: &str, words: &[&str]) -> Vec<u32> {
    let (_, pods) = lab.processes(cluster);
    pods.into_iter()
        .filter(|pid| {
            let line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let arguments: Vec<String> = line
                .split(|byte| *byte == 0)
                .map(|word| String::from_utf8_lossy(word).into_owned())
                .collect();
            arguments.windows(words.len()).any(|window| window == words)
        })
        .collect()
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("the install benchmark makes network namespaces and needs root");
        std::process::exit(1);
    }
    let plan = if std::env::args().any(|argument| argument == "--bench") {
        Plan {
            installs: 5,
            pods: 10,
            idle: Duration::from_secs(15),
        }
    } else {
        Plan {
            installs: 1,
            pods: 1,
            idle: Duration::from_secs(1),
        }
    };
    let mut lab = Lab {
        directory: tempfile::tempdir().unwrap(),
        clusters: Vec::new(),
    };
    lab.create("bench-mesh", "10.130.0.0/16", "10.131.0.0/16");
    let context = "kind-bench-mesh";
    let mut installs: Vec<f64> = Vec::new();
    for run in 0..plan.installs {
        if run > 0 {
            lab.causeway(&["uninstall", "-y", "--purge", "--context", context]);
        }
        installs.push(install(&lab, context).as_secs_f64() * 1000.0);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (meshed, plain) = runtime.block_on(async {
        let client = lab.client("bench-mesh").await;
        create_namespace(&client, "meshed").await;
        create_namespace(&client, "plain").await;
        let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
        let mut labelled = namespaces.get("meshed").await.unwrap();
        labelled
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("istio-injection".into(), "enabled".into());
        namespaces
            .replace("meshed", &PostParams::default(), &labelled)
            .await
            .unwrap();
        let (mut meshed, mut plain) = (Vec::new(), Vec::new());
        for run in 0..plan.pods {
            for (namespace, times) in [("meshed", &mut meshed), ("plain", &mut plain)] {
                let name = format!("sleep-{run}");
                let deployments = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(
                    client.clone(),
                    namespace,
                );
                let create = async {
                    deployments
                        .create(&PostParams::default(), &sleep_deployment(&name))
                        .await
                        .unwrap();
                };
                let ready = until_ready(&client, namespace, run + 1, create).await;
                // The pods of earlier runs are Ready from the start; the newest is this run's.
                let newest = ready.into_iter().max().unwrap();
                times.push(newest.as_secs_f64() * 1000.0);
            }
        }
        (meshed, plain)
    });
    std::thread::sleep(plan.idle);
    let discovery = memory(&processes_running(&lab, "bench-mesh", &["discovery"]));
    let sidecars = processes_running(&lab, "bench-mesh", &["proxy", "sidecar"]);
    let one_sidecar = memory(&sidecars[..1]);
    let sleeps = processes_running(&lab, "bench-mesh", &["/bin/sleep", "infinity"]);
    let one_app = memory(&sleeps[..1]);
    let install_p50 = median(&mut installs.clone());
    let meshed_p50 = median(&mut meshed.clone());
    let plain_p50 = median(&mut plain.clone());
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!();
    println!("| mesh install | value | peer | target |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| `causeway install` until istiod is available, p50 of {} | {install_p50:.0} ms | | < 5000 ms |",
        installs.len()
    );
    println!(
        "| pod created -> Ready, with the injected sidecar, p50 of {} | {meshed_p50:.0} ms | {plain_p50:.0} ms without ({:.2}x) | < 2000 ms |",
        meshed.len(),
        meshed_p50 / plain_p50.max(1.0)
    );
    println!(
        "| discovery as a pod, idle: PSS (RSS) | {:.1} MB ({:.1}) | | |",
        mb(discovery.1),
        mb(discovery.0)
    );
    println!(
        "| one sidecar, idle: PSS (RSS) | {:.1} MB ({:.1}) | sleep app {:.1} MB ({:.1}) | |",
        mb(one_sidecar.1),
        mb(one_sidecar.0),
        mb(one_app.1),
        mb(one_app.0)
    );
    println!(
        "{}",
        serde_json::json!({
            "install_ms_p50": install_p50,
            "install_ms": installs,
            "meshed_pod_ready_ms_p50": meshed_p50,
            "plain_pod_ready_ms_p50": plain_p50,
            "discovery_pod_pss_mb": mb(discovery.1),
            "discovery_pod_rss_mb": mb(discovery.0),
            "sidecar_pss_mb": mb(one_sidecar.1),
            "sidecar_rss_mb": mb(one_sidecar.0),
        })
    );
}
