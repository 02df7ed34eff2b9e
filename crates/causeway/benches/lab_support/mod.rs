//! What the lab benchmarks share: a lab of their own in a temporary directory (taken down when
//! dropped), objects created as `kubectl apply` would, pods watched until Ready, and the memory
//! of processes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::watcher;

pub const CAUSEWAY: &str = env!("CARGO_BIN_EXE_causeway");
pub const WAIT: Duration = Duration::from_secs(120);

pub struct Lab {
    pub directory: tempfile::TempDir,
    pub clusters: Vec<&'static str>,
}

impl Lab {
    pub fn state(&self) -> PathBuf {
        self.directory.path().join("state")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.directory.path().join("kubeconfig")
    }

    pub fn causeway(&self, args: &[&str]) -> Output {
        let output = Command::new(CAUSEWAY)
            .args(args)
            .env("CAUSEWAY_LAB_DIR", self.state())
            .env("KUBECONFIG", self.kubeconfig())
            .output()
            .expect("causeway runs");
        assert!(
            output.status.success(),
            "causeway {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    pub fn create(&mut self, name: &'static str, pods: &str, services: &str) {
        self.causeway(&[
            "lab",
            "create-cluster",
            "--name",
            name,
            "--pod-subnet",
            pods,
            "--service-subnet",
            services,
        ]);
        self.clusters.push(name);
    }

    pub async fn client(&self, cluster: &str) -> kube::Client {
        let config = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let options = kube::config::KubeConfigOptions {
            context: Some(format!("kind-{cluster}")),
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(config, &options)
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// The cluster's process and the processes of its pods.
    pub fn processes(&self, cluster: &str) -> (Vec<u32>, Vec<u32>) {
        let endpoint: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                self.state()
                    .join("clusters")
                    .join(cluster)
                    .join("apiserver.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let cluster_pid = endpoint["pid"].as_u64().unwrap() as u32;
        let mut pods = Vec::new();
        for namespace in causeway_lab::network::namespaces_of(cluster).unwrap() {
            if !causeway_lab::network::is_pod_namespace_of(cluster, &namespace) {
                continue;
            }
            let listed = Command::new("ip")
                .args(["netns", "pids", &namespace])
                .output()
                .unwrap();
            pods.extend(
                String::from_utf8_lossy(&listed.stdout)
                    .split_whitespace()
                    .filter_map(|pid| pid.parse::<u32>().ok()),
            );
        }
        (vec![cluster_pid], pods)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(CAUSEWAY)
            .args(["lab", "down"])
            .env("CAUSEWAY_LAB_DIR", self.state())
            .env("KUBECONFIG", self.kubeconfig())
            .output();
    }
}

pub fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/samples")
}

/// Creates every object of a manifest in `namespace`, as `kubectl apply` would.
pub async fn apply(client: &kube::Client, namespace: &str, manifest: &str) {
    for document in manifest.split("\n---") {
        if document
            .lines()
            .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'))
        {
            continue;
        }
        let object: DynamicObject = serde_saphyr::from_str(document).expect("a Kubernetes object");
        let types = object.types.clone().expect("apiVersion and kind");
        let (group, version) = types
            .api_version
            .split_once('/')
            .unwrap_or(("", &types.api_version));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &types.kind));
        Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource)
            .create(&PostParams::default(), &object)
            .await
            .expect("the object is created");
    }
}

pub async fn create_namespace(client: &kube::Client, name: &str) {
    let namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
}

pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True")
        })
}

/// Watches `namespace`'s pods, runs `trigger` once the watch is open, and waits until `wanted`
/// pods are Ready; when each was first seen Ready, after the trigger started.
pub async fn until_ready(
    client: &kube::Client,
    namespace: &str,
    wanted: usize,
    trigger: impl Future<Output = ()>,
) -> Vec<Duration> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    let mut triggered = Some(Box::pin(trigger));
    let mut start = Instant::now();
    let mut seen: BTreeMap<String, Duration> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < wanted {
        let next = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("the pods become ready in time");
        let Some(Ok(event)) = next else { continue };
        let pods = match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => vec![pod],
            watcher::Event::InitDone => {
                if let Some(trigger) = triggered.take() {
                    start = Instant::now();
                    trigger.await;
                }
                continue;
            }
            _ => continue,
        };
        for pod in pods {
            if ready(&pod) {
                seen.entry(pod.metadata.name.clone().unwrap_or_default())
                    .or_insert_with(|| start.elapsed());
            }
        }
    }
    seen.into_values().collect()
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// RSS and PSS of processes, in kB.
pub fn memory(pids: &[u32]) -> (u64, u64) {
    let field = |path: String, name: &str| -> u64 {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    pids.iter().fold((0, 0), |(rss, pss), pid| {
        (
            rss + field(format!("/proc/{pid}/status"), "VmRSS:"),
            pss + field(format!("/proc/{pid}/smaps_rollup"), "Pss:"),
        )
    })
}
