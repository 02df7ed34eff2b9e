//! The registry's one owner of state: applies every cluster's changes, debounces them, and
//! publishes a new [`MeshSnapshot`] plus a [`Push`] saying what changed.

use crate::cluster_state::{ClusterState, Dirty};
use crate::cluster_watch::ClusterWatch;
use crate::records::{Kind, ObjectKey, Record};
use crate::{ClusterClients, Push, RegistryConfig};
use causeway_model::vip::VipAllocator;
use causeway_model::{
    ClusterStatus, DefinedBy, Endpoint, IstioGateway, MeshSnapshot, NetworkGateway, Service,
    ServiceEndpoints, ServiceEntry, SyncState,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub(crate) enum Message {
    Reset {
        cluster: String,
        generation: u64,
        kind: Kind,
        records: Vec<Record>,
    },
    Apply {
        cluster: String,
        generation: u64,
        record: Record,
    },
    Delete {
        cluster: String,
        generation: u64,
        kind: Kind,
        key: ObjectKey,
    },
    Sync {
        cluster: String,
        generation: u64,
        state: SyncState,
    },
    /// A remote secret holds credentials for `cluster` (new, or changed: `fingerprint` tells).
    UpsertRemote {
        cluster: String,
        secret: String,
        fingerprint: u64,
        client: Box<kube::Client>,
    },
    /// A remote secret's credentials for `cluster` are unusable.
    FailedRemote {
        cluster: String,
        secret: String,
        error: String,
    },
    RemoveRemote {
        cluster: String,
        secret: String,
    },
}

struct ClusterEntry {
    state: ClusterState,
    generation: u64,
    secret: Option<String>,
    fingerprint: u64,
    sync: SyncState,
    added: Instant,
    task: Option<JoinHandle<()>>,
}

impl Drop for ClusterEntry {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub(crate) struct Aggregator {
    pub config: RegistryConfig,
    pub to_self: mpsc::Sender<Message>,
    pub clients: ClusterClients,
    pub snapshots: watch::Sender<Arc<MeshSnapshot>>,
    pub pushes: broadcast::Sender<Arc<Push>>,
    pub ready: watch::Sender<bool>,
    clusters: BTreeMap<String, ClusterEntry>,
    vips: VipAllocator,
    /// The hosts the config cluster's ServiceEntries define in the published snapshot.
    entry_hosts: BTreeSet<String>,
    pending: Dirty,
    first_change: Option<Instant>,
    last_change: Option<Instant>,
    next_generation: u64,
}

impl Aggregator {
    pub fn new(
        config: RegistryConfig,
        to_self: mpsc::Sender<Message>,
        clients: ClusterClients,
        snapshots: watch::Sender<Arc<MeshSnapshot>>,
        pushes: broadcast::Sender<Arc<Push>>,
        ready: watch::Sender<bool>,
    ) -> Self {
        Aggregator {
            config,
            to_self,
            clients,
            snapshots,
            pushes,
            ready,
            clusters: BTreeMap::new(),
            vips: VipAllocator::default(),
            entry_hosts: BTreeSet::new(),
            pending: Dirty::default(),
            first_change: None,
            last_change: None,
            next_generation: 1,
        }
    }

    pub fn add_local(&mut self, client: kube::Client) {
        let id = self.config.cluster_id.clone();
        self.start_cluster(id, None, 0, client);
    }

    pub async fn run(mut self, mut inbox: mpsc::Receiver<Message>) {
        loop {
            let flush_at = self.flush_deadline();
            let ready_check_at = self.next_ready_deadline();
            tokio::select! {
                message = inbox.recv() => {
                    let Some(message) = message else { return };
                    self.handle(message);
                    if self.config.debounce.is_zero() {
                        // No window: take whatever is already queued, then push at once.
                        while let Ok(message) = inbox.try_recv() {
                            self.handle(message);
                        }
                        self.flush();
                    }
                }
                _ = sleep_until(flush_at), if flush_at.is_some() => self.flush(),
                _ = sleep_until(ready_check_at), if ready_check_at.is_some() => self.update_ready(),
            }
            self.update_ready();
        }
    }

    fn flush_deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first_change?, self.last_change?);
        Some((last + self.config.debounce).min(first + self.config.debounce_max))
    }

    /// When a remote cluster that is still syncing stops holding up readiness.
    fn next_ready_deadline(&self) -> Option<Instant> {
        if *self.ready.borrow() {
            return None;
        }
        self.clusters
            .values()
            .filter(|c| c.secret.is_some() && c.sync != SyncState::Synced)
            .map(|c| c.added + self.config.remote_cluster_timeout)
            .filter(|deadline| *deadline > Instant::now())
            .min()
    }

    fn update_ready(&mut self) {
        let now = Instant::now();
        let ready = self.clusters.values().all(|c| match &c.secret {
            None => c.sync == SyncState::Synced,
            Some(_) => {
                c.sync == SyncState::Synced || now >= c.added + self.config.remote_cluster_timeout
            }
        }) && !self.clusters.is_empty();
        if ready && !*self.ready.borrow() && self.first_change.is_some() {
            // Nothing is served before readiness, so the first complete snapshot need not wait
            // out the debounce window; and readiness must not be announced before it exists.
            self.flush();
        }
        self.ready
            .send_if_modified(|current| std::mem::replace(current, ready) != ready);
    }

    fn start_cluster(
        &mut self,
        id: String,
        secret: Option<String>,
        fingerprint: u64,
        client: kube::Client,
    ) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let task = ClusterWatch {
            cluster: id.clone(),
            generation,
            client: client.clone(),
            system_namespace: self.config.system_namespace.clone(),
            config_cluster: secret.is_none(),
        }
        .spawn(self.to_self.clone());
        self.clients.insert(&id, generation, client);
        let entry = self.entry(&id, secret.clone());
        // A rotated credential keeps the cluster's last known state until the new watches relist.
        if let Some(old) = entry.task.replace(task) {
            old.abort();
        }
        entry.generation = generation;
        entry.fingerprint = fingerprint;
        entry.secret = secret;
        self.publish_status();
    }

    /// The cluster's entry, made empty (not synced, no watches) when it is new. The own cluster
    /// (no secret) starts on the configured network; remote ones take theirs from their labels.
    fn entry(&mut self, id: &str, secret: Option<String>) -> &mut ClusterEntry {
        let network = if secret.is_none() {
            self.config.network.as_str()
        } else {
            ""
        };
        let state = ClusterState::new(
            id,
            network,
            &self.config.system_namespace,
            &self.config.trust_domain,
        );
        self.clusters
            .entry(id.to_owned())
            .or_insert_with(|| ClusterEntry {
                state,
                generation: 0,
                secret,
                fingerprint: 0,
                sync: SyncState::NotSynced("starting".into()),
                added: Instant::now(),
                task: None,
            })
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Reset {
                cluster,
                generation,
                kind,
                records,
            } => {
                if let Some(state) = self.current_state(&cluster, generation) {
                    let dirty = state.reset(kind, records);
                    self.note(dirty);
                }
            }
            Message::Apply {
                cluster,
                generation,
                record,
            } => {
                if let Some(state) = self.current_state(&cluster, generation) {
                    let dirty = state.apply(record);
                    self.note(dirty);
                }
            }
            Message::Delete {
                cluster,
                generation,
                kind,
                key,
            } => {
                if let Some(state) = self.current_state(&cluster, generation) {
                    let dirty = state.delete(kind, &key);
                    self.note(dirty);
                }
            }
            Message::Sync {
                cluster,
                generation,
                state,
            } => {
                if let Some(entry) = self
                    .clusters
                    .get_mut(&cluster)
                    .filter(|e| e.generation == generation)
                {
                    tracing::info!(%cluster, state = ?state, "cluster sync state");
                    entry.sync = state;
                    self.publish_status();
                }
            }
            Message::UpsertRemote {
                cluster,
                secret,
                fingerprint,
                client,
            } => {
                if let Some(reason) = self.refuse_remote(&cluster, &secret) {
                    tracing::error!(%cluster, %secret, "ignoring remote cluster: {reason}");
                    return;
                }
                let unchanged = self
                    .clusters
                    .get(&cluster)
                    .is_some_and(|e| e.fingerprint == fingerprint && e.task.is_some());
                if !unchanged {
                    tracing::info!(%cluster, %secret, "watching remote cluster");
                    self.start_cluster(cluster, Some(secret), fingerprint, *client);
                }
            }
            Message::FailedRemote {
                cluster,
                secret,
                error,
            } => {
                if let Some(reason) = self.refuse_remote(&cluster, &secret) {
                    tracing::error!(%cluster, %secret, "ignoring remote cluster: {reason}");
                    return;
                }
                tracing::error!(%cluster, %secret, "cannot use remote cluster: {error}");
                let entry = self.entry(&cluster, Some(secret));
                // Keep serving what the old credentials showed; stop using them.
                if let Some(task) = entry.task.take() {
                    task.abort();
                }
                entry.fingerprint = 0;
                entry.sync = SyncState::Failed(error);
                self.publish_status();
            }
            Message::RemoveRemote { cluster, secret } => {
                let owned = self
                    .clusters
                    .get(&cluster)
                    .is_some_and(|e| e.secret.as_deref() == Some(secret.as_str()));
                if owned && let Some(mut entry) = self.clusters.remove(&cluster) {
                    tracing::info!(%cluster, %secret, "remote cluster removed with its secret");
                    self.clients.remove(&cluster);
                    let dirty = entry.state.clear();
                    self.note(dirty);
                    self.publish_status();
                }
            }
        }
    }

    /// Why a remote secret may not claim `cluster`, if it may not.
    fn refuse_remote(&self, cluster: &str, secret: &str) -> Option<String> {
        if cluster == self.config.cluster_id {
            return Some(format!(
                "its cluster ID is the control plane's own cluster `{cluster}`; a remote secret must name another cluster"
            ));
        }
        match self.clusters.get(cluster).and_then(|e| e.secret.as_deref()) {
            Some(owner) if owner != secret => Some(format!(
                "cluster `{cluster}` is already registered by secret {owner}; delete one of the two secrets"
            )),
            _ => None,
        }
    }

    fn current_state(&mut self, cluster: &str, generation: u64) -> Option<&mut ClusterState> {
        self.clusters
            .get_mut(cluster)
            .filter(|entry| entry.generation == generation)
            .map(|entry| &mut entry.state)
    }

    fn note(&mut self, mut dirty: Dirty) {
        // Pods change all the time; that matters to ServiceEntries only when one selects.
        if dirty.workloads && !self.entries_select_workloads() {
            dirty.workloads = false;
        }
        if dirty.is_empty() {
            return;
        }
        let now = Instant::now();
        self.first_change.get_or_insert(now);
        self.last_change = Some(now);
        self.pending.merge(dirty);
    }

    fn fqdn(&self, key: &ObjectKey) -> String {
        Service::fqdn(&key.1, &key.0, &self.config.domain_suffix)
    }

    fn flush(&mut self) {
        let Some(first_change) = self.first_change.take() else {
            return;
        };
        self.last_change = None;
        let dirty = std::mem::take(&mut self.pending);
        let mut next = (**self.snapshots.borrow()).clone();
        next.version += 1;
        next.domain_suffix = self.config.domain_suffix.clone();
        next.root_namespace = self.config.system_namespace.clone();

        let mut changed_services = BTreeSet::new();
        for key in &dirty.definitions {
            let fqdn = self.fqdn(key);
            changed_services.insert(fqdn.clone());
            match self.build_service(key, &fqdn) {
                Some(service) => {
                    next.services.insert(fqdn, Arc::new(service));
                }
                None => {
                    self.vips.release(&fqdn);
                    next.services.remove(&fqdn);
                }
            }
        }
        let endpoint_keys: BTreeSet<ObjectKey> = if dirty.all_endpoints {
            next.endpoints.clear();
            self.clusters
                .values()
                .flat_map(|c| c.state.service_keys().cloned())
                .collect()
        } else {
            dirty.endpoints.union(&dirty.definitions).cloned().collect()
        };
        let mut changed_endpoints = BTreeSet::new();
        for key in &endpoint_keys {
            let fqdn = self.fqdn(key);
            let endpoints: Vec<_> = self
                .clusters
                .values()
                .flat_map(|c| c.state.endpoints_of(key))
                .collect();
            let changed = if endpoints.is_empty() {
                next.endpoints.remove(&fqdn).is_some()
            } else {
                let fresh = ServiceEndpoints { endpoints };
                let changed = next.endpoints.get(&fqdn).is_none_or(|old| **old != fresh);
                next.endpoints.insert(fqdn.clone(), Arc::new(fresh));
                changed
            };
            if changed || dirty.all_endpoints {
                changed_endpoints.insert(fqdn);
            }
        }
        // `note` keeps `workloads` only while some entry selects workloads.
        if dirty.service_entries || dirty.all_endpoints || dirty.workloads {
            self.apply_service_entries(
                &mut next,
                dirty.service_entries,
                &mut changed_services,
                &mut changed_endpoints,
            );
        }
        if dirty.all_endpoints || !dirty.definitions.is_empty() {
            next.network_gateways = Arc::new(self.network_gateways());
        }
        if dirty.gateways {
            next.istio_gateways = Arc::new(self.istio_gateways());
            next.tls_routes = Arc::new(
                self.clusters
                    .get(&self.config.cluster_id)
                    .map(|entry| entry.state.tls_routes.values().flatten().cloned().collect())
                    .unwrap_or_default(),
            );
            next.peer_authentications = Arc::new(
                self.clusters
                    .get(&self.config.cluster_id)
                    .map(|entry| entry.state.peer_authentications.values().cloned().collect())
                    .unwrap_or_default(),
            );
        }
        next.clusters = Arc::new(self.statuses());
        let full = !dirty.definitions.is_empty() || dirty.gateways || dirty.service_entries;
        let snapshot = Arc::new(next);
        self.snapshots.send_replace(snapshot.clone());
        if full || !changed_endpoints.is_empty() || dirty.all_endpoints {
            let push = Push {
                snapshot,
                full,
                all_endpoints: dirty.all_endpoints,
                changed_endpoints,
                changed_services,
                first_change: first_change.into_std(),
            };
            // No receivers (no proxies connected yet) is fine.
            let _ = self.pushes.send(Arc::new(push));
        }
    }

    /// The config cluster's ServiceEntries into `next`: a service and its endpoints per exact
    /// host of each routed entry. A host that a Kubernetes service already names keeps the
    /// Kubernetes service (with a warning); of two entries naming one host, the first by
    /// namespace and name wins, as Istio's oldest-first rule would pick one.
    fn apply_service_entries(
        &mut self,
        next: &mut MeshSnapshot,
        definitions_changed: bool,
        changed_services: &mut BTreeSet<String>,
        changed_endpoints: &mut BTreeSet<String>,
    ) {
        let cluster = self.config.cluster_id.clone();
        let entries: Vec<ServiceEntry> = self
            .clusters
            .get(&cluster)
            .map(|entry| entry.state.service_entries.values().cloned().collect())
            .unwrap_or_default();
        let mut defined: BTreeMap<String, (Service, Vec<Endpoint>)> = BTreeMap::new();
        for entry in &entries {
            for host in entry.routed_hosts() {
                let kubernetes = next
                    .services
                    .get(host)
                    .is_some_and(|service| service.defined_by == DefinedBy::Kubernetes);
                if kubernetes {
                    tracing::warn!(entry = %format!("{}/{}", entry.namespace, entry.name), %host, "ServiceEntry host is a Kubernetes service's name; the service is kept");
                    continue;
                }
                if defined.contains_key(host) {
                    tracing::warn!(entry = %format!("{}/{}", entry.namespace, entry.name), %host, "another ServiceEntry defines this host; the first (by namespace and name) is kept");
                    continue;
                }
                let auto_vip = self
                    .vips
                    .assign(host)
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
                defined.insert(
                    host.clone(),
                    (
                        entry.service(host, &cluster, auto_vip),
                        self.entry_endpoints(entry),
                    ),
                );
            }
        }
        for gone in self
            .entry_hosts
            .difference(&defined.keys().cloned().collect())
        {
            self.vips.release(gone);
            if next.services.remove(gone).is_some() {
                changed_services.insert(gone.clone());
            }
            if next.endpoints.remove(gone).is_some() {
                changed_endpoints.insert(gone.clone());
            }
        }
        self.entry_hosts = defined.keys().cloned().collect();
        for (host, (service, endpoints)) in defined {
            if definitions_changed && next.services.get(&host).is_none_or(|old| **old != service) {
                changed_services.insert(host.clone());
            }
            next.services.insert(host.clone(), Arc::new(service));
            let fresh = ServiceEndpoints { endpoints };
            if next.endpoints.get(&host).is_none_or(|old| **old != fresh) {
                changed_endpoints.insert(host.clone());
            }
            if fresh.endpoints.is_empty() {
                next.endpoints.remove(&host);
            } else {
                next.endpoints.insert(host, Arc::new(fresh));
            }
        }
    }

    fn entry_endpoints(&self, entry: &ServiceEntry) -> Vec<Endpoint> {
        let cluster = &self.config.cluster_id;
        let trust_domain = &self.config.trust_domain;
        let mut endpoints = entry.endpoints(cluster, trust_domain);
        if entry.workload_selector.is_none() {
            return endpoints;
        }
        if let Some(config) = self.clusters.get(cluster) {
            endpoints.extend(
                config
                    .state
                    .workload_entries
                    .values()
                    .filter(|workload| {
                        entry.selects(&workload.namespace, &workload.workload.labels)
                    })
                    .filter_map(|workload| {
                        entry.workload_endpoint(&workload.workload, cluster, trust_domain)
                    }),
            );
        }
        // Pods of every cluster, as Istio's ServiceEntry controller takes them from each
        // cluster's pod informer.
        for member in self.clusters.values() {
            endpoints.extend(member.state.pods_selected_by(entry));
        }
        endpoints.sort_by(|a, b| (&a.cluster, a.address).cmp(&(&b.cluster, b.address)));
        endpoints
    }

    /// Whether any ServiceEntry picks its endpoints by `workloadSelector` (then pod and
    /// WorkloadEntry changes matter to it).
    fn entries_select_workloads(&self) -> bool {
        self.clusters
            .get(&self.config.cluster_id)
            .is_some_and(|config| {
                config
                    .state
                    .service_entries
                    .values()
                    .any(|entry| entry.workload_selector.is_some())
            })
    }

    fn build_service(&mut self, key: &ObjectKey, fqdn: &str) -> Option<Service> {
        let clusters: BTreeMap<String, _> = self
            .clusters
            .iter()
            .filter_map(|(id, entry)| {
                Some((id.clone(), entry.state.services.get(key)?.service.clone()))
            })
            .collect();
        if clusters.is_empty() {
            return None;
        }
        let auto_vip = self
            .vips
            .assign(fqdn)
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        Some(Service {
            fqdn: fqdn.to_owned(),
            name: key.1.clone(),
            namespace: key.0.clone(),
            ports: Service::merged_ports(&clusters),
            clusters,
            auto_vip,
            defined_by: causeway_model::DefinedBy::Kubernetes,
            dns_endpoints: Vec::new(),
            exported_to: None,
            passthrough: false,
        })
    }

    fn network_gateways(&self) -> Vec<NetworkGateway> {
        let mut gateways: Vec<NetworkGateway> = self
            .clusters
            .values()
            .flat_map(|entry| {
                entry.state.services.values().flat_map(move |record| {
                    let (network, port) = record.gateway_of_network.clone()?;
                    let service = format!("{}/{}", record.namespace, record.name);
                    Some(
                        record
                            .service
                            .external_addresses
                            .iter()
                            .map(move |address| NetworkGateway {
                                network: network.clone(),
                                cluster: entry.state.id.clone(),
                                address: *address,
                                port,
                                service: service.clone(),
                            }),
                    )
                })
            })
            .flatten()
            .collect();
        gateways.sort();
        gateways
    }

    fn istio_gateways(&self) -> Vec<IstioGateway> {
        self.clusters
            .get(&self.config.cluster_id)
            .map(|entry| entry.state.gateways.values().cloned().collect())
            .unwrap_or_default()
    }

    fn statuses(&self) -> Vec<ClusterStatus> {
        self.clusters
            .iter()
            .map(|(id, entry)| ClusterStatus {
                id: id.clone(),
                secret: entry.secret.clone(),
                network: entry.state.network().to_owned(),
                state: entry.sync.clone(),
            })
            .collect()
    }

    /// Cluster states change without a push: only the published snapshot's status list changes.
    fn publish_status(&self) {
        let statuses = self.statuses();
        self.snapshots.send_if_modified(|snapshot| {
            if *snapshot.clusters == statuses {
                return false;
            }
            let mut next = (**snapshot).clone();
            next.clusters = Arc::new(statuses);
            *snapshot = Arc::new(next);
            true
        });
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
