//! The lab API server under the two loads the mesh puts on it: one write seen by many watchers
//! (every proxy's control plane watching the same Services), and a large list (a control plane
//! starting against a big cluster). `cargo bench --bench apiserver` measures; without `--bench`
//! (as `cargo test --benches` runs it) it runs a small version once as a smoke test.
//! `scripts/bench-lab` pins it to one core and prints the table.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use causeway_lab::testing::{client, config, start};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

struct Sizes {
    watchers: usize,
    writes: usize,
    pods: usize,
    list_runs: usize,
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

async fn fan_out(client: &kube::Client, sizes: &Sizes) -> Vec<Duration> {
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    let object: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "fan-out"}, "data": {"write": "0"}}))
            .unwrap();
    config_maps
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    let mark = config_maps
        .get("fan-out")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let epoch = Instant::now();
    let received: Arc<Mutex<Vec<Vec<Duration>>>> =
        Arc::new(Mutex::new(vec![Vec::new(); sizes.writes + 1]));
    let (ready_sender, mut ready) = tokio::sync::mpsc::channel::<()>(sizes.watchers);
    let (seen_sender, mut seen) = tokio::sync::mpsc::unbounded_channel::<usize>();
    for _ in 0..sizes.watchers {
        let stream = config_maps
            .watch(
                &WatchParams::default()
                    .fields("metadata.name=fan-out")
                    .timeout(290),
                &mark,
            )
            .await
            .unwrap();
        let received = received.clone();
        let seen_sender = seen_sender.clone();
        ready_sender.send(()).await.unwrap();
        tokio::spawn(async move {
            let mut stream = stream.boxed();
            while let Some(Ok(event)) = stream.next().await {
                if let WatchEvent::Modified(object) = event {
                    let at = epoch.elapsed();
                    let write: usize = object.data.unwrap()["write"].parse().unwrap();
                    received.lock().unwrap()[write].push(at);
                    let _ = seen_sender.send(write);
                }
            }
        });
    }
    for _ in 0..sizes.watchers {
        ready.recv().await.unwrap();
    }
    let mut delays = Vec::with_capacity(sizes.watchers * sizes.writes);
    for write in 1..=sizes.writes {
        let sent = epoch.elapsed();
        config_maps
            .patch(
                "fan-out",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"write": write.to_string()}})),
            )
            .await
            .unwrap();
        let mut count = 0;
        while count < sizes.watchers {
            let seen_write = tokio::time::timeout(Duration::from_secs(10), seen.recv())
                .await
                .expect("every watcher sees the write")
                .unwrap();
            if seen_write == write {
                count += 1;
            }
        }
        delays.extend(
            received.lock().unwrap()[write]
                .iter()
                .map(|at| at.saturating_sub(sent)),
        );
    }
    delays.sort();
    delays
}

async fn list_pods(client: &kube::Client, sizes: &Sizes) -> (Vec<Duration>, Vec<Duration>, usize) {
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "bench"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), "bench");
    let writers = 8;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let pods = pods.clone();
        let count = sizes.pods / writers + usize::from(writer < sizes.pods % writers);
        tasks.push(tokio::spawn(async move {
            for index in 0..count {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("helloworld-{writer}-{index}"), "labels": {"app": "helloworld", "version": "v1"}},
                    "spec": {"nodeName": "cluster01-control-plane", "serviceAccountName": "default", "containers": [{
                        "name": "helloworld", "image": "docker.io/istio/examples-helloworld-v1:1.0",
                        "ports": [{"containerPort": 5000}], "resources": {"requests": {"cpu": "100m"}},
                    }]},
                    "status": {"phase": "Running", "podIP": format!("10.10.{}.{}", index / 250, index % 250 + 1)},
                }))
                .unwrap();
                pods.create(&PostParams::default(), &pod).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut raw_times = Vec::new();
    let mut typed_times = Vec::new();
    let mut bytes = 0;
    for _ in 0..sizes.list_runs {
        let started = Instant::now();
        let request = http::Request::get("/api/v1/namespaces/bench/pods")
            .body(Vec::new())
            .unwrap();
        let text = client.request_text(request).await.unwrap();
        raw_times.push(started.elapsed());
        bytes = text.len();
        let started = Instant::now();
        let listed = pods.list(&ListParams::default()).await.unwrap();
        typed_times.push(started.elapsed());
        assert_eq!(listed.items.len(), sizes.pods);
    }
    raw_times.sort();
    typed_times.sort();
    (raw_times, typed_times, bytes)
}

fn main() {
    let measuring = std::env::args().any(|argument| argument == "--bench");
    let sizes = if measuring {
        Sizes {
            watchers: 100,
            writes: 200,
            pods: 10_000,
            list_runs: 11,
        }
    } else {
        Sizes {
            watchers: 5,
            writes: 5,
            pods: 50,
            list_runs: 2,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let directory = tempfile::tempdir().unwrap();
        let server = start(config("bench", directory.path())).await;
        let client = client("bench", &server).await;
        let delays = fan_out(&client, &sizes).await;
        let (raw, typed, bytes) = list_pods(&client, &sizes).await;
        println!();
        println!(
            "| lab API server ({} watchers, {} writes; {} pods, {} lists) | causeway | target |",
            sizes.watchers, sizes.writes, sizes.pods, sizes.list_runs
        );
        println!("| --- | ---: | ---: |");
        println!(
            "| watch fan-out, write to event, p50 | {} | |",
            millis(percentile(&delays, 0.5))
        );
        println!(
            "| watch fan-out, write to event, p99 | {} | < 10 ms |",
            millis(percentile(&delays, 0.99))
        );
        println!(
            "| list {} pods, response received (median, {:.1} MB) | {} | < 200 ms |",
            sizes.pods,
            bytes as f64 / 1e6,
            millis(percentile(&raw, 0.5))
        );
        println!(
            "| list {} pods, decoded by kube into Pods (median) | {} | |",
            sizes.pods,
            millis(percentile(&typed, 0.5))
        );
        server.shutdown().await;
    });
}
