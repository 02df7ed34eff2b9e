//! The multi-cluster registry: one set of Kubernetes watches per cluster (the control plane's own,
//! plus one per remote secret), merged into debounced [`MeshSnapshot`]s.
//!
//! Data flow: `cluster_watch` (one task per cluster) turns watch events into [`records`] and sends
//! them to the `aggregator`, which applies them to each cluster's `cluster_state`, waits for the
//! debounce window, rebuilds only what changed, and publishes the snapshot and a [`Push`].
//! `remote_secrets` adds, rotates and removes clusters.

mod aggregator;
pub mod backoff;
pub mod cluster_state;
mod cluster_watch;
pub mod records;
pub mod remote_secrets;

use causeway_model::MeshSnapshot;
pub use causeway_model::Push;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub cluster_id: String,
    pub network: String,
    /// Where remote secrets live, and whose label names a cluster's network (`istio-system`).
    pub system_namespace: String,
    pub trust_domain: String,
    pub domain_suffix: String,
    /// Quiet time after the last change before pushing (`PILOT_DEBOUNCE_AFTER`).
    pub debounce: Duration,
    /// Longest delay of a push under continuous changes (`PILOT_DEBOUNCE_MAX`).
    pub debounce_max: Duration,
    /// How long readiness waits for remote clusters (`PILOT_REMOTE_CLUSTER_TIMEOUT`).
    pub remote_cluster_timeout: Duration,
}

impl RegistryConfig {
    pub fn new(cluster_id: &str) -> Self {
        RegistryConfig {
            cluster_id: cluster_id.to_owned(),
            network: String::new(),
            system_namespace: "istio-system".into(),
            trust_domain: "cluster.local".into(),
            domain_suffix: "cluster.local".into(),
            debounce: Duration::from_millis(100),
            debounce_max: Duration::from_secs(10),
            remote_cluster_timeout: Duration::from_secs(30),
        }
    }
}

/// The API client of one known cluster. A new generation means new credentials (a rotated remote
/// secret): whatever talks to the cluster should start over with the new client.
#[derive(Clone)]
pub struct ClusterClient {
    pub generation: u64,
    pub client: kube::Client,
}

/// The API clients of every known cluster, for TokenReview by the CA and for the controllers that
/// write into clusters; `subscribe` tells when clusters come, go or rotate.
#[derive(Clone)]
pub struct ClusterClients(Arc<watch::Sender<BTreeMap<String, ClusterClient>>>);

impl Default for ClusterClients {
    fn default() -> Self {
        ClusterClients(Arc::new(watch::Sender::new(BTreeMap::new())))
    }
}

impl ClusterClients {
    pub fn get(&self, cluster: &str) -> Option<kube::Client> {
        self.0
            .borrow()
            .get(cluster)
            .map(|known| known.client.clone())
    }

    /// Every known cluster now, and a signal at each later change.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<String, ClusterClient>> {
        self.0.subscribe()
    }

    fn insert(&self, cluster: &str, generation: u64, client: kube::Client) {
        self.0.send_modify(|clients| {
            clients.insert(cluster.to_owned(), ClusterClient { generation, client });
        });
    }

    fn remove(&self, cluster: &str) {
        self.0
            .send_if_modified(|clients| clients.remove(cluster).is_some());
    }
}

/// A running registry. Dropping it stops every watch.
pub struct Registry {
    pub snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    pub pushes: broadcast::Sender<Arc<Push>>,
    pub ready: watch::Receiver<bool>,
    pub clients: ClusterClients,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Registry {
    /// Starts watching `local` (the control plane's own cluster) and the remote secrets in its
    /// system namespace.
    pub fn start(config: RegistryConfig, local: kube::Client) -> Registry {
        let (to_aggregator, inbox) = mpsc::channel(4096);
        let (snapshots_tx, snapshots) = watch::channel(Arc::new(MeshSnapshot {
            domain_suffix: config.domain_suffix.clone(),
            ..MeshSnapshot::default()
        }));
        let (pushes, _) = broadcast::channel(256);
        let (ready_tx, ready) = watch::channel(false);
        let clients = ClusterClients::default();
        let mut aggregator = aggregator::Aggregator::new(
            config.clone(),
            to_aggregator.clone(),
            clients.clone(),
            snapshots_tx,
            pushes.clone(),
            ready_tx,
        );
        aggregator.add_local(local.clone());
        let tasks = vec![
            tokio::spawn(aggregator.run(inbox)),
            tokio::spawn(remote_secrets::run(
                local,
                config.system_namespace.clone(),
                to_aggregator,
            )),
        ];
        Registry {
            snapshots,
            pushes,
            ready,
            clients,
            tasks,
        }
    }

    pub fn snapshot(&self) -> Arc<MeshSnapshot> {
        self.snapshots.borrow().clone()
    }
}
