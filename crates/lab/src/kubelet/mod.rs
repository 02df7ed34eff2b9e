//! The kubelet of a lab cluster's node: it runs the pods bound to the node (each a network
//! namespace with processes inside, see [`pod`]), reports what happens to them, and answers
//! `kubectl exec` and `kubectl logs` for the API server.

mod cni;
pub mod container;
mod context;
pub mod env;
pub mod images;
pub mod ipam;
mod pod;
pub mod probes;
pub mod sandbox;
pub mod status;
pub mod volumes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{broadcast, mpsc};

use crate::apiserver::pod_runtime::{ExecRequest, LogSource, PodRuntime};
use crate::apiserver::resources::id_of;
use crate::apiserver::state::ApiState;
use crate::apiserver::status::ApiError;
use crate::apiserver::store::{Event, EventType, StoredObject};
use crate::network::pod_namespace;

use context::Context;
pub use context::KubeletConfig;
use pod::{Message, Worker};

/// How often the lab's clusters are looked at, for the routes pods need.
const ROUTES_EVERY: Duration = Duration::from_secs(2);

/// The lab's prefixes, as pods route them (see [`crate::network::routes::pod_prefixes`]).
pub type Prefixes = Arc<dyn Fn() -> Vec<Ipv4Net> + Send + Sync>;

pub struct Kubelet {
    context: Arc<Context>,
    stop: tokio::sync::watch::Sender<bool>,
    stopped: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Kubelet {
    /// Starts the kubelet: it adopts the pods bound to its node (their sandboxes made again),
    /// registers with the API server for exec and logs, and follows pods from then on.
    pub fn start(state: Arc<ApiState>, config: KubeletConfig, prefixes: Prefixes) -> Arc<Kubelet> {
        let initial = prefixes();
        let context = Arc::new(Context::new(state.clone(), config, initial));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let kubelet = Arc::new(Kubelet {
            context: context.clone(),
            stop,
            stopped: Mutex::new(None),
        });
        let _ = state.pod_runtime.set(kubelet.clone());
        register_node(&context);
        let (changes, _) = state.store.subscribe();
        let task = tokio::spawn(run(context, changes, stopping, prefixes));
        *kubelet
            .stopped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task);
        kubelet
    }

    /// Stops every pod quickly (their objects are kept, to be started again with the node) and
    /// removes their sandboxes.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self
            .stopped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }

    fn pod(&self, namespace: &str, name: &str) -> Result<Pod, ApiError> {
        self.context
            .state
            .store
            .get(id_of("", "Pod"), namespace, name)
            .and_then(|stored| stored.decode::<Pod>().ok())
            .ok_or_else(|| ApiError::not_found("", "pods", name))
    }

    /// The container a request names, or the pod's default one (its
    /// `kubectl.kubernetes.io/default-container`, else its only one).
    fn container_of(pod: &Pod, asked: Option<&str>, what: &str) -> Result<String, ApiError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let all: Vec<String> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .map(|container| container.name.clone())
            .collect();
        match asked.filter(|asked| !asked.is_empty()) {
            Some(asked) if all.iter().any(|known| known == asked) => Ok(asked.to_owned()),
            Some(asked) => Err(ApiError::bad_request(format!(
                "container {asked} is not valid for pod {name}"
            ))),
            None => {
                let annotated = pod.metadata.annotations.as_ref().and_then(|annotations| {
                    annotations.get("kubectl.kubernetes.io/default-container")
                });
                if let Some(annotated) = annotated {
                    return Ok(annotated.clone());
                }
                match spec.containers.as_slice() {
                    [only] => Ok(only.name.clone()),
                    _ => Err(ApiError::bad_request(format!(
                        "a container name must be specified for {what} {name}, choose one of: [{}]",
                        spec.containers
                            .iter()
                            .map(|container| container.name.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ))),
                }
            }
        }
    }
}

impl PodRuntime for Kubelet {
    fn exec(&self, request: &ExecRequest) -> Result<tokio::process::Child, ApiError> {
        let pod = self.pod(&request.namespace, &request.pod)?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let container = Self::container_of(&pod, request.container.as_deref(), "pod")?;
        let context = self.context.exec_context(&uid, &container).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unable to upgrade connection: container {container} in pod {} is not running",
                request.pod
            ))
        })?;
        container::exec(
            &self.context.config.causeway,
            &context,
            &request.command,
            request.stdin,
        )
        .map_err(|error| {
            ApiError::internal(format!(
                "cannot start {:?} in container {container}: {error}",
                request.command
            ))
        })
    }

    fn logs(
        &self,
        namespace: &str,
        pod_name: &str,
        asked: Option<&str>,
        previous: bool,
    ) -> Result<LogSource, ApiError> {
        let pod = self.pod(namespace, pod_name)?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let container = Self::container_of(&pod, asked, "pod")?;
        let Some(info) = self.context.log(&uid, &container) else {
            let reason = pod
                .status
                .as_ref()
                .and_then(|status| status.container_statuses.as_ref())
                .and_then(|statuses| statuses.iter().find(|status| status.name == container))
                .and_then(|status| status.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .unwrap_or_else(|| "ContainerCreating".into());
            return Err(ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{pod_name}\" is waiting to start: {reason}"
            )));
        };
        if previous {
            return match info.previous.filter(|path| path.exists()) {
                Some(path) => Ok(LogSource { path, ended: None }),
                None => Err(ApiError::bad_request(format!(
                    "previous terminated container \"{container}\" in pod \"{pod_name}\" not found"
                ))),
            };
        }
        Ok(LogSource {
            path: info.current,
            ended: Some(info.ended),
        })
    }
}

/// Writes what the kubelet reports of its node: its pod CIDR, addresses, capacity, what runs it,
/// and that it is ready.
fn register_node(context: &Context) {
    use crate::apiserver::metadata::now;
    use crate::apiserver::routing::Target;
    use crate::apiserver::writes;
    use serde_json::json;
    let config = &context.config;
    let nodes = id_of("", "Node");
    let subnet = config.pod_subnet.to_string();
    let spec = writes::update(
        &context.state,
        &Target::object(nodes, "", &config.node_name),
        |node| {
            let wanted = json!({"podCIDR": subnet, "podCIDRs": [subnet]});
            let changed = node.data["spec"] != wanted;
            node.data["spec"] = wanted;
            changed
        },
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("PRETTY_NAME="))
                .map(|name| name.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "Linux".into());
    let memory_kib = config.node_memory_bytes / 1024;
    let capacity = json!({"cpu": config.node_cpus.to_string(), "memory": format!("{memory_kib}Ki"), "pods": "110", "ephemeral-storage": "0"});
    let stamp = now();
    let status = json!({
        "addresses": [{"type": "InternalIP", "address": config.node_address.to_string()}, {"type": "Hostname", "address": config.node_name}],
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available", "lastHeartbeatTime": stamp, "lastTransitionTime": stamp},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "message": "kubelet has no disk pressure", "lastHeartbeatTime": stamp, "lastTransitionTime": stamp},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "message": "kubelet has sufficient PID available", "lastHeartbeatTime": stamp, "lastTransitionTime": stamp},
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status", "lastHeartbeatTime": stamp, "lastTransitionTime": stamp},
        ],
        "nodeInfo": {
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            "bootID": "", "machineID": "", "systemUUID": "",
            "containerRuntimeVersion": format!("causeway://{}", env!("CARGO_PKG_VERSION")),
            "kernelVersion": kernel.trim(),
            "kubeProxyVersion": "v1.33.0",
            "kubeletVersion": "v1.33.0",
            "operatingSystem": "linux",
            "osImage": os,
        },
    });
    let written = writes::update(
        &context.state,
        &Target::status(nodes, "", &config.node_name),
        |node| {
            node.data["status"] = status.clone();
            true
        },
    );
    for result in [spec.map(drop), written.map(drop)] {
        if let Err(error) = result {
            tracing::warn!(node = %config.node_name, %error, "cannot write the node's status");
        }
    }
}

fn node_of(stored: &StoredObject) -> Option<&str> {
    stored.object.data["spec"]["nodeName"].as_str()
}

async fn run(
    context: Arc<Context>,
    mut changes: broadcast::Receiver<Arc<Event>>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    prefixes: Prefixes,
) {
    let pods = id_of("", "Pod");
    let config_maps = id_of("", "ConfigMap");
    let secrets = id_of("", "Secret");
    let (done, mut finished) = mpsc::unbounded_channel::<String>();
    let mut workers: HashMap<String, (String, mpsc::UnboundedSender<Message>)> = HashMap::new();
    remove_stale_directories(&context);
    for stored in context.state.store.list(pods, None).0 {
        adopt(&context, &stored, &mut workers, &done);
    }
    let mut routes = tokio::time::interval(ROUTES_EVERY);
    routes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopping.changed() => break,
            received = changes.recv() => match received {
                Ok(event) if event.resource == pods => on_pod(&context, &event, &mut workers, &done),
                Ok(event) if event.resource == config_maps || event.resource == secrets => {
                    for (namespace, worker) in workers.values() {
                        if *namespace == event.namespace {
                            let _ = worker.send(Message::SourcesChanged);
                        }
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    for stored in context.state.store.list(pods, None).0 {
                        adopt(&context, &stored, &mut workers, &done);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            Some(uid) = finished.recv() => {
                workers.remove(&uid);
            }
            _ = routes.tick() => {
                let prefixes = prefixes.clone();
                let Ok(current) = tokio::task::spawn_blocking(move || prefixes()).await else {
                    continue;
                };
                if let Some(previous) = context.set_prefixes(current.clone()) {
                    reroute(&context, workers.keys().cloned().collect(), previous, current).await;
                }
            }
        }
    }
    for (_, worker) in workers.values() {
        let _ = worker.send(Message::Stop);
    }
    while !workers.is_empty() {
        match tokio::time::timeout(Duration::from_secs(10), finished.recv()).await {
            Ok(Some(uid)) => {
                workers.remove(&uid);
            }
            _ => break,
        }
    }
}

/// A worker for a pod bound to this node, when it has none.
fn adopt(
    context: &Arc<Context>,
    stored: &StoredObject,
    workers: &mut HashMap<String, (String, mpsc::UnboundedSender<Message>)>,
    done: &mpsc::UnboundedSender<String>,
) {
    if node_of(stored) != Some(context.config.node_name.as_str()) {
        return;
    }
    let Ok(pod) = stored.decode::<Pod>() else {
        return;
    };
    let uid = stored.uid().to_owned();
    match workers.get(&uid) {
        Some((_, worker)) => {
            let _ = worker.send(Message::Updated(Box::new(pod)));
        }
        None => {
            let sender = Worker::spawn(context.clone(), pod, done.clone());
            workers.insert(uid, (stored.namespace().to_owned(), sender));
        }
    }
}

fn on_pod(
    context: &Arc<Context>,
    event: &Event,
    workers: &mut HashMap<String, (String, mpsc::UnboundedSender<Message>)>,
    done: &mpsc::UnboundedSender<String>,
) {
    let uid = event.object.uid().to_owned();
    if event.kind == EventType::Deleted {
        if let Some((_, worker)) = workers.get(&uid) {
            let _ = worker.send(Message::Gone);
        }
        return;
    }
    adopt(context, &event.object, workers, done);
}

/// Pod directories of pods that no longer exist (deleted while the kubelet was away).
fn remove_stale_directories(context: &Context) {
    let Ok(entries) = std::fs::read_dir(&context.config.pods_dir) else {
        return;
    };
    let pods = context.state.store.list(id_of("", "Pod"), None).0;
    for entry in entries.flatten() {
        let uid = entry.file_name().to_string_lossy().into_owned();
        if !pods.iter().any(|pod| pod.uid() == uid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Brings every pod's routes from `previous` to `current` (a lab cluster came or went).
async fn reroute(
    context: &Arc<Context>,
    uids: Vec<String>,
    previous: Vec<Ipv4Net>,
    current: Vec<Ipv4Net>,
) {
    let cluster = context.config.cluster.clone();
    let gateway = context.gateway();
    let _ = tokio::task::spawn_blocking(move || {
        for uid in uids {
            let name = pod_namespace(&cluster, &uid);
            if crate::netns::Netns::exists(&name) {
                let netns = crate::netns::Netns::open(&name);
                if let Err(error) = sandbox::Sandbox::reroute(&netns, gateway, &previous, &current)
                {
                    tracing::warn!(pod = %name, %error, "cannot update a pod's routes");
                }
            }
        }
    })
    .await;
}
