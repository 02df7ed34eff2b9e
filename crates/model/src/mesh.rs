//! One immutable view of the whole mesh, as published after each debounced batch of changes.
//! Unchanged services are shared (`Arc`) between consecutive snapshots.

use crate::endpoint::Endpoint;
use crate::gateway::{IstioGateway, NetworkGateway, TlsRoute};
use crate::policy::PeerAuthentication;
use crate::service::Service;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

/// Whether the control plane has a complete picture of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason")]
pub enum SyncState {
    /// Every watch has listed the cluster at least once and is streaming.
    Synced,
    /// Not yet listed, or a watch is failing; the last known state is kept meanwhile.
    NotSynced(String),
    /// The cluster could not be reached at all (bad credentials, malformed kubeconfig).
    Failed(String),
}

impl SyncState {
    /// The words `istioctl remote-clusters` prints.
    pub fn label(&self) -> &'static str {
        match self {
            SyncState::Synced => "synced",
            SyncState::NotSynced(_) => "syncing",
            SyncState::Failed(_) => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub id: String,
    /// `<namespace>/<name>` of the remote secret; `None` for the control plane's own cluster.
    pub secret: Option<String>,
    pub network: String,
    pub state: SyncState,
}

/// Every cluster's endpoints of one service, ordered by cluster then address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceEndpoints {
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MeshSnapshot {
    /// Increases with every published snapshot.
    pub version: u64,
    pub domain_suffix: String,
    pub services: BTreeMap<String, Arc<Service>>,
    /// Keyed by service FQDN; a service without endpoints has no entry.
    pub endpoints: BTreeMap<String, Arc<ServiceEndpoints>>,
    pub network_gateways: Arc<Vec<NetworkGateway>>,
    pub istio_gateways: Arc<Vec<IstioGateway>>,
    /// The `tls` routes of VirtualServices, for routers' PASSTHROUGH servers.
    pub tls_routes: Arc<Vec<TlsRoute>>,
    /// PeerAuthentication policies of the config cluster.
    pub peer_authentications: Arc<Vec<PeerAuthentication>>,
    /// Where mesh-wide policies live (Istio's root namespace: the control plane's).
    pub root_namespace: String,
    pub clusters: Arc<Vec<ClusterStatus>>,
}

impl MeshSnapshot {
    pub fn endpoints_of(&self, fqdn: &str) -> &[Endpoint] {
        self.endpoints
            .get(fqdn)
            .map(|e| e.endpoints.as_slice())
            .unwrap_or_default()
    }

    /// Resolves a host as a client in `client_namespace` would write it: the FQDN, `name.ns.svc`,
    /// `name.ns`, or a bare `name` in the client's own namespace.
    pub fn resolve_host(
        &self,
        host: &str,
        client_namespace: Option<&str>,
    ) -> Option<&Arc<Service>> {
        let host = host.trim_end_matches('.');
        if let Some(service) = self.services.get(host) {
            return Some(service);
        }
        let parts: Vec<&str> = host.split('.').collect();
        let fqdn = match parts.as_slice() {
            [name] => Service::fqdn(name, client_namespace?, &self.domain_suffix),
            [name, namespace] | [name, namespace, "svc"] => {
                Service::fqdn(name, namespace, &self.domain_suffix)
            }
            _ => return None,
        };
        self.services.get(&fqdn)
    }

    /// The services of `cluster` whose selector picks a workload with `labels` in `namespace`:
    /// the inbound side of a sidecar.
    pub fn services_selecting<'a>(
        &'a self,
        cluster: &'a str,
        namespace: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        self.services.values().filter(move |service| {
            service.namespace == namespace
                && service
                    .clusters
                    .get(cluster)
                    .is_some_and(|local| local.selects(labels))
        })
    }

    pub fn cluster(&self, id: &str) -> Option<&ClusterStatus> {
        self.clusters.iter().find(|c| c.id == id)
    }
}

/// What one debounced batch of changes touched.
#[derive(Debug)]
pub struct Push {
    pub snapshot: Arc<MeshSnapshot>,
    /// Service definitions or Gateway objects changed: every type is regenerated.
    pub full: bool,
    /// Every service's endpoints may have changed (a network or network gateway changed).
    pub all_endpoints: bool,
    /// FQDNs of the services whose endpoints changed.
    pub changed_endpoints: BTreeSet<String>,
    /// FQDNs of the services whose definitions changed (added, updated or removed).
    pub changed_services: BTreeSet<String>,
    /// When the first change of this batch reached the registry (for convergence times).
    pub first_change: Instant,
}

impl Push {
    pub fn endpoints_changed(&self, fqdn: &str) -> bool {
        self.full || self.all_endpoints || self.changed_endpoints.contains(fqdn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{ClusterService, Protocol, ServicePort};
    use std::net::Ipv4Addr;

    fn snapshot() -> MeshSnapshot {
        let cluster = ClusterService {
            cluster: "cluster01".into(),
            cluster_ip: Some("10.96.0.20".parse().unwrap()),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 5000,
                protocol: Protocol::Http,
            }],
            selector: Some([("app".to_owned(), "helloworld".to_owned())].into()),
            labels: BTreeMap::new(),
            external_addresses: vec![],
        };
        let clusters: BTreeMap<_, _> = [("cluster01".to_owned(), cluster)].into();
        let service = Service {
            fqdn: "helloworld.sample.svc.cluster.local".into(),
            name: "helloworld".into(),
            namespace: "sample".into(),
            ports: Service::merged_ports(&clusters),
            clusters,
            auto_vip: Ipv4Addr::new(240, 240, 1, 1),
            defined_by: crate::service::DefinedBy::Kubernetes,
            dns_endpoints: Vec::new(),
            exported_to: None,
            passthrough: false,
        };
        MeshSnapshot {
            domain_suffix: "cluster.local".into(),
            services: [(service.fqdn.clone(), Arc::new(service))].into(),
            ..MeshSnapshot::default()
        }
    }

    #[test]
    fn hosts_resolve_in_every_form_a_client_may_write() {
        let snapshot = snapshot();
        for host in [
            "helloworld.sample.svc.cluster.local",
            "helloworld.sample.svc.cluster.local.",
            "helloworld.sample.svc",
            "helloworld.sample",
        ] {
            assert!(snapshot.resolve_host(host, None).is_some(), "{host}");
        }
        assert!(
            snapshot
                .resolve_host("helloworld", Some("sample"))
                .is_some()
        );
        assert!(snapshot.resolve_host("helloworld", Some("other")).is_none());
        assert!(snapshot.resolve_host("helloworld", None).is_none());
        assert!(snapshot.resolve_host("nothere.sample", None).is_none());
    }

    #[test]
    fn inbound_services_are_found_by_selector_in_the_proxys_cluster() {
        let snapshot = snapshot();
        let labels = [("app".to_owned(), "helloworld".to_owned())].into();
        assert_eq!(
            snapshot
                .services_selecting("cluster01", "sample", &labels)
                .count(),
            1
        );
        assert_eq!(
            snapshot
                .services_selecting("cluster02", "sample", &labels)
                .count(),
            0
        );
        assert_eq!(
            snapshot
                .services_selecting("cluster01", "other", &labels)
                .count(),
            0
        );
    }
}
