//! Lab clusters on this machine: their records under the lab's state directory, the lab network
//! they share, and the process each one runs in the background (its node, API server, kubelet
//! and service routing; it outlives the command that started it).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::apiserver;
use crate::kubeconfig::ClusterAccess;
use crate::network::{self, Bridge, LabNetwork, NetworkError, routes::ClusterAddresses};

const RECORD_FILE: &str = "cluster.json";
const ENDPOINT_FILE: &str = "apiserver.json";
const LOG_FILE: &str = "apiserver.log";
pub(crate) const DATA_DIR: &str = "data";
const NETWORK_FILE: &str = "lab.json";
const LOCK_FILE: &str = "lab.lock";
/// How long `create-cluster` waits for the API server to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cluster {0:?} already exists; delete it first with `causeway lab delete-cluster {0}`")]
    Exists(String),
    #[error(
        "no lab cluster is named {name:?} (clusters: {known}); create it with `causeway lab create-cluster`"
    )]
    Unknown { name: String, known: String },
    #[error(
        "{0:?} is not a valid cluster name: use lowercase letters, digits and '-', at most 50 characters, starting with a letter"
    )]
    BadName(String),
    #[error(
        "the {what} subnet {subnet} of cluster {name:?} overlaps the {other_what} subnet {other_subnet} of {other}; pick subnets that do not overlap (--pod-subnet, --service-subnet)"
    )]
    Overlap {
        name: String,
        what: &'static str,
        subnet: Ipv4Net,
        other: String,
        other_what: &'static str,
        other_subnet: Ipv4Net,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged ({reason}); delete the cluster with `causeway lab delete-cluster` and create it again"
    )]
    BadRecord { path: PathBuf, reason: String },
    #[error(
        "the API server of cluster {name:?} did not start: {reason}. Its log ({log}) ends with:\n{tail}"
    )]
    StartFailed {
        name: String,
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error("cluster {0:?} is not running; start it with `causeway lab start-cluster {0}`")]
    NotRunning(String),
    #[error(transparent)]
    ApiServer(#[from] apiserver::StartError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("{0}")]
    Refused(String),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LabError + 'a {
    move |source| LabError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What a cluster is made with (kind's Cluster config plus flags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRecord {
    pub name: String,
    pub pod_subnet: Ipv4Net,
    pub service_subnet: Ipv4Net,
    pub created: String,
    /// The port the API server last listened on; a restart tries it first so kubeconfigs stay valid.
    #[serde(default)]
    pub api_port: Option<u16>,
    /// The node's address on the lab network (kind's `docker inspect ... IPAddress`).
    #[serde(default)]
    pub node_address: Option<Ipv4Addr>,
    /// LoadBalancer addresses given at creation (`--load-balancer-pool`), as a metallb
    /// IPAddressPool's `addresses` entry.
    #[serde(default)]
    pub load_balancer_pool: Option<String>,
}

impl ClusterRecord {
    /// Where the cluster's addresses live, once it has a node address.
    pub fn addresses(&self) -> Option<ClusterAddresses> {
        Some(ClusterAddresses {
            name: self.name.clone(),
            node: self.node_address?,
            pod_subnet: self.pod_subnet,
            service_subnet: self.service_subnet,
        })
    }
}

/// Optional settings of a new cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    pub load_balancer_pool: Option<String>,
}

/// Written by a running API server process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub pid: u32,
    pub address: SocketAddr,
}

#[derive(Debug, Clone)]
pub enum ClusterStatus {
    Running(Endpoint),
    Stopped,
}

pub struct Lab {
    root: PathBuf,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 50
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.ends_with('-')
}

fn process_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .windows(b"serve-cluster".len())
            .any(|window| window == b"serve-cluster")
    }) && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

/// Sends a signal; a process that is already gone is not an error.
fn signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Lab {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$CAUSEWAY_LAB_DIR` is read by the CLI; this is the fallback.
    pub fn default_root() -> PathBuf {
        crate::kubeconfig::home_dir().join(".causeway").join("lab")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn clusters_dir(&self) -> PathBuf {
        self.root.join("clusters")
    }

    pub fn cluster_dir(&self, name: &str) -> PathBuf {
        self.clusters_dir().join(name)
    }

    pub(crate) fn endpoint_path(&self, name: &str) -> PathBuf {
        self.cluster_dir(name).join(ENDPOINT_FILE)
    }

    pub(crate) fn record_path(&self, name: &str) -> PathBuf {
        self.cluster_dir(name).join(RECORD_FILE)
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.cluster_dir(name).join(LOG_FILE)
    }

    /// Holds the lab's lock until dropped: lab-wide changes (a new cluster's node address, the
    /// bridge, connections) are made one at a time, also across processes.
    pub fn lock(&self) -> Result<std::fs::File, LabError> {
        std::fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        let path = self.root.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        file.lock().map_err(io("lock", &path))?;
        Ok(file)
    }

    /// The lab network: its subnet, its bridge's namespace and the clusters' connections.
    pub fn network(&self) -> Result<LabNetwork, LabError> {
        let path = self.root.join(NETWORK_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| LabError::BadRecord {
                path,
                reason: error.to_string(),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(LabNetwork::new(
                &self.root,
                network::DEFAULT_LAB_SUBNET
                    .parse()
                    .expect("the default lab subnet is valid"),
            )),
            Err(error) => Err(io("read", &path)(error)),
        }
    }

    fn save_network(&self, network: &LabNetwork) -> Result<(), LabError> {
        std::fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        Self::write_json(&self.root.join(NETWORK_FILE), network)
    }

    /// The lab's bridge, made when missing.
    pub fn bridge(&self) -> Result<Bridge, LabError> {
        let _lock = self.lock()?;
        let network = self.network()?;
        self.save_network(&network)?;
        Ok(Bridge::ensure(&network.bridge_namespace)?)
    }

    /// Every cluster's addresses (those with a node).
    pub fn addresses(&self) -> Result<Vec<ClusterAddresses>, LabError> {
        Ok(self
            .clusters()?
            .iter()
            .filter_map(ClusterRecord::addresses)
            .collect())
    }

    /// Routes `a` and `b` to each other's pod and service subnets through their nodes (the seeds'
    /// `ip route add ... via <node> dev eth0` on both nodes), now if they run and whenever they
    /// start again. Returns false when they were connected already.
    pub fn connect(&self, a: &str, b: &str) -> Result<bool, LabError> {
        self.change_connection(a, b, true)
    }

    /// Removes what [`Lab::connect`] added. Returns false when they were not connected.
    pub fn disconnect(&self, a: &str, b: &str) -> Result<bool, LabError> {
        self.change_connection(a, b, false)
    }

    fn change_connection(&self, a: &str, b: &str, connect: bool) -> Result<bool, LabError> {
        if a == b {
            return Err(LabError::Refused(format!(
                "a cluster cannot be connected to itself ({a})"
            )));
        }
        let _lock = self.lock()?;
        let (left, right) = (self.record(a)?, self.record(b)?);
        let (Some(left), Some(right)) = (left.addresses(), right.addresses()) else {
            return Err(LabError::Refused(format!(
                "{a} or {b} has no node yet; start it with `causeway lab start-cluster`"
            )));
        };
        let mut network = self.network()?;
        let changed = if connect {
            network.connect(a, b)
        } else {
            network.disconnect(a, b)
        };
        self.save_network(&network)?;
        for (from, to) in [(&left, &right), (&right, &left)] {
            let node = network::node_namespace(&from.name);
            if !crate::netns::Netns::exists(&node) {
                continue;
            }
            let node = crate::netns::Netns::open(&node);
            for (prefix, via) in network::routes::routes_to(to) {
                let command = if connect {
                    format!(
                        "route replace {prefix} via {via} dev {}",
                        network::NODE_INTERFACE
                    )
                } else {
                    format!(
                        "route del {prefix} via {via} dev {}",
                        network::NODE_INTERFACE
                    )
                };
                let result = node.ip_batch(&[command]);
                if connect {
                    result.map_err(NetworkError::from)?;
                }
            }
        }
        Ok(changed)
    }

    /// Every cluster's record, by name.
    pub fn clusters(&self) -> Result<Vec<ClusterRecord>, LabError> {
        let directory = self.clusters_dir();
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io("read", &directory)(error)),
        };
        let mut records = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("read", &directory))?;
            if entry.path().join(RECORD_FILE).exists() {
                records.push(self.record(&entry.file_name().to_string_lossy())?);
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    pub fn record(&self, name: &str) -> Result<ClusterRecord, LabError> {
        let path = self.cluster_dir(name).join(RECORD_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let known = self
                    .clusters()
                    .map(|records| {
                        records
                            .into_iter()
                            .map(|record| record.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                return Err(LabError::Unknown {
                    name: name.to_owned(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        known
                    },
                });
            }
            Err(error) => return Err(io("read", &path)(error)),
        };
        serde_json::from_slice(&bytes).map_err(|error| LabError::BadRecord {
            path,
            reason: error.to_string(),
        })
    }

    pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<(), LabError> {
        let bytes = serde_json::to_vec_pretty(value).expect("records always serialize");
        causeway_ca::files::write_atomically(path, &bytes, causeway_ca::files::Visibility::Public)
            .map_err(|error| io("write", path)(error.source))
    }

    pub fn status(&self, name: &str) -> ClusterStatus {
        let path = self.cluster_dir(name).join(ENDPOINT_FILE);
        match std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Endpoint>(&bytes).ok())
        {
            Some(endpoint) if process_alive(endpoint.pid) => ClusterStatus::Running(endpoint),
            _ => ClusterStatus::Stopped,
        }
    }

    /// Records a new cluster after checking its name and that its subnets overlap no other
    /// cluster's.
    pub fn add(
        &self,
        name: &str,
        pod_subnet: Ipv4Net,
        service_subnet: Ipv4Net,
        options: ClusterOptions,
    ) -> Result<ClusterRecord, LabError> {
        if !valid_name(name) {
            return Err(LabError::BadName(name.to_owned()));
        }
        let _lock = self.lock()?;
        let overlap =
            |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
        if overlap(&pod_subnet, &service_subnet) {
            return Err(LabError::Overlap {
                name: name.to_owned(),
                what: "pod",
                subnet: pod_subnet,
                other: name.to_owned(),
                other_what: "service",
                other_subnet: service_subnet,
            });
        }
        let existing = self.clusters()?;
        if existing.iter().any(|record| record.name == name) {
            return Err(LabError::Exists(name.to_owned()));
        }
        let node = network::node_namespace(name);
        if crate::netns::Netns::exists(&node) {
            return Err(NetworkError::Taken { name: node }.into());
        }
        let network = self.network()?;
        let lab_subnet = network.subnet;
        for (what, subnet) in [("pod", pod_subnet), ("service", service_subnet)] {
            if overlap(&subnet, &lab_subnet) {
                return Err(LabError::Refused(format!(
                    "the {what} subnet {subnet} of cluster {name:?} overlaps the lab network \
                     {lab_subnet}; pick another (--pod-subnet, --service-subnet)"
                )));
            }
        }
        let taken: Vec<Ipv4Addr> = existing
            .iter()
            .filter_map(|record| record.node_address)
            .collect();
        let node_address = network.free_node_address(&taken)?;
        for record in &existing {
            for (what, subnet) in [("pod", pod_subnet), ("service", service_subnet)] {
                for (other_what, other_subnet) in [
                    ("pod", record.pod_subnet),
                    ("service", record.service_subnet),
                ] {
                    if overlap(&subnet, &other_subnet) {
                        return Err(LabError::Overlap {
                            name: name.to_owned(),
                            what,
                            subnet,
                            other: record.name.clone(),
                            other_what,
                            other_subnet,
                        });
                    }
                }
            }
        }
        let clusters = self.clusters_dir();
        std::fs::create_dir_all(&clusters).map_err(io("create", &clusters))?;
        let directory = self.cluster_dir(name);
        match std::fs::create_dir(&directory) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(LabError::Exists(name.to_owned()));
            }
            Err(error) => return Err(io("create", &directory)(error)),
        }
        let record = ClusterRecord {
            name: name.to_owned(),
            pod_subnet,
            service_subnet,
            created: crate::apiserver::metadata::now(),
            api_port: None,
            node_address: Some(node_address),
            load_balancer_pool: options.load_balancer_pool,
        };
        Self::write_json(&directory.join(RECORD_FILE), &record)?;
        Ok(record)
    }

    /// Starts the cluster's API server in the background with `executable lab serve-cluster` and
    /// waits until it answers.
    pub fn start(&self, name: &str, executable: &Path) -> Result<ClusterAccess, LabError> {
        self.record(name)?;
        if let ClusterStatus::Running(_) = self.status(name) {
            return self.access(name);
        }
        self.remove_leftovers(name)?;
        let directory = self.cluster_dir(name);
        let endpoint_path = directory.join(ENDPOINT_FILE);
        let _ = std::fs::remove_file(&endpoint_path);
        let log_path = directory.join(LOG_FILE);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io("open", &log_path))?;
        let log_err = log.try_clone().map_err(io("open", &log_path))?;
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(executable)
            .arg("lab")
            .arg("serve-cluster")
            .arg("--state-dir")
            .arg(&self.root)
            .arg(name)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a Ctrl-C aimed at the CLI does not reach the API server.
            .process_group(0)
            .spawn()
            .map_err(io("run", executable))?;
        let failed = |reason: String| LabError::StartFailed {
            name: name.to_owned(),
            reason,
            log: log_path.clone(),
            tail: log_tail(&log_path),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failed(format!("it exited ({status})")));
            }
            if let ClusterStatus::Running(endpoint) = self.status(name)
                && endpoint.pid == child.id()
            {
                return self.access(name);
            }
            if Instant::now() > deadline {
                signal(child.id(), Signal::SIGKILL);
                let _ = child.wait();
                return Err(failed(format!(
                    "it did not answer within {}s",
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the cluster's process (TERM, then KILL after a grace period), then removes whatever
    /// it left: its node's and pods' namespaces and the processes in them (all of it after a
    /// `kill -9`, nothing after a clean stop). The cluster's objects are kept.
    pub fn stop(&self, name: &str) -> Result<(), LabError> {
        self.record(name)?;
        if let ClusterStatus::Running(endpoint) = self.status(name) {
            signal(endpoint.pid, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while process_alive(endpoint.pid) {
                if Instant::now() > deadline {
                    signal(endpoint.pid, Signal::SIGKILL);
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_file(self.cluster_dir(name).join(ENDPOINT_FILE));
        self.remove_leftovers(name)?;
        Ok(())
    }

    /// Removes the namespaces (and processes) a cluster whose process is gone left behind.
    pub fn remove_leftovers(&self, name: &str) -> Result<Vec<String>, LabError> {
        let removed = network::remove_cluster_namespaces(name)?;
        if !removed.is_empty() {
            tracing::info!(cluster = name, namespaces = ?removed, "removed what a stopped cluster left");
        }
        Ok(removed)
    }

    /// Stops the cluster and removes everything it stored; with the lab's last cluster, the lab
    /// network goes too.
    pub fn delete(&self, name: &str) -> Result<(), LabError> {
        self.stop(name)?;
        let directory = self.cluster_dir(name);
        std::fs::remove_dir_all(&directory).map_err(io("remove", &directory))?;
        let _lock = self.lock()?;
        let mut network = self.network()?;
        network.forget(name);
        if self.clusters()?.is_empty() {
            Bridge::remove(&network.bridge_namespace)?;
            let path = self.root.join(NETWORK_FILE);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(io("remove", &path)(error)),
            }
        } else {
            self.save_network(&network)?;
        }
        Ok(())
    }

    /// Server address, CA and admin token of a running cluster.
    pub fn access(&self, name: &str) -> Result<ClusterAccess, LabError> {
        let ClusterStatus::Running(endpoint) = self.status(name) else {
            return Err(LabError::NotRunning(name.to_owned()));
        };
        let data = self.cluster_dir(name).join(DATA_DIR);
        let read = |file: &str| {
            let path = data.join(file);
            std::fs::read_to_string(&path).map_err(io("read", &path))
        };
        Ok(ClusterAccess {
            name: name.to_owned(),
            server: format!("https://{}", endpoint.address),
            ca_pem: read("apiserver-ca.pem")?,
            token: read("admin-token")?.trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_subnets_and_bad_names_are_refused_before_anything_is_written() {
        let directory = tempfile::tempdir().unwrap();
        let lab = Lab::new(directory.path());
        let net = |text: &str| text.parse::<Ipv4Net>().unwrap();
        lab.add(
            "unit-one",
            net("10.10.0.0/16"),
            net("10.11.0.0/16"),
            ClusterOptions::default(),
        )
        .unwrap();
        let error = lab
            .add(
                "unit-two",
                net("10.20.0.0/16"),
                net("10.11.128.0/17"),
                ClusterOptions::default(),
            )
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("overlaps the service subnet 10.11.0.0/16 of unit-one"),
            "{error}"
        );
        assert!(matches!(
            lab.add(
                "unit-one",
                net("10.30.0.0/16"),
                net("10.31.0.0/16"),
                ClusterOptions::default()
            ),
            Err(LabError::Exists(_))
        ));
        assert!(matches!(
            lab.add(
                "Cluster_3",
                net("10.30.0.0/16"),
                net("10.31.0.0/16"),
                ClusterOptions::default()
            ),
            Err(LabError::BadName(_))
        ));
        assert!(
            lab.add(
                "same",
                net("10.40.0.0/16"),
                net("10.40.0.0/24"),
                ClusterOptions::default()
            )
            .is_err()
        );
        let error = lab
            .add(
                "unit-three",
                net("172.18.64.0/24"),
                net("10.50.0.0/16"),
                ClusterOptions::default(),
            )
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("overlaps the lab network 172.18.0.0/16"),
            "{error}"
        );
        assert_eq!(lab.clusters().unwrap().len(), 1);
        let second = lab
            .add(
                "unit-two",
                net("10.20.0.0/16"),
                net("10.21.0.0/16"),
                ClusterOptions::default(),
            )
            .unwrap();
        assert_eq!(
            lab.record("unit-one").unwrap().node_address,
            Some(Ipv4Addr::new(172, 18, 0, 2))
        );
        assert_eq!(second.node_address, Some(Ipv4Addr::new(172, 18, 0, 3)));
        assert!(matches!(lab.status("unit-one"), ClusterStatus::Stopped));
        assert!(matches!(lab.record("nope"), Err(LabError::Unknown { .. })));
    }
}
