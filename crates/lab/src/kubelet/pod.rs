//! One pod's worker: it makes the pod's sandbox and volumes, runs its init containers in order and
//! then its containers, restarts them by the pod's policy with Kubernetes' back-off, runs their
//! probes, writes the pod's status whenever it changes, and stops the pod when it is deleted
//! (SIGTERM, then SIGKILL after its grace period), removing its sandbox and then the object.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, ServiceAccount};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::cni;
use super::container::{self, ExecContext, NewContainer};
use super::context::{Context, LogInfo, NamespaceData};
use super::env::{self, PodPlacement};
use super::images;
use super::probes::{self, ProbeChange, ProbeKind};
use super::sandbox::{self, DnsConfig, Sandbox};
use super::status::{self, ContainerRecord, PodRecord, State, Waiting};
use super::volumes::{self, Kind, Sources, TokenIssuer};
use crate::apiserver::events::{self, EventType, Reporter};
use crate::apiserver::metadata::now;
use crate::apiserver::resources::id_of;
use crate::apiserver::routing::Target;
use crate::apiserver::tokens::{Binding, Claims, ObjectRef};
use crate::apiserver::writes::{self, DeleteOptions};
use crate::container_init::Mount;
use crate::network::pod_namespace;

/// What the kubelet tells a pod's worker.
#[derive(Debug)]
pub enum Message {
    /// The pod object changed.
    Updated(Box<Pod>),
    /// The object is gone (force-deleted, or its namespace was): stop the pod.
    Gone,
    /// A ConfigMap or Secret of the namespace changed: rewrite the volumes made of them.
    SourcesChanged,
    /// The kubelet stops: stop the containers quickly and keep the object.
    Stop,
}

/// What happens to the pod's containers, reported to the worker.
enum Happening {
    Exited {
        name: String,
        container_id: String,
        status: std::process::ExitStatus,
    },
    Probe(ProbeChange),
    /// A container's postStart hook finished (`Err` with the hook's output when it failed).
    PostStart {
        name: String,
        container_id: String,
        result: Result<(), String>,
    },
}

/// Kubernetes' restart back-off: 10 s doubling to 5 minutes; the first restart is at once, and
/// a container that ran 10 minutes starts over.
const FIRST_BACK_OFF: Duration = Duration::from_secs(10);
const MAX_BACK_OFF: Duration = Duration::from_secs(300);
const BACK_OFF_RESET: Duration = Duration::from_secs(600);
/// How soon a failed step (a missing ConfigMap, a sandbox that could not be made) is tried again.
const RETRY: Duration = Duration::from_secs(2);
/// How long the kubelet gives containers when it stops, or when the pod's object is gone.
const FAST_GRACE: Duration = Duration::from_secs(2);

struct RunningContainer {
    pid: u32,
    id: String,
    started: Instant,
    probes: Vec<tokio::task::AbortHandle>,
    ended: watch::Sender<bool>,
    log: PathBuf,
    started_at: String,
}

#[derive(Default)]
struct BackOff {
    delay: Option<Duration>,
    restart_at: Option<Instant>,
}

pub struct Worker {
    context: Arc<Context>,
    pod: Pod,
    uid: String,
    namespace: String,
    name: String,
    directory: PathBuf,
    sandbox: Option<Sandbox>,
    record: PodRecord,
    volumes_ready: bool,
    volumes_dirty: bool,
    volume_refresh_at: Option<i64>,
    retry_at: Option<Instant>,
    running: HashMap<String, RunningContainer>,
    back_off: HashMap<String, BackOff>,
    /// When containers asked to stop get SIGKILL.
    kill_at: Option<Instant>,
    gone: bool,
    stopping: bool,
    happenings: mpsc::UnboundedSender<Happening>,
    readiness: HashMap<String, bool>,
    /// Containers whose postStart hook still runs: the containers after them wait, as the
    /// kubelet starts a pod's containers in order and each hook blocks the next start.
    post_start_pending: HashMap<String, String>,
    written_status: Option<Value>,
}

fn reporter(context: &Context) -> Reporter {
    Reporter {
        component: "kubelet",
        host: Some(context.config.node_name.clone()),
    }
}

fn containers_of(pod: &Pod, init: bool) -> Vec<Container> {
    pod.spec
        .as_ref()
        .map(|spec| {
            if init {
                spec.init_containers.clone().unwrap_or_default()
            } else {
                spec.containers.clone()
            }
        })
        .unwrap_or_default()
}

/// A time of a stored status as the status writes it (now, when there is none).
fn time_text(time: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    time.and_then(|time| serde_json::to_value(time).ok())
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(now)
}

fn restart_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.restart_policy.clone())
        .unwrap_or_else(|| "Always".into())
}

impl Worker {
    /// Starts the worker of `pod`; the returned sender reaches it, and `done` gets the pod's uid
    /// when the worker ends.
    pub fn spawn(
        context: Arc<Context>,
        pod: Pod,
        done: mpsc::UnboundedSender<String>,
    ) -> mpsc::UnboundedSender<Message> {
        let (sender, messages) = mpsc::unbounded_channel();
        let (happenings, happened) = mpsc::unbounded_channel();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let previous_status = pod
            .status
            .as_ref()
            .map(|status| serde_json::to_value(status).unwrap_or_default());
        let record = Self::initial_record(&pod, &context);
        let worker = Worker {
            directory: context.config.pods_dir.join(&uid),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid,
            context,
            pod,
            sandbox: None,
            record,
            volumes_ready: false,
            volumes_dirty: false,
            volume_refresh_at: None,
            retry_at: None,
            running: HashMap::new(),
            back_off: HashMap::new(),
            kill_at: None,
            gone: false,
            stopping: false,
            happenings,
            readiness: HashMap::new(),
            post_start_pending: HashMap::new(),
            written_status: previous_status,
        };
        let uid = worker.uid.clone();
        tokio::spawn(async move {
            worker.run(messages, happened).await;
            let _ = done.send(uid);
        });
        sender
    }

    /// What the worker starts from: every container waiting, with the restarts and last states of
    /// a previous run of this pod (a kubelet that restarted starts the containers again).
    fn initial_record(pod: &Pod, context: &Context) -> PodRecord {
        let previous = |name: &str, init: bool| {
            let status = pod.status.as_ref()?;
            let list = if init {
                status.init_container_statuses.as_ref()
            } else {
                status.container_statuses.as_ref()
            }?;
            list.iter().find(|status| status.name == name).cloned()
        };
        let make = |container: &Container, init: bool| {
            let reason = if init {
                "PodInitializing"
            } else {
                "ContainerCreating"
            };
            let mut record = ContainerRecord::waiting(
                &container.name,
                container.image.as_deref().unwrap_or(""),
                reason,
            );
            if let Some(previous) = previous(&container.name, init) {
                record.restarts = previous.restart_count;
                // It ran before: starting it again counts as a restart.
                record.container_id = previous.container_id.clone();
                record.last = previous
                    .last_state
                    .as_ref()
                    .and_then(|state| state.terminated.as_ref())
                    .map(|ended| status::Terminated {
                        exit_code: ended.exit_code,
                        signal: ended.signal,
                        reason: ended.reason.clone().unwrap_or_default(),
                        message: ended.message.clone(),
                        started_at: time_text(ended.started_at.as_ref()),
                        finished_at: time_text(ended.finished_at.as_ref()),
                        container_id: ended.container_id.clone().unwrap_or_default(),
                    });
                let was_running = previous
                    .state
                    .as_ref()
                    .is_some_and(|state| state.running.is_some());
                if was_running {
                    // It was running when the kubelet went away: it starts again, as after a
                    // node restart.
                    let started = previous
                        .state
                        .as_ref()
                        .and_then(|state| state.running.as_ref())
                        .and_then(|running| running.started_at.as_ref());
                    record.last = Some(status::Terminated {
                        exit_code: 255,
                        signal: None,
                        reason: "Unknown".into(),
                        message: None,
                        started_at: time_text(started),
                        finished_at: now(),
                        container_id: previous.container_id.clone().unwrap_or_default(),
                    });
                }
            }
            record
        };
        PodRecord {
            init: containers_of(pod, true)
                .iter()
                .map(|container| make(container, true))
                .collect(),
            containers: containers_of(pod, false)
                .iter()
                .map(|container| make(container, false))
                .collect(),
            pod_ip: None,
            host_ip: context.config.node_address.to_string(),
            start_time: pod
                .status
                .as_ref()
                .and_then(|status| status.start_time.as_ref())
                .map(|time| time_text(Some(time))),
            sandbox_ready: false,
        }
    }

    async fn run(
        mut self,
        mut messages: mpsc::UnboundedReceiver<Message>,
        mut happened: mpsc::UnboundedReceiver<Happening>,
    ) {
        loop {
            let Some(wake) = self.sync().await else {
                return;
            };
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = messages.recv() => match message {
                    Some(Message::Updated(pod)) => {
                        self.restart_changed_containers(&pod);
                        self.pod = *pod;
                    }
                    Some(Message::Gone) => self.gone = true,
                    Some(Message::SourcesChanged) => self.volumes_dirty = true,
                    Some(Message::Stop) | None => self.stopping = true,
                },
                happening = happened.recv() => {
                    if let Some(happening) = happening {
                        self.on(happening);
                    }
                }
                () = sleep => {}
            }
        }
    }

    fn deleting(&self) -> bool {
        self.gone || self.stopping || self.pod.metadata.deletion_timestamp.is_some()
    }

    fn involved(&self) -> k8s_openapi::api::core::v1::ObjectReference {
        k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            uid: Some(self.uid.clone()),
            ..Default::default()
        }
    }

    fn event(&self, kind: EventType, reason: &str, message: &str) {
        if self.gone || self.stopping {
            return;
        }
        events::record(
            &self.context.state,
            &reporter(&self.context),
            &self.involved(),
            kind,
            reason,
            message,
        );
    }

    /// One step towards what the pod should be; when to look again (`None`: the worker is done).
    async fn sync(&mut self) -> Option<Option<Instant>> {
        if self.deleting() {
            return self.terminate().await;
        }
        let mut wake: Option<Instant> = None;
        let mut soonest =
            |at: Instant| wake = Some(wake.map_or(at, |current: Instant| current.min(at)));
        if let Some(at) = self.retry_at
            && at > Instant::now()
        {
            soonest(at);
            self.write_status();
            return Some(wake);
        }
        self.retry_at = None;
        if self.finished() {
            self.tear_down_sandbox().await;
            self.write_status();
            return Some(None);
        }
        if self.sandbox.is_none() && !self.make_sandbox().await {
            self.retry_at = Some(Instant::now() + RETRY);
            self.write_status();
            return Some(self.retry_at);
        }
        let now_seconds = time::OffsetDateTime::now_utc().unix_timestamp();
        if !self.volumes_ready
            || self.volumes_dirty
            || self.volume_refresh_at.is_some_and(|at| at <= now_seconds)
        {
            self.volumes_dirty = false;
            if !self.make_volumes() {
                self.retry_at = Some(Instant::now() + RETRY);
                self.write_status();
                return Some(self.retry_at);
            }
        }
        if let Some(at) = self.volume_refresh_at {
            let seconds = (at - now_seconds).max(1).unsigned_abs();
            soonest(Instant::now() + Duration::from_secs(seconds));
        }
        if let Some(at) = self.run_containers() {
            soonest(at);
        }
        if let Some(at) = self.retry_at {
            soonest(at);
        }
        self.write_status();
        Some(wake)
    }

    /// Whether the pod reached Succeeded or Failed: nothing runs and nothing will.
    fn finished(&self) -> bool {
        if !self.running.is_empty()
            || self
                .back_off
                .values()
                .any(|back_off| back_off.restart_at.is_some())
        {
            return false;
        }
        matches!(
            status::phase(&self.record, &restart_policy(&self.pod)),
            "Succeeded" | "Failed"
        )
    }

    async fn make_sandbox(&mut self) -> bool {
        let previous = self
            .pod
            .status
            .as_ref()
            .and_then(|status| status.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        let Some(address) = self.context.address_for(previous) else {
            self.event(
                EventType::Warning,
                "FailedCreatePodSandBox",
                &format!(
                    "no free address left in the pod subnet {}",
                    self.context.config.pod_subnet
                ),
            );
            return false;
        };
        let name = pod_namespace(&self.context.config.cluster, &self.uid);
        let node = self.context.config.node.clone();
        let gateway = self.context.gateway();
        let prefixes = self.context.prefixes();
        let created = tokio::task::spawn_blocking(move || {
            // A namespace of this name is a leftover of a previous run of this pod.
            let _ = crate::netns::Netns::open(&name).delete();
            Sandbox::create(&node, &name, address, gateway, &prefixes)
        })
        .await;
        let sandbox = match created {
            Ok(Ok(sandbox)) => sandbox,
            Ok(Err(error)) => {
                self.context.release_address(address);
                self.event(
                    EventType::Warning,
                    "FailedCreatePodSandBox",
                    &format!("Failed to create pod sandbox: {error}"),
                );
                return false;
            }
            Err(error) => {
                self.context.release_address(address);
                tracing::error!(pod = %self.name, %error, "the sandbox task failed");
                return false;
            }
        };
        if let Err(error) = self.cni_capture(&sandbox).await {
            let netns = sandbox.netns.clone();
            let _ = tokio::task::spawn_blocking(move || netns.delete()).await;
            self.context.release_address(address);
            self.event(
                EventType::Warning,
                "FailedCreatePodSandBox",
                &format!("Failed to create pod sandbox: plugin type=\"istio-cni\": {error}"),
            );
            return false;
        }
        let dns = DnsConfig {
            nameserver: self.context.config.dns,
            namespace: self.namespace.clone(),
        };
        if let Err(error) =
            sandbox::write_files(&self.directory.join("etc"), &self.name, address, &dns)
        {
            self.event(
                EventType::Warning,
                "FailedCreatePodSandBox",
                &format!("cannot write the pod's /etc files: {error}"),
            );
        }
        self.record.pod_ip = Some(address.to_string());
        self.record.sandbox_ready = true;
        if self.record.start_time.is_none() {
            self.record.start_time = Some(now());
        }
        self.sandbox = Some(sandbox);
        true
    }

    /// Istio's CNI plugin, when installed: the pod's capture, set up in its new network.
    async fn cni_capture(&self, sandbox: &Sandbox) -> Result<(), String> {
        let Some(plugin) = cni::installed(&self.context.state) else {
            return Ok(());
        };
        let Some(args) = cni::capture_args(&self.pod, &plugin)? else {
            return Ok(());
        };
        let netns = sandbox.netns.clone();
        let causeway = self.context.config.causeway.clone();
        let output = tokio::task::spawn_blocking(move || {
            netns
                .command(&causeway.to_string_lossy())
                .args(&args)
                .output()
        })
        .await
        .map_err(|error| format!("the capture task failed: {error}"))?
        .map_err(|error| format!("cannot run causeway proxy init: {error}"))?;
        if output.status.success() {
            tracing::debug!(pod = %self.name, "captured by the CNI plugin");
            Ok(())
        } else {
            Err(format!(
                "causeway proxy init failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    async fn tear_down_sandbox(&mut self) {
        let Some(sandbox) = self.sandbox.take() else {
            return;
        };
        let netns = sandbox.netns.clone();
        let _ = tokio::task::spawn_blocking(move || netns.delete()).await;
        self.context.release_address(sandbox.address);
        self.record.sandbox_ready = false;
    }

    fn placement(&self) -> PodPlacement {
        PodPlacement {
            pod_ip: self.record.pod_ip.clone().unwrap_or_default(),
            host_ip: self.context.config.node_address.to_string(),
            node_cpus: self.context.config.node_cpus,
            node_memory_bytes: self.context.config.node_memory_bytes,
        }
    }

    fn fs_group(&self) -> Option<u32> {
        self.pod
            .spec
            .as_ref()
            .and_then(|spec| spec.security_context.as_ref())
            .and_then(|context| context.fs_group)
            .and_then(|group| u32::try_from(group).ok())
    }

    fn volume_directory(&self, name: &str) -> PathBuf {
        self.directory.join("volumes").join(name)
    }

    /// Writes every volume; false (with a `FailedMount` event) when one cannot be made.
    fn make_volumes(&mut self) -> bool {
        let placement = self.placement();
        let data = NamespaceData {
            state: &self.context.state,
            namespace: &self.namespace,
        };
        let issuer = PodTokens {
            context: &self.context,
            pod: &self.pod,
        };
        let now_seconds = time::OffsetDateTime::now_utc().unix_timestamp();
        let sources = Sources {
            pod: &self.pod,
            placement: &placement,
            data: &data,
            tokens: &issuer,
            now: now_seconds,
        };
        let group = self.fs_group();
        let mut refresh_at: Option<i64> = None;
        let volumes = self
            .pod
            .spec
            .as_ref()
            .and_then(|spec| spec.volumes.clone())
            .unwrap_or_default();
        for volume in &volumes {
            let directory = self.volume_directory(&volume.name);
            let result = volumes::kind_of(volume, &sources).and_then(|kind| {
                let written = match &kind {
                    Kind::Directory => volumes::make_directory(&directory, group),
                    Kind::Host(_) => Ok(()),
                    Kind::Projected(projection) => {
                        if let Some(at) = projection.refresh_at {
                            refresh_at = Some(refresh_at.map_or(at, |current| current.min(at)));
                        }
                        volumes::write_atomically(&directory, &projection.files, group)
                    }
                };
                written.map_err(|error| volumes::VolumeError {
                    volume: volume.name.clone(),
                    reason: error.to_string(),
                })
            });
            if let Err(error) = result {
                self.event(EventType::Warning, "FailedMount", &error.to_string());
                return false;
            }
        }
        self.volumes_ready = true;
        self.volume_refresh_at = refresh_at;
        true
    }

    /// The mount source of a volume the container names.
    fn volume_source(&self, name: &str) -> Option<PathBuf> {
        let volume = self
            .pod
            .spec
            .as_ref()?
            .volumes
            .as_ref()?
            .iter()
            .find(|volume| volume.name == name)?;
        Some(match &volume.host_path {
            Some(host) => PathBuf::from(&host.path),
            None => self.volume_directory(name),
        })
    }

    /// Starts what should run; when to look again (a back-off ending).
    fn run_containers(&mut self) -> Option<Instant> {
        let policy = restart_policy(&self.pod);
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        // Init containers, one at a time, in order.
        let init = containers_of(&self.pod, true);
        for (index, container) in init.iter().enumerate() {
            let state = self.record.init[index].state.clone();
            match state {
                State::Terminated(ended) if ended.exit_code == 0 => continue,
                State::Running { .. } => return wake,
                State::Terminated(_) if policy == "Never" => return wake,
                State::Terminated(_) | State::Waiting(_) => {
                    if let Some(at) = self.back_off_until(&container.name, now) {
                        return Some(at);
                    }
                    self.start(container, true, index);
                    return self.retry_at;
                }
            }
        }
        let containers = containers_of(&self.pod, false);
        for (index, container) in containers.iter().enumerate() {
            if containers[..index]
                .iter()
                .any(|earlier| self.post_start_pending.contains_key(&earlier.name))
            {
                break;
            }
            let state = self.record.containers[index].state.clone();
            let start = match &state {
                State::Running { .. } => false,
                State::Waiting(_) => true,
                State::Terminated(ended) => match policy.as_str() {
                    "Always" => true,
                    "OnFailure" => ended.exit_code != 0,
                    _ => false,
                },
            };
            if !start {
                continue;
            }
            if let Some(at) = self.back_off_until(&container.name, now) {
                wake = Some(wake.map_or(at, |current| current.min(at)));
                continue;
            }
            self.start(container, false, index);
        }
        wake
    }

    /// When a container in back-off may start again, `None` when it may now.
    fn back_off_until(&mut self, name: &str, now: Instant) -> Option<Instant> {
        let back_off = self.back_off.get_mut(name)?;
        match back_off.restart_at {
            Some(at) if at > now => Some(at),
            _ => {
                back_off.restart_at = None;
                None
            }
        }
    }

    fn record_mut(&mut self, init: bool, index: usize) -> &mut ContainerRecord {
        if init {
            &mut self.record.init[index]
        } else {
            &mut self.record.containers[index]
        }
    }

    fn wait(&mut self, init: bool, index: usize, reason: &str, message: String) {
        self.record_mut(init, index).state = State::Waiting(Waiting {
            reason: reason.to_owned(),
            message: Some(message),
        });
    }

    /// Starts one container; on failure it is left waiting with the kubelet's reason.
    fn start(&mut self, container: &Container, init: bool, index: usize) {
        let context = self.context.clone();
        let config = &context.config;
        let image = container.image.clone().unwrap_or_default();
        let command = container.command.clone().unwrap_or_default();
        let arguments = container.args.clone().unwrap_or_default();
        let argv = match images::command_line(&image, &command, &arguments, &config.causeway) {
            Ok(argv) => argv,
            Err(error) => {
                let message = format!("Failed to pull image \"{image}\": {error}");
                let pulled_before = matches!(&self.record_mut(init, index).state, State::Waiting(waiting) if waiting.reason == "ErrImagePull" || waiting.reason == "ImagePullBackOff");
                self.event(EventType::Warning, "Failed", &message);
                self.wait(
                    init,
                    index,
                    if pulled_before {
                        "ImagePullBackOff"
                    } else {
                        "ErrImagePull"
                    },
                    message,
                );
                self.schedule_back_off(&container.name);
                return;
            }
        };
        let data = NamespaceData {
            state: &self.context.state,
            namespace: &self.namespace,
        };
        let services = self.context.service_links(&self.namespace);
        let environment =
            match env::environment(&self.pod, container, &self.placement(), &services, &data) {
                Ok(environment) => environment,
                Err(message) => {
                    self.event(EventType::Warning, "Failed", &format!("Error: {message}"));
                    self.wait(init, index, "CreateContainerConfigError", message);
                    self.retry_at = Some(Instant::now() + RETRY);
                    return;
                }
            };
        let known: std::collections::BTreeMap<String, String> =
            environment.iter().cloned().collect();
        let argv: Vec<String> = argv.iter().map(|word| env::expand(word, &known)).collect();
        let mut mounts: Vec<Mount> = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let Some(mut source) = self.volume_source(&mount.name) else {
                let message = format!(
                    "volume {:?} of container {} is not a volume of the pod",
                    mount.name, container.name
                );
                self.event(EventType::Warning, "Failed", &format!("Error: {message}"));
                self.wait(init, index, "CreateContainerConfigError", message);
                self.retry_at = Some(Instant::now() + RETRY);
                return;
            };
            if let Some(sub_path) = mount.sub_path.as_deref().filter(|path| !path.is_empty()) {
                source = source.join(sub_path.trim_start_matches('/'));
                if source.symlink_metadata().is_err() {
                    let _ = std::fs::create_dir_all(&source);
                }
            }
            mounts.push(Mount {
                source,
                target: PathBuf::from(&mount.mount_path),
                read_only: mount.read_only == Some(true),
            });
        }
        for (file, target) in [
            ("hosts", "/etc/hosts"),
            ("resolv.conf", "/etc/resolv.conf"),
            ("hostname", "/etc/hostname"),
        ] {
            if !mounts.iter().any(|mount| mount.target == Path::new(target)) {
                mounts.push(Mount {
                    source: self.directory.join("etc").join(file),
                    target: PathBuf::from(target),
                    read_only: false,
                });
            }
        }
        let record = self.record_mut(init, index);
        if record.container_id.is_some() {
            record.restarts += 1;
        }
        let restarts = record.restarts;
        let container_directory = self.directory.join("containers").join(&container.name);
        let scratch = container_directory.join("scratch");
        let _ = std::fs::remove_dir_all(&scratch);
        let logs_directory = self.directory.join("logs").join(&container.name);
        let _ = std::fs::create_dir_all(&logs_directory);
        let log = logs_directory.join(format!("{restarts}.log"));
        let previous_log = restarts
            .checked_sub(1)
            .map(|previous| logs_directory.join(format!("{previous}.log")));
        if let Some(older) = restarts.checked_sub(2) {
            let _ = std::fs::remove_file(logs_directory.join(format!("{older}.log")));
        }
        let identity = container::identity(&self.pod, container);
        let read_only_root = container
            .security_context
            .as_ref()
            .and_then(|context| context.read_only_root_filesystem)
            == Some(true);
        let spec = container::launch_spec(NewContainer {
            network: self
                .sandbox
                .as_ref()
                .map(|sandbox| sandbox.netns.path())
                .unwrap_or_default(),
            scratch,
            hostname: &self.name,
            mounts,
            read_only_root,
            environment: environment.clone(),
            working_dir: container.working_dir.clone(),
            identity: identity.clone(),
            argv,
        });
        if !self.record_mut(init, index).image.is_empty() {
            self.event(
                EventType::Normal,
                "Pulled",
                &format!("Container image \"{image}\" already present on machine"),
            );
        }
        let spawned = match container::spawn(&config.causeway, &spec, &log) {
            Ok(spawned) => spawned,
            Err(error) => {
                let message = format!("failed to start container {}: {error}", container.name);
                self.event(EventType::Warning, "Failed", &format!("Error: {message}"));
                self.wait(init, index, "RunContainerError", message);
                self.schedule_back_off(&container.name);
                return;
            }
        };
        let id = container::new_container_id();
        let started_at = now();
        self.event(
            EventType::Normal,
            "Created",
            &format!("Created container: {}", container.name),
        );
        self.event(
            EventType::Normal,
            "Started",
            &format!("Started container {}", container.name),
        );
        let (ended, ended_receiver) = watch::channel(false);
        self.context.set_log(
            &self.uid,
            &container.name,
            LogInfo {
                current: log.clone(),
                previous: previous_log,
                ended: ended_receiver,
            },
        );
        self.context.set_exec(
            &self.uid,
            &container.name,
            Some(ExecContext {
                pid: spawned.pid,
                environment,
                working_dir: container.working_dir.clone(),
                identity,
            }),
        );
        let happenings = self.happenings.clone();
        let name = container.name.clone();
        let container_id = id.clone();
        let mut child = spawned.child;
        tokio::spawn(async move {
            let status = child.wait().await;
            if let Ok(status) = status {
                let _ = happenings.send(Happening::Exited {
                    name,
                    container_id,
                    status,
                });
            }
        });
        let has_readiness = container.readiness_probe.is_some();
        let has_startup = container.startup_probe.is_some();
        let running = RunningContainer {
            pid: spawned.pid,
            id: id.clone(),
            started: Instant::now(),
            probes: if init {
                Vec::new()
            } else {
                self.start_probes(container, &id, has_startup)
            },
            ended,
            log,
            started_at: started_at.clone(),
        };
        self.running.insert(container.name.clone(), running);
        self.readiness
            .insert(container.name.clone(), !has_readiness);
        if !init {
            self.run_post_start(container, &id);
        }
        let record = self.record_mut(init, index);
        record.state = State::Running { started_at };
        record.container_id = Some(id);
        record.started = !has_startup;
        record.ready = !has_readiness && !has_startup;
    }

    /// Starts the container's probes: its startup probe alone when it has one (the others start
    /// once it passes).
    fn start_probes(
        &self,
        container: &Container,
        container_id: &str,
        startup_first: bool,
    ) -> Vec<tokio::task::AbortHandle> {
        let Some(pod_ip) = self.record.pod_ip.as_deref().and_then(|ip| ip.parse().ok()) else {
            return Vec::new();
        };
        let context = self.context.clone();
        let uid = self.uid.clone();
        let name = container.name.clone();
        let exec: probes::ExecRunner = Arc::new(move |command| {
            let context = context.clone();
            let uid = uid.clone();
            let name = name.clone();
            Box::pin(async move { run_in_container(&context, &uid, &name, command).await })
        });
        let target = probes::Target {
            pod_ip,
            container: container.clone(),
            container_id: container_id.to_owned(),
            exec,
        };
        let wanted: Vec<(ProbeKind, k8s_openapi::api::core::v1::Probe)> = if startup_first {
            container
                .startup_probe
                .clone()
                .map(|probe| (ProbeKind::Startup, probe))
                .into_iter()
                .collect()
        } else {
            [
                (ProbeKind::Readiness, container.readiness_probe.clone()),
                (ProbeKind::Liveness, container.liveness_probe.clone()),
            ]
            .into_iter()
            .filter_map(|(kind, probe)| probe.map(|probe| (kind, probe)))
            .collect()
        };
        wanted
            .into_iter()
            .map(|(kind, probe)| {
                let (sender, mut receiver) = mpsc::unbounded_channel();
                let happenings = self.happenings.clone();
                // Probes connect from the node: they run on its runtime.
                let task = self.context.config.node_runtime.spawn(probes::run(
                    kind,
                    probe,
                    target.clone(),
                    sender,
                ));
                tokio::spawn(async move {
                    while let Some(change) = receiver.recv().await {
                        if happenings.send(Happening::Probe(change)).is_err() {
                            break;
                        }
                    }
                });
                task.abort_handle()
            })
            .collect()
    }

    fn schedule_back_off(&mut self, name: &str) {
        let back_off = self.back_off.entry(name.to_owned()).or_default();
        let delay = match back_off.delay {
            None => Duration::ZERO,
            Some(delay) if delay.is_zero() => FIRST_BACK_OFF,
            Some(delay) => (delay * 2).min(MAX_BACK_OFF),
        };
        back_off.delay = Some(delay);
        back_off.restart_at = Some(Instant::now() + delay);
    }

    fn position(&self, name: &str) -> Option<(bool, usize)> {
        if let Some(index) = self
            .record
            .init
            .iter()
            .position(|container| container.name == name)
        {
            return Some((true, index));
        }
        self.record
            .containers
            .iter()
            .position(|container| container.name == name)
            .map(|index| (false, index))
    }

    fn on(&mut self, happening: Happening) {
        match happening {
            Happening::Exited {
                name,
                container_id,
                status,
            } => self.exited(&name, &container_id, status),
            Happening::Probe(change) => self.probed(change),
            Happening::PostStart {
                name,
                container_id,
                result,
            } => self.post_started(&name, &container_id, result),
        }
    }

    /// Runs the container's postStart exec hook in it, if it has one; the next containers start
    /// when it is done.
    fn run_post_start(&mut self, container: &Container, container_id: &str) {
        let Some(command) = container
            .lifecycle
            .as_ref()
            .and_then(|lifecycle| lifecycle.post_start.as_ref())
            .and_then(|hook| hook.exec.as_ref())
            .and_then(|exec| exec.command.clone())
        else {
            return;
        };
        self.post_start_pending
            .insert(container.name.clone(), container_id.to_owned());
        let context = self.context.clone();
        let uid = self.uid.clone();
        let name = container.name.clone();
        let container_id = container_id.to_owned();
        let happenings = self.happenings.clone();
        tokio::spawn(async move {
            let result = match run_in_container(&context, &uid, &name, command).await {
                Ok((0, _)) => Ok(()),
                Ok((code, output)) => Err(format!("exited with {code}: {}", output.trim())),
                Err(error) => Err(error),
            };
            let _ = happenings.send(Happening::PostStart {
                name,
                container_id,
                result,
            });
        });
    }

    fn post_started(&mut self, name: &str, container_id: &str, result: Result<(), String>) {
        if self.post_start_pending.get(name).map(String::as_str) != Some(container_id) {
            return;
        }
        self.post_start_pending.remove(name);
        if let Err(message) = result {
            // As the kubelet does: the container is killed and restarted under its policy.
            self.event(
                EventType::Warning,
                "FailedPostStartHook",
                &format!("PostStartHookError: {message}"),
            );
            self.signal(name, nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn exited(&mut self, name: &str, container_id: &str, status: std::process::ExitStatus) {
        let Some(running) = self.running.get(name) else {
            return;
        };
        if running.id != container_id {
            return;
        }
        let running = self.running.remove(name).expect("found above");
        for probe in &running.probes {
            probe.abort();
        }
        let _ = running.ended.send(true);
        self.context.set_exec(&self.uid, name, None);
        let ended = container::ended(
            status,
            &running.started_at,
            &now(),
            &running.id,
            &running.log,
        );
        let Some((init, index)) = self.position(name) else {
            return;
        };
        // A container that ran long enough starts its back-off over.
        if running.started.elapsed() >= BACK_OFF_RESET {
            self.back_off.remove(name);
        }
        let policy = restart_policy(&self.pod);
        // Init containers are run again only when they failed; containers by the policy.
        let restart = !self.deleting()
            && match (init, policy.as_str()) {
                (_, "Never") => false,
                (true, _) | (false, "OnFailure") => ended.exit_code != 0,
                (false, _) => true,
            };
        let pod_label = format!("{}_{}({})", self.name, self.namespace, self.uid);
        if restart {
            self.schedule_back_off(name);
            let delay = self
                .back_off
                .get(name)
                .and_then(|back_off| back_off.delay)
                .unwrap_or_default();
            let record = self.record_mut(init, index);
            record.last = Some(ended.clone());
            record.ready = false;
            record.started = false;
            if delay.is_zero() {
                record.state = State::Terminated(ended);
            } else {
                record.state = State::Waiting(Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off {}s restarting failed container={name} pod={pod_label}",
                        delay.as_secs()
                    )),
                });
                self.event(
                    EventType::Warning,
                    "BackOff",
                    &format!("Back-off restarting failed container {name} in pod {pod_label}"),
                );
            }
        } else {
            let record = self.record_mut(init, index);
            record.state = State::Terminated(ended);
            record.ready = false;
        }
    }

    fn probed(&mut self, change: ProbeChange) {
        let Some(running) = self.running.get(&change.container) else {
            return;
        };
        if running.id != change.container_id {
            return;
        }
        if let Some(message) = &change.message {
            self.event(
                EventType::Warning,
                "Unhealthy",
                &format!("{} probe failed: {message}", change.kind.name()),
            );
        }
        let Some((init, index)) = self.position(&change.container) else {
            return;
        };
        match change.kind {
            ProbeKind::Readiness => {
                self.readiness
                    .insert(change.container.clone(), change.passing);
                let started = self.record_mut(init, index).started;
                self.record_mut(init, index).ready = change.passing && started;
            }
            ProbeKind::Startup if change.passing => {
                let container = containers_of(&self.pod, false)
                    .into_iter()
                    .find(|container| container.name == change.container);
                if let Some(container) = container {
                    let probes = self.start_probes(&container, &change.container_id, false);
                    if let Some(running) = self.running.get_mut(&change.container) {
                        running.probes.extend(probes);
                    }
                    let has_readiness = container.readiness_probe.is_some();
                    let record = self.record_mut(init, index);
                    record.started = true;
                    record.ready = !has_readiness;
                }
            }
            ProbeKind::Liveness | ProbeKind::Startup if !change.passing => {
                let kind = change.kind.name().to_lowercase();
                self.event(
                    EventType::Normal,
                    "Killing",
                    &format!(
                        "Container {} failed {kind} probe, will be restarted",
                        change.container
                    ),
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(running.pid).unwrap_or(0)),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            _ => {}
        }
    }

    /// A container whose image changed is restarted with the new one, as the kubelet does.
    fn restart_changed_containers(&mut self, pod: &Pod) {
        for container in containers_of(pod, false) {
            let Some(position) = self
                .record
                .containers
                .iter()
                .position(|record| record.name == container.name)
            else {
                continue;
            };
            let image = container.image.clone().unwrap_or_default();
            if self.record.containers[position].image == image {
                continue;
            }
            self.record.containers[position].image = image;
            if let Some(running) = self.running.get(&container.name) {
                self.event(
                    EventType::Normal,
                    "Killing",
                    &format!(
                        "Container {} definition changed, will be restarted",
                        container.name
                    ),
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(running.pid).unwrap_or(0)),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }

    /// Stops the pod: SIGTERM, SIGKILL after the grace period, then the sandbox and the object.
    /// `None` once everything is gone.
    async fn terminate(&mut self) -> Option<Option<Instant>> {
        if self.kill_at.is_none() {
            let grace = if self.gone || self.stopping {
                FAST_GRACE
            } else {
                let seconds = self
                    .pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or_else(|| {
                        self.pod
                            .spec
                            .as_ref()
                            .and_then(|spec| spec.termination_grace_period_seconds)
                    })
                    .unwrap_or(30)
                    .max(0);
                Duration::from_secs(seconds.unsigned_abs())
            };
            self.kill_at = Some(Instant::now() + grace);
            let names: Vec<String> = self.running.keys().cloned().collect();
            for name in names {
                self.event(
                    EventType::Normal,
                    "Killing",
                    &format!("Stopping container {name}"),
                );
                self.signal(&name, nix::sys::signal::Signal::SIGTERM);
            }
            self.back_off.clear();
        }
        if !self.running.is_empty() {
            let deadline = self.kill_at.expect("set above");
            if Instant::now() < deadline {
                self.write_status();
                return Some(Some(deadline));
            }
            let names: Vec<String> = self.running.keys().cloned().collect();
            for name in names {
                self.signal(&name, nix::sys::signal::Signal::SIGKILL);
            }
            return Some(Some(Instant::now() + Duration::from_millis(200)));
        }
        self.tear_down_sandbox().await;
        self.context.forget_pod(&self.uid);
        if !self.stopping {
            let _ = std::fs::remove_dir_all(&self.directory);
        }
        if !self.gone && !self.stopping {
            let target = Target::object(id_of("", "Pod"), &self.namespace, &self.name);
            let uid = self.uid.clone();
            let options = DeleteOptions {
                uid: Some(uid),
                ..DeleteOptions::now()
            };
            if let Err(error) = writes::delete(&self.context.state, &target, &options)
                && error.reason != "NotFound"
                && error.reason != "Conflict"
            {
                tracing::warn!(pod = %self.name, %error, "cannot remove a stopped pod");
            }
        }
        None
    }

    fn signal(&self, name: &str, signal: nix::sys::signal::Signal) {
        if let Some(running) = self.running.get(name)
            && let Ok(pid) = i32::try_from(running.pid)
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Writes the pod's status when it changed.
    fn write_status(&mut self) {
        if self.gone {
            return;
        }
        let target = Target::status(id_of("", "Pod"), &self.namespace, &self.name);
        let policy = restart_policy(&self.pod);
        let record = &self.record;
        let result = writes::update(&self.context.state, &target, |current| {
            if current.metadata.uid.as_deref() != Some(self.uid.as_str()) {
                return false;
            }
            let previous = current.data["status"].clone();
            let status = status::pod_status(record, &policy, &previous, &now());
            if status == previous {
                return false;
            }
            current.data["status"] = status;
            true
        });
        match result {
            Ok(stored) => self.written_status = Some(stored.object.data["status"].clone()),
            Err(error) if error.reason == "NotFound" => {}
            Err(error) => tracing::warn!(pod = %self.name, %error, "cannot write a pod's status"),
        }
    }
}

/// Runs `command` in a running container to completion (exec probes): its exit code and output.
pub async fn run_in_container(
    context: &Context,
    uid: &str,
    container: &str,
    command: Vec<String>,
) -> Result<(i32, String), String> {
    let exec = context
        .exec_context(uid, container)
        .ok_or_else(|| format!("container {container} is not running"))?;
    let child = container::exec(&context.config.causeway, &exec, &command, false)
        .map_err(|error| error.to_string())?;
    let output = child
        .wait_with_output()
        .await
        .map_err(|error| error.to_string())?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok((output.status.code().unwrap_or(-1), text))
}

/// Service-account tokens for a pod's projected volumes, bound to the pod, as the kubelet gets
/// them through the TokenRequest API.
struct PodTokens<'a> {
    context: &'a Context,
    pod: &'a Pod,
}

impl TokenIssuer for PodTokens<'_> {
    fn token(&self, audience: Option<&str>, seconds: i64) -> Result<String, String> {
        let namespace = self.pod.metadata.namespace.clone().unwrap_or_default();
        let account_name = self
            .pod
            .spec
            .as_ref()
            .and_then(|spec| spec.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let account: ServiceAccount = self
            .context
            .state
            .store
            .get(id_of("", "ServiceAccount"), &namespace, &account_name)
            .and_then(|stored| stored.decode().ok())
            .ok_or_else(|| format!("serviceaccount \"{account_name}\" not found"))?;
        let binding = Binding {
            namespace,
            serviceaccount: ObjectRef {
                name: account_name,
                uid: account.metadata.uid.unwrap_or_default(),
            },
            pod: Some(ObjectRef {
                name: self.pod.metadata.name.clone().unwrap_or_default(),
                uid: self.pod.metadata.uid.clone().unwrap_or_default(),
            }),
            secret: None,
        };
        let audiences = vec![
            audience
                .unwrap_or(crate::apiserver::tokens::ISSUER)
                .to_owned(),
        ];
        let issued = time::OffsetDateTime::now_utc().unix_timestamp();
        Ok(self
            .context
            .state
            .tokens
            .sign(&Claims::new(binding, audiences, issued, seconds)))
    }
}
