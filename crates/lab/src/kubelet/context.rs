//! What the kubelet's pod workers share: the cluster's API state, the node, pod addresses and
//! routes, and what `kubectl exec` and `kubectl logs` look up about running containers.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use tokio::sync::watch;

use super::container::ExecContext;
use super::env::{Lookup, ServiceLink};
use super::ipam::PodAddresses;
use super::volumes::ObjectData;
use crate::apiserver::resources::id_of;
use crate::apiserver::state::ApiState;
use crate::netns::Netns;

/// How the kubelet runs on its node.
#[derive(Clone)]
pub struct KubeletConfig {
    pub cluster: String,
    pub node_name: String,
    pub node: Netns,
    pub node_address: Ipv4Addr,
    pub pod_subnet: Ipv4Net,
    /// The cluster DNS's address (the `kube-dns` Service's ClusterIP).
    pub dns: Ipv4Addr,
    /// Where pods' volumes, logs and containers' scratch space live.
    pub pods_dir: PathBuf,
    /// This build's `causeway`: containers start through it, and it runs the built-in apps.
    pub causeway: PathBuf,
    /// A runtime on a thread inside the node's namespace: probes connect from the node.
    pub node_runtime: tokio::runtime::Handle,
    pub node_cpus: u32,
    pub node_memory_bytes: u64,
}

/// A container's log, as `kubectl logs` finds it.
#[derive(Debug, Clone)]
pub struct LogInfo {
    pub current: PathBuf,
    pub previous: Option<PathBuf>,
    pub ended: watch::Receiver<bool>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update of these maps is a single insert or remove: a panic elsewhere cannot leave
    // them half-changed.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct Context {
    pub state: Arc<ApiState>,
    pub config: KubeletConfig,
    addresses: Mutex<PodAddresses>,
    prefixes: Mutex<Vec<Ipv4Net>>,
    execs: Mutex<HashMap<(String, String), ExecContext>>,
    logs: Mutex<HashMap<(String, String), LogInfo>>,
}

impl Context {
    pub fn new(state: Arc<ApiState>, config: KubeletConfig, prefixes: Vec<Ipv4Net>) -> Self {
        Self {
            addresses: Mutex::new(PodAddresses::new(config.pod_subnet)),
            state,
            config,
            prefixes: Mutex::new(prefixes),
            execs: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        lock(&self.addresses).gateway()
    }

    /// The pod's previous address when it is still free, else a new one.
    pub fn address_for(&self, previous: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let mut addresses = lock(&self.addresses);
        match previous {
            Some(address) if addresses.reserve(address) => Some(address),
            _ => addresses.allocate(),
        }
    }

    pub fn release_address(&self, address: Ipv4Addr) {
        lock(&self.addresses).release(address);
    }

    pub fn prefixes(&self) -> Vec<Ipv4Net> {
        lock(&self.prefixes).clone()
    }

    /// Sets the lab's prefixes; the previous ones when they changed.
    pub fn set_prefixes(&self, prefixes: Vec<Ipv4Net>) -> Option<Vec<Ipv4Net>> {
        let mut current = lock(&self.prefixes);
        if *current == prefixes {
            return None;
        }
        Some(std::mem::replace(&mut current, prefixes))
    }

    pub fn set_exec(&self, uid: &str, container: &str, context: Option<ExecContext>) {
        let key = (uid.to_owned(), container.to_owned());
        match context {
            Some(context) => lock(&self.execs).insert(key, context),
            None => lock(&self.execs).remove(&key),
        };
    }

    pub fn exec_context(&self, uid: &str, container: &str) -> Option<ExecContext> {
        lock(&self.execs)
            .get(&(uid.to_owned(), container.to_owned()))
            .cloned()
    }

    pub fn set_log(&self, uid: &str, container: &str, info: LogInfo) {
        lock(&self.logs).insert((uid.to_owned(), container.to_owned()), info);
    }

    pub fn log(&self, uid: &str, container: &str) -> Option<LogInfo> {
        lock(&self.logs)
            .get(&(uid.to_owned(), container.to_owned()))
            .cloned()
    }

    pub fn forget_pod(&self, uid: &str) {
        lock(&self.execs).retain(|(pod, _), _| pod != uid);
        lock(&self.logs).retain(|(pod, _), _| pod != uid);
    }

    /// The Services a container's environment names: its namespace's, and `kubernetes`.
    pub fn service_links(&self, namespace: &str) -> Vec<ServiceLink> {
        let services = id_of("", "Service");
        let mut stored = self.state.store.list(services, Some(namespace)).0;
        if namespace != "default"
            && let Some(kubernetes) = self.state.store.get(services, "default", "kubernetes")
        {
            stored.push(kubernetes);
        }
        stored
            .iter()
            .filter_map(|stored| stored.decode::<Service>().ok())
            .filter_map(|service| {
                let spec = service.spec?;
                Some(ServiceLink {
                    name: service.metadata.name?,
                    cluster_ip: spec.cluster_ip.unwrap_or_default(),
                    ports: spec
                        .ports
                        .unwrap_or_default()
                        .into_iter()
                        .map(|port| {
                            (
                                port.name,
                                port.port,
                                port.protocol.unwrap_or_else(|| "TCP".into()),
                            )
                        })
                        .collect(),
                })
            })
            .collect()
    }
}

/// ConfigMaps and Secrets of one namespace, as volumes and environment variables read them.
pub struct NamespaceData<'a> {
    pub state: &'a ApiState,
    pub namespace: &'a str,
}

impl NamespaceData<'_> {
    fn config_map(&self, name: &str) -> Option<ConfigMap> {
        self.state
            .store
            .get(id_of("", "ConfigMap"), self.namespace, name)?
            .decode()
            .ok()
    }

    fn secret(&self, name: &str) -> Option<Secret> {
        self.state
            .store
            .get(id_of("", "Secret"), self.namespace, name)?
            .decode()
            .ok()
    }
}

impl ObjectData for NamespaceData<'_> {
    fn config_map_bytes(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let config_map = self.config_map(name)?;
        let mut data: BTreeMap<String, Vec<u8>> = config_map
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.into_bytes()))
            .collect();
        for (key, value) in config_map.binary_data.unwrap_or_default() {
            data.insert(key, value.0);
        }
        Some(data)
    }

    fn secret_bytes(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let secret = self.secret(name)?;
        Some(
            secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(key, value)| (key, value.0))
                .collect(),
        )
    }
}

impl Lookup for NamespaceData<'_> {
    fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>> {
        Some(
            self.config_map_bytes(name)?
                .into_iter()
                .map(|(key, value)| (key, String::from_utf8_lossy(&value).into_owned()))
                .collect(),
        )
    }

    fn secret(&self, name: &str) -> Option<BTreeMap<String, String>> {
        Some(
            self.secret_bytes(name)?
                .into_iter()
                .map(|(key, value)| (key, String::from_utf8_lossy(&value).into_owned()))
                .collect(),
        )
    }
}
