//! Lab clusters on this machine: their records under the lab's state directory, and the API server
//! process each one runs in the background (it outlives the command that started it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::apiserver::{self, ApiServerConfig};
use crate::kubeconfig::ClusterAccess;

const RECORD_FILE: &str = "cluster.json";
const ENDPOINT_FILE: &str = "apiserver.json";
const LOG_FILE: &str = "apiserver.log";
const DATA_DIR: &str = "data";
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

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.cluster_dir(name).join(LOG_FILE)
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

    fn write_json(path: &Path, value: &impl Serialize) -> Result<(), LabError> {
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
    ) -> Result<ClusterRecord, LabError> {
        if !valid_name(name) {
            return Err(LabError::BadName(name.to_owned()));
        }
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

    /// Stops the cluster's API server (TERM, then KILL after a grace period).
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
        Ok(())
    }

    /// Stops the cluster and removes everything it stored.
    pub fn delete(&self, name: &str) -> Result<(), LabError> {
        self.stop(name)?;
        let directory = self.cluster_dir(name);
        std::fs::remove_dir_all(&directory).map_err(io("remove", &directory))
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

    /// Runs the cluster's API server in this process until SIGTERM or SIGINT (`lab serve-cluster`).
    pub async fn serve(&self, name: &str) -> Result<(), LabError> {
        let mut record = self.record(name)?;
        let directory = self.cluster_dir(name);
        let mut config =
            ApiServerConfig::new(name, directory.join(DATA_DIR), record.service_subnet);
        if let Some(port) = record.api_port {
            config.listen.set_port(port);
        }
        let server = match apiserver::start(config.clone()).await {
            Ok(server) => server,
            Err(apiserver::StartError::Listen { address, source }) if record.api_port.is_some() => {
                tracing::warn!(%address, %source, "the previous port is taken; listening on a new one (kubeconfigs need `causeway lab start-cluster` to refresh)");
                config.listen.set_port(0);
                apiserver::start(config).await?
            }
            Err(error) => return Err(error.into()),
        };
        record.api_port = Some(server.address.port());
        Self::write_json(&directory.join(RECORD_FILE), &record)?;
        let endpoint = Endpoint {
            pid: std::process::id(),
            address: server.address,
        };
        Self::write_json(&directory.join(ENDPOINT_FILE), &endpoint)?;
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(io("listen for signals in", &directory))?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!(cluster = name, "stopping");
        let _ = std::fs::remove_file(directory.join(ENDPOINT_FILE));
        server.shutdown().await;
        Ok(())
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
        lab.add("cluster01", net("10.10.0.0/16"), net("10.11.0.0/16"))
            .unwrap();
        let error = lab
            .add("cluster02", net("10.20.0.0/16"), net("10.11.128.0/17"))
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("overlaps the service subnet 10.11.0.0/16 of cluster01"),
            "{error}"
        );
        assert!(matches!(
            lab.add("cluster01", net("10.30.0.0/16"), net("10.31.0.0/16")),
            Err(LabError::Exists(_))
        ));
        assert!(matches!(
            lab.add("Cluster_3", net("10.30.0.0/16"), net("10.31.0.0/16")),
            Err(LabError::BadName(_))
        ));
        assert!(
            lab.add("same", net("10.40.0.0/16"), net("10.40.0.0/24"))
                .is_err()
        );
        assert_eq!(lab.clusters().unwrap().len(), 1);
        assert!(matches!(lab.status("cluster01"), ClusterStatus::Stopped));
        assert!(matches!(lab.record("nope"), Err(LabError::Unknown { .. })));
    }
}
