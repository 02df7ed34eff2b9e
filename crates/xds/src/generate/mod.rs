//! Resource generation: what each kind of client is told, from one mesh snapshot.

mod common;
pub mod endpoints;
pub mod grpc;
pub mod router;
pub mod sidecar;

use crate::proxy::{ProxyInfo, ProxyKind};
use crate::resources::{CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource};
use causeway_model::MeshSnapshot;
use causeway_model::split_horizon::View;
use causeway_model::{Service, ServiceEndpoints};
use endpoints::EndpointCache;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Which resources of a type a stream asked for.
#[derive(Clone, Copy, Debug)]
pub enum Wanted<'a> {
    All,
    Named(&'a BTreeSet<Arc<str>>),
}

impl Wanted<'_> {
    fn names(&self) -> Option<&BTreeSet<Arc<str>>> {
        match self {
            Wanted::All => None,
            Wanted::Named(names) => Some(names),
        }
    }

    fn keep(&self, resources: Vec<Arc<Resource>>) -> Vec<Arc<Resource>> {
        match self {
            Wanted::All => resources,
            Wanted::Named(names) => resources
                .into_iter()
                .filter(|r| names.contains(&*r.name))
                .collect(),
        }
    }
}

/// Shared by every stream: caches what many streams would otherwise each compute.
#[derive(Default)]
pub struct Generator {
    endpoints: EndpointCache,
    per_service: ServiceResourceCache,
    sidecar_clusters: PerSnapshot,
}

/// One list computed once per snapshot. The `Weak` keeps the snapshot's allocation (not the
/// snapshot) alive, so an equal pointer can only mean the same snapshot.
#[derive(Default)]
struct PerSnapshot(Mutex<Option<Memo>>);

type SharedList = Arc<Vec<Arc<Resource>>>;
type Memo = (Weak<MeshSnapshot>, SharedList);

impl PerSnapshot {
    fn get_or_build(
        &self,
        snapshot: &Arc<MeshSnapshot>,
        build: impl FnOnce() -> Vec<Arc<Resource>>,
    ) -> SharedList {
        let mut memo = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((of, resources)) = &*memo
            && std::ptr::eq(of.as_ptr(), Arc::as_ptr(snapshot))
        {
            return resources.clone();
        }
        let resources = Arc::new(build());
        *memo = Some((Arc::downgrade(snapshot), resources.clone()));
        resources
    }
}

/// What a cached resource was built from: while both are the same `Arc`s, it is still right.
struct BuiltFrom {
    service: Arc<Service>,
    endpoints: Option<Arc<ServiceEndpoints>>,
    resource: Arc<Resource>,
}

/// Resources built from one service (and, for some, its endpoints), keyed by name plus whatever
/// of the proxy they depend on. A thousand sidecars in one namespace share one copy of each.
#[derive(Default)]
pub struct ServiceResourceCache {
    entries: Mutex<HashMap<String, BuiltFrom>>,
}

pub struct CacheGuard<'a>(MutexGuard<'a, HashMap<String, BuiltFrom>>);

impl ServiceResourceCache {
    pub fn lock(&self) -> CacheGuard<'_> {
        CacheGuard(self.entries.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn retain_existing(&self, snapshot: &MeshSnapshot) {
        self.lock().0.retain(|_, built| {
            snapshot
                .services
                .get(&built.service.fqdn)
                .is_some_and(|s| Arc::ptr_eq(s, &built.service))
        });
    }
}

impl CacheGuard<'_> {
    pub fn get_or_build(
        &mut self,
        key: String,
        service: &Arc<Service>,
        endpoints: Option<&Arc<ServiceEndpoints>>,
        build: impl FnOnce() -> Arc<Resource>,
    ) -> Arc<Resource> {
        if let Some(built) = self.0.get(&key)
            && Arc::ptr_eq(&built.service, service)
            && match (&built.endpoints, endpoints) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        {
            return built.resource.clone();
        }
        let resource = build();
        self.0.insert(
            key,
            BuiltFrom {
                service: service.clone(),
                endpoints: endpoints.cloned(),
                resource: resource.clone(),
            },
        );
        resource
    }
}

impl Generator {
    pub fn generate(
        &self,
        type_url: &str,
        snapshot: &Arc<MeshSnapshot>,
        proxy: &ProxyInfo,
        wanted: Wanted<'_>,
    ) -> Vec<Arc<Resource>> {
        match (type_url, proxy.kind) {
            (CLUSTER, ProxyKind::Sidecar) => {
                let shared = self.sidecar_clusters.get_or_build(snapshot, || {
                    sidecar::shared_clusters(snapshot, &self.per_service)
                });
                let mut resources = Vec::with_capacity(shared.len() + 4);
                if snapshot.services.values().any(|s| s.exported_to.is_some()) {
                    resources.extend(
                        shared
                            .iter()
                            .filter(|r| !sidecar::hidden_from(snapshot, proxy, r))
                            .cloned(),
                    );
                } else {
                    resources.extend(shared.iter().cloned());
                }
                resources.extend(sidecar::workload_clusters(snapshot, proxy));
                wanted.keep(resources)
            }
            (LISTENER, ProxyKind::Sidecar) => {
                wanted.keep(sidecar::listeners(snapshot, proxy, &self.per_service))
            }
            (CLUSTER, ProxyKind::Router) => wanted.keep(router::clusters(snapshot, proxy)),
            (LISTENER, ProxyKind::Router) => wanted.keep(router::listeners(snapshot, proxy)),
            (CLUSTER, ProxyKind::Grpc) => wanted.keep(grpc::clusters(snapshot)),
            (LISTENER, ProxyKind::Grpc) => grpc::listeners(snapshot, proxy, wanted.names()),
            (ROUTE, ProxyKind::Grpc) => grpc::routes(snapshot, proxy, wanted.names()),
            (ENDPOINT, _) => {
                let networks = proxy.router_networks();
                let view = match proxy.kind {
                    ProxyKind::Router => View::Router(&networks),
                    _ => View::Network(&proxy.network),
                };
                let names: Vec<Arc<str>> = match wanted {
                    Wanted::Named(names) => names.iter().cloned().collect(),
                    // EDS is never a wildcard in practice; answer with every cluster sent.
                    Wanted::All => self
                        .generate(CLUSTER, snapshot, proxy, Wanted::All)
                        .iter()
                        .map(|c| c.name.clone())
                        .collect(),
                };
                names
                    .iter()
                    .filter_map(|name| self.endpoints.get(name, snapshot, view))
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// Called once per snapshot: forgets cached assignments of services that are gone.
    pub fn forget_removed(&self, snapshot: &MeshSnapshot) {
        self.endpoints.retain_existing(snapshot);
        self.per_service.retain_existing(snapshot);
    }
}
