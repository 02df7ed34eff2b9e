//! Everything the registry knows about one cluster, indexed for the questions the mesh view asks,
//! and the bookkeeping of which services each change touches.

use crate::records::{
    Kind, LOCALITY_LABEL, NETWORK_LABEL, NamespaceRecord, ObjectKey, PodRecord, REGION_LABEL,
    Record, ServiceRecord, SliceRecord, TLS_MODE_LABEL,
};
use causeway_model::{
    Endpoint, IstioGateway, Locality, PeerAuthentication, ServiceEntry, TlsMode, TlsRoute,
    WorkloadEntry,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What a batch of changes touched, so that only that is rebuilt and pushed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Services whose definition (ports, addresses, existence) changed: a full push.
    pub definitions: BTreeSet<ObjectKey>,
    /// Services whose endpoints changed: EDS only.
    pub endpoints: BTreeSet<ObjectKey>,
    /// Every service's endpoints (a network or a network gateway changed).
    pub all_endpoints: bool,
    /// Istio configuration (Gateway, VirtualService, PeerAuthentication) changed: a full push.
    pub gateways: bool,
    /// A ServiceEntry changed: its services and endpoints are rebuilt, and a full push.
    pub service_entries: bool,
    /// A WorkloadEntry or pod changed: entries that select workloads get their endpoints again.
    pub workloads: bool,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.definitions.is_empty()
            && self.endpoints.is_empty()
            && !self.all_endpoints
            && !self.gateways
            && !self.service_entries
            && !self.workloads
    }

    pub fn merge(&mut self, other: Dirty) {
        self.definitions.extend(other.definitions);
        self.endpoints.extend(other.endpoints);
        self.all_endpoints |= other.all_endpoints;
        self.gateways |= other.gateways;
        self.service_entries |= other.service_entries;
        self.workloads |= other.workloads;
    }
}

#[derive(Debug, Default)]
pub struct ClusterState {
    pub id: String,
    /// The network given by flag (own cluster) for when the system namespace has no label.
    pub configured_network: String,
    pub system_namespace: String,
    pub trust_domain: String,
    pub services: HashMap<ObjectKey, ServiceRecord>,
    slices: HashMap<ObjectKey, SliceRecord>,
    /// Service key to the names of its slices.
    slices_of_service: HashMap<ObjectKey, BTreeSet<String>>,
    pods: HashMap<ObjectKey, PodRecord>,
    /// Pod key to the services whose slices name it.
    services_of_pod: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    system_namespace_labels: BTreeMap<String, String>,
    pub gateways: BTreeMap<ObjectKey, IstioGateway>,
    pub tls_routes: BTreeMap<ObjectKey, Vec<TlsRoute>>,
    pub peer_authentications: BTreeMap<ObjectKey, PeerAuthentication>,
    pub service_entries: BTreeMap<ObjectKey, ServiceEntry>,
    pub workload_entries: BTreeMap<ObjectKey, WorkloadEntry>,
}

impl ClusterState {
    pub fn new(
        id: &str,
        configured_network: &str,
        system_namespace: &str,
        trust_domain: &str,
    ) -> Self {
        ClusterState {
            id: id.to_owned(),
            configured_network: configured_network.to_owned(),
            system_namespace: system_namespace.to_owned(),
            trust_domain: trust_domain.to_owned(),
            ..ClusterState::default()
        }
    }

    /// The cluster's network: the system namespace's label, else the configured one.
    pub fn network(&self) -> &str {
        self.system_namespace_labels
            .get(NETWORK_LABEL)
            .map(String::as_str)
            .unwrap_or(&self.configured_network)
    }

    /// Every service key this cluster defines or has endpoints for.
    pub fn service_keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.services.keys().chain(self.slices_of_service.keys())
    }

    pub fn apply(&mut self, record: Record) -> Dirty {
        let mut dirty = Dirty::default();
        match record {
            Record::Service(service) => {
                let key = (service.namespace.clone(), service.name.clone());
                let was_gateway = self
                    .services
                    .get(&key)
                    .is_some_and(|s| s.gateway_of_network.is_some());
                if self.services.get(&key) != Some(&service) {
                    dirty.all_endpoints |= was_gateway || service.gateway_of_network.is_some();
                    dirty.definitions.insert(key.clone());
                    self.services.insert(key, service);
                }
            }
            Record::EndpointSlice(slice) => {
                let key = (slice.namespace.clone(), slice.name.clone());
                if self.slices.get(&key) != Some(&slice) {
                    self.unindex_slice(&key, &mut dirty);
                    self.index_slice(&slice, &mut dirty);
                    self.slices.insert(key, slice);
                }
            }
            Record::Pod(pod) => {
                let key = (pod.namespace.clone(), pod.name.clone());
                if self.pods.get(&key) != Some(&pod) {
                    dirty.workloads = true;
                    dirty.endpoints.extend(
                        self.services_of_pod
                            .get(&key)
                            .into_iter()
                            .flatten()
                            .cloned(),
                    );
                    self.pods.insert(key, pod);
                }
            }
            Record::Namespace(namespace) => self.apply_namespace(Some(namespace), &mut dirty),
            Record::Gateway(gateway) => {
                let key = (gateway.namespace.clone(), gateway.name.clone());
                if self.gateways.get(&key) != Some(&gateway) {
                    dirty.gateways = true;
                    self.gateways.insert(key, gateway);
                }
            }
            Record::PeerAuthentication(policy) => {
                let key = (policy.namespace.clone(), policy.name.clone());
                if self.peer_authentications.get(&key) != Some(&policy) {
                    dirty.gateways = true;
                    self.peer_authentications.insert(key, policy);
                }
            }
            Record::ServiceEntry(entry) => {
                let key = (entry.namespace.clone(), entry.name.clone());
                if self.service_entries.get(&key) != Some(&entry) {
                    dirty.service_entries = true;
                    self.service_entries.insert(key, *entry);
                }
            }
            Record::WorkloadEntry(entry) => {
                let key = (entry.namespace.clone(), entry.name.clone());
                if self.workload_entries.get(&key) != Some(&entry) {
                    dirty.workloads = true;
                    self.workload_entries.insert(key, *entry);
                }
            }
            Record::VirtualService(service) => {
                let key = (service.namespace, service.name);
                if self.tls_routes.get(&key) != Some(&service.tls_routes) {
                    dirty.gateways = true;
                    self.tls_routes.insert(key, service.tls_routes);
                }
            }
        }
        dirty
    }

    pub fn delete(&mut self, kind: Kind, key: &ObjectKey) -> Dirty {
        let mut dirty = Dirty::default();
        match kind {
            Kind::Service => {
                if let Some(old) = self.services.remove(key) {
                    dirty.all_endpoints |= old.gateway_of_network.is_some();
                    dirty.definitions.insert(key.clone());
                }
            }
            Kind::EndpointSlice => {
                self.unindex_slice(key, &mut dirty);
                self.slices.remove(key);
            }
            Kind::Pod => {
                if self.pods.remove(key).is_some() {
                    dirty.workloads = true;
                    dirty
                        .endpoints
                        .extend(self.services_of_pod.get(key).into_iter().flatten().cloned());
                }
            }
            Kind::Namespace => {
                if key.1 == self.system_namespace {
                    self.apply_namespace(None, &mut dirty);
                }
            }
            Kind::Gateway => dirty.gateways |= self.gateways.remove(key).is_some(),
            Kind::VirtualService => dirty.gateways |= self.tls_routes.remove(key).is_some(),
            Kind::PeerAuthentication => {
                dirty.gateways |= self.peer_authentications.remove(key).is_some();
            }
            Kind::ServiceEntry => {
                dirty.service_entries |= self.service_entries.remove(key).is_some();
            }
            Kind::WorkloadEntry => {
                dirty.workloads |= self.workload_entries.remove(key).is_some();
            }
        }
        dirty
    }

    /// Replaces every object of `kind` with `records` (a watch's initial or repeated list).
    pub fn reset(&mut self, kind: Kind, records: Vec<Record>) -> Dirty {
        let listed: BTreeSet<ObjectKey> = records.iter().map(Record::key).collect();
        let stale: Vec<ObjectKey> = match kind {
            Kind::Service => self.services.keys().cloned().collect(),
            Kind::EndpointSlice => self.slices.keys().cloned().collect(),
            Kind::Pod => self.pods.keys().cloned().collect(),
            Kind::Namespace => vec![(String::new(), self.system_namespace.clone())],
            Kind::Gateway => self.gateways.keys().cloned().collect(),
            Kind::VirtualService => self.tls_routes.keys().cloned().collect(),
            Kind::PeerAuthentication => self.peer_authentications.keys().cloned().collect(),
            Kind::ServiceEntry => self.service_entries.keys().cloned().collect(),
            Kind::WorkloadEntry => self.workload_entries.keys().cloned().collect(),
        };
        let mut dirty = Dirty::default();
        for key in stale.iter().filter(|key| !listed.contains(*key)) {
            dirty.merge(self.delete(kind, key));
        }
        for record in records {
            dirty.merge(self.apply(record));
        }
        dirty
    }

    /// Forgets everything (the cluster was removed), reporting what that touched.
    pub fn clear(&mut self) -> Dirty {
        let mut dirty = Dirty {
            definitions: self.services.keys().cloned().collect(),
            endpoints: self.slices_of_service.keys().cloned().collect(),
            all_endpoints: self
                .services
                .values()
                .any(|s| s.gateway_of_network.is_some()),
            gateways: !self.gateways.is_empty()
                || !self.tls_routes.is_empty()
                || !self.peer_authentications.is_empty(),
            service_entries: !self.service_entries.is_empty(),
            workloads: !self.workload_entries.is_empty() || !self.pods.is_empty(),
        };
        dirty.endpoints.extend(dirty.definitions.iter().cloned());
        *self = ClusterState::new(
            &self.id,
            &self.configured_network,
            &self.system_namespace,
            &self.trust_domain,
        );
        dirty
    }

    fn apply_namespace(&mut self, namespace: Option<NamespaceRecord>, dirty: &mut Dirty) {
        let labels = match namespace {
            Some(namespace) if namespace.name == self.system_namespace => namespace.labels,
            Some(_) => return,
            None => BTreeMap::new(),
        };
        if labels.get(NETWORK_LABEL) != self.system_namespace_labels.get(NETWORK_LABEL) {
            dirty.all_endpoints = true;
        }
        self.system_namespace_labels = labels;
    }

    fn index_slice(&mut self, slice: &SliceRecord, dirty: &mut Dirty) {
        let service = (slice.namespace.clone(), slice.service.clone());
        self.slices_of_service
            .entry(service.clone())
            .or_default()
            .insert(slice.name.clone());
        for pod in slice.endpoints.iter().filter_map(|e| e.pod.clone()) {
            self.services_of_pod
                .entry((slice.namespace.clone(), pod))
                .or_default()
                .insert(service.clone());
        }
        dirty.endpoints.insert(service);
    }

    fn unindex_slice(&mut self, key: &ObjectKey, dirty: &mut Dirty) {
        let Some(old) = self.slices.get(key) else {
            return;
        };
        let service = (old.namespace.clone(), old.service.clone());
        if let Some(names) = self.slices_of_service.get_mut(&service) {
            names.remove(&old.name);
            if names.is_empty() {
                self.slices_of_service.remove(&service);
            }
        }
        for pod in old.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
            let pod_key = (old.namespace.clone(), pod.clone());
            let still_named = self.slices_of_service.get(&service).is_some_and(|names| {
                names.iter().any(|name| {
                    self.slices
                        .get(&(old.namespace.clone(), name.clone()))
                        .is_some_and(|s| s.endpoints.iter().any(|e| e.pod.as_ref() == Some(pod)))
                })
            });
            if still_named {
                continue;
            }
            if let Some(services) = self.services_of_pod.get_mut(&pod_key) {
                services.remove(&service);
                if services.is_empty() {
                    self.services_of_pod.remove(&pod_key);
                }
            }
        }
        dirty.endpoints.insert(service);
    }

    /// The ready-or-not pods of this cluster that `entry`'s `workloadSelector` picks, as its
    /// endpoints (pods without an address yet are left out).
    pub fn pods_selected_by(&self, entry: &ServiceEntry) -> Vec<Endpoint> {
        self.pods
            .values()
            .filter(|pod| entry.selects(&pod.namespace, &pod.labels))
            .filter_map(|pod| {
                let endpoint = PodEndpoint {
                    address: pod.ip?,
                    ports: entry.ports_for(None),
                    zone: None,
                    ready: pod.ready,
                    pod: Some(format!("{}/{}", pod.namespace, pod.name)),
                };
                Some(self.endpoint(Some(pod), endpoint))
            })
            .collect()
    }

    /// This cluster's endpoints of service `key`, in address order.
    pub fn endpoints_of(&self, key: &ObjectKey) -> Vec<Endpoint> {
        let Some(names) = self.slices_of_service.get(key) else {
            return Vec::new();
        };
        let mut endpoints = Vec::new();
        for slice in names
            .iter()
            .filter_map(|name| self.slices.get(&(key.0.clone(), name.clone())))
        {
            for slice_endpoint in &slice.endpoints {
                let pod = slice_endpoint
                    .pod
                    .as_ref()
                    .and_then(|pod| self.pods.get(&(slice.namespace.clone(), pod.clone())));
                let endpoint = PodEndpoint {
                    address: slice_endpoint.address,
                    ports: slice.ports.clone(),
                    zone: slice_endpoint.zone.as_deref(),
                    ready: slice_endpoint.ready,
                    pod: slice_endpoint
                        .pod
                        .as_ref()
                        .map(|pod| format!("{}/{pod}", slice.namespace)),
                };
                endpoints.push(self.endpoint(pod, endpoint));
            }
        }
        endpoints.sort_by_key(|e| e.address);
        endpoints
    }

    /// The mesh endpoint at `at`, with what `pod`'s labels and service account say of it: its
    /// network (the label, else the cluster's), locality (`istio-locality`, else the region
    /// label and the zone), identity and TLS mode.
    fn endpoint(&self, pod: Option<&PodRecord>, at: PodEndpoint<'_>) -> Endpoint {
        let labels = pod.map(|p| p.labels.clone()).unwrap_or_default();
        let locality = match labels.get(LOCALITY_LABEL) {
            Some(value) => Locality::parse(value),
            None => Locality {
                region: labels.get(REGION_LABEL).cloned().unwrap_or_default(),
                zone: at.zone.unwrap_or_default().to_owned(),
                subzone: String::new(),
            },
        };
        Endpoint {
            cluster: self.id.clone(),
            network: labels
                .get(NETWORK_LABEL)
                .cloned()
                .unwrap_or_else(|| self.network().to_owned()),
            address: at.address,
            ports: at.ports,
            locality,
            identity: pod.map(|p| {
                format!(
                    "spiffe://{}/ns/{}/sa/{}",
                    self.trust_domain, p.namespace, p.service_account
                )
            }),
            tls_mode: TlsMode::from_label(labels.get(TLS_MODE_LABEL).map(String::as_str)),
            ready: at.ready,
            pod: at.pod,
            labels,
            weight: 1,
        }
    }
}

/// Where an endpoint is, as its EndpointSlice (or, for a selected pod, the pod) says.
struct PodEndpoint<'a> {
    address: std::net::IpAddr,
    ports: Vec<causeway_model::EndpointPort>,
    zone: Option<&'a str>,
    ready: bool,
    /// `<namespace>/<pod name>`.
    pod: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::SliceEndpoint;
    use causeway_model::EndpointPort;

    fn slice(name: &str, service: &str, endpoints: &[(&str, bool, &str)]) -> Record {
        Record::EndpointSlice(SliceRecord {
            namespace: "sample".into(),
            name: name.into(),
            service: service.into(),
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 5000,
            }],
            endpoints: endpoints
                .iter()
                .map(|(address, ready, pod)| SliceEndpoint {
                    address: address.parse().unwrap(),
                    ready: *ready,
                    pod: Some((*pod).into()),
                    zone: Some("zone-a".into()),
                })
                .collect(),
        })
    }

    fn pod(name: &str, labels: &[(&str, &str)]) -> Record {
        Record::Pod(PodRecord {
            namespace: "sample".into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            service_account: "helloworld".into(),
            ip: None,
            ready: true,
        })
    }

    fn key(name: &str) -> ObjectKey {
        ("sample".into(), name.into())
    }

    #[test]
    fn endpoints_join_slices_with_pods_and_the_cluster_network() {
        let mut state = ClusterState::new("cluster02", "network2", "istio-system", "cluster.local");
        state.apply(pod(
            "hw-1",
            &[
                ("app", "helloworld"),
                ("security.istio.io/tlsMode", "istio"),
            ],
        ));
        state.apply(pod("hw-2", &[("topology.istio.io/network", "other")]));
        let dirty = state.apply(slice(
            "hw-abc",
            "helloworld",
            &[("10.2.0.6", false, "hw-2"), ("10.2.0.5", true, "hw-1")],
        ));
        assert_eq!(dirty.endpoints, [key("helloworld")].into());
        let endpoints = state.endpoints_of(&key("helloworld"));
        assert_eq!(endpoints.len(), 2);
        let first = &endpoints[0];
        assert_eq!(first.address.to_string(), "10.2.0.5");
        assert_eq!(first.network, "network2");
        assert_eq!(first.tls_mode, TlsMode::Istio);
        assert_eq!(
            first.identity.as_deref(),
            Some("spiffe://cluster.local/ns/sample/sa/helloworld")
        );
        assert_eq!(first.locality.zone, "zone-a");
        assert_eq!(first.pod.as_deref(), Some("sample/hw-1"));
        assert_eq!(endpoints[1].network, "other");
        assert!(!endpoints[1].ready);
    }

    #[test]
    fn the_system_namespace_label_sets_the_network_and_touches_all_endpoints() {
        let mut state = ClusterState::new("c", "", "istio-system", "cluster.local");
        let labelled = Record::Namespace(NamespaceRecord {
            name: "istio-system".into(),
            labels: [(NETWORK_LABEL.to_owned(), "network1".to_owned())].into(),
        });
        assert!(state.apply(labelled.clone()).all_endpoints);
        assert_eq!(state.network(), "network1");
        assert!(
            state.apply(labelled).is_empty(),
            "an unchanged namespace touches nothing"
        );
        assert!(
            state
                .delete(Kind::Namespace, &(String::new(), "istio-system".into()))
                .all_endpoints
        );
        assert_eq!(state.network(), "");
    }

    #[test]
    fn a_pod_change_touches_only_the_services_that_name_it() {
        let mut state = ClusterState::new("c", "", "istio-system", "cluster.local");
        state.apply(slice("a-1", "a", &[("10.0.0.1", true, "p1")]));
        state.apply(slice("b-1", "b", &[("10.0.0.2", true, "p2")]));
        let dirty = state.apply(pod("p1", &[("version", "v2")]));
        assert_eq!(dirty.endpoints, [key("a")].into());
        assert!(state.apply(pod("p1", &[("version", "v2")])).is_empty());
        let dirty = state.delete(Kind::EndpointSlice, &key("a-1"));
        assert_eq!(dirty.endpoints, [key("a")].into());
        assert!(state.endpoints_of(&key("a")).is_empty());
        let dirty = state.apply(pod("p1", &[]));
        assert!(
            dirty.endpoints.is_empty() && dirty.definitions.is_empty(),
            "no slice names p1 any more"
        );
        assert!(dirty.workloads, "only entries that select pods may care");
    }

    #[test]
    fn a_relist_deletes_what_it_no_longer_lists() {
        let mut state = ClusterState::new("c", "", "istio-system", "cluster.local");
        state.apply(slice("a-1", "a", &[("10.0.0.1", true, "p1")]));
        state.apply(slice("b-1", "b", &[("10.0.0.2", true, "p2")]));
        let dirty = state.reset(
            Kind::EndpointSlice,
            vec![slice("b-1", "b", &[("10.0.0.2", true, "p2")])],
        );
        assert_eq!(dirty.endpoints, [key("a")].into());
        assert!(state.endpoints_of(&key("a")).is_empty());
        assert_eq!(state.endpoints_of(&key("b")).len(), 1);
        let cleared = state.clear();
        assert_eq!(cleared.endpoints, [key("b")].into());
        assert!(state.endpoints_of(&key("b")).is_empty());
    }

    #[test]
    fn a_service_entrys_selector_picks_pods_of_its_namespace_with_addresses() {
        let mut state = ClusterState::new("cluster02", "network2", "istio-system", "cluster.local");
        let placed = |name: &str, namespace: &str, app: &str, ip: Option<&str>, ready: bool| {
            Record::Pod(PodRecord {
                namespace: namespace.into(),
                name: name.into(),
                labels: [
                    ("app".to_owned(), app.to_owned()),
                    (TLS_MODE_LABEL.to_owned(), "istio".to_owned()),
                ]
                .into(),
                service_account: "vm-like".into(),
                ip: ip.map(|ip| ip.parse().unwrap()),
                ready,
            })
        };
        for record in [
            placed("a", "sample", "db", Some("10.20.0.4"), true),
            placed("b", "sample", "db", Some("10.20.0.5"), false),
            placed("c", "sample", "db", None, false),
            placed("d", "sample", "web", Some("10.20.0.6"), true),
            placed("e", "other", "db", Some("10.20.0.7"), true),
        ] {
            assert!(
                state.apply(record).workloads,
                "pod changes concern selecting entries"
            );
        }
        let entry = ServiceEntry::from_spec(
            "sample",
            "db",
            &serde_json::json!({
                "hosts": ["db.sample.example"], "location": "MESH_INTERNAL", "resolution": "STATIC",
                "ports": [{"name": "tcp", "number": 5432, "targetPort": 15432}],
                "workloadSelector": {"labels": {"app": "db"}},
            }),
        )
        .unwrap();
        let mut selected = state.pods_selected_by(&entry);
        selected.sort_by_key(|e| e.address);
        let seen: Vec<(String, bool, Option<u16>, &str, TlsMode)> = selected
            .iter()
            .map(|e| {
                (
                    e.address.to_string(),
                    e.ready,
                    e.port_for("tcp"),
                    e.network.as_str(),
                    e.tls_mode,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "10.20.0.4".into(),
                    true,
                    Some(15432),
                    "network2",
                    TlsMode::Istio
                ),
                (
                    "10.20.0.5".into(),
                    false,
                    Some(15432),
                    "network2",
                    TlsMode::Istio
                ),
            ]
        );
        assert_eq!(
            selected[0].identity.as_deref(),
            Some("spiffe://cluster.local/ns/sample/sa/vm-like")
        );
        assert_eq!(selected[0].pod.as_deref(), Some("sample/a"));
    }
}
