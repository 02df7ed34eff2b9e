//! Istio's namespace controller: every namespace of a cluster this control plane manages holds the
//! ConfigMap `istio-ca-root-cert` (key `root-cert.pem`, label `istio.io/config: "true"`) with the
//! mesh roots. Injected pods mount it to trust discovery's 15012, so it is written as soon as a
//! namespace appears, written again when deleted, and restored when edited.
//!
//! Which clusters: the control plane's own, and every remote cluster whose system namespace names
//! this cluster (or `*`) in `topology.istio.io/controlPlaneClusters` (the seeds' primary-remote
//! step). Istio also requires `EXTERNAL_ISTIOD=true` for the remote ones; the seeds' primary does
//! not set it and the annotation is already the remote cluster's explicit consent, so it suffices.

use causeway_registry::ClusterClients;
use causeway_registry::backoff::RetryBackoff;
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub const CONFIG_MAP_NAME: &str = "istio-ca-root-cert";
pub const DATA_KEY: &str = "root-cert.pem";
pub const CONTROL_PLANE_CLUSTERS: &str = "topology.istio.io/controlPlaneClusters";
const CONFIG_LABEL: (&str, &str) = ("istio.io/config", "true");
/// Kubernetes' namespaces that never run workloads; kube-system may (ztunnel), so it gets one.
const SKIPPED_NAMESPACES: [&str; 3] = ["kube-public", "kube-node-lease", "local-path-storage"];

#[derive(Clone, Debug)]
pub struct RootCertPublisher {
    /// The control plane's own cluster: always managed.
    pub local_cluster: String,
    /// Where a remote cluster's `controlPlaneClusters` annotation is read from.
    pub system_namespace: String,
    pub roots_pem: Arc<str>,
}

impl RootCertPublisher {
    /// Keeps the ConfigMaps of every cluster known to `clients` (they come and go with remote
    /// secrets) until `stopped` turns true.
    pub async fn run(self, clients: ClusterClients, mut stopped: watch::Receiver<bool>) {
        let mut known = clients.subscribe();
        let mut tasks: BTreeMap<String, (u64, JoinHandle<()>)> = BTreeMap::new();
        loop {
            let current = known.borrow_and_update().clone();
            tasks.retain(|cluster, (generation, task)| {
                let current = current
                    .get(cluster)
                    .is_some_and(|known| known.generation == *generation);
                if !current {
                    task.abort();
                }
                current
            });
            for (cluster, known) in current {
                if let std::collections::btree_map::Entry::Vacant(entry) = tasks.entry(cluster) {
                    let cluster = entry.key().clone();
                    let task = tokio::spawn(self.clone().keep_cluster(cluster, known.client));
                    entry.insert((known.generation, task));
                }
            }
            tokio::select! {
                changed = known.changed() => if changed.is_err() { break },
                _ = stopped.wait_for(|stop| *stop) => break,
            }
        }
        for (_, task) in tasks.into_values() {
            task.abort();
        }
    }

    async fn keep_cluster(self, cluster: String, client: kube::Client) {
        let is_local = cluster == self.local_cluster;
        let mut view = ClusterView::new(self.roots_pem.clone());
        let mut events = watch_streams(&client);
        let mut retry_at: Option<Instant> = None;
        let mut retry_delays =
            RetryBackoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => view.apply(event, &self.system_namespace),
                    Some(Err(error)) => {
                        tracing::warn!(%cluster, %error, "watching namespaces and {CONFIG_MAP_NAME} failed; retrying with backoff");
                        continue;
                    }
                    None => return,
                },
                _ = sleep_until(retry_at), if retry_at.is_some() => retry_at = None,
            }
            if !view.listed() {
                continue;
            }
            let managed = is_local || view.names_control_plane(&self.local_cluster);
            if managed != view.managed {
                view.managed = managed;
                if managed {
                    tracing::info!(%cluster, "keeping {CONFIG_MAP_NAME} in every namespace");
                } else {
                    tracing::info!(%cluster, "{} no longer names {}; leaving {CONFIG_MAP_NAME} as it is", CONTROL_PLANE_CLUSTERS, self.local_cluster);
                }
            }
            if !managed || retry_at.is_some() {
                continue;
            }
            let mut failed = false;
            for namespace in view.stale() {
                let api = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
                let exists = view.config_maps.contains_key(&namespace);
                match write(&api, exists, &self.roots_pem).await {
                    Ok(()) => {
                        tracing::debug!(%cluster, %namespace, "{CONFIG_MAP_NAME} written");
                        view.config_maps.insert(namespace, true);
                    }
                    Err(error) => {
                        tracing::warn!(%cluster, %namespace, %error, "cannot write {CONFIG_MAP_NAME}; retrying");
                        failed = true;
                    }
                }
            }
            if failed {
                retry_at = retry_delays.next().map(|delay| Instant::now() + delay);
            } else {
                retry_delays =
                    RetryBackoff::new(Duration::from_millis(500), Duration::from_secs(30));
            }
        }
    }
}

/// Whether a `topology.istio.io/controlPlaneClusters` annotation (`cluster01`, `a, b`, `*`)
/// names `cluster`: the remote cluster's consent to be managed by that control plane.
pub fn names_control_plane(annotation: Option<&str>, cluster: &str) -> bool {
    annotation.is_some_and(|clusters| {
        clusters
            .split(',')
            .map(str::trim)
            .any(|named| named == "*" || named == cluster)
    })
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

enum Seen {
    Namespace(watcher::Event<Namespace>),
    ConfigMap(watcher::Event<ConfigMap>),
}

fn watch_streams(client: &kube::Client) -> BoxStream<'static, Result<Seen, watcher::Error>> {
    let namespaces = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|event| event.map(Seen::Namespace));
    let config_maps = watcher(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP_NAME}")),
    )
    .default_backoff()
    .map(|event| event.map(Seen::ConfigMap));
    futures::stream::select(namespaces, config_maps).boxed()
}

enum Change<K> {
    Relisted(Vec<K>),
    Applied(K),
    Deleted(K),
}

/// One watch's events, with a relist (`Init` .. `InitDone`) handed over whole, so that objects
/// gone while the watch was away are dropped only once the new list is complete.
struct Relist<K> {
    pending: Option<Vec<K>>,
    listed: bool,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Relist {
            pending: None,
            listed: false,
        }
    }
}

impl<K> Relist<K> {
    fn feed(&mut self, event: watcher::Event<K>) -> Option<Change<K>> {
        match event {
            watcher::Event::Init => {
                self.pending = Some(Vec::new());
                None
            }
            watcher::Event::InitApply(object) => {
                self.pending.get_or_insert_default().push(object);
                None
            }
            watcher::Event::InitDone => {
                self.listed = true;
                Some(Change::Relisted(self.pending.take().unwrap_or_default()))
            }
            watcher::Event::Apply(object) => Some(Change::Applied(object)),
            watcher::Event::Delete(object) => Some(Change::Deleted(object)),
        }
    }
}

/// What one cluster holds, as far as this controller cares.
struct ClusterView {
    roots_pem: Arc<str>,
    /// Namespaces that are not terminating, and the system namespace's annotation.
    namespaces: BTreeSet<String>,
    control_plane_clusters: Option<String>,
    /// Namespace → whether its ConfigMap holds our roots and label.
    config_maps: BTreeMap<String, bool>,
    namespace_watch: Relist<Namespace>,
    config_map_watch: Relist<ConfigMap>,
    managed: bool,
}

impl ClusterView {
    fn new(roots_pem: Arc<str>) -> Self {
        ClusterView {
            roots_pem,
            namespaces: BTreeSet::new(),
            control_plane_clusters: None,
            config_maps: BTreeMap::new(),
            namespace_watch: Relist::default(),
            config_map_watch: Relist::default(),
            managed: false,
        }
    }

    fn listed(&self) -> bool {
        self.namespace_watch.listed && self.config_map_watch.listed
    }

    fn apply(&mut self, event: Seen, system_namespace: &str) {
        match event {
            Seen::Namespace(event) => match self.namespace_watch.feed(event) {
                Some(Change::Relisted(namespaces)) => {
                    self.namespaces.clear();
                    self.control_plane_clusters = None;
                    for namespace in namespaces {
                        self.namespace_applied(&namespace, system_namespace);
                    }
                }
                Some(Change::Applied(namespace)) => {
                    self.namespace_applied(&namespace, system_namespace)
                }
                Some(Change::Deleted(namespace)) => {
                    let name = namespace.metadata.name.unwrap_or_default();
                    if name == system_namespace {
                        self.control_plane_clusters = None;
                    }
                    self.namespaces.remove(&name);
                    self.config_maps.remove(&name);
                }
                None => {}
            },
            Seen::ConfigMap(event) => match self.config_map_watch.feed(event) {
                Some(Change::Relisted(config_maps)) => {
                    self.config_maps.clear();
                    for config_map in config_maps {
                        self.config_map_applied(&config_map);
                    }
                }
                Some(Change::Applied(config_map)) => self.config_map_applied(&config_map),
                Some(Change::Deleted(config_map)) => {
                    if let Some(namespace) = config_map.metadata.namespace {
                        self.config_maps.remove(&namespace);
                    }
                }
                None => {}
            },
        }
    }

    fn namespace_applied(&mut self, namespace: &Namespace, system_namespace: &str) {
        let name = namespace.metadata.name.clone().unwrap_or_default();
        if name == system_namespace {
            self.control_plane_clusters = namespace
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(CONTROL_PLANE_CLUSTERS))
                .cloned();
        }
        let terminating = namespace
            .status
            .as_ref()
            .and_then(|status| status.phase.as_deref())
            == Some("Terminating");
        if terminating {
            self.namespaces.remove(&name);
        } else {
            self.namespaces.insert(name);
        }
    }

    fn config_map_applied(&mut self, config_map: &ConfigMap) {
        let Some(namespace) = config_map.metadata.namespace.clone() else {
            return;
        };
        let data = config_map.data.as_ref().and_then(|data| data.get(DATA_KEY));
        let label = config_map
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(CONFIG_LABEL.0));
        let current = data.map(String::as_str) == Some(&*self.roots_pem)
            && label.map(String::as_str) == Some(CONFIG_LABEL.1);
        self.config_maps.insert(namespace, current);
    }

    fn names_control_plane(&self, cluster: &str) -> bool {
        names_control_plane(self.control_plane_clusters.as_deref(), cluster)
    }

    /// The namespaces whose ConfigMap is missing, or lacks our roots or label.
    fn stale(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .filter(|namespace| !SKIPPED_NAMESPACES.contains(&namespace.as_str()))
            .filter(|namespace| self.config_maps.get(*namespace) != Some(&true))
            .cloned()
            .collect()
    }
}

/// Creates the ConfigMap, or sets its key and label in place, keeping whatever else it holds.
async fn write(api: &Api<ConfigMap>, exists: bool, roots_pem: &str) -> Result<(), kube::Error> {
    if !exists {
        let config_map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIG_MAP_NAME.into()),
                labels: Some([(CONFIG_LABEL.0.into(), CONFIG_LABEL.1.into())].into()),
                ..ObjectMeta::default()
            },
            data: Some([(DATA_KEY.into(), roots_pem.into())].into()),
            ..ConfigMap::default()
        };
        match api.create(&PostParams::default(), &config_map).await {
            Ok(_) => return Ok(()),
            // Made by someone else since we last looked: set our key in it.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error),
        }
    }
    let patch = serde_json::json!({
        "metadata": {"labels": {CONFIG_LABEL.0: CONFIG_LABEL.1}},
        "data": {DATA_KEY: roots_pem},
    });
    api.patch(
        CONFIG_MAP_NAME,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn namespace(name: &str, phase: &str, annotation: Option<&str>) -> Namespace {
        let annotations = annotation.map(|value| json!({CONTROL_PLANE_CLUSTERS: value}));
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn listed(namespaces: Vec<Namespace>) -> ClusterView {
        let mut view = ClusterView::new("ROOTS".into());
        let mut seen = |event| view.apply(event, "istio-system");
        seen(Seen::Namespace(watcher::Event::Init));
        for namespace in namespaces {
            seen(Seen::Namespace(watcher::Event::InitApply(namespace)));
        }
        seen(Seen::Namespace(watcher::Event::InitDone));
        seen(Seen::ConfigMap(watcher::Event::Init));
        seen(Seen::ConfigMap(watcher::Event::InitDone));
        view
    }

    #[test]
    fn the_annotation_names_clusters_exactly_or_by_wildcard() {
        let names = |annotation: Option<&str>| {
            listed(vec![namespace("istio-system", "Active", annotation)])
                .names_control_plane("cluster01")
        };
        assert!(names(Some("cluster01")));
        assert!(names(Some("cluster03, cluster01")));
        assert!(names(Some("*")));
        assert!(!names(Some("cluster010")));
        assert!(!names(Some("")));
        assert!(!names(None));
        // Only the system namespace's annotation counts.
        let elsewhere = listed(vec![namespace("sample", "Active", Some("cluster01"))]);
        assert!(!elsewhere.names_control_plane("cluster01"));
    }

    #[test]
    fn stale_skips_workload_free_and_terminating_namespaces_and_current_maps() {
        let mut view = listed(vec![
            namespace("sample", "Active", None),
            namespace("kube-public", "Active", None),
            namespace("kube-system", "Active", None),
            namespace("leaving", "Terminating", None),
            namespace("done", "Active", None),
        ]);
        let config_map = |namespace: &str, roots: &str, label: &str| -> ConfigMap {
            serde_json::from_value(json!({
                "metadata": {"name": CONFIG_MAP_NAME, "namespace": namespace,
                             "labels": {"istio.io/config": label}},
                "data": {DATA_KEY: roots},
            }))
            .unwrap()
        };
        view.apply(
            Seen::ConfigMap(watcher::Event::Apply(config_map("done", "ROOTS", "true"))),
            "istio-system",
        );
        view.apply(
            Seen::ConfigMap(watcher::Event::Apply(config_map(
                "sample", "ROOTS", "false",
            ))),
            "istio-system",
        );
        assert_eq!(view.stale(), ["kube-system", "sample"]);
        view.apply(
            Seen::ConfigMap(watcher::Event::Apply(config_map("sample", "ROOTS", "true"))),
            "istio-system",
        );
        view.apply(
            Seen::ConfigMap(watcher::Event::Delete(config_map("done", "ROOTS", "true"))),
            "istio-system",
        );
        assert_eq!(view.stale(), ["done", "kube-system"]);
    }
}
